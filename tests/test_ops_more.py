"""kcompile.ops functions added after the first set (tensor functions under keras.ops's names,
written as composites of IR primitives): values against numpy (float64 results rounded to float32)
in a Lambda layer compiled for each target and eagerly on arrays; gradients against central
finite differences in float64 on the reference interpreter, and one SGD step on both targets
against a numpy finite-difference gradient; dtypes, signatures and the arguments refused."""
from __future__ import annotations

import math

import numpy as np
import pytest

import ir
import kcompile
from ir import build as B
from kcompile import ops
from kcompile.layers import Dense, Input, Lambda, Layer
from kcompile.models import Sequential
from targets import TARGETS

RNG = np.random.default_rng(1234)


def _predict(fn, x, target):
    model = Sequential([Input(x.shape[1:]), Lambda(fn)])
    model.compile(loss="mse", target=target)
    return model.predict(x, verbose=0)


# -- elementwise -----------------------------------------------------------------------------------

_GRID = np.concatenate([np.linspace(-12, 12, 481), [0.0, -0.0, 1e-30, -1e-20, 1e-8, 3e-6, -7e-4,
                                                   0.03, 1e3, -1e5, 3e7]])
_UNIT = np.concatenate([np.linspace(-1, 1, 401), [1e-30, -1e-9, 2e-4, 0.9999, -0.99999]])
_SPECIAL = np.array([np.inf, -np.inf, np.nan])
_erf = np.vectorize(math.erf)

# (op, numpy's function, inputs, rtol): numpy's value in float64 of the float32 input, rounded
ELEMENTWISE = [
    ("expm1", np.expm1, np.concatenate([_GRID[np.abs(_GRID) < 80], _SPECIAL]), 2.4e-7),
    ("log2", np.log2, np.concatenate([np.abs(_GRID), [0.0, 1024.0, 0.125, -1.0], _SPECIAL]), 2.4e-7),
    ("log10", np.log10, np.concatenate([np.abs(_GRID), [0.0, 1e4, 0.001, -1.0], _SPECIAL]), 2.4e-7),
    ("exp2", np.exp2, np.concatenate([_GRID[np.abs(_GRID) < 100], [10.0, -3.0], _SPECIAL]), 2.4e-7),
    ("sinh", np.sinh, np.concatenate([_GRID[np.abs(_GRID) < 80], _SPECIAL]), 2.4e-7),
    ("cosh", np.cosh, np.concatenate([_GRID[np.abs(_GRID) < 80], _SPECIAL]), 2.4e-7),
    ("arcsinh", np.arcsinh, np.concatenate([_GRID, [1e30, -1e38], _SPECIAL]), 2.4e-7),
    ("arccosh", np.arccosh, np.concatenate([1 + np.abs(_GRID), [1.0, 1e30, 0.5], _SPECIAL]), 2.4e-7),
    ("arctanh", np.arctanh, np.concatenate([_UNIT, [1.0, -1.0, 1.5], _SPECIAL]), 2.4e-7),
    ("arctan", np.arctan, np.concatenate([_GRID, [1e30, -1e38], _SPECIAL]), 2.4e-7),
    ("arcsin", np.arcsin, np.concatenate([_UNIT, [1.0, -1.0, 1.5], _SPECIAL]), 2.4e-7),
    ("arccos", np.arccos, np.concatenate([_UNIT, [1.0, -1.0, -1.5], _SPECIAL]), 2.4e-7),
    ("trunc", np.trunc, np.concatenate([_GRID * 1.37, [2.5, -2.5, -0.3, 1e9], _SPECIAL]), 0.0),
    ("reciprocal", np.reciprocal, np.concatenate([_GRID, _SPECIAL]), 0.0),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("target", TARGETS)
def test_elementwise_functions_as_numpys_compiled_and_eagerly(target):
    """Each function in a Lambda layer on each target: numpy's float64 value of the float32 input
    within a float32 rounding (or exactly), NaN where numpy's is NaN, inf where numpy's is; called
    on the array, the same numbers."""
    for name, reference, values, rtol in ELEMENTWISE:
        x = values.astype(np.float32).reshape(-1, 1)
        op = getattr(ops, name)
        got = _predict(op, x, target)
        want = reference(x.astype(np.float64)).astype(np.float32)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        finite = ~np.isnan(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=1e-37, err_msg=name)
        eager = op(x)
        np.testing.assert_allclose(eager[finite], want[finite], rtol=rtol, atol=1e-37, err_msg=name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("target", TARGETS)
def test_erf_trunc_logaddexp_arctan2_and_the_activation_functions_compiled(target):
    x = np.linspace(-5, 5, 201).astype(np.float32).reshape(-1, 1)
    y = np.roll(x, 37) * 1.3
    y[::10] = 0.0
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    cases = [
        (ops.erf, _erf(x64), 5e-7), (ops.erfc, 1 - _erf(x64), 5e-7),
        (lambda v: ops.logaddexp(v, v * 1.3 - 2.0), np.logaddexp(x64, (x * np.float32(1.3)
                                                                      - 2).astype(np.float64)), 0),
        (ops.log_sigmoid, -np.logaddexp(0, -x64), 0),
        (ops.hard_silu, x64 * np.clip(x64 + 3, 0, 6) / 6, 0),
        (ops.hard_swish, x64 * np.clip(x64 + 3, 0, 6) / 6, 0),
        (ops.hard_tanh, np.clip(x64, -1, 1), 0),
        (lambda v: ops.celu(v, alpha=2.0), np.maximum(x64, 0) + 2 * np.expm1(np.minimum(x64, 0) / 2),
         1e-6),
        # (x + sqrt(x^2 + 4)) / 2 cancels for negative x in float32, as Keras's computes it too
        (ops.squareplus, (x64 + np.sqrt(x64 ** 2 + 4)) / 2, 2.5e-7),
        (ops.tanh_shrink, x64 - np.tanh(x64), 1e-6),
        (ops.soft_shrink, np.where(x64 > 0.5, x64 - 0.5, np.where(x64 < -0.5, x64 + 0.5, 0)), 0),
        (ops.hard_shrink, np.where(np.abs(x64) > 0.5, x64, 0), 0),
        (ops.sparse_plus, np.where(x64 <= -1, 0, np.where(x64 >= 1, x64, (x64 + 1) ** 2 / 4)), 0),
        (ops.sparse_sigmoid, np.clip((x64 + 1) / 2, 0, 1), 0),
        (lambda v: ops.threshold(v, 0.5, -3.0), np.where(x64 > 0.5, x64, -3.0), 0),
        (lambda v: ops.nan_to_num(ops.log(v), nan=-7.0, neginf=-9.0),
         np.nan_to_num(np.log(x64), nan=-7.0, neginf=-9.0), 0),
    ]
    for fn, want, atol in cases:
        got = _predict(fn, x, target)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=4e-7, atol=atol + 1e-37)
    # arctan2(y, x) of two columns, every quadrant; the zeros of x put points on the y axis
    pairs = np.concatenate([x, y], axis=1)
    got = _predict(lambda v: ops.arctan2(v[:, :1], v[:, 1:]), pairs, target)
    np.testing.assert_allclose(got, np.arctan2(x64, y64).astype(np.float32), rtol=4e-7, atol=1e-37)
    np.testing.assert_allclose(ops.arctan2(x, y), got, rtol=0, atol=0)
    # a glu over the last axis: the first half times the sigmoid of the second
    x2 = RNG.normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_allclose(_predict(ops.glu, x2, target),
                               x2[:, :2] / (1 + np.exp(-x2[:, 2:].astype(np.float64))), rtol=1e-6)


def test_integer_inputs_give_float32_and_specials_as_numpy_eagerly():
    ints = np.array([1, 2, 8, 100], np.int32)
    for name in ("expm1", "log2", "log10", "exp2", "sinh", "cosh", "arcsinh", "arctan", "erf",
                 "reciprocal"):
        assert getattr(ops, name)(ints).dtype == np.float32, name
    np.testing.assert_array_equal(ops.log2(ints), [0, 1, 3, np.log2(100).astype(np.float32)])
    np.testing.assert_array_equal(ops.log10(np.float32([1, 10, 1000])), [0, 1, 3])
    assert ops.trunc(ints).dtype == np.int32
    np.testing.assert_array_equal(ops.arctan(np.float32([np.inf, -np.inf])),
                                  np.float32([np.pi / 2, -np.pi / 2]))
    np.testing.assert_array_equal(ops.logaddexp(np.float32([-np.inf, np.inf, 0]),
                                                np.float32([-np.inf, np.inf, -np.inf])),
                                  [-np.inf, np.inf, 0])
    np.testing.assert_array_equal(ops.logical_xor(np.array([True, True, False]),
                                                  np.array([1, 0, 0])), [False, True, False])
    a = np.float32([1.0, 1.0, np.inf, np.nan, 0.0])
    b = np.float32([1.0 + 1e-6, 1.1, np.inf, np.nan, 1e-9])
    np.testing.assert_array_equal(ops.isclose(a, b), np.isclose(a, b))
    np.testing.assert_array_equal(ops.isclose(a, b, equal_nan=True), np.isclose(a, b, equal_nan=True))


def _fd_gradient(fn, x, eps=1e-6):
    """(d sum(w * fn(x)) / dx by ir.gradients, and by central differences), in float64."""
    arg = B.arg("x", "f64", x.shape)
    out = fn(arg)
    weights = RNG.normal(size=out.shape)
    loss = B.reduce_sum(B.mul(out, B.const(weights, "f64")), None, False)
    (grad,) = ir.gradients(loss, [arg])
    graph = ir.Graph("grad", [arg], [("loss", loss), ("grad", grad)])
    analytic = ir.run(graph, {"x": x})["grad"]
    numeric = np.zeros_like(x)
    for j in range(x.size):
        values = []
        for step in (eps, -eps):
            moved = x.copy()
            moved.reshape(-1)[j] += step
            values.append(float(ir.run(graph, {"x": moved})["loss"]))
        numeric.reshape(-1)[j] = (values[0] - values[1]) / (2 * eps)
    return analytic, numeric


GRADIENT_CASES = [
    ("expm1", ops.expm1, [-3.0, -1e-6, 0.0, 2e-6, 0.7, 4.0]),
    ("log2", ops.log2, [0.1, 1.0, 3.0, 100.0]),
    ("log10", ops.log10, [0.1, 1.0, 3.0, 100.0]),
    ("exp2", ops.exp2, [-3.0, 0.0, 0.5, 4.0]),
    ("reciprocal", ops.reciprocal, [-3.0, 0.5, 4.0]),
    ("sinh", ops.sinh, [-3.0, -1e-4, 0.0, 5e-4, 2.0]),
    ("cosh", ops.cosh, [-3.0, 0.0, 2.0]),
    ("arcsinh", ops.arcsinh, [-30.0, -1e-4, 0.0, 0.5, 7.0]),
    ("arccosh", ops.arccosh, [1.1, 2.0, 30.0]),
    ("arctanh", ops.arctanh, [-0.9, -1e-4, 0.0, 0.5]),
    ("arctan", ops.arctan, [-30.0, -1.0, -0.3, 0.0, 0.2, 1.5, 400.0]),
    ("arcsin", ops.arcsin, [-0.9, -0.2, 0.0, 0.6]),
    ("arccos", ops.arccos, [-0.9, -0.2, 0.0, 0.6]),
    ("erf", ops.erf, [-2.0, -0.3, 0.0, 0.8, 3.0]),
    ("log_sigmoid", ops.log_sigmoid, [-30.0, -1.0, 0.0, 2.0]),
    ("logaddexp", lambda v: ops.logaddexp(v, ops.flip(v, 0)), [-3.0, 0.0, 0.5, 0.5, 2.0, 8.0]),
    ("logaddexp at a tie", lambda v: ops.logaddexp(v, v * 1.0), [0.3]),
    ("arctan2", lambda v: ops.arctan2(v, ops.roll(v, 1, 0) - 0.5), [-2.0, 0.3, 1.5, -0.7, 3.0]),
    ("glu", lambda v: ops.glu(ops.reshape(v, (2, 2))), [0.5, -1.0, 0.3, 2.0]),
]


@pytest.mark.parametrize("name,fn,values", GRADIENT_CASES, ids=[c[0] for c in GRADIENT_CASES])
def test_elementwise_gradients_match_finite_differences(name, fn, values):
    analytic, numeric = _fd_gradient(fn, np.array(values, np.float64))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


# -- reductions, scans and reordering ------------------------------------------------------------

def _sorted_by_rank_numpy(x, axis):
    return np.sort(x, axis=axis, kind="stable")


# (name, function of the value, numpy's function of the array): each on a (batch, 4, 5) value
STRUCTURAL = [
    ("cumsum", lambda v: ops.cumsum(v, axis=1), lambda a: np.cumsum(a, axis=1)),
    ("cumsum last", lambda v: ops.cumsum(v, axis=-1), lambda a: np.cumsum(a, axis=-1)),
    ("cumprod", lambda v: ops.cumprod(v, axis=2), lambda a: np.cumprod(a, axis=2)),
    ("prod", lambda v: ops.prod(v, axis=-1), lambda a: np.prod(a, axis=-1)),
    ("prod two axes", lambda v: ops.prod(v, axis=(1, 2), keepdims=True),
     lambda a: np.prod(a, axis=(1, 2), keepdims=True)),
    ("amax", lambda v: ops.amax(v, axis=1), lambda a: np.amax(a, axis=1)),
    ("amin", lambda v: ops.amin(v, axis=-1, keepdims=True), lambda a: np.amin(a, axis=-1,
                                                                             keepdims=True)),
    ("flip", lambda v: ops.flip(v, axis=1), lambda a: np.flip(a, axis=1)),
    ("flip two", lambda v: ops.flip(v, axis=(1, 2)), lambda a: np.flip(a, axis=(1, 2))),
    ("roll", lambda v: ops.roll(v, 2, axis=-1), lambda a: np.roll(a, 2, axis=-1)),
    ("roll back", lambda v: ops.roll(v, (-1, 3), axis=(1, 2)), lambda a: np.roll(a, (-1, 3),
                                                                                 axis=(1, 2))),
    ("take", lambda v: ops.take(v, [4, 0, -1, 2], axis=2), lambda a: np.take(a, [4, 0, -1, 2], 2)),
    ("take 2-d", lambda v: ops.take(v, np.array([[1, 1], [3, 0]]), axis=1),
     lambda a: np.take(a, np.array([[1, 1], [3, 0]]), axis=1)),
    ("take_along_axis", lambda v: ops.take_along_axis(v, ops.argsort(v, axis=1), axis=1),
     lambda a: np.take_along_axis(a, np.argsort(a, axis=1, kind="stable"), axis=1)),
    ("take_along_axis broadcast", lambda v: ops.take_along_axis(v, np.array([[[0, -1, 2]]]), axis=2),
     lambda a: np.take_along_axis(a, np.broadcast_to(np.array([[[0, 4, 2]]]), a.shape[:2] + (3,)),
                                  axis=2)),
    ("sort", lambda v: ops.sort(v, axis=1), lambda a: np.sort(a, axis=1)),
    ("sort last", lambda v: ops.sort(v), lambda a: np.sort(a, axis=-1)),
    ("argsort", lambda v: ops.argsort(v, axis=-1), lambda a: np.argsort(a, axis=-1, kind="stable")),
    ("top_k values", lambda v: ops.top_k(v, 3)[0], lambda a: -np.sort(-a, axis=-1)[..., :3]),
    ("top_k indices", lambda v: ops.top_k(v, 3)[1],
     lambda a: np.argsort(-a, axis=-1, kind="stable")[..., :3]),
    ("in_top_k", lambda v: ops.in_top_k(ops.argmin(v[:, 0], axis=-1), v[:, 1], 2),
     lambda a: (a[:, 1] > np.take_along_axis(a[:, 1], np.argmin(a[:, 0], -1)[:, None], 1))
     .sum(-1) + 1 <= 2),
    ("moveaxis", lambda v: ops.moveaxis(v, 1, 2), lambda a: np.moveaxis(a, 1, 2)),
    ("swapaxes", lambda v: ops.swapaxes(v, -1, -2), lambda a: np.swapaxes(a, -1, -2)),
    ("split", lambda v: ops.concatenate([p * (i + 1.0) for i, p in
                                         enumerate(ops.split(v, [1, 3], axis=2))], axis=2),
     lambda a: np.concatenate([p * (i + 1.0) for i, p in enumerate(np.split(a, [1, 3], axis=2))],
                              axis=2)),
    ("unstack", lambda v: ops.unstack(v, axis=1)[2] - ops.unstack(v, axis=1)[0],
     lambda a: a[:, 2] - a[:, 0]),
    ("pad constant", lambda v: ops.pad(v, ((0, 0), (1, 2), (0, 1)), constant_values=-2.5),
     lambda a: np.pad(a, ((0, 0), (1, 2), (0, 1)), constant_values=-2.5)),
    ("pad reflect", lambda v: ops.pad(v, ((0, 0), (2, 3), (1, 0)), mode="reflect"),
     lambda a: np.pad(a, ((0, 0), (2, 3), (1, 0)), mode="reflect")),
    ("pad symmetric", lambda v: ops.pad(v, ((0, 0), (4, 1), (2, 2)), mode="symmetric"),
     lambda a: np.pad(a, ((0, 0), (4, 1), (2, 2)), mode="symmetric")),
    ("pad edge", lambda v: ops.pad(v, ((0, 0), (0, 2), (3, 1)), mode="edge"),
     lambda a: np.pad(a, ((0, 0), (0, 2), (3, 1)), mode="edge")),
    ("tril", lambda v: ops.tril(v, -1), lambda a: np.tril(a, -1)),
    ("triu", lambda v: ops.triu(v, 2), lambda a: np.triu(a, 2)),
    ("diagonal", lambda v: ops.diagonal(v, 1, 1, 2), lambda a: np.diagonal(a, 1, 1, 2)),
    ("diagonal swapped", lambda v: ops.diagonal(v, -2, 2, 1), lambda a: np.diagonal(a, -2, 2, 1)),
    ("trace", lambda v: ops.trace(v, 0, 1, 2), lambda a: np.trace(a, 0, 1, 2)),
    ("einsum", lambda v: ops.einsum("bij,jk->bik", v, np.arange(10.0).reshape(5, 2)),
     lambda a: np.einsum("bij,jk->bik", a, np.arange(10.0).reshape(5, 2))),
    ("einsum pairs", lambda v: ops.einsum("bij,bkj->bik", v, v),
     lambda a: np.einsum("bij,bkj->bik", a, a)),
    ("einsum vector", lambda v: ops.einsum("bij,bj->bi", v, v[:, 0]),
     lambda a: np.einsum("bij,bj->bi", a, a[:, 0])),
    ("norm", lambda v: ops.norm(v, axis=-1), lambda a: np.linalg.norm(a, axis=-1)),
    ("norm 1", lambda v: ops.norm(v, ord=1, axis=1), lambda a: np.linalg.norm(a, ord=1, axis=1)),
    ("norm inf", lambda v: ops.norm(v, ord=np.inf, axis=1),
     lambda a: np.linalg.norm(a, ord=np.inf, axis=1)),
    ("norm 3", lambda v: ops.norm(v, ord=3, axis=2), lambda a: np.linalg.norm(a, ord=3, axis=2)),
    ("norm fro", lambda v: ops.norm(v, axis=(1, 2)), lambda a: np.linalg.norm(a, axis=(1, 2))),
    ("norm matrix 1", lambda v: ops.norm(v, ord=1, axis=(1, 2), keepdims=True),
     lambda a: np.linalg.norm(a, ord=1, axis=(1, 2), keepdims=True)),
    ("norm matrix -inf", lambda v: ops.norm(v, ord=-np.inf, axis=(2, 1)),
     lambda a: np.linalg.norm(a, ord=-np.inf, axis=(2, 1))),
    ("normalize", lambda v: ops.normalize(v), lambda a: a / np.linalg.norm(a, axis=-1,
                                                                            keepdims=True)),
    ("normalize 1", lambda v: ops.normalize(v, axis=1, order=1),
     lambda a: a / np.maximum(np.linalg.norm(a, ord=1, axis=1, keepdims=True), 1e-7)),
    ("moments", lambda v: ops.stack(ops.moments(v, axes=[2]), axis=1),
     lambda a: np.stack([a.mean(2), a.var(2)], axis=1)),
    ("average", lambda v: ops.average(v, axis=2, weights=np.arange(1.0, 6.0)),
     lambda a: np.average(a, axis=2, weights=np.arange(1.0, 6.0))),
    ("multi_hot", lambda v: ops.multi_hot(ops.argmax(v, axis=-1), 6),
     lambda a: (np.arange(6) == np.argmax(a, -1)[..., None]).any(-2).astype(np.float32)),
    ("full_like", lambda v: ops.full_like(v, 2.5) + v, lambda a: a + 2.5),
]


@pytest.mark.parametrize("target", TARGETS)
def test_reductions_scans_and_reorderings_on_a_batch_as_numpys(target):
    """Every function of STRUCTURAL in one Lambda layer on a (batch, 4, 5) input (the results
    flattened side by side), on each target, against numpy in float64; and on the array eagerly."""
    x = RNG.normal(size=(6, 4, 5)).astype(np.float32)
    x[0, 1, :] = x[0, 0, :]                     # ties, for the sorts' order
    x[1, :, 3] = 0.0                            # zeros, for the products
    wants = [np.asarray(reference(x.astype(np.float64))) for _, _, reference in STRUCTURAL]
    sizes = [int(np.prod(w.shape[1:])) for w in wants]

    def everything(v):
        return ops.concatenate([ops.reshape(ops.cast(fn(v), "float32"), (-1, size))
                                for (_, fn, _), size in zip(STRUCTURAL, sizes)], axis=-1)

    got = _predict(everything, x, target)
    start = 0
    for (name, fn, _), want, size in zip(STRUCTURAL, wants, sizes):
        part = got[:, start:start + size].reshape(want.shape)
        start += size
        np.testing.assert_allclose(part, want, rtol=2e-6, atol=2e-6, err_msg=name)
        eager = fn(x)                            # on the array: no batch axis, the same numbers
        np.testing.assert_allclose(eager, want, rtol=2e-6, atol=2e-6, err_msg=name)
    assert start == got.shape[1]


def test_integer_results_stay_int32_as_keras():
    ints = np.array([[3, 1, 2], [0, 5, 5]], np.int32)
    for name, fn, want in [("cumsum", lambda a: ops.cumsum(a, axis=1), np.cumsum(ints, 1)),
                           ("cumprod", ops.cumprod, np.cumprod(ints)),
                           ("prod", lambda a: ops.prod(a, axis=0), np.prod(ints, 0)),
                           ("sort", ops.sort, np.sort(ints)),
                           ("argsort", ops.argsort, np.argsort(ints, kind="stable")),
                           ("flip", ops.flip, np.flip(ints)),
                           ("roll", lambda a: ops.roll(a, 1), np.roll(ints, 1)),
                           ("take", lambda a: ops.take(a, [5, 0]), np.take(ints, [5, 0])),
                           ("triu", ops.triu, np.triu(ints)),
                           ("trace", ops.trace, np.trace(ints)),
                           ("einsum", lambda a: ops.einsum("ij,kj->ik", a, a), ints @ ints.T)]:
        got = fn(ints)
        assert got.dtype == np.int32, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(ops.cumsum(np.array([True, False, True])), [1, 1, 2])
    values, indices = ops.top_k(np.float32([1, 3, 2, 3]), 2)
    np.testing.assert_array_equal(values, [3, 3])
    np.testing.assert_array_equal(indices, [1, 3])
    assert indices.dtype == np.int32
    assert isinstance(ops.top_k(np.float32([1, 2]), 1), list)        # (Keras 3 returns a list)
    np.testing.assert_array_equal(ops.in_top_k(np.array([1, 0]), np.float32([[1, 3, 2],
                                                                              [np.nan, 0, 1]]), 1),
                                  [True, False])


def test_constants_as_keras_makes_them():
    a = ops.arange(5)
    assert a.dtype == np.int32 and a.tolist() == [0, 1, 2, 3, 4]
    assert ops.arange(1, 7, 2).tolist() == [1, 3, 5]
    f = ops.arange(0, 1, 0.25)
    assert f.dtype == np.float32 and f.tolist() == [0, 0.25, 0.5, 0.75]
    assert ops.arange(3, dtype="float32").dtype == np.float32
    space = ops.linspace(0, 1, 5)
    assert space.dtype == np.float32 and space.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert ops.linspace(0, 1, 4, endpoint=False).tolist() == [0, 0.25, 0.5, 0.75]
    xs, ys = ops.meshgrid(np.arange(3), np.arange(2))
    np.testing.assert_array_equal(xs, np.meshgrid(np.arange(3), np.arange(2))[0])
    assert ys.shape == (2, 3)
    assert ops.tri(3).dtype == np.float32 and ops.identity(2).tolist() == [[1, 0], [0, 1]]
    assert ops.full_like(np.zeros((2, 2), np.int32), 3).dtype == np.int32
    assert ops.ndim(np.zeros((2, 3))) == 2
    np.testing.assert_array_equal(ops.ravel(np.arange(6).reshape(2, 3)), np.arange(6))
    np.testing.assert_array_equal(ops.diag(np.float32([1, 2]), k=-1), np.diag([1, 2], k=-1))
    np.testing.assert_array_equal(ops.diag(np.arange(12.0).reshape(3, 4), 1),
                                  np.diag(np.arange(12.0).reshape(3, 4), 1))
    np.testing.assert_array_equal(ops.outer(np.float32([1, 2]), np.float32([[3, 4, 5]])),
                                  np.outer([1, 2], [3, 4, 5]))
    np.testing.assert_allclose(ops.einsum("i,i->", np.float32([1, 2]), np.float32([3, 4])), 11)
    m = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(ops.einsum("ij,jk", m, m.T), np.einsum("ij,jk", m, m.T))  # implicit
    np.testing.assert_allclose(ops.einsum("ji", m), m.T)
    parts = ops.split(np.arange(6.0), 3)
    assert isinstance(parts, list) and [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]


STRUCTURAL_GRADIENTS = [c for c in STRUCTURAL if c[0] not in (
    "argsort", "top_k indices", "in_top_k", "multi_hot", "amax", "amin", "norm inf",
    "norm matrix 1", "norm matrix -inf")]


@pytest.mark.parametrize("name,fn,reference", STRUCTURAL_GRADIENTS,
                         ids=[c[0] for c in STRUCTURAL_GRADIENTS])
def test_structural_gradients_match_finite_differences(name, fn, reference):
    x = RNG.normal(size=(2, 4, 5))               # (distinct values: no ties in sorts or maxima)
    analytic, numeric = _fd_gradient(fn, x)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_gradients_of_products_with_zeros_and_of_outer_and_diag():
    for fn, x in [(lambda v: ops.prod(v), np.array([2.0, 0.0, 3.0, -1.5, 0.5])),
                  (lambda v: ops.cumprod(v), np.array([2.0, 0.0, 3.0, 0.0, 0.5])),
                  (lambda v: ops.outer(v, v * 2.0), np.array([1.0, -2.0, 0.5])),
                  (lambda v: ops.diag(v, 1), np.array([1.0, -2.0, 0.5])),
                  (lambda v: ops.norm(v, ord=0.5), np.array([1.0, -2.0, 0.5]))]:
        analytic, numeric = _fd_gradient(fn, x)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("target", TARGETS)
def test_one_sgd_step_through_sort_cumprod_take_along_axis_and_einsum(target):
    """Dense(4) then a Lambda of several of the new functions, one SGD step under mse: the kernel
    moves by the gradient that finite differences of the same loss in numpy give."""
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    y = RNG.normal(size=(5, 4)).astype(np.float32)
    kernel0 = RNG.normal(size=(3, 4)).astype(np.float32) * 0.5
    matrix = np.arange(16.0, dtype=np.float32).reshape(4, 4) / 10

    def head(v):
        ordered = ops.sort(v, axis=-1)
        picked = ops.take_along_axis(v, ops.argsort(-v, axis=-1), axis=-1)
        return (ops.cumprod(ordered, axis=-1) * 0.3 + ops.einsum("bi,ij->bj", picked, matrix)
                + ops.arctan(v) + ops.expm1(v * 0.5) + ops.flip(ops.cumsum(v, axis=1), axis=1))

    def numpy_head(v):
        ordered = np.sort(v, axis=-1)
        picked = np.take_along_axis(v, np.argsort(-v, axis=-1, kind="stable"), axis=-1)
        return (np.cumprod(ordered, axis=-1) * 0.3 + picked @ matrix + np.arctan(v)
                + np.expm1(v * 0.5) + np.flip(np.cumsum(v, axis=1), axis=1))

    def loss(kernel):
        return np.mean((numpy_head(x.astype(np.float64) @ kernel) - y) ** 2)

    numeric = np.zeros((3, 4))
    for j in range(12):
        step = np.zeros(12)
        step[j] = 1e-6
        numeric.reshape(-1)[j] = (loss(kernel0 + step.reshape(3, 4)) -
                                  loss(kernel0 - step.reshape(3, 4))) / 2e-6
    model = Sequential([Input((3,)), Dense(4, use_bias=False), Lambda(head)])
    model.compile(optimizer=kcompile.optimizers.SGD(0.1), loss="mse", target=target)
    model.set_weights([kernel0])
    np.testing.assert_allclose(model.predict(x, verbose=0), numpy_head(x.astype(np.float64) @
                                                                       kernel0), rtol=1e-5,
                               atol=1e-5)
    model.fit(x, y, batch_size=5, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], kernel0 - 0.1 * numeric, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_take_of_a_weight_at_traced_ids_trains_the_rows_taken(target):
    """A table weight read at ids computed from the input (an embedding lookup written with
    ops.take): the rows match numpy's, and one SGD step moves only the rows taken, by numpy's
    gradient."""
    table0 = RNG.normal(size=(5, 3)).astype(np.float32)

    class Lookup(Layer):
        def build(self, input_shape):
            self.table = self.add_weight(shape=(5, 3), initializer="zeros", name="table")

        def call(self, inputs):
            ids = ops.argmax(inputs, axis=-1)
            return ops.take(self.table, ids, axis=0) + ops.take(self.table, ids - 5, axis=0)

    x = np.eye(5, dtype=np.float32)[[1, 3, 3, 0]]
    y = np.ones((4, 3), np.float32)
    model = Sequential([Input((5,)), Lookup()])
    model.compile(optimizer=kcompile.optimizers.SGD(0.5), loss="mse", target=target)
    model.set_weights([table0])
    ids = np.array([1, 3, 3, 0])
    np.testing.assert_allclose(model.predict(x, verbose=0), 2 * table0[ids], rtol=1e-6)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    grad = np.zeros((5, 3))
    np.add.at(grad, ids, 2 * 2 * (2 * table0[ids] - 1) / 12)     # d mean((2 t - 1)^2) / dt
    np.testing.assert_allclose(model.get_weights()[0], table0 - 0.5 * grad, rtol=1e-5, atol=1e-6)


def test_signatures_are_keras_3s():
    import inspect
    expected = {
        "cumsum": "(x, axis=None, dtype=None)", "prod": "(x, axis=None, keepdims=False, dtype=None)",
        "sort": "(x, axis=-1)", "argsort": "(x, axis=-1)", "top_k": "(x, k, sorted=True)",
        "take": "(x, indices, axis=None)", "take_along_axis": "(x, indices, axis=None)",
        "flip": "(x, axis=None)", "roll": "(x, shift, axis=None)", "split":
        "(x, indices_or_sections, axis=0)", "pad":
        "(x, pad_width, mode='constant', constant_values=None)", "norm":
        "(x, ord=None, axis=None, keepdims=False)", "normalize":
        "(x, axis=-1, order=2, epsilon=None)", "arange": "(start, stop=None, step=None, dtype=None)",
        "einsum": "(subscripts, *operands, **kwargs)", "soft_shrink": "(x, threshold=0.5)",
        "tril": "(x, k=0)", "diagonal": "(x, offset=0, axis1=0, axis2=1)", "in_top_k":
        "(targets, predictions, k)", "moveaxis": "(x, source, destination)",
    }
    for name, signature in expected.items():
        assert str(inspect.signature(getattr(ops, name))) == signature, name
    assert set(expected) <= set(ops.__all__)


REFUSED = [
    (lambda v: ops.flip(v), NotImplementedError, "batch axis"),
    (lambda v: ops.cumsum(v), NotImplementedError, "flattens the batch"),
    (lambda v: ops.cumsum(v, axis=0), NotImplementedError, "batch axis"),
    (lambda v: ops.prod(v), NotImplementedError, "batch axis"),
    (lambda v: ops.sort(v, axis=0), NotImplementedError, "batch axis"),
    (lambda v: ops.take(v, ops.argmax(v, axis=-1), axis=1), NotImplementedError,
     "take_along_axis"),
    (lambda v: ops.take(v, [0, 9], axis=1), IndexError, "out of range"),
    (lambda v: ops.norm(v, ord=2, axis=(1, 2)), NotImplementedError, "singular values"),
    (lambda v: ops.norm(v, ord="nuc", axis=1), ValueError, "not a vector norm"),
    (lambda v: ops.einsum("...ij,jk->...ik", v, np.ones((5, 2))), NotImplementedError, "'...'"),
    (lambda v: ops.einsum("bii->bi", v), NotImplementedError, "repeated"),
    (lambda v: ops.einsum("bij,jk->bik", v), ValueError, "2 operand subscripts"),
    (lambda v: ops.pad(v, ((0, 0), (1, 1), (1, 1)), mode="wrap"), NotImplementedError, "'wrap'"),
    (lambda v: ops.pad(v, 1), NotImplementedError, "batch axis takes no padding"),
    (lambda v: ops.pad(v, ((0, 0), (4, 0), (0, 0)), mode="reflect"), NotImplementedError,
     "less than"),
    (lambda v: ops.normalize(v, order=0), ValueError, "order"),
    (lambda v: ops.top_k(v, 6), ValueError, r"\[1, 5\]"),
    (lambda v: ops.split(v, 3, axis=1), ValueError, "equal parts"),
    (lambda v: ops.unstack(v, num=3, axis=1), ValueError, "num=3"),
    (lambda v: ops.arange(ops.shape(v)[0]), NotImplementedError, "numbers"),
    (lambda v: ops.glu(v), ValueError, "even"),
    (lambda v: ops.moveaxis(v, 0, 1), ValueError, "batch dimension"),
    (lambda v: ops.multi_hot(ops.argmax(v, axis=-1), 6, sparse=True), NotImplementedError,
     "sparse"),
]


@pytest.mark.parametrize("index", range(len(REFUSED)))
def test_arguments_kcompile_cannot_take_are_refused_with_the_reason(index):
    fn, error, match = REFUSED[index]
    value = B.arg("x", "f32", (None, 4, 5))
    with pytest.raises(error, match=match):
        fn(value)


# -- the second set: linear algebra helpers, normalizations, attention, quantiles -----------------

SECOND = [
    ("slice", lambda v: ops.slice(v, (0, 1, 2), (-1, 2, 3)), lambda a: a[:, 1:3, 2:5]),
    ("hstack", lambda v: ops.hstack([v, v * 2.0]), lambda a: np.hstack([a, a * 2])),
    ("tensordot", lambda v: ops.tensordot(v, np.arange(10.0).reshape(5, 2), axes=1),
     lambda a: np.tensordot(a, np.arange(10.0).reshape(5, 2), axes=1)),
    ("tensordot pairs", lambda v: ops.tensordot(v, np.arange(20.0).reshape(5, 4), ([1, 2], [1, 0])),
     lambda a: np.tensordot(a, np.arange(20.0).reshape(5, 4), ([1, 2], [1, 0]))),
    ("inner", lambda v: ops.inner(v, np.arange(15.0).reshape(3, 5)),
     lambda a: np.inner(a, np.arange(15.0).reshape(3, 5))),
    ("diff", lambda v: ops.diff(v, 2, axis=2), lambda a: np.diff(a, 2, axis=2)),
    ("deg2rad", ops.deg2rad, np.deg2rad),
    ("rad2deg", ops.rad2deg, np.rad2deg),
    ("hypot", lambda v: ops.hypot(v, v * 0.5 - 1.0), lambda a: np.hypot(a, a * 0.5 - 1)),
    ("cbrt", ops.cbrt, np.cbrt),
    ("signbit", ops.signbit, np.signbit),
    ("heaviside", lambda v: ops.heaviside(ops.round(v), 0.25), lambda a: np.heaviside(np.round(a),
                                                                                      0.25)),
    ("fliplr", ops.fliplr, np.fliplr),
    ("rot90", lambda v: ops.rot90(v, 1, (1, 2)), lambda a: np.rot90(a, 1, (1, 2))),
    ("rot90 three", lambda v: ops.rot90(v, 3, (2, 1)), lambda a: np.rot90(a, 3, (2, 1))),
    ("select", lambda v: ops.select([v > 0.5, v < -0.5], [v, v * 3.0], -1.0),
     lambda a: np.select([a > 0.5, a < -0.5], [a, a * 3], -1.0)),
    ("layer_normalization", lambda v: ops.layer_normalization(v, np.arange(5.0), np.ones(5)),
     lambda a: (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-7)
     * np.arange(5.0) + 1),
    ("layer_normalization two axes", lambda v: ops.layer_normalization(v, axis=(1, 2),
                                                                       epsilon=1e-3),
     lambda a: (a - a.mean((1, 2), keepdims=True)) / np.sqrt(a.var((1, 2), keepdims=True) + 1e-3)),
    ("rms_normalization", lambda v: ops.rms_normalization(v, np.arange(5.0)),
     lambda a: a / np.sqrt((a ** 2).mean(-1, keepdims=True) + 1e-7) * np.arange(5.0)),
    ("quantile", lambda v: ops.quantile(v, 0.3, axis=1), lambda a: np.quantile(a, 0.3, axis=1)),
    ("quantile keepdims", lambda v: ops.quantile(v, 0.75, axis=-1, method="midpoint", keepdims=True),
     lambda a: np.quantile(a, 0.75, axis=-1, method="midpoint", keepdims=True)),
    ("median", lambda v: ops.median(v, axis=2), lambda a: np.median(a, axis=2)),
    ("ptp", lambda v: ops.ptp(v, axis=1), lambda a: np.ptp(a, axis=1)),
]


@pytest.mark.parametrize("target", TARGETS)
def test_the_second_set_on_a_batch_as_numpys(target):
    x = RNG.normal(size=(6, 4, 5)).astype(np.float32)
    x[0, 0, :2] = [0.0, -0.0]
    wants = [np.asarray(reference(x.astype(np.float64))) for _, _, reference in SECOND]
    sizes = [int(np.prod(w.shape[1:])) for w in wants]

    def everything(v):
        return ops.concatenate([ops.reshape(ops.cast(fn(v), "float32"), (-1, size))
                                for (_, fn, _), size in zip(SECOND, sizes)], axis=-1)

    got = _predict(everything, x, target)
    start = 0
    for (name, fn, _), want, size in zip(SECOND, wants, sizes):
        part = got[:, start:start + size].reshape(want.shape)
        start += size
        np.testing.assert_allclose(part, want, rtol=2e-6, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(fn(x), want, rtol=2e-6, atol=2e-6, err_msg=name)


def _attention_numpy(q, k, v, mask=None, scale=None, causal=False):
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    keep = np.ones(logits.shape, bool)
    if mask is not None:
        keep &= mask
    if causal:
        keep &= np.tril(np.ones(logits.shape[2:], bool))
    logits = np.where(keep, logits, -0.7 * np.finfo(np.float32).max)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("target", TARGETS)
def test_dot_product_attention_in_a_custom_layer_as_keras_computes_it(target):
    """Self-attention of a (batch, 3, 2 heads, 4) input in a custom layer (plain, causal, scaled
    with a mask), on each target, against the formula of Keras's JAX backend in numpy; and one SGD
    step through it matches finite differences."""
    x = RNG.normal(size=(4, 3, 8)).astype(np.float32)
    mask = RNG.random((1, 2, 3, 3)) > 0.3
    mask[..., 0] = True

    class SelfAttention(Layer):
        def call(self, inputs):
            qkv = ops.reshape(inputs, (-1, 3, 2, 4))
            return ops.concatenate([
                ops.reshape(ops.dot_product_attention(qkv, qkv * 0.5, qkv), (-1, 24)),
                ops.reshape(ops.dot_product_attention(qkv, qkv, qkv - 1.0, is_causal=True),
                            (-1, 24)),
                ops.reshape(ops.dot_product_attention(qkv, qkv, qkv, mask=mask, scale=0.7),
                            (-1, 24))], axis=-1)

    q = x.astype(np.float64).reshape(4, 3, 2, 4)
    want = np.concatenate([_attention_numpy(q, q * 0.5, q).reshape(4, 24),
                           _attention_numpy(q, q, q - 1, causal=True).reshape(4, 24),
                           _attention_numpy(q, q, q, mask=mask, scale=0.7).reshape(4, 24)], -1)
    model = Sequential([Input((3, 8)), SelfAttention()])
    model.compile(loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    analytic, numeric = _fd_gradient(
        lambda v: ops.dot_product_attention(v, v * 0.5, v, is_causal=True), q[:2])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


SECOND_GRADIENTS = [c for c in SECOND if c[0] not in ("signbit", "heaviside", "cbrt")]


@pytest.mark.parametrize("name,fn,reference", SECOND_GRADIENTS, ids=[c[0] for c in SECOND_GRADIENTS])
def test_second_set_gradients_match_finite_differences(name, fn, reference):
    analytic, numeric = _fd_gradient(fn, RNG.normal(size=(2, 4, 5)))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_second_set_small_things_as_keras():
    assert ops.dtype(np.zeros(2, np.int32)) == "int32"
    assert ops.dtype(B.arg("x", "f32", (None, 2))) == "float32"
    assert ops.is_tensor(np.zeros(2)) and ops.is_tensor(B.arg("x", "f32", (2,)))
    assert not ops.is_tensor([1.0])
    cubes = np.float32([8, -27, 0, 1e-30])           # (numpy's float32 cbrt(-27) is -2.9999998)
    np.testing.assert_array_equal(ops.cbrt(cubes), np.cbrt(cubes.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(ops.vstack([np.ones(3), np.zeros(3)]), [[1, 1, 1], [0, 0, 0]])
    assert ops.vdot(np.float32([1, 2]), np.float32([3, 4])) == 11
    np.testing.assert_allclose(ops.quantile(np.float32([4, 1, 3, 2]), [0.25, 0.5]), [1.75, 2.5])
    np.testing.assert_allclose(ops.median(np.float32([[4, 1], [3, 2]])), 2.5)
    assert ops.logspace(0, 2, 3).dtype == np.float32 and ops.logspace(0, 2, 3).tolist() == [1, 10,
                                                                                           100]
    np.testing.assert_array_equal(ops.empty((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(ops.isposinf(np.float32([np.inf, -np.inf, 1])), [1, 0, 0])
    np.testing.assert_array_equal(ops.get_item(np.arange(6).reshape(2, 3), (1, slice(1, None))),
                                  [4, 5])
    with pytest.raises(ValueError, match="q must"):
        ops.quantile(np.float32([1, 2]), 1.5)
    with pytest.raises(ValueError, match="method"):
        ops.quantile(np.float32([1, 2]), 0.5, method="weird")
    value = B.arg("x", "f32", (None, 3, 2, 4))
    with pytest.raises(NotImplementedError, match="flash_attention"):
        ops.dot_product_attention(value, value, value, flash_attention=True)
    with pytest.raises(ValueError, match="4D"):
        ops.dot_product_attention(value[:, 0], value[:, 0], value[:, 0])
    with pytest.raises(NotImplementedError, match="whole batch axis"):
        ops.slice(value, (1, 0, 0, 0), (2, 3, 2, 4))
    with pytest.raises(NotImplementedError, match="before the batch axis"):
        ops.quantile(value, [0.2, 0.5], axis=1)


# -- the third set: segments, nan-reductions, small numpy helpers ---------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_segment_sums_over_the_batch_feed_back_through_take(target):
    """Each sample minus the sum (and plus the max) of the samples in its segment (the segment: the
    argmax of its first three features): segment_sum and segment_max reduce over the batch, take
    reads the segments' rows back per sample; values as numpy's, and one SGD step through it as
    finite differences of the same loss in numpy."""
    x = RNG.normal(size=(7, 4)).astype(np.float32)
    y = RNG.normal(size=(7, 4)).astype(np.float32)

    def grouped(v):
        ids = ops.argmax(v[:, :3], axis=-1)
        totals = ops.segment_sum(v, ids, num_segments=3)
        maxima = ops.segment_max(v, ids, num_segments=3)
        return v - ops.take(totals, ids, axis=0) * 0.5 + ops.take(maxima, ids, axis=0)

    def numpy_grouped(v):
        ids = np.argmax(v[:, :3], axis=-1)
        totals = np.stack([v[ids == s].sum(0) for s in range(3)])
        maxima = np.stack([v[ids == s].max(0) if (ids == s).any() else np.full(4, -np.inf)
                           for s in range(3)])
        return v - totals[ids] * 0.5 + maxima[ids]

    kernel0 = (np.eye(4) + RNG.normal(size=(4, 4)) * 0.1).astype(np.float32)
    model = Sequential([Input((4,)), Dense(4, use_bias=False), Lambda(grouped)])
    model.compile(optimizer=kcompile.optimizers.SGD(0.1), loss="mse", target=target)
    model.set_weights([kernel0])
    np.testing.assert_allclose(model.predict(x, batch_size=7, verbose=0),
                               numpy_grouped(x.astype(np.float64) @ kernel0), rtol=1e-5, atol=1e-5)

    def loss(kernel):
        return np.mean((numpy_grouped(x.astype(np.float64) @ kernel) - y) ** 2)

    numeric = np.zeros((4, 4))
    for j in range(16):
        step = np.zeros(16)
        step[j] = 1e-6
        numeric.reshape(-1)[j] = (loss(kernel0 + step.reshape(4, 4)) -
                                  loss(kernel0 - step.reshape(4, 4))) / 2e-6
    model.fit(x, y, batch_size=7, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], kernel0 - 0.1 * numeric, rtol=1e-4,
                               atol=1e-5)


THIRD = [
    ("sinc", ops.sinc, np.sinc),
    ("fmod", lambda v: ops.fmod(v * 5.0, 1.5), lambda a: np.fmod(a * 5, 1.5)),
    ("cross", lambda v: ops.cross(v[:, :, :3], v[:, :, 2:]),
     lambda a: np.cross(a[:, :, :3], a[:, :, 2:])),
    ("digitize", lambda v: ops.digitize(v, [-1.0, 0.0, 0.5]),
     lambda a: np.digitize(a, [-1.0, 0.0, 0.5])),
    ("searchsorted", lambda v: ops.searchsorted(np.float32([-1, 0, 0.5]), v, side="right"),
     lambda a: np.searchsorted(np.float32([-1, 0, 0.5]), a.astype(np.float32), side="right")),
    ("isin", lambda v: ops.isin(ops.round(v * 2.0), [0.0, 1.0, -3.0]),
     lambda a: np.isin(np.round(a * 2), [0.0, 1.0, -3.0])),
    ("nansum", lambda v: ops.nansum(ops.log(v), axis=2), lambda a: np.nansum(np.log(a), axis=2)),
    ("nanmean", lambda v: ops.nanmean(ops.log(v), axis=1, keepdims=True),
     lambda a: np.nanmean(np.log(a), axis=1, keepdims=True)),
    ("nanmax", lambda v: ops.nanmax(ops.log(v), axis=2), lambda a: np.nanmax(np.log(a), axis=2)),
    ("nanmin", lambda v: ops.nanmin(ops.log(v), axis=2), lambda a: np.nanmin(np.log(a), axis=2)),
    ("trapezoid", lambda v: ops.trapezoid(v, axis=1), lambda a: np.trapezoid(a, axis=1)),
    ("trapezoid x", lambda v: ops.trapezoid(v, np.float32([0, 1, 3, 3.5, 5])),
     lambda a: np.trapezoid(a, np.float32([0, 1, 3, 3.5, 5]))),
    ("real", lambda v: ops.real(v) + ops.imag(v), lambda a: a),
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("target", TARGETS)
def test_the_third_set_on_a_batch_as_numpys(target):
    x = RNG.normal(size=(6, 4, 5)).astype(np.float32)
    x[0] = -np.abs(x[0])                    # a row of logs that are all NaN
    with np.errstate(all="ignore"):
        wants = [np.asarray(reference(x.astype(np.float64))) for _, _, reference in THIRD]
    sizes = [int(np.prod(w.shape[1:])) for w in wants]

    def everything(v):
        return ops.concatenate([ops.reshape(ops.cast(fn(v), "float32"), (-1, size))
                                for (_, fn, _), size in zip(THIRD, sizes)], axis=-1)

    got = _predict(everything, x, target)
    start = 0
    for (name, fn, _), want, size in zip(THIRD, wants, sizes):
        part = got[:, start:start + size].reshape(want.shape)
        start += size
        np.testing.assert_allclose(part, want, rtol=2e-6, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(fn(x), want, rtol=2e-6, atol=2e-6, err_msg=name)


def test_the_third_set_small_things():
    np.testing.assert_array_equal(ops.kron(np.arange(4.0).reshape(2, 2), np.arange(6.0).reshape(2, 3)),
                                  np.kron(np.arange(4.0).reshape(2, 2), np.arange(6.0).reshape(2, 3)))
    np.testing.assert_array_equal(ops.vander(np.float32([1, 2, 3])), np.vander([1, 2, 3]))
    np.testing.assert_array_equal(ops.vander(np.float32([1, 2]), 3, True), np.vander([1, 2], 3, True))
    np.testing.assert_array_equal(ops.fmod(np.int32([-7, 7]), np.int32([2, 2])), [-1, 1])
    assert ops.fmod(np.int32([-7]), np.int32([2])).dtype == np.int32
    np.testing.assert_array_equal(ops.segment_max(np.float32([1, 2, 3]), np.int32([0, 0, 2]), 3),
                                  [2, -np.inf, 3])
    np.testing.assert_array_equal(ops.segment_sum(np.arange(6).reshape(3, 2), [0, 0, 1], 2),
                                  [[2, 4], [4, 5]])
    with pytest.raises(ValueError, match="num_segments"):
        ops.segment_sum(np.float32([1, 2]), [0, 1])
    with pytest.raises(NotImplementedError, match="3-vectors"):
        ops.cross(np.float32([1, 2]), np.float32([3, 4]))
    with pytest.raises(ValueError, match="increasing"):
        ops.digitize(np.float32([1]), [2.0, 1.0])
    analytic, numeric = _fd_gradient(lambda v: ops.sinc(v) + ops.trapezoid(v, dx=0.5),
                                     np.array([-1.3, 0.0, 0.4, 2.2]))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
