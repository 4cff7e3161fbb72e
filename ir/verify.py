"""The verifier: a graph is well formed when every value is defined before use, every node's type is
what its op's rule infers from its operands, inputs are `arg` nodes with distinct names, and the
graph's only sources are its inputs, constants and index/random sources."""
from __future__ import annotations

from . import ops
from .graph import Graph


class VerificationError(ValueError):
    pass


def verify(graph: Graph) -> Graph:
    names = graph.input_names
    if len(set(names)) != len(names):
        raise VerificationError(f"graph {graph.name} has duplicate input names: {names}")
    inputs = set(graph.inputs)
    for node in graph.inputs:
        if node.op != "arg":
            raise VerificationError(f"input {node} of graph {graph.name} is not an arg node")
    for node in graph.nodes():
        if node.op == "arg" and node not in inputs:
            raise VerificationError(f"arg {node.attr('name')!r} is used but is not an input of "
                                    f"graph {graph.name}")
        try:
            inferred = ops.infer_type(ops.get(node.op), [o.type for o in node.operands],
                                      node.attr_dict)
        except (ValueError, KeyError, TypeError) as e:
            raise VerificationError(f"{node.op} node in graph {graph.name}: {e}") from e
        if inferred != node.type:
            raise VerificationError(f"{node.op} node has type {node.type} but its operands give "
                                    f"{inferred}")
    for name, value in graph.outputs:
        for node in graph.inputs:
            if node.attr("name") == name and node.type != value.type:
                raise VerificationError(f"output {name!r} updates input {name!r} in place but "
                                        f"its type {value.type} differs from {node.type}")
    return graph
