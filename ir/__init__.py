"""Graph IR: nodes, op registry, tracing builder, autodiff, reference interpreter, passes, text form.

Knows nothing of Keras or LLVM.
"""
from . import build, ops
from .autodiff import gradients
from .graph import ConstValue, Graph, Node, TensorType, known_finite, to_networkx, topological_order
from .interpreter import run
from .parser import ParseError, parse
from .printer import print_graph
from .dot import to_dot
from .verify import VerificationError, verify
from . import passes

__all__ = ["build", "ops", "gradients", "ConstValue", "Graph", "Node", "TensorType", "known_finite",
           "to_networkx", "topological_order", "run", "ParseError", "parse", "print_graph",
           "to_dot", "VerificationError", "verify"]
