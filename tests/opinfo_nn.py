"""OpInfo cases of the convolution and embedding primitives (`ir.ops_nn`), appended to
`tests/opinfo.CASES` by `nn_cases()`.

Each primitive is tested on its own (every padding and stride pattern the layers produce, batched
and static images, f32 and f64) and inside the composites that use it (a convolution, max and
average pooling), with finite-difference gradients for both members of each adjoint pair.
"""
from __future__ import annotations

import numpy as np

from ir import build as B
from ir import build_nn as NN


def nn_cases() -> list:
    # NOTE: imported here, not at the top: tests/opinfo.py imports this module while it is itself
    # being imported, so its names exist only once `_case_list` has run.
    from opinfo import N, T, OpCase, distinct, each, expand, standard, unit, with_specials

    cases: list = []
    add = cases.extend
    image = ((N, 6, 5, 3), T)
    # (label, size, strides, pads): valid, 'same' with odd and even windows, strides that do and do
    # not divide the image, windows larger than the stride (overlapping col2im sums)
    windows = [("valid3x3", (3, 3), (1, 1), (0, 0, 0, 0)),
               ("same3x2_s21", (3, 2), (2, 1), (1, 1, 0, 1)),
               ("same2x2_s2", (2, 2), (2, 2), (0, 0, 0, 1)),
               ("pad3x3_s23", (3, 3), (2, 3), (1, 1, 1, 1)),
               ("valid1x4_s13", (1, 4), (1, 3), (0, 0, 0, 0))]
    grad_tol = dict(grad_rtol=1e-5, grad_atol=1e-6)
    # f64 on one window pattern only: the lowering does not depend on the dtype (CI time)
    for index, (label, size, strides, pads) in enumerate(windows):
        dtypes = ("f32", "f64") if index == 1 else ("f32",)
        add(expand(dtypes, "patches", f"patches_{label}",
                   lambda x, size=size, strides=strides, pads=pads: NN.patches(x, size, strides, pads),
                   (image,), grad=True, **grad_tol))
        shape = NN.patches(B.arg("x", "f32", image[0]), size, strides, pads).shape
        add(expand(dtypes, "patches_grad", f"patches_grad_{label}",
                   lambda g, size=size, strides=strides, pads=pads:
                   NN.patches_grad(g, size, strides, pads, (6, 5)),
                   ((shape, T),), grad=True, rtol=1e-6, atol=1e-6, **grad_tol))
    add(expand(("f32",), "patches", "patches_static_image",
               lambda x: {"p": NN.patches(x, (2, 3), (1, 2), (1, 0, 1, 1)),
                          "back": NN.patches_grad(NN.patches(x, (2, 3), (1, 2), (1, 0, 1, 1)),
                                                  (2, 3), (1, 2), (1, 0, 1, 1), (4, 5))},
               (((2, 4, 5, 2), T),), grad=True, rtol=1e-6, atol=1e-6))
    add(expand(("f32",), "patches", "patches_pad_value",
               lambda x: NN.patches(x, (2, 2), (2, 2), (0, 1, 1, 1), -np.inf), (image,)))

    # composites: a convolution (patches -> reshape -> matmul) and both poolings
    conv_tol = dict(rtol=1e-5, atol=1e-5, grad=True, gen=each(unit))
    for padding, strides in [("valid", (1, 1)), ("same", (2, 2)), ("valid", (2, 1))]:
        add(expand(("f32",), "patches", f"conv2d_{padding}_{strides[0]}{strides[1]}",
                   lambda x, k, padding=padding, strides=strides: NN.conv2d(x, k, strides, padding),
                   (image, ((3, 3, 3, 4), T)), **conv_tol))
    for padding in ("valid", "same"):
        add(expand(("f32",), "max_pool", f"max_pool_{padding}",
                   lambda x, padding=padding: {"s2": NN.pool2d(x, (2, 2), (2, 2), padding, "max"),
                                               "s1": NN.pool2d(x, (3, 2), (1, 1), padding, "max")},
                   (image,), gen=each(distinct), grad=True, rtol=1e-6))
        add(expand(("f32",), "patches", f"avg_pool_{padding}",
                   lambda x, padding=padding: {"s2": NN.pool2d(x, (2, 2), (2, 2), padding, "avg"),
                                               "s1": NN.pool2d(x, (3, 2), (1, 1), padding, "avg")},
                   (image,), grad=True, rtol=1e-5, atol=1e-6))
    # the gradient routed on its own (and differentiated again: its gradient is a composite);
    # windows that overlap sum the gradients of every window a pixel is the maximum of
    for label, size, strides, pads in (windows[0], windows[3]):
        shape = NN.max_pool(B.arg("x", "f32", image[0]), size, strides, pads).shape
        add(expand(("f32", "f64") if label == windows[3][0] else ("f32",), "max_pool_grad",
                   f"max_pool_grad_{label}",
                   lambda x, g, size=size, strides=strides, pads=pads:
                   NN.max_pool_grad(x, NN.max_pool(x, size, strides, pads), g, size, strides, pads),
                   (image, (shape, T)), gen=each(distinct), grad=True, rtol=1e-6, atol=1e-6))
    # ties: an image of three levels, flat regions like an image's background; every window sends
    # its gradient to its first tap equal to the maximum (row-major), padding never (the values
    # are checked against the interpreter, whose rule tests/test_cnn_recipe.py checks by hand)
    def levels(rng, shape, dtype):
        return rng.integers(0, 3, shape).astype(np.float32 if dtype == "f32" else np.float64)

    for label, size, strides, pads in windows[:4]:
        shape = NN.max_pool(B.arg("x", "f32", image[0]), size, strides, pads).shape
        add(expand(("f32",), "max_pool_grad", f"max_pool_grad_ties_{label}",
                   lambda x, g, size=size, strides=strides, pads=pads:
                   NN.max_pool_grad(x, NN.max_pool(x, size, strides, pads), g, size, strides, pads),
                   (image, (shape, T)), gen=lambda rng, specs: [levels(rng, *specs[0]),
                                                                unit(rng, *specs[1])],
                   rtol=1e-6, atol=1e-6))
    add(expand(("f32",), "max_pool", "max_pool_specials",
               lambda x: NN.max_pool(x, (2, 2), (2, 2), (0, 1, 0, 1)), (image,),
               gen=each(with_specials)))

    # reshapes the composites make, evaluated inline (the lowering maps the axes a reshape leaves
    # alone straight through and splits only the others)
    add(expand(("f32",), "reshape", "reshape_window_axes",
               lambda x, y: {"merge": B.reduce_sum(B.reshape(x, (N, 2, 3, 12)), 3),
                             "units": B.reduce_sum(B.reshape(y, (N, 2, 1, 1, 12)), (2, 3)),
                             "split": B.reduce_max(B.reshape(y, (N, 2, 4, 3)), 1),
                             "middle": B.reduce_sum(B.reshape(x, (N, 2, 9, 4)), 3),
                             "all": B.reduce_sum(B.reshape(x, (N, 6, 6, 2)), 1)},
               (((N, 2, 3, 3, 4), T), ((N, 2, 12), T)), grad=True, rtol=1e-5, atol=1e-6))
    add(expand(("f32",), "reshape", "reshape_static_units",
               lambda x: {"a": B.reduce_sum(B.reshape(x, (1, 6, 1, 4)), 0),
                          "b": B.reduce_sum(B.reshape(x, (24,)), 0)}, (((2, 3, 4), T),),
               grad=True, rtol=1e-5, atol=1e-6))

    # gather / scatter_add: ids cover the table, repeat, and fall outside it (clamped)
    def ids_and(rng, specs):
        out = []
        for shape, dtype in specs:
            if dtype == "i32":
                out.append(rng.integers(-2, 9, shape).astype(np.int32))
            else:
                out.append(standard(rng, shape, dtype))
        return out

    add(expand(("f32", "f64"), "gather", "gather",
               lambda table, ids: NN.gather(table, ids), (((7, 4), T), ((N, 3), "i32")),
               gen=ids_and, grad=True))
    add(expand(("f32",), "gather", "gather_3d_table",
               lambda table, ids: NN.gather(table, ids), (((7, 2, 3), T), ((N,), "i32")),
               gen=ids_and, grad=True))
    add(expand(("f32", "f64"), "scatter_add", "scatter_add",
               lambda ids, updates: NN.scatter_add(ids, updates, 7), (((N, 3), "i32"), ((N, 3, 4), T)),
               gen=ids_and, grad=True, rtol=1e-5, atol=1e-6))
    add(expand(("i32",), "scatter_add", "scatter_add_int",
               lambda ids, updates: NN.scatter_add(ids, updates, 7), (((N, 3), "i32"), ((N, 3, 2), T)),
               gen=ids_and))
    add([OpCase("scatter_add", "scatter_add_fused",
                # the updates are computed inside the kernel, and its users are its epilogue
                lambda ids, g, w: B.sub(w, B.mul(NN.scatter_add(ids, B.exp(g), 7), 0.1)),
                (((N, 2), "i32"), ((N, 2, 4), "f32"), ((7, 4), "f32")), gen=ids_and, grad=True,
                rtol=1e-5, atol=1e-6)])
    return cases
