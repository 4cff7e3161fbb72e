"""Builders for the ops of `ir.ops_nn`, and the composites convolutional layers are made of.

A 2-D convolution is `patches` (im2col) reshaped to rows of `KH*KW*C` taps, times the kernel
reshaped to `[KH*KW*C, C_out]`: the product runs on the GEMM, and its gradients are a GEMM and
`patches_grad` (col2im).  Average pooling is a sum over the window axes of `patches` (inside the
reduction's kernel `patches` is evaluated at each index: the windows are never stored); max pooling
is that with `reduce_max`, fused into the `max_pool` primitive and its gradient.
"""
from __future__ import annotations

import numpy as np

from . import build as B
from .graph import Node
from .ops import make
from .ops_nn import window_output_size

PADDINGS = ("valid", "same")


def window_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int]:
    """(low, high) padding of one axis, as TensorFlow and Keras place it: 'valid' none; 'same'
    enough for ceil(size / stride) outputs, the odd element on the high side."""
    if padding == "valid":
        return 0, 0
    if padding != "same":
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def image_pads(shape, size, strides, padding) -> tuple:
    """(top, bottom, left, right) for an image of `shape` [N,H,W,C]."""
    top, bottom = window_pads(shape[1], size[0], strides[0], padding)
    left, right = window_pads(shape[2], size[1], strides[1], padding)
    return top, bottom, left, right


# -- the primitives -----------------------------------------------------------------------------

def patches(x: Node, size, strides, pads, pad_value: float = 0.0) -> Node:
    return make("patches", (x,), size=tuple(size), strides=tuple(strides), pads=tuple(pads),
                pad_value=float(pad_value))


def patches_grad(g: Node, size, strides, pads, image) -> Node:
    return make("patches_grad", (g,), size=tuple(size), strides=tuple(strides), pads=tuple(pads),
                image=tuple(image))


def max_pool(x: Node, size, strides, pads) -> Node:
    return make("max_pool", (x,), size=tuple(size), strides=tuple(strides), pads=tuple(pads))


def max_pool_grad(x: Node, y: Node, g: Node, size, strides, pads) -> Node:
    return make("max_pool_grad", (x, y, g), size=tuple(size), strides=tuple(strides),
                pads=tuple(pads))


def gather(table: Node, ids: Node) -> Node:
    return make("gather", (table, ids))


def scatter_add(ids: Node, updates: Node, rows: int) -> Node:
    return make("scatter_add", (ids, updates), rows=int(rows))


# -- composites ---------------------------------------------------------------------------------

def conv2d(x: Node, kernel: Node, strides=(1, 1), padding="valid") -> Node:
    """x[N,H,W,C] (*) kernel[KH,KW,C,C_out] -> [N,OH,OW,C_out] (cross-correlation, as Keras);
    `padding` 'valid', 'same' or explicit zero pads (top, bottom, left, right)."""
    kh, kw, cin, cout = kernel.shape
    if x.type.rank != 4 or x.shape[3] != cin:
        raise ValueError(f"conv2d needs an image [N,H,W,{cin}] for kernel {kernel.type}, got {x.type}")
    strides = tuple(strides)
    pads = (image_pads(x.shape, (kh, kw), strides, padding) if isinstance(padding, str)
            else tuple(padding))
    if (kh, kw) == (1, 1) and strides == (1, 1):
        columns = x                       # a 1x1 convolution is a matmul of the pixels
    else:
        p = patches(x, (kh, kw), strides, pads)
        columns = B.reshape(p, p.shape[:3] + (kh * kw * cin,))
    return B.matmul(columns, B.reshape(kernel, (kh * kw * cin, cout)))


def relu_operand(x: Node):
    """z when x is relu(z) as `ir.build.relu` writes it (max(z, broadcast(0))), else None."""
    if x.op != "max":
        return None
    z, zero = x.operands
    while zero.op == "broadcast":
        zero = zero.operands[0]
    if zero.op == "const" and zero.type.shape == () and zero.attr("value") == 0:
        return z
    return None


def _valid_counts(size, window, stride, low, out) -> np.ndarray:
    starts = np.arange(out) * stride - low
    return np.minimum(starts + window, size) - np.maximum(starts, 0)


def pool2d(x: Node, size, strides, padding: str, mode: str) -> Node:
    """Max or average pooling of x[N,H,W,C] over `size` windows.

    Padding never counts: max pools pad with -inf, average pools divide by the number of pixels
    of each window inside the image (as Keras and TensorFlow do)."""
    size, strides = tuple(size), tuple(strides)
    pads = image_pads(x.shape, size, strides, padding)
    if mode == "max":
        z = relu_operand(x)
        if z is not None:
            # NOTE: max pooling commutes with relu (both are maxima): relu(max_pool(z)) is
            # max_pool(relu(z)) bit for bit, and so is its gradient (every tie rule agrees: a
            # window whose maximum is <= 0 passes no gradient either way).  Pooling first applies
            # relu to KH*KW-fold fewer values and its gradient reads z, which the convolution
            # materializes anyway, instead of relu(z), which then need not exist.
            return B.relu(max_pool(z, size, strides, pads))
        return max_pool(x, size, strides, pads)
    if mode != "avg":
        raise ValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
    total = B.reduce_sum(patches(x, size, strides, pads), (3, 4))
    oh, ow = total.shape[1:3]
    counts = np.outer(_valid_counts(x.shape[1], size[0], strides[0], pads[0], oh),
                      _valid_counts(x.shape[2], size[1], strides[1], pads[2], ow))
    if np.all(counts == counts.flat[0]):
        return B.div(total, float(counts.flat[0]))
    return B.div(total, B.const(counts.reshape(oh, ow, 1), x.dtype))


__all__ = ["PADDINGS", "window_pads", "image_pads", "window_output_size", "patches", "patches_grad",
           "max_pool", "max_pool_grad", "gather", "scatter_add", "conv2d", "pool2d"]
