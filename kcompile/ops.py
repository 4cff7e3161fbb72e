"""Tensor functions under Keras 3's `keras.ops` names, for code that is traced into a graph: a custom
layer's `call`, a custom loss or metric.

    from kcompile import ops
    def my_loss(y_true, y_pred):
        return ops.mean(ops.square(y_pred - y_true), axis=-1)

Each takes traced values (a layer's weights too) and numpy constants, and builds IR nodes with
`ir.build`.  Outside a trace, given arrays (as a script post-processing predictions does:
`ops.argmax(model.predict(x), axis=1)`), each runs once on the reference interpreter and returns a
numpy array: floats as float32, integers as int32 (see `_eager`).  Python operators do the same for
+ - * / @ abs and ** 0, 1, 2, 0.5.
"""
from __future__ import annotations

import builtins
import functools
import math as _math
import numbers

import numpy as np

from ir import build as B
from ir.graph import Node
from ir.ops import as_traced

from kcompile import activations

__all__ = ["abs", "absolute", "add", "subtract", "multiply", "divide", "true_divide", "negative",
           "square", "sqrt", "exp", "log", "tanh", "sigmoid", "relu", "softmax", "log_softmax",
           "logsumexp", "maximum", "minimum", "clip", "where", "mean", "sum", "max", "min", "matmul",
           "dot", "transpose", "reshape", "expand_dims", "squeeze", "cast", "stop_gradient",
           "ones_like", "zeros_like", "argmax", "greater", "greater_equal", "less", "less_equal",
           "equal", "not_equal", "power", "softplus", "silu", "swish", "sign", "rsqrt", "var",
           "std", "concatenate", "stack", "ones", "zeros", "logical_and", "logical_or",
           "logical_not", "floor", "round", "isnan", "isinf", "isfinite", "log1p", "one_hot",
           "shape", "convert_to_numpy", "argmin", "any", "all", "count_nonzero", "ceil",
           "divide_no_nan", "broadcast_to", "tile", "repeat", "size", "categorical_crossentropy",
           "sparse_categorical_crossentropy", "binary_crossentropy", "full", "eye",
           "convert_to_tensor", "gelu", "elu", "selu", "leaky_relu", "hard_sigmoid", "softsign",
           "relu6", "floor_divide", "mod", "sin", "cos", "tan"]

_DTYPES = {"float32": "f32", "float64": "f64", "int32": "i32", "bool": "bool", "f32": "f32",
           "f64": "f64", "i32": "i32"}


def _node(x, name: str) -> Node:
    node = as_traced(x)
    if not isinstance(node, Node):
        raise TypeError(f"kcompile.ops.{name} works on traced values (inside a layer's call, a loss "
                        f"or a metric); got {type(x).__name__}. Outside a trace, use numpy.")
    return node


def _axis(x: Node, axis, name: str, several: bool = True, rank: int | None = None):
    """`axis` checked against x (or against a value of `rank` axes, as expand_dims' result): None
    (every axis), an integer axis (negative from the end) or, with `several`, a tuple or list of
    them; a clear error otherwise (numpy's would be a cryptic one from deep inside the builder)."""
    rank = x.type.rank if rank is None else rank
    if axis is None:
        return None
    entries = tuple(axis) if several and isinstance(axis, (tuple, list)) else (axis,)
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
            kinds = "an integer or a tuple of integers" if several else "an integer"
            raise TypeError(f"kcompile.ops.{name}: `axis` must be {kinds} (axes are numbered, "
                            f"negative from the end; a value has no named axes); got "
                            f"axis={axis!r}")
        if not -rank <= entry < rank:
            raise ValueError(f"kcompile.ops.{name}: axis {entry} is out of range for a value of "
                             f"rank {rank} (from {x.type}); use an axis in [{-rank}, {rank - 1}]")
    return axis


def _unary(build_fn, name):
    def fn(x):
        return build_fn(_node(x, name))
    fn.__name__ = name
    return fn


def _binary(build_fn, name):
    def fn(x1, x2):
        x1, x2 = as_traced(x1), as_traced(x2)
        if not isinstance(x1, Node) and not isinstance(x2, Node):
            _node(x1, name)
        return build_fn(x1, x2)
    fn.__name__ = name
    return fn


abs = absolute = _unary(B.abs, "abs")  # noqa: A001  (Keras's name)
negative = _unary(B.neg, "negative")
sqrt = _unary(B.sqrt, "sqrt")
exp = _unary(B.exp, "exp")
log = _unary(B.log, "log")
tanh = _unary(activations.tanh, "tanh")
sigmoid = _unary(activations.sigmoid, "sigmoid")
relu = _unary(activations.relu, "relu")
stop_gradient = _unary(B.stop_gradient, "stop_gradient")
zeros_like = _unary(B.zeros_like, "zeros_like")
add = _binary(B.add, "add")
subtract = _binary(B.sub, "subtract")
multiply = _binary(B.mul, "multiply")
divide = true_divide = _binary(B.true_div, "divide")    # integers divide as float32, as Keras's
maximum = _binary(B.maximum, "maximum")
minimum = _binary(B.minimum, "minimum")
greater = _binary(B.gt, "greater")
greater_equal = _binary(B.ge, "greater_equal")
less = _binary(B.lt, "less")
less_equal = _binary(B.le, "less_equal")
equal = _binary(B.eq, "equal")
not_equal = _binary(B.ne, "not_equal")
matmul = dot = _binary(B.matmul, "matmul")


def square(x):
    x = _node(x, "square")
    return B.mul(x, x)


def ones_like(x):
    return B.full_like(_node(x, "ones_like"), 1)


def softmax(x, axis=-1):
    x = _node(x, "softmax")
    return activations.softmax(x, _axis(x, axis, "softmax"))


def log_softmax(x, axis=-1):
    x = _node(x, "log_softmax")
    return activations.log_softmax(x, _axis(x, axis, "log_softmax"))


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over `axis` (None: every axis, as Keras), computed from the maximum."""
    x = _node(x, "logsumexp")
    axis = _axis(x, axis, "logsumexp")
    m = B.stop_gradient(B.reduce_max(x, axis, keepdims=True))
    out = B.add(B.log(B.reduce_sum(B.exp(B.sub(x, m)), axis, keepdims=True)), m)
    return out if keepdims else B.reduce_sum(out, axis, keepdims=False)   # (drops the size-1 axes)


def clip(x, x_min, x_max):
    return B.clip(_node(x, "clip"), x_min, x_max)


def where(condition, x1, x2):
    """x1 where condition holds (nonzero), else x2; either branch may be a number."""
    condition = _node(condition, "where")
    if condition.dtype != "bool":
        condition = B.ne(condition, 0)
    x1, x2 = as_traced(x1), as_traced(x2)
    if not isinstance(x1, Node) and not isinstance(x2, Node):
        x1 = B.broadcast(B.const(float(x1)), condition.shape)
    return B.select(condition, x1, x2)


def _as_bool(x, name):
    x = _node(x, name)
    return x if x.dtype == "bool" else B.ne(x, 0)


def logical_and(x1, x2):
    """Elementwise and of truth values (nonzero is true), as a bool value."""
    return B.eq(B.add(B.cast(_as_bool(x1, "logical_and"), "i32"),
                      B.cast(_as_bool(x2, "logical_and"), "i32")), 2)


def logical_or(x1, x2):
    return B.ne(B.add(B.cast(_as_bool(x1, "logical_or"), "i32"),
                      B.cast(_as_bool(x2, "logical_or"), "i32")), 0)


def logical_not(x):
    return B.eq(B.cast(_as_bool(x, "logical_not"), "i32"), 0)


def floor(x):
    """The largest integer <= x (a float value; values past 2**23 are integers already)."""
    return B.floor(_node(x, "floor"))


def round(x):  # noqa: A001  (Keras's name)
    """To the nearest integer, halves to even, as numpy's and Keras's round."""
    x = _node(x, "round")
    if x.dtype not in ("f32", "f64"):
        return x
    below = floor(x)
    fraction = B.sub(x, below)          # exact: x and its floor share x's grid of floats
    odd = B.ne(B.sub(below, B.mul(floor(B.mul(below, 0.5)), 2.0)), 0.0)
    up = logical_or(B.gt(fraction, 0.5), logical_and(B.eq(fraction, 0.5), odd))
    return B.add(below, B.cast(up, x.dtype))      # (floor keeps |x| >= 2**23, whole already)


def isnan(x):
    x = _node(x, "isnan")
    return B.ne(x, x)


def isinf(x):
    x = _node(x, "isinf")
    if x.dtype not in ("f32", "f64"):
        return B.ne(x, x)                       # (integers are never infinite)
    return B.eq(B.abs(x), float("inf"))


def isfinite(x):
    x = _node(x, "isfinite")
    if x.dtype not in ("f32", "f64"):
        return B.eq(x, x)
    return B.lt(B.abs(x), float("inf"))        # (false for NaN)


def log1p(x):
    """log(1 + x), accurate for small x: log(u) * x / (u - 1) with u = 1 + x (Goldberg's trick)."""
    x = _node(x, "log1p")
    u = B.add(x, 1.0)
    ratio = B.div(B.mul(B.log(u), x), B.sub(u, 1.0))
    # (from u = 2 on, log(u) is as accurate, and the product above could overflow)
    return B.select(B.eq(u, 1.0), x, B.select(B.gt(u, 2.0), B.log(u), ratio))


# sin and cos are composites (the IR has no trigonometric op), in float64 whatever the input's
# float type: x = q pi/2 + r with q = round(x 2/pi) and |r| <= pi/4, the product q pi/2 exact for
# |q| < 2**23 (the high part of pi/2 keeps 30 bits), then the Taylor series of sin and cos on r to
# r^17 and r^16 (the first terms left out are below 1e-12), rotated by q's quarter turns.  Against
# numpy's float64 sin of float32 inputs (20000 uniform draws per range): up to 1.3e7 within 3e-8
# (1-2% of values one float32 step off), to 1e9 within 1.1e-7, to 1e12 within 1e-4, and from 1e12
# on the reduction loses r (errors of 0.1): float32 inputs there are thousands of turns apart.
_HALF_PI_HI = float((np.array([np.pi / 2]).view(np.int64) & ~np.int64(2**23 - 1))
                    .view(np.float64)[0])
_HALF_PI_LO = float(np.float64(np.pi / 2) - np.float64(_HALF_PI_HI))      # (exact: Sterbenz)
_SIN_TERMS = [(-1) ** k / _math.factorial(2 * k + 1) for k in range(9)]
_COS_TERMS = [(-1) ** k / _math.factorial(2 * k) for k in range(9)]


def _sin_cos(x, name):
    """(sin x, cos x) in float64, and the float type of the result (x's, or f32 for integers)."""
    x = _node(x, name)
    dtype = x.dtype if x.dtype in ("f32", "f64") else "f32"
    wide = B.cast(x, "f64") if x.dtype != "f64" else x
    turns = B.floor(B.add(B.mul(wide, 2.0 / np.pi), 0.5))                  # round(x 2/pi)
    r = B.sub(B.sub(wide, B.mul(turns, _HALF_PI_HI)), B.mul(turns, _HALF_PI_LO))
    square = B.mul(r, r)

    def series(terms):
        total = terms[-1]
        for term in reversed(terms[:-1]):
            total = B.add(B.mul(total, square), term)
        return total

    sin_r, cos_r = B.mul(series(_SIN_TERMS), r), series(_COS_TERMS)
    quarter = B.sub(turns, B.mul(B.floor(B.mul(turns, 0.25)), 4.0))       # 0, 1, 2 or 3 (NaN)
    # sin(r + q pi/2) and cos(r + q pi/2); NaN (from an inf or NaN x) stays NaN through r
    below_two, first, third = B.lt(quarter, 2.0), B.lt(quarter, 1.0), B.lt(quarter, 3.0)
    sin = B.select(below_two, B.select(first, sin_r, cos_r),
                   B.select(third, B.neg(sin_r), B.neg(cos_r)))
    cos = B.select(below_two, B.select(first, cos_r, B.neg(sin_r)),
                   B.select(third, B.neg(cos_r), sin_r))
    return sin, cos, dtype


def _narrow(value, dtype):
    return value if dtype == "f64" else B.cast(value, dtype)


def sin(x):
    """The sine, elementwise (see `_sin_cos` for the accuracy)."""
    value, _, dtype = _sin_cos(x, "sin")
    return _narrow(value, dtype)


def cos(x):
    """The cosine, elementwise."""
    _, value, dtype = _sin_cos(x, "cos")
    return _narrow(value, dtype)


def tan(x):
    """The tangent, elementwise: sin x / cos x, divided in float64."""
    sin_x, cos_x, dtype = _sin_cos(x, "tan")
    return _narrow(B.div(sin_x, cos_x), dtype)


def one_hot(x, num_classes, axis=-1, dtype="float32"):
    """Ids (integers or whole floats) as one-hot vectors on a new last axis; an id outside
    [0, num_classes) gives zeros, as Keras's."""
    x = _node(x, "one_hot")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes <= 0:
        raise ValueError(f"kcompile.ops.one_hot: num_classes must be a positive integer; got "
                         f"{num_classes!r}")
    if axis != -1 and axis != x.type.rank:
        raise NotImplementedError("kcompile.ops.one_hot puts the classes on the last axis only "
                                  "(axis=-1)")
    ids = B.reshape(B.cast(x, "f32"), tuple(x.shape) + (1,))
    return cast(B.eq(ids, B.const(np.arange(num_classes, dtype=np.float32))), dtype)


def mean(x, axis=None, keepdims=False):
    x = _node(x, "mean")
    return B.reduce_mean(x, _axis(x, axis, "mean"), keepdims)


def sum(x, axis=None, keepdims=False):  # noqa: A001  (Keras's name)
    x = _node(x, "sum")
    return B.reduce_sum(x, _axis(x, axis, "sum"), keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001  (Keras's name)
    x = _node(x, "max")
    return B.reduce_max(x, _axis(x, axis, "max"), keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001  (Keras's name)
    x = _node(x, "min")
    return B.neg(B.reduce_max(B.neg(x), _axis(x, axis, "min"), keepdims))


def argmax(x, axis=None, keepdims=False):
    """Index of the largest value along `axis`; axis=None (Keras's default) flattens, which a value
    with a batch axis cannot do here (give the axis)."""
    x = _node(x, "argmax")
    axis = _axis(x, axis, "argmax", several=False)
    if axis is None:
        if x.type.rank != 1 or x.shape[0] is None:
            raise ValueError(f"kcompile.ops.argmax over every axis of {x.type} is not supported; "
                             "pass axis=-1 (or another axis)")
        axis = 0
    out = B.argmax(x, axis)
    return expand_dims(out, axis) if keepdims else out


def argmin(x, axis=None, keepdims=False):
    """Index of the smallest value along `axis` (the first, on ties), as argmax of -x."""
    x = _node(x, "argmin")
    return argmax(B.neg(x), axis, keepdims)


def any(x, axis=None, keepdims=False):  # noqa: A001  (Keras's name)
    """Whether some entry along `axis` is true (nonzero)."""
    truth = B.cast(_as_bool(x, "any"), "f32")
    return B.gt(B.reduce_max(truth, _axis(truth, axis, "any"), keepdims), 0.0)


def all(x, axis=None, keepdims=False):  # noqa: A001  (Keras's name)
    """Whether every entry along `axis` is true (nonzero)."""
    falsity = B.cast(logical_not(x), "f32")
    return B.eq(B.reduce_max(falsity, _axis(falsity, axis, "all"), keepdims), 0.0)


def count_nonzero(x, axis=None):
    x = _node(x, "count_nonzero")
    ones = B.cast(B.ne(x, 0), "i32")
    return B.reduce_sum(ones, _axis(ones, axis, "count_nonzero"))


def ceil(x):
    x = _node(x, "ceil")
    return B.neg(floor(B.neg(x)))


def divide_no_nan(x1, x2):
    """x1 / x2, and 0 where x2 is 0, as Keras's (whatever x1 is there)."""
    x1, x2 = as_traced(x1), as_traced(x2)
    zero = B.eq(x2, 0.0)
    quotient = B.div(x1, B.select(zero, B.full_like(x2, 1.0), x2))
    return B.select(zero, B.full_like(quotient, 0.0), quotient)


def broadcast_to(x, shape):
    """x broadcast to `shape` (the batch axis may be given as None or as ops.shape's batch size)."""
    x = _node(x, "broadcast_to")
    return B.broadcast(x, tuple(None if d is None or _is_batch_size(d) else int(d) for d in shape))


def tile(x, repeats):
    """x repeated `repeats[i]` times along each axis i, as numpy's tile (not along the batch)."""
    x = _node(x, "tile")
    repeats = [int(r) for r in ((repeats,) if isinstance(repeats, numbers.Integral) else repeats)]
    shape = list(x.shape)
    if len(repeats) > len(shape):
        raise ValueError(f"kcompile.ops.tile: {len(repeats)} repeats for a value of rank {len(shape)}")
    repeats = [1] * (len(shape) - len(repeats)) + repeats
    for axis, count in enumerate(repeats):
        if count == 1:
            continue
        if shape[axis] is None:
            raise NotImplementedError("kcompile.ops.tile cannot repeat the batch axis")
        expanded = shape[:axis] + [1] + shape[axis:]
        x = B.broadcast(B.reshape(x, expanded), shape[:axis] + [count] + shape[axis:])
        shape[axis] *= count
        x = B.reshape(x, shape)
    return x


def repeat(x, repeats, axis=None):
    """Each entry repeated `repeats` times along `axis`, as numpy's repeat (an integer count)."""
    x = _node(x, "repeat")
    if axis is None:
        if x.shape and x.shape[0] is None:
            raise ValueError("kcompile.ops.repeat over the flattened value needs no batch axis; "
                             "give an axis")
        x, axis = B.reshape(x, (x.type.static_size,)), 0
    axis = _axis(x, axis, "repeat", several=False) % x.type.rank
    count = int(repeats)
    shape = list(x.shape)
    if shape[axis] is None:
        raise NotImplementedError("kcompile.ops.repeat cannot repeat along the batch axis")
    x = B.broadcast(B.reshape(x, shape[:axis + 1] + [1] + shape[axis + 1:]),
                    shape[:axis + 1] + [count] + shape[axis + 1:])
    return B.reshape(x, shape[:axis] + [shape[axis] * count] + shape[axis + 1:])


def size(x):
    """The number of entries: an int, or a traced value with the batch."""
    node = as_traced(x)
    if not isinstance(node, Node):
        return int(np.size(x))
    static = node.type.static_size
    return static if None not in node.shape else B.mul(B.dim_size(node, 0), float(static))


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """One value per sample, as keras.ops.categorical_crossentropy."""
    from kcompile import losses
    return losses.categorical_crossentropy(target, output, from_logits=from_logits, axis=axis)


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    from kcompile import losses
    return losses.sparse_categorical_crossentropy(target, output, from_logits=from_logits, axis=axis)


def binary_crossentropy(target, output, from_logits=False):
    """Elementwise, as keras.ops.binary_crossentropy (keras.losses' averages the last axis)."""
    from kcompile import losses
    output = _node(output, "binary_crossentropy")
    target = as_traced(target)
    if not isinstance(target, Node):
        target = B.const(np.asarray(target, np.float32))
    if target.dtype != output.dtype:
        target = B.cast(target, output.dtype)
    return losses.binary_crossentropy_values(target, output, from_logits)


def transpose(x, axes=None):
    x = _node(x, "transpose")
    rank = x.type.rank
    if axes is None:
        return B.transpose(x, tuple(reversed(range(rank))))
    axes = tuple(axes)
    _axis(x, axes, "transpose")
    perm = tuple(int(a) % rank for a in axes)
    if sorted(perm) != list(range(rank)):
        raise ValueError(f"kcompile.ops.transpose: axes={axes} is not a permutation of the {rank} "
                         f"axes of {x.type}")
    return B.transpose(x, perm)


def reshape(x, new_shape):
    """Keras's reshape; a -1 that stands for the batch (the other sizes are one sample's) keeps it,
    as does the batch size from `shape`."""
    x = _node(x, "reshape")
    shape = [None if _is_batch_size(d) else d for d in new_shape]
    if None in shape:
        return B.reshape(x, shape)
    if x.shape and x.shape[0] is None and None not in shape and shape.count(-1) == 1:
        rest = 1
        for d in shape:
            rest *= d if d != -1 else 1
        if rest == x.type.static_size:
            shape[shape.index(-1)] = None
        else:
            raise ValueError(f"kcompile.ops.reshape: {tuple(new_shape)} would mix the batch axis of "
                             f"{x.type} with others; keep the batch first, e.g. (-1, ...) with "
                             "one sample's sizes after it")
    return B.reshape(x, shape)


def expand_dims(x, axis):
    x = _node(x, "expand_dims")
    shape = list(x.shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    rank = len(shape) + len(axes)
    _axis(x, axes, "expand_dims", rank=rank)
    for a in sorted(int(a) % rank for a in axes):
        shape.insert(a, 1)
    return B.reshape(x, shape)


def squeeze(x, axis=None):
    x = _node(x, "squeeze")
    rank = x.type.rank
    _axis(x, axis, "squeeze")
    axes = {a % rank for a in ((axis,) if isinstance(axis, int) else axis)} if axis is not None \
        else {i for i, d in enumerate(x.shape) if d == 1}
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of shape {x.shape}: its size is not 1")
    return B.reshape(x, [d for i, d in enumerate(x.shape) if i not in axes])


def cast(x, dtype):
    import numpy as np
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"kcompile.ops.cast: dtype {dtype!r} is not one of {sorted(_DTYPES)} "
                         "(kcompile computes in float32, float64, int32 and bool)")
    return B.cast(_node(x, "cast"), _DTYPES[name])


def power(x1, x2):
    """x1 ** x2: a number exponent as the `**` operator takes it (integers as products), a traced
    one as exp(x2 log x1) (x1 > 0; a number or array base too, as Keras's schedules write
    `ops.power(decay_rate, step / decay_steps)`)."""
    base, exponent = as_traced(x1), as_traced(x2)
    if isinstance(base, Node) and not isinstance(exponent, Node):
        return base ** exponent
    if not isinstance(exponent, Node):
        _node(exponent, "power")
    if not isinstance(base, Node):
        value = np.asarray(base)
        if value.dtype.kind not in "fiub":
            raise TypeError(f"kcompile.ops.power: the base must be numeric; got {base!r}")
        if value.ndim == 0 and float(value) > 0:
            return float(value) ** exponent        # (the operator's b ** x)
        base = B.const(value, exponent.dtype if exponent.dtype in ("f32", "f64") else "f32")
    return B.exp(B.mul(exponent, B.log(base)))


floor_divide = _binary(B.floor_div, "floor_divide")   # x1 // x2, as numpy's
mod = _binary(B.mod, "mod")                           # x1 % x2, with the divisor's sign


def softplus(x):
    """log(1 + exp(x)), as max(x, 0) + log(1 + exp(-|x|)): no overflow for large x."""
    x = _node(x, "softplus")
    return B.add(B.maximum(x, 0.0), B.log(B.add(B.exp(B.neg(B.abs(x))), 1.0)))


def silu(x):
    """x * sigmoid(x)."""
    x = _node(x, "silu")
    return B.mul(x, activations.sigmoid(x))


swish = silu


def gelu(x, approximate=True):
    """Keras's ops.gelu (approximate=True by default there, unlike the activation)."""
    return activations.gelu(_node(x, "gelu"), approximate=approximate)


def elu(x, alpha=1.0):
    return activations.elu(_node(x, "elu"), alpha)


def selu(x):
    return activations.selu(_node(x, "selu"))


def leaky_relu(x, negative_slope=0.2):
    return activations.leaky_relu(_node(x, "leaky_relu"), negative_slope)


def hard_sigmoid(x):
    return activations.hard_sigmoid(_node(x, "hard_sigmoid"))


def softsign(x):
    return activations.softsign(_node(x, "softsign"))


def relu6(x):
    return activations.relu6(_node(x, "relu6"))


def sign(x):
    """-1, 0 or 1, as x is negative, zero or positive."""
    x = _node(x, "sign")
    return B.select(B.gt(x, 0.0), B.full_like(x, 1.0),
                    B.select(B.lt(x, 0.0), B.full_like(x, -1.0), B.full_like(x, 0.0)))


def rsqrt(x):
    return B.div(1.0, B.sqrt(_node(x, "rsqrt")))


def var(x, axis=None, keepdims=False):
    """The (biased) variance, as numpy's and Keras's."""
    x = _node(x, "var")
    axis = _axis(x, axis, "var")
    deviation = B.sub(x, B.reduce_mean(x, axis, keepdims=True))
    return B.reduce_mean(B.mul(deviation, deviation), axis, keepdims)


def std(x, axis=None, keepdims=False):
    return B.sqrt(var(x, axis, keepdims))


def concatenate(xs, axis=0):
    """Keras's concatenate (default axis 0); along the batch axis it is not supported."""
    from ir import build_seq
    nodes = [_node(x, "concatenate") for x in xs]
    return build_seq.concat(nodes, axis)


def stack(xs, axis=0):
    """The values, each of one shape, along a new axis."""
    nodes = [expand_dims(_node(x, "stack"), axis) for x in xs]
    return concatenate(nodes, axis)


def shape(x):
    """The shape as a tuple, as Keras's ops.shape.  Of a traced value, the batch size is itself a
    traced (float32) value, so that `ops.sum(v) / ops.shape(v)[0]` and
    `ops.reshape(x, (ops.shape(x)[0], -1))` work as in Keras; the other sizes are ints."""
    node = as_traced(x)
    if not isinstance(node, Node):
        return tuple(np.shape(x))
    return tuple(B.dim_size(node, axis) if d is None else d for axis, d in enumerate(node.shape))


def _is_batch_size(d) -> bool:
    """A size `shape` gave for a batch axis (a traced dim_size of an axis of unknown size)."""
    return isinstance(d, Node) and d.op == "dim_size" and d.operands[0].shape[d.attr("axis")] is None


def convert_to_numpy(x):
    """An array's numbers as numpy's; a traced value has none yet (a TypeError says so)."""
    if isinstance(as_traced(x), Node):
        raise TypeError("kcompile.ops.convert_to_numpy: a traced value (inside a layer's call, a "
                        "loss or a metric) has no numbers until the compiled step runs")
    return np.asarray(x)


def full(shape, fill_value, dtype="float32"):
    return np.full(shape, fill_value, dtype)


def eye(N, M=None, k=0, dtype="float32"):
    return np.eye(N, M, k, dtype=dtype)


def convert_to_tensor(x, dtype=None):
    """A traced value as it is; anything else as a numpy array (Keras's backend tensor)."""
    node = as_traced(x)
    if isinstance(node, Node):
        return node if dtype is None else cast(node, dtype)
    return np.asarray(x, dtype=dtype)


def ones(shape, dtype="float32"):
    """An array of ones (a constant where it meets traced values), as numpy's."""
    return np.ones(shape, dtype)


def zeros(shape, dtype="float32"):
    return np.zeros(shape, dtype)


# -- the same functions on arrays, outside a trace ------------------------------------------------

# how many leading positional arguments are operands (the rest are axes, shapes, dtypes, bounds)
_OPERANDS = {name: 2 for name in ("add", "subtract", "multiply", "divide", "true_divide", "maximum",
                                  "minimum", "greater", "greater_equal", "less", "less_equal",
                                  "equal", "not_equal", "matmul", "dot", "power",
                                  "logical_and", "logical_or", "divide_no_nan",
                                  "categorical_crossentropy", "sparse_categorical_crossentropy",
                                  "binary_crossentropy")}
_OPERANDS["where"] = 3
_SEQUENCE_OPERAND = ("concatenate", "stack")     # one argument: a list of operands
# numpy's already, or not an array function
_NOT_EAGER = ("ones", "zeros", "shape", "convert_to_numpy", "size", "full", "eye",
              "convert_to_tensor", "categorical_crossentropy", "sparse_categorical_crossentropy")


def _is_traced(value) -> bool:
    if isinstance(value, (list, tuple)):
        return builtins.any(_is_traced(v) for v in value)
    return isinstance(as_traced(value), Node)


def _run_eagerly(fn, operands: list, build):
    """Trace `build(values)` on static inputs shaped like the array `operands` (Python numbers stay
    constants) and run it with the reference interpreter: floats as f32, integers as i32 (as f32
    beside a float operand, as numpy promotes them), booleans as bool."""
    import ir
    arrays = [None if isinstance(v, (bool, numbers.Number)) and not isinstance(v, np.generic)
              else np.asarray(v) for v in operands]
    if builtins.all(a is None for a in arrays):
        # numbers only (ops.exp(-0.1), as a learning-rate schedule writes): 0-d arrays, the
        # floats float32 (Keras's default)
        arrays = [np.asarray(v, np.float32 if isinstance(v, float) else None) for v in operands]
    floating = builtins.any(a is not None and a.dtype.kind == "f" for a in arrays)
    feeds, inputs, values = {}, [], []
    for index, (value, array) in enumerate(zip(operands, arrays)):
        if array is None:
            values.append(value)
            continue
        kind = array.dtype.kind
        if kind == "b":
            dtype, np_dtype = "bool", np.bool_
        elif kind == "f" or (kind in "iu" and floating):
            dtype, np_dtype = "f32", np.float32
        elif kind in "iu":
            dtype, np_dtype = "i32", np.int32
        else:
            raise TypeError(f"kcompile.ops.{fn.__name__} takes numeric arrays; got dtype "
                            f"{array.dtype}")
        name = f"operand_{index}"
        node = B.arg(name, dtype, array.shape)
        inputs.append(node)
        values.append(node)
        feeds[name] = array.astype(np_dtype)
    out = build(values)
    if not isinstance(out, Node):
        return out
    with np.errstate(all="ignore"):
        return ir.run(ir.Graph(f"ops.{fn.__name__}", inputs, [("out", out)]), feeds)["out"]


def _eager(fn):
    """`fn` as given when any argument is traced; on arrays, run once (see `_run_eagerly`)."""
    name = fn.__name__
    count = _OPERANDS.get(name, 1)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not args or _is_traced(args) or _is_traced(list(kwargs.values())):
            return fn(*args, **kwargs)
        if name in _SEQUENCE_OPERAND:
            items = list(args[0])
            return _run_eagerly(fn, items, lambda nodes: fn(nodes, *args[1:], **kwargs))
        operands, rest = list(args[:count]), args[count:]
        return _run_eagerly(fn, operands, lambda nodes: fn(*nodes, *rest, **kwargs))
    return call


for _name in __all__:
    if _name not in _NOT_EAGER:
        globals()[_name] = _eager(globals()[_name])
del _name
