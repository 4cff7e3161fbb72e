"""Fusion (ir.fusion): level 1 computes what level 0 computes, kernels have the intended shape, the
fused text round-trips, and in-place updates are scheduled after every reader of the old value.

Three oracles: the reference interpreter on the unfused graph; a *schedule interpreter* below that runs
the kernel groups one by one in schedule order with real in-place buffer semantics (a group sees only
what earlier groups materialized, and an output named like an input overwrites that input's buffer
when its group runs); and the compiled code at fusion level 0.
"""
from __future__ import annotations

import numpy as np
import pytest

import ir
from ir import build as B
from ir import ops
from ir.fusion import fuse, group_inputs, is_free
from ir.graph import Graph

from opinfo import (N, assert_matches, compiled_runner, constants_of, cross_entropy_graph,
                    dense_relu_graph, flatten_graph, mlp_batch, mlp_state, mlp_train_step_graph,
                    softmax_graph)


# ----------------------------------------------------------------------------------------------
# The schedule interpreter
# ----------------------------------------------------------------------------------------------

def run_schedule(fused, feeds: dict) -> dict:
    """Run `fused.groups` in order with numpy references, as the compiled code runs kernels.

    Buffers: inputs (copied from `feeds`), then every value a group materializes.  An output named like
    an input is written into that input's buffer when its group runs, so a later group reading the input
    sees the new value -- exactly what a wrong schedule would do to compiled code.
    """
    graph = fused.graph
    batch = ir.interpreter.batch_size(graph, feeds)
    buffers = {n: np.array(feeds[n.attr("name")], dtype=ops.np_dtype(n.dtype)) for n in graph.inputs}
    input_of = {n.attr("name"): n for n in graph.inputs}
    in_place = {}
    for name, value in graph.outputs:
        if name in input_of and value is not input_of[name]:
            in_place.setdefault(value, []).append(input_of[name])

    aliases = getattr(fused, "aliases", {})

    def evaluate(node, env, members, readable):
        if node in env:
            return env[node]
        if node in aliases and node not in members:
            # a view of another value's buffer: whatever that buffer holds now
            base = evaluate(aliases[node], env, members, readable | {aliases[node]})
            env[node] = base.reshape(node.type.concrete_shape(batch))
            return env[node]
        if node in members or not (node in readable or node.op == "arg"):
            if node.op == "arg":
                raise AssertionError(f"a group reads input {node.attr('name')} without listing it")
            if not (node in members or is_free(node) or node.op == "const"
                    or ops.get(node.op).kind in (ops.ELEMWISE, ops.BROADCAST, ops.INJECTIVE)):
                raise AssertionError(f"{node} is read by a group but is neither a member, an input "
                                     "of the group, nor cheap to recompute")
            values = [evaluate(o, env, members, readable) for o in node.operands]
            result = ops.get(node.op).reference(values, node.attr_dict, node, batch)
            result = np.asarray(result).astype(ops.np_dtype(node.dtype), copy=False)
        else:
            if node not in buffers:
                raise AssertionError(f"a group reads {node} before any group produced it")
            result = buffers[node]
        env[node] = result
        return result

    for group in fused.groups:
        members = set(group.members)
        readable = set(group_inputs(group))
        env: dict = {}
        produced = {node: evaluate(node, env, members, readable)
                    for node in group.outputs + ([group.anchor] if group.anchor is not None else [])}
        for node, value in produced.items():
            buffers[node] = value
            for target in in_place.get(node, []):
                buffers[target] = value          # overwrites the input's buffer now
    out = {}
    for name, value in graph.outputs:
        if value in buffers:
            out[name] = buffers[value]
        else:   # constants and values no group had to materialize
            out[name] = evaluate(value, {}, set(), set())
    return out


# ----------------------------------------------------------------------------------------------
# Composite graphs: level 1 == level 0 == reference, and the schedule interpreter agrees
# ----------------------------------------------------------------------------------------------

def _feeds(graph: Graph, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, batch])
    feeds = {}
    for node in graph.inputs:
        shape = node.type.concrete_shape(batch)
        if node.dtype == "f32":
            feeds[node.attr("name")] = rng.normal(0, 1, shape).astype(np.float32)
        elif node.dtype == "u32":
            feeds[node.attr("name")] = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    if "labels" in feeds:
        feeds["labels"] = np.eye(graph.input("labels").shape[1], dtype=np.float32)[
            rng.integers(0, graph.input("labels").shape[1], batch)]
    return feeds


COMPOSITES = {"dense_relu": dense_relu_graph, "softmax": softmax_graph,
              "cross_entropy": cross_entropy_graph, "flatten": flatten_graph}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_level1_matches_level0_and_reference(name):
    graph = COMPOSITES[name]()
    fused0, fused1 = compiled_runner(graph, 0), compiled_runner(graph, 1)
    assert len(fused1.compiled.fused.groups) < len(fused0.compiled.fused.groups)
    for batch in (1, 3, 17):
        feeds = _feeds(graph, batch)
        reference = ir.run(graph, feeds)
        level0, level1 = fused0.run(feeds), fused1.run(feeds)
        for out in reference:
            what = f"{name}.{out} batch {batch}"
            assert_matches(level1[out], level0[out], rtol=2e-6, atol=1e-6, what=what + " level 1 vs 0")
            assert_matches(level1[out], reference[out], rtol=1e-5, atol=1e-6, what=what + " vs reference")
        for level in (0, 1):
            scheduled = run_schedule(fuse(graph, level), feeds)
            for out in reference:
                assert_matches(scheduled[out], reference[out], rtol=1e-6, atol=1e-7,
                               what=f"{name}.{out} schedule interpreter level {level}")


def _run_train_steps(runner, state, batches):
    results = []
    for i, batch in enumerate(batches):
        feeds = mlp_batch(np.random.default_rng(100 + i), batch, seed=i + 1)
        results.append(runner.run(feeds))
    return results


def _reference_train_steps(graph, state, batches):
    results = []
    for i, batch in enumerate(batches):
        feeds = {**mlp_batch(np.random.default_rng(100 + i), batch, seed=i + 1), **state}
        out = ir.run(graph, feeds)
        for name in state:
            state[name] = out[name]
        results.append({k: v for k, v in out.items() if k not in state})
    return results


def test_train_step_with_adam_updates_in_place():
    graph = mlp_train_step_graph(dropout=True)
    ir.verify(graph)
    batches = (17, 3, 1, 17)
    reference_state = mlp_state(np.random.default_rng(7))
    reference = _reference_train_steps(graph, reference_state, batches)
    states = {}
    for level in (0, 1):
        state = mlp_state(np.random.default_rng(7))
        runner = compiled_runner(graph, level)
        runner = type(runner)(graph, state, compiled=runner.compiled)   # same code, this state
        results = _run_train_steps(runner, state, batches)
        assert sorted(results[0]) == ["correct", "loss"]
        for step, (got, want) in enumerate(zip(results, reference)):
            for name in want:
                assert_matches(got[name], want[name], rtol=1e-4, atol=1e-5,
                               what=f"level {level} step {step} {name}")
        states[level] = state
    for name in reference_state:
        assert_matches(states[1][name], states[0][name], rtol=1e-4, atol=1e-6,
                       what=f"{name} after {len(batches)} steps, level 1 vs level 0")
        assert_matches(states[1][name], reference_state[name], rtol=1e-3, atol=1e-5,
                       what=f"{name} after {len(batches)} steps vs reference")
    assert float(states[1]["step"]) == len(batches)


def test_train_step_schedule_interpreter_matches_reference():
    graph = mlp_train_step_graph()
    state = mlp_state(np.random.default_rng(3))
    for name in state:
        if name.startswith(("m/", "v/")):
            state[name] = np.random.default_rng(4).uniform(0, 0.1, state[name].shape).astype(np.float32)
    feeds = {**mlp_batch(np.random.default_rng(5), 9), **state}
    reference = ir.run(graph, feeds)
    for level in (0, 1):
        scheduled = run_schedule(fuse(graph, level), feeds)
        for name in reference:
            assert_matches(scheduled[name], reference[name], rtol=1e-6, atol=1e-7,
                           what=f"{name}, level {level}")


# ----------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------

def test_matmul_bias_relu_is_one_kernel():
    fused = fuse(dense_relu_graph())
    assert len(fused.groups) == 1, fused.text()
    (group,) = fused.groups
    assert group.kind == "matmul" and group.anchor.op == "matmul"
    assert {"matmul", "add", "max"} <= {n.op for n in group.members}
    # ... also after the pass pipeline, as the compiler sees it
    runner = compiled_runner(dense_relu_graph(), 1)
    assert len(runner.compiled.fused.groups) == 1, runner.compiled.fused.text()


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_in_a_train_step_matmul_bias_activation_and_dropout_are_one_kernel(activation):
    """The pre-activation is read by the backward pass too: the forward kernel computes it as an
    output of its own instead of leaving the activation to kernels of their own (with
    SHARE_PRODUCERS off, sigmoid's forward took five one-op kernels); the step still gives the
    reference interpreter's values."""
    import ir.fusion as fusion
    from kcompile.layers import Dense, Dropout, Input
    from kcompile.models import Sequential
    from kcompile.utils import set_random_seed
    set_random_seed(3)
    model = Sequential([Input((6,)), Dense(8, activation=activation), Dropout(0.25), Dense(3)])
    model.compile(optimizer="adam", loss="mse", target="llvm")
    text = model.dump_ir("fused")
    graph, groups = ir.parse(text, with_groups=True)
    first = next(members for _, kind, members in groups if kind == "matmul")
    ops_in = {n.op for n in first}
    assert {"matmul", "add", "select"} <= ops_in, text      # (the mask is drawn in a loop of its own)
    assert ("max" in ops_in) if activation == "relu" else ("exp" in ops_in)
    assert fusion.SHARE_PRODUCERS
    assert len(fuse(graph).groups) == len(groups) < len(fuse(graph, _share=False).groups)
    # the step computes what the reference interpreter does
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    reference = Sequential.from_config(model.get_config())
    reference.set_weights(model.get_weights())
    reference.compile(optimizer="adam", loss="mse", target="reference")
    set_random_seed(5)
    model.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
    set_random_seed(5)
    reference.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_value_also_read_through_a_transpose_is_not_shared_into_that_reader():
    """tanh(A @ B) is read by tanh(.) + its transpose and by exp(its transpose): the first reader
    kernel must not compute it as a shared output, since it reads it at another index too (it had
    failed to compile, and with the printer bypassed, read blocks not computed yet)."""
    n = 96
    a, b = B.arg("a", "f32", (n, n)), B.arg("b", "f32", (n, n))
    t = B.tanh(B.matmul(a, b))
    flipped = B.transpose(t, (1, 0))
    graph = Graph("g", [a, b], [("o1", B.add(B.tanh(t), flipped)), ("o2", B.exp(flipped))])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((n, n)).astype(np.float32) * 0.3,
             "b": rng.standard_normal((n, n)).astype(np.float32) * 0.3}
    fused = fuse(graph)
    assert fused.text()                        # (printing had raised KeyError)
    got, want = compiled_runner(graph, 1).run(feeds), ir.run(graph, feeds)
    for name in ("o1", "o2"):
        assert_matches(got[name], want[name], rtol=1e-5, atol=1e-6, what=name)


def test_level0_is_one_kernel_per_op():
    graph = dense_relu_graph()
    fused = fuse(graph, level=0)
    computed = [n for n in graph.nodes() if n.op not in ("arg", "const")]
    assert len(fused.groups) == len(computed)
    assert all(len(g.members) == 1 for g in fused.groups)


def test_weight_gradient_and_update_fuse_onto_the_matmul():
    """dW = X^T dY followed by W - lr * dW is one kernel (the update is the matmul's epilogue)."""
    x = B.arg("x", "f32", (N, 8))
    dy = B.arg("dy", "f32", (N, 4))
    w = B.arg("w", "f32", (8, 4))
    graph = Graph("update", [x, dy, w], [("w", B.sub(w, B.mul(B.matmul(x, dy, transpose_a=True), 0.1)))])
    fused = fuse(graph)
    assert len(fused.groups) == 1 and fused.groups[0].kind == "matmul", fused.text()


def test_softmax_kernels():
    x = B.arg("logits", "f32", (N, 10))
    fused = fuse(Graph("softmax", [x], [("p", B.softmax(x))]))
    kinds = [g.kind for g in fused.groups]
    # max-reduce, exp(x - max) (read twice, so materialized once), sum-reduce, the division
    assert kinds.count("reduce") == 2 and len(kinds) <= 4, fused.text()


@pytest.mark.parametrize("name", ["dense_relu", "softmax", "cross_entropy", "flatten", "train_step"])
@pytest.mark.parametrize("level", [0, 1])
def test_fused_text_round_trips(name, level):
    graph = mlp_train_step_graph() if name == "train_step" else COMPOSITES[name]()
    text = fuse(graph, level).text()
    parsed, groups = ir.parse(text, constants_of(graph), with_groups=True)
    assert ir.print_graph(parsed, groups) == text
    assert [g[0] for g in groups] == [g.name for g in fuse(graph, level).groups]
    # and the parsed graph fuses into the same kernels
    assert fuse(parsed, level).text() == text


def test_fused_text_round_trips_with_array_constants():
    x = B.arg("x", "f32", (N, 3))
    table = B.const(np.arange(3.0) / 3)
    mask = B.const(np.array([True, False, True]))
    graph = Graph("consts", [x], [("y", B.select(B.broadcast(mask, (N, 3)), B.add(x, table), x))])
    text = fuse(graph).text()
    parsed, groups = ir.parse(text, constants_of(graph), with_groups=True)
    assert ir.print_graph(parsed, groups) == text
    feeds = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_array_equal(ir.run(parsed, feeds)["y"], ir.run(graph, feeds)["y"])


def test_every_computed_node_is_in_exactly_one_group_or_recomputed():
    for graph in [mlp_train_step_graph(), cross_entropy_graph(), softmax_graph()]:
        for level in (0, 1):
            fused = fuse(graph, level)
            seen: dict = {}
            for g in fused.groups:
                for m in g.members:
                    assert m not in seen, f"{m} in kernels {seen[m]} and {g.name}"
                    seen[m] = g.name
            outputs = set(graph.output_nodes)
            for node in graph.nodes():
                if node.op in ("arg", "const") or node in seen:
                    continue
                # outside every kernel: only views every reader recomputes inline
                assert node not in outputs and ops.get(node.op).kind != ops.REDUCE, node


# ----------------------------------------------------------------------------------------------
# In-place updates and the schedule (ir.fusion._schedule), through results
# ----------------------------------------------------------------------------------------------

def _inplace_graphs() -> dict:
    graphs = {}
    x = B.arg("x", "f32", (N, 4))
    w = B.arg("w", "f32", (4, 3))
    # the update is the FIRST output, so its kernel would run first if nothing ordered it after the
    # matmul that reads the old w
    graphs["matmul_reads_old"] = Graph("g1", [x, w], [("w", B.add(B.mul(w, 0.5), 1.0)),
                                                      ("y", B.matmul(x, w))])
    # the new value read by a later matmul (a data dependence through the overwritten buffer)
    w_new = B.sub(w, 0.25)
    graphs["matmul_reads_new"] = Graph("g2", [x, w], [("w", w_new), ("y", B.matmul(x, w_new))])
    # a reduction and a transpose-matmul read the old value; the update reads a gradient of both
    b = B.arg("b", "f32", (3,))
    y = B.add(B.matmul(x, w), b)
    loss = B.reduce_sum(B.mul(y, y))
    gw, gb = ir.gradients(loss, [w, b])
    graphs["backward_reads_old"] = Graph(
        "g3", [x, w, b], [("w", B.sub(w, B.mul(gw, 0.01))), ("b", B.sub(b, B.mul(gb, 0.01))),
                          ("dx", ir.gradients(loss, [x])[0]), ("sum_b", B.reduce_sum(b)),
                          ("loss", loss)])
    # the kernel writing w in place reads w at other indices (transposed): 64 x 64 so that LLVM does
    # not happen to load everything before storing anything
    x64 = B.arg("x", "f32", (N, 64))
    w64 = B.arg("w", "f32", (64, 64))
    graphs["transposed_self_read"] = Graph(
        "g6", [x64, w64], [("w", B.sub(w64, B.mul(B.transpose(w64, (1, 0)), 0.5))),
                           ("y", B.matmul(x64, w64))])
    graphs["transpose_in_place"] = Graph("g7", [w64], [("w", B.transpose(w64, (1, 0)))])
    # an update read elementwise by an output of the same shape computed from the old value
    graphs["elementwise_old_and_new"] = Graph("g5", [x, w], [("w", B.mul(w, 2.0)),
                                                             ("z", B.add(B.exp(w), 1.0))])
    return graphs


INPLACE = _inplace_graphs()


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("name", sorted(INPLACE))
def test_in_place_update_gives_reference_result(name, level):
    graph = INPLACE[name]
    rng = np.random.default_rng(11)
    for batch in (1, 5):
        feeds = {n.attr("name"): rng.normal(size=n.type.concrete_shape(batch)).astype(np.float32)
                 for n in graph.inputs}
        reference = ir.run(graph, feeds)
        scheduled = run_schedule(fuse(graph, level), feeds)
        state = {k: v.copy() for k, v in feeds.items() if k in graph.output_names}
        base = compiled_runner(graph, level)
        runner = type(base)(graph, state, compiled=base.compiled)
        got = runner.run({k: v for k, v in feeds.items() if k not in state})
        got.update(state)
        for out in reference:
            assert_matches(scheduled[out], reference[out], rtol=1e-6, what=f"{out} schedule interpreter")
            assert_matches(got[out], reference[out], rtol=1e-5, atol=1e-6,
                           what=f"{name}: {out} compiled, level {level}, batch {batch}")


def test_schedule_puts_readers_of_the_old_value_first():
    fused = fuse(INPLACE["matmul_reads_old"], level=1)
    position = {id(g): i for i, g in enumerate(fused.groups)}
    w = fused.graph.input("w")
    writer = next(g for g in fused.groups if fused.graph.output("w") in g.outputs)
    for g in fused.groups:
        if g is not writer and w in group_inputs(g):
            assert position[id(g)] < position[id(writer)], fused.text()


def _unorderable_graphs() -> dict:
    x = B.arg("x", "f32", (N, 4))
    w = B.arg("w", "f32", (4, 3))
    u = B.arg("u", "f32", (4, 3))
    w_new = B.sub(w, 0.25)
    return {
        # one kernel needs the old value of w, another the new one, which lives in w's buffer
        "old_and_new": Graph("both", [x, w], [("w", w_new), ("old", B.matmul(x, w)),
                                              ("new", B.matmul(x, w_new))]),
        # each update reads the other's old value (fusing both into one elementwise kernel would do)
        "cross_updates": Graph("cross", [u, w], [("u", B.add(u, w)), ("w", B.sub(w, u))]),
    }


UNORDERABLE = _unorderable_graphs()


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("name", sorted(UNORDERABLE))
def test_unorderable_in_place_updates_are_refused_or_correct(name, level):
    """Without a temporary buffer these cannot be scheduled; the compiler must say so rather than
    compute with the wrong value (the reference interpreter has no buffers, so it has no problem)."""
    graph = UNORDERABLE[name]
    try:
        fused = fuse(graph, level)
    except ValueError as e:
        assert "in-place" in str(e)
        return
    rng = np.random.default_rng(0)
    feeds = {n.attr("name"): rng.normal(size=n.type.concrete_shape(2)).astype(np.float32)
             for n in graph.inputs}
    reference = ir.run(graph, feeds)
    scheduled = run_schedule(fused, feeds)
    for out in reference:
        np.testing.assert_allclose(scheduled[out], reference[out], rtol=1e-6, err_msg=out)


def _keep_old_graphs() -> dict:
    w = B.arg("w", "f32", (2, 3))
    prev = B.arg("prev", "f32", (2, 3))
    other = B.arg("other", "f32", (2, 3))
    return {
        # the old value into a buffer of its own and into an in-place state nobody else reads
        "ok": Graph("keep_old", [w, prev, other], [("w", B.sub(w, 1.0)), ("old_w", w), ("prev", w),
                                                   ("other", other)]),
        # ... into an in-place state that this step still reads (a temporary would be needed)
        "read": Graph("keep_old_read", [w, prev], [("w", B.sub(w, 1.0)), ("prev", w),
                                                   ("prev_sum", B.reduce_sum(prev))]),
        # two states swapped
        "swap": Graph("swap", [w, prev], [("w", prev), ("prev", w)]),
    }


KEEP_OLD = _keep_old_graphs()


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("name", sorted(KEEP_OLD))
def test_output_of_an_input_that_is_also_updated_in_place(name, level):
    """`prev = w` next to `w = w - 1`: prev must hold the value w had before the step.  Where that
    would need a temporary buffer, compiling must fail with a clear error instead."""
    graph = KEEP_OLD[name]
    rng = np.random.default_rng(0)
    feeds = {n.attr("name"): rng.normal(size=(2, 3)).astype(np.float32) for n in graph.inputs}
    reference = ir.run(graph, feeds)
    state = {k: v.copy() for k, v in feeds.items()}
    try:
        base = compiled_runner(graph, level)
    except ValueError as e:
        assert name != "ok" and "in place" in str(e), e
        return
    got = type(base)(graph, state, compiled=base.compiled).run({})
    got.update(state)
    for out in reference:
        np.testing.assert_array_equal(got[out], reference[out], err_msg=f"{out}, level {level}")


def test_a_reshape_of_a_view_evaluated_inline_is_a_copy_not_an_alias():
    """A reshape read by several kernels aliases its operand's buffer, but a transpose (or a
    broadcast) read by several kernels has none: evaluated inline where it is read.  softmax after
    Permute and Flatten crashed the compiler ("not a buffer of kernel")."""
    from codegen.compiler import CompileOptions
    from codegen.runtime import CompiledRunner
    rng = np.random.default_rng(0)
    x = B.arg("x", "f32", (None, 2, 3))
    t = B.reshape(B.transpose(x, (0, 2, 1)), (None, 6))
    graphs = [ir.Graph("softmax", [x], [("y", B.softmax(t))]),
              ir.Graph("argmax_mask", [x], [("y", B.eq(t, B.reduce_max(t, 1, keepdims=True)))])]
    s = B.arg("s", "f32", (None, 5))
    spread = B.reshape(B.broadcast(B.reduce_sum(s, 0, keepdims=True), (6, 5)), (30,))
    graphs.append(ir.Graph("broadcast", [s], [("y", B.softmax(spread, 0))]))
    feeds = [{"x": rng.normal(size=(4, 2, 3)).astype(np.float32)}] * 2 + [
        {"s": rng.normal(size=(4, 5)).astype(np.float32)}]
    for graph, feed in zip(graphs, feeds):
        want = ir.run(graph, feed)["y"]
        for level in (0, 1):
            got = CompiledRunner(graph, {}, CompileOptions(fusion_level=level)).run(feed)["y"]
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{graph.name} {level}")


def test_a_matmul_over_the_batch_axis_is_refused_by_the_compiler_not_a_crash():
    from codegen.compiler import CompileOptions
    from codegen.runtime import CompiledRunner
    a, column = B.arg("a", "f32", (None,)), B.arg("c", "f32", (4,))
    outer = ir.Graph("outer", [a, column], [("y", B.matmul(a, column, transpose_a=True))])
    b = B.arg("b", "f32", (None, 5))
    contracted = ir.Graph("contracted", [a, b], [("y", B.matmul(a, b))])
    for graph in (outer, contracted):
        with pytest.raises(NotImplementedError, match="matmul over the batch axis"):
            CompiledRunner(graph, {}, CompileOptions())


def test_an_elementwise_chain_deeper_than_pythons_recursion_limit_compiles():
    """A fused chain of 3000 elementwise ops (as a gradient summed over the steps of a long
    unrolled RNN makes) is emitted from an explicit stack: it compiles, and gives the reference's
    values."""
    import sys
    x = B.arg("x", "f32", (None, 8))
    y = x
    for i in range(1500):
        y = B.add(B.mul(y, B.const(np.float32(0.999))), B.const(np.float32(0.001 * (i % 7))))
    from codegen.compiler import CompileOptions
    from codegen.runtime import CompiledRunner
    graph = ir.Graph("deep", [x], [("y", y)])
    # (Python's default limit, whatever an earlier test or library set it to)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        runner = CompiledRunner(graph, {}, CompileOptions())
    finally:
        sys.setrecursionlimit(limit)
    xv = np.random.default_rng(0).random((3, 8), dtype=np.float32)
    np.testing.assert_allclose(runner.run({"x": xv})["y"], ir.run(graph, {"x": xv})["y"],
                               rtol=1e-5, atol=1e-6)


def test_a_chain_through_index_ops_deeper_than_pythons_recursion_limit_compiles():
    """Index ops (a reshape here) compute their operands' values by recursion: 600 of them in a
    fused chain get the room they need (codegen.lower._recursion_room), and the limit is back to
    what it was afterwards."""
    import sys
    from codegen.compiler import CompileOptions
    from codegen.runtime import CompiledRunner
    limit = sys.getrecursionlimit()
    x = B.arg("x", "f32", (None, 16))
    y = x
    for i in range(600):
        y = B.add(B.mul(y, B.const(np.float32(0.999))), B.const(np.float32(0.001 * (i % 7))))
        y = B.reshape(y, (None, 4, 4) if i % 2 == 0 else (None, 16))
    graph = ir.Graph("deep_index", [x], [("y", y)])
    runner = CompiledRunner(graph, {}, CompileOptions())
    assert sys.getrecursionlimit() == limit
    xv = np.random.default_rng(1).random((2, 16), dtype=np.float32)
    np.testing.assert_allclose(runner.run({"x": xv})["y"], ir.run(graph, {"x": xv})["y"],
                               rtol=1e-5, atol=1e-6)
