"""The kcompile command, run as a user would: in a subprocess, on a file model.save() wrote."""
import os
import subprocess
import sys

import numpy as np
import pytest

import kcompile
from kcompile.layers import Dense, Flatten


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    kcompile.utils.set_random_seed(3)
    model = kcompile.Sequential([Flatten(input_shape=(4, 4)), Dense(8, activation="relu"),
                                 Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).random((40, 4, 4), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(40) % 3]
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("cli") / "model.keras")
    model.save(path)
    return path, model, x


def kc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kcompile.cli", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_stages_lists_the_pipeline(saved_model):
    result = kc("stages", saved_model[0])
    assert result.returncode == 0, result.stderr
    stages = result.stdout.split()
    for stage in ("traced", "train", "simplify", "cse", "dce", "optimized", "fused", "llvm", "asm"):
        assert stage in stages
    assert stages.index("simplify") < stages.index("optimized") < stages.index("fused") < stages.index("llvm")


def test_inspect_prints_a_stage_that_parses_back(saved_model):
    import ir
    result = kc("inspect", saved_model[0], "--stage", "optimized")
    assert result.returncode == 0, result.stderr
    graph = ir.parse(result.stdout)
    assert ir.print_graph(graph) == result.stdout
    assert "matmul" in result.stdout and "dense/kernel" in result.stdout
    fused = kc("inspect", saved_model[0], "--stage", "fused").stdout
    assert "kernel k0" in fused
    llvm = kc("inspect", saved_model[0], "--stage", "llvm", "--graph", "predict").stdout
    assert "define" in llvm


def test_export_from_the_shell_matches_predict(saved_model, tmp_path):
    path, model, x = saved_model
    out = tmp_path / "predictor"
    result = kc("export", path, "-o", str(out))
    assert result.returncode == 0, result.stderr
    p = kcompile.load_predictor(out)
    np.testing.assert_allclose(p.predict(x), model.predict(x, verbose=0), atol=1e-6)


def test_errors_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    result = kc("inspect", str(bad))
    assert result.returncode == 2
    assert "Cannot load" in result.stderr and "Traceback" not in result.stderr
    result = kc("stages", str(tmp_path / "missing.keras"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_console_script_is_installed(saved_model):
    import shutil
    script = shutil.which("kcompile")
    assert script, "the `kcompile` console script is missing: install the package (pip install -e .)"
    result = subprocess.run([script, "stages", saved_model[0]], capture_output=True, text=True)
    assert result.returncode == 0 and "fused" in result.stdout.split()


def test_python_dash_m_and_version(saved_model):
    import kcompile
    result = subprocess.run([sys.executable, "-m", "kcompile", "--version"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"kcompile {kcompile.__version__}"
    result = subprocess.run([sys.executable, "-m", "kcompile", "stages", saved_model[0]],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "fused" in result.stdout.split()


def test_export_refuses_a_malformed_feature_string_in_one_line(saved_model, tmp_path):
    result = kc("export", saved_model[0], "-o", str(tmp_path / "e"), "--features", "avx2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "must start with + or -" in result.stderr
    assert not (tmp_path / "e").exists()



def _absolute_error(y_true, y_pred):
    return kcompile.ops.mean(kcompile.ops.abs(y_true - y_pred), axis=-1)


def test_a_model_compiled_with_a_custom_loss_exports_and_shows_its_predict_graph(tmp_path):
    """The command cannot import a user's loss: export and the predict graph load the model
    without compiling it; the train graph, which needs the loss, says how to get it (exit 2)."""
    model = kcompile.Sequential([kcompile.layers.Input((4,)), Dense(3)])
    model.compile(optimizer="adam", loss=_absolute_error)
    path = str(tmp_path / "custom.keras")
    model.save(path)
    out = tmp_path / "predictor"
    result = kc("export", path, "-o", str(out))
    assert result.returncode == 0, result.stderr
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    np.testing.assert_allclose(kcompile.load_predictor(out).predict(x),
                               model.predict(x, verbose=0), atol=1e-6)
    result = kc("inspect", path, "--graph", "predict")
    assert result.returncode == 0, result.stderr
    assert "matmul" in result.stdout
    result = kc("inspect", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "_absolute_error" in result.stderr and "--graph predict" in result.stderr
