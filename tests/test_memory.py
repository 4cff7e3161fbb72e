"""Memory planning (ir.memory.plan_memory): values alive at the same time never share bytes, reuse never
costs memory, and compiled results do not depend on it; the arena grows and shrinks with the batch.

Liveness is recomputed here from the schedule (a value lives from the kernel that produces it to the
last kernel that reads it, both included) rather than taken from the planner.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import ir
from ir import build as B
from ir.fusion import fuse, group_inputs
from ir.graph import Graph
from ir.memory import ALIGN, plan_memory

from opinfo import (CASES, N, assert_matches, compiled_runner, cross_entropy_graph, dense_relu_graph,
                    flatten_graph, loss_graphs, mlp_batch, mlp_state, mlp_train_step_graph, softmax_graph)


def transposed_update_graph():
    x = B.arg("x", "f32", (N, 32))
    w = B.arg("w", "f32", (32, 32))
    return Graph("transposed", [x, w], [("w", B.sub(w, B.mul(B.transpose(w, (1, 0)), 0.5))),
                                        ("y", B.relu(B.matmul(x, w)))])


def test_in_place_update_that_reads_its_buffer_transposed_is_copied_in_afterwards():
    graph = transposed_update_graph()
    for level in (0, 1):
        fused = fuse(graph, level)
        plan = plan_memory(fused)
        value = graph.output("w")
        writer = next(g for g in fused.groups if value in g.outputs)
        reads_w_transposed = level == 1 or value.op == "transpose"
        if reads_w_transposed:
            assert plan.slots[value].where == "arena" and ("w", value) in plan.copies
        else:
            assert plan.slots[value] == plan.slots[graph.input("w")], writer
    runner = compiled_runner(graph, 1)
    state = {"w": np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)}
    feeds = {"x": np.ones((3, 32), np.float32)}
    reference = ir.run(graph, {**feeds, **state})
    got = type(runner)(graph, state, compiled=runner.compiled).run(feeds)
    assert_matches(state["w"], reference["w"], rtol=1e-6, what="w")
    assert_matches(got["y"], reference["y"], rtol=1e-5, atol=1e-5, what="y")


def _grad_graph(name):
    (case,) = [c for c in CASES if c.name == name]
    return loss_graphs(case, "f32")[1]


GRAPHS = {
    "train_step": mlp_train_step_graph,
    "flatten": flatten_graph,
    "cross_entropy": cross_entropy_graph,
    "softmax": softmax_graph,
    "dense_relu": dense_relu_graph,
    "reduce_max_backward": lambda: _grad_graph("reduce_max-f32"),
    "matmul_ta_backward": lambda: _grad_graph("matmul_3d_ta-f32"),
    "broadcast_backward": lambda: _grad_graph("broadcast_mid-f32"),
    "transposed_in_place": transposed_update_graph,
}


def live_ranges(fused, plan) -> dict:
    """node -> (first step, last step) for every value a kernel materializes (reading a reshape that
    aliases a value's buffer reads that value; the copies into outputs run after the last kernel)."""
    aliases = getattr(fused, "aliases", {})
    ranges: dict = {}
    for step, group in enumerate(fused.groups):
        for node in group.outputs + ([group.anchor] if group.anchor is not None else []):
            first, last = ranges.get(node, (step, step))
            ranges[node] = (first, max(last, step))
        for node in group_inputs(group):
            node = aliases.get(node, node)
            if node in ranges:
                ranges[node] = (ranges[node][0], step)
    for _, node in plan.copies:
        if node in ranges:
            ranges[node] = (ranges[node][0], len(fused.groups))
    return ranges


def byte_range(plan, node, batch: int) -> tuple:
    """[start, end) of `node` in the arena for `batch` rows."""
    slot = plan.slots[node]
    size = node.type.static_size * node.type.itemsize
    if slot.region == "static":
        return slot.offset, slot.offset + size
    start = plan.static_bytes + batch * slot.offset
    return start, start + batch * size


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no_reuse"])
@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_values_alive_together_never_overlap(name, level, reuse):
    graph = GRAPHS[name]()
    fused = fuse(graph, level)
    plan = plan_memory(fused, reuse=reuse)
    ranges = live_ranges(fused, plan)
    # every value a kernel reads or writes has a home
    for group in fused.groups:
        for node in group_inputs(group) + group.outputs:
            assert node in plan.slots, f"{node} of kernel {group.name} has no slot"
    aliases = getattr(fused, "aliases", {})
    for node, base in aliases.items():
        assert node.type.static_size == base.type.static_size and node.dtype == base.dtype
        if base in plan.slots:
            assert plan.slots[node] == plan.slots[base], f"{node} is a view of {base}"
    arena = [n for n, s in plan.slots.items() if s.where == "arena" and n not in aliases]
    for node in arena:
        slot = plan.slots[node]
        assert node in ranges, f"{node} is in the arena but no kernel produces it"
        assert slot.region == ("batch" if node.type.batched else "static"), (node, slot)
        assert slot.offset % ALIGN == 0, (node, slot)
        total = plan.batch_bytes if slot.region == "batch" else plan.static_bytes
        assert slot.offset + node.type.static_size * node.type.itemsize <= total, (node, slot)
    # in-place updates live in their input's buffer (or, when their kernel reads that buffer at other
    # indices, in the arena, copied over after the last kernel)
    inputs = {n.attr("name"): i for i, n in enumerate(graph.inputs)}
    for out_name, value in graph.outputs:
        slot = plan.slots.get(value)
        if out_name in inputs and value.op != "arg" and slot is not None:
            assert ((slot.where, slot.index) == ("input", inputs[out_name])
                    or (slot.where == "arena" and (out_name, value) in plan.copies)), (out_name, slot)
    # all pairs alive at once, across both regions, at several batch sizes
    for a, b in itertools.combinations(arena, 2):
        (a0, a1), (b0, b1) = ranges[a], ranges[b]
        if a1 < b0 or b1 < a0:
            continue
        for batch in (1, 2, 17, 100):
            (s, e), (t, f) = byte_range(plan, a, batch), byte_range(plan, b, batch)
            assert e <= t or f <= s, (f"{a} (steps {ranges[a]}, bytes {s}-{e}) and {b} (steps "
                                      f"{ranges[b]}, bytes {t}-{f}) overlap at batch {batch}")
    if not reuse:
        # without reuse nothing shares a byte at all
        spans = sorted(byte_range(plan, n, 3) for n in arena)
        assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:]))


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_reuse_never_needs_more_memory(name, level):
    fused = fuse(GRAPHS[name](), level)
    with_reuse, without = plan_memory(fused, reuse=True), plan_memory(fused, reuse=False)
    assert with_reuse.static_bytes <= without.static_bytes
    assert with_reuse.batch_bytes <= without.batch_bytes
    for batch in (1, 32, 1000):
        assert with_reuse.peak_bytes(batch) <= without.peak_bytes(batch)


def test_reuse_saves_memory_on_a_train_step():
    fused = fuse(mlp_train_step_graph(), level=0)
    assert plan_memory(fused).peak_bytes(64) < plan_memory(fused, reuse=False).peak_bytes(64)
    plan = plan_memory(fused)
    assert f"peak {plan.static_bytes + 32 * plan.batch_bytes} bytes at batch 32" in plan.report()
    dot = ir.to_dot(fused.graph, [(g.name, g.kind, g.members) for g in fused.groups])
    assert dot.count('subgraph "cluster_') == len(fused.groups)


def _train_runner(level, reuse, state):
    base = compiled_runner(mlp_train_step_graph(), level, reuse_memory=reuse)
    return type(base)(base.compiled.graph, state, compiled=base.compiled)


@pytest.mark.parametrize("level", [0, 1])
def test_results_do_not_depend_on_reuse(level):
    states, results = {}, {}
    for reuse in (True, False):
        states[reuse] = mlp_state(np.random.default_rng(1))
        runner = _train_runner(level, reuse, states[reuse])
        results[reuse] = [runner.run(mlp_batch(np.random.default_rng(i), batch, seed=i))
                          for i, batch in enumerate((17, 2, 40))]
    for step, (a, b) in enumerate(zip(results[True], results[False])):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"step {step} {name}")
    for name in states[True]:
        np.testing.assert_array_equal(states[True][name], states[False][name], err_msg=name)
    graph = cross_entropy_graph()
    feeds = {"logits": np.random.default_rng(2).normal(size=(9, 7)).astype(np.float32),
             "labels": np.eye(7, dtype=np.float32)[np.arange(9) % 7]}
    a = compiled_runner(graph, level, reuse_memory=True).run(feeds)
    b = compiled_runner(graph, level, reuse_memory=False).run(feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("level", [0, 1])
def test_arena_grows_and_shrinks_with_the_batch(level):
    """Batch 2, then 100 (the workspace and output buffers grow), then 1 and 100 again (they are
    reused, holding stale values that no kernel may read)."""
    graph = mlp_train_step_graph()
    reference_state = mlp_state(np.random.default_rng(5))
    state = mlp_state(np.random.default_rng(5))
    runner = _train_runner(level, True, state)
    plan = runner.compiled.plan
    for step, batch in enumerate((2, 100, 1, 100, 3)):
        feeds = mlp_batch(np.random.default_rng(step), batch, seed=step)
        reference = ir.run(graph, {**feeds, **reference_state})
        if step >= 2:
            # NOTE: poison the arena (all-ones bits: NaN as f32) to catch reads of stale values
            runner._workspace[:] = 0xFF
        got = runner.run(feeds)
        assert runner._workspace.nbytes >= plan.workspace_bytes(batch)
        for name in got:
            assert_matches(got[name], reference[name], rtol=1e-4, atol=1e-5,
                           what=f"{name} at batch {batch} (call {step})")
        for name in reference_state:
            assert_matches(state[name], reference[name], rtol=1e-4, atol=1e-6,
                           what=f"state {name} at batch {batch} (call {step})")
            reference_state[name] = reference[name]


def test_batch_outputs_and_static_outputs_after_growth():
    """An output with a batch dimension comes back with exactly `batch` rows after the buffers grew."""
    graph = dense_relu_graph()
    runner = compiled_runner(graph, 1)
    rng = np.random.default_rng(0)
    weights = {"kernel": rng.normal(size=(20, 16)).astype(np.float32),
               "bias": rng.normal(size=16).astype(np.float32)}
    for batch in (2, 100, 1):
        feeds = {"x": rng.normal(size=(batch, 20)).astype(np.float32), **weights}
        got = runner.run(feeds)["y"]
        assert got.shape == (batch, 16)
        assert_matches(got, ir.run(graph, feeds)["y"], rtol=1e-5, atol=1e-6, what=f"batch {batch}")


@pytest.mark.parametrize("level", [0, 1])
def test_outputs_that_live_elsewhere_are_copied(level):
    """One value under two names, an input returned as is, constants, a view of an input: each output
    gets its own correct buffer (MemoryPlan.copies)."""
    x = B.arg("x", "f32", (N, 3))
    mask = B.arg("mask", "bool", (N, 3))
    v = B.exp(x)
    graph = Graph("elsewhere", [x, mask], [
        ("a", v), ("b", v), ("x_again", x), ("scalar", B.const(2.5)), ("table", B.const(np.arange(3.0))),
        ("ones", B.full_like(x, 1.5)), ("mask_again", mask), ("bools", B.const(np.array([True, False]))),
        ("column", B.reshape(x, (N, 3, 1)))])
    runner = compiled_runner(graph, level)
    rng = np.random.default_rng(0)
    for batch in (2, 40, 1):
        feeds = {"x": rng.random((batch, 3)).astype(np.float32), "mask": rng.random((batch, 3)) < 0.5}
        reference, got = ir.run(graph, feeds), runner.run(feeds)
        assert sorted(got) == sorted(reference)
        for name in reference:
            assert_matches(got[name], reference[name], rtol=1e-6, what=f"{name} at batch {batch}")


@pytest.mark.parametrize("level", [0, 1])
def test_kernel_parameters_never_alias(level):
    """Every kernel parameter is `noalias`, so no two may point at the same bytes: an in-place update
    and the input it overwrites (or a reshape and the value it views) come in as one parameter."""
    from codegen.lower import _kernel_buffers, lower
    graph = mlp_train_step_graph()
    fused = fuse(graph, level)
    plan = plan_memory(fused)
    lowered = lower(fused, plan, name="step")
    module = str(lowered.module)
    for group in fused.groups:
        header = next(line for line in module.splitlines()
                      if line.startswith(f'define internal void @"{lowered.kernels[group.name]}"('))
        params = header.count("ptr noalias")
        slots = {plan.slots[node] for node in _kernel_buffers(group, plan, {})
                 if plan.slots[node].where != "const"}      # array constants are globals
        assert params == len(slots), f"{group.name}: {params} pointer parameters for {len(slots)} buffers"


def test_in_place_update_read_through_slices_is_deferred():
    """w = rotate(w) + 1 and w = shift(w) + 1 read w at other indices than they write: the memory
    plan must not write them into w's buffer in place (slice, pad and concat move the index)."""
    from codegen.runtime import CompiledRunner
    from ir import build_seq as S
    w = B.arg("w", "f32", (6,))
    x = B.arg("x", "f32", (N, 6))
    rotated = S.concat([S.slice(w, 1, 6, 0), S.slice(w, 0, 1, 0)], 0)
    shifted = S.pad(S.slice(w, 0, 5, 0), 1, 0, 0)
    for moved in (rotated, shifted):
        graph = ir.Graph("step", [x, w], [("y", B.add(x, w)), ("w", B.add(moved, 1.0))])
        state = {"w": np.arange(6, dtype=np.float32)}
        expected = ir.run(graph, {"x": np.zeros((2, 6), np.float32), "w": state["w"].copy()})["w"]
        CompiledRunner(graph, state).run({"x": np.zeros((2, 6), np.float32)})
        np.testing.assert_array_equal(state["w"], expected)
