"""Lowerings of the ops of `ir.ops_nn` (patches, patches_grad, gather, scatter_add).

`patches` and `patches_grad` are `Index` lowerings: a value at an index is a load (or a static,
unrolled sum of loads) at another index of the operand.  Every index they compute depends on the
outer loop variables only, never on the innermost channel axis `c`, so the addresses are affine in
`c` with unit stride and the bounds checks are uniform along it: the channel loop vectorizes.  Out
of range positions load from a clamped (valid) index and are replaced by a `select`, so no load
is ever conditional.

`scatter_add` is a `Kernel`: the output is zeroed, then every update row is added to the row its
id picks (in order, so the compiled sum rounds as the reference's `np.add.at`).
"""
from __future__ import annotations

from .lower import I64, STORAGE_TYPES, Evaluator, Index, Kernel, c64, constant, loop_nest, lowers


def _in_range(b, value, size: int):
    """0 <= value < size for an i64 (one unsigned compare: negatives wrap to huge values)."""
    return b.icmp_unsigned("<", value, c64(size))


def _and(b, a, c):
    if a is None:
        return c
    if c is None:
        return a
    return b.and_(a, c)


@lowers("patches", Index)
def _patches(ev, node, index):
    (x,) = node.operands
    b = ev.builder
    n, oh, ow, i, j, c = index
    (sh, sw), (pt, pb, pl, pr) = node.attr("strides"), node.attr("pads")
    height, width = x.shape[1], x.shape[2]

    def position(out, tap, stride, low):
        p = b.add(b.mul(out, c64(stride)) if stride != 1 else out, tap)
        return b.sub(p, c64(low)) if low else p

    ih, iw = position(oh, i, sh, pt), position(ow, j, sw, pl)
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


@lowers("patches_grad", Index)
def _patches_grad(ev, node, index):
    (g,) = node.operands
    b = ev.builder
    n, h, w, c = index
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = node.attr("size"), node.attr("strides"), node.attr("pads")
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

