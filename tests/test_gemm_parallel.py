"""Blocked GEMM kernels split among threads (codegen.lower._emit_blocked_matmul): column blocks for
batch rows (blocks of whole rows from BATCH_ROWS_MIN rows on), row blocks for static rows (dW; blocks of NARROW_BLOCK rows for a narrow dW, which the
GEMM computes transposed).

Each case runs at 1, 2 and 3 threads: the results must be identical (the split decides which rows or
columns share a GEMM call, never the arithmetic of an element) and agree with numpy in float64.
Batch sizes range from one row to past the GEMM's row block (MC), with row tails that are not
multiples of the GEMM's row tile; column counts have tails narrower than a panel; K crosses the
GEMM's k block.
"""
import numpy as np
import pytest

import ir
from codegen import lower, parallel
from codegen.compiler import CompileOptions
from codegen.gemm import KC
from codegen.runtime import CompiledRunner
from ir import build as B

THREADS = (1, 2, 3)
BATCHES = (1, 7, 128, 255, 256, 257, 301, lower.BATCH_ROWS_MIN - 1, lower.BATCH_ROWS_MIN,
           lower.BATCH_ROWS_MIN + lower.BATCH_ROW_BLOCK + 5, 1030)


def forward_graph(k, n, transpose_b):
    """relu(x @ w + bias) and 2 * (x @ -w), x with batch rows; w stored (n, k) with transpose_b.

    Each product has one consumer, so each GEMM kernel runs its elementwise epilogue block by block
    (the two products are different nodes, which CSE cannot merge into one with two consumers)."""
    x = B.arg("x", "f32", (None, k))
    w = B.arg("w", "f32", (n, k) if transpose_b else (k, n))
    bias = B.arg("bias", "f32", (n,))
    product = B.matmul(x, w, transpose_b=transpose_b)
    negated = B.matmul(x, B.neg(w), transpose_b=transpose_b)
    return ir.Graph("fwd", [x, w, bias], [("act", B.relu(B.add(product, bias))),
                                           ("scaled", B.mul(negated, 2.0))])


def test_forward_products_run_their_epilogues_in_the_gemm_kernel():
    graph = forward_graph(37, 70, False)
    groups = CompiledRunner(graph, {}, CompileOptions()).compiled.fused.groups
    fused = sorted(sorted({node.op for node in group.members} - {"broadcast"}) for group in groups
                   if group.kind == "matmul")
    assert fused == [["add", "matmul", "max"], ["matmul", "mul"]], fused


def weight_gradient_graph(k, n, grad_is_output=True):
    """w - 0.1 * x^T @ dy: static rows (k of them), the batch contracted.  When the gradient is not
    an output, only the update reads it: each row block of it lives in a block-sized scratch."""
    x = B.arg("x", "f32", (None, k))
    dy = B.arg("dy", "f32", (None, n))
    w = B.arg("w", "f32", (k, n))
    grad = B.matmul(x, dy, transpose_a=True)
    outputs = [("w_new", B.sub(w, B.mul(grad, 0.1)))]
    return ir.Graph("dw", [x, dy, w], outputs + ([("grad", grad)] if grad_is_output else []))


def run_all_thread_counts(graph, feeds):
    runner = CompiledRunner(graph, {}, CompileOptions())
    results = []
    for threads in THREADS if parallel.threads_available() else (1,):
        previous = parallel.set_num_threads(threads) if parallel.threads_available() else None
        try:
            out = runner.run({name: value.copy() for name, value in feeds.items()})
        finally:
            if previous is not None:
                parallel.set_num_threads(previous)
        results.append({name: np.array(value, copy=True) for name, value in out.items()})
    for other in results[1:]:
        for name in results[0]:
            np.testing.assert_array_equal(results[0][name], other[name], err_msg=name)
    return results[0]


def check(got, want, name):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale, err_msg=name)


@pytest.mark.parametrize("k,n,transpose_b", [(KC + 272, 520, False), (KC + 272, 520, True),
                                               (37, 10, False), (37, 70, True)])
def test_batch_rows_every_split(k, n, transpose_b):
    rng = np.random.default_rng(k + n)
    graph = forward_graph(k, n, transpose_b)
    w = (rng.random((n, k) if transpose_b else (k, n), dtype=np.float32) - 0.5)
    bias = rng.random(n, dtype=np.float32) - 0.5
    w64 = (w.T if transpose_b else w).astype(np.float64)
    for batch in BATCHES:
        x = rng.random((batch, k), dtype=np.float32) - 0.5
        out = run_all_thread_counts(graph, {"x": x, "w": w, "bias": bias})
        product = x.astype(np.float64) @ w64
        check(out["act"], np.maximum(product + bias, 0.0), f"act, batch {batch}")
        check(out["scaled"], -2.0 * product, f"scaled, batch {batch}")


@pytest.mark.parametrize("grad_is_output", [True, False])
@pytest.mark.parametrize("k,n", [(784, 512), (13, 70), (lower.ROW_BLOCK * 3 + 5, 10),
                                 (lower.NARROW_BLOCK * 2 + 5, 10)])
def test_static_rows_every_split(k, n, grad_is_output):
    rng = np.random.default_rng(k * n)
    graph = weight_gradient_graph(k, n, grad_is_output)
    w = rng.random((k, n), dtype=np.float32) - 0.5
    for batch in (1, 32, 129):
        x = rng.random((batch, k), dtype=np.float32) - 0.5
        dy = rng.random((batch, n), dtype=np.float32) - 0.5
        out = run_all_thread_counts(graph, {"x": x, "dy": dy, "w": w})
        grad = x.T.astype(np.float64) @ dy.astype(np.float64)
        if grad_is_output:
            check(out["grad"], grad, f"grad, batch {batch}")
        check(out["w_new"], w - 0.1 * grad, f"w_new, batch {batch}")


@pytest.mark.parametrize("k,n,block", [(784, 512, lower.ROW_BLOCK), (600, 10, lower.NARROW_BLOCK)])
def test_a_gradient_only_the_update_reads_stays_in_a_block_sized_scratch(k, n, block):
    """A row block of dW that nothing but its epilogue reads is computed into a scratch of one
    block on the chunk's stack; a gradient that is also an output is written whole."""
    def allocas_and_planned_products(graph):
        compiled = CompiledRunner(graph, {}, CompileOptions()).compiled
        # (the GEMM's own packing and transposing buffers are named gemm.*)
        allocas = [line for line in compiled.code.optimized_ir.splitlines()
                   if "alloca [" in line and "gemm." not in line]
        return allocas, [node for node in compiled.plan.slots if node.op == "matmul"]
    allocas, planned = allocas_and_planned_products(weight_gradient_graph(k, n, False))
    assert any(f"alloca [{block * n} x float], align 64" in line for line in allocas)
    assert planned == []    # the memory plan gives it no buffer
    allocas, planned = allocas_and_planned_products(weight_gradient_graph(k, n, True))
    assert allocas == [] and len(planned) == 1


@pytest.mark.parametrize("l2_kib,prefetched", [(512, True), (256, False), (None, False)])
def test_a_dw_block_prefetches_its_update_rows_only_where_l2_holds_them(monkeypatch, l2_kib,
                                                                         prefetched):
    """A dW row block's product prefetches the weight rows its update reads (a GEMM with one
    `then_read` stream: `.pf1`) when the block and those rows (48 x 512 floats, twice: 192 KiB)
    fill at most half the L2: on a 512 KiB L2, not on a 256 KiB one nor where the L2 is unknown;
    the values are the same bits either way."""
    import re
    from codegen import target
    monkeypatch.setattr(target, "l2_cache_bytes", lambda: None if l2_kib is None else l2_kib << 10)
    k, n = lower.ROW_BLOCK * 2 + 5, 512
    graph = weight_gradient_graph(k, n, False)
    runner = CompiledRunner(graph, {}, CompileOptions())
    code = runner.compiled.code.optimized_ir
    assert bool(re.search(r"kcompile\.gemm\.TN\.\S*\.pf1\.", code)) == prefetched
    rng = np.random.default_rng(5)
    w = rng.random((k, n), dtype=np.float32) - 0.5
    x = rng.random((32, k), dtype=np.float32) - 0.5
    dy = rng.random((32, n), dtype=np.float32) - 0.5
    out = run_all_thread_counts(graph, {"x": x, "dy": dy, "w": w})
    check(out["w_new"], w - 0.1 * (x.T.astype(np.float64) @ dy.astype(np.float64)), "w_new")
    monkeypatch.setattr(target, "l2_cache_bytes", lambda: 2048 << 10)
    again = run_all_thread_counts(weight_gradient_graph(k, n, False), {"x": x, "dy": dy, "w": w})
    np.testing.assert_array_equal(out["w_new"], again["w_new"])


def test_l2_size_is_read_from_sysfs(tmp_path):
    from codegen.target import l2_cache_bytes
    for index, (level, kind, size) in enumerate([("1", "Data", "32K"), ("1", "Instruction", "32K"),
                                                 ("2", "Unified", "512K"), ("3", "Unified", "32M")]):
        entry = tmp_path / "a" / f"index{index}"
        entry.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (entry / name).write_text(text + "\n")
    assert l2_cache_bytes(str(tmp_path / "a")) == 512 << 10
    (tmp_path / "a" / "index2" / "size").write_text("2M\n")
    assert l2_cache_bytes(str(tmp_path / "a")) == 512 << 10     # (read once per directory)
    l2_cache_bytes.cache_clear()
    assert l2_cache_bytes(str(tmp_path / "a")) == 2 << 20
    assert l2_cache_bytes(str(tmp_path / "missing")) is None
    (tmp_path / "a" / "index2" / "size").write_text("big\n")
    l2_cache_bytes.cache_clear()
    assert l2_cache_bytes(str(tmp_path / "a")) is None
    l2_cache_bytes.cache_clear()


@pytest.mark.parametrize("k,n", [(KC + 272, 520), (784, 512), (37, 10), (300, 70), (64, 1030)])
def test_one_row_is_bit_for_bit_its_row_in_a_batch(k, n):
    """A one-row product takes the GEMV path (codegen.gemm.gemv_function), which sums as the GEMM's
    tiles do: a sample's outputs do not depend on the batch it is predicted in."""
    rng = np.random.default_rng(k * 7 + n)
    graph = forward_graph(k, n, False)
    w = rng.random((k, n), dtype=np.float32) - 0.5
    bias = rng.random(n, dtype=np.float32) - 0.5
    x = rng.random((9, k), dtype=np.float32) - 0.5
    runner = CompiledRunner(graph, {}, CompileOptions())
    assert "kcompile.gemm.gemv" in runner.compiled.code.optimized_ir
    batch = runner.run({"x": x, "w": w, "bias": bias})
    for row in (0, 4, 8):
        one = run_all_thread_counts(graph, {"x": x[row:row + 1], "w": w, "bias": bias})
        for name in ("act", "scaled"):
            np.testing.assert_array_equal(one[name][0], batch[name][row], err_msg=f"{name}, row {row}")
        product = x[row].astype(np.float64) @ w.astype(np.float64)
        check(one["act"][0], np.maximum(product + bias, 0.0), f"act, row {row}")
