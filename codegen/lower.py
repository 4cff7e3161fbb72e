"""Lowering a fused, memory-planned graph to an llvmlite module.

The module exports one function per graph:

    void NAME(int64_t n, void **table)

`n` is the batch size; `table` holds one pointer per graph input (in order), one per output that has
its own buffer (`MemoryPlan.outputs`), and then the workspace arena (an exported module's table
has one more, the GEMMs' packing scratch: see WORKSPACE_SCRATCH).  Each kernel group becomes a
function

    void NAME.kI(i64 n, ptr noalias b0, ptr noalias b1, ...)

with one pointer per buffer the kernel touches (values sharing a memory slot share one; see
`FunctionEmitter`).  The entry loads the pointers from the table (or computes them as offsets into
the arena) and calls the kernels in schedule order, so one native call runs the graph.  Groups alike
share one kernel function (`kernel_structure`), named after the first of them; in an exported
module every kernel takes the packing scratch as its last pointer.  A kernel is internal
unless it is placed in the companion module a second process compiles (`_Placement`): then it is
external, so the entry can call it once the two objects are linked.

Inside a kernel every value is *evaluated at an index* (a tuple of i64 values): elementwise ops
apply their scalar lowering to their operands' values at the same index; broadcast, transpose and
reshape remap the index; materialized values are loaded from their buffer.  That is what makes an
inlined producer free of memory traffic.  A matmul or reduction anchor is computed into its buffer
first, then the group's elementwise part runs as one loop nest over the group's shape.  Loops put the
last axis innermost with unit stride, so LLVM's loop vectorizer turns them into vector code.

Each op's lowering lives in its registry entry (`ir.ops.REGISTRY[op].lowering`), registered here
with `@lowers(op)`:  a `Scalar` lowering maps operand values to a value; an `Index` lowering
computes a value from an index; `Kernel` lowerings emit an anchor's whole computation.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from llvmlite import ir

import ir as kir
from ir import ops
from ir.build_nn import relu_operand
from ir.fusion import FusedGraph, Group, is_free
from ir.memory import MemoryPlan

from . import mathlib
from .gemm import NARROW_BLOCK, listed_panel_vectors, narrow_product, sparse_panel_vectors
from .loops import for_range, i64, smin

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
VALUE_TYPES = {"f32": F32, "f64": F64, "i32": I32, "u32": I32, "bool": I1}
STORAGE_TYPES = {"f32": F32, "f64": F64, "i32": I32, "u32": I32, "bool": I8}
# NOTE: reductions may reassociate (that is what lets them vectorize); elementwise ops stay IEEE so
# compiled results match the numpy reference bit for bit wherever libm is not involved.
REDUCE_FLAGS = ("reassoc", "nsz")


def c64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def c32(v: int) -> ir.Constant:
    """An i32 constant from any 32-bit pattern (LLVM's text form wants it signed)."""
    v = int(v) & 0xFFFFFFFF
    return ir.Constant(I32, v - (1 << 32) if v >= 1 << 31 else v)


# ----------------------------------------------------------------------------------------------
# Lowering kinds and registration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scalar:
    """fn(builder, node, operand_values) -> value"""
    fn: Callable


@dataclass(frozen=True)
class Index:
    """fn(evaluator, node, index) -> value"""
    fn: Callable


@dataclass(frozen=True)
class Kernel:
    """fn(kernel_emitter, node) -> None: computes the anchor into its buffer."""
    fn: Callable


def lowers(op: str, kind=Scalar):
    def register(fn):
        ops.get(op).lowering = kind(fn)
        return fn
    return register


def _is_float(dtype: str) -> bool:
    return dtype in ("f32", "f64")


def _signed(dtype: str) -> bool:
    return dtype == "i32"


def _intrinsic(builder, name, args, ty=None):
    ty = ty or args[0].type
    fnty = ir.FunctionType(ty, [a.type for a in args])
    module = builder.module
    suffix = {F32: "f32", F64: "f64"}.get(ty, str(ty))
    full = f"{name}.{suffix}"
    fn = module.globals.get(full) or ir.Function(module, fnty, full)
    return builder.call(fn, args)


def _binary_lowering(float_fn, int_fn, uint_fn=None):
    def lower(b, node, args):
        x, y = args
        dtype = node.operands[0].dtype
        if _is_float(dtype):
            return float_fn(b, x, y)
        if dtype == "u32" and uint_fn is not None:
            return uint_fn(b, x, y)
        return int_fn(b, x, y)
    return lower


lowers("add")(_binary_lowering(lambda b, x, y: b.fadd(x, y), lambda b, x, y: b.add(x, y)))
lowers("sub")(_binary_lowering(lambda b, x, y: b.fsub(x, y), lambda b, x, y: b.sub(x, y)))
lowers("mul")(_binary_lowering(lambda b, x, y: b.fmul(x, y), lambda b, x, y: b.mul(x, y)))


def int_div(b, x, y, signed: bool):
    """x / y on integers without a trap: truncated toward zero, 0 for a zero divisor, and (signed)
    the minimum / -1 gives the minimum (the hardware's divide faults on both; see ops' `div`)."""
    zero = ir.Constant(y.type, 0)
    by_zero = b.icmp_unsigned("==", y, zero)
    if signed:
        width = y.type.width
        overflow = b.and_(b.icmp_signed("==", x, ir.Constant(x.type, -(1 << (width - 1)))),
                          b.icmp_signed("==", y, ir.Constant(y.type, -1)))
        safe = b.select(b.or_(by_zero, overflow), ir.Constant(y.type, 1), y)
        quotient = b.sdiv(x, safe)
    else:
        quotient = b.udiv(x, b.select(by_zero, ir.Constant(y.type, 1), y))
    return b.select(by_zero, zero, quotient)


lowers("div")(_binary_lowering(lambda b, x, y: b.fdiv(x, y),
                               lambda b, x, y: int_div(b, x, y, True),
                               lambda b, x, y: int_div(b, x, y, False)))
lowers("max")(_binary_lowering(
    lambda b, x, y: _intrinsic(b, "llvm.maximum", [x, y]),
    lambda b, x, y: b.select(b.icmp_signed(">", x, y), x, y),
    lambda b, x, y: b.select(b.icmp_unsigned(">", x, y), x, y)))
lowers("min")(_binary_lowering(
    lambda b, x, y: _intrinsic(b, "llvm.minimum", [x, y]),
    lambda b, x, y: b.select(b.icmp_signed("<", x, y), x, y),
    lambda b, x, y: b.select(b.icmp_unsigned("<", x, y), x, y)))


@lowers("neg")
def _neg(b, node, args):
    (x,) = args
    return b.fneg(x) if _is_float(node.dtype) else b.neg(x)


@lowers("abs")
def _abs(b, node, args):
    (x,) = args
    if _is_float(node.dtype):
        return mathlib.emit_fabs(b, x)
    if node.dtype == "u32":
        return x
    return b.select(b.icmp_signed("<", x, ir.Constant(x.type, 0)), b.neg(x), x)


lowers("exp")(lambda b, node, args: mathlib.emit_exp(b, args[0]))
lowers("log")(lambda b, node, args: mathlib.emit_log(b, args[0]))
lowers("tanh")(lambda b, node, args: mathlib.emit_tanh(b, args[0]))
lowers("sqrt")(lambda b, node, args: mathlib.emit_sqrt(b, args[0]))
lowers("stop_gradient")(lambda b, node, args: args[0])

_FCMP = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}


def _compare_lowering(op):
    def lower(b, node, args):
        x, y = args
        dtype = node.operands[0].dtype
        if _is_float(dtype):
            if op == "ne":
                return b.fcmp_unordered("!=", x, y)
            return b.fcmp_ordered(_FCMP[op], x, y)
        if dtype == "i32":
            return b.icmp_signed(_FCMP[op], x, y)
        return b.icmp_unsigned(_FCMP[op], x, y)
    return lower


for _op in _FCMP:
    lowers(_op)(_compare_lowering(_op))

lowers("select")(lambda b, node, args: b.select(args[0], args[1], args[2]))


@lowers("cast")
def _cast(b, node, args):
    (x,) = args
    src, dst = node.operands[0].dtype, node.dtype
    return convert(b, x, src, dst)


def convert(b, x, src: str, dst: str):
    if src == dst or (src in ("i32", "u32") and dst in ("i32", "u32")):
        return x
    to = VALUE_TYPES[dst]
    if dst == "bool":
        if _is_float(src):
            return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
        return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
    if src == "bool":
        return b.uitofp(x, to) if _is_float(dst) else b.zext(x, to)
    if _is_float(src) and _is_float(dst):
        return b.fptrunc(x, to) if src == "f64" else b.fpext(x, to)
    if _is_float(src):
        # NOTE: plain fptosi/fptoui give poison for NaN and for values outside the integer range;
        # the saturating intrinsics are defined everywhere: NaN -> 0, out of range -> the nearest
        # end of the range.
        name = "llvm.fptosi.sat" if dst == "i32" else "llvm.fptoui.sat"
        full = f"{name}.i32.{'f32' if src == 'f32' else 'f64'}"
        fn = b.module.globals.get(full) or ir.Function(b.module, ir.FunctionType(to, [x.type]), full)
        return b.call(fn, [x])
    return b.sitofp(x, to) if src == "i32" else b.uitofp(x, to)


def constant(dtype: str, value) -> ir.Constant:
    ty = VALUE_TYPES[dtype]
    if _is_float(dtype):
        return ir.Constant(ty, float(value))
    if dtype == "bool":
        return ir.Constant(ty, int(bool(value)))
    return c32(int(value))


# -- index lowerings ----------------------------------------------------------------------------

@lowers("const", Index)
def _const(ev, node, index):
    if node.type.shape == ():
        return constant(node.dtype, node.attr("value"))
    return ev.load(node, index)


@lowers("arg", Index)
def _arg(ev, node, index):
    return ev.load(node, index)


@lowers("broadcast", Index)
def _broadcast(ev, node, index):
    (x,) = node.operands
    lead = node.type.rank - x.type.rank
    mapped = tuple(c64(0) if (d == 1 and node.shape[lead + i] != 1) else index[lead + i]
                   for i, d in enumerate(x.shape))
    return ev.value(x, mapped)


@lowers("transpose", Index)
def _transpose(ev, node, index):
    (x,) = node.operands
    mapped = [None] * x.type.rank
    for i, p in enumerate(node.attr("perm")):
        mapped[p] = index[i]
    return ev.value(x, tuple(mapped))


@lowers("reshape", Index)
def _reshape(ev, node, index):
    """Axes the reshape leaves alone (the leading and trailing runs of equal dimensions, the batch
    among them) map straight through; only the axes between are linearized and split again, and a
    split into one axis needs no division (merging axes, as im2col's taps or Flatten do)."""
    (x,) = node.operands
    b = ev.builder
    src, dst = x.shape, node.shape
    lead = 0
    while lead < min(len(src), len(dst)) and src[lead] == dst[lead]:
        lead += 1
    trail = 0
    while trail < min(len(src), len(dst)) - lead and src[-1 - trail] == dst[-1 - trail]:
        trail += 1
    src_mid, dst_mid = range(lead, len(src) - trail), range(lead, len(dst) - trail)
    flat, stride = None, 1
    for axis in reversed(dst_mid):
        term = index[axis] if stride == 1 else b.mul(index[axis], c64(stride))
        flat = term if flat is None else b.add(flat, term)
        stride *= dst[axis]
    flat = c64(0) if flat is None else flat
    middle = []
    for position, axis in enumerate(reversed(src_mid)):
        if position == len(src_mid) - 1:
            middle.append(flat)          # the outermost axis takes what is left
        else:
            middle.append(b.urem(flat, c64(src[axis])))
            flat = b.udiv(flat, c64(src[axis]))
    mapped = tuple(index[:lead]) + tuple(reversed(middle)) + tuple(index[len(dst) - trail:])
    return ev.value(x, mapped)


@lowers("iota", Index)
def _iota(ev, node, index):
    # NOTE: truncate first: the index is an i64, and convert() treats i32 -> u32 as a no-op
    return convert(ev.builder, ev.builder.trunc(index[node.attr("axis")], I32), "i32", node.dtype)


@lowers("dim_size", Index)
def _dim_size(ev, node, index):
    x = node.operands[0]
    d = x.shape[node.attr("axis")]
    size = ev.n if d is None else c64(d)
    if _is_float(node.dtype):
        return ev.builder.sitofp(size, VALUE_TYPES[node.dtype])
    return ev.builder.trunc(size, I32)


def _fmix32(b, h):
    h = b.xor(h, b.lshr(h, c32(16)))
    h = b.mul(h, c32(0x85EBCA6B))
    h = b.xor(h, b.lshr(h, c32(13)))
    h = b.mul(h, c32(0xC2B2AE35))
    return b.xor(h, b.lshr(h, c32(16)))


@lowers("random_uniform", Index)
def _random_uniform(ev, node, index):
    # Same bits as ir.ops.random_bits: key = fmix32(seed ^ stream*golden);
    # x = fmix32(fmix32(i*golden ^ key) + key); value = (x >> 8) * 2^-24.
    b = ev.builder
    seed = ev.value(node.operands[0], ())
    golden = c32(0x9E3779B9)
    stream = c32(node.attr("stream") * 0x9E3779B9)
    key = _fmix32(b, b.xor(seed, stream))
    i = b.trunc(ev.linear(index, node.type), I32)
    x = _fmix32(b, b.xor(b.mul(i, golden), key))
    x = _fmix32(b, b.add(x, key))
    top = b.uitofp(b.lshr(x, c32(8)), F32)
    return b.fmul(top, ir.Constant(F32, 2.0 ** -24))


# ----------------------------------------------------------------------------------------------
# Evaluation of a group at an index
# ----------------------------------------------------------------------------------------------

class Evaluator:
    """Computes values of a group's members at an index, loading materialized operands."""

    def __init__(self, emitter: "FunctionEmitter", members: set):
        self.emitter = emitter
        self.builder = emitter.builder
        self.n = emitter.n
        self.members = members
        self.memo: dict = {}
        self._offsets: dict = {}

    def linear(self, index, ttype) -> ir.Value:
        """Row-major linear offset of `index` in a value of type `ttype`.

        Offsets are reused within a basic block (operands of one shape share them), and no stride
        is computed for the outermost axis: the fewer instructions rendered, parsed and
        optimized, the faster the compile."""
        b = self.builder
        key = (ttype.shape, tuple(id(i) for i in index), id(b.block))
        hit = self._offsets.get(key)
        if hit is not None:
            return hit
        offset = None
        stride = 1
        stride_v = None
        for axis in reversed(range(ttype.rank)):
            d = ttype.shape[axis]
            s = stride_v if stride_v is not None else c64(stride)
            term = index[axis] if (stride_v is None and stride == 1) else b.mul(index[axis], s)
            offset = term if offset is None else b.add(offset, term)
            if axis == 0:
                break
            if d is None:
                stride_v = b.mul(self.n, c64(stride)) if stride_v is None else b.mul(stride_v, self.n)
            elif stride_v is None:
                stride *= d
            else:
                stride_v = b.mul(stride_v, c64(d))
        offset = offset if offset is not None else c64(0)
        self._offsets[key] = offset
        return offset

    def pointer(self, node, index) -> ir.Value:
        base = self.emitter.pointer_of(node)
        return self.builder.gep(base, [self.linear(index, node.type)],
                                source_etype=STORAGE_TYPES[node.dtype])

    def load(self, node, index) -> ir.Value:
        value = self.builder.load(self.pointer(node, index), typ=STORAGE_TYPES[node.dtype], align=4
                                  if node.type.itemsize >= 4 else 1)
        if node.dtype == "bool":
            value = self.builder.trunc(value, I1)
        return value

    def store(self, node, index, value) -> None:
        if node.dtype == "bool":
            value = self.builder.zext(value, I8)
        self.builder.store(value, self.pointer(node, index), align=4 if node.type.itemsize >= 4 else 1)

    def value(self, node, index) -> ir.Value:
        """The value of `node` at `index`, emitted once per (node, index).  NOTE: operands first,
        from an explicit stack rather than by recursion: a chain of elementwise ops is as deep as
        the graph (a gradient summed over the 628 steps of an unrolled RNN overflowed Python's
        recursion limit)."""
        ids = tuple(id(i) for i in index)
        memo = self.memo
        hit = memo.get((node, ids))
        if hit is not None:
            return hit
        stack = [node]
        while stack:
            current = stack[-1]
            key = (current, ids)
            if key in memo:
                stack.pop()
                continue
            if is_free(current):
                result = constant(current.dtype, current.attr("value"))
            elif current not in self.members and self.emitter.has_buffer(current):
                result = self.load(current, index)
            else:
                lowering = ops.get(current.op).lowering
                if isinstance(lowering, Scalar):
                    pending = [o for o in current.operands if (o, ids) not in memo]
                    if pending:
                        stack.extend(reversed(pending))
                        continue
                    result = lowering.fn(self.builder, current,
                                         [memo[(o, ids)] for o in current.operands])
                elif isinstance(lowering, Index):
                    # (an index op's lowering asks for its operands' values itself: a chain of
                    # them recurses, with room beyond Python's default limit)
                    with _recursion_room():
                        result = lowering.fn(self, current, index)
                else:
                    raise AssertionError(f"{current.op} cannot be evaluated inline; it must be an "
                                         "anchor")
            memo[key] = result
            stack.pop()
        return memo[(node, ids)]


_ROOM_LOCK = threading.Lock()
_ROOM = {"users": 0, "saved": 0}
RECURSION_ROOM = 100_000


@contextlib.contextmanager
def _recursion_room():
    """Python's recursion limit raised to RECURSION_ROOM while an index op's lowering runs
    (Evaluator.value): its operands' values are computed by recursion, as deep as a chain of such
    ops.  NOTE: Python-to-Python calls (3.11 on) keep their frames off the C stack, so the deeper
    limit costs no C stack; the limit is restored when the last user leaves."""
    with _ROOM_LOCK:
        if _ROOM["users"] == 0:
            _ROOM["saved"] = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_ROOM["saved"], RECURSION_ROOM))
        _ROOM["users"] += 1
    try:
        yield
    finally:
        with _ROOM_LOCK:
            _ROOM["users"] -= 1
            if _ROOM["users"] == 0:
                sys.setrecursionlimit(_ROOM["saved"])


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

class loop_nest:
    """Nested for_range loops over a shape (batch dim = n), outermost first; yields the index.

    `ranges` maps an axis to a (start, stop) pair that replaces the full extent of that axis: how a
    chunk of a parallel region or a block of a GEMM epilogue loops over its part only.  A pair of an
    i64 value and a Python int is (offset, count): the indices offset, ..., offset + count - 1."""

    def __init__(self, builder, shape, n, ranges=None):
        self.builder, self.shape, self.n = builder, shape, n
        self.ranges = ranges or {}
        self._contexts = []

    def __enter__(self):
        index = []
        for axis, d in enumerate(self.shape):
            start, stop = self.ranges.get(axis, (0, self.n if d is None else d))
            if isinstance(start, ir.Value) and isinstance(stop, int):
                # (offset value, constant count): the loop counts from 0, so LLVM knows its trip
                # count (a GEMM block's epilogue needs no vector epilogue or remainder loop).
                ctx = for_range(self.builder, 0, stop, name=f"i{axis}")
                index.append(self.builder.add(start, ctx.__enter__(), flags=("nsw", "nuw")))
            else:
                ctx = for_range(self.builder, start, stop, name=f"i{axis}")
                index.append(ctx.__enter__())
            self._contexts.append(ctx)
        return tuple(index)

    def __exit__(self, *exc):
        for ctx in reversed(self._contexts):
            ctx.__exit__(None, None, None)
        return False


def emit_elementwise_outputs(emitter, group: Group, outputs: list, ranges=None) -> None:
    if not outputs:
        return
    b = emitter.builder
    members = set(group.members)
    if group.anchor is not None:
        members.discard(group.anchor)
    with loop_nest(b, group.shape, emitter.n, ranges) as index:
        ev = Evaluator(emitter, members)
        for node in outputs:
            ev.store(node, index, ev.value(node, index))


def _int_greater(b, dtype, x, y):
    """x > y for i32 (signed), u32 and bool (unsigned: true > false, as numpy orders them)."""
    return b.icmp_signed(">", x, y) if _signed(dtype) else b.icmp_unsigned(">", x, y)


def _reduce_identity(node):
    if node.op == "reduce_max":
        return -np.inf if _is_float(node.dtype) else np.iinfo(ops.np_dtype(node.dtype)).min
    return 0


@lowers("reduce_sum", Kernel)
@lowers("reduce_max", Kernel)
@lowers("reduce_mean", Kernel)
def _reduce_kernel(emitter, node, members):
    """Accumulate in the output buffer, iterating the input in row-major order so the inner loop
    is unit-stride; a reduction over the last axis becomes a register reduction LLVM vectorizes."""
    b = emitter.builder
    (x,) = node.operands
    axes = node.attr("axes")
    out_ev = Evaluator(emitter, set())
    with loop_nest(b, node.shape, emitter.n) as index:
        out_ev.store(node, index, constant(node.dtype, _reduce_identity(node)))
    ev = Evaluator(emitter, members)
    with loop_nest(b, x.shape, emitter.n) as index:
        value = ev.value(x, index)
        if node.attr("keepdims"):
            out_index = tuple(c64(0) if i in axes else index[i] for i in range(x.type.rank))
        else:
            out_index = tuple(index[i] for i in range(x.type.rank) if i not in axes)
        ptr = Evaluator(emitter, set()).pointer(node, out_index)
        acc = b.load(ptr, typ=STORAGE_TYPES[node.dtype], align=4)
        if node.op == "reduce_max":
            new = (_intrinsic(b, "llvm.maximum", [acc, value]) if _is_float(node.dtype)
                   else b.select(_int_greater(b, node.dtype, acc, value), acc, value))
        elif _is_float(node.dtype):
            new = b.fadd(acc, value, flags=REDUCE_FLAGS)
        else:
            new = b.add(acc, value)
        b.store(new, ptr, align=4)
    if node.op == "reduce_mean":
        count = 1
        dynamic = False
        for a in axes:
            if x.shape[a] is None:
                dynamic = True
            else:
                count *= x.shape[a]
        with loop_nest(b, node.shape, emitter.n) as index:
            ev2 = Evaluator(emitter, set())
            total = ev2.load(node, index)
            divisor = constant(node.dtype, count)
            if dynamic:
                nval = b.sitofp(emitter.n, VALUE_TYPES[node.dtype]) if _is_float(node.dtype) \
                    else b.trunc(emitter.n, I32)
                divisor = b.fmul(divisor, nval) if _is_float(node.dtype) else b.mul(divisor, nval)
            ev2.store(node, index, b.fdiv(total, divisor) if _is_float(node.dtype)
                      else int_div(b, total, divisor, node.dtype != "u32"))


@lowers("argmax", Kernel)
def _argmax_kernel(emitter, node, members):
    b = emitter.builder
    (x,) = node.operands
    axis = node.attr("axis")
    outer = tuple(d for i, d in enumerate(x.shape) if i != axis)
    ev = Evaluator(emitter, members)
    best_ptr = emitter.alloca(VALUE_TYPES[x.dtype])
    idx_ptr = emitter.alloca(I64)
    with loop_nest(b, outer, emitter.n) as oindex:
        b.store(ev.value(x, oindex[:axis] + (c64(0),) + oindex[axis:]), best_ptr)
        b.store(c64(0), idx_ptr)
        length = emitter.n if x.shape[axis] is None else x.shape[axis]
        with for_range(b, 1, length, name="am") as j:
            ev.memo.clear()
            v = ev.value(x, oindex[:axis] + (j,) + oindex[axis:])
            best = b.load(best_ptr, typ=VALUE_TYPES[x.dtype])
            # NOTE: numpy's argmax treats NaN as the maximum: the first NaN wins and stays.
            better = (b.and_(b.fcmp_unordered(">", v, best), b.fcmp_ordered("ord", best, best))
                      if _is_float(x.dtype) else _int_greater(b, x.dtype, v, best))
            b.store(b.select(better, v, best), best_ptr)
            b.store(b.select(better, j, b.load(idx_ptr, typ=I64)), idx_ptr)
        ev.memo.clear()
        Evaluator(emitter, set()).store(node, oindex, b.trunc(b.load(idx_ptr, typ=I64), I32))


def matmul_dims(builder, node, n):
    """(m, n, k) of a matmul node, each an int or an i64 value (the batch rows).  A product whose
    batch axis is contracted or becomes a column (a rank-1 batched operand: the interpreter runs
    those) is a NotImplementedError here, not a crash in the GEMM's size arithmetic."""
    a, bm = node.operands
    rows_a = _rows(builder, a, n, keep_last=1)
    if node.attr("transpose_a"):
        dims = a.shape[-1], bm.shape[-1], rows_a
    else:
        dims = rows_a, (bm.shape[0] if node.attr("transpose_b") else bm.shape[1]), a.shape[-1]
    if any(d is None for d in dims):
        raise NotImplementedError(f"{node}: a matmul over the batch axis of {a.type} and "
                                  f"{bm.type} (contracted, or made a column) is not compiled; "
                                  "keep the batch as the rows of the product (target='reference' "
                                  "runs it)")
    return dims


@lowers("matmul", Kernel)
def _matmul_kernel(emitter, node, members):
    """The whole product at once (groups that are not blocked: see `_emit_blocked_matmul`)."""
    a, bm = node.operands
    m, n, k = matmul_dims(emitter.builder, node, emitter.n)
    call_gemm(emitter.builder, node, emitter.pointer_of(a), emitter.pointer_of(bm),
              emitter.pointer_of(node), m, n, k)


def call_gemm(builder, node, a_ptr, b_ptr, c_ptr, m, n, k, lds=(None, None, None), then_read=(),
              skip_finite=False, skip=False, panel_vectors=None, c_in_cache=False,
              tile_lists=None):
    """C = op(A) @ op(B) for the matmul `node`; `then_read` as in codegen.gemm.emit_gemm, (pointer,
    i64 bytes) pairs; `skip_finite`, `skip`, `panel_vectors` and `c_in_cache` as in
    gemm_function; `tile_lists` = (steps, counts) pointers, as emit_gemm's."""
    scratch = _SCRATCH_ARGUMENT.get(builder.function)
    fn, runtime = gemm_function(builder.module, (m, n, k), node.attr("transpose_a"),
                                node.attr("transpose_b"), VALUE_TYPES[node.dtype], lds,
                                len(then_read), scratch=scratch is not None,
                                skip_finite=skip_finite, skip=skip,
                                panel_vectors=None if scratch is not None else panel_vectors,
                                c_in_cache=c_in_cache, tile_lists=tile_lists is not None)
    builder.call(fn, [a_ptr, b_ptr, c_ptr] + runtime + [x for pair in then_read for x in pair]
                 + ([scratch] if scratch is not None else []) + list(tile_lists or ()))


def call_gemv(builder, node, a_ptr, b_ptr, c_ptr, ncols, k: int, ldb):
    """C[0, :ncols] = A[0, :k] @ B[:k, :ncols] (B rows `ldb` apart) for a matmul with one row, summed
    as call_gemm would sum it (codegen.gemm.gemv_function), from the module's GEMM library when it
    has one.  Rows of B whose entry of A is zero are skipped when B is known finite
    (ir.known_finite: the same sums, without reading them)."""
    from .gemm import gemv_function, gemv_k_block
    dtype = VALUE_TYPES[node.dtype]
    module = builder.module
    library = GEMM_LIBRARY.get(module)
    skip = kir.known_finite(node.operands[1])
    fn = gemv_function(module, dtype, skip_zeros=skip) if library is None else \
        _declaration(module, gemv_function(library, dtype, skip_zeros=skip))
    builder.call(fn, [a_ptr, b_ptr, c_ptr, i64(ncols), i64(k), i64(ldb),
                      i64(gemv_k_block(k, dtype))])


# module -> the module that defines its GEMM functions (see codegen.compiler.compile_graphs); the
# GEMMs of a module without one are internal functions of that module.
GEMM_LIBRARY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# module -> a second module of kernels, compiled alongside it (see _Placement)
COMPANION: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _declaration(module, fn: ir.Function) -> ir.Function:
    """`fn`, defined in another module that is linked with `module` when loaded (its GEMM library,
    or the other way round), made external and declared in `module`."""
    fn.linkage = ""
    return module.globals.get(fn.name) or ir.Function(module, fn.function_type, fn.name)


class _Placement:
    """Where the next kernel goes: to the module, or to its companion, whichever process has less
    estimated compile work so far (instructions; the companion's process also compiles the GEMM
    library, whose instructions weigh LIBRARY_WEIGHT), so that the two processes, compiling side by
    side, take about the same time.  Kernels that read constants stay in the module that defines
    them."""

    # NOTE: the library gets no IR passes (only the code generator).  Tuned on W1's
    # train+evaluate+predict so that the two processes finish within ~20 ms of each other.
    LIBRARY_WEIGHT = 0.5

    def __init__(self, module, companion, library):
        self.modules = (module, companion)
        self.parts = {module: [(module, 1.0)], companion: [(companion, 1.0)]}
        if library is not None:
            self.parts[companion].append((library, self.LIBRARY_WEIGHT))
        self.seen: dict = {}
        self.cost = {m: 0.0 for m in self.modules}

    def choose(self):
        for m in self.modules:
            for part, weight in self.parts[m]:
                functions = part.functions
                for fn in functions[self.seen.get(part, 0):]:
                    self.cost[m] += weight * sum(len(block.instructions) for block in fn.blocks)
                self.seen[part] = len(functions)
        return min(self.modules, key=lambda m: self.cost[m])


PLACEMENT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# module -> {"bytes": int}: the GEMMs of such a module (an exported predictor's, see
# codegen.export) take their packing scratch from the caller instead of an `alloca` of up to
# 128 KiB, so that they run on small thread stacks.  Every kernel of the module takes one more
# parameter, the GEMM_SCRATCH buffer (the table entry after the arena), and passes it down to the
# GEMM functions, which record in "bytes" the most any of them uses.  The JIT's modules are not
# in here: their code is unchanged.
WORKSPACE_SCRATCH: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: Whether every GEMM of JIT code skips the k steps where a row tile of op(A) is all zero
#: (emit_gemm's skip_zeros; steps whose row of op(B) holds inf or NaN are kept, so the values are
#: the dense product's).  Off: the weight gradients do (SKIP_ZEROS_ROWS), and the other products of
#: W1's step do not pay: the compiler splits them into column blocks of 128 for the threads, and
#: each block lists its steps and scans its part of B again.  With it on top of SKIP_ZEROS_ROWS
#: the step ran at 0.952 (two threads) and 0.982 (one) of the default's speed (in-process A/B,
#: throwaway /tmp/kc5/ab1.py).  SPARSE_COLUMNS lists once for all the column blocks instead.
SKIP_ZEROS = False
#: Whether a tall product of batch rows (a large predict, _emit_batch_row_blocks) against a weight
#: known finite (ir.known_finite: a predict program's weights) skips the zero steps of its row
#: tiles: each block of rows computes every column, so one list serves all of C's column panels,
#: and op(B) needs no scan for inf or NaN (emit_gemm's b_finite).
SKIP_ZEROS_TALL = True
#: Whether products with static rows (a dW = X^T dY, computed in row blocks of the weight, each
#: fused with its optimizer update) skip the zero steps of their row tiles: the pixels a batch
#: leaves at zero, the units relu and Dropout zeroed; op(B) (dY, a batch's rows) is scanned for
#: inf and NaN per block, so the values are the dense product's (but for the sign of a zero sum).
#: W1's step without it took 1.004-1.034 times as long on one thread and 1.023-1.101 on two
#: (in-process A/B, five runs, throwaway /tmp/kc5/ab1.py); with the scan as a stack-slot loop
#: (the GEMM library is compiled without IR passes) it had been no faster.  A product whose A has
#: no zeros pays the listing and the scan of dY for nothing: W1's step scans 28 blocks of 32 x 512,
#: 0.2-1.2 us each (library-compiled, throwaway /tmp/kc7/scan_time2.py), 1-4% of its 0.76 ms.
SKIP_ZEROS_ROWS = True
#: Whether a tall skipping product whose input is a relu's output multiplies in the host's shorter
#: tiles (codegen.gemm.sparse_panel_vectors).
SPARSE_TILES = True


class _GemmScratch:
    """Stands for the GEMM scratch buffer of a kernel of a WORKSPACE_SCRATCH module."""


GEMM_SCRATCH = _GemmScratch()
# kernel or chunk function -> its GEMM scratch pointer (a parameter), for call_gemm
_SCRATCH_ARGUMENT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def gemm_function(module, dims, trans_a, trans_b, dtype, lds=(None, None, None), then_read=0,
                  scratch=False, skip_finite=False, skip=False, panel_vectors=None,
                  c_in_cache=False, tile_lists=False):
    """One function per GEMM signature in a module, shared by every kernel (and every graph of
    the module) that multiplies those shapes: `void gemm(ptr a, ptr b, ptr c, i64 <runtime dims>
    [, ptr, i64 bytes] * then_read)`.

    `dims` are (m, n, k), each an int (a constant of the code) or an i64 value (passed at run
    time); `lds` are static leading dimensions or None (dense); `then_read` counts the (pointer,
    bytes) pairs of memory to prefetch (codegen.gemm.emit_gemm).  With `scratch` the function
    takes a last parameter, its packing scratch (see WORKSPACE_SCRATCH); without, the product skips
    the k steps where a row tile of op(A) is zero (SKIP_ZEROS, or `skip` for this product), and
    with `skip_finite` (op(B) known to hold no inf or NaN) does so without scanning op(B).
    `panel_vectors` (not with `scratch`): emit_gemm's, panels of that many vectors.
    `c_in_cache`: C is a block its epilogue consumes while it is in cache (the training step's
    column and row blocks), so its tiles are not prefetched (emit_gemm's `prefetch_c`).
    `tile_lists` (not with `scratch` or skipping): the function takes two more pointers, the
    (steps, counts) of emit_gemm's `tile_lists`.  Returns (function, runtime args)."""
    from .gemm import caller_scratch_elements, emit_gemm, zero_skip_scratch_bytes
    static = tuple(None if isinstance(d, ir.Value) else int(d) for d in dims)
    runtime = [d for d in dims if isinstance(d, ir.Value)]
    desc = "x".join("r" if d is None else str(d) for d in static)
    if any(ld is not None for ld in lds):
        desc += ".ld" + "_".join("d" if ld is None else str(ld) for ld in lds)
    if then_read:
        desc += f".pf{then_read}"
    skip_zeros = ((SKIP_ZEROS or skip) and not scratch) or skip_finite
    if scratch:
        desc += ".ws"
    if skip_finite:
        desc += ".nzf"
    elif skip and not SKIP_ZEROS and not scratch:
        desc += ".nz"
    if panel_vectors is not None:
        desc += f".v{panel_vectors}"
    if c_in_cache:
        desc += ".cc"
    if tile_lists:
        if scratch or skip_zeros:
            raise ValueError("tile_lists: a product without scratch or zero skipping")
        desc += ".tl"
    name = f"kcompile.gemm.{'T' if trans_a else 'N'}{'T' if trans_b else 'N'}.{desc}.{dtype}"
    fn = module.globals.get(name)
    if fn is not None:
        return fn, runtime
    library = GEMM_LIBRARY.get(module)
    if library is not None:
        # defined in the module's GEMM library (compiled separately), declared here
        return _declaration(module, gemm_function(library, dims, trans_a, trans_b, dtype, lds,
                                                  then_read, scratch, skip_finite, skip,
                                                  panel_vectors, c_in_cache, tile_lists)[0]), runtime
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR] + [I64] * len(runtime)
                                             + [PTR, I64] * then_read + [PTR] * scratch
                                             + [PTR, PTR] * tile_lists), name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for arg in fn.args[:3]:
        arg.add_attribute("noalias")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    values = iter(fn.args[3:])
    m, n, k = (next(values) if d is None else d for d in static)
    pairs = list(fn.args[3 + len(runtime):3 + len(runtime) + 2 * then_read])
    lda, ldb, ldc = lds
    scratch_ptrs = {}
    if scratch:
        # the packing buffer first, then the narrow path's C^T blocks, each 64-byte aligned
        pack, narrow = caller_scratch_elements(m, n, k, trans_a=trans_a, trans_b=trans_b,
                                               dtype=dtype)
        itemsize = 8 if isinstance(dtype, ir.DoubleType) else 4
        pack_bytes = -(-pack * itemsize // 64) * 64
        narrow_bytes = -(-narrow * itemsize // 64) * 64
        scratch_ptrs = {"scratch_ptr": fn.args[-1],
                        "narrow_scratch_ptr": builder.gep(fn.args[-1], [c64(pack_bytes)],
                                                          source_etype=I8)}
        total = pack_bytes + narrow_bytes
        if skip_finite:
            # the step lists after both, so that the stack stays small (SKIP_ZEROS, whose lists
            # live on the stack, is JIT code's only)
            scratch_ptrs["list_scratch_ptr"] = builder.gep(fn.args[-1], [c64(total)],
                                                           source_etype=I8)
            total += zero_skip_scratch_bytes(dtype)
        record = WORKSPACE_SCRATCH.setdefault(module, {"bytes": 0})
        record["bytes"] = max(record["bytes"], total)
    emit_gemm(builder, fn.args[0], fn.args[1], fn.args[2], m, n, k, trans_a=trans_a,
              trans_b=trans_b, dtype=dtype, lda=lda, ldb=ldb, ldc=ldc,
              then_read=list(zip(pairs[::2], pairs[1::2])), skip_zeros=skip_zeros,
              b_finite=skip_finite, panel_vectors=panel_vectors,
              prefetch_c=False if c_in_cache else None,
              tile_lists=(fn.args[-2], fn.args[-1]) if tile_lists else None, **scratch_ptrs)
    builder.ret_void()
    return fn, runtime


def _rows(builder, node, n, keep_last=1):
    """Product of all but the last `keep_last` dims (an int, or an i64 value with the batch)."""
    dims = node.shape[:-keep_last] if keep_last else node.shape
    static = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
    if any(d is None for d in dims):
        return builder.mul(n, c64(static)) if static != 1 else n
    return static


# ----------------------------------------------------------------------------------------------
# The function
# ----------------------------------------------------------------------------------------------

class FunctionEmitter:
    """Emits one kernel function `void k(i64 n, ptr noalias b0, ptr noalias b1, ...)`.

    Every buffer the kernel touches is its own `noalias` parameter: the memory plan guarantees that
    buffers live in the same kernel never overlap (an in-place update reads and writes through one
    parameter), and telling LLVM so spares the vectorizer its runtime overlap checks.
    """

    def __init__(self, module, name, buffers: list, consts: dict, slots: dict | None = None):
        self.module = module
        self.consts = consts
        # NOTE: values that share a slot (an in-place update and the input it overwrites, a reshape
        # aliasing its operand) share one parameter: two noalias pointers to the same bytes would
        # be undefined behaviour.
        self.buffers = kernel_parameters(buffers, slots)
        same = {None if slots is None else slots.get(node): node for node in reversed(self.buffers)}
        fnty = ir.FunctionType(ir.VoidType(), [I64] + [PTR] * len(self.buffers))
        self.function = ir.Function(module, fnty, name)
        self.function.linkage = "internal"
        self.function.attributes.add("noinline")
        self.function.attributes.add("nounwind")
        self.n = self.function.args[0]
        self.n.name = "n"
        self._pointers = {}
        for node, arg in zip(self.buffers, self.function.args[1:]):
            arg.add_attribute("noalias")
            self._pointers[node] = arg
        for node in buffers:
            if node not in self._pointers:
                self._pointers[node] = self._pointers[same[slots[node]]]
        if GEMM_SCRATCH in self._pointers:
            _SCRATCH_ARGUMENT[self.function] = self._pointers[GEMM_SCRATCH]
        self.entry = self.function.append_basic_block("entry")
        self.builder = ir.IRBuilder(self.entry)

    def alloca(self, ty):
        with self.builder.goto_block(self.entry):
            self.builder.position_at_start(self.entry)
            return self.builder.alloca(ty)

    def captures(self) -> list:
        """What a parallel chunk of this kernel needs: n and every buffer parameter."""
        return list(self.function.args)

    def derive(self, builder, values) -> "FunctionEmitter":
        """The same kernel seen from inside a chunk function whose parameters are `values`
        (the chunk's copies of `captures()`)."""
        view = object.__new__(FunctionEmitter)
        view.module, view.consts, view.buffers = self.module, self.consts, self.buffers
        view.function = builder.function
        view.n = values[0]
        mapping = dict(zip(self.function.args[1:], values[1:]))
        view._pointers = {node: mapping[arg] for node, arg in self._pointers.items()}
        if GEMM_SCRATCH in view._pointers:
            _SCRATCH_ARGUMENT[view.function] = view._pointers[GEMM_SCRATCH]
        view.entry = builder.function.entry_basic_block
        view.builder = builder
        return view

    def has_buffer(self, node) -> bool:
        return node in self._pointers or node in self.consts

    def pointer_of(self, node) -> ir.Value:
        ptr = self._pointers.get(node)
        if ptr is None:
            ptr = self.consts.get(node)
        if ptr is None:
            raise AssertionError(f"{node} is not a buffer of kernel {self.function.name}")
        return ptr

    def finish(self):
        self.builder.ret_void()


def _global_constant(module, node, name):
    value = node.attr("value")
    if value.array is None:
        raise ValueError("a constant parsed from text without its data cannot be compiled; pass "
                         "constants= to ir.parse")
    flat = np.ascontiguousarray(value.array).reshape(-1)
    if node.dtype == "bool":
        flat = flat.astype(np.uint8)
    # NOTE: stored as raw bytes (llvmlite builds byte-array initializers directly); loads index it
    # with the element type, which opaque pointers allow.
    data = bytearray(flat.tobytes())
    arr_ty = ir.ArrayType(I8, len(data))
    gv = ir.GlobalVariable(module, arr_ty, name)
    gv.global_constant = True
    gv.linkage = "internal"
    gv.align = 64
    gv.initializer = ir.Constant(arr_ty, data)
    return gv


@dataclass
class Lowered:
    module: ir.Module
    name: str
    plan: MemoryPlan
    fused: FusedGraph
    table_size: int
    kernels: dict = field(default_factory=dict)   # group name -> name of the function it calls


class _Destination:
    """Stands for the destination buffer of a copy kernel."""


def kernel_parameters(buffers: list, slots: dict | None) -> list:
    """The buffers a kernel takes as parameters, in order: one per memory slot (values that share
    a slot, an in-place update and the input it overwrites, share one parameter)."""
    same: dict = {}
    params = []
    for node in buffers:
        slot = None if slots is None else slots.get(node)
        if slot is not None and slot.where != "const" and slot in same:
            continue
        same.setdefault(slot, node)
        params.append(node)
    return params


def kernel_structure(group: Group, buffers: list, params: list, slots: dict, consts: dict) -> tuple:
    """What the code of a group's kernel is a function of: its members' ops, attributes and types,
    how they connect, which parameter every value read from memory comes from (and whether it is
    known finite), and the constants it embeds -- not which buffers those parameters point to (the
    caller passes them).  Groups alike (the steps of an unrolled recurrent layer, forward and
    backward) share one kernel function, so LLVM optimizes each distinct kernel once."""
    param_of = {}
    for node in buffers:
        slot = slots.get(node)
        param_of[node] = next(i for i, p in enumerate(params)
                              if p is node or (slot is not None and slots.get(p) == slot))
    members = set(group.members)
    refs: dict = {}
    rows: list = []

    def ref(node):
        found = refs.get(node)
        if found is not None:
            return found
        # the order of Evaluator.value: free constants, values read from memory, computed values
        if is_free(node):
            found = ("free", node.dtype, repr(node.attr("value")))
        elif node not in members and node in param_of:
            # (known finite: a one-row product may skip the zero entries of A, see call_gemv)
            found = ("param", param_of[node], str(node.type), kir.known_finite(node))
        elif node not in members and node in consts:
            found = ("const", node.attr("value").digest, str(node.type))
        else:
            operands = tuple(ref(o) for o in node.operands)
            attrs = tuple((key, value.digest if isinstance(value, kir.ConstValue) else repr(value))
                          for key, value in node.attrs)
            rows.append((node.op, attrs, str(node.type), operands, node in members))
            found = ("value", len(rows) - 1)
        refs[node] = found
        return found

    for member in group.members:
        ref(member)
    return (group.kind, tuple(group.shape), ref(group.root),
            None if group.anchor is None else ref(group.anchor),
            tuple(ref(o) for o in group.outputs), tuple(rows),
            tuple((param_of[node], ref(node)) for node in buffers))


def _kernel_buffers(group: Group, plan: MemoryPlan, consts) -> list:
    from ir.fusion import group_inputs
    seen, out = set(), []
    for node in group_inputs(group) + list(group.outputs) + ([group.anchor] if group.anchor else []):
        if node not in seen and node in plan.slots and node not in consts:
            seen.add(node)
            out.append(node)
    return out


# NOTE: work sizes below which a kernel stays on one thread; a parallel region costs about a
# microsecond (codegen/parallel.py), so a chunk should hold ~10 us of work.
PARALLEL_MIN_ELEMENTS = 16384
PARALLEL_MIN_FLOPS = 2_000_000     # work of a blocked GEMM below which it stays serial
GEMM_READ_WORK = 8      # multiply-adds a float of B read from L3 is worth (1.6 MB of weight = 3.2M)
ROW_BLOCK = 48          # GEMM row block (TN, dW): 48 x 512 floats = 96 KiB, in L2 for its epilogue
COLUMN_BLOCK = 128      # GEMM column block (NN/NT with batch rows): whole panels of 64 (AVX-512);
#                         AVX2's panels of 24 leave a tail of 8 columns per block
# NOTE: GEMM blocks are handed to threads one at a time: 784 dW rows are 17 blocks of 48, which
# pieces of 3 blocks split 432:352 rows between two threads, single blocks 400:384.
ONE_BLOCK_PIECES = 1 << 20
MAX_PREFETCH_STREAMS = 3  # epilogue operands a dW block prefetches (the weight, Adam's m and v)
PREFETCH_L2_SHARE = 2   # ... when the block's scratch and prefetched rows fill 1/2 of L2 at most
BATCH_ROWS_MIN = 512    # from this many batch rows, blocks of whole rows instead (a large predict)
BATCH_ROW_BLOCK = 128   # rows per such block: 1024 rows are 8, a piece each of 2 threads' schedule
SCRATCH_MAX_BYTES = 256 << 10  # a dW row block kept on a chunk's stack (48 x 512 floats: 96 KiB)
SAMPLE_BLOCK_ROWS = 512  # GEMM rows per block of samples (a[?, ..., K] @ b: several rows per sample)


def _emit_group(fe: "FunctionEmitter", group: Group, threading: bool | None = None) -> None:
    members = set(group.members)
    # Kernel lowerings that split their work among threads must know whether they may
    fe.threading = threading
    if _blocked(group):
        _emit_blocked_matmul(fe, group, threading)
    elif group.kind == "matmul" and group.anchor is not None and group.shape == group.anchor.shape \
            and group.anchor.type.batched and not group.anchor.attr("transpose_a"):
        _emit_sample_blocked_matmul(fe, group, threading)
    elif group.anchor is not None:
        ops.get(group.anchor.op).lowering.fn(fe, group.anchor, members - {group.anchor})
        emit_elementwise_outputs(fe, group, [o for o in group.outputs if o is not group.anchor])
    elif group.shape and threading is not False:
        _emit_parallel_elementwise(fe, group, threading)
    else:
        emit_elementwise_outputs(fe, group, group.outputs)


def _emit_parallel_elementwise(fe, group: Group, threading) -> None:
    from .parallel import emit_parallel_for
    first = group.shape[0]
    row_elements = max(1, int(np.prod(group.shape[1:], dtype=np.int64)))
    min_rows = max(1, PARALLEL_MIN_ELEMENTS // row_elements)
    if first is not None and first < 2 * min_rows:
        emit_elementwise_outputs(fe, group, group.outputs)
        return

    def body(builder, lo, hi, values):
        chunk = fe.derive(builder, values)
        emit_elementwise_outputs(chunk, group, group.outputs, ranges={0: (lo, hi)})

    emit_parallel_for(fe.builder, 0, fe.n if first is None else first, fe.captures(), body,
                      min_chunk=min_rows, name="rows", threading=threading)


def _blocked(group: Group) -> bool:
    """Is `group` a 2-D product with its epilogue, multiplied block by block
    (`_emit_blocked_matmul`)?"""
    node = group.anchor
    return (group.kind == "matmul" and node is not None and group.shape == node.shape
            and node.type.rank == 2)


#: Whether a product of batch rows in column blocks (a training step's forward products, an
#: evaluate's or a predict's) whose A is mostly zero (`_mostly_zero`) lists the k steps where A's
#: row tiles are not zero once, before its column blocks, and multiplies only those steps in every
#: block (emit_gemm's `tile_lists`, tiles of codegen.gemm.sparse_tile_rows rows: 2 with 16
#: vector registers, 6 with 32, codegen.gemm._LISTED_PANEL_VECTORS).  After an epoch of W1, 10% of the second layer's inputs are not zero, 19% of
#: the steps of its 2-row tiles.  W1's epoch at batch 32 on two threads (throwaway
#: /tmp/kc15/ab_sparse.py, both builds in one process, alternating): paired medians 0.936 (14 of
#: 20 pairs faster), 0.948 (9 of 12) and 1.039 (6 of 16) of the time; the second layer's product
#: took 318k cycles per step instead of 432k (KCOMPILE_PROFILE).  Not for a transposed B (a dX
#: product): one thread, 32 x 512 @ (512 x 512)^T in four column blocks of 128, A of random
#: zeros (throwaway /tmp/kc15/gbench4.py), its listed product took 1.07, 1.08 and 1.18 times
#: the dense one's time at 19%, 43% and 63% of the steps listed.
SPARSE_COLUMNS = True
#: Listed share of the steps up to which a product uses its lists; above it every step is
#: multiplied.  NOTE: the same microbenchmark, untransposed B: 0.71, 0.78 and 0.99 of the dense
#: product's time at 19%, 43% and 63% of the steps listed.
SPARSE_COLUMNS_SHARE = 0.55


def _mostly_zero(a) -> bool:
    """Is `a` relu's output (max(z, 0)) or a select with a zero branch (Dropout's mask, relu's
    gradient)?  Those are mostly zero in a network that has trained a while."""
    if relu_operand(a) is not None:
        return True
    if a.op != "select":
        return False
    for branch in a.operands[1:]:
        while branch.op == "broadcast":
            branch = branch.operands[0]
        if branch.op == "const" and branch.type.shape == () and branch.attr("value") == 0:
            return True
    return False


def _sparse_columns(fe, node, a, by_rows: bool, ta: bool, tb: bool, n, k) -> bool:
    """Does this column-blocked product list A's zero steps once for all its blocks
    (SPARSE_COLUMNS)?  Only a product of a column block or more (narrower ones are a tail panel
    that multiplies every step), and not in a module whose GEMMs take the caller's scratch (an
    exported predictor's: the lists are a 140 KiB stack array)."""
    from .gemm import KC, sparse_tile_rows
    return (SPARSE_COLUMNS and not by_rows and not ta and not tb and isinstance(k, int)
            and 0 < k <= KC
            and isinstance(n, int) and n >= COLUMN_BLOCK and not fe.has_buffer(GEMM_SCRATCH)
            and sparse_tile_rows(VALUE_TYPES[node.dtype]) is not None and _mostly_zero(a))


def _row_block(node, m: int, n: int) -> tuple[bool, int]:
    """(narrow, rows per block) of a product with static rows (a dW).  NOTE: a narrow dW (Dense(10)'s
    512 x 10) is computed transposed (gemm.narrow_product), which wants long blocks; 256 x 10
    floats are 10 KiB."""
    narrow = narrow_product(m, n, node.attr("transpose_a"), node.attr("transpose_b"),
                            VALUE_TYPES[node.dtype])
    return narrow, (NARROW_BLOCK if narrow else ROW_BLOCK)


def _block_scratch_elements(group: Group) -> int:
    """Elements of one row block of a group's product (static rows), or 0 when they would make
    too large a stack frame."""
    node = group.anchor
    m, n = node.shape
    elements = _row_block(node, m, n)[1] * n
    return elements if elements * node.type.itemsize <= SCRATCH_MAX_BYTES else 0


def blocked_anchors(fused: FusedGraph) -> frozenset:
    """Products that need no buffer of their own (ir.memory.plan_memory's `blocked`): a row block
    of dW that nothing but its epilogue (the optimizer's update) reads goes to a block-sized
    scratch on the stack of the thread computing it, reused block after block, rather than to its
    rows of the whole dW.  W1 wrote 2.6 MB of gradients per step and evicted them dirty later, on
    top of the weights and Adam slots the update streams.  (Exported predictors, whose stack must
    stay small, plan without this.)"""
    return frozenset(g.anchor for g in fused.groups if _blocked(g) and g.anchor.shape[0] is not None
                     and g.anchor not in g.outputs and _block_scratch_elements(g))


def prefetch_fits(rows: int, n: int, itemsize: int, streams: int) -> bool:
    """Does a dW row block (`rows` x `n`) prefetch `streams` of its update's operands?  Only when
    the block's scratch and the prefetched rows fill at most 1/PREFETCH_L2_SHARE of this host's L2
    (codegen.target.l2_cache_bytes; unknown: no).  NOTE (W1, blocks of 48 x 512 floats and three
    streams: 384 KiB): with a 1 MiB L2 (Zen 4) the prefetch made one thread's step 0.84-0.95 of the
    time in its first pairs, and a later A/B found it neutral (without it: 0.999 on two threads,
    0.980 on one); with a 512 KiB L2 (Zen 3) it evicts what the block computes: without it W1's
    step on two threads took 0.877 of the time at batch 32 (16 alternating pairs, all faster),
    0.90 with the builds in the other order (14 of 16 faster) and 0.916 at batch 128 (10 of 10;
    throwaway /tmp/kc10/ab4.py, both builds in one process)."""
    from .target import l2_cache_bytes
    l2 = l2_cache_bytes()
    return l2 is not None and rows * n * itemsize * (1 + streams) * PREFETCH_L2_SHARE <= l2


def _emit_blocked_matmul(fe, group: Group, threading) -> None:
    """A matmul and its elementwise epilogue, block by block: each block of C is computed and
    immediately consumed by the epilogue while it is in cache (so dW feeds the optimizer's update
    straight from L2), and blocks are shared among threads.

    With a static number of rows (dW = X^T dY: rows are weight rows) the blocks are row blocks;
    with batch rows they are column blocks (each block reads all of A, which is small)."""
    from .parallel import emit_parallel_for
    node = group.anchor
    a, bm = node.operands
    ta, tb = node.attr("transpose_a"), node.attr("transpose_b")
    m, n, k = matmul_dims(fe.builder, node, fe.n)
    epilogue = [o for o in group.outputs if o is not node]
    T = VALUE_TYPES[node.dtype]
    by_rows = not isinstance(m, ir.Value)
    narrow = False
    if by_rows:
        narrow, block = _row_block(node, m, n)
        extent = m
        lds = (m if ta else k, None, n)
    else:
        block, extent = COLUMN_BLOCK, n
        lds = (None, k if tb else n, n)
    blocks = -(-extent // block)
    full, rest = extent // block, extent % block

    # NOTE: one batch row (a one-sample predict) is a memory-bound product: a GEMV streams long runs
    # of each row of B (the weight) where the GEMM's 1-row tiles read 256 bytes per row and panel.
    one_row_path = not by_rows and not ta and not tb and isinstance(k, int) and k > 0

    # a product the memory plan gave no buffer (blocked_anchors) lives a block at a time on the
    # chunk's stack
    scratch_floats = 0 if fe.has_buffer(node) else _block_scratch_elements(group)
    assert fe.has_buffer(node) or scratch_floats, f"{node} has no buffer"
    sparse = _sparse_columns(fe, node, a, by_rows, ta, tb, n, k)

    def body(builder, lo, hi, values):
        lists = values[-3:] if sparse else None    # (after the kernel's captures)
        chunk = fe.derive(builder, values)
        a_ptr, b_ptr = chunk.pointer_of(a), chunk.pointer_of(bm)
        if not scratch_floats:
            c_ptr = chunk.pointer_of(node)
        else:
            c_ptr = chunk.alloca(ir.ArrayType(T, scratch_floats))
            c_ptr.align = 64
        # sizes that involve the batch are values of the chunk function, recomputed here
        m_here = m if not isinstance(m, ir.Value) else _rows(builder, a, chunk.n, keep_last=1)
        k_here = k if not isinstance(k, ir.Value) else _rows(builder, a, chunk.n, keep_last=1)
        if not one_row_path:
            column_blocks(builder, chunk, lo, hi, a_ptr, b_ptr, c_ptr, m_here, k_here, lists)
            return
        with builder.if_else(builder.icmp_signed("==", m_here, c64(1))) as (one, many):
            with one:
                c0 = builder.mul(lo, c64(block))
                c1 = smin(builder, builder.mul(hi, c64(block)), c64(n))
                call_gemv(builder, node, a_ptr, builder.gep(b_ptr, [c0], source_etype=T),
                          builder.gep(c_ptr, [c0], source_etype=T), builder.sub(c1, c0), k, n)
                emit_elementwise_outputs(chunk, group, epilogue, {1: (c0, c1)})
            with many:
                column_blocks(builder, chunk, lo, hi, a_ptr, b_ptr, c_ptr, m_here, k_here, lists)

    # NOTE: the epilogue of a row block of dW (the optimizer's update) reads rows of the weight and
    # its slots, 8 MB for W1 at Adam, from L3: while a block's product computes, its row tiles
    # prefetch the block's rows of them (the product is bound by FMAs, the update by memory), where
    # L2 holds them beside the block (prefetch_fits).
    streamed = [] if not by_rows or narrow else [
        x for x in group.inputs if x is not a and x is not bm and x.shape == node.shape
        and fe.has_buffer(x)][:MAX_PREFETCH_STREAMS]
    if streamed and not prefetch_fits(block, n, node.type.itemsize, len(streamed)):
        streamed = []

    def block_rows(builder, chunk, start, size):
        pairs = []
        for x in streamed:
            width = n * np.dtype(ops.np_dtype(x.dtype)).itemsize
            pairs.append((builder.gep(chunk.pointer_of(x), [builder.mul(start, c64(width))],
                                      source_etype=I8), c64(size * width)))
        return pairs

    def column_blocks(builder, chunk, lo, hi, a_ptr, b_ptr, c_ptr, m_here, k_here, lists=None):
        with for_range(builder, lo, hi, name="blk") as blk:
            # NOTE: a block's epilogue loops count from 0 to `size` from this offset (the (offset,
            # count) ranges of loop_nest), so LLVM knows their trip counts.
            start = builder.mul(blk, c64(block), flags=("nsw", "nuw"))

            def one_block(size):
                if by_rows:
                    a_off = start if ta else builder.mul(start, c64(k))
                    a_blk = builder.gep(a_ptr, [a_off], source_etype=T)
                    c_off = builder.mul(start, c64(n))
                    c_blk = c_ptr if scratch_floats else builder.gep(c_ptr, [c_off], source_etype=T)
                    call_gemm(builder, node, a_blk, b_ptr, c_blk, size, n, k_here, lds,
                              block_rows(builder, chunk, start, size), skip=SKIP_ZEROS_ROWS,
                              c_in_cache=True)
                    ranges = {0: (start, size)}
                    if scratch_floats:
                        # the epilogue indexes dW by weight row: row `start` is the scratch's first
                        # (a pointer before the scratch, never dereferenced there: no inbounds)
                        view = copy.copy(chunk)
                        view._pointers = dict(chunk._pointers)
                        view._pointers[node] = builder.gep(c_ptr, [builder.neg(c_off)],
                                                           source_etype=T)
                        emit_elementwise_outputs(view, group, epilogue, ranges)
                        return
                else:
                    b_off = builder.mul(start, c64(k)) if tb else start
                    b_blk = builder.gep(b_ptr, [b_off], source_etype=T)
                    c_blk = builder.gep(c_ptr, [start], source_etype=T)
                    def product(**listed):
                        call_gemm(builder, node, a_ptr, b_blk, c_blk, m_here, size, k_here, lds,
                                  c_in_cache=True, **listed)

                    if lists is None:
                        product()
                    else:
                        steps, counts, use = lists
                        with builder.if_else(builder.icmp_signed("!=", use, c64(0))) as (listed,
                                                                                         every):
                            with listed:
                                product(panel_vectors=listed_panel_vectors(T),
                                        tile_lists=(steps, counts))
                            with every:
                                product()
                    ranges = {1: (start, size)}
                emit_elementwise_outputs(chunk, group, epilogue, ranges)

            if rest == 0:
                one_block(block)
            elif full == 0:
                one_block(rest)
            else:
                is_full = builder.icmp_signed("<", blk, c64(full))
                with builder.if_else(is_full) as (then, otherwise):
                    with then:
                        one_block(block)
                    with otherwise:
                        one_block(rest)

    def list_steps():
        """The lists of A's row tiles, once for every block: [steps, counts, use] (an i64, not
        zero when the blocks use them: A fits one m block and few enough steps are listed)."""
        from .gemm import MC, TILE_LIST_STRIDE, sparse_tile_rows, tile_zero_lists
        b = fe.builder
        rows = sparse_tile_rows(T)
        steps = fe.alloca(ir.ArrayType(ir.IntType(16), MC // rows * TILE_LIST_STRIDE))
        steps.align = 64
        counts = fe.alloca(ir.ArrayType(I64, MC // rows))
        use = fe.alloca(I64)
        b.store(c64(0), use)
        tiles = b.udiv(m, c64(rows))
        fits = b.and_(b.icmp_signed("<=", m, c64(MC)), b.icmp_signed(">", tiles, c64(0)))
        with b.if_then(fits):
            listed = b.call(tile_zero_lists(b.module, T, rows),
                            [fe.pointer_of(a), c64(k), tiles, c64(k), steps, counts])
            share = int(SPARSE_COLUMNS_SHARE * 1000)
            few = b.icmp_signed("<=", b.mul(listed, c64(1000)), b.mul(tiles, c64(share * k)))
            b.store(b.zext(few, I64), use)
        return [steps, counts, b.load(use, typ=I64)]

    def columns():
        captures = fe.captures() + (list_steps() if sparse else [])
        if threading is False or blocks < 2:
            emit_parallel_for(fe.builder, 0, blocks, captures, body, min_chunk=1,
                              name="blocks", threading=False)
        else:
            _emit_column_region(fe, m, n, k, blocks, body, threading, captures)

    # NOTE: from BATCH_ROWS_MIN batch rows (a large predict), column blocks each stream all of A
    # (1024 x 784 floats: 3.2 MB, past L2) once per block; blocks of whole rows keep their part of A
    # in L2 across every panel of B instead (one thread, W1's first layer at 1024 rows: 25.5M ->
    # 22.6M cycles, KCOMPILE_PROFILE).  Not for B^T, which each row block would pack again.
    if by_rows or ta or tb:
        columns()
        return
    b = fe.builder
    with b.if_else(b.icmp_signed(">=", m, c64(BATCH_ROWS_MIN))) as (tall, short):
        with tall:
            _emit_batch_row_blocks(fe, group, threading, m, n, k, lds)
        with short:
            columns()


def _emit_column_region(fe, m, n, k, blocks, body, threading, captures):
    from .parallel import emit_parallel_for
    # NOTE: a small product (a tiny batch times a small weight) is not worth a parallel region: it
    # costs ~1 us when the other core is idle and milliseconds when another process holds it.  The
    # work counts the multiply-adds and the reads of B (a weight): with a few rows (one-sample
    # predict) the product is memory-bound, and two cores read a 1.6 MB weight in half the time.
    b = fe.builder
    work = b.add(b.mul(b.mul(i64(m), i64(n)), i64(k)), c64(GEMM_READ_WORK * n * k) if not
                 isinstance(n, ir.Value) and not isinstance(k, ir.Value) else c64(0))
    small = b.icmp_signed("<", work, c64(PARALLEL_MIN_FLOPS))
    with b.if_else(small) as (serial, parallel):
        with parallel:
            chunk = emit_parallel_for(b, 0, blocks, captures, body, min_chunk=1,
                                      name="blocks", threading=threading,
                                      pieces_per_thread=ONE_BLOCK_PIECES)
        with serial:
            b.call(chunk, [c64(0), c64(blocks)] + captures)


def _emit_batch_row_blocks(fe, group: Group, threading, m, n, k, lds) -> None:
    """A tall product of batch rows (a large predict): blocks of BATCH_ROW_BLOCK whole rows of C,
    each computed with every column (its block of A stays in L2 across the panels of B) and
    consumed by the epilogue while in cache; blocks are shared among threads."""
    from .parallel import emit_parallel_for
    node = group.anchor
    a, bm = node.operands
    epilogue = [o for o in group.outputs if o is not node]
    T = VALUE_TYPES[node.dtype]
    b = fe.builder
    blocks = b.udiv(b.add(m, c64(BATCH_ROW_BLOCK - 1)), c64(BATCH_ROW_BLOCK))
    skip = SKIP_ZEROS_TALL and kir.known_finite(bm)
    # a relu's outputs are mostly zero (86% of W1's first layer's, trained): shorter tiles skip more
    panel_vectors = (sparse_panel_vectors(T) if skip and SPARSE_TILES
                     and relu_operand(a) is not None else None)

    def body(builder, lo, hi, values):
        chunk = fe.derive(builder, values)
        a_ptr, b_ptr, c_ptr = (chunk.pointer_of(x) for x in (a, bm, node))
        m_here = _rows(builder, a, chunk.n, keep_last=1)   # (k is static: A is not transposed)
        with for_range(builder, lo, hi, name="rblk") as blk:
            start = builder.mul(blk, c64(BATCH_ROW_BLOCK), flags=("nsw", "nuw"))
            stop = smin(builder, builder.add(start, c64(BATCH_ROW_BLOCK)), m_here)
            rows = builder.sub(stop, start)
            a_blk = builder.gep(a_ptr, [builder.mul(start, c64(k))], source_etype=T)
            c_blk = builder.gep(c_ptr, [builder.mul(start, c64(n))], source_etype=T)
            call_gemm(builder, node, a_blk, b_ptr, c_blk, rows, n, k, lds, skip_finite=skip,
                      panel_vectors=panel_vectors)
            emit_elementwise_outputs(chunk, group, epilogue, {0: (start, stop)})

    emit_parallel_for(b, 0, blocks, fe.captures(), body, min_chunk=1, name="rowblocks",
                      threading=threading, pieces_per_thread=ONE_BLOCK_PIECES)


def _emit_sample_blocked_matmul(fe, group: Group, threading) -> None:
    """A matmul `a[?, R..., K] @ b` (R... static rows per sample: the pixels of a convolution's
    im2col patches) and its epilogue, by blocks of whole samples: each block's rows of C are
    computed and consumed by the epilogue while in cache, and blocks are shared among threads
    (column blocks would leave a thread idle: a convolution has few output channels)."""
    from .parallel import emit_parallel_for
    node = group.anchor
    a, bm = node.operands
    _, n, k = matmul_dims(fe.builder, node, fe.n)
    per_sample = int(np.prod(a.shape[1:-1], dtype=np.int64))
    samples = max(1, SAMPLE_BLOCK_ROWS // per_sample)
    epilogue = [o for o in group.outputs if o is not node]
    T = VALUE_TYPES[node.dtype]
    b = fe.builder
    blocks = b.udiv(b.add(fe.n, c64(samples - 1)), c64(samples))
    # a parallel chunk should hold ~10 us of work: a few MFLOP
    min_blocks = max(1, -(-2_000_000 // (2 * samples * per_sample * n * k)))

    def body(builder, lo, hi, values):
        chunk = fe.derive(builder, values)
        a_ptr, b_ptr, c_ptr = (chunk.pointer_of(x) for x in (a, bm, node))
        with for_range(builder, lo, hi, name="blk") as blk:
            first = builder.mul(blk, c64(samples))
            last = smin(builder, builder.add(first, c64(samples)), chunk.n)
            rows = builder.mul(builder.sub(last, first), c64(per_sample))
            start = builder.mul(first, c64(per_sample))
            a_blk = builder.gep(a_ptr, [builder.mul(start, c64(k))], source_etype=T)
            c_blk = builder.gep(c_ptr, [builder.mul(start, c64(n))], source_etype=T)
            call_gemm(builder, node, a_blk, b_ptr, c_blk, rows, n, k)
            emit_elementwise_outputs(chunk, group, epilogue, {0: (first, last)})

    emit_parallel_for(b, 0, blocks, fe.captures(), body, min_chunk=min_blocks, name="samples",
                      threading=threading)


def _order_copies(fused: FusedGraph, plan: MemoryPlan) -> tuple[list, list]:
    """Split `plan.copies` into those that run before the kernels and those that run after.

    A copy normally runs last, when every value is final.  But a copy of an input whose buffer an
    in-place update overwrites (`prev = w` beside `w = w - lr * g`) must read the old value, so it
    runs first; that is only correct when nothing reads its destination, else this raises.  A copy
    of an input onto itself (`w = w`) is nothing to do.
    """
    from ir.fusion import group_inputs
    graph = fused.graph
    names = graph.input_names
    position = {node: i for i, node in enumerate(graph.inputs)}
    copies = []
    for i, (out_name, node) in enumerate(plan.copies):
        dest = names.index(out_name) if out_name in names else None
        if dest is not None and position.get(node) == dest:
            continue
        copies.append((i, out_name, node, dest, position.get(node)))
    overwritten = {slot.index for node, slot in plan.slots.items()
                   if slot.where == "input" and node.op != "arg"}
    overwritten |= {dest for *_, dest, _ in copies if dest is not None}
    read = {position[x] for g in fused.groups for x in group_inputs(g) if x in position}
    read |= {source for *_, source in copies if source is not None}
    early, late = [], []
    for i, out_name, node, dest, source in copies:
        if source is None or source not in overwritten:
            late.append((i, out_name, node))
        elif dest is None or dest not in read:
            early.append((i, out_name, node))
        else:
            raise ValueError(f"output {out_name!r} must receive the value input "
                             f"{names[source]!r} had before this step overwrites it in place, but "
                             f"{out_name!r} is itself still read in this step; return the old "
                             "value under another name")
    return early, late


def lower(fused: FusedGraph, plan: MemoryPlan, name: str = "main", module: ir.Module | None = None,
          profile: bool = False, threading: bool | None = None,
          shared_kernels: dict | None = None) -> Lowered:
    """Add the graph's entry function `name` (and its kernels) to `module`.

    `shared_kernels` (kernel structure -> function) lets several graphs lowered into one module share
    the kernels they have alike, as the groups of one graph do (see kernel_structure); GEMM functions
    are shared by name anyway.

    With `profile`, the entry function adds each kernel's cycle count (llvm.readcyclecounter) to
    the global array `{name}.profile`, one i64 per kernel in schedule order.
    """
    graph = fused.graph
    module = module or ir.Module(name=f"kcompile.{name}")
    consts = {}
    for node in graph.nodes():
        slot = plan.slots.get(node)
        if slot is not None and slot.where == "const":
            consts[node] = _global_constant(module, node, f"{name}.const{len(consts)}")

    entry = ir.Function(module, ir.FunctionType(ir.VoidType(), [I64, PTR]), name)
    entry.attributes.add("nounwind")
    n, table = entry.args
    n.name, table.name = "n", "table"
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    n_inputs = len(graph.inputs)

    def table_entry(i):
        return b.load(b.gep(table, [c64(i)], source_etype=PTR), typ=PTR)

    arena = table_entry(n_inputs + len(plan.outputs))
    pointers: dict = {}
    gemm_scratch = module in WORKSPACE_SCRATCH
    if gemm_scratch:
        pointers[GEMM_SCRATCH] = table_entry(n_inputs + len(plan.outputs) + 1)

    def pointer(node):
        if node not in pointers:
            slot = plan.slots[node]
            if slot.where == "input":
                pointers[node] = table_entry(slot.index)
            elif slot.where == "output":
                pointers[node] = table_entry(n_inputs + slot.index)
            else:
                offset = (c64(slot.offset) if slot.region == "static" else
                          b.add(c64(plan.static_bytes), b.mul(n, c64(slot.offset))))
                pointers[node] = b.gep(arena, [offset], source_etype=I8)
        return pointers[node]

    counters = None
    if profile:
        counters = ir.GlobalVariable(module, ir.ArrayType(I64, len(fused.groups) + 1),
                                     f"{name}.profile")
        counters.initializer = ir.Constant(counters.value_type, None)
        clock = module.globals.get("llvm.readcyclecounter") or ir.Function(
            module, ir.FunctionType(I64, []), "llvm.readcyclecounter")

    input_names = graph.input_names
    early, late = _order_copies(fused, plan)

    def emit_copy(i, out_name, node):
        dest = (table_entry(input_names.index(out_name)) if out_name in input_names
                else table_entry(n_inputs + plan.outputs.index(out_name)))
        source = [] if (node not in plan.slots or node in consts) else [node]
        destination = _Destination()
        fe = FunctionEmitter(module, f"{name}.copy{i}", source + [destination], consts)
        ev = Evaluator(fe, set())
        with loop_nest(fe.builder, node.shape, fe.n) as index:
            value = ev.value(node, index)
            if node.dtype == "bool":
                value = fe.builder.zext(value, I8)
            ptr = fe.builder.gep(fe.pointer_of(destination), [ev.linear(index, node.type)],
                                 source_etype=STORAGE_TYPES[node.dtype])
            fe.builder.store(value, ptr, align=1)
        fe.finish()
        b.call(fe.function, [n] + [pointer(x) for x in source] + [dest])

    for i, out_name, node in early:
        emit_copy(i, out_name, node)
    # kernel structure -> its function, shared by groups alike
    emitted: dict = {} if shared_kernels is None else shared_kernels
    companion = COMPANION.get(module)
    placement = None if companion is None else PLACEMENT.setdefault(
        module, _Placement(module, companion, GEMM_LIBRARY.get(module)))
    kernels: dict = {}
    for k, group in enumerate(fused.groups):
        buffers = _kernel_buffers(group, plan, consts)
        params = kernel_parameters(buffers, plan.slots)
        key = kernel_structure(group, buffers, params, plan.slots, consts)
        if gemm_scratch:    # (every kernel of the module takes it last: not part of the key)
            buffers, params = buffers + [GEMM_SCRATCH], params + [GEMM_SCRATCH]
        function = emitted.get(key)
        if function is None:
            home = module
            if placement is not None and not any(node in consts for node in group.inputs):
                home = placement.choose()
            fe = FunctionEmitter(home, f"{name}.{group.name}", buffers, consts, plan.slots)
            _emit_group(fe, group, threading)
            fe.finish()
            function = emitted[key] = fe.function
        if function.module is not module:
            function = _declaration(module, function)   # called from the entry, in the other module
        kernels[group.name] = function.name
        args = [n] + [pointer(x) for x in params]
        if counters is None:
            b.call(function, args)
            continue
        start = b.call(clock, [])
        b.call(function, args)
        # NOTE: llvmlite types a global's address as a typed pointer; go through an opaque one
        slot = b.inttoptr(b.add(b.ptrtoint(counters, I64), c64(8 * k)), PTR)
        b.store(b.add(b.load(slot, typ=I64), b.sub(b.call(clock, []), start)), slot)

    for i, out_name, node in late:
        emit_copy(i, out_name, node)
    b.ret_void()
    return Lowered(module, name, plan, fused, n_inputs + len(plan.outputs) + 1 + gemm_scratch,
                   kernels)

from . import lower_nn  # noqa: E402,F401  (the lowerings of ir.ops_nn)
from . import lower_seq  # noqa: E402,F401  (the lowerings of ir.ops_seq)
