"""The graph IR: immutable nodes whose ordered operand tuple is the truth, and graphs over them.

A `Node` is a value: an op name, an ordered tuple of operand nodes, hashable attributes and a result
`TensorType`.  Nodes compare by identity; structural equality is what CSE computes.  A `Graph` names
its inputs (nodes of op `arg`) and its outputs; every node reachable from the outputs belongs to it.
networkx edges are derived from the operand tuples (`to_networkx`), never stored: a DiGraph cannot say
`mul(x, x)` or which operand comes first.

Shapes are tuples of ints, except that axis 0 may be `None`: the batch dimension, a runtime value of
every compiled function (printed `?`).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import networkx as nx
import numpy as np

DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "u32": np.uint32, "bool": np.bool_}
FLOAT_DTYPES = ("f32", "f64")


def dtype_of_numpy(dtype) -> str:
    dtype = np.dtype(dtype)
    for name, np_type in DTYPES.items():
        if dtype == np.dtype(np_type):
            return name
    raise TypeError(f"no IR dtype for numpy dtype {dtype}; use one of {sorted(DTYPES)}")


class BatchAxisError(ValueError):
    """A shape with the batch dimension (None) on an axis other than the first, as broadcasting
    a batch of (N,) against (N, 1) would make."""


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        for axis, dim in enumerate(self.shape):
            if dim is None:
                if axis != 0:
                    raise BatchAxisError(f"only axis 0 may be the batch dimension, got shape "
                                         f"{self.shape}")
            elif not isinstance(dim, (int, np.integer)) or dim < 0:
                raise ValueError(f"bad dimension {dim!r} in shape {self.shape}")
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batched(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    @property
    def static_size(self) -> int:
        """Number of elements, not counting the batch dimension (elements per batch row)."""
        return int(np.prod([d for d in self.shape if d is not None], dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return np.dtype(DTYPES[self.dtype]).itemsize

    def concrete_shape(self, batch: int) -> tuple:
        return tuple(batch if d is None else d for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join('?' if d is None else str(d) for d in self.shape)}]"

    def to_json(self) -> list:
        """[dtype, shape] (None for the batch dimension): what `from_json` reads back."""
        return [self.dtype, list(self.shape)]

    @classmethod
    def from_json(cls, value) -> "TensorType":
        dtype, shape = value
        return cls(dtype, tuple(shape))


class ConstValue:
    """A constant array as a hashable attribute (equality by dtype, shape and bytes)."""

    __slots__ = ("array", "digest")

    def __init__(self, array, digest: str | None = None):
        self.array = None if array is None else np.ascontiguousarray(array)
        if digest is None:
            h = hashlib.sha256()
            h.update(str((self.array.dtype.str, self.array.shape)).encode())
            h.update(self.array.tobytes())
            digest = h.hexdigest()[:16]
        self.digest = digest

    def __eq__(self, other):
        return isinstance(other, ConstValue) and self.digest == other.digest

    def __hash__(self):
        return hash(self.digest)

    def __repr__(self):
        return f"ConstValue({self.digest})"


_ids = itertools.count()


@dataclass(frozen=True, eq=False)
class Node:
    op: str
    operands: tuple
    attrs: tuple  # sorted (key, value) pairs, values hashable
    type: TensorType
    uid: int = field(default_factory=lambda: next(_ids), compare=False)

    def attr(self, key: str, default: Any = ...) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        if default is ...:
            raise KeyError(f"{self.op} node has no attribute {key!r}")
        return default

    @property
    def attr_dict(self) -> dict:
        return dict(self.attrs)

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def key(self) -> tuple:
        """Structural identity of this node given its operands' identities (used by CSE)."""
        return (self.op, tuple(o.uid for o in self.operands), self.attrs, self.type)

    def __repr__(self) -> str:
        return f"<{self.op}:{self.type} #{self.uid}>"

    # Arithmetic operators build nodes (ir.build's add, sub, ...: numpy broadcasting, Python scalars
    # promoted), so code traced into a graph -- a custom loss, a layer's call -- can write `a - b`.
    # Comparisons: see below (== and hashing stay identity between nodes, as graphs need).

    def __add__(self, other):
        return _build().add(self, other)

    def __radd__(self, other):
        return _build().add(other, self)

    def __sub__(self, other):
        return _build().sub(self, other)

    def __rsub__(self, other):
        return _build().sub(other, self)

    def __mul__(self, other):
        return _build().mul(self, other)

    def __rmul__(self, other):
        return _build().mul(other, self)

    def __truediv__(self, other):
        return _build().true_div(self, other)

    def __rtruediv__(self, other):
        return _build().true_div(other, self)

    def __floordiv__(self, other):
        return _build().floor_div(self, other)

    def __rfloordiv__(self, other):
        return _build().floor_div(other, self)

    def __mod__(self, other):
        return _build().mod(self, other)

    def __rmod__(self, other):
        return _build().mod(other, self)

    def __neg__(self):
        return _build().neg(self)

    def __abs__(self):
        return _build().abs(self)

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        """x ** p for a number p: products for an integer p (x ** -2 is 1 / (x * x)), sqrt for 0.5,
        exp(p log x) otherwise (0 at x = 0 for p > 0, NaN for x < 0, as numpy's float power)."""
        B = _build()
        if not isinstance(exponent, numbers.Real) or isinstance(exponent, bool):
            raise TypeError(f"x ** {exponent!r} on a traced value: the exponent must be a number")
        if exponent == 0.5:
            return B.sqrt(self)
        if float(exponent).is_integer():
            n = abs(int(exponent))
            if n == 0:
                return B.full_like(self, 1.0)
            result, square = None, self
            while n:                       # square and multiply
                if n & 1:
                    result = square if result is None else B.mul(result, square)
                n >>= 1
                if n:
                    square = B.mul(square, square)
            return result if exponent > 0 else B.div(1.0, result)
        # exp(p log x) where x > 0; at 0 the limit (0, or inf for p < 0) through a select, so that
        # the gradient there is that of a constant (0), not 0 * inf
        positive = B.gt(self, 0.0)
        safe = B.select(positive, self, 1.0)
        at_zero = B.select(B.eq(self, 0.0), B.full_like(self, 0.0 if exponent > 0 else math.inf),
                           math.nan)
        return B.select(positive, B.exp(B.mul(B.log(safe), float(exponent))), at_zero)

    def __rpow__(self, base):
        # b ** x = exp(x log b) for a constant b > 0
        if isinstance(base, numbers.Real) and not isinstance(base, bool) and base > 0:
            B = _build()
            return B.exp(B.mul(self, math.log(base)))
        raise TypeError(f"{base!r} ** x on a traced value: the base must be a number > 0")

    def __matmul__(self, other):
        return _build().matmul(self, other)

    def __getitem__(self, key):
        """Static basic indexing (`t[:, :2]`, `t[..., 0]`, `t[:, None]`): see build_seq.getitem."""
        from . import build_seq
        return build_seq.getitem(self, key)

    # (__getitem__ alone would make a node iterable by indexing 0, 1, ... until an IndexError)
    __iter__ = None

    def __rmatmul__(self, other):
        return _build().matmul(other, self)

    # Ordering comparisons build bool nodes.  == and != stay identity between nodes (graphs key
    # dicts by node); against a number or an array, inside code traced for a user (`t != 0` in a
    # loss), they build the comparison too, where identity would silently be True or False.
    def __lt__(self, other):
        return _build().lt(self, other)

    def __le__(self, other):
        return _build().le(self, other)

    def __gt__(self, other):
        return _build().gt(self, other)

    def __ge__(self, other):
        return _build().ge(self, other)

    def __eq__(self, other):
        if _compared_in_trace(other):
            return _build().eq(self, other)
        return NotImplemented

    def __ne__(self, other):
        if _compared_in_trace(other):
            return _build().ne(self, other)
        return NotImplemented

    __hash__ = object.__hash__

    def __bool__(self):
        # NOTE: compiler code may test a node for being there (`if group.anchor`); only code traced
        # for a user (inside `refuse_truth()`: a layer's call, a loss) is told that it cannot branch
        if getattr(_truth, "refused", 0):
            raise TypeError(f"the truth value of a traced value ({self!r}) is not known while the "
                            "graph is traced: Python `if`, `and`, `or` and `not` cannot branch on "
                            "it; select elementwise instead (kcompile.ops.where(condition, a, b))")
        return True

    # numpy must not take a traced value for an array: `array * x` is x.__rmul__(array) (one node,
    # not an object array of them), numpy's other functions say why they cannot be (np.mean(x) by
    # __array__, np.tanh(x) here).
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        names = _OPERATOR_UFUNCS.get(ufunc.__name__)
        if names is not None and method == "__call__" and not kwargs:
            if len(inputs) == 1:
                return getattr(self, names[0])()
            a, b = inputs
            result = getattr(a, names[0])(b) if a is self else getattr(b, names[1])(a)
            if result is NotImplemented:    # == and != outside traced user code: identity
                return ufunc.__name__ == "not_equal"
            return result
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        suggestion = _OPS_NAMES.get(name, ufunc.__name__)
        raise TypeError(f"numpy's {name} cannot compute on a traced value ({self!r}): code traced "
                        "into a graph (a custom loss or metric, a layer's call) must compute with "
                        f"operators (+ - * / @ abs) and kcompile.ops (kcompile.ops.{suggestion}, "
                        "...), not numpy functions")

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"a traced value ({self!r}) cannot become a numpy array: code traced into a "
                        "graph (a custom loss or metric, a layer's call) must compute with "
                        "operators (+ - * / @ abs) and kcompile.ops, not numpy functions")


# numpy ufuncs that are Python operators on a traced value: (method, reflected method) by name
_OPERATOR_UFUNCS = {
    "add": ("__add__", "__radd__"), "subtract": ("__sub__", "__rsub__"),
    "multiply": ("__mul__", "__rmul__"), "divide": ("__truediv__", "__rtruediv__"),
    "true_divide": ("__truediv__", "__rtruediv__"), "matmul": ("__matmul__", "__rmatmul__"),
    "power": ("__pow__", "__rpow__"), "less": ("__lt__", "__gt__"),
    "less_equal": ("__le__", "__ge__"), "greater": ("__gt__", "__lt__"),
    "greater_equal": ("__ge__", "__le__"), "equal": ("__eq__", "__eq__"),
    "not_equal": ("__ne__", "__ne__"), "negative": ("__neg__",), "absolute": ("__abs__",),
    "positive": ("__pos__",)}
# numpy's names that kcompile.ops spells otherwise
_OPS_NAMES = {"absolute": "abs", "true_divide": "divide", "add.reduce": "sum",
              "multiply.reduce": "prod", "maximum.reduce": "max", "minimum.reduce": "min",
              "add.accumulate": "cumsum"}


def _build():
    from . import build    # build imports this module
    return build


_truth = threading.local()


def _compared_in_trace(other) -> bool:
    return bool(getattr(_truth, "refused", 0)) and not isinstance(other, (Node, bool)) and (
        isinstance(other, (numbers.Number, np.ndarray, np.generic))
        or getattr(type(other), "__ir_node__", None) is not None)


class refuse_truth:
    """While active (in this thread), `bool(node)` raises: code being traced cannot branch on values
    it does not have yet (a tracer enters this around a user's function)."""

    def __enter__(self):
        _truth.refused = getattr(_truth, "refused", 0) + 1
        return self

    def __exit__(self, *exc):
        _truth.refused -= 1
        return False


def known_finite(node: Node) -> bool:
    """True when every value of `node` is known to be finite (no inf, no NaN): a constant whose values
    are, or an input marked `finite=true` (a promise of the caller, which the reference interpreter
    checks).  Lowering may then rely on 0 * x == 0 (codegen's one-row products skip zero entries)."""
    if node.op == "arg":
        return bool(node.attr("finite", False))
    if node.op == "const" and node.dtype.startswith("f"):
        value = node.attr("value")
        array = value.array if isinstance(value, ConstValue) else np.asarray(value)
        return array is not None and bool(np.isfinite(array).all())
    return False


def freeze_attrs(attrs: dict) -> tuple:
    def freeze(v):
        if isinstance(v, list):
            return tuple(freeze(x) for x in v)
        if isinstance(v, np.generic):
            return v.item()
        return v
    return tuple(sorted((k, freeze(v)) for k, v in attrs.items()))


@dataclass(frozen=True)
class Graph:
    """A function: ordered inputs (`arg` nodes) to ordered, named outputs.

    An output whose name equals an input's name is an in-place update of that input's buffer (how a
    train step returns updated parameters and optimizer slots).
    """
    name: str
    inputs: tuple
    outputs: tuple  # ((name, Node), ...)

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple((str(n), v) for n, v in self.outputs))
        names = [n for n, _ in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate output names in graph {self.name}: {names}")

    @property
    def output_nodes(self) -> list:
        return [v for _, v in self.outputs]

    @property
    def input_names(self) -> list:
        return [n.attr("name") for n in self.inputs]

    @property
    def output_names(self) -> list:
        return [n for n, _ in self.outputs]

    def input(self, name: str) -> Node:
        for n in self.inputs:
            if n.attr("name") == name:
                return n
        raise KeyError(f"graph {self.name} has no input {name!r}; inputs: {self.input_names}")

    def output(self, name: str) -> Node:
        for n, v in self.outputs:
            if n == name:
                return v
        raise KeyError(f"graph {self.name} has no output {name!r}; outputs: {self.output_names}")

    def nodes(self) -> list:
        """Every node of the graph in a deterministic topological order (inputs first, in order)."""
        return topological_order(list(self.inputs) + self.output_nodes)

    def replace(self, outputs=None, inputs=None, name=None) -> "Graph":
        return Graph(self.name if name is None else name,
                     self.inputs if inputs is None else inputs,
                     self.outputs if outputs is None else outputs)

    def users(self) -> dict:
        users: dict = {}
        for n in self.nodes():
            for o in n.operands:
                users.setdefault(o, []).append(n)
        return users

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)


def topological_order(roots: Sequence[Node]) -> list:
    """Post-order DFS from `roots` in order, operands left to right: deterministic, iterative."""
    seen: set = set()
    order: list = []
    for root in roots:
        if root in seen:
            continue
        stack = [(root, iter(root.operands))]
        seen.add(root)
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                order.append(node)
            elif child not in seen:
                seen.add(child)
                stack.append((child, iter(child.operands)))
    return order


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """Edges operand -> user, one per operand slot (key = operand index)."""
    g = nx.MultiDiGraph()
    for node in graph.nodes():
        g.add_node(node)
        for index, operand in enumerate(node.operands):
            g.add_edge(operand, node, key=index)
    return g


def rebuild(graph: Graph, rewrite) -> Graph:
    """Rebuild `graph` bottom-up; `rewrite(node, new_operands)` returns the replacement node.

    `rewrite` is called once per node in topological order with the already-rewritten operands; it
    may return the node itself when nothing changed (cheap when operands are unchanged).
    """
    mapping: dict = {}
    for node in graph.nodes():
        new_operands = tuple(mapping[o] for o in node.operands)
        mapping[node] = rewrite(node, new_operands)
    return Graph(graph.name, [mapping[i] for i in graph.inputs],
                 [(name, mapping[v]) for name, v in graph.outputs])


def iter_nodes(graphs: Iterable[Graph]):
    for g in graphs:
        yield from g.nodes()
