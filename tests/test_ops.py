"""Every primitive, compiled, against the reference interpreter; gradients against finite differences.

The cases live in tests/opinfo.py (one `OpCase` per graph).  For each:
  (a) the compiled function (fusion level 0 and 1) against `ir.run` at batch sizes 1, 3 and 17, all from
      ONE compiled function (the batch size is a runtime argument);
  (b) for differentiable cases, `ir.gradients` in float64 against central finite differences, on the
      interpreter;
  (c) the float32 gradient graph compiled against the same graph interpreted.
Then the cases a table cannot express well: random bits bit for bit, math functions at special values
in ulps, numpy's NaN semantics, stop_gradient, and random broadcasting shapes with hypothesis.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from ir import build as B
from ir.graph import Graph
from ir.ops import REGISTRY, random_bits

from opinfo import (BATCHES, CASES, N, _RUNNERS, assert_matches, check_compiled, compiled_runner,
                    forward_graph, loss_graphs, make_feeds, ulp_distance)

LEVELS = (0, 1)
GRAD_CASES = [c for c in CASES if c.grad]
FD_CASES = [c for c in GRAD_CASES if c.fd]


def _ids(cases):
    return [c.name for c in cases]


def test_table_covers_every_registry_op():
    covered = {c.op for c in CASES}
    missing = sorted(set(REGISTRY) - covered - {"arg", "const"})
    assert not missing, f"ops without an OpCase in tests/opinfo.py: {missing}"
    unknown = sorted(covered - set(REGISTRY))
    assert not unknown, f"OpCases name ops the registry does not have: {unknown}"
    # every case really contains the op it claims to test
    for case in CASES:
        ops_in_graph = {n.op for n in forward_graph(case).nodes()}
        assert case.op in ops_in_graph, f"{case.name} builds no {case.op} node: {sorted(ops_in_graph)}"


def test_every_differentiable_op_has_a_finite_difference_case():
    differentiable = {name for name, d in REGISTRY.items() if d.grad.__name__ != "no_grad"}
    covered = {c.op for c in FD_CASES}
    assert differentiable <= covered, f"no gradient case for {sorted(differentiable - covered)}"


# -- (a) compiled vs reference ------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NaN, inf and overflow inputs are on purpose
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_compiled_matches_reference(case, level):
    graph = forward_graph(case)
    compiles = len(_RUNNERS)
    # passes=(): each op's own lowering runs, not what the pass pipeline would make of the graph
    runner = check_compiled(graph, lambda batch: make_feeds(graph, case, batch), level, passes=(),
                            rtol=case.rtol, atol=case.atol, ulp=case.ulp, what=case.name)
    # the three batch sizes ran on one compiled function
    assert len(_RUNNERS) <= compiles + 1 and compiled_runner(graph, level, passes=()) is runner


# -- (b) gradients vs finite differences, float64, interpreter -----------------------------------

def finite_difference(loss_graph: Graph, feeds: dict, name: str, eps: float) -> np.ndarray:
    base = feeds[name]
    out = np.zeros(base.shape, dtype=np.float64)
    for j in range(base.size):
        values = []
        for step in (eps, -eps):
            x = base.copy()
            x.reshape(-1)[j] += step
            values.append(float(ir.run(loss_graph, {**feeds, name: x})["loss"]))
        out.reshape(-1)[j] = (values[0] - values[1]) / (2 * eps)
    return out


@pytest.mark.parametrize("case", FD_CASES, ids=_ids(FD_CASES))
def test_gradient_matches_finite_differences(case):
    loss_graph, grad_graph = loss_graphs(case, "f64")
    ir.verify(grad_graph)
    feeds = make_feeds(grad_graph, case, batch=3)
    analytic = ir.run(grad_graph, feeds)
    wrt = [name for name in analytic if name.startswith("d_")]
    assert wrt, f"{case.name}: nothing to differentiate"
    for out_name in wrt:
        name = out_name[2:]
        numeric = finite_difference(loss_graph, feeds, name, case.grad_eps)
        np.testing.assert_allclose(analytic[out_name], numeric, rtol=case.grad_rtol,
                                   atol=case.grad_atol, err_msg=f"{case.name}: d loss / d {name}")


def test_stop_gradient_blocks_the_gradient():
    x = B.arg("x", "f64", (N, 3))
    y = B.reduce_sum(B.mul(B.stop_gradient(x), x))      # d/dx = stop_gradient(x) = x, not 2x
    z = B.reduce_sum(B.stop_gradient(B.exp(x)))          # d/dx = 0
    (gy,) = ir.gradients(y, [x])
    (gz,) = ir.gradients(z, [x])
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 3))}
    out = ir.run(Graph("sg", [x], [("gy", gy), ("gz", gz)]), feeds)
    np.testing.assert_array_equal(out["gy"], feeds["x"])
    np.testing.assert_array_equal(out["gz"], np.zeros((4, 3)))


def test_abs_gradient_at_zero_is_one_as_jax():
    x = B.arg("x", "f32", (N, 3))
    (gx,) = ir.gradients(B.reduce_sum(B.abs(x)), [x])
    graph = Graph("abs0", [x], [("gx", gx)])
    feeds = {"x": np.array([[0.0, 1.5, -2.0], [-0.0, -1e-30, 1e-30]], np.float32)}
    want = np.array([[1, 1, -1], [1, -1, 1]], np.float32)     # -0.0 >= 0 too
    np.testing.assert_array_equal(ir.run(graph, feeds)["gx"], want)
    check_compiled(graph, lambda batch: feeds, 1, batches=(2,), what="abs at 0")


@pytest.mark.parametrize("keepdims", [False, True])
def test_reduce_max_gradient_is_shared_among_ties(keepdims):
    """JAX's rule for jnp.max: positions tied for the maximum share the gradient equally (hand-
    computed); the compiled backward agrees."""
    x = B.arg("x", "f32", (N, 3))
    w = B.arg("w", "f32", (N, 1) if keepdims else (N,))
    (gx,) = ir.gradients(B.reduce_sum(B.mul(B.reduce_max(x, 1, keepdims=keepdims), w)), [x])
    graph = Graph("max_ties", [x, w], [("gx", gx)])
    feeds = {"x": np.array([[1, 3, 3], [2, 2, 2], [0, -1, 5]], np.float32),
             "w": np.array([2.0, 3.0, 4.0], np.float32).reshape((3, 1) if keepdims else (3,))}
    want = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 4]], np.float32)
    np.testing.assert_allclose(ir.run(graph, feeds)["gx"], want, rtol=1e-6)
    check_compiled(graph, lambda batch: feeds, 1, rtol=1e-6, atol=1e-6, batches=(3,),
                   what="reduce_max ties")


# -- (c) compiled backward vs interpreted backward -------------------------------------------------

@pytest.mark.parametrize("case", GRAD_CASES, ids=_ids(GRAD_CASES))
def test_compiled_backward_matches_reference(case):
    """As `fit` compiles a train step: the default pass pipeline, fusion level 1.  (Fusion level 0 of
    composite graphs is compared with level 1 in tests/test_fusion.py.)"""
    _, grad_graph = loss_graphs(case, "f32")
    check_compiled(grad_graph, lambda batch: make_feeds(grad_graph, case, batch, salt=1), 1,
                   rtol=max(case.rtol, 1e-5), atol=max(case.atol, 1e-4), what=f"{case.name} backward")


# -- random bits, exactly ------------------------------------------------------------------------

def test_random_uniform_bits_equal_reference_exactly():
    seed = B.arg("seed", "u32", ())
    x = B.arg("x", "f32", (N, 3))
    streams = [0, 1, 7, 0x9E3779B9, 0xFFFFFFFF]
    shapes = [(), (1,), (5,), (3, 7), (2, 3, 4), (N, 3), (N, 2, 5)]
    outputs = [(f"s{i}_{j}", B.random_uniform(seed, shape, stream))
               for i, stream in enumerate(streams) for j, shape in enumerate(shapes)]
    graph = Graph("random", [seed, x], outputs + [("x", B.neg(x))])
    runner = compiled_runner(graph, 1)
    for seed_value in [0, 1, 42, 2**31, 2**32 - 1]:
        for batch in BATCHES:
            feeds = {"seed": np.uint32(seed_value), "x": np.zeros((batch, 3), np.float32)}
            expected, actual = ir.run(graph, feeds), runner.run(feeds)
            for name, _ in outputs:
                np.testing.assert_array_equal(actual[name].view(np.uint32), expected[name].view(np.uint32),
                                              err_msg=f"{name} seed={seed_value} batch={batch}")
    # the reference itself: uniform in [0, 1) with 24 random bits, distinct streams differ
    bits = random_bits(np.uint32(3), np.uint32(0), np.arange(1000, dtype=np.uint32))
    other = random_bits(np.uint32(3), np.uint32(1), np.arange(1000, dtype=np.uint32))
    assert (bits != other).mean() > 0.99
    values = ir.run(graph, {"seed": np.uint32(3), "x": np.zeros((1, 3), np.float32)})["s0_4"]
    assert values.min() >= 0.0 and values.max() < 1.0


# -- math functions at special values, in ulps ----------------------------------------------------

def _special_inputs(dtype):
    tiny = np.finfo(dtype).tiny
    values = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-3, -1e-3, tiny, tiny / 8,
              -tiny, 1e-30, 10.0, -10.0, 20.0, -20.0, 50.0, -50.0, 88.0, 88.8, -87.0, -100.0, -104.0,
              89.0, 700.0, 709.0, 710.0, -740.0, -750.0, 1e30, -1e30, np.finfo(dtype).max, 0.625,
              -0.625, 0.6249, 9.0, 1 - 1e-6, 1 + 1e-6]
    x = np.array(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        return x.astype(dtype)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("op", ["exp", "log", "tanh", "sqrt"])
def test_math_at_special_values(op, dtype):
    np_type = np.float32 if dtype == "f32" else np.float64
    values = _special_inputs(np_type)
    x = B.arg("x", dtype, (len(values),))
    graph = Graph(f"special_{op}", [x], [("y", getattr(B, op)(x))])
    actual = compiled_runner(graph, 1).run({"x": values})["y"]
    expected = ir.run(graph, {"x": values})["y"]
    tolerance = {"exp": dict(ulp=4), "log": dict(ulp=4), "sqrt": dict(ulp=0),
                 "tanh": dict(ulp=4, atol=1e-6 if dtype == "f32" else 0.0)}[op]
    assert_matches(actual, expected, what=f"{op} {dtype} at {values}", **tolerance)
    # signed zeros are preserved where IEEE says so
    if op in ("tanh", "sqrt"):
        zero = np.flatnonzero(values == 0)
        np.testing.assert_array_equal(np.signbit(actual[zero]), np.signbit(values[zero]))


def test_ulp_distance_helper():
    one = np.float32(1)
    assert ulp_distance(np.array([one]), np.array([np.nextafter(one, np.float32(2))]))[0] == 1
    assert ulp_distance(np.array([np.float32(-0.0)]), np.array([np.float32(0.0)]))[0] == 0
    tiny = np.float32(1.4e-45)
    assert ulp_distance(np.array([-tiny]), np.array([tiny]))[0] == 2


# -- NaN semantics: numpy's, whatever the fusion ----------------------------------------------------

@pytest.mark.parametrize("level", LEVELS)
def test_nan_semantics_match_numpy(level):
    a = B.arg("a", "f32", (N, 8))
    b = B.arg("b", "f32", (N, 8))
    ops = {"max": B.maximum, "min": B.minimum, "gt": B.gt, "ge": B.ge, "lt": B.lt, "le": B.le,
           "eq": B.eq, "ne": B.ne}
    graph = Graph("nan", [a, b], [(k, fn(a, b)) for k, fn in ops.items()]
                  + [("rmax", B.reduce_max(a, 1)), ("argmax", B.argmax(a, 1))])
    nan, inf = np.nan, np.inf
    av = np.array([[nan, 1, nan, inf, -inf, 0, nan, 2],
                   [1, nan, inf, nan, nan, -0.0, 3, nan],
                   [1, 2, 3, 4, 5, 6, 7, 8]], np.float32)
    bv = np.array([[1, nan, nan, nan, 0, -0.0, -inf, 2],
                   [1, 2, inf, -inf, 5, 0, nan, 1],
                   [nan] * 8], np.float32)
    got = compiled_runner(graph, level).run({"a": av, "b": bv})
    numpy = {"max": np.maximum, "min": np.minimum, "gt": np.greater, "ge": np.greater_equal,
             "lt": np.less, "le": np.less_equal, "eq": np.equal, "ne": np.not_equal}
    for name, fn in numpy.items():
        np.testing.assert_array_equal(got[name], fn(av, bv), err_msg=name)
    np.testing.assert_array_equal(got["rmax"], np.max(av, axis=1))
    np.testing.assert_array_equal(got["argmax"], np.argmax(av, axis=1))


# -- integer division and float -> integer casts: defined everywhere, never a trap -----------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("level", LEVELS)
def test_integer_division_by_zero_gives_zero_and_casts_to_integers_saturate(level):
    """Integer `div` truncates toward zero, gives 0 for a zero divisor and wraps i32's minimum / -1
    (a hardware divide would kill the process with SIGFPE); a float -> integer cast truncates and
    saturates, NaN giving 0 (as Keras's on JAX).  Hand-computed values, compiled and interpreted,
    and a reduce_mean of integers over an empty batch."""
    lo = -2**31
    a, b = B.arg("a", "i32", (N, 6)), B.arg("b", "i32", (N, 6))
    ua, ub = B.arg("ua", "u32", (N, 3)), B.arg("ub", "u32", (N, 3))
    x = B.arg("x", "f32", (N, 8))
    graph = Graph("intdiv", [a, b, ua, ub, x],
                  [("q", B.div(a, b)), ("uq", B.div(ua, ub)), ("i", B.cast(x, "i32")),
                   ("u", B.cast(x, "u32")), ("mean", B.reduce_mean(a, 0))])
    feeds = {"a": np.array([[7, -7, 5, lo, lo, 3]], np.int32),
             "b": np.array([[2, 2, 0, -1, 1, -4]], np.int32),
             "ua": np.array([[7, 2**32 - 1, 9]], np.uint32),
             "ub": np.array([[2, 0, 10]], np.uint32),
             "x": np.array([[np.nan, np.inf, -np.inf, 1e10, -1e10, -1.9, 2.9, -0.5]], np.float32)}
    want = {"q": [[3, -3, 0, lo, lo, 0]], "uq": [[3, 0, 0]],
            "i": [[0, 2**31 - 1, lo, 2**31 - 1, lo, -1, 2, 0]],
            "u": [[0, 2**32 - 1, 0, 2**32 - 1, 0, 0, 2, 0]], "mean": [7, -7, 5, lo, lo, 3]}
    for got in (compiled_runner(graph, level).run(feeds), ir.run(graph, feeds)):
        for name, values in want.items():
            np.testing.assert_array_equal(got[name], np.array(values, got[name].dtype),
                                          err_msg=name)
    empty = {k: v[:0] for k, v in feeds.items()}
    for got in (compiled_runner(graph, level).run(empty), ir.run(graph, empty)):
        np.testing.assert_array_equal(got["mean"], np.zeros(6, np.int32))


# -- random broadcasting shapes ---------------------------------------------------------------------

_BINARY = {"add": B.add, "sub": B.sub, "mul": B.mul, "max": B.maximum, "min": B.minimum, "gt": B.gt,
           "select": lambda a, b: B.select(B.gt(a, b), a, b)}


@st.composite
def broadcast_pairs(draw):
    rank = draw(st.integers(1, 4))
    dims = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    batched = draw(st.booleans())

    def operand():
        keep = draw(st.integers(0, rank))        # leading dims dropped (numpy right-aligns)
        shape = [d if draw(st.booleans()) else 1 for d in dims][rank - keep:] if keep else []
        if batched and keep == rank:
            shape[0] = N if draw(st.booleans()) else 1
        return tuple(shape)
    a, b = operand(), operand()
    if batched and not any(s and s[0] is None and len(s) == rank for s in (a, b)):
        a = (N,) + tuple(dims[1:])
    return a, b


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shapes=broadcast_pairs(), op=st.sampled_from(sorted(_BINARY)), batch=st.integers(1, 20),
       seed=st.integers(0, 2**16))
def test_elementwise_broadcast_random_shapes(shapes, op, batch, seed):
    shape_a, shape_b = shapes
    a, b = B.arg("a", "f32", shape_a), B.arg("b", "f32", shape_b)
    graph = Graph("bcast", [a, b], [("y", _BINARY[op](a, b))])
    rng = np.random.default_rng(seed)
    feeds = {n.attr("name"): rng.normal(size=n.type.concrete_shape(batch)).astype(np.float32)
             for n in graph.inputs}
    expected = ir.run(graph, feeds)["y"]
    actual = compiled_runner(graph, 1).run(feeds)["y"]
    assert_matches(actual, expected, what=f"{op} {shape_a} {shape_b} batch {batch}")


def test_axis_arguments_out_of_range_are_refused_not_wrapped():
    from ir import build as B
    from kcompile import ops
    x = B.arg("x", "f32", (None, 3, 4))
    column = B.arg("c", "f32", (None, 1))
    assert ops.transpose(x, (0, 2, 1)).shape == (None, 4, 3)
    assert ops.expand_dims(x, -1).shape == (None, 3, 4, 1)
    assert ops.squeeze(column, -1).shape == (None,)
    for call, message in [(lambda: ops.transpose(x, (0, 5, 4)), "axis 5 is out of range"),
                          (lambda: ops.transpose(x, (0, 1, 1)), "not a permutation"),
                          (lambda: ops.expand_dims(x, 5), "axis 5 is out of range"),
                          (lambda: ops.squeeze(column, 3), "axis 3 is out of range")]:
        with pytest.raises(ValueError, match=message):
            call()


def test_an_input_layer_reports_the_dtype_of_its_inputs():
    from kcompile import layers
    assert layers.InputLayer(shape=(3,), dtype="int32").dtype == "int32"
    assert layers.InputLayer(shape=(3,)).dtype == "float32"
