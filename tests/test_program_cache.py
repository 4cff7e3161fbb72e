"""Program manifests (codegen.cache.load_program / store_program): a process that compiles graphs
already compiled once loads the machine code without running the passes, and still computes what the
interpreter computes; damaged or stale manifests are misses, never wrong code."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ir
from codegen import compiler
from codegen.compiler import CompileOptions, Signature, compile_graphs
from codegen.runtime import CompiledRunner
from ir import build as B

REPO = Path(__file__).resolve().parent.parent


# these tests are about the cache: on, whatever the environment says (conftest.cache_on)
pytestmark = pytest.mark.usefixtures("cache_on")


def graphs(scale: float = 2.0):
    """A forward pass and a loss over the same weights; `scale` is a constant in both."""
    out = {}
    for with_loss in (False, True):
        x = B.arg("x", "f32", (None, 12))
        w = B.arg("w", "f32", (12, 5))
        b = B.arg("b", "f32", (5,))
        h = B.mul(B.relu(B.add(B.matmul(x, w), b)), B.const(np.full(5, scale, np.float32)))
        if with_loss:
            y = B.arg("y", "f32", (None, 5))
            d = B.sub(h, y)
            out["loss"] = ir.Graph("loss", [x, w, b, y], [("loss", B.reduce_mean(B.mul(d, d), (0, 1))),
                                                          ("h", h)])
        else:
            out["forward"] = ir.Graph("forward", [x, w, b], [("h", h)])
    return out


def state():
    rng = np.random.default_rng(1)
    return {"w": rng.standard_normal((12, 5)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32)}


def feeds():
    rng = np.random.default_rng(2)
    return {"x": rng.standard_normal((7, 12)).astype(np.float32),
            "y": rng.standard_normal((7, 5)).astype(np.float32)}


def manifests(directory: Path) -> list:
    return sorted(directory.glob("*.kcm"))


def check_against_interpreter(functions, gs):
    s, f = state(), feeds()
    for name, fn in functions.items():
        runner = CompiledRunner(gs[name], dict(s), compiled=fn)
        wanted = {k: v for k, v in f.items() if k in gs[name].input_names}
        got = runner.run(wanted)
        expected = ir.run(gs[name], dict(s, **wanted))
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6)


def test_second_compile_skips_the_passes_and_computes_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    first = compile_graphs(graphs())
    assert not first["forward"].code.cache_hit
    assert len(manifests(tmp_path)) == 1
    calls = []
    real = compiler._prepare
    monkeypatch.setattr(compiler, "_prepare", lambda *a: calls.append(a) or real(*a))
    second = compile_graphs(graphs())          # new graph objects, same text
    assert second["forward"].code.cache_hit
    assert calls == []                          # no pass ran
    for name in first:
        assert second[name].signature == first[name].signature
    check_against_interpreter(second, graphs())
    # the stages are still there when asked for, computed on demand
    assert ir.print_graph(second["loss"].optimized) == ir.print_graph(first["loss"].optimized)
    assert second["loss"].plan.static_bytes == first["loss"].signature.static_bytes
    assert len(calls) == 1


def test_signature_round_trips_through_json():
    fn = compile_graphs(graphs(), CompileOptions())["loss"]
    sig = fn.signature
    assert Signature.from_json(json.loads(json.dumps(sig.to_json()))) == sig
    assert [n for n, _ in sig.inputs] == fn.optimized.input_names
    assert [n for n, _ in sig.outputs] == list(fn.plan.outputs)
    assert sig.workspace_bytes(9) == fn.plan.workspace_bytes(9)


def test_a_different_constant_is_a_different_program(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    compile_graphs(graphs(2.0))
    other = compile_graphs(graphs(3.0))
    assert other["forward"]._prepared is not None      # compiled through the passes
    assert len(manifests(tmp_path)) == 2
    check_against_interpreter(other, graphs(3.0))


def test_entry_names_are_part_of_the_program(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    gs = graphs()
    compile_graphs(gs)
    alone = compile_graphs({"forward": gs["forward"]})
    assert alone["forward"]._prepared is not None
    check_against_interpreter(alone, gs)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign module key", "missing module"])
def test_damaged_manifest_is_a_miss(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    compile_graphs(graphs())
    (path,) = manifests(tmp_path)
    text = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif damage == "truncated":
        path.write_bytes(text[: len(text) // 2])
    elif damage == "foreign module key":
        data = json.loads(text)
        data["module"] = "../../etc/passwd"
        path.write_text(json.dumps(data))
    else:
        for entry in tmp_path.glob("*.kco"):
            entry.unlink()
    calls = []
    real = compiler._prepare
    monkeypatch.setattr(compiler, "_prepare", lambda *a: calls.append(a) or real(*a))
    again = compile_graphs(graphs())
    assert len(calls) == 2                      # the passes ran (the module entry may still be hit)
    assert again["forward"].code.cache_hit == (damage != "missing module")
    check_against_interpreter(again, graphs())
    # and the manifest is good again afterwards
    assert compile_graphs(graphs())["forward"].code.cache_hit
    assert len(calls) == 2


def test_no_manifest_for_custom_passes_profiles_or_dumps(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    from ir import passes
    compile_graphs(graphs(), CompileOptions(passes=(passes.dce,)))
    assert manifests(tmp_path) == []
    monkeypatch.setenv("KCOMPILE_DUMP", str(tmp_path / "dump"))
    compile_graphs(graphs())
    assert manifests(tmp_path) == []
    assert (tmp_path / "dump").is_dir()


def test_cache_off_writes_no_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("KCOMPILE_CACHE", "0")
    fn = compile_graphs(graphs())["forward"]
    assert not fn.code.cache_hit
    assert list(tmp_path.iterdir()) == []
    check_against_interpreter({"forward": fn}, graphs())


@pytest.mark.parametrize("loss", ["builtin", "user function"])
def test_second_process_trains_from_the_cache(tmp_path, loss):
    """Two processes train the same model.  The second runs no pass, and with kcompile's own loss it
    does not even trace (the programs are found by the model's description); with a user's loss
    function (code the description cannot vouch for) it traces, and finds the machine code by the
    traced graphs.  Either way it ends with exactly the first one's losses, metrics and weights."""
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        import kcompile
        from kcompile import layers
        import kcompile.trainer as T
        import codegen.compiler as C
        passes, traces = [], []
        real_prepare, real_trace = C._prepare, T.Trainer._trace
        C._prepare = lambda *a: passes.append(1) or real_prepare(*a)
        T.Trainer._trace = lambda *a: traces.append(1) or real_trace(*a)

        def my_loss(y_true, y_pred):
            return kcompile.losses.categorical_crossentropy(y_true, y_pred)

        kcompile.utils.set_random_seed(3)
        model = kcompile.Sequential([layers.Input((6,)), layers.Dense(8, activation="relu"),
                                     layers.Dropout(0.1), layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss=my_loss if sys.argv[1] == "user function"
                      else "categorical_crossentropy", metrics=["accuracy"])
        rng = np.random.default_rng(0)
        x = rng.random((40, 6), dtype=np.float32)
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        result = model.evaluate(x, y, verbose=0)
        prediction = model.predict(x[:5], verbose=0)
        print(json.dumps({"passes": len(passes), "traces": len(traces), "history": history.history,
                          "eval": result, "pred": prediction.tolist(),
                          "w": [w.numpy().tolist() for w in model.weights]}))
    """)
    env = dict(__import__("os").environ, KCOMPILE_CACHE_DIR=str(tmp_path), KCOMPILE_CACHE="1",
               PYTHONPATH=str(REPO))

    def run():
        out = subprocess.run([sys.executable, "-c", script, loss], env=env, capture_output=True,
                             text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold["passes"] > 0 and cold["traces"] > 0
    assert warm["passes"] == 0
    assert (warm["traces"] == 0) == (loss == "builtin")
    assert set(warm["history"]) == {"loss", "accuracy"}
    assert warm["history"] == cold["history"] and warm["eval"] == cold["eval"]
    assert warm["pred"] == cold["pred"] and warm["w"] == cold["w"]
