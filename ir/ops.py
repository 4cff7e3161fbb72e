"""The op registry: one entry per primitive, holding everything the compiler knows about it.

Each `OpDef` carries, side by side (as JAX's `lax.py` writes each primitive's rules together):

- `infer(types, attrs) -> TensorType`: the shape and dtype rule; raises ValueError on bad operands;
- `reference(values, attrs, node, batch=None) -> np.ndarray`: the numpy semantics, used by the
  interpreter (the oracle every compiled kernel is tested against) and by constant folding; `batch` is
  the batch size, for the ops that build a result shape with a batch dimension themselves
  (`random_uniform`, `iota`, `broadcast`, `reshape`);
- `grad(node, g) -> [grad or None per operand]`: the reverse-mode rule, written in IR ops, so backward
  graphs print, parse and optimize like any other graph;
- `kind`: the fusion pattern kind (TVM's order: elementwise < broadcast < injective < reduce <
  out-fusable < opaque);
- `attrs`, `optional_attrs`: the names of the attributes a node of the op must have and may have
  (`make` refuses others, so a misspelt attribute in IR text is an error, not a silent default);
  None (an op registered without them) accepts any;
- `lowering`: filled in by `codegen.lower` (the IR knows nothing of LLVM; `tests/test_registry.py`
  checks after importing codegen that no op lacks one).

Composites (relu, sigmoid, softmax, log-softmax, cross-entropy) are not here: they decompose into
these primitives in `ir.build`, so only primitives need gradient and lowering rules.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .graph import DTYPES, FLOAT_DTYPES, ConstValue, Node, TensorType, freeze_attrs

ELEMWISE, BROADCAST, INJECTIVE, REDUCE, OUT_FUSABLE, OPAQUE = range(6)
KIND_NAMES = {ELEMWISE: "elementwise", BROADCAST: "broadcast", INJECTIVE: "injective",
              REDUCE: "reduce", OUT_FUSABLE: "out-fusable", OPAQUE: "opaque"}


@dataclass
class OpDef:
    name: str
    infer: Callable
    reference: Callable
    grad: Callable
    kind: int
    source: bool = False      # result type comes from attrs 'shape'/'dtype' (printed as the type)
    doc: str = ""
    lowering: object = None   # set by codegen.lower
    attrs: tuple | None = None            # attribute names every node has (None: not declared)
    optional_attrs: tuple = ()            # ... and those it may have
    operands: int | None = None           # how many operands a node has (None: any number)


REGISTRY: dict[str, OpDef] = {}


def register(name, *, infer, reference, grad, kind, source=False, doc="", attrs=None,
             optional_attrs=(), operands=None):
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    REGISTRY[name] = OpDef(name, infer, reference, grad, kind, source, doc,
                           attrs=None if attrs is None else tuple(attrs),
                           optional_attrs=tuple(optional_attrs),
                           operands=0 if source else operands)
    return REGISTRY[name]


def infer_type(opdef: OpDef, types: list, attrs: dict):
    """The result type of an `opdef` node with operands of `types`: its operand count checked
    against the declared one, then its shape rule."""
    if opdef.operands is not None and len(types) != opdef.operands:
        count = {0: "no operands", 1: "1 operand"}.get(opdef.operands, f"{opdef.operands} operands")
        raise ValueError(f"{opdef.name} takes {count}, got {len(types)}")
    return opdef.infer(types, attrs)


def _check_attrs(opdef: OpDef, attrs: dict) -> None:
    if opdef.attrs is None:
        return
    unknown = sorted(set(attrs) - set(opdef.attrs) - set(opdef.optional_attrs))
    missing = [a for a in opdef.attrs if a not in attrs]
    if unknown or missing:
        known = list(opdef.attrs) + list(opdef.optional_attrs)
        problems = ([f"unknown attribute {', '.join(unknown)}"] if unknown else []) + \
            ([f"missing attribute {', '.join(missing)}"] if missing else [])
        raise ValueError(f"{opdef.name}: {'; '.join(problems)} (its attributes: "
                         f"{', '.join(known) if known else 'none'})")


# What each attribute name holds, whichever op has it (one meaning per name).
_BOOL_ATTRS = ("transpose_a", "transpose_b", "keepdims", "finite")
_INT_ATTRS = ("axis", "stream", "rows", "start", "stop", "before", "after")
_INT_TUPLE_ATTRS = ("perm", "axes", "size", "strides", "pads", "image")


def _check_attr_values(op: str, attrs: dict) -> None:
    """Refuse an attribute value of the wrong kind (`transpose_b="false"`, a string, would
    otherwise read as true).  What one op's values must satisfy beyond their kind (a constant's
    range, an iota's axis) is that op's shape rule."""
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def bad(name, what):
        raise ValueError(f"{op}: attribute {name}={attrs[name]!r} must be {what}")

    for name, value in attrs.items():
        if name in _BOOL_ATTRS and not isinstance(value, bool):
            bad(name, "true or false")
        if name in _INT_ATTRS and not is_int(value):
            bad(name, "an integer")
        if name in _INT_TUPLE_ATTRS and not (isinstance(value, tuple) and all(map(is_int, value))):
            bad(name, "a tuple of integers")
        if name == "shape" and not (isinstance(value, tuple) and
                                    all(d is None or (is_int(d) and d >= 0) for d in value)):
            bad(name, "a tuple of sizes >= 0 (or ? for the batch)")
        if name == "dtype" and value not in DTYPES:
            bad(name, f"one of {', '.join(DTYPES)}")
        if name == "name" and not isinstance(value, str):
            bad(name, "a string")
        if name == "pad_value" and not isinstance(value, numbers.Real):
            bad(name, "a number")


def _check_const(attrs: dict) -> None:
    """const's own rule: its value is a number of its dtype's range, or an array of its type."""
    value, dtype, shape = attrs["value"], attrs["dtype"], tuple(attrs["shape"])
    if isinstance(value, ConstValue):
        if value.array is not None and (tuple(value.array.shape) != shape
                                        or value.array.dtype != np.dtype(DTYPES[dtype])):
            raise ValueError(f"const: its array is {value.array.dtype}{list(value.array.shape)}, "
                             f"declared {dtype}{list(shape)}")
        return
    if shape != ():
        raise ValueError(f"const of shape {shape}: its value must be an array (@digest), "
                         f"got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if not (dtype == "bool" and isinstance(value, bool)):
            raise ValueError(f"const: value={value!r} is not a {dtype} number")
        return
    if dtype in ("i32", "u32"):
        info = np.iinfo(DTYPES[dtype])
        if not np.isfinite(value) or value != int(value):
            raise ValueError(f"const: value={value!r} is not an integer, as {dtype} needs")
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"const: value={value!r} is out of the range of {dtype} "
                             f"[{info.min}, {info.max}]")
    elif dtype == "bool" and value not in (0, 1):
        raise ValueError(f"const: value={value!r} is not a bool (true, false, 0 or 1)")


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {sorted(REGISTRY)}") from None


def as_traced(x):
    """`x`, or the node an object stands for while a graph is traced: an object whose type has
    `__ir_node__()` (a model's weight) gives it, or None when it is not being traced."""
    to_node = getattr(type(x), "__ir_node__", None)
    if to_node is not None:
        node = to_node(x)
        if node is not None:
            return node
    return x


def make(op: str, operands=(), **attrs) -> Node:
    """Create a node, checking operands and inferring its type with the op's rule."""
    opdef = get(op)
    operands = tuple(as_traced(o) for o in operands)
    for o in operands:
        if not isinstance(o, Node):
            raise TypeError(f"operand of {op} must be an IR node, got {type(o).__name__}")
    _check_attrs(opdef, attrs)
    frozen = freeze_attrs(attrs)
    _check_attr_values(op, dict(frozen))
    result = infer_type(opdef, [o.type for o in operands], dict(frozen))
    return Node(op, operands, frozen, result)


def np_dtype(dtype: str):
    return DTYPES[dtype]


# ----------------------------------------------------------------------------------------------
# Shape rules
# ----------------------------------------------------------------------------------------------

def _fmt(types):
    return ", ".join(str(t) for t in types)


def _same(op, types, n):
    if len(types) != n:
        raise ValueError(f"{op} takes {n} operands, got {len(types)}")
    first = types[0]
    for t in types[1:]:
        if t != first:
            raise ValueError(f"{op} needs operands of one type, got {_fmt(types)}; "
                             "broadcast or cast them first")
    return first


def _unary_float(op):
    def infer(types, attrs):
        t = _same(op, types, 1)
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{op} needs a float operand, got {t}")
        return t
    return infer


def _numeric(op, arity):
    """Operands of one numeric (not bool) type; the result has that type."""
    def infer(types, attrs):
        t = _same(op, types, arity)
        if t.dtype == "bool":
            raise ValueError(f"{op} needs numeric operand{'s' if arity > 1 else ''}, got {t}")
        return t
    return infer


def _compare(op):
    def infer(types, attrs):
        t = _same(op, types, 2)
        return TensorType("bool", t.shape)
    return infer


def _select_infer(types, attrs):
    if len(types) != 3:
        raise ValueError(f"select takes 3 operands, got {len(types)}")
    c, a, b = types
    if c.dtype != "bool" or c.shape != a.shape or a != b:
        raise ValueError(f"select needs (bool[s], T[s], T[s]), got ({_fmt(types)})")
    return a


def _cast_infer(types, attrs):
    (t,) = types
    return TensorType(attrs["dtype"], t.shape)


def norm_axes(axes, rank) -> tuple:
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    out = []
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            raise ValueError(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {axes}")
    return tuple(sorted(out))


def _reduce_shape(t, attrs):
    axes = attrs["axes"]
    for a in axes:
        if not 0 <= a < t.rank:
            raise ValueError(f"reduction axis {a} out of range for {t}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"reduction axes {tuple(axes)} repeat an axis")
    if attrs.get("keepdims", False):
        shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    else:
        shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    # Reducing the batch axis with keepdims leaves a static 1 there; without it the batch is gone.
    return shape


def _reduce_infer(op):
    def infer(types, attrs):
        (t,) = types
        if t.dtype == "bool":
            raise ValueError(f"{op} needs a numeric operand, got {t}")
        return TensorType(t.dtype, _reduce_shape(t, attrs))
    return infer


def _argmax_infer(types, attrs):
    (t,) = types
    axis = attrs["axis"]
    if not 0 <= axis < t.rank:
        raise ValueError(f"argmax axis {axis} out of range for {t}")
    return TensorType("i32", tuple(d for i, d in enumerate(t.shape) if i != axis))


def _reshape_infer(types, attrs):
    (t,) = types
    shape = tuple(attrs["shape"])
    new = TensorType(t.dtype, shape)
    if new.batched != t.batched or new.static_size != t.static_size:
        raise ValueError(f"cannot reshape {t} to {new}: the number of elements differs "
                         "(the batch dimension '?' must stay first)")
    return new


def _transpose_infer(types, attrs):
    (t,) = types
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(t.rank)):
        raise ValueError(f"transpose permutation {perm} does not fit {t}")
    if t.batched and perm[0] != 0:
        raise ValueError(f"transpose {perm} would move the batch dimension of {t}")
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


def broadcast_compatible(src: tuple, dst: tuple) -> bool:
    if len(src) > len(dst):
        return False
    for s, d in zip(reversed(src), reversed(dst)):
        if s == d or s == 1:
            continue
        return False
    return True


def _broadcast_infer(types, attrs):
    (t,) = types
    shape = tuple(attrs["shape"])
    if not broadcast_compatible(t.shape, shape):
        raise ValueError(f"cannot broadcast {t} to shape {TensorType(t.dtype, shape).shape}")
    return TensorType(t.dtype, shape)


def _matmul_infer(types, attrs):
    a, b = types
    ta, tb = attrs.get("transpose_a", False), attrs.get("transpose_b", False)
    if a.dtype != b.dtype or a.dtype not in FLOAT_DTYPES:
        raise ValueError(f"matmul needs two float operands of one dtype, got {a} and {b}")
    if ta and tb:
        raise ValueError("matmul with both operands transposed is not supported")
    if ta:
        # a[L..., K]^T @ b[L..., N] -> [K, N], summing over all leading dims
        if a.rank < 1 or b.rank < 1 or a.shape[:-1] != b.shape[:-1]:
            raise ValueError(f"matmul(transpose_a) needs a[L...,K], b[L...,N], got {a} and {b}")
        return TensorType(a.dtype, (a.shape[-1], b.shape[-1]))
    if b.rank != 2 or a.rank < 1:
        raise ValueError(f"matmul needs a[..., K] and a 2-D b, got {a} and {b}")
    k_b, n = (b.shape[1], b.shape[0]) if tb else (b.shape[0], b.shape[1])
    if a.shape[-1] != k_b:
        raise ValueError(f"matmul contraction mismatch: {a} @ {b}{' (b transposed)' if tb else ''}"
                         f": {a.shape[-1]} != {k_b}")
    return TensorType(a.dtype, a.shape[:-1] + (n,))


def _source_infer(op: str, check=None):
    """The shape rule of a source op (no operands: `infer_type` checks that): the type its
    attributes give, and `check` (attrs) for what else they must satisfy."""
    def infer(types, attrs):
        if check is not None:
            check(attrs)
        return TensorType(attrs["dtype"], tuple(attrs["shape"]))
    return infer


def _check_iota(attrs: dict) -> None:
    if not 0 <= attrs["axis"] < len(attrs["shape"]):
        raise ValueError(f"iota: attribute axis={attrs['axis']!r} must be an axis of shape "
                         f"{tuple(attrs['shape'])}")


def _random_infer(types, attrs):
    (seed,) = types
    if seed != TensorType("u32", ()):
        raise ValueError(f"random_uniform takes a u32[] seed, got {seed}")
    return TensorType("f32", tuple(attrs["shape"]))


def _dim_size_infer(types, attrs):
    (t,) = types
    if not 0 <= attrs["axis"] < t.rank:
        raise ValueError(f"dim_size axis {attrs['axis']} out of range for {t}")
    return TensorType(attrs.get("dtype", "f32"), ())


# ----------------------------------------------------------------------------------------------
# Numpy references
# ----------------------------------------------------------------------------------------------

def concrete(shape, batch):
    if None in shape and batch is None:
        raise ValueError("this value has a batch dimension but the batch size is unknown")
    return tuple(batch if d is None else d for d in shape)


def _cast_to(node, value):
    return np.asarray(value).astype(np_dtype(node.dtype), copy=False)


def _elementwise_ref(fn):
    def ref(values, attrs, node, batch=None):
        with np.errstate(all="ignore"):
            return _cast_to(node, fn(*values))
    return ref


def _div_ref(values, attrs, node, batch=None):
    """x / y; for integers truncated toward zero, with 0 for a zero divisor and i32's minimum
    for its minimum / -1 (it wraps), as the compiled code does: never a trap."""
    x, y = (np.asarray(v) for v in values)
    if node.dtype in FLOAT_DTYPES:
        with np.errstate(all="ignore"):
            return _cast_to(node, np.divide(x, y))
    x64, y64 = np.broadcast_arrays(x.astype(np.int64), y.astype(np.int64))
    safe = np.where(y64 == 0, 1, y64)
    quotient = np.abs(x64) // np.abs(safe) * np.sign(x64) * np.sign(safe)
    return np.where(y64 == 0, 0, quotient).astype(np_dtype(node.dtype))


def _cast_ref(values, attrs, node, batch=None):
    """x converted to `dtype`; a float to an integer truncates toward zero and saturates (NaN
    gives 0, a value past the range the nearest end), as the compiled code's conversion."""
    x = np.asarray(values[0])
    to = np_dtype(attrs["dtype"])
    if x.dtype.kind == "f" and np.dtype(to).kind in "iu":
        info = np.iinfo(to)
        wide = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=info.max, neginf=info.min)
        return np.trunc(np.clip(wide, info.min, info.max)).astype(to)
    return x.astype(to)


def _mean_ref(values, attrs, node, batch=None):
    """np.mean; for integers the sum (in the dtype, wrapping) divided as `div` divides (0 for an
    empty axis), as the compiled code does."""
    (x,) = values
    if node.dtype in FLOAT_DTYPES:
        return _reduce_ref(np.mean)(values, attrs, node, batch)
    keepdims = attrs.get("keepdims", False)
    total = np.sum(x, axis=attrs["axes"], keepdims=keepdims, dtype=np_dtype(node.dtype))
    count = int(np.prod([np.shape(x)[a] for a in attrs["axes"]], dtype=np.int64))
    return _div_ref([total, np.asarray(count, np_dtype(node.dtype))], {}, node)


def _reduce_ref(fn):
    def ref(values, attrs, node, batch=None):
        (x,) = values
        return _cast_to(node, fn(x, axis=attrs["axes"], keepdims=attrs.get("keepdims", False)))
    return ref


def _matmul_ref(values, attrs, node, batch=None):
    a, b = values
    if attrs.get("transpose_a", False):
        a2 = a.reshape(-1, a.shape[-1])
        b2 = b.reshape(-1, b.shape[-1])
        return _cast_to(node, a2.T @ b2)
    if attrs.get("transpose_b", False):
        b = b.T
    return _cast_to(node, np.matmul(a, b))


_GOLDEN = np.uint32(0x9E3779B9)


def fmix32(h):
    """murmur3's 32-bit finalizer on uint32 arrays (wrapping arithmetic)."""
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        h = h ^ (h >> np.uint32(16))
    return h


def random_bits(seed, stream, index):
    """Counter-based random bits: element `index` of stream `stream` under `seed` (all uint32)."""
    with np.errstate(over="ignore"):
        key = fmix32(np.uint32(seed) ^ (np.uint32(stream) * _GOLDEN))
        x = fmix32((np.asarray(index, dtype=np.uint32) * _GOLDEN) ^ key)
        return fmix32(x + key)


def _random_ref(values, attrs, node, batch=None):
    (seed,) = values
    shape = concrete(node.shape, batch)
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64).astype(np.uint32)
    bits = random_bits(np.uint32(seed), np.uint32(attrs["stream"] & 0xFFFFFFFF), index)
    return ((bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)


def _iota_ref(values, attrs, node, batch=None):
    shape = concrete(node.shape, batch)
    axis = attrs["axis"]
    r = np.arange(shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.broadcast_to(r, shape).astype(np_dtype(node.dtype))


def _const_ref(values, attrs, node, batch=None):
    value = attrs["value"]
    if isinstance(value, ConstValue):
        if value.array is None:
            raise ValueError(f"constant {value.digest} has no data (parsed from text without its "
                             "constant table); pass constants= to ir.parse")
        return value.array
    return np.asarray(value, dtype=np_dtype(node.dtype))


def _arg_ref(values, attrs, node, batch=None):
    raise RuntimeError("arg nodes are bound by the interpreter, not evaluated")


# ----------------------------------------------------------------------------------------------
# Gradient rules (written in IR ops through ir.build, imported lazily to avoid a cycle)
# ----------------------------------------------------------------------------------------------

def _b():
    from . import build
    return build


def no_grad(node, g):
    """Not differentiable (integer/boolean results, sources): no gradient flows to any operand."""
    return [None] * len(node.operands)


def _grad_add(node, g):
    return [g, g]


def _grad_sub(node, g):
    return [g, _b().neg(g)]


def _grad_mul(node, g):
    B = _b()
    a, b = node.operands
    return [B.mul(g, b), B.mul(g, a)]


def _grad_div(node, g):
    B = _b()
    a, b = node.operands
    ga = B.div(g, b)
    return [ga, B.neg(B.mul(ga, node))]  # d(a/b)/db = -(a/b)/b


def _grad_neg(node, g):
    return [_b().neg(g)]


def _grad_exp(node, g):
    return [_b().mul(g, node)]


def _grad_log(node, g):
    return [_b().div(g, node.operands[0])]


def _grad_tanh(node, g):
    B = _b()
    return [B.mul(g, B.sub(B.scalar(1.0, node), B.mul(node, node)))]


def _grad_sqrt(node, g):
    B = _b()
    return [B.div(B.mul(g, B.scalar(0.5, node)), node)]


def _grad_abs(node, g):
    # NOTE: at x == 0 the gradient is +g, JAX's choice for jnp.abs (so an L1 penalty or a mean
    # absolute error at exactly 0 steps as Keras 3 does), not 0.
    B = _b()
    (x,) = node.operands
    return [B.select(B.ge(x, B.zeros_like(x)), g, B.neg(g))]


def _grad_max(node, g):
    # NOTE: ties send the gradient to the second operand, so relu = max(x, 0) has gradient 0 at 0.
    B = _b()
    a, b = node.operands
    pick_a = B.gt(a, b)
    zero = B.zeros_like(g)
    return [B.select(pick_a, g, zero), B.select(pick_a, zero, g)]


def _grad_min(node, g):
    B = _b()
    a, b = node.operands
    pick_a = B.lt(a, b)
    zero = B.zeros_like(g)
    return [B.select(pick_a, g, zero), B.select(pick_a, zero, g)]


def _grad_select(node, g):
    B = _b()
    c, _, _ = node.operands
    zero = B.zeros_like(g)
    return [None, B.select(c, g, zero), B.select(c, zero, g)]


def _grad_cast(node, g):
    (x,) = node.operands
    if x.dtype in FLOAT_DTYPES and node.dtype in FLOAT_DTYPES:
        return [_b().cast(g, x.dtype)]
    return [None]


def _restore_reduced(node, g):
    """Broadcast a reduction's output gradient back over the reduced axes."""
    B = _b()
    (x,) = node.operands
    axes = node.attr("axes")
    keep_shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if not node.attr("keepdims", False):
        g = B.reshape(g, keep_shape)
    return B.broadcast(g, x.shape)


def _grad_reduce_sum(node, g):
    return [_restore_reduced(node, g)]


def _grad_reduce_mean(node, g):
    B = _b()
    (x,) = node.operands
    count = B.reduced_count(x, node.attr("axes"))
    return [_restore_reduced(node, B.div(g, count))]


def _grad_reduce_max(node, g):
    # NOTE: positions tied for the max share the gradient equally (JAX's rule for jnp.max, so Keras's
    # GlobalMaxPooling after a relu, where whole channels tie at 0, trains as Keras does).
    B = _b()
    (x,) = node.operands
    mask = B.eq(x, _restore_reduced(node, node))
    ties = B.reduce_sum(B.cast(mask, x.dtype), node.attr("axes"), keepdims=node.attr("keepdims", False))
    return [B.select(mask, _restore_reduced(node, B.div(g, ties)), B.zeros_like(x))]


def _grad_reshape(node, g):
    return [_b().reshape(g, node.operands[0].shape)]


def _grad_transpose(node, g):
    perm = node.attr("perm")
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [_b().transpose(g, inverse)]


def _grad_broadcast(node, g):
    return [_b().unbroadcast(g, node.operands[0].shape)]


def _grad_matmul(node, g):
    B = _b()
    a, b = node.operands
    if node.attr("transpose_a", False):      # C = A^T B
        return [B.matmul(b, g, transpose_b=True), B.matmul(a, g)]
    if node.attr("transpose_b", False):      # C = A B^T
        return [B.matmul(g, b), B.matmul(g, a, transpose_a=True)]
    return [B.matmul(g, b, transpose_b=True), B.matmul(a, g, transpose_a=True)]  # C = A B


# ----------------------------------------------------------------------------------------------
# The primitives
# ----------------------------------------------------------------------------------------------

register("arg", infer=_source_infer("arg"), reference=_arg_ref, grad=no_grad, kind=OPAQUE,
         source=True, attrs=("name", "dtype", "shape"), optional_attrs=("finite",),
         doc="a function input, bound by name; finite=true promises it holds no inf or NaN "
         "(graph.known_finite; the interpreter checks it)")
register("const", infer=_source_infer("const", _check_const), reference=_const_ref,
         grad=no_grad, kind=OPAQUE, attrs=("value", "dtype", "shape"),
         source=True, doc="a constant: attr value is a Python scalar or a ConstValue")
register("iota", infer=_source_infer("iota", _check_iota), reference=_iota_ref, grad=no_grad,
         kind=ELEMWISE, attrs=("shape", "dtype", "axis"),
         source=True, doc="the index along `axis` at every position of `shape`")
register("random_uniform", infer=_random_infer, operands=1, reference=_random_ref, grad=no_grad,
         attrs=("shape", "stream"),
         kind=ELEMWISE, doc="counter-based uniform [0,1) floats: murmur3 fmix32 of (seed, stream, "
         "flat index), top 24 bits; identical bits in numpy and compiled code")
register("dim_size", infer=_dim_size_infer, operands=1, attrs=("axis", "dtype"),
         reference=lambda v, a, n, batch=None: np.asarray(v[0].shape[a["axis"]],
                                                           np_dtype(n.dtype)),
         grad=no_grad, kind=INJECTIVE, doc="the runtime length of an axis, as a scalar")

for _name, _fn, _grad in [
    ("add", np.add, _grad_add), ("sub", np.subtract, _grad_sub), ("mul", np.multiply, _grad_mul),
    ("div", None, _grad_div), ("max", np.maximum, _grad_max), ("min", np.minimum, _grad_min),
]:
    register(_name, infer=_numeric(_name, 2), operands=2,
             reference=_div_ref if _fn is None else _elementwise_ref(_fn), grad=_grad,
             kind=ELEMWISE, attrs=(),
             doc="for integers truncated toward zero; a zero divisor gives 0" if _fn is None
             else "")

for _name, _fn, _grad in [
    ("exp", np.exp, _grad_exp), ("log", np.log, _grad_log), ("tanh", np.tanh, _grad_tanh),
    ("sqrt", np.sqrt, _grad_sqrt),
]:
    register(_name, infer=_unary_float(_name), reference=_elementwise_ref(_fn), grad=_grad,
             kind=ELEMWISE, attrs=(), operands=1)

register("stop_gradient", infer=lambda types, attrs: _same("stop_gradient", types, 1), operands=1,
         reference=lambda v, a, n, batch=None: v[0], grad=no_grad, kind=ELEMWISE, attrs=(),
         doc="identity whose gradient is zero (e.g. the max subtracted inside softmax)")
register("neg", infer=_numeric("neg", 1), operands=1, reference=_elementwise_ref(np.negative),
         grad=_grad_neg, kind=ELEMWISE, attrs=())
register("abs", infer=_numeric("abs", 1), operands=1,
         reference=_elementwise_ref(np.abs), grad=_grad_abs,
         kind=ELEMWISE, attrs=())

for _name, _fn in [("gt", np.greater), ("ge", np.greater_equal), ("lt", np.less),
                   ("le", np.less_equal), ("eq", np.equal), ("ne", np.not_equal)]:
    register(_name, infer=_compare(_name), reference=_elementwise_ref(_fn), grad=no_grad,
             kind=ELEMWISE, attrs=(), operands=2)

register("select", infer=_select_infer, operands=3,
         reference=_elementwise_ref(np.where), grad=_grad_select,
         kind=ELEMWISE, attrs=(), doc="select(cond, a, b): a where cond else b")
register("cast", infer=_cast_infer, operands=1, reference=_cast_ref, grad=_grad_cast, kind=ELEMWISE,
         attrs=("dtype",), doc="a float to an integer truncates and saturates (NaN gives 0)")

register("reduce_sum", infer=_reduce_infer("reduce_sum"), operands=1, reference=_reduce_ref(np.sum),
         grad=_grad_reduce_sum, kind=REDUCE, attrs=("axes", "keepdims"))
register("reduce_max", infer=_reduce_infer("reduce_max"), operands=1, reference=_reduce_ref(np.max),
         grad=_grad_reduce_max, kind=REDUCE, attrs=("axes", "keepdims"))
register("reduce_mean", infer=_reduce_infer("reduce_mean"), operands=1, reference=_mean_ref,
         grad=_grad_reduce_mean, kind=REDUCE, attrs=("axes", "keepdims"))
register("argmax", infer=_argmax_infer, operands=1,
         reference=lambda v, a, n, batch=None: np.argmax(v[0], axis=a["axis"]).astype(np.int32),
         grad=no_grad, kind=REDUCE, attrs=("axis",), doc="index of the first maximum along `axis`")

register("reshape", infer=_reshape_infer, operands=1,
         reference=lambda v, a, n, batch=None: np.reshape(v[0], concrete(n.shape, batch)),
         grad=_grad_reshape, kind=INJECTIVE, attrs=("shape",))
register("transpose", infer=_transpose_infer, operands=1,
         reference=lambda v, a, n, batch=None: np.transpose(v[0], a["perm"]),
         grad=_grad_transpose, kind=INJECTIVE, attrs=("perm",))
register("broadcast", infer=_broadcast_infer, operands=1,
         reference=lambda v, a, n, batch=None: np.broadcast_to(v[0], concrete(n.shape, batch)),
         grad=_grad_broadcast, kind=BROADCAST, attrs=("shape",),
         doc="numpy broadcast_to: dims of size 1 expand, new dims are added on the left")
register("matmul", infer=_matmul_infer, operands=2,
         reference=_matmul_ref, grad=_grad_matmul, kind=OUT_FUSABLE,
         attrs=("transpose_a", "transpose_b"),
         doc="a[...,K] @ b[K,N]; transpose_b: b is [N,K]; transpose_a: a[L...,K]^T @ b[L...,N]")

from . import ops_nn  # noqa: E402,F401
from . import ops_seq  # noqa: E402,F401
