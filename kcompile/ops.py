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
import inspect
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
           "relu6", "floor_divide", "mod", "sin", "cos", "tan",
           # more of keras.ops (see the section "more of keras.ops" below)
           "expm1", "log2", "log10", "exp2", "reciprocal", "sinh", "cosh", "arcsinh", "arccosh",
           "arctanh", "arctan", "arcsin", "arccos", "arctan2", "erf", "erfc", "trunc",
           "logaddexp", "logical_xor", "isclose", "nan_to_num", "log_sigmoid", "hard_silu",
           "hard_swish", "hard_tanh", "celu", "squareplus", "tanh_shrink", "soft_shrink",
           "hard_shrink", "sparse_plus", "sparse_sigmoid", "threshold", "glu", "amax", "amin",
           "cumsum", "cumprod", "prod", "moments", "average", "norm", "normalize", "moveaxis",
           "swapaxes", "flip", "roll", "take", "take_along_axis", "sort", "argsort", "top_k",
           "in_top_k", "split", "unstack", "pad", "tril", "triu", "diagonal", "diag", "trace",
           "outer", "einsum", "multi_hot", "full_like", "ravel", "ndim", "arange", "linspace",
           "meshgrid", "tri", "identity", "slice", "hstack", "vstack", "tensordot", "inner", "vdot",
           "diff", "deg2rad", "rad2deg", "hypot", "cbrt", "signbit", "isneginf", "isposinf",
           "heaviside", "copy", "dtype", "is_tensor", "get_item", "fliplr", "flipud", "rot90",
           "select", "dot_product_attention", "layer_normalization", "rms_normalization",
           "quantile", "median", "ptp", "logspace", "empty", "empty_like", "segment_sum",
           "segment_max", "sinc", "fmod", "kron", "cross", "digitize", "searchsorted", "isin",
           "nansum", "nanmean", "nanmax", "nanmin", "real", "imag", "conj", "conjugate", "isreal",
           "trapezoid", "vander"]

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
    wide, dtype = _wide_input(x, name)
    turns = B.floor(B.add(B.mul(wide, 2.0 / np.pi), 0.5))                  # round(x 2/pi)
    r = B.sub(B.sub(wide, B.mul(turns, _HALF_PI_HI)), B.mul(turns, _HALF_PI_LO))
    square = B.mul(r, r)
    sin_r, cos_r = B.mul(_horner(square, _SIN_TERMS), r), _horner(square, _COS_TERMS)
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


# -- more of keras.ops: math in float64 composites, scans, reordering, sorting by ranks ----------
#
# Elementwise functions the IR has no primitive for are written as sin and cos are: in float64
# whatever the input's float type (integers give float32, as Keras's), then rounded to the input's
# type.  Where a `select` picks between branches, the branch it discards is kept finite (its
# gradient is multiplied by zero, and 0 * inf is NaN).

def _wide_input(x, name):
    """x as float64, and the float type of the result (x's, or float32 for integers and bools)."""
    x = _node(x, name)
    dtype = x.dtype if x.dtype in ("f32", "f64") else "f32"
    return (x if x.dtype == "f64" else B.cast(x, "f64")), dtype


def _wide_pair(x1, x2, name):
    """x1 and x2 (traced values or numbers, one at least traced) as float64 values of one shape,
    and the float type of the result (the traced operand's, or float32 for integers and bools)."""
    a, b = as_traced(x1), as_traced(x2)
    if not isinstance(a, Node) and not isinstance(b, Node):
        _node(a, name)
    like = a if isinstance(a, Node) else b
    dtype = like.dtype if like.dtype in ("f32", "f64") else "f32"
    a, b = (B.cast(v, "f64") if isinstance(v, Node) else B.const(np.asarray(v, np.float64), "f64")
            for v in (a, b))
    a, b = B._lift(a, b)
    return a, b, dtype


def _horner(z, coefficients):
    total = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        total = B.add(B.mul(total, z), coefficient)
    return total


def _small_or(w, limit, series, other):
    """series(w) where |w| < limit (Taylor terms: accurate there), else other(w') with w' = w
    outside the small range and 1 inside it (so `other` stays finite where it is discarded)."""
    small = B.lt(B.abs(w), limit)
    return B.select(small, series(w), other(B.select(small, B.full_like(w, 1.0), w)))


def expm1(x):
    """exp(x) - 1, accurate near 0 (a Taylor series below |x| < 1e-5, exp in float64 above)."""
    w, dtype = _wide_input(x, "expm1")
    out = _small_or(w, 1e-5, lambda v: B.mul(v, _horner(v, [1.0, 0.5, 1 / 6, 1 / 24])),
                    lambda v: B.sub(B.exp(v), 1.0))
    return _narrow(out, dtype)


def log2(x):
    w, dtype = _wide_input(x, "log2")
    return _narrow(B.mul(B.log(w), 1.0 / _math.log(2.0)), dtype)


def log10(x):
    w, dtype = _wide_input(x, "log10")
    return _narrow(B.mul(B.log(w), 1.0 / _math.log(10.0)), dtype)


def exp2(x):
    w, dtype = _wide_input(x, "exp2")
    return _narrow(B.exp(B.mul(w, _math.log(2.0))), dtype)


def reciprocal(x):
    """1 / x (integers divide as float32)."""
    return B.true_div(1.0, _node(x, "reciprocal"))


def sinh(x):
    w, dtype = _wide_input(x, "sinh")
    out = _small_or(w, 1e-3, lambda v: B.mul(v, _horner(B.mul(v, v), [1.0, 1 / 6, 1 / 120, 1 / 5040])),
                    lambda v: B.mul(B.sub(B.exp(v), B.exp(B.neg(v))), 0.5))
    return _narrow(out, dtype)


def cosh(x):
    w, dtype = _wide_input(x, "cosh")
    return _narrow(B.mul(B.add(B.exp(w), B.exp(B.neg(w))), 0.5), dtype)


def arcsinh(x):
    """sign(x) log(|x| + sqrt(x^2 + 1)) (a Taylor series near 0)."""
    w, dtype = _wide_input(x, "arcsinh")

    def large(v):
        negative = B.lt(v, 0.0)
        a = B.select(negative, B.neg(v), v)
        value = B.log(B.add(a, B.sqrt(B.add(B.mul(a, a), 1.0))))
        return B.select(negative, B.neg(value), value)
    out = _small_or(w, 1e-3, lambda v: B.mul(v, _horner(B.mul(v, v), [1.0, -1 / 6, 3 / 40])), large)
    return _narrow(out, dtype)


def arccosh(x):
    """log(x + sqrt((x - 1)(x + 1))); NaN below 1."""
    w, dtype = _wide_input(x, "arccosh")
    return _narrow(B.log(B.add(w, B.sqrt(B.mul(B.sub(w, 1.0), B.add(w, 1.0))))), dtype)


def arctanh(x):
    """(log(1 + x) - log(1 - x)) / 2 (a Taylor series near 0); +-inf at +-1, NaN past them."""
    w, dtype = _wide_input(x, "arctanh")
    out = _small_or(w, 1e-3, lambda v: B.mul(v, _horner(B.mul(v, v), [1.0, 1 / 3, 1 / 5, 1 / 7])),
                    lambda v: B.mul(B.sub(B.log(B.add(1.0, v)), B.log(B.sub(1.0, v))), 0.5))
    return _narrow(out, dtype)


_ATAN_TERMS = [(-1) ** k / (2 * k + 1) for k in range(13)]


def _atan64(w):
    """arctan of a float64 value: |x| > 1 as pi/2 - atan(1/|x|), then the argument halved twice
    (atan t = 2 atan(t / (1 + sqrt(1 + t^2)))) to |t| <= tan(pi/16), and the series to t^25."""
    negative = B.lt(w, 0.0)
    a = B.select(negative, B.neg(w), w)
    big = B.gt(a, 1.0)
    t = B.select(big, B.div(1.0, B.select(big, a, B.full_like(a, 1.0))), a)
    for _ in range(2):
        t = B.div(t, B.add(1.0, B.sqrt(B.add(B.mul(t, t), 1.0))))
    reduced = B.mul(B.mul(_horner(B.mul(t, t), _ATAN_TERMS), t), 4.0)
    value = B.select(big, B.sub(np.pi / 2, reduced), reduced)
    return B.select(negative, B.neg(value), value)


def arctan(x):
    w, dtype = _wide_input(x, "arctan")
    return _narrow(_atan64(w), dtype)


def _asin64(w):
    # asin x = 2 atan(x / (1 + sqrt(1 - x^2))): the argument stays in [-1, 1]; NaN past +-1
    return B.mul(_atan64(B.div(w, B.add(1.0, B.sqrt(B.mul(B.sub(1.0, w), B.add(1.0, w)))))), 2.0)


def arcsin(x):
    w, dtype = _wide_input(x, "arcsin")
    return _narrow(_asin64(w), dtype)


def arccos(x):
    """2 atan(sqrt((1 - x) / (1 + x))): exactly 0 at 1, pi at -1, NaN past them."""
    w, dtype = _wide_input(x, "arccos")
    return _narrow(B.mul(_atan64(B.sqrt(B.div(B.sub(1.0, w), B.add(1.0, w)))), 2.0), dtype)


def arctan2(x1, x2):
    """The angle of the point (x2, x1), as numpy's arctan2(y=x1, x=x2), in (-pi, pi] (the signs of
    zeros are not told apart: arctan2(0, -0) is 0, numpy's pi; two infinities give NaN)."""
    y, x, dtype = _wide_pair(x1, x2, "arctan2")
    zero = B.eq(x, 0.0)
    base = _atan64(B.div(y, B.select(zero, B.full_like(x, 1.0), x)))
    half_turn = B.select(B.ge(y, 0.0), B.full_like(y, np.pi), B.full_like(y, -np.pi))
    on_axis = B.select(B.gt(y, 0.0), B.full_like(y, np.pi / 2),
                       B.select(B.lt(y, 0.0), B.full_like(y, -np.pi / 2), B.mul(y, 0.0)))
    out = B.select(zero, on_axis, B.select(B.lt(x, 0.0), B.add(base, half_turn), base))
    return _narrow(out, dtype)


def erf(x):
    """The error function (Eigen's and XLA's float32 rational approximation, |error| < 5e-7)."""
    x = _node(x, "erf")
    return activations.erf_approximation(x if x.dtype in ("f32", "f64") else B.cast(x, "f32"))


def erfc(x):
    """1 - erf(x) (absolute error below 5e-7; its relative error grows in the tail)."""
    return B.sub(1.0, erf(x))


def trunc(x):
    """x rounded toward zero."""
    x = _node(x, "trunc")
    if x.dtype not in ("f32", "f64"):
        return x
    return B.select(B.lt(x, 0.0), B.neg(B.floor(B.neg(x))), B.floor(x))


def logaddexp(x1, x2):
    """log(exp(x1) + exp(x2)), in float64 without overflow: the larger plus log(1 + exp(-|x1 - x2|))
    (the gradient splits evenly at a tie, as the exact one)."""
    a, b, dtype = _wide_pair(x1, x2, "logaddexp")
    d = B.sub(a, b)
    d = B.select(B.ne(d, d), B.zeros_like(d), d)       # (inf - inf: the two are equal infinities)
    first = B.ge(d, 0.0)
    out = B.select(first, B.add(a, B.log(B.add(B.exp(B.neg(d)), 1.0))),
                   B.add(b, B.log(B.add(B.exp(d), 1.0))))
    return _narrow(out, dtype)


def log_sigmoid(x):
    """log(sigmoid(x)) = -logaddexp(0, -x), in float64 (kcompile.activations.log_sigmoid, in
    float32, is within 6e-8 of it)."""
    x = _node(x, "log_sigmoid")
    return B.neg(logaddexp(0.0, B.neg(x if x.dtype in ("f32", "f64") else B.cast(x, "f32"))))


def logical_xor(x1, x2):
    return B.eq(B.add(B.cast(_as_bool(x1, "logical_xor"), "i32"),
                      B.cast(_as_bool(x2, "logical_xor"), "i32")), 1)


def isclose(x1, x2, rtol=1e-5, atol=1e-8, equal_nan=False):
    """|x1 - x2| <= atol + rtol |x2|, as numpy's (equal infinities are close)."""
    a, b = as_traced(x1), as_traced(x2)
    if not isinstance(a, Node) and not isinstance(b, Node):
        _node(a, "isclose")
    a, b = B._lift(a, b)
    if a.dtype not in ("f32", "f64"):
        a, b = B.cast(a, "f32"), B.cast(b, "f32")
    close = logical_or(B.eq(a, b), B.le(B.abs(B.sub(a, b)), B.add(B.mul(B.abs(b), float(rtol)),
                                                                   float(atol))))
    if equal_nan:
        close = logical_or(close, logical_and(B.ne(a, a), B.ne(b, b)))
    return close


def nan_to_num(x, nan=0.0, posinf=None, neginf=None):
    """NaN as `nan`, +inf as `posinf` (default: the largest finite float), -inf as `neginf`."""
    x = _node(x, "nan_to_num")
    if x.dtype not in ("f32", "f64"):
        return x
    largest = float(np.finfo(np.float32 if x.dtype == "f32" else np.float64).max)
    posinf = largest if posinf is None else float(posinf)
    neginf = -largest if neginf is None else float(neginf)
    out = B.select(B.ne(x, x), B.full_like(x, float(nan)), x)
    out = B.select(B.eq(x, float("inf")), B.full_like(x, posinf), out)
    return B.select(B.eq(x, float("-inf")), B.full_like(x, neginf), out)


def _activation_op(fn, name):
    def op(x, *args, **kwargs):
        return fn(_node(x, name), *args, **kwargs)
    op.__name__ = name
    op.__doc__ = f"As kcompile.activations.{fn.__name__} (Keras's ops.{name})."
    op.__signature__ = inspect.signature(fn)
    return op


hard_silu = _activation_op(activations.hard_silu, "hard_silu")
hard_swish = _activation_op(activations.hard_silu, "hard_swish")
hard_tanh = _activation_op(activations.hard_tanh, "hard_tanh")
celu = _activation_op(activations.celu, "celu")
squareplus = _activation_op(activations.squareplus, "squareplus")
tanh_shrink = _activation_op(activations.tanh_shrink, "tanh_shrink")
soft_shrink = _activation_op(activations.soft_shrink, "soft_shrink")
hard_shrink = _activation_op(activations.hard_shrink, "hard_shrink")
sparse_plus = _activation_op(activations.sparse_plus, "sparse_plus")
sparse_sigmoid = _activation_op(activations.sparse_sigmoid, "sparse_sigmoid")
threshold = _activation_op(activations.threshold, "threshold")


def glu(x, axis=-1):
    """a * sigmoid(b), a and b the two halves of x along `axis`."""
    x = _node(x, "glu")
    axis = _axis(x, axis, "glu", several=False)
    size = x.shape[axis]
    if size is None or size % 2:
        raise ValueError(f"kcompile.ops.glu: axis {axis} of {x.type} must have an even size")
    from ir import build_seq
    first, second = build_seq.split(x, 2, axis)
    return B.mul(first, activations.sigmoid(second))


# -- reductions and scans --------------------------------------------------------------------------

def amax(x, axis=None, keepdims=False):
    return max(x, axis, keepdims)


def amin(x, axis=None, keepdims=False):
    return min(x, axis, keepdims)


def _static_axis(x, axis, name):
    """axis (an integer) as a non-negative one whose size is static (not the batch's)."""
    axis = _axis(x, axis, name, several=False) % x.type.rank
    if x.shape[axis] is None:
        raise NotImplementedError(f"kcompile.ops.{name} along the batch axis is not supported (its "
                                  "size is not known while the graph is traced); use another axis")
    return axis


def _flat(x, name):
    """x flattened (axis=None), which a value with a batch axis cannot be."""
    if x.type.batched:
        raise NotImplementedError(f"kcompile.ops.{name} with axis=None flattens the batch axis "
                                  f"too, which a traced value ({x.type}) cannot; give an axis")
    return B.reshape(x, (x.type.static_size,))


def _ones_block(x, axis, count):
    from ir import build_seq
    return B.full_like(build_seq.slice(x, 0, count, axis) if x.shape[axis] >= count else
                       B.broadcast(build_seq.slice(x, 0, 1, axis),
                                   x.shape[:axis] + (count,) + x.shape[axis + 1:]), 1)


def _scan(x, axis, combine, identity_block):
    """Inclusive scan along `axis` in log2(n) steps (Hillis and Steele): at shift s, each entry
    combines with the one s before it (the first s with the identity)."""
    from ir import build_seq
    size, shift = x.shape[axis], 1
    while shift < size:
        before = build_seq.concat([identity_block(x, axis, shift),
                                   build_seq.slice(x, 0, size - shift, axis)], axis)
        x = combine(x, before)
        shift *= 2
    return x


def _scan_input(x, axis, dtype, name):
    x = _node(x, name)
    if x.dtype == "bool":
        x = B.cast(x, "i32")
    if dtype is not None:
        x = cast(x, dtype)
    if axis is None:
        return _flat(x, name), 0
    return x, _static_axis(x, axis, name)


def cumsum(x, axis=None, dtype=None):
    """Cumulative sums along `axis` (None: of the flattened value), as Keras's."""
    x, axis = _scan_input(x, axis, dtype, "cumsum")
    return _scan(x, axis, B.add, lambda v, a, n: B.zeros_like(_ones_block(v, a, n)))


def cumprod(x, axis=None, dtype=None):
    """Cumulative products along `axis` (None: of the flattened value)."""
    x, axis = _scan_input(x, axis, dtype, "cumprod")
    return _scan(x, axis, B.mul, _ones_block)


def prod(x, axis=None, keepdims=False, dtype=None):
    """The product over `axis` (None: every axis), by halving: the two halves multiplied
    (an odd size first gets a 1), so the gradient is the product of the others, zeros included."""
    from ir import build_seq
    x = _node(x, "prod")
    if x.dtype == "bool":
        x = B.cast(x, "i32")
    if dtype is not None:
        x = cast(x, dtype)
    rank = x.type.rank
    axes = tuple(range(rank)) if axis is None else \
        tuple(a % rank for a in ((axis,) if isinstance(axis, numbers.Integral) else axis))
    _axis(x, axis, "prod")
    for a in axes:
        if x.shape[a] is None:
            raise NotImplementedError("kcompile.ops.prod over the batch axis is not supported (its "
                                      "size is not known while the graph is traced); give the "
                                      "other axes")
        while x.shape[a] > 1:
            size = x.shape[a]
            if size % 2:
                x = build_seq.concat([x, _ones_block(x, a, 1)], a)
                size += 1
            x = B.mul(build_seq.slice(x, 0, size // 2, a), build_seq.slice(x, size // 2, size, a))
    if keepdims:
        return x
    return B.reshape(x, [d for i, d in enumerate(x.shape) if i not in axes])


def moments(x, axes, keepdims=False, synchronized=False):
    """(mean, variance) over `axes`, as Keras's ops.moments."""
    x = _node(x, "moments")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    return mean(x, axes, keepdims), var(x, axes, keepdims)


def average(x, axis=None, weights=None):
    """The mean over `axis`, weighted by `weights` (x's shape, or 1-D along `axis`)."""
    x = _node(x, "average")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    if weights is None:
        return mean(x, axis)
    w = as_traced(weights)
    if not isinstance(w, Node):
        w = B.const(np.asarray(w, np.float32), x.dtype)
    elif w.dtype != x.dtype:
        w = B.cast(w, x.dtype)
    if w.type.rank == 1 and x.type.rank > 1:
        if axis is None or not isinstance(axis, numbers.Integral):
            raise ValueError("kcompile.ops.average: 1-D weights need one integer axis")
        a = _axis(x, axis, "average", several=False) % x.type.rank
        w = B.reshape(w, tuple(w.shape[0] if i == a else 1 for i in range(x.type.rank)))
    return B.div(B.reduce_sum(B.mul(x, w), _axis(x, axis, "average"), False),
                 B.reduce_sum(B.mul(B.full_like(x, 1.0), w), _axis(x, axis, "average"), False))


def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002  (Keras's name)
    """numpy's and Keras's norm: of vectors (ord None or 2, 1, inf, -inf, 0 or another number) or,
    with two axes, of matrices (ord None or 'fro', 1, -1, inf, -inf); 2, -2 and 'nuc' need singular
    values, which kcompile does not compute."""
    x = _node(x, "norm")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    rank = x.type.rank
    if axis is None:
        if ord is None:
            out = B.sqrt(B.reduce_sum(B.mul(x, x), None, keepdims))
            return out
        axis = tuple(range(rank))
        if rank not in (1, 2):
            raise ValueError(f"kcompile.ops.norm: ord={ord!r} with axis=None needs a 1-D or 2-D "
                             f"value; got {x.type}")
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    _axis(x, axes, "norm")
    axes = tuple(a % rank for a in axes)
    magnitude = B.abs(x)
    if len(axes) == 1:
        if ord is None or ord == 2:
            return B.sqrt(B.reduce_sum(B.mul(x, x), axes, keepdims))
        if ord == float("inf"):
            return B.reduce_max(magnitude, axes, keepdims)
        if ord == float("-inf"):
            return B.neg(B.reduce_max(B.neg(magnitude), axes, keepdims))
        if ord == 0:
            return B.reduce_sum(B.cast(B.ne(x, 0.0), x.dtype), axes, keepdims)
        if ord == 1:
            return B.reduce_sum(magnitude, axes, keepdims)
        if isinstance(ord, str) or not isinstance(ord, numbers.Number):
            raise ValueError(f"kcompile.ops.norm: ord={ord!r} is not a vector norm")
        p = float(ord)
        return power(B.reduce_sum(power(magnitude, p), axes, keepdims), 1.0 / p)
    if len(axes) != 2:
        raise ValueError(f"kcompile.ops.norm: axis must be an integer or two of them; got {axis!r}")
    if ord is None or ord == "fro":
        return B.sqrt(B.reduce_sum(B.mul(x, x), axes, keepdims))
    rows, cols = axes
    if ord in (1, -1, float("inf"), float("-inf")):
        summed, other = (rows, cols) if ord in (1, -1) else (cols, rows)
        sums = B.reduce_sum(magnitude, (summed,), True)
        out = B.reduce_max(sums, (other,), True) if ord in (1, float("inf")) else \
            B.neg(B.reduce_max(B.neg(sums), (other,), True))
        return out if keepdims else B.reshape(out, [d for i, d in enumerate(out.shape)
                                                    if i not in axes])
    if ord in (2, -2, "nuc"):
        raise NotImplementedError(f"kcompile.ops.norm: the matrix norm ord={ord!r} needs singular "
                                  "values, which kcompile does not compute")
    raise ValueError(f"kcompile.ops.norm: ord={ord!r} is not a matrix norm")


def normalize(x, axis=-1, order=2, epsilon=None):
    """x divided by its `order`-norm along `axis`, as Keras's ops.normalize (order 2: x times
    min(rsqrt(sum of squares), 1 / epsilon); epsilon defaults to 1e-7)."""
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
        raise ValueError(f"Argument `order` must be an int >= 1. Received: order={order}")
    x = _node(x, "normalize")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    epsilon = 1e-7 if epsilon is None else float(epsilon)
    if order == 2:
        inverse = B.div(1.0, B.sqrt(B.reduce_sum(B.mul(x, x), _axis(x, axis, "normalize"), True)))
        return B.mul(x, B.minimum(inverse, 1.0 / epsilon))
    return B.div(x, B.maximum(norm(x, order, axis, keepdims=True), epsilon))


# -- reordering -----------------------------------------------------------------------------------

def moveaxis(x, source, destination):
    """numpy's moveaxis (the batch axis must stay first)."""
    x = _node(x, "moveaxis")
    rank = x.type.rank
    source = [source] if isinstance(source, numbers.Integral) else list(source)
    destination = [destination] if isinstance(destination, numbers.Integral) else list(destination)
    if len(source) != len(destination):
        raise ValueError("kcompile.ops.moveaxis: `source` and `destination` must have the same "
                         f"number of elements; got {source} and {destination}")
    _axis(x, source, "moveaxis")
    _axis(x, destination, "moveaxis")
    source = [a % rank for a in source]
    destination = [a % rank for a in destination]
    order = [a for a in range(rank) if a not in source]
    for dest, src in sorted(zip(destination, source)):
        order.insert(dest, src)
    return transpose(x, order)


def swapaxes(x, axis1, axis2):
    x = _node(x, "swapaxes")
    rank = x.type.rank
    _axis(x, (axis1, axis2), "swapaxes")
    order = list(range(rank))
    order[axis1 % rank], order[axis2 % rank] = order[axis2 % rank], order[axis1 % rank]
    return transpose(x, order)


def _pieces(x, indices, axis):
    """The entries at static `indices` along `axis`, by slices joined in order."""
    from ir import build_seq
    runs, start, stop = [], None, None
    for index in list(indices) + [None]:          # runs of consecutive indices, one slice each
        if start is not None and index == stop:
            stop += 1
            continue
        if start is not None:
            runs.append(build_seq.slice(x, start, stop, axis))
        if index is not None:
            start, stop = index, index + 1
    return build_seq.concat(runs, axis)


def flip(x, axis=None):
    """x with the order of the entries along `axis` (None: every axis) reversed."""
    x = _node(x, "flip")
    rank = x.type.rank
    axes = range(rank) if axis is None else \
        [a % rank for a in ((axis,) if isinstance(axis, numbers.Integral) else axis)]
    if axis is not None:
        _axis(x, axis, "flip")
    for a in axes:
        if x.shape[a] is None:
            raise NotImplementedError("kcompile.ops.flip cannot reverse the batch axis (its size "
                                      "is not known while the graph is traced); give the axes")
        if x.shape[a] > 1:
            x = _pieces(x, range(x.shape[a] - 1, -1, -1), a)
    return x


def roll(x, shift, axis=None):
    """x rolled by `shift` along `axis` (None: the flattened value, shape kept), as numpy's."""
    from ir import build_seq
    node = _node(x, "roll")
    if axis is None:
        flat = _flat(node, "roll")
        return B.reshape(roll(flat, int(shift), 0), node.shape)
    shifts = [shift] if isinstance(shift, numbers.Integral) else list(shift)
    axes = [axis] if isinstance(axis, numbers.Integral) else list(axis)
    if len(shifts) == 1 and len(axes) > 1:
        shifts = shifts * len(axes)
    if len(shifts) != len(axes):
        raise ValueError(f"kcompile.ops.roll: shift {shift!r} and axis {axis!r} differ in length")
    for s, a in zip(shifts, axes):
        a = _static_axis(node, a, "roll")
        size = node.shape[a]
        s = int(s) % size
        if s:
            node = build_seq.concat([build_seq.slice(node, size - s, size, a),
                                     build_seq.slice(node, 0, size - s, a)], a)
    return node


def _static_indices(indices):
    array = np.asarray(indices)
    if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and array.size
                                             and np.all(array == np.floor(array))):
        raise TypeError(f"kcompile.ops: indices must be integers; got {indices!r}")
    return array.astype(np.int64)


def take(x, indices, axis=None):
    """The entries of x at `indices` along `axis` (None: of the flattened value), as Keras's and
    numpy's take; negative indices count from the end.  Indices given as numbers (an array, a list)
    work on any value; traced indices (a value of ids) need an x without a batch axis (a weight, a
    constant), as an embedding lookup, and then gradients reach x."""
    x = _node(x, "take")
    if axis is None:
        x, axis = _flat(x, "take"), 0
    axis = _axis(x, axis, "take", several=False) % x.type.rank
    ids = as_traced(indices)
    if not isinstance(ids, Node):
        array = _static_indices(indices)
        size = x.shape[axis]
        if size is None:
            raise NotImplementedError("kcompile.ops.take along the batch axis is not supported")
        if array.size and (array.min() < -size or array.max() >= size):
            raise IndexError(f"kcompile.ops.take: an index in {array.tolist()} is out of range "
                             f"for axis {axis} of size {size}")
        array = array % size
        if array.size == 0:
            raise ValueError("kcompile.ops.take: no indices (kcompile values cannot be empty)")
        picked = _pieces(x, array.reshape(-1).tolist(), axis)
        return B.reshape(picked, x.shape[:axis] + array.shape + x.shape[axis + 1:])
    if x.type.batched:
        raise NotImplementedError("kcompile.ops.take with traced indices needs an x without a "
                                  "batch axis (a weight or constant table); for one index per "
                                  "sample, use kcompile.ops.take_along_axis")
    if ids.type.batched and axis != 0:
        raise NotImplementedError("kcompile.ops.take with batched indices takes along axis 0 only "
                                  "(the batch axis must stay first in the result)")
    from ir import build_nn
    size = x.shape[axis]
    ids = B.cast(ids, "i32") if ids.dtype != "i32" else ids
    ids = B.select(B.lt(ids, 0), B.add(ids, size), ids)          # negative: from the end
    table = moveaxis(x, axis, 0)
    picked = build_nn.gather(table, ids)                  # ids.shape + table's other axes
    id_rank = ids.type.rank
    order = list(range(id_rank, id_rank + axis)) + list(range(id_rank)) + \
        list(range(id_rank + axis, picked.type.rank))
    return B.transpose(picked, order)


def take_along_axis(x, indices, axis=None):
    """numpy's take_along_axis: out[..., j, ...] = x[..., indices[..., j, ...], ...] along `axis`,
    the other axes broadcast; negative indices count from the end.  Computed by comparing each
    index with every position (one-hot), so it works on batched values and traced indices, and the
    gradient reaches x."""
    x = _node(x, "take_along_axis")
    ids = as_traced(indices)
    if not isinstance(ids, Node):
        ids = B.const(_static_indices(indices).astype(np.int32), "i32")
    if axis is None:
        x, ids, axis = _flat(x, "take_along_axis"), _flat(ids, "take_along_axis"), 0
    if ids.type.rank != x.type.rank:
        raise ValueError(f"kcompile.ops.take_along_axis: indices ({ids.type}) must have the rank "
                         f"of x ({x.type})")
    axis = _static_axis(x, axis, "take_along_axis")
    size = x.shape[axis]
    ids = B.cast(ids, "i32") if ids.dtype != "i32" else ids
    ids = B.select(B.lt(ids, 0), B.add(ids, size), ids)
    last = x.type.rank - 1
    xm, im = moveaxis(x, axis, last), moveaxis(ids, axis, last)
    positions = B.const(np.arange(size, dtype=np.int32), "i32")
    hit = B.eq(B.reshape(im, im.shape + (1,)), positions)                   # [..., m, n]
    values = B.reshape(xm, xm.shape[:-1] + (1, size))                       # [..., 1, n]
    if values.dtype == "bool":
        values = B.cast(values, "i32")
    out = B.reduce_sum(B.select(hit, values, B.zeros_like(values)), (last + 1,), False)
    out = moveaxis(out, last, axis)
    return B.ne(out, 0) if x.dtype == "bool" else out


def _sort_ranks(x, descending):
    """x with `axis` last ([..., n]) -> each entry's place in sorted order (ties by position)."""
    n = x.shape[-1]
    xi = B.reshape(x, x.shape + (1,))                       # [..., n(i), 1]
    xj = B.reshape(x, x.shape[:-1] + (1, n))                # [..., 1, n(j)]
    before = B.gt(xj, xi) if descending else B.lt(xj, xi)
    earlier = B.const(np.tril(np.ones((n, n), bool), -1))   # j < i
    ahead = logical_or(before, logical_and(B.eq(xj, xi), earlier))
    return B.reduce_sum(B.cast(ahead, "i32"), (x.type.rank,), False)    # [..., n]


def _by_rank(x, ranks, count):
    """(the entries of x placed 0..count-1, their positions): [..., count] each."""
    n = x.shape[-1]
    places = B.const(np.arange(count, dtype=np.int32).reshape(count, 1), "i32")
    at = B.eq(B.reshape(ranks, ranks.shape[:-1] + (1, n)), places)          # [..., count, n]
    values = B.reshape(x if x.dtype != "bool" else B.cast(x, "i32"), x.shape[:-1] + (1, n))
    picked = B.reduce_sum(B.select(at, values, B.zeros_like(values)), (x.type.rank,), False)
    position = B.const(np.arange(n, dtype=np.int32), "i32")
    where_from = B.reduce_sum(B.select(at, B.broadcast(position, at.shape), B.zeros_like(
        B.broadcast(position, at.shape))), (x.type.rank,), False)
    return picked, where_from


def _sort_input(x, axis, name):
    x = _node(x, name)
    if axis is None:
        x, axis = _flat(x, name), 0
    axis = _static_axis(x, axis, name)
    return moveaxis(x, axis, x.type.rank - 1), axis


def sort(x, axis=-1):
    """x sorted ascending along `axis` (None: flattened).  By ranks: each entry is compared with
    every other one (n^2 comparisons per row, for rows of modest length); NaN is not supported."""
    xm, axis = _sort_input(x, axis, "sort")
    values, _ = _by_rank(xm, _sort_ranks(xm, False), xm.shape[-1])
    return moveaxis(values, values.type.rank - 1, axis)


def argsort(x, axis=-1):
    """The positions that sort x ascending along `axis` (stable: ties keep their order), int32."""
    xm, axis = _sort_input(x, axis, "argsort")
    _, positions = _by_rank(xm, _sort_ranks(xm, False), xm.shape[-1])
    return moveaxis(positions, positions.type.rank - 1, axis)


def top_k(x, k, sorted=True):  # noqa: A002  (Keras's name)
    """[values, indices] of the k largest entries along the last axis, largest first (ties: the
    lower index first), as Keras's ops.top_k; indices are int32."""
    x = _node(x, "top_k")
    n = x.shape[-1] if x.type.rank else None
    if n is None:
        raise ValueError(f"kcompile.ops.top_k needs a last axis of static size; got {x.type}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n:
        raise ValueError(f"kcompile.ops.top_k: k must be an integer in [1, {n}]; got {k!r}")
    return list(_by_rank(x, _sort_ranks(x, True), int(k)))      # (a list, as Keras 3's)


def in_top_k(targets, predictions, k):
    """Whether each target's prediction is among the k largest of its row (1 + how many are
    larger <= k; a NaN prediction never is), as Keras's."""
    predictions = _node(predictions, "in_top_k")
    targets = as_traced(targets)
    if not isinstance(targets, Node):
        targets = B.const(_static_indices(targets).astype(np.int32), "i32")
    at_label = take_along_axis(predictions, B.reshape(targets, targets.shape + (1,)), -1)
    at_label = B.select(B.ne(at_label, at_label), B.full_like(at_label, float("-inf")), at_label)
    larger = B.reduce_sum(B.cast(B.gt(predictions, at_label), "i32"), (-1,), False)
    return B.le(B.add(larger, 1), int(k))


def split(x, indices_or_sections, axis=0):
    """numpy's split: `indices_or_sections` equal parts, or the parts between the given indices;
    a list of values."""
    from ir import build_seq
    x = _node(x, "split")
    axis = _static_axis(x, axis, "split")
    size = x.shape[axis]
    if isinstance(indices_or_sections, numbers.Integral):
        count = int(indices_or_sections)
        if count <= 0 or size % count:
            raise ValueError(f"kcompile.ops.split: axis {axis} of size {size} does not split into "
                             f"{count} equal parts")
        return build_seq.split(x, count, axis)
    bounds = [0] + [builtins.min(builtins.max(int(i) % size if int(i) < 0 else int(i), 0), size)
                    for i in indices_or_sections] + [size]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    if builtins.any(s <= 0 for s in sizes):
        raise ValueError(f"kcompile.ops.split: the indices {list(indices_or_sections)} give an "
                         "empty part (kcompile values cannot be empty)")
    return build_seq.split(x, sizes, axis)


def unstack(x, num=None, axis=0):
    """The slices of x along `axis`, the axis removed (a list)."""
    x = _node(x, "unstack")
    axis = _static_axis(x, axis, "unstack")
    if num is not None and num != x.shape[axis]:
        raise ValueError(f"kcompile.ops.unstack: num={num} but axis {axis} of {x.type} has size "
                         f"{x.shape[axis]}")
    return [B.reshape(part, x.shape[:axis] + x.shape[axis + 1:]) for part in
            split(x, x.shape[axis], axis)]


def pad(x, pad_width, mode="constant", constant_values=None):
    """numpy's pad, modes 'constant' (with constant_values, a number), 'reflect', 'symmetric' and
    'edge'; the batch axis takes no padding."""
    from ir import build_seq
    x = _node(x, "pad")
    rank = x.type.rank
    widths = np.asarray(pad_width, dtype=np.int64)
    if widths.ndim == 0:
        widths = np.full((rank, 2), int(widths))
    elif widths.shape == (2,) or widths.shape == (1, 2):
        widths = np.tile(widths.reshape(1, 2), (rank, 1))
    if widths.shape != (rank, 2) or (widths < 0).any():
        raise ValueError(f"kcompile.ops.pad: pad_width {pad_width!r} must be (before, after) "
                         f"non-negative pairs, one per axis of {x.type}")
    if mode not in ("constant", "reflect", "symmetric", "edge"):
        raise NotImplementedError(f"kcompile.ops.pad: mode {mode!r} is not supported; use "
                                  "'constant', 'reflect', 'symmetric' or 'edge'")
    if mode != "constant" and constant_values not in (None, 0):
        raise ValueError("kcompile.ops.pad: constant_values goes with mode='constant'")
    fill = 0 if constant_values is None else constant_values
    if not isinstance(fill, numbers.Number):
        raise NotImplementedError("kcompile.ops.pad: constant_values must be one number")
    for a, (before, after) in enumerate(widths.tolist()):
        if not before and not after:
            continue
        size = x.shape[a]
        if size is None:
            raise NotImplementedError("kcompile.ops.pad: the batch axis takes no padding")
        if mode == "constant":
            padded = build_seq.pad(x, before, after, a)
            if fill:
                inside = np.zeros(padded.shape[a], bool)
                inside[before:before + size] = True
                mask = B.const(inside.reshape([-1 if i == a else 1 for i in range(rank)]))
                padded = B.select(mask, padded, B.full_like(padded, fill))
            x = padded
            continue
        if mode == "reflect":
            if builtins.max(before, after) >= size:
                raise NotImplementedError("kcompile.ops.pad: mode='reflect' pads less than the "
                                          f"axis's size ({size}) on each side")
            left, right = range(before, 0, -1), range(size - 2, size - 2 - after, -1)
        elif mode == "symmetric":
            if builtins.max(before, after) > size:
                raise NotImplementedError("kcompile.ops.pad: mode='symmetric' pads at most the "
                                          f"axis's size ({size}) on each side")
            left, right = range(before - 1, -1, -1), range(size - 1, size - 1 - after, -1)
        else:
            left, right = [0] * before, [size - 1] * after
        x = _pieces(x, list(left) + list(range(size)) + list(right), a)
    return x


def _matrix_mask(x, k, lower, name):
    x = _node(x, name)
    if x.type.rank < 2 or None in x.shape[-2:]:
        raise ValueError(f"kcompile.ops.{name} needs a value of rank >= 2 whose last two axes "
                         f"have static sizes; got {x.type}")
    n, m = x.shape[-2:]
    keep = np.tri(n, m, int(k), dtype=bool) if lower else ~np.tri(n, m, int(k) - 1, dtype=bool)
    return B.select(B.const(keep), x, B.zeros_like(x))


def tril(x, k=0):
    """x with the entries above the k-th diagonal of its last two axes zeroed."""
    return _matrix_mask(x, k, True, "tril")


def triu(x, k=0):
    """x with the entries below the k-th diagonal of its last two axes zeroed."""
    return _matrix_mask(x, k, False, "triu")


def diagonal(x, offset=0, axis1=0, axis2=1):
    """The entries x[..., i, i + offset] of axes axis1 and axis2, on a new last axis (numpy's)."""
    from ir import build_seq
    x = _node(x, "diagonal")
    rank = x.type.rank
    if rank < 2:
        raise ValueError(f"kcompile.ops.diagonal needs a value of rank >= 2; got {x.type}")
    _axis(x, (axis1, axis2), "diagonal")
    axis1, axis2 = axis1 % rank, axis2 % rank
    if axis1 == axis2:
        raise ValueError("kcompile.ops.diagonal: axis1 and axis2 must differ")
    if x.shape[axis1] is None or x.shape[axis2] is None:
        raise NotImplementedError("kcompile.ops.diagonal: the batch axis cannot be one of the two")
    x = moveaxis(x, (axis1, axis2), (rank - 2, rank - 1))
    n, m = x.shape[-2:]
    offset = int(offset)
    first, stop = builtins.max(0, -offset), builtins.min(n, m - offset)
    if stop <= first:
        raise ValueError(f"kcompile.ops.diagonal: offset {offset} leaves no entries (kcompile "
                         "values cannot be empty)")
    on = B.const(np.eye(n, m, offset, dtype=bool))
    values = x if x.dtype != "bool" else B.cast(x, "i32")
    summed = B.reduce_sum(B.select(on, values, B.zeros_like(values)), (rank - 1,), False)
    out = build_seq.slice(summed, first, stop, rank - 2)
    return B.ne(out, 0) if x.dtype == "bool" else out


def diag(x, k=0):
    """numpy's diag: of a 1-D value, the square matrix with it on the k-th diagonal; of a 2-D one,
    its k-th diagonal."""
    from ir import build_seq
    x = _node(x, "diag")
    if x.type.rank == 2:
        return diagonal(x, k, 0, 1)
    if x.type.rank != 1 or x.shape[0] is None:
        raise ValueError(f"kcompile.ops.diag needs a 1-D or 2-D value of static size; got {x.type}")
    n, k = x.shape[0], int(k)
    size = n + builtins.abs(k)
    line = build_seq.pad(x, 0, builtins.abs(k), 0)
    spread = B.reshape(line, (size, 1) if k >= 0 else (1, size))
    return B.select(B.const(np.eye(size, size, k, dtype=bool)), spread,
                    B.zeros_like(B.broadcast(spread, (size, size))))


def trace(x, offset=0, axis1=0, axis2=1):
    """The sum of a diagonal (see diagonal)."""
    d = diagonal(x, offset, axis1, axis2)
    return B.reduce_sum(d, (d.type.rank - 1,), False)


def outer(x1, x2):
    """The outer product of the two values flattened: [n] x [m] -> [n, m]."""
    a, b = as_traced(x1), as_traced(x2)
    if not isinstance(a, Node) and not isinstance(b, Node):
        _node(a, "outer")
    a = _flat(a, "outer") if isinstance(a, Node) else B.const(np.ravel(a))
    b = _flat(b, "outer") if isinstance(b, Node) else B.const(np.ravel(b))
    return B.mul(B.reshape(a, (a.shape[0], 1)), B.reshape(b, (1, b.shape[0])))


def einsum(subscripts, *operands, **kwargs):
    """Einstein summation, as numpy's and Keras's: 'ij,jk->ik', 'bij,bkj->bik', 'i,i->', ... (an
    implicit output: the labels used once, sorted).  Each operand is laid out on the union of the
    labels, the product taken by broadcasting and the labels not in the output summed (so memory
    grows with the product of all label sizes).  '...' and a label repeated within one operand
    (a diagonal) are not supported."""
    if builtins.any(key != "optimize" for key in kwargs):
        raise TypeError(f"kcompile.ops.einsum got unexpected arguments {sorted(kwargs)}")
    if not isinstance(subscripts, str):
        raise TypeError(f"kcompile.ops.einsum: subscripts must be a string; got {subscripts!r}")
    spec = subscripts.replace(" ", "")
    if "." in spec:
        raise NotImplementedError("kcompile.ops.einsum: '...' is not supported; name every axis")
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        raise ValueError(f"kcompile.ops.einsum: {len(terms)} operand subscripts in "
                         f"{subscripts!r} but {len(operands)} operands")
    if not arrow:
        counts = {}
        for label in inputs.replace(",", ""):
            counts[label] = counts.get(label, 0) + 1
        output = "".join(sorted(label for label, c in counts.items() if c == 1))
    nodes = [as_traced(v) for v in operands]
    if not builtins.any(isinstance(v, Node) for v in nodes):
        _node(operands[0], "einsum")
    floating = builtins.any(isinstance(v, Node) and v.dtype in ("f32", "f64") or
                            not isinstance(v, Node) and np.asarray(v).dtype.kind == "f"
                            for v in nodes)
    dtype = next((v.dtype for v in nodes if isinstance(v, Node) and v.dtype in ("f32", "f64")),
                 "f32" if floating else "i32")
    nodes = [B.cast(v, dtype) if isinstance(v, Node) else B.const(np.asarray(v), dtype)
             for v in nodes]
    sizes = {}
    for term, node in zip(terms, nodes):
        if len(set(term)) != len(term):
            raise NotImplementedError(f"kcompile.ops.einsum: a label repeated within one operand "
                                      f"({term!r}) is not supported")
        if len(term) != node.type.rank:
            raise ValueError(f"kcompile.ops.einsum: {term!r} names {len(term)} axes of a value "
                             f"of rank {node.type.rank} ({node.type})")
        for label, d in zip(term, node.shape):
            if label in sizes and sizes[label] != d and 1 not in (sizes[label], d):
                raise ValueError(f"kcompile.ops.einsum: label {label!r} has sizes {sizes[label]} "
                                 f"and {d}")
            sizes[label] = d if label not in sizes or sizes[label] == 1 else sizes[label]
    for label in output:
        if label not in sizes:
            raise ValueError(f"kcompile.ops.einsum: output label {label!r} is in no operand")
    batch = [label for label, d in sizes.items() if d is None]
    if batch and output and output[0] != batch[0] and batch[0] in output:
        raise NotImplementedError("kcompile.ops.einsum: the batch axis must stay first")
    order = batch[:1] + [label for label in output if label not in batch[:1]]
    order += [label for label in sizes if label not in order]
    product = None
    for term, node in zip(terms, nodes):
        present = [label for label in order if label in term]
        node = B.transpose(node, [term.index(label) for label in present])
        node = B.reshape(node, [node.shape[present.index(label)] if label in term else 1
                                for label in order])
        product = node if product is None else B.mul(product, node)
    summed = [i for i, label in enumerate(order) if label not in output]
    if summed:
        product = B.reduce_sum(product, summed, False)
    kept = [label for label in order if label in output]
    return B.transpose(product, [kept.index(label) for label in output])


def multi_hot(inputs, num_classes=None, axis=-1, dtype=None, sparse=False, **kwargs):
    """Ids (the last axis: one sample's ids) as one vector of num_classes with 1 at each id."""
    num_classes = kwargs.pop("num_tokens", num_classes)
    if kwargs:
        raise TypeError(f"kcompile.ops.multi_hot got unexpected arguments {sorted(kwargs)}")
    if sparse:
        raise NotImplementedError("kcompile.ops.multi_hot: sparse=True is not supported")
    x = _node(inputs, "multi_hot")
    hot = one_hot(x, num_classes, -1, "float32")
    out = B.reduce_max(hot, (hot.type.rank - 2,), False)
    if axis != -1:
        out = moveaxis(out, -1, axis)
    return cast(out, dtype or "float32")


def full_like(x, fill_value, dtype=None):
    """A value of x's shape (and dtype, or `dtype`) filled with `fill_value`."""
    node = as_traced(x)
    if not isinstance(node, Node):
        array = np.asarray(x)
        return np.full(array.shape, fill_value, dtype or (np.float32 if array.dtype.kind == "f"
                                                          else array.dtype))
    out = B.full_like(node if dtype is None else cast(node, dtype), fill_value)
    return out


def ravel(x):
    """x flattened (a value with a batch axis: reshape it to (batch, -1) instead)."""
    return _flat(_node(x, "ravel"), "ravel")


def ndim(x):
    node = as_traced(x)
    return node.type.rank if isinstance(node, Node) else np.ndim(x)


def _keras_int_or_float(values, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(np.int32) if builtins.all(
        isinstance(v, numbers.Integral) or (isinstance(v, np.ndarray) and v.dtype.kind in "iu")
        for v in values if v is not None) else np.dtype(np.float32)


def _numbers_only(name, *values):
    if _is_traced(list(values)):
        raise NotImplementedError(f"kcompile.ops.{name} takes numbers (its size must be known "
                                  "while the graph is traced), not traced values")


def arange(start, stop=None, step=None, dtype=None):
    """numpy's arange: int32 when the bounds and step are integers, else float32 (a constant)."""
    step = 1 if step is None else step
    _numbers_only("arange", start, stop, step)
    dtype = _keras_int_or_float([start, stop, step], dtype)
    return np.arange(start, stop, step).astype(dtype) if stop is not None else \
        np.arange(start, dtype=np.float64 if dtype.kind == "f" else None, step=step).astype(dtype)


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    """numpy's linspace, float32 by default (a constant)."""
    _numbers_only("linspace", start, stop)
    out = np.linspace(start, stop, num, endpoint, retstep, np.float64, axis)
    if retstep:
        return out[0].astype(dtype or np.float32), out[1]
    return out.astype(dtype or np.float32)


def meshgrid(*x, indexing="xy"):
    """numpy's meshgrid of constant vectors (a list of arrays)."""
    _numbers_only("meshgrid", *x)
    if indexing not in ("xy", "ij"):
        raise ValueError(f"Valid values for `indexing` are 'xy' and 'ij'. Received: {indexing}")
    return [np.asarray(v) for v in np.meshgrid(*x, indexing=indexing)]


def tri(N, M=None, k=0, dtype=None):
    return np.tri(N, M, k, dtype=dtype or np.float32)


def identity(n, dtype=None):
    return np.identity(n, dtype=dtype or np.float32)


def slice(inputs, start_indices, shape):  # noqa: A001  (Keras's name)
    """inputs[start:start + size] on every axis, with static starts and sizes (a size of -1 or
    None: to the end); the batch axis takes the whole of it (start 0)."""
    from ir import build_seq
    x = _node(inputs, "slice")
    starts, sizes = list(start_indices), list(shape)
    if len(starts) != x.type.rank or len(sizes) != x.type.rank:
        raise ValueError(f"kcompile.ops.slice: start_indices and shape need one entry per axis of "
                         f"{x.type}; got {start_indices!r} and {shape!r}")
    for a, (start, size) in enumerate(zip(starts, sizes)):
        if x.shape[a] is None:
            if isinstance(start, Node) or int(start) != 0 or not (
                    size is None or _is_batch_size(size) or size == -1):
                raise NotImplementedError("kcompile.ops.slice takes the whole batch axis (start 0, "
                                          "size -1 or ops.shape(x)[0])")
            continue
        if isinstance(start, Node) or isinstance(size, Node):
            raise NotImplementedError("kcompile.ops.slice takes static (number) starts and sizes")
        start = int(start)
        stop = x.shape[a] if size is None or int(size) == -1 else start + int(size)
        if not 0 <= start < stop <= x.shape[a]:
            raise ValueError(f"kcompile.ops.slice: [{start}, {stop}) is not inside axis {a} of "
                             f"{x.type}")
        x = build_seq.slice(x, start, stop, a)
    return x


def hstack(xs):
    """numpy's hstack: along axis 1 (axis 0 for 1-D values)."""
    nodes = [_node(x, "hstack") for x in xs]
    return concatenate(nodes, axis=0 if nodes[0].type.rank == 1 else 1)


def vstack(xs):
    """numpy's vstack: 1-D values as rows, along axis 0 (not for values with a batch axis)."""
    nodes = [_node(x, "vstack") for x in xs]
    nodes = [B.reshape(n, (1,) + n.shape) if n.type.rank == 1 else n for n in nodes]
    return concatenate(nodes, axis=0)


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tensordot(x1, x2, axes=2):
    """numpy's tensordot: the last `axes` axes of x1 against the first of x2, or the pairs
    (axes of x1, axes of x2)."""
    a, b = as_traced(x1), as_traced(x2)
    if not isinstance(a, Node) and not isinstance(b, Node):
        _node(a, "tensordot")
    rank_a = a.type.rank if isinstance(a, Node) else np.ndim(a)
    rank_b = b.type.rank if isinstance(b, Node) else np.ndim(b)
    if isinstance(axes, numbers.Integral):
        first, second = list(range(rank_a - int(axes), rank_a)), list(range(int(axes)))
    else:
        first, second = ([p] if isinstance(p, numbers.Integral) else list(p) for p in axes)
    if len(first) != len(second):
        raise ValueError(f"kcompile.ops.tensordot: axes {axes!r} pair unequal numbers of axes")
    first, second = [i % rank_a for i in first], [i % rank_b for i in second]
    labels_a = list(_LETTERS[:rank_a])
    labels_b = list(_LETTERS[rank_a:rank_a + rank_b])
    for i, j in zip(first, second):
        labels_b[j] = labels_a[i]
    out = [l for i, l in enumerate(labels_a) if i not in first] + \
        [l for j, l in enumerate(labels_b) if j not in second]
    return einsum(f"{''.join(labels_a)},{''.join(labels_b)}->{''.join(out)}", a, b)


def inner(x1, x2):
    """numpy's inner: sums over the last axes of both (a number operand multiplies)."""
    a, b = as_traced(x1), as_traced(x2)
    if ndim(a) == 0 or ndim(b) == 0:
        return multiply(a, b)
    return tensordot(a, b, ([-1], [-1]))


def vdot(x1, x2):
    """The sum of the products of the two values, flattened."""
    a, b = as_traced(x1), as_traced(x2)
    a = _flat(a, "vdot") if isinstance(a, Node) else B.const(np.ravel(a))
    b = _flat(b, "vdot") if isinstance(b, Node) else B.const(np.ravel(b))
    return einsum("i,i->", a, b)


def diff(a, n=1, axis=-1):
    """numpy's diff: the n-th differences along `axis`."""
    from ir import build_seq
    x = _node(a, "diff")
    axis = _static_axis(x, axis, "diff")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"kcompile.ops.diff: n must be a non-negative integer; got {n!r}")
    if x.dtype == "bool":
        raise NotImplementedError("kcompile.ops.diff of booleans is not supported; cast first")
    for _ in range(int(n)):
        size = x.shape[axis]
        if size < 2:
            raise ValueError("kcompile.ops.diff: n is at least the axis's size (kcompile values "
                             "cannot be empty)")
        x = B.sub(build_seq.slice(x, 1, size, axis), build_seq.slice(x, 0, size - 1, axis))
    return x


def deg2rad(x):
    w, dtype = _wide_input(x, "deg2rad")
    return _narrow(B.mul(w, np.pi / 180), dtype)


def rad2deg(x):
    w, dtype = _wide_input(x, "rad2deg")
    return _narrow(B.mul(w, 180 / np.pi), dtype)


def hypot(x1, x2):
    """sqrt(x1^2 + x2^2), in float64 (no overflow for float32 values)."""
    a, b, dtype = _wide_pair(x1, x2, "hypot")
    return _narrow(B.sqrt(B.add(B.mul(a, a), B.mul(b, b))), dtype)


def cbrt(x):
    """The real cube root: sign(x) exp(log|x| / 3), in float64."""
    w, dtype = _wide_input(x, "cbrt")
    negative = B.lt(w, 0.0)
    root = B.exp(B.div(B.log(B.select(negative, B.neg(w), w)), 3.0))
    return _narrow(B.select(negative, B.neg(root), root), dtype)


def signbit(x):
    """Whether the sign bit is set: x < 0, and -0.0 (told by 1 / x = -inf)."""
    x = _node(x, "signbit")
    if x.dtype not in ("f32", "f64"):
        return B.lt(x, 0)
    return logical_or(B.lt(x, 0.0), logical_and(B.eq(x, 0.0), B.lt(B.div(1.0, x), 0.0)))


def isneginf(x):
    x = _node(x, "isneginf")
    return B.eq(x, float("-inf")) if x.dtype in ("f32", "f64") else B.ne(x, x)


def isposinf(x):
    x = _node(x, "isposinf")
    return B.eq(x, float("inf")) if x.dtype in ("f32", "f64") else B.ne(x, x)


def heaviside(x1, x2):
    """0 where x1 < 0, x2 where x1 == 0, 1 where x1 > 0 (NaN where x1 is NaN)."""
    x = _node(x1, "heaviside")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    at_zero = as_traced(x2)
    at_zero = B.cast(at_zero, x.dtype) if isinstance(at_zero, Node) else float(at_zero)
    step = B.select(B.gt(x, 0.0), B.full_like(x, 1.0), B.select(B.lt(x, 0.0), B.zeros_like(x),
                                                                  B.mul(x, 0.0)))
    return B.select(B.eq(x, 0.0), at_zero, step)


def copy(x):
    """x itself (a traced value is never changed in place)."""
    node = as_traced(x)
    return node if isinstance(node, Node) else np.array(x)


def dtype(x):
    """The dtype's name ('float32', 'int32', 'bool', 'float64'), as Keras's ops.dtype."""
    node = as_traced(x)
    if isinstance(node, Node):
        return {"f32": "float32", "f64": "float64", "i32": "int32", "bool": "bool"}[node.dtype]
    return np.asarray(x).dtype.name


def is_tensor(x):
    """Whether x is one of kcompile's tensors: a traced value, or an array (eager results)."""
    return isinstance(as_traced(x), Node) or isinstance(x, np.ndarray)


def get_item(x, key):
    """x[key] (a traced value takes static basic indices)."""
    node = as_traced(x)
    return node[key] if isinstance(node, Node) else np.asarray(x)[key]


def fliplr(x):
    return flip(x, 1)


def flipud(x):
    return flip(x, 0)


def rot90(array, k=1, axes=(0, 1)):
    """numpy's rot90: k quarter turns in the plane of `axes`, from the first toward the second."""
    x = _node(array, "rot90")
    rank = x.type.rank
    axes = tuple(axes)
    if len(axes) != 2:
        raise ValueError(f"kcompile.ops.rot90: axes must be two axes; got {axes!r}")
    _axis(x, axes, "rot90")
    first, second = axes[0] % rank, axes[1] % rank
    if first == second:
        raise ValueError("kcompile.ops.rot90: the two axes must differ")
    k = int(k) % 4
    if k == 0:
        return x
    if k == 2:
        return flip(x, (first, second))
    perm = list(range(rank))
    perm[first], perm[second] = perm[second], perm[first]
    if k == 1:
        return transpose(flip(x, second), perm)
    return flip(transpose(x, perm), second)


def select(condlist, choicelist, default=0):
    """numpy's select: the choice of the first condition that holds, else `default`."""
    condlist, choicelist = list(condlist), list(choicelist)
    if len(condlist) != len(choicelist) or not condlist:
        raise ValueError("kcompile.ops.select: condlist and choicelist must be non-empty lists of "
                         f"one length; got {len(condlist)} and {len(choicelist)}")
    out = default
    for condition, choice in reversed(list(zip(condlist, choicelist))):
        out = where(condition, choice, out)
    return out


def dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                          flash_attention=None, attn_logits_soft_cap=None):
    """softmax(query key^T * scale + bias, masked) value, as Keras's: query (batch, T, heads,
    head_dim), key and value (batch, S, heads, head_dim); scale defaults to 1 / sqrt(head_dim);
    `mask` (broadcast to (batch, heads, T, S)) and is_causal keep the positions they hold True."""
    if flash_attention:
        raise NotImplementedError("kcompile.ops.dot_product_attention: flash_attention is not "
                                  "supported (leave it None or False)")
    if attn_logits_soft_cap is not None:
        raise NotImplementedError("kcompile.ops.dot_product_attention: attn_logits_soft_cap goes "
                                  "with flash attention, which kcompile does not have")
    q, k, v = (_node(t, "dot_product_attention") for t in (query, key, value))
    if q.type.rank != 4 or k.type.rank != 4 or v.type.rank != 4:
        raise ValueError("`dot_product_attention` only supports 4D inputs (batch, length, heads, "
                         f"head_dim); got {q.type}, {k.type} and {v.type}")
    if q.dtype not in ("f32", "f64"):
        q, k, v = (B.cast(t, "f32") for t in (q, k, v))
    head_dim = q.shape[-1]
    scale = 1.0 / _math.sqrt(head_dim) if scale is None else float(scale)
    logits = B.mul(einsum("btnh,bsnh->bnts", q, k), scale)
    if bias is not None:
        logits = add(logits, bias)
    keep = None
    if mask is not None:
        keep = _as_bool(mask, "dot_product_attention") if isinstance(as_traced(mask), Node) \
            else B.const(np.asarray(mask, bool))
    if is_causal:
        t, s = logits.shape[2:]
        causal = B.const(np.tril(np.ones((t, s), bool)))
        keep = causal if keep is None else logical_and(keep, causal)
    if keep is not None:
        large_negative = -0.7 * float(np.finfo(np.float32 if logits.dtype == "f32"
                                               else np.float64).max)
        logits = B.select(keep, logits, B.full_like(logits, large_negative))
    probabilities = activations.softmax(logits, -1)
    return einsum("bnts,bsnh->btnh", probabilities, v)


def _norm_axes_of(x, axis, name):
    rank = x.type.rank
    _axis(x, axis, name)
    return tuple(sorted(a % rank for a in ((axis,) if isinstance(axis, numbers.Integral)
                                           else axis)))


def _scale_for(x, value, axes):
    """gamma, beta or scale, given for the normalized axes, shaped to broadcast against x."""
    v = as_traced(value)
    v = v if isinstance(v, Node) else B.const(np.asarray(v, np.float32), x.dtype)
    v = B.cast(v, x.dtype) if v.dtype != x.dtype else v
    if v.type.rank != x.type.rank and axes != (x.type.rank - 1,):
        v = B.reshape(v, tuple(x.shape[i] if i in axes else 1 for i in range(x.type.rank)))
    return v


def layer_normalization(x, gamma=None, beta=None, axis=-1, epsilon=None, **kwargs):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta over `axis`, as Keras's (epsilon 1e-7 by
    default; rms_scaling=True: x / sqrt(var + epsilon) * gamma)."""
    rms_scaling = kwargs.pop("rms_scaling", False)
    if kwargs:
        raise TypeError(f"kcompile.ops.layer_normalization got unexpected arguments "
                        f"{sorted(kwargs)}")
    x = _node(x, "layer_normalization")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    axes = _norm_axes_of(x, axis, "layer_normalization")
    epsilon = 1e-7 if epsilon is None else float(epsilon)
    average, variance = B.reduce_mean(x, axes, True), var(x, axes, True)
    inverse = B.div(1.0, B.sqrt(B.add(variance, epsilon)))
    if rms_scaling:
        out = B.mul(x, inverse)
        return out if gamma is None else B.mul(out, _scale_for(x, gamma, axes))
    if gamma is not None:
        inverse = B.mul(inverse, _scale_for(x, gamma, axes))
    rest = B.mul(B.neg(average), inverse)
    if beta is not None:
        rest = B.add(rest, _scale_for(x, beta, axes))
    return B.add(B.mul(x, inverse), rest)


def rms_normalization(x, scale=None, axis=-1, epsilon=None):
    """x / sqrt(mean(x^2) + epsilon) * scale over `axis`, as Keras's (epsilon 1e-7 by default)."""
    x = _node(x, "rms_normalization")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    axes = _norm_axes_of(x, axis, "rms_normalization")
    epsilon = 1e-7 if epsilon is None else float(epsilon)
    out = B.mul(x, B.div(1.0, B.sqrt(B.add(B.reduce_mean(B.mul(x, x), axes, True), epsilon))))
    return out if scale is None else B.mul(out, _scale_for(x, scale, axes))


_QUANTILE_METHODS = ("linear", "lower", "higher", "midpoint", "nearest")


def quantile(x, q, axis=None, method="linear", keepdims=False):
    """numpy's quantile along one axis (None: flattened), from the sorted values (see sort: n^2
    comparisons per row; NaN not supported); q (numbers in [0, 1]) puts its axes first."""
    if method not in _QUANTILE_METHODS:
        raise ValueError(f"kcompile.ops.quantile: method must be one of {_QUANTILE_METHODS}; got "
                         f"{method!r}")
    if _is_traced([q]):
        raise NotImplementedError("kcompile.ops.quantile takes q as numbers")
    qs = np.asarray(q, np.float64)
    if qs.ndim > 1 or np.any((qs < 0) | (qs > 1)) or np.any(np.isnan(qs)):
        raise ValueError(f"kcompile.ops.quantile: q must be a number or 1-D numbers in [0, 1]; "
                         f"got {q!r}")
    x = _node(x, "quantile")
    if x.dtype not in ("f32", "f64"):
        x = B.cast(x, "f32")
    rank = x.type.rank
    if axis is None:
        flat = _flat(x, "quantile")
        out = quantile(flat, q, 0, method)
        return B.reshape(out, qs.shape + (1,) * rank) if keepdims else out
    if not isinstance(axis, numbers.Integral):
        raise NotImplementedError("kcompile.ops.quantile takes one axis (an integer) or None")
    ordered, axis = _sort_input(x, axis, "quantile")
    ordered, _ = _by_rank(ordered, _sort_ranks(ordered, False), ordered.shape[-1])
    n = ordered.shape[-1]
    results = []
    for value in qs.reshape(-1).tolist():
        position = value * (n - 1)
        low, high = int(np.floor(position)), int(np.ceil(position))
        fraction = position - low
        pick = {"lower": low, "higher": high, "nearest": int(np.round(position)),
                "midpoint": None, "linear": None}[method]
        at = (lambda i: take(ordered, [i], axis=-1))
        if pick is not None:
            results.append(at(pick))
        elif method == "midpoint" or fraction == 0.0:
            results.append(at(low) if low == high else B.mul(B.add(at(low), at(high)), 0.5))
        else:
            results.append(B.add(B.mul(at(low), 1.0 - fraction), B.mul(at(high), fraction)))
    out = [moveaxis(r, rank - 1, axis) if keepdims else
           B.reshape(r, r.shape[:-1]) for r in results]       # [..., 1] each
    if qs.ndim == 0:
        return out[0]
    if rank == 1 and not keepdims:
        return concatenate([B.reshape(r, (1,)) for r in out], 0)
    if out[0].type.batched:
        raise NotImplementedError("kcompile.ops.quantile: several q put a new first axis, before "
                                  "the batch axis; ask for one q at a time")
    return stack(out, 0)


def median(x, axis=None, keepdims=False):
    """numpy's median (see quantile)."""
    return quantile(x, 0.5, axis, "linear", keepdims)


def ptp(x, axis=None, keepdims=False):
    """The range (max - min) over `axis`."""
    x = _node(x, "ptp")
    return B.sub(max(x, axis, keepdims), min(x, axis, keepdims))


def logspace(start, stop, num=50, endpoint=True, base=10, dtype=None, axis=0):
    """numpy's logspace, float32 by default (a constant)."""
    _numbers_only("logspace", start, stop)
    return np.logspace(start, stop, num, endpoint, base, np.float64, axis).astype(dtype or
                                                                                    np.float32)


def empty(shape, dtype=None):
    """An array of zeros (numpy's `empty` leaves garbage; Keras's backends give zeros)."""
    return np.zeros(shape, dtype or np.float32)


def empty_like(x, dtype=None):
    return zeros_like(x) if dtype is None else full_like(x, 0, dtype)


def _segment_hits(data, segment_ids, num_segments, name):
    """(data as a node, the one-hot [N, S] bool of the rows' segments); ids outside [0, S) hit
    none (their rows are dropped, as JAX's)."""
    if num_segments is None:
        raise ValueError("Argument `num_segments` must be set when using the JAX backend. "
                         f"Received: num_segments={num_segments}")
    if isinstance(num_segments, bool) or not isinstance(num_segments, numbers.Integral) \
            or num_segments < 1:
        raise ValueError(f"kcompile.ops.{name}: num_segments must be a positive integer; got "
                         f"{num_segments!r}")
    x = _node(data, name)
    ids = as_traced(segment_ids)
    if not isinstance(ids, Node):
        ids = B.const(_static_indices(segment_ids).astype(np.int32), "i32")
    ids = B.cast(ids, "i32") if ids.dtype != "i32" else ids
    if ids.type.rank != 1 or x.type.rank < 1 or (ids.shape[0] != x.shape[0]):
        raise ValueError(f"kcompile.ops.{name}: segment_ids must be one id per row of data; got "
                         f"{ids.type} for {x.type}")
    hits = B.eq(B.reshape(ids, ids.shape + (1,)),
                B.const(np.arange(num_segments, dtype=np.int32), "i32"))        # [N, S]
    return x, hits


def segment_sum(data, segment_ids, num_segments=None, sorted=False):  # noqa: A002
    """The sums of the rows of data (axis 0, the batch too) in each of num_segments segments:
    [N, ...] -> [num_segments, ...]."""
    x, hits = _segment_hits(data, segment_ids, num_segments, "segment_sum")
    floating = x.dtype in ("f32", "f64")
    values = x if floating else B.cast(x, "f32")
    rows = B.reshape(values, (values.shape[0], -1)) if values.type.rank != 2 else values
    if values.type.rank == 1:
        rows = B.reshape(values, (values.shape[0], 1))
    total = B.matmul(B.cast(hits, values.dtype), rows, transpose_a=True)          # [S, D]
    out = B.reshape(total, (num_segments,) + x.shape[1:])
    return out if floating else B.cast(out, x.dtype)


def segment_max(data, segment_ids, num_segments=None, sorted=False):  # noqa: A002
    """The maxima of the rows of data in each segment (-inf for a segment with no rows, as
    JAX's; the lowest integer for integers)."""
    x, hits = _segment_hits(data, segment_ids, num_segments, "segment_max")
    lowest = float("-inf") if x.dtype in ("f32", "f64") else int(np.iinfo(np.int32).min)
    rank = x.type.rank
    spread = B.reshape(x, (x.shape[0], 1) + x.shape[1:])                          # [N, 1, ...]
    hit = B.reshape(hits, hits.shape + (1,) * (rank - 1))                          # [N, S, 1...]
    picked = B.select(hit, spread, B.full_like(B.broadcast(spread, hit.shape[:2] + x.shape[1:]),
                                                lowest))
    return B.reduce_max(picked, (0,), False)


def sinc(x):
    """sin(pi x) / (pi x), 1 at 0."""
    w, dtype = _wide_input(x, "sinc")
    zero = B.eq(w, 0.0)
    scaled = B.mul(B.select(zero, B.full_like(w, 1.0), w), np.pi)
    value, _, _ = _sin_cos(scaled, "sinc")
    return _narrow(B.select(zero, B.full_like(w, 1.0), B.div(value, scaled)), dtype)


def fmod(x1, x2):
    """The remainder with the sign of x1 (C's fmod): x1 - trunc(x1 / x2) x2."""
    a, b = as_traced(x1), as_traced(x2)
    if not isinstance(a, Node) and not isinstance(b, Node):
        _node(a, "fmod")
    quotient = trunc(B.true_div(a, b))
    like = a if isinstance(a, Node) else b
    if like.dtype not in ("f32", "f64") and (not isinstance(b, Node) or b.dtype not in ("f32",
                                                                                         "f64")):
        quotient = B.cast(quotient, "i32")
    return B.sub(a, B.mul(quotient, b))


def kron(x1, x2):
    """The Kronecker product (values of one rank, no batch axis)."""
    a, b = (_node(v, "kron") if isinstance(as_traced(v), Node) else B.const(np.asarray(v))
            for v in (x1, x2))
    if a.type.batched or b.type.batched:
        raise NotImplementedError("kcompile.ops.kron of a value with a batch axis is not supported")
    rank = builtins.max(a.type.rank, b.type.rank)
    a = B.reshape(a, (1,) * (rank - a.type.rank) + a.shape)
    b = B.reshape(b, (1,) * (rank - b.type.rank) + b.shape)
    if a.dtype != b.dtype:
        a, b = B.cast(a, "f32"), B.cast(b, "f32")
    interleaved_a = B.reshape(a, tuple(d for n in a.shape for d in (n, 1)))
    interleaved_b = B.reshape(b, tuple(d for n in b.shape for d in (1, n)))
    product = B.mul(interleaved_a, interleaved_b)
    return B.reshape(product, tuple(m * n for m, n in zip(a.shape, b.shape)))


def cross(x1, x2, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """The cross product of 3-vectors along the last axes (numpy's cross for 3-vectors)."""
    from ir import build_seq
    if axis is not None:
        axisa = axisb = axisc = axis
    a, b = (moveaxis(_node(v, "cross") if isinstance(as_traced(v), Node) else
                     B.const(np.asarray(v, np.float32)), ax, -1) for v, ax in ((x1, axisa),
                                                                                (x2, axisb)))
    if a.shape[-1] != 3 or b.shape[-1] != 3:
        raise NotImplementedError("kcompile.ops.cross takes 3-vectors (2-vectors are not "
                                  f"supported); got {a.type} and {b.type}")
    ax, ay, az = (build_seq.slice(a, i, i + 1, -1) for i in range(3))
    bx, by, bz = (build_seq.slice(b, i, i + 1, -1) for i in range(3))
    out = concatenate([subtract(ay * bz, az * by), subtract(az * bx, ax * bz),
                       subtract(ax * by, ay * bx)], axis=-1)
    return moveaxis(out, -1, axisc)


def digitize(x, bins):
    """The bin of each entry for increasing `bins` (numbers): how many bins are <= x, int32."""
    x = _node(x, "digitize")
    edges = np.asarray(bins, np.float64)
    if edges.ndim != 1 or np.any(np.diff(edges) < 0):
        raise ValueError(f"kcompile.ops.digitize: bins must be increasing numbers; got {bins!r}")
    wide = B.cast(x, "f64") if x.dtype != "f64" else x
    below = B.ge(B.reshape(wide, x.shape + (1,)), B.const(edges, "f64"))
    return B.reduce_sum(B.cast(below, "i32"), (x.type.rank,), False)


def searchsorted(sorted_sequence, values, side="left"):
    """Where each value would go in the 1-D sorted_sequence to keep it sorted, int32."""
    if side not in ("left", "right"):
        raise ValueError(f"`side` must be either 'left' or 'right'. Received: side={side}")
    seq = as_traced(sorted_sequence)
    seq = seq if isinstance(seq, Node) else B.const(np.asarray(sorted_sequence, np.float32))
    v = _node(values, "searchsorted") if isinstance(as_traced(values), Node) else \
        B.const(np.asarray(values, np.float32))
    if seq.type.rank != 1 or seq.type.batched:
        raise ValueError(f"kcompile.ops.searchsorted needs a 1-D sorted_sequence; got {seq.type}")
    if seq.dtype != v.dtype:
        seq, v = B.cast(seq, "f32"), B.cast(v, "f32")
    column = B.reshape(v, v.shape + (1,))
    before = B.lt(seq, column) if side == "left" else B.le(seq, column)
    return B.reduce_sum(B.cast(before, "i32"), (v.type.rank,), False)


def isin(x1, x2, assume_unique=False, invert=False):
    """Whether each entry of x1 is among the entries of x2 (or is not, with invert)."""
    x = _node(x1, "isin")
    test = as_traced(x2)
    if isinstance(test, Node):
        test = _flat(test, "isin")
    else:
        test = B.const(np.ravel(np.asarray(x2)), x.dtype)
    if test.dtype != x.dtype:
        x, test = B.cast(x, "f32"), B.cast(test, "f32")
    found = B.reduce_sum(B.cast(B.eq(B.reshape(x, x.shape + (1,)), test), "i32"),
                         (x.type.rank,), False)
    return B.eq(found, 0) if invert else B.gt(found, 0)


def _without_nan(x, name, fill):
    x = _node(x, name)
    if x.dtype not in ("f32", "f64"):
        return x, None
    nan = B.ne(x, x)
    return B.select(nan, B.full_like(x, fill), x), nan


def nansum(x, axis=None, keepdims=False):
    """The sum, NaN entries left out."""
    clean, _ = _without_nan(x, "nansum", 0.0)
    return sum(clean, axis, keepdims)


def nanmean(x, axis=None, keepdims=False):
    """The mean of the entries that are not NaN (NaN where all are)."""
    clean, nan = _without_nan(x, "nanmean", 0.0)
    if nan is None:
        return mean(clean, axis, keepdims)
    count = sum(B.cast(logical_not(nan), clean.dtype), axis, keepdims)
    return B.div(sum(clean, axis, keepdims), count)


def _nan_extreme(x, axis, keepdims, name, fill, reduce):
    """`reduce` (max or min) of the entries that are not NaN, which become `fill` first (NaN where
    all are)."""
    clean, nan = _without_nan(x, name, fill)
    out = reduce(clean, axis, keepdims)
    if nan is None:
        return out
    none = B.eq(sum(B.cast(logical_not(nan), "i32"), axis, keepdims), 0)
    return B.select(none, B.full_like(out, float("nan")), out)


def nanmax(x, axis=None, keepdims=False):
    """The maximum of the entries that are not NaN (NaN where all are)."""
    return _nan_extreme(x, axis, keepdims, "nanmax", float("-inf"), max)


def nanmin(x, axis=None, keepdims=False):
    """The minimum of the entries that are not NaN (NaN where all are)."""
    return _nan_extreme(x, axis, keepdims, "nanmin", float("inf"), min)


def real(x):
    """x itself (kcompile has no complex values)."""
    return _node(x, "real")


def imag(x):
    return B.zeros_like(_node(x, "imag"))


def conj(x):
    return _node(x, "conj")


conjugate = conj


def isreal(x):
    x = _node(x, "isreal")
    return B.eq(B.cast(B.zeros_like(x), "i32"), 0)


def trapezoid(y, x=None, dx=1.0, axis=-1):
    """The trapezoidal rule's integral of y along `axis` (spacing dx, or the sample points x)."""
    from ir import build_seq
    y = _node(y, "trapezoid")
    if y.dtype not in ("f32", "f64"):
        y = B.cast(y, "f32")
    axis = _static_axis(y, axis, "trapezoid")
    size = y.shape[axis]
    mids = B.mul(B.add(build_seq.slice(y, 1, size, axis), build_seq.slice(y, 0, size - 1, axis)),
                 0.5)
    if x is None:
        return B.mul(B.reduce_sum(mids, (axis,), False), float(dx))
    points = as_traced(x)
    points = points if isinstance(points, Node) else B.const(np.asarray(x, np.float32), y.dtype)
    if points.dtype != y.dtype:
        points = B.cast(points, y.dtype)
    if points.type.rank == 1:
        points = B.reshape(points, tuple(size if i == axis else 1 for i in range(y.type.rank)))
    steps = diff(points, 1, axis % points.type.rank if points.type.rank == y.type.rank else -1)
    return B.reduce_sum(B.mul(mids, steps), (axis,), False)


def vander(x, N=None, increasing=False):
    """numpy's Vandermonde matrix of a 1-D value: columns x^(N-1), ..., x^0 (or increasing)."""
    x = _node(x, "vander")
    if x.type.rank != 1:
        raise ValueError(f"kcompile.ops.vander needs a 1-D value; got {x.type}")
    count = x.shape[0] if N is None else int(N)
    if count is None or count < 1:
        raise ValueError("kcompile.ops.vander: give N (the number of columns) for a batched value")
    column = B.reshape(x, (x.shape[0], 1))
    powers = [B.full_like(column, 1)]
    for _ in range(count - 1):
        powers.append(B.mul(powers[-1], column))
    if not increasing:
        powers.reverse()
    return concatenate(powers, axis=1)


# -- the same functions on arrays, outside a trace ------------------------------------------------

# how many leading positional arguments are operands (the rest are axes, shapes, dtypes, bounds)
_OPERANDS = {name: 2 for name in ("add", "subtract", "multiply", "divide", "true_divide", "maximum",
                                  "minimum", "greater", "greater_equal", "less", "less_equal",
                                  "equal", "not_equal", "matmul", "dot", "power",
                                  "logical_and", "logical_or", "divide_no_nan",
                                  "categorical_crossentropy", "sparse_categorical_crossentropy",
                                  "binary_crossentropy")}
_OPERANDS["where"] = 3
_OPERANDS.update({name: 2 for name in ("arctan2", "logaddexp", "logical_xor", "isclose", "outer",
                                       "in_top_k", "tensordot", "inner", "vdot", "hypot",
                                       "heaviside", "fmod", "kron", "cross", "isin")})
_OPERANDS["dot_product_attention"] = 3
_SEQUENCE_OPERAND = ("concatenate", "stack", "hstack", "vstack")     # one argument: a list of operands
# numpy's already, or not an array function
_NOT_EAGER = ("ones", "zeros", "shape", "convert_to_numpy", "size", "full", "eye",
              "convert_to_tensor", "categorical_crossentropy", "sparse_categorical_crossentropy",
              "full_like", "ndim", "arange", "linspace", "meshgrid", "tri", "identity", "copy",
              "dtype", "is_tensor", "get_item", "select", "logspace", "empty")


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
    if isinstance(out, (list, tuple)) and out and builtins.all(isinstance(v, Node) for v in out):
        # several results (split, unstack, top_k, moments): one graph, as many outputs
        outputs = [(f"out_{i}", v) for i, v in enumerate(out)]
        with np.errstate(all="ignore"):
            results = ir.run(ir.Graph(f"ops.{fn.__name__}", inputs, outputs), feeds)
        return type(out)(results[name] for name, _ in outputs)
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
        if name == "einsum":                    # einsum(subscripts, *operands)
            return _run_eagerly(fn, list(args[1:]), lambda nodes: fn(args[0], *nodes))
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
