"""One-row products skip the rows of a finite weight whose input is zero (codegen.gemm's `.nz` GEMV),
a large predict's products the k steps where a row tile of its input is zero (`.nzf` GEMMs), and
the column-blocked products of a batch whose input is mostly zero the steps listed once for all
their blocks (`.tl` GEMMs, codegen.lower.SPARSE_COLUMNS).

fma(0, w, acc) is acc for every finite w, so skipping gives the same sums bit for bit (but for the
sign of a zero sum, which assert_array_equal does not see); for a weight
that may hold inf or NaN (0 * inf is NaN) nothing is skipped.  A weight is known finite when it is a
constant of finite values or an input marked finite=true (ir.known_finite); kcompile's predict program
marks its weights and falls back to an unmarked program when a weight holds inf or NaN.
"""
import re

import numpy as np
import pytest

import ir
import kcompile as kc
from codegen import parallel
from codegen.compiler import CompileOptions
from codegen.runtime import CompiledRunner
from ir import build as B
from kcompile import layers

SKIPPING = "kcompile.gemm.gemv.f32"


def forward_graph(k, n, weight):
    """relu(x @ w + bias), x one or more rows; `weight` is the w node (an arg or a const)."""
    x = B.arg("x", "f32", (None, k))
    bias = B.arg("bias", "f32", (n,))
    inputs = [x, bias] + ([weight] if weight.op == "arg" else [])
    return ir.Graph("fwd", inputs, [("act", B.relu(B.add(B.matmul(x, weight), bias)))])


def skips(runner) -> bool:
    return ".nz" in runner.compiled.code.optimized_ir


def sparse_rows(rng, rows, k):
    """Rows with most entries zero (some -0.0), one of them all zero, one with a run of zeros
    longer than a k block, one with a NaN (not zero: it is read, and gives NaN)."""
    x = rng.random((rows, k), dtype=np.float32) - 0.5
    x[rng.random((rows, k)) < 0.6] = 0.0
    x[rng.random((rows, k)) < 0.05] = -0.0
    x[1] = 0.0
    x[2, : k * 3 // 4] = 0.0
    x[3, k // 2] = np.nan
    return x


@pytest.mark.parametrize("ahead", [0, 8])
@pytest.mark.parametrize("k,n", [(784, 512), (300, 70), (37, 10)])
def test_finite_weight_rows_of_zero_inputs_are_skipped_with_the_same_sums(k, n, ahead,
                                                                           monkeypatch):
    """A one-row product against a finite weight skips the rows whose input is zero and sums as
    the batch's product does, bit for bit, on one thread and two, with its listed passes
    prefetching the row `ahead` listed steps on (gemm.GEMV_PREFETCH_AHEAD) or not."""
    from codegen import gemm
    monkeypatch.setattr(gemm, "GEMV_PREFETCH_AHEAD", ahead)
    rng = np.random.default_rng(k + n)
    graph = forward_graph(k, n, B.arg("w", "f32", (k, n), finite=True))
    w = rng.random((k, n), dtype=np.float32) - 0.5
    bias = rng.random(n, dtype=np.float32) - 0.5
    x = sparse_rows(rng, 6, k)
    runner = CompiledRunner(graph, {}, CompileOptions())
    assert skips(runner)
    assert (f".listed.pf{ahead}" in runner.compiled.code.optimized_ir) == bool(ahead)
    batch = runner.run({"x": x, "w": w, "bias": bias})["act"]
    reference = ir.run(graph, {"x": x, "w": w, "bias": bias})["act"]
    np.testing.assert_allclose(batch, reference, rtol=1e-5, atol=1e-5)
    assert np.isnan(batch[3]).all()
    for threads in (1, 2):
        previous = parallel.set_num_threads(threads) if parallel.threads_available() else None
        try:
            for row in range(len(x)):
                one = runner.run({"x": x[row:row + 1], "w": w, "bias": bias})["act"]
                # the batch path reads every row: the skipping one-row path sums the same
                np.testing.assert_array_equal(one[0], batch[row], err_msg=f"row {row}, {threads} threads")
        finally:
            if previous is not None:
                parallel.set_num_threads(previous)


def test_an_unmarked_weight_is_not_skipped_and_inf_times_zero_is_nan():
    k, n = 64, 40
    rng = np.random.default_rng(3)
    graph = forward_graph(k, n, B.arg("w", "f32", (k, n)))
    w = rng.random((k, n), dtype=np.float32) - 0.5
    w[5, 7] = np.inf
    bias = np.zeros(n, np.float32)
    x = rng.random((1, k), dtype=np.float32)
    x[0, 5] = 0.0
    runner = CompiledRunner(graph, {}, CompileOptions())
    assert not skips(runner)
    out = runner.run({"x": x, "w": w, "bias": bias})["act"]
    with np.errstate(invalid="ignore"):
        expected = np.maximum(x @ w + bias, 0)       # numpy: 0 * inf is NaN
    assert np.isnan(expected[0, 7]) and np.isnan(out[0, 7])
    np.testing.assert_allclose(np.delete(out, 7, 1), np.delete(expected, 7, 1), rtol=1e-5, atol=1e-6)


def test_constant_weights_skip_only_when_finite():
    k, n = 48, 20
    rng = np.random.default_rng(4)
    w = rng.random((k, n), dtype=np.float32) - 0.5
    x = rng.random((1, k), dtype=np.float32)
    x[0, :10] = 0.0
    bias = np.zeros(n, np.float32)
    finite = CompiledRunner(forward_graph(k, n, B.const(w)), {}, CompileOptions())
    assert skips(finite)
    np.testing.assert_allclose(finite.run({"x": x, "bias": bias})["act"], np.maximum(x @ w, 0),
                               rtol=1e-5, atol=1e-6)
    w[3, 2] = -np.inf
    with_inf = CompiledRunner(forward_graph(k, n, B.const(w)), {}, CompileOptions())
    assert not skips(with_inf)
    assert np.isnan(with_inf.run({"x": x, "bias": bias})["act"][0, 2])


def test_a_tall_product_against_a_finite_weight_skips_zero_steps_with_the_same_values(monkeypatch):
    """A large predict's products (batch rows in blocks of whole rows: codegen.lower's
    SKIP_ZEROS_TALL) skip the k steps where a row tile of x is zero, without scanning a weight
    known finite; the values are those of the dense product, and those of the reference."""
    from codegen import lower
    k, n, rows = 300, 200, lower.BATCH_ROWS_MIN + 37
    rng = np.random.default_rng(6)
    w = rng.random((k, n), dtype=np.float32) - 0.5
    bias = rng.random(n, dtype=np.float32) - 0.5
    x = rng.random((rows, k), dtype=np.float32) - 0.5
    x[:, : k // 3] = 0.0                             # zero steps for every row tile
    x[rng.random((rows, k)) < 0.5] = 0.0
    x[5, 7] = np.nan                                  # not zero: read, and NaN in its row
    feeds = {"x": x, "w": w, "bias": bias}
    marked = forward_graph(k, n, B.arg("w", "f32", (k, n), finite=True))
    listed = CompiledRunner(marked, {}, CompileOptions())
    assert ".nzf" in listed.compiled.code.optimized_ir
    got = listed.run(feeds)["act"]
    unmarked = CompiledRunner(forward_graph(k, n, B.arg("w", "f32", (k, n))), {}, CompileOptions())
    assert ".nzf" not in unmarked.compiled.code.optimized_ir
    monkeypatch.setattr(lower, "SKIP_ZEROS_TALL", False)
    dense = CompiledRunner(marked, {}, CompileOptions())
    assert ".nzf" not in dense.compiled.code.optimized_ir
    np.testing.assert_array_equal(got, dense.run(feeds)["act"])
    np.testing.assert_array_equal(got, unmarked.run(feeds)["act"])
    assert np.isnan(got[5]).all() and not np.isnan(np.delete(got, 5, axis=0)).any()
    np.testing.assert_allclose(got, ir.run(marked, feeds)["act"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lanes", [8, 4])
def test_a_tall_product_of_a_relus_outputs_multiplies_in_shorter_tiles_with_the_same_values(
        lanes, monkeypatch):
    """Two layers, the second's input a relu's outputs (mostly zero): on a host with 16 vector
    registers its tall skipping product takes panels of sparse_panel_vectors() vectors (tiles of 2
    rows, a `.v4` GEMM; emit_gemm's panel_vectors), the first layer's input (not a relu's) the
    full tile; the values are the same bits as with the full tile (SPARSE_TILES off), and the
    reference's.  `lanes` 4 compiles the same code paths for half-width vectors."""
    from codegen import gemm, lower, target
    monkeypatch.setattr(target, "vector_lanes", lambda bits=32, features=None: lanes)
    k, n, rows = 300, 150, lower.BATCH_ROWS_MIN + 37
    rng = np.random.default_rng(8)
    x = B.arg("x", "f32", (None, k))
    w1 = B.arg("w1", "f32", (k, n), finite=True)
    w2 = B.arg("w2", "f32", (n, n), finite=True)
    h = B.relu(B.matmul(x, w1))
    graph = ir.Graph("two", [x, w1, w2], [("out", B.relu(B.matmul(h, w2)))])
    feeds = {"x": rng.random((rows, k), dtype=np.float32) - 0.5,
             "w1": rng.random((k, n), dtype=np.float32) - 0.8,      # mostly negative: h mostly 0
             "w2": rng.random((n, n), dtype=np.float32) - 0.5}
    feeds["x"][rng.random((rows, k)) < 0.5] = 0.0
    shorter = CompiledRunner(graph, {}, CompileOptions())
    code = shorter.compiled.code.optimized_ir
    vectors = gemm.sparse_panel_vectors()
    assert (f".nzf.v{vectors}." in code) == (vectors is not None)
    assert len(set(re.findall(r"kcompile\.gemm\.NN\.[^ (]*\.nzf[^ (]*", code))) == 2
    got = shorter.run(feeds)["out"]
    assert (got == 0).mean() > 0.3
    monkeypatch.setattr(lower, "SPARSE_TILES", False)
    full = CompiledRunner(graph, {}, CompileOptions())
    # (the tall path's skipping GEMMs: a batch below BATCH_ROWS_MIN takes column blocks)
    assert ".v" not in "".join(re.findall(r"kcompile\.gemm\.NN\.[^ (]*\.nzf[^ (]*",
                                          full.compiled.code.optimized_ir))
    np.testing.assert_array_equal(got, full.run(feeds)["out"])
    np.testing.assert_allclose(got, ir.run(graph, feeds)["out"], rtol=1e-4, atol=1e-4)


def test_known_finite_and_the_interpreter_checks_the_mark():
    marked = B.arg("w", "f32", (2, 2), finite=True)
    assert ir.known_finite(marked)
    assert not ir.known_finite(B.arg("w", "f32", (2, 2)))
    assert ir.known_finite(B.const(np.ones((2, 2), np.float32)))
    assert not ir.known_finite(B.const(np.array([[1.0, np.nan]], np.float32)))
    x = B.arg("x", "f32", (None, 2))
    graph = ir.Graph("g", [x, marked], [("y", B.matmul(x, marked))])
    text = ir.print_graph(graph)
    assert "finite=true" in text
    assert ir.print_graph(ir.parse(text)) == text
    assert ir.known_finite(ir.parse(text).input("w"))
    with pytest.raises(ValueError, match="'w' is marked finite=true but holds inf or NaN"):
        ir.run(graph, {"x": np.ones((1, 2), np.float32), "w": np.array([[1, np.inf], [0, 1]], np.float32)})


def _mlp():
    model = kc.Sequential([layers.Input((6, 6)), layers.Flatten(), layers.Dense(24, activation="relu"),
                           layers.Dense(5)])
    model.compile(optimizer="adam", loss="mse", target="llvm")
    return model


def _numpy_forward(model, x):
    w1, b1, w2, b2 = model.get_weights()
    with np.errstate(invalid="ignore"):
        return np.maximum(x.reshape(len(x), -1) @ w1 + b1, 0) @ w2 + b2


def test_predict_marks_its_weights_finite_and_falls_back_for_inf():
    model = _mlp()
    rng = np.random.default_rng(5)
    x = rng.random((3, 6, 6), dtype=np.float32)
    x[:, 0, :] = 0.0                                # pixels 0..5 are zero in every sample
    one = np.ascontiguousarray(x[:1])
    np.testing.assert_allclose(model.predict(one, verbose=0), _numpy_forward(model, one), rtol=1e-5,
                               atol=1e-6)
    program = model._programs[("predict", None, False)]
    assert all(ir.known_finite(program.graph.input(w.path)) for w in model.weights)
    assert skips(program.runner)

    kernel = model.layers[1].kernel
    value = kernel.numpy()
    value[2, 4] = np.inf                            # a row whose input is zero
    kernel.assign(value)
    expected = _numpy_forward(model, one)
    assert np.isnan(expected).all()                 # NaN in unit 4 reaches every output
    for out in (model.predict(one, verbose=0), model.predict(x, verbose=0)[:1],
                model.predict_on_batch(one), model(one)):
        assert np.isnan(out).all()
    assert ("predict_nonfinite", None, False) in model._programs

    value[2, 4] = 0.5
    kernel.assign(value)
    np.testing.assert_allclose(model.predict(one, verbose=0), _numpy_forward(model, one), rtol=1e-5,
                               atol=1e-6)
    assert program.finite[1]                        # the finite program is back in use


def test_training_into_nan_weights_is_seen_by_the_next_predict():
    model = _mlp()
    x = np.random.default_rng(6).random((8, 6, 6), dtype=np.float32)
    x[:, 0, :] = 0.0
    y = np.zeros((8, 5), np.float32)
    one = np.ascontiguousarray(x[:1])
    assert np.isfinite(model.predict(one, verbose=0)).all()
    bad = x.copy()
    bad[0, 3, 3] = np.nan                           # the gradient makes the weights NaN
    model.train_on_batch(bad, y)
    assert not all(np.isfinite(w).all() for w in model.get_weights())
    assert np.isnan(model.predict(one, verbose=0)).all()
    assert np.isnan(_numpy_forward(model, one)).all()


def test_the_reference_target_also_sees_training_into_nan_weights():
    """target='reference' traces the same marked predict graph; its runner counts its writes too, so
    the interpreter is never fed NaN weights under the finite mark (it would raise)."""
    model = kc.Sequential([layers.Input((6, 6)), layers.Flatten(), layers.Dense(24, activation="relu"),
                           layers.Dense(5)])
    model.compile(optimizer="adam", loss="mse", target="reference")
    x = np.random.default_rng(7).random((8, 6, 6), dtype=np.float32)
    one = np.ascontiguousarray(x[:1])
    np.testing.assert_allclose(model.predict(one, verbose=0), _numpy_forward(model, one), rtol=1e-5,
                               atol=1e-6)
    assert ir.known_finite(model._programs[("predict", None, False)].graph.input(model.weights[0].path))
    bad = x.copy()
    bad[0, 3, 3] = np.nan
    model.train_on_batch(bad, np.zeros((8, 5), np.float32))
    assert np.isnan(model.predict(one, verbose=0)).all()
    assert ("predict_nonfinite", None, False) in model._programs


def test_predict_compiled_beside_evaluate_still_skips():
    """fit compiles train, evaluate and predict into one module, sharing kernels alike: evaluate's
    forward kernels read unmarked weights, so predict's must not be taken for them (with this model
    every forward kernel of evaluate is alike one of predict's but for the mark)."""
    model = kc.Sequential([layers.Input((6, 6)), layers.Flatten(), layers.Dense(24, activation="relu"),
                           layers.Dense(24, activation="relu"), layers.Dense(5, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", target="llvm")
    x = np.random.default_rng(8).random((8, 6, 6), dtype=np.float32)
    model.fit(x, np.eye(5, dtype=np.float32)[np.arange(8) % 5], epochs=1, batch_size=4, verbose=0)
    program = model._programs[("predict", None, False)]
    evaluate = next(p for k, p in model._programs.items() if k[0] == "eval")
    assert program.runner.compiled.code is evaluate.runner.compiled.code     # one module
    assert skips(program.runner)


# ----------------------------------------------------------------------------------------------
# Batched products (codegen.gemm's skip_zeros): zero row tiles of A are skipped, but not where B
# holds inf or NaN, so 0 * inf stays NaN
# ----------------------------------------------------------------------------------------------

def _tile_of_zeros_facing_inf(k, n, rows=12):
    rng = np.random.default_rng(5)
    x = rng.random((rows, k), dtype=np.float32) - 0.5
    x[:, 5] = 0.0                      # every row is zero at k = 5: a skipped step of every tile
    w = rng.random((k, n), dtype=np.float32) - 0.5
    w[5, 7] = np.inf
    return x, w


def test_batched_products_skip_zero_tiles_and_keep_zero_times_inf_nan(monkeypatch):
    from codegen import lower
    monkeypatch.setattr(lower, "SKIP_ZEROS", True)   # an option of the compiler, off by default
    k, n = 40, 160                     # n: two full column panels and more, so lists are kept
    graph = forward_graph(k, n, B.arg("w", "f32", (k, n)))
    x, w = _tile_of_zeros_facing_inf(k, n)
    bias = np.zeros(n, np.float32)
    runner = CompiledRunner(graph, {}, CompileOptions())
    assert "zero_skip_list" in runner.compiled.code.optimized_ir
    out = runner.run({"x": x, "w": w, "bias": bias})["act"]
    with np.errstate(invalid="ignore"):
        expected = np.maximum(x @ w + bias, 0)       # numpy: 0 * inf is NaN in column 7
        reference = ir.run(graph, {"x": x, "w": w, "bias": bias})["act"]
    assert np.isnan(out[:, 7]).all() and np.isnan(reference[:, 7]).all()
    np.testing.assert_allclose(np.delete(out, 7, 1), np.delete(expected, 7, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_batched_predict_with_an_inf_weight_gives_numpys_nan(target):
    k, n = 40, 160
    x, w = _tile_of_zeros_facing_inf(k, n)
    model = kc.Sequential([layers.Input((k,)), layers.Dense(n)])
    model.compile(loss="mse", target=target)
    model.set_weights([w, np.zeros(n, np.float32)])
    out = model.predict(x, verbose=0)
    with np.errstate(invalid="ignore"):
        expected = x @ w
    assert np.isnan(out[:, 7]).all()
    np.testing.assert_allclose(np.delete(out, 7, 1), np.delete(expected, 7, 1), rtol=1e-5, atol=1e-6)


def test_weight_gradients_skip_zero_steps_with_the_dense_steps_values(monkeypatch):
    """A dW = X^T dY computed in row blocks of the weight (fused with the optimizer's update) skips
    the steps where a row tile of X^T is zero (codegen.lower.SKIP_ZEROS_ROWS): training gives the
    weights the dense product gives, bit for bit, and follows the reference."""
    from codegen import lower

    def trained(flag, target="llvm"):
        monkeypatch.setattr(lower, "SKIP_ZEROS_ROWS", flag)
        kc.utils.set_random_seed(3)
        model = kc.Sequential([layers.Input((20, 30)), layers.Flatten(),
                               layers.Dense(200, activation="relu"),
                               layers.Dense(150, activation="relu"), layers.Dense(10)])
        model.compile(optimizer="adam", loss="mse", target=target)
        model.set_weights(start)
        for step in range(3):
            model.train_on_batch(x[step * 16:(step + 1) * 16], y[step * 16:(step + 1) * 16])
        return model

    rng = np.random.default_rng(8)
    x = rng.random((48, 20, 30), dtype=np.float32)
    x[:, :, :12] = 0.0                               # zero pixels for every row tile
    x[rng.random(x.shape) < 0.5] = 0.0
    y = rng.standard_normal((48, 10)).astype(np.float32)
    kc.utils.set_random_seed(3)
    start = kc.Sequential([layers.Input((20, 30)), layers.Flatten(), layers.Dense(200),
                           layers.Dense(150), layers.Dense(10)]).get_weights()
    listed, dense = trained(True), trained(False)
    program = [p for key, p in listed._programs.items() if key[0] == "train"][0]
    import re
    assert re.search(r"kcompile\.gemm\.TN\.\S*\.nz\.", program.runner.compiled.code.optimized_ir)
    for a, b in zip(listed.get_weights(), dense.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(listed.get_weights(), trained(True, "reference").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _force_lists(monkeypatch, flag):
    """codegen.lower.SPARSE_COLUMNS set to `flag`, its lists used at any share of listed steps."""
    from codegen import lower
    monkeypatch.setattr(lower, "SPARSE_COLUMNS", flag)
    monkeypatch.setattr(lower, "SPARSE_COLUMNS_SHARE", 1.0)


def _lists_made(model, graph) -> bool:
    program = [p for key, p in model._programs.items() if key[0] == graph][0]
    code = program.runner.compiled.code.optimized_ir
    return "tile_zero_lists" in code and re.search(r"kcompile\.gemm\.NN\.\S*\.tl\.", code)


def test_a_training_steps_mostly_zero_products_list_their_steps_once_with_the_dense_values(
        monkeypatch):
    """The forward product of a relu's output after Dropout, in column blocks of a batch
    (codegen.lower.SPARSE_COLUMNS): its row tiles' steps are listed once for every block, and
    training gives the weights the dense products give, bit for bit, and follows the reference.
    Hosts list in tiles of 2 rows with 16 vector registers, of 6 with 32."""
    from codegen.gemm import sparse_tile_rows

    def trained(flag, target="llvm"):
        _force_lists(monkeypatch, flag)
        kc.utils.set_random_seed(4)
        model = kc.Sequential([layers.Input((40,)), layers.Dense(200, activation="relu"),
                               layers.Dropout(0.3), layers.Dense(150, activation="relu"),
                               layers.Dense(10)])
        model.compile(optimizer="adam", loss="mse", target=target)
        model.set_weights(start)
        kc.utils.set_random_seed(5)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model

    rng = np.random.default_rng(9)
    x = rng.standard_normal((96, 40)).astype(np.float32)
    y = rng.standard_normal((96, 10)).astype(np.float32)
    kc.utils.set_random_seed(4)
    start = kc.Sequential([layers.Input((40,)), layers.Dense(200), layers.Dense(150),
                           layers.Dense(10)]).get_weights()
    listed, dense = trained(True), trained(False)
    assert bool(_lists_made(listed, "train")) == (sparse_tile_rows() is not None)
    assert not _lists_made(dense, "train")
    for a, b in zip(listed.get_weights(), dense.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(listed.get_weights(), trained(True, "reference").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_a_listed_product_with_an_inf_weight_facing_zeros_gives_numpys_nan(monkeypatch, target):
    """A batch of 32 rows in column blocks, its input a relu's output whose unit 5 is always
    zero, facing an inf in the next weight's row 5: that column panel multiplies every step, so
    0 * inf gives NaN in column 7, as numpy's product does; every other value is numpy's."""
    _force_lists(monkeypatch, True)
    rng = np.random.default_rng(10)
    w1 = rng.standard_normal((30, 64)).astype(np.float32)
    b1 = np.where(rng.random(64) < 0.7, -20.0, 0.0).astype(np.float32)   # mostly-zero units
    w1[:, 5], b1[5] = 0.0, -1.0                                           # unit 5: always 0
    w2 = rng.standard_normal((64, 160)).astype(np.float32)
    w2[5, 7] = np.inf
    model = kc.Sequential([layers.Input((30,)), layers.Dense(64, activation="relu"),
                           layers.Dense(160)])
    model.compile(loss="mse", target=target)
    model.set_weights([w1, b1, w2, np.zeros(160, np.float32)])
    x = rng.standard_normal((32, 30)).astype(np.float32)
    out = model.predict(x, batch_size=32, verbose=0)
    with np.errstate(invalid="ignore"):
        expected = np.maximum(x @ w1 + b1, 0) @ w2
    assert np.isnan(out[:, 7]).all() and np.isnan(expected[:, 7]).all()
    np.testing.assert_allclose(np.delete(out, 7, 1), np.delete(expected, 7, 1), rtol=1e-4,
                               atol=1e-4)
    if target == "llvm":
        from codegen.gemm import sparse_tile_rows
        assert bool(_lists_made(model, "predict")) == (sparse_tile_rows() is not None)
