"""Constructors for IR nodes, with numpy-style conveniences, and the composite ops.

Primitives are made strictly (`ir.ops.make`: operands of one type); the functions here add what a
tracer wants: Python scalars become constants of the other operand's dtype, shapes broadcast as in
numpy by inserting explicit `broadcast` nodes.  Composites (relu, sigmoid, softmax, log-softmax,
logsumexp, cross-entropy pieces) are written here in primitives, so they need no rules of their own.
"""
from __future__ import annotations

import numpy as np

from .graph import FLOAT_DTYPES, ConstValue, Node, TensorType, dtype_of_numpy
from .ops import as_traced, make, norm_axes


# -- sources ------------------------------------------------------------------------------------

def arg(name: str, dtype: str, shape, finite: bool = False) -> Node:
    """An input.  `finite=True` promises that its values hold no inf or NaN (see graph.known_finite)."""
    if finite:
        return make("arg", name=name, dtype=dtype, shape=tuple(shape), finite=True)
    return make("arg", name=name, dtype=dtype, shape=tuple(shape))


def const(value, dtype: str | None = None) -> Node:
    """A constant.  Scalars stay Python numbers in the attribute; arrays become `ConstValue`s."""
    array = np.asarray(value)
    if dtype is None:
        dtype = "f32" if array.dtype.kind == "f" else dtype_of_numpy(array.dtype)
    from .ops import np_dtype
    array = array.astype(np_dtype(dtype))
    if array.ndim == 0:
        return make("const", value=array.item(), dtype=dtype, shape=())
    return make("const", value=ConstValue(array), dtype=dtype, shape=array.shape)


def scalar(value, like: Node) -> Node:
    """A rank-0 constant with `like`'s dtype."""
    return const(value, like.dtype)


def full_like(x: Node, value) -> Node:
    return broadcast(scalar(value, x), x.shape)


def zeros_like(x: Node) -> Node:
    return full_like(x, 0)


def iota(shape, axis: int, dtype: str = "i32") -> Node:
    return make("iota", shape=tuple(shape), dtype=dtype, axis=axis)


def random_uniform(seed: Node, shape, stream: int) -> Node:
    return make("random_uniform", (seed,), shape=tuple(shape), stream=int(stream) & 0xFFFFFFFF)


def dim_size(x: Node, axis: int, dtype: str = "f32") -> Node:
    return make("dim_size", (x,), axis=axis % x.type.rank, dtype=dtype)


# -- shape helpers ------------------------------------------------------------------------------

def broadcast_shapes(a: tuple, b: tuple) -> tuple:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            raise ValueError(f"shapes {TensorType('f32', a).shape} and {TensorType('f32', b).shape} "
                             "do not broadcast")
    return tuple(out)


def broadcast(x: Node, shape) -> Node:
    shape = tuple(shape)
    if x.shape == shape:
        return x
    return make("broadcast", (x,), shape=shape)


def reshape(x: Node, shape) -> Node:
    """Reshape; one -1 is inferred; a leading None keeps the batch dimension."""
    shape = list(shape)
    if -1 in shape:
        known = int(np.prod([d for d in shape if d not in (-1, None)], dtype=np.int64))
        shape[shape.index(-1)] = x.type.static_size // max(known, 1)
    shape = tuple(shape)
    if shape == x.shape:
        return x
    return make("reshape", (x,), shape=shape)


def transpose(x: Node, perm) -> Node:
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(x.type.rank)):
        return x
    return make("transpose", (x,), perm=perm)


def unbroadcast(g: Node, shape: tuple) -> Node:
    """Sum `g` down to `shape` (the adjoint of broadcasting `shape` to g's shape)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.type.rank - len(shape)
    axes = list(range(lead))
    for i, d in enumerate(shape):
        if d == 1 and g.shape[lead + i] != 1:
            axes.append(lead + i)
    out = reduce_sum(g, axes, keepdims=False) if axes else g
    return reshape(out, shape)


def _lift(a, b):
    """Make two operands (nodes or Python scalars) one type: constants, casts-free broadcast."""
    a, b = as_traced(a), as_traced(b)
    if not isinstance(a, Node) and not isinstance(b, Node):
        raise TypeError("at least one operand must be an IR node")
    if not isinstance(a, Node):
        a = scalar(a, b)
    if not isinstance(b, Node):
        b = scalar(b, a)
    # a mask times a float (numpy's promotion): the bool side becomes 0.0 / 1.0
    if a.dtype == "bool" and b.dtype in FLOAT_DTYPES:
        a = cast(a, b.dtype)
    elif b.dtype == "bool" and a.dtype in FLOAT_DTYPES:
        b = cast(b, a.dtype)
    if a.dtype != b.dtype:
        raise ValueError(f"operands have different dtypes {a.type} and {b.type}; cast one first")
    if a.shape != b.shape:
        shape = broadcast_shapes(a.shape, b.shape)
        a, b = broadcast(a, shape), broadcast(b, shape)
    return a, b


def _binary(op):
    def fn(a, b):
        return make(op, _lift(a, b))
    fn.__name__ = op
    fn.__doc__ = f"elementwise {op} with numpy broadcasting and scalar promotion"
    return fn


add, sub, mul, div = _binary("add"), _binary("sub"), _binary("mul"), _binary("div")
maximum, minimum = _binary("max"), _binary("min")
gt, ge, lt, le = _binary("gt"), _binary("ge"), _binary("lt"), _binary("le")
eq, ne = _binary("eq"), _binary("ne")


def true_div(a, b):
    """a / b as Python's `/` and Keras's `ops.divide`: integer or bool operands (with no float one)
    divide as float32 (x / 0 is inf or NaN); `div` itself keeps an integer dtype."""
    a, b = as_traced(a), as_traced(b)
    nodes = [x for x in (a, b) if isinstance(x, Node)]
    if nodes and all(x.dtype not in FLOAT_DTYPES for x in nodes):
        a, b = (cast(x, "f32") if isinstance(x, Node) else x for x in (a, b))
    return div(a, b)


def neg(x):
    return make("neg", (x,))


def exp(x):
    return make("exp", (x,))


def log(x):
    return make("log", (x,))


def tanh(x):
    return make("tanh", (x,))


def sqrt(x):
    return make("sqrt", (x,))


def abs(x):  # noqa: A001 - mirrors numpy's name
    return make("abs", (x,))


def stop_gradient(x: Node) -> Node:
    return make("stop_gradient", (x,))


def select(cond: Node, a, b) -> Node:
    if not isinstance(a, Node) and not isinstance(b, Node):
        raise TypeError("select needs at least one node among its two branches")
    a, b = _lift(a, b)
    shape = broadcast_shapes(cond.shape, a.shape)
    return make("select", (broadcast(cond, shape), broadcast(a, shape), broadcast(b, shape)))


def cast(x: Node, dtype: str) -> Node:
    if x.dtype == dtype:
        return x
    return make("cast", (x,), dtype=dtype)


def _reduce(op):
    def fn(x: Node, axes=None, keepdims: bool = False) -> Node:
        return make(op, (x,), axes=norm_axes(axes, x.type.rank), keepdims=bool(keepdims))
    fn.__name__ = op
    return fn


reduce_sum, reduce_max, reduce_mean = _reduce("reduce_sum"), _reduce("reduce_max"), _reduce("reduce_mean")


def argmax(x: Node, axis: int = -1) -> Node:
    return make("argmax", (x,), axis=axis % x.type.rank)


def reduced_count(x: Node, axes) -> Node:
    """How many elements a reduction over `axes` combines, as a scalar of x's dtype."""
    axes = norm_axes(axes, x.type.rank)
    static = int(np.prod([x.shape[a] for a in axes if x.shape[a] is not None], dtype=np.int64))
    count = scalar(static, x)
    if any(x.shape[a] is None for a in axes):
        count = mul(dim_size(x, 0, x.dtype), count) if static != 1 else dim_size(x, 0, x.dtype)
    return count


def matmul(a: Node, b: Node, transpose_a: bool = False, transpose_b: bool = False) -> Node:
    """a @ b; a constant operand (an array) takes the other one's dtype."""
    a, b = as_traced(a), as_traced(b)
    if not isinstance(a, Node) and isinstance(b, Node):
        a = const(a, b.dtype)
    if not isinstance(b, Node) and isinstance(a, Node):
        b = const(b, a.dtype)
    return make("matmul", (a, b), transpose_a=bool(transpose_a), transpose_b=bool(transpose_b))


# -- composites ---------------------------------------------------------------------------------

def relu(x: Node) -> Node:
    return maximum(x, 0.0)


def sigmoid(x: Node) -> Node:
    return div(1.0, add(1.0, exp(neg(x))))


def logsumexp(x: Node, axis: int = -1, keepdims: bool = False) -> Node:
    m = stop_gradient(reduce_max(x, axis, keepdims=True))
    s = reduce_sum(exp(sub(x, m)), axis, keepdims=True)
    out = add(log(s), m)
    return out if keepdims else reshape(out, tuple(d for i, d in enumerate(out.shape)
                                                   if i != axis % x.type.rank))


def softmax(x: Node, axis: int = -1) -> Node:
    e = exp(sub(x, stop_gradient(reduce_max(x, axis, keepdims=True))))
    return div(e, reduce_sum(e, axis, keepdims=True))


def log_softmax(x: Node, axis: int = -1) -> Node:
    """(x - max) - log(sum(exp(x - max))), as Keras computes it: x - logsumexp(x) rounds
    logsumexp, about max + log(sum), at the logits' magnitude, and with logits of 1e4 kept only
    three digits of the result (0.0 instead of log(1/2) at 3e7)."""
    shifted = sub(x, stop_gradient(reduce_max(x, axis, keepdims=True)))
    return sub(shifted, log(reduce_sum(exp(shifted), axis, keepdims=True)))


def clip(x: Node, low, high) -> Node:
    return minimum(maximum(x, low), high)


def is_float(x: Node) -> bool:
    return x.dtype in FLOAT_DTYPES


def _floor_below_2_30(x: Node) -> Node:
    """floor(x) for |x| < 2**30, through an int32 cast (which truncates)."""
    whole = cast(cast(clip(x, -2.0 ** 30, 2.0 ** 30), "i32"), x.dtype)
    return sub(whole, cast(gt(whole, x), x.dtype))


def floor(x: Node) -> Node:
    """The largest integer <= x, from casts: an integer x is itself; a float past 2**23 (f32) or
    2**52 (f64) is an integer already.  An f64 from 2**30 on is floored in two parts through
    int32: its multiple of 2**30 (from floor(x / 2**30), below 2**22) and the rest, in [0, 2**30)
    and a multiple of x's spacing (at least 2**-22), so exact."""
    if x.dtype not in FLOAT_DTYPES:
        return x
    small = _floor_below_2_30(x)
    if x.dtype == "f32":
        return select(lt(abs(x), 2.0 ** 23), small, x)
    high = mul(_floor_below_2_30(mul(x, 2.0 ** -30)), 2.0 ** 30)
    large = select(lt(abs(x), 2.0 ** 52), add(high, _floor_below_2_30(sub(x, high))), x)
    return select(lt(abs(x), 2.0 ** 30), small, large)


def floor_div(a, b) -> Node:
    """floor(a / b), as Python's and numpy's `//`: of integers (no float operand), an int32."""
    a, b = as_traced(a), as_traced(b)
    quotient = floor(true_div(a, b))
    integral = all(x.dtype not in FLOAT_DTYPES if isinstance(x, Node) else
                   isinstance(x, (int, np.integer)) for x in (a, b))
    return cast(quotient, "i32") if integral else quotient


def mod(a, b) -> Node:
    """a - floor(a / b) * b: the remainder with the divisor's sign, as Python's and numpy's `%`."""
    return sub(a, mul(floor_div(a, b), b))
