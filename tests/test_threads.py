"""Parallel kernels: results must not depend on the thread count, and match the reference."""
import numpy as np
import pytest

import ir
from codegen import parallel
from codegen.compiler import CompileOptions
from codegen.runtime import CompiledRunner
from ir import build as B


def train_like_graph():
    """Dense 784->512 relu -> 512->10 softmax, SGD updates in place: every blocked GEMM mode
    (column blocks with batch rows, row blocks of dW with a tail block) and a parallel
    elementwise kernel."""
    x = B.arg("x", "f32", (None, 784))
    w = B.arg("w", "f32", (784, 520))     # 520 = 4 column blocks + a tail of 8
    b = B.arg("b", "f32", (520,))
    w2 = B.arg("w2", "f32", (520, 10))
    h = B.relu(B.add(B.matmul(x, w), b))
    p = B.softmax(B.matmul(h, w2))
    loss = B.reduce_mean(B.reduce_sum(B.mul(p, p), 1))
    gw, gb, gw2 = ir.gradients(loss, [w, b, w2])
    wide = B.tanh(B.mul(h, 3.0))          # (?, 520): an elementwise kernel worth splitting
    return ir.Graph("t", [x, w, b, w2], [("loss", loss), ("wide", wide), ("gb", gb),
                                         ("w", B.sub(w, B.mul(gw, 0.1))),
                                         ("w2", B.sub(w2, B.mul(gw2, 0.1)))])


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((300, 784), dtype=np.float32),
             "w": ((rng.random((784, 520), dtype=np.float32) - 0.5) * 0.1),
             "b": rng.random(520, dtype=np.float32),
             "w2": rng.random((520, 10), dtype=np.float32) - 0.5}
    return train_like_graph(), feeds


def run(graph, feeds, threads, threading=None):
    state = {"w": feeds["w"].copy(), "w2": feeds["w2"].copy()}
    runner = CompiledRunner(graph, state, CompileOptions(threading=threading))
    previous = parallel.set_num_threads(threads) if parallel.threads_available() else None
    try:
        out = runner.run({"x": feeds["x"], "b": feeds["b"]})
    finally:
        if previous is not None:
            parallel.set_num_threads(previous)
    out.update(state)
    return out


@pytest.mark.skipif(not parallel.threads_available(), reason="libgomp is not installed")
def test_thread_count_does_not_change_results(setup):
    graph, feeds = setup
    one = run(graph, feeds, 1)
    two = run(graph, feeds, 2)
    three = run(graph, feeds, 3)
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
        np.testing.assert_array_equal(one[name], three[name], err_msg=name)


def test_parallel_and_serial_code_match_the_reference(setup):
    graph, feeds = setup
    ref = ir.run(graph, feeds)
    for threading in (None, False):
        out = run(graph, feeds, 2, threading)
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_blocked_kernels_are_parallel_regions(setup):
    from codegen.compiler import compile_graph
    graph, _ = setup
    text = compile_graph(graph, CompileOptions(threading=None)).code.optimized_ir
    if parallel.threads_available():
        assert "GOMP_parallel" in text
    serial = compile_graph(graph, CompileOptions(threading=False)).code.optimized_ir
    assert "GOMP_parallel" not in serial and "kcompile_num_threads" not in serial
