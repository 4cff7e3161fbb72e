"""Lowerings of the ops of `ir.ops_nn`.

`patches`, `max_pool`, `max_pool_grad` and `gather` are `Index` lowerings: a value at an index is a
load (or a static, unrolled max or sum of loads) at other indices of the operands; `patches_grad`
computes the same kind of sum per pixel in a kernel of its own (see `ir.ops_nn` for why it is a
reduction).  Every index the window ops compute depends on the outer loop variables only, never on
the innermost channel axis `c`, so the addresses are affine in `c` with unit stride and the bounds
checks are uniform along it: the channel loop vectorizes.  Out of range positions load from a
clamped (valid) index and are replaced by a `select`, so no load is ever conditional.

`scatter_add` is a `Kernel`: the output is zeroed, then every update row is added to the row its
id picks (in order, so the compiled sum rounds as the reference's `np.add.at`).
"""
from __future__ import annotations

import math

from .lower import (I64, STORAGE_TYPES, Evaluator, Index, Kernel, _intrinsic, c64, constant, loop_nest,
                    lowers)


def _in_range(b, value, size: int):
    """0 <= value < size for an i64 (one unsigned compare: negatives wrap to huge values)."""
    return b.icmp_unsigned("<", value, c64(size))


def _and(b, a, c):
    if a is None:
        return c
    if c is None:
        return a
    return b.and_(a, c)


def _tap_position(b, out, tap, stride: int, low: int):
    """Input position out * stride + tap - low of a window tap (`tap` an int or an i64 value)."""
    p = b.mul(out, c64(stride)) if stride != 1 else out
    if isinstance(tap, int):
        return b.add(p, c64(tap - low)) if tap != low else p
    p = b.add(p, tap)
    return b.sub(p, c64(low)) if low else p


@lowers("patches", Index)
def _patches(ev, node, index):
    (x,) = node.operands
    b = ev.builder
    n, oh, ow, i, j, c = index
    (sh, sw), (pt, pb, pl, pr) = node.attr("strides"), node.attr("pads")
    height, width = x.shape[1], x.shape[2]

    ih, iw = _tap_position(b, oh, i, sh, pt), _tap_position(b, ow, j, sw, pl)
    inside = None
    # NOTE: without padding on an axis every window lies inside the image (the output size is
    # computed so), so that axis needs no check.
    if pt or pb:
        inside = _in_range(b, ih, height)
    if pl or pr:
        inside = _and(b, inside, _in_range(b, iw, width))
    if inside is None:
        return ev.value(x, (n, ih, iw, c))
    zero = c64(0)
    value = ev.value(x, (n, b.select(inside, ih, zero), b.select(inside, iw, zero), c))
    return b.select(inside, value, constant(node.dtype, node.attr("pad_value")))


def _window_taps(b, pixel, tap: int, stride: int, low: int, outputs: int, size: int):
    """(window index, validity or None when always valid, or None if never valid) of the window
    whose `tap` covers `pixel` along one axis: window = (pixel + low - tap) / stride."""
    # static range of t = pixel + low - tap over pixel in [0, size)
    lo, hi = low - tap, size - 1 + low - tap
    if hi < 0 or lo > stride * (outputs - 1):
        return None
    t = b.add(pixel, c64(low - tap)) if low != tap else pixel
    valid = None
    if lo < 0 or hi > stride * (outputs - 1):
        valid = _in_range(b, t, stride * (outputs - 1) + 1)
    if stride == 1:
        return t, valid
    divisible = b.icmp_unsigned("==", b.urem(t, c64(stride)), c64(0))
    return b.udiv(t, c64(stride)), _and(b, valid, divisible)


def _col2im_at(ev, node, index):
    """patches_grad at one pixel: the sum over the (statically unrolled) taps whose window covers it."""
    (g,) = node.operands
    b = ev.builder
    n, h, w, c = index
    (kh, kw), (sh, sw) = node.attr("size"), node.attr("strides")
    pt, pl = node.attr("pads")[0], node.attr("pads")[2]
    oh, ow = g.shape[1], g.shape[2]
    height, width = node.shape[1], node.shape[2]
    zero_index = c64(0)
    zero = constant(node.dtype, 0.0)
    total = None
    for i in range(kh):
        rows = _window_taps(b, h, i, sh, pt, oh, height)
        if rows is None:
            continue
        for j in range(kw):
            cols = _window_taps(b, w, j, sw, pl, ow, width)
            if cols is None:
                continue
            (r, row_ok), (q, col_ok) = rows, cols
            valid = _and(b, row_ok, col_ok)
            if valid is None:
                term = ev.value(g, (n, r, q, c64(i), c64(j), c))
            else:
                term = ev.value(g, (n, b.select(valid, r, zero_index), b.select(valid, q, zero_index),
                                    c64(i), c64(j), c))
                term = b.select(valid, term, zero)
            total = term if total is None else b.fadd(total, term)
    return zero if total is None else total


@lowers("patches_grad", Kernel)
def _patches_grad_kernel(emitter, node, members):
    """Each pixel computed once, rows of the batch shared among threads (when the kernel may open
    parallel regions: never in exported code)."""
    def pixels(fe, ranges=None):
        ev = Evaluator(fe, members)
        with loop_nest(fe.builder, node.shape, fe.n, ranges) as index:
            ev.store(node, index, _col2im_at(ev, node, index))
            ev.memo.clear()
    emit_rows_in_parallel(emitter, node.shape, pixels)


def emit_rows_in_parallel(emitter, shape, body) -> None:
    """body(emitter, ranges) over all of `shape`, split by rows of axis 0 among threads when there
    is enough work (as `lower._emit_parallel_elementwise` splits elementwise kernels)."""
    from .lower import PARALLEL_MIN_ELEMENTS
    from .parallel import emit_parallel_for
    threading = getattr(emitter, "threading", False)
    row_elements = max(1, math.prod(shape[1:]))
    min_rows = max(1, PARALLEL_MIN_ELEMENTS // row_elements)
    if threading is False or not shape or (shape[0] is not None and shape[0] < 2 * min_rows):
        body(emitter, None)
        return

    def chunk(builder, lo, hi, values):
        body(emitter.derive(builder, values), {0: (lo, hi)})

    emit_parallel_for(emitter.builder, 0, emitter.n if shape[0] is None else shape[0],
                      emitter.captures(), chunk, min_chunk=min_rows, name="rows", threading=threading)


@lowers("max_pool", Index)
def _max_pool(ev, node, index):
    (x,) = node.operands
    b = ev.builder
    n, oh, ow, c = index
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = node.attr("size"), node.attr("strides"), node.attr("pads")
    height, width = x.shape[1], x.shape[2]
    best = None
    zero = c64(0)
    for i in range(kh):
        ih = _tap_position(b, oh, i, sh, pt)
        row_ok = _in_range(b, ih, height) if (pt or pb) else None
        for j in range(kw):
            iw = _tap_position(b, ow, j, sw, pl)
            ok = _and(b, row_ok, _in_range(b, iw, width) if (pl or pr) else None)
            if ok is None:
                value = ev.value(x, (n, ih, iw, c))
            else:
                value = ev.value(x, (n, b.select(ok, ih, zero), b.select(ok, iw, zero), c))
                # padding never wins: it reads as -inf
                value = b.select(ok, value, constant(node.dtype, float("-inf")))
            # NOTE: llvm.maximum propagates NaN, as numpy's max does
            best = value if best is None else _intrinsic(b, "llvm.maximum", [best, value])
    return best


@lowers("max_pool_grad", Index)
def _max_pool_grad(ev, node, index):
    x, y, g = node.operands
    b = ev.builder
    n, h, w, c = index
    (kh, kw), (sh, sw) = node.attr("size"), node.attr("strides")
    pt, pl = node.attr("pads")[0], node.attr("pads")[2]
    oh, ow = y.shape[1], y.shape[2]
    height, width = x.shape[1], x.shape[2]
    pixel = ev.value(x, index)
    zero_index = c64(0)
    zero = constant(node.dtype, 0.0)
    total = None
    for i in range(kh):
        rows = _window_taps(b, h, i, sh, pt, oh, height)
        if rows is None:
            continue
        for j in range(kw):
            cols = _window_taps(b, w, j, sw, pl, ow, width)
            if cols is None:
                continue
            (r, row_ok), (q, col_ok) = rows, cols
            valid = _and(b, row_ok, col_ok)
            if valid is not None:
                r, q = b.select(valid, r, zero_index), b.select(valid, q, zero_index)
            window = (n, r, q, c)
            hit = b.fcmp_ordered("==", pixel, ev.value(y, window))
            hit = hit if valid is None else b.and_(valid, hit)
            term = b.select(hit, ev.value(g, window), zero)
            total = term if total is None else b.fadd(total, term)
    return zero if total is None else total


def _clamp_id(b, value, rows: int):
    """An i32 id as an i64 row index in [0, rows - 1]."""
    wide = b.sext(value, I64)
    wide = b.select(b.icmp_signed("<", wide, c64(0)), c64(0), wide)
    return b.select(b.icmp_signed(">", wide, c64(rows - 1)), c64(rows - 1), wide)


@lowers("gather", Index)
def _gather(ev, node, index):
    table, ids = node.operands
    b = ev.builder
    row = _clamp_id(b, ev.value(ids, index[:ids.type.rank]), table.shape[0])
    return ev.value(table, (row,) + tuple(index[ids.type.rank:]))


@lowers("scatter_add", Kernel)
def _scatter_add_kernel(emitter, node, members):
    ids, updates = node.operands
    b = emitter.builder
    out = Evaluator(emitter, set())
    with loop_nest(b, node.shape, emitter.n) as index:
        out.store(node, index, constant(node.dtype, 0))
    ev = Evaluator(emitter, members)
    with loop_nest(b, ids.shape, emitter.n) as where:
        row = _clamp_id(b, ev.value(ids, where), node.shape[0])
        with loop_nest(b, node.shape[1:], emitter.n) as rest:
            value = ev.value(updates, tuple(where) + tuple(rest))
            ptr = out.pointer(node, (row,) + tuple(rest))
            acc = b.load(ptr, typ=STORAGE_TYPES[node.dtype], align=4)
            total = b.fadd(acc, value) if node.dtype in ("f32", "f64") else b.add(acc, value)
            b.store(total, ptr, align=4)

