"""Several graphs in one module (codegen.compiler.compile_graphs), the GEMM library and a share of
the kernels compiled in a forked process (codegen.jit.compile_objects), and the trainer compiling
train, evaluate and predict together."""
from __future__ import annotations

import os

import numpy as np
import pytest

import ir
from codegen import cache, jit
from codegen.compiler import compile_graph, compile_graphs
from codegen.runtime import CompiledRunner
import ir.passes
from ir import build as B


def mlp_graphs():
    """Two graphs over the same weights: a forward pass, and the forward pass plus a squared error."""
    graphs = {}
    for with_loss in (False, True):
        x = B.arg("x", "f32", (None, 24))
        w1 = B.arg("w1", "f32", (24, 40))
        b1 = B.arg("b1", "f32", (40,))
        w2 = B.arg("w2", "f32", (40, 7))
        out = B.matmul(B.relu(B.add(B.matmul(x, w1), b1)), w2)
        if with_loss:
            y = B.arg("y", "f32", (None, 7))
            d = B.sub(out, y)
            graphs["loss"] = ir.Graph("loss", [x, w1, b1, w2, y],
                                      [("loss", B.reduce_mean(B.mul(d, d), (0, 1)))])
        else:
            graphs["forward"] = ir.Graph("forward", [x, w1, b1, w2], [("out", out)])
    return graphs


def test_graphs_compiled_together_share_code_and_compute_what_the_interpreter_does(tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    graphs = mlp_graphs()
    rng = np.random.default_rng(0)
    state = {"w1": rng.standard_normal((24, 40)).astype(np.float32),
             "b1": rng.standard_normal(40).astype(np.float32),
             "w2": rng.standard_normal((40, 7)).astype(np.float32)}
    x = rng.standard_normal((9, 24)).astype(np.float32)
    y = rng.standard_normal((9, 7)).astype(np.float32)
    together = compile_graphs(graphs)
    assert together["forward"].code is together["loss"].code
    # the forward kernels are alike in both graphs: one function serves both
    text = together["forward"].code.optimized_ir
    assert text.count("define") < sum(
        compile_graph(g, name=n).code.optimized_ir.count("define") for n, g in graphs.items())
    forward = CompiledRunner(graphs["forward"], dict(state), compiled=together["forward"])
    loss = CompiledRunner(graphs["loss"], dict(state), compiled=together["loss"])
    expected_out = ir.run(graphs["forward"], dict(state, x=x))["out"]
    expected_loss = ir.run(graphs["loss"], dict(state, x=x, y=y))["loss"]
    np.testing.assert_allclose(forward.run({"x": x})["out"], expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss.run({"x": x, "y": y})["loss"], expected_loss, rtol=1e-5)


def test_the_gemm_library_and_a_share_of_the_kernels_are_objects_of_their_own_and_cached(
        tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    graphs = mlp_graphs()
    first = compile_graphs(graphs)["forward"].code
    assert len(first.objects) == 3 and not first.cache_hit
    kernels, companion, library = first.optimized_ir.split(jit.MODULE_SEPARATOR)
    for name in ("kcompile.gemm.NN", "kcompile.gemm.kernel"):
        assert any(line.startswith("define") and name in line for line in library.splitlines())
        assert not any(line.startswith("define") and name in line
                       for line in (kernels + companion).splitlines())
    assert "define" in companion     # a share of the kernels
    again = compile_graphs(graphs)["forward"].code
    assert again.cache_hit and again.objects == first.objects
    assembly = again.assembly()   # every module, each parsed on its own
    assert "kcompile.gemm.kernel" in assembly


def test_a_module_marked_so_is_compiled_without_ir_passes_and_the_rest_with_them():
    from llvmlite import ir as llvm_ir
    from codegen.loops import for_range

    def summing_module(name):
        module = llvm_ir.Module(name)
        f64 = llvm_ir.DoubleType()
        fn = llvm_ir.Function(module, llvm_ir.FunctionType(f64, [llvm_ir.IntType(64)]), "f")
        b = llvm_ir.IRBuilder(fn.append_basic_block("entry"))
        slot = b.alloca(f64)
        b.store(llvm_ir.Constant(f64, 0.0), slot)
        with for_range(b, 0, fn.args[0]) as i:
            b.store(b.fadd(b.load(slot), b.sitofp(i, f64)), slot)
        b.ret(b.load(slot))
        return module

    (_, optimized), (_, untouched) = jit.compile_objects(
        [summing_module("a"), jit.without_ir_passes(summing_module("b"))], jobs=1)
    assert "alloca" not in optimized      # mem2reg ran
    assert "alloca" in untouched          # no IR pass ran


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_compile_objects_gives_the_same_code_with_and_without_child_processes(jobs):
    graphs = mlp_graphs()
    module_sets = []

    def modules():
        from llvmlite import ir as llvm_ir
        from codegen.lower import COMPANION, GEMM_LIBRARY, lower
        from ir.fusion import fuse
        from ir.memory import plan_memory
        module = llvm_ir.Module("t")
        companion = llvm_ir.Module("t.2")
        library = jit.without_ir_passes(llvm_ir.Module("t.gemm"))
        GEMM_LIBRARY[module] = GEMM_LIBRARY[companion] = library
        COMPANION[module] = companion
        fused = fuse(ir.passes.run_pipeline(graphs["forward"]))
        lower(fused, plan_memory(fused), name="forward", module=module, threading=False)
        module_sets.append((module, companion, library))
        return [module, companion, library]

    serial = jit.compile_objects(modules(), jobs=1)
    other = jit.compile_objects(modules(), jobs=jobs)
    assert [text for _, text in serial] == [text for _, text in other]
    linked = jit.JitModule.from_objects([code for code, _ in other], "")
    assert linked.address("forward")


def test_a_failing_child_falls_back_to_compiling_here(monkeypatch):
    parent = os.getpid()
    real = jit.compile_object

    def only_in_the_parent(module, speed_level=3):
        if os.getpid() != parent:
            os._exit(3)   # the child dies without a result
        return real(module, speed_level)

    monkeypatch.setattr(jit, "compile_object", only_in_the_parent)
    graphs = mlp_graphs()
    monkeypatch.setenv("KCOMPILE_CACHE", "0")
    monkeypatch.setenv("KCOMPILE_COMPILE_JOBS", "2")
    compiled = compile_graphs(graphs)["forward"]
    assert len(compiled.code.objects) == 3
    x = np.ones((3, 24), np.float32)
    state = {"w1": np.ones((24, 40), np.float32), "b1": np.zeros(40, np.float32),
             "w2": np.ones((40, 7), np.float32)}
    out = CompiledRunner(graphs["forward"], state, compiled=compiled).run({"x": x})["out"]
    np.testing.assert_allclose(out, np.full((3, 7), 24.0 * 40.0))


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_compile_jobs_setting_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("KCOMPILE_COMPILE_JOBS", value)
    with pytest.raises(ValueError, match="KCOMPILE_COMPILE_JOBS must be a positive integer"):
        jit.compile_jobs()


def test_corrupt_object_framing_is_detected(tmp_path):
    framed = cache._frame([b"abc", b"de"])
    assert cache._unframe(framed) == [b"abc", b"de"]
    assert cache._unframe(framed[:-1]) is None
    assert cache._unframe(framed + b"x") is None
    assert cache._unframe(b"\x00\x00\x00\x00") is None


def test_fit_compiles_evaluate_and_predict_with_the_train_step(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    from kcompile.layers import Dense, Input
    from kcompile.models import Sequential
    model = Sequential([Input(shape=(6,)), Dense(8, activation="relu"), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  target="llvm")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 6)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    codes = {key[0]: program.runner.compiled.code for key, program in model._programs.items()}
    assert set(codes) == {"train", "eval", "predict"}
    assert codes["train"] is codes["eval"] is codes["predict"]
    # and they compute what the reference interpreter computes with the same weights
    reference = Sequential([Input(shape=(6,)), Dense(8, activation="relu"),
                            Dense(3, activation="softmax")])
    reference.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                      target="reference")
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), reference.evaluate(x, y, verbose=0),
                               rtol=1e-5)
    assert len({id(p.runner.compiled.code) for p in model._programs.values()}) == 1
