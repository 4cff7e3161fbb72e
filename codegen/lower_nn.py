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
from .loops import for_range


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


@lowers("patches_grad", Kernel)
def _patches_grad_kernel(emitter, node, members):
    """Sample by sample: the sample's pixels are zeroed, then every patch entry is added to the pixel
    it was copied from.  The patches are read once, in order (a stream from memory), while the
    sample's pixels stay in L1; samples are shared among threads (when the kernel may open parallel
    regions: never in exported code)."""
    (g,) = node.operands
    (kh, kw), (sh, sw) = node.attr("size"), node.attr("strides")
    pt, pb, pl, pr = node.attr("pads")
    height, width, channels = node.shape[1:]
    windows = g.shape[1:3]
    zero = constant(node.dtype, 0.0)
    storage = STORAGE_TYPES[node.dtype]

    def samples(fe, ranges=None):
        b = fe.builder
        out = Evaluator(fe, set())
        lo, hi = ranges[0] if ranges else (0, fe.n if node.shape[0] is None else node.shape[0])
        with for_range(b, lo, hi, name="n") as n:
            with loop_nest(b, node.shape[1:], fe.n) as pixel:
                out.store(node, (n,) + tuple(pixel), zero)
            with loop_nest(b, windows, fe.n) as (r, q):
                for i in range(kh):
                    ih = _tap_position(b, r, i, sh, pt)
                    row_ok = _in_range(b, ih, height) if (pt or pb) else None
                    for j in range(kw):
                        iw = _tap_position(b, q, j, sw, pl)
                        inside = _and(b, row_ok, _in_range(b, iw, width) if (pl or pr) else None)

                        def add_tap(i=i, j=j, ih=ih, iw=iw):
                            # a fresh evaluator: nothing it computes here is reused outside
                            ev = Evaluator(fe, members)
                            with for_range(b, 0, channels, name="c") as c:
                                value = ev.value(g, (n, r, q, c64(i), c64(j), c))
                                ptr = out.pointer(node, (n, ih, iw, c))
                                b.store(b.fadd(b.load(ptr, typ=storage, align=4), value), ptr,
                                        align=4)
                        if inside is None:
                            add_tap()
                        else:
                            with b.if_then(inside):
                                add_tap()
    emit_rows_in_parallel(emitter, node.shape, samples)


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
    pt, pb, pl, pr = node.attr("pads")
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
            maximum = ev.value(y, window)
            hit = b.fcmp_ordered("==", pixel, maximum)
            hit = hit if valid is None else b.and_(valid, hit)
            # the window's gradient goes to its first tap equal to the maximum: no earlier one may
            for i2 in range(kh):
                for j2 in range(kw):
                    if (i2, j2) >= (i, j):
                        break
                    row = _tap_position(b, r, i2, sh, pt)
                    col = _tap_position(b, q, j2, sw, pl)
                    inside = _and(b, _in_range(b, row, height) if (pt or pb) else None,
                                  _in_range(b, col, width) if (pl or pr) else None)
                    if inside is not None:
                        row, col = b.select(inside, row, zero_index), b.select(inside, col, zero_index)
                    earlier = b.fcmp_ordered("==", ev.value(x, (n, row, col, c)), maximum)
                    earlier = earlier if inside is None else b.and_(inside, earlier)
                    hit = b.and_(hit, b.not_(earlier))
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

