"""The step driver (codegen/step.py): one native call per step gathers the batch through the epoch's
order, bumps a counter input and accumulates outputs; checked against a Python loop over the plain
entry function (bit for bit) and against the reference runner."""
from __future__ import annotations

import numpy as np
import pytest

import ir
from codegen.runtime import CompiledRunner
from ir import build as B
from kcompile.backend import ReferenceRunner


def graph():
    x = B.arg("x", "f32", (None, 3))
    y = B.arg("y", "f32", (None,))
    seed = B.arg("seed", "u32", ())
    w = B.arg("w", "f32", (3,))
    pred = B.reduce_sum(B.mul(x, w), (1,))
    d = B.sub(pred, y)
    return ir.Graph("g", [x, y, seed, w], [
        ("loss", B.reduce_mean(B.mul(d, d), (0,))),
        ("column_sums", B.reduce_sum(x, (0,))),
        ("y_sum", B.reduce_sum(y, (0,))),
        ("seed_seen", B.cast(seed, "f32")),
    ])


ACCUMULATE = [("loss", "mean"), ("column_sums", "sum"), ("y_sum", "sum"), ("seed_seen", "sum")]


def data(rows=23, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 3)).astype(np.float32),
            rng.standard_normal(rows).astype(np.float32),
            {"w": rng.standard_normal(3).astype(np.float32)})


def python_loop(runner, x, y, order, batch, first_seed):
    """What the training loop did before the driver: np.take, call, add in Python."""
    x_stage = np.empty((batch, 3), np.float32)
    y_stage = np.empty(batch, np.float32)
    seed = np.zeros((), np.uint32)
    runner.bind({"x": x_stage, "y": y_stage, "seed": seed})
    loss_total, columns, y_sum, seeds = 0.0, 0.0, 0.0, 0.0
    for step, start in enumerate(range(0, len(order), batch)):
        index = order[start:start + batch]
        rows = len(index)
        np.take(x, index, axis=0, out=x_stage[:rows])
        np.take(y, index, axis=0, out=y_stage[:rows])
        seed[...] = (first_seed + step) & 0xFFFFFFFF
        runner.call(rows, 0)
        loss_total += float(runner.output("loss", rows)) * rows
        columns = columns + runner.output("column_sums", rows)
        y_sum += float(runner.output("y_sum", rows))
        seeds += float(runner.output("seed_seen", rows))
    return loss_total, columns, y_sum, seeds


def run_driver(runner, x, y, order, batch, first_seed):
    seed = np.full((), first_seed, np.uint32)
    acc = runner.bind_epoch({"x": x, "y": y, "seed": seed}, index=order, max_rows=batch,
                            counters=("seed",), accumulate=ACCUMULATE)
    limit = len(order) if order is not None else len(x)
    for start in range(0, limit, batch):
        runner.step(min(batch, limit - start), start)
    return acc, seed


@pytest.mark.parametrize("shuffled", [True, False])
def test_driver_matches_a_python_loop_bit_for_bit_and_the_reference(shuffled):
    x, y, state = data()
    order = np.random.default_rng(5).permutation(len(x)) if shuffled else None
    compiled = CompiledRunner(graph(), dict(state))
    acc, seed = run_driver(compiled, x, y, order, 5, 7)
    loss_total, columns, y_sum, seeds = python_loop(
        CompiledRunner(graph(), dict(state)), x, y,
        order if shuffled else np.arange(len(x)), 5, 7)
    assert acc["loss"][0] == loss_total
    np.testing.assert_array_equal(acc["column_sums"], columns)
    assert acc["y_sum"][0] == y_sum
    assert acc["seed_seen"][0] == seeds == sum(float(np.float32(7 + k)) for k in range(5))
    assert seed == 7 + 5          # five steps of 5, 5, 5, 5, 3 rows
    reference_acc, reference_seed = run_driver(ReferenceRunner(graph(), dict(state)), x, y, order,
                                               5, 7)
    for name in acc:
        np.testing.assert_allclose(acc[name], reference_acc[name], rtol=1e-5)
    assert reference_seed == seed


def test_counter_wraps_as_uint32():
    x, y, state = data(rows=6)
    for runner in (CompiledRunner(graph(), dict(state)), ReferenceRunner(graph(), dict(state))):
        _, seed = run_driver(runner, x, y, None, 2, 2**32 - 2)
        assert seed == 1


def test_gathered_rows_come_from_the_order():
    x, y, state = data(rows=8)
    order = np.array([7, 7, 0, 3], np.int64)
    runner = CompiledRunner(graph(), dict(state))
    acc, _ = run_driver(runner, x, y, order, 3, 0)
    np.testing.assert_allclose(acc["column_sums"], x[order].sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(acc["y_sum"][0], y[order].sum(), rtol=1e-6)


@pytest.mark.parametrize("make", [CompiledRunner, ReferenceRunner])
def test_bad_epochs_are_refused_before_any_native_code_runs(make):
    x, y, state = data(rows=8)
    runner = make(graph(), dict(state))
    seed = np.zeros((), np.uint32)
    feeds = {"x": x, "y": y, "seed": seed}
    with pytest.raises(ValueError, match="row indices must lie in"):
        runner.bind_epoch(feeds, index=np.array([0, 8]), max_rows=2)
    with pytest.raises(ValueError, match="row indices must lie in"):
        runner.bind_epoch(feeds, index=np.array([-1, 2]), max_rows=2)
    with pytest.raises(ValueError, match="max_rows"):
        runner.bind_epoch(feeds, index=np.array([0, 1]))
    with pytest.raises(TypeError, match="counter 'y'"):
        runner.bind_epoch(feeds, counters=("y",))
    with pytest.raises(TypeError, match="cannot accumulate output 'loss'"):
        runner.bind_epoch(feeds, accumulate=[("loss", "max")])
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        runner.bind_epoch({"x": x, "y": y[:5], "seed": seed})
    runner.bind_epoch(feeds, index=np.array([1, 2, 3]), max_rows=2)
    with pytest.raises(ValueError, match="outside the bound epoch"):
        runner.step(3, 0)          # more rows than the staging buffer
    with pytest.raises(ValueError, match="outside the bound epoch"):
        runner.step(2, 2)          # past the end of the order
