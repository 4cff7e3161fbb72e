"""The primitives of convolutional and embedding layers, registered like every other op (`ir.ops`).

Six ops; everything else these layers need is a composite (`ir.build_nn`):

- `patches` (im2col): the `size` windows of a channels-last image, `x[N,H,W,C] ->
  [N,OH,OW,KH,KW,C]`, zero (or `pad_value`) outside the padded input.  A convolution is `patches`
  reshaped to `[N,OH,OW,KH*KW*C]` times the reshaped kernel, so it runs on the GEMM; average
  pooling is a sum over the window axes (3, 4).  Window axes stay separate so that every index the
  lowering computes is uniform along the innermost channel axis (the loop vectorizes; padding
  checks hoist).
- `patches_grad` (col2im): its adjoint, each input pixel's sum of the patch entries that copied it.
  A reduction (the kernel sums the windows covering each pixel once, in a loop of its own), not an
  injective op: inlined into a consumer that reads it at several pixels, it would be recomputed
  there KH*KW-fold.
- `max_pool`: the maximum of each window (padding ignored) and `max_pool_grad`, which routes a
  window's gradient back to the first position (row-major over the window, padding never) equal to
  its maximum, as Keras 3 on JAX, TensorFlow and PyTorch do.  NOTE: not to every tied position
  (reduce_max's rule): exact ties at a positive maximum are common in images with flat regions (a
  convolution over Fashion-MNIST's zero background is its bias), and routing to all of them made a
  CNN's convolution gradients differ from Keras's.
- `gather`: rows of a table picked by integer ids (Embedding), `table[V,D...], ids[S...] ->
  [S...,D...]`.  Ids are clamped to [0, V-1], as JAX does (no bounds error can be raised from a
  compiled kernel, and reading outside the table is not an option).
- `scatter_add`: its adjoint, the sum of the update rows sent to each id.

patches/patches_grad and gather/scatter_add differentiate into each other; max_pool_grad's own
gradient is its composite form, so gradients of any order stay in IR ops.
"""
from __future__ import annotations

import numpy as np

from .graph import FLOAT_DTYPES, TensorType
from .ops import INJECTIVE, REDUCE, register


def _nn():
    from . import build_nn
    return build_nn


# ----------------------------------------------------------------------------------------------
# patches / patches_grad
# ----------------------------------------------------------------------------------------------

def window_output_size(size: int, window: int, stride: int, pad_low: int, pad_high: int) -> int:
    """Number of window positions along one axis (0 when the window does not fit)."""
    span = size + pad_low + pad_high - window
    return span // stride + 1 if span >= 0 else 0


def _window_attrs(op, attrs):
    size, strides, pads = tuple(attrs["size"]), tuple(attrs["strides"]), tuple(attrs["pads"])
    if len(size) != 2 or len(strides) != 2 or len(pads) != 4:
        raise ValueError(f"{op} needs size=(kh,kw), strides=(sh,sw), pads=(top,bottom,left,right); "
                         f"got size={size}, strides={strides}, pads={pads}")
    if min(size) < 1 or min(strides) < 1 or min(pads) < 0:
        raise ValueError(f"{op}: window sizes and strides must be positive and pads non-negative; "
                         f"got size={size}, strides={strides}, pads={pads}")
    return size, strides, pads


def _patches_infer(types, attrs):
    (x,) = types
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = _window_attrs("patches", attrs)
    if x.rank != 4 or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"patches needs a float image [N,H,W,C] (channels last), got {x}")
    _, h, w, c = x.shape
    oh, ow = window_output_size(h, kh, sh, pt, pb), window_output_size(w, kw, sw, pl, pr)
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} window does not fit the {h}x{w} image {x} with pads "
                         f"{(pt, pb, pl, pr)}")
    return TensorType(x.dtype, (x.shape[0], oh, ow, kh, kw, c))


def windows_of(x, size, strides, pads, pad_value):
    """numpy im2col: the [N,OH,OW,KH,KW,C] windows of x (the semantics of `patches`)."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = size, strides, pads
    oh = window_output_size(x.shape[1], kh, sh, pt, pb)
    ow = window_output_size(x.shape[2], kw, sw, pl, pr)
    padded = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
    return out


def _patches_ref(values, attrs, node, batch=None):
    return windows_of(values[0], attrs["size"], attrs["strides"], attrs["pads"], attrs["pad_value"])


def _grad_patches(node, g):
    (x,) = node.operands
    return [_nn().patches_grad(g, node.attr("size"), node.attr("strides"), node.attr("pads"),
                               x.shape[1:3])]


def _patches_grad_infer(types, attrs):
    (g,) = types
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = _window_attrs("patches_grad", attrs)
    h, w = attrs["image"]
    if g.rank != 6 or g.dtype not in FLOAT_DTYPES:
        raise ValueError(f"patches_grad needs float patches [N,OH,OW,KH,KW,C], got {g}")
    expected = (window_output_size(h, kh, sh, pt, pb), window_output_size(w, kw, sw, pl, pr), kh, kw)
    if g.shape[1:5] != expected:
        raise ValueError(f"patches_grad: {g} are not the {kh}x{kw} patches of a {h}x{w} image "
                         f"(expected [?,{','.join(map(str, expected))},C])")
    return TensorType(g.dtype, (g.shape[0], h, w, g.shape[5]))


def _patches_grad_ref(values, attrs, node, batch=None):
    (g,) = values
    (kh, kw), (sh, sw), (pt, pb, pl, pr) = attrs["size"], attrs["strides"], attrs["pads"]
    h, w = attrs["image"]
    _, oh, ow = g.shape[:3]
    # a padded canvas large enough for every window, cropped at the end
    canvas = np.zeros((g.shape[0], max(h + pt + pb, sh * (oh - 1) + kh),
                       max(w + pl + pr, sw * (ow - 1) + kw), g.shape[5]), g.dtype)
    for i in range(kh):
        for j in range(kw):
            canvas[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] += g[:, :, :, i, j, :]
    return np.ascontiguousarray(canvas[:, pt:pt + h, pl:pl + w, :])


def _grad_patches_grad(node, g):
    return [_nn().patches(g, node.attr("size"), node.attr("strides"), node.attr("pads"))]


# ----------------------------------------------------------------------------------------------
# max_pool / max_pool_grad
# ----------------------------------------------------------------------------------------------

def _max_pool_infer(types, attrs):
    (x,) = types
    p = _patches_infer(types, attrs)
    return TensorType(x.dtype, p.shape[:3] + (x.shape[3],))


def _max_pool_ref(values, attrs, node, batch=None):
    (x,) = values
    return windows_of(x, attrs["size"], attrs["strides"], attrs["pads"], -np.inf).max(axis=(3, 4))


def _grad_max_pool(node, g):
    (x,) = node.operands
    return [_nn().max_pool_grad(x, node, g, node.attr("size"), node.attr("strides"), node.attr("pads"))]


def _max_pool_grad_infer(types, attrs):
    x, y, g = types
    pooled = _max_pool_infer([x], attrs)
    if y != pooled or g != pooled:
        raise ValueError(f"max_pool_grad needs (x, max_pool(x), gradient) of types ({x}, {pooled}, "
                         f"{pooled}); got ({x}, {y}, {g})")
    return x


def _max_pool_grad_ref(values, attrs, node, batch=None):
    x, y, g = values
    windows = windows_of(x, attrs["size"], attrs["strides"], attrs["pads"], np.nan)  # pads never equal
    flat = windows.reshape(windows.shape[:3] + (-1, windows.shape[5]))
    at_max = flat == y[:, :, :, None, :]
    first = at_max & (np.cumsum(at_max, axis=3) == 1)
    routed = np.where(first, g[:, :, :, None, :], 0).astype(g.dtype).reshape(windows.shape)
    return _patches_grad_ref([routed], dict(attrs, image=x.shape[1:3]), node, batch)


def _grad_max_pool_grad(node, g):
    """The adjoint of routing, as a composite: per window, `g` at the first position equal to the
    window's maximum (linear in the routed gradient; x and y only select)."""
    from . import build as B
    x, y, _ = node.operands
    size, strides, pads = node.attr("size"), node.attr("strides"), node.attr("pads")
    taps = size[0] * size[1]
    windows = _nn().patches(x, size, strides, pads, -np.inf)
    flat_shape = windows.shape[:3] + (taps, windows.shape[5])
    flat = B.reshape(windows, flat_shape)
    at_max = B.eq(flat, B.broadcast(B.reshape(y, y.shape[:3] + (1, y.shape[3])), flat_shape))
    # taps - k at the taps k equal to the maximum, 0 elsewhere: the largest is taps - (the first k)
    rank = B.iota(flat_shape, 3, x.dtype)
    score = B.reduce_max(B.select(at_max, B.sub(float(taps), rank), B.zeros_like(flat)), 3,
                         keepdims=True)
    first = B.select(B.eq(score, 0.0), B.full_like(score, -1.0), B.sub(float(taps), score))
    picked = B.select(B.eq(rank, B.broadcast(first, flat_shape)),
                      B.reshape(_nn().patches(g, size, strides, pads), flat_shape), B.zeros_like(flat))
    return [None, None, B.reduce_sum(picked, (3,))]


# ----------------------------------------------------------------------------------------------
# gather / scatter_add
# ----------------------------------------------------------------------------------------------

def _gather_infer(types, attrs):
    table, ids = types
    if ids.dtype != "i32":
        raise ValueError(f"gather needs i32 ids, got {ids}; cast them first")
    if table.rank < 1 or table.batched:
        raise ValueError(f"gather needs a table [V, ...] without a batch dimension, got {table}")
    return TensorType(table.dtype, ids.shape + table.shape[1:])


def _clamped(ids, rows):
    return np.clip(ids, 0, rows - 1)


def _gather_ref(values, attrs, node, batch=None):
    table, ids = values
    return np.ascontiguousarray(table[_clamped(ids, table.shape[0])])


def _grad_gather(node, g):
    table, ids = node.operands
    return [_nn().scatter_add(ids, g, table.shape[0]), None]


def _scatter_add_infer(types, attrs):
    ids, updates = types
    rows = attrs["rows"]
    if ids.dtype != "i32":
        raise ValueError(f"scatter_add needs i32 ids, got {ids}")
    if updates.shape[:ids.rank] != ids.shape or updates.dtype == "bool":
        raise ValueError(f"scatter_add needs numeric updates of shape ids.shape + row shape; got "
                         f"ids {ids} and updates {updates}")
    if rows < 1:
        raise ValueError(f"scatter_add needs rows >= 1, got {rows}")
    return TensorType(updates.dtype, (rows,) + updates.shape[ids.rank:])


def _scatter_add_ref(values, attrs, node, batch=None):
    ids, updates = values
    out = np.zeros(node.shape, updates.dtype)
    flat_ids = _clamped(ids, attrs["rows"]).reshape(-1)
    np.add.at(out, flat_ids, updates.reshape((flat_ids.size,) + node.shape[1:]))
    return out


def _grad_scatter_add(node, g):
    ids, _ = node.operands
    return [None, _nn().gather(g, ids)]


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------

register("patches", infer=_patches_infer, operands=1,
         reference=_patches_ref, grad=_grad_patches, kind=INJECTIVE,
         attrs=("size", "strides", "pads", "pad_value"),
         doc="im2col: x[N,H,W,C] -> [N,OH,OW,KH,KW,C], the size=(kh,kw) windows at strides=(sh,sw) "
             "of x padded by pads=(top,bottom,left,right) with pad_value")
register("patches_grad", infer=_patches_grad_infer, operands=1, reference=_patches_grad_ref,
         grad=_grad_patches_grad, kind=REDUCE, attrs=("size", "strides", "pads", "image"),
         doc="col2im, the adjoint of patches: g[N,OH,OW,KH,KW,C] -> [N,H,W,C] with image=(H,W), each "
             "pixel the sum of the patch entries copied from it")
register("max_pool", infer=_max_pool_infer, operands=1,
         reference=_max_pool_ref, grad=_grad_max_pool,
         attrs=("size", "strides", "pads"),
         kind=INJECTIVE, doc="x[N,H,W,C] -> [N,OH,OW,C], the maximum of each size=(kh,kw) window at "
                             "strides=(sh,sw); pads=(top,bottom,left,right) never win")
register("max_pool_grad", infer=_max_pool_grad_infer, operands=3, reference=_max_pool_grad_ref,
         grad=_grad_max_pool_grad, kind=INJECTIVE, attrs=("size", "strides", "pads"),
         doc="(x, y=max_pool(x), g) -> [N,H,W,C]: each pixel the sum of g over the windows whose "
             "maximum it is the first (row-major) to equal")
register("gather", infer=_gather_infer, operands=2,
         reference=_gather_ref, grad=_grad_gather, kind=INJECTIVE,
         attrs=(),
         doc="table[V,D...] rows at i32 ids[S...] -> [S...,D...]; ids clamped to [0, V-1]")
register("scatter_add", infer=_scatter_add_infer, operands=2,
         reference=_scatter_add_ref, grad=_grad_scatter_add,
         attrs=("rows",),
         kind=REDUCE,
         doc="the adjoint of gather: ids[S...], updates[S...,D...] -> [rows,D...], row v the sum of "
             "the updates whose (clamped) id is v")
