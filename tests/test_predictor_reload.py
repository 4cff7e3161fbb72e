"""Loading a predictor directory that was exported to again, and manifests that disagree with their
library.  The dynamic loader hands back an already-loaded library for the same path, so a second
export to one directory used to run the first export's code (a wrong answer with the same shapes,
an overflowed output buffer and a crash with others).  Scenarios that crash on a regression run in
a subprocess, so that they fail the test instead of killing pytest."""
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

import ir
from ir import build as B
from kcompile.export import export_predictor
from kcompile import predictor as predictor_module
from kcompile.predictor import PredictorError, load_predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT_FILES = {"libmodel.so", "model.o", "model.h", "example.c", "manifest.json"}

MODELS = """
import os, sys
import numpy as np
import kcompile
from kcompile import layers


def mk(nout, seed):
    kcompile.utils.set_random_seed(seed)
    m = kcompile.Sequential([layers.Input((4,)), layers.Dense(8, activation='relu'),
                             layers.Dense(nout, activation='softmax')])
    m.compile(optimizer='adam', loss='categorical_crossentropy', target='llvm')
    return m


def same(got, want):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


d = sys.argv[1]
rng = np.random.default_rng(0)
xa = rng.random((5, 4), dtype=np.float32)
xb = rng.random((2000, 4), dtype=np.float32)
"""

DIFFERENT_WIDTH = MODELS + """
A = mk(10, 1); A.export(d); pA = kcompile.load_predictor(d)
same(pA.predict(xa), A.predict(xa, verbose=0))
B = mk(3, 2); B.export(d); pB = kcompile.load_predictor(d)
assert pB.output_shape == (None, 3), pB
yb = pB.predict(xb)
assert yb.shape == (2000, 3), yb.shape
same(yb, B.predict(xb, verbose=0))
# the first predictor keeps its own library
assert pA.output_shape == (None, 10), pA
same(pA.predict(xb), A.predict(xb, verbose=0))
print('ok')
"""

SAME_ARCHITECTURE = MODELS + """
A = mk(10, 1); A.export(d); pA = kcompile.load_predictor(d)
same(pA.predict(xa), A.predict(xa, verbose=0))
B = mk(10, 2); B.export(d); pB = kcompile.load_predictor(d)
ya, yb = A.predict(xb, verbose=0), B.predict(xb, verbose=0)
assert np.abs(ya - yb).max() > 1e-3, 'the two models must differ for this test to mean anything'
got = pB.predict(xb)
assert np.abs(got - ya).max() > 1e-3, "load_predictor returned the first export's library"
same(got, yb)
same(pA.predict(xb), ya)
# loading the unchanged directory again gives the same library
same(kcompile.load_predictor(d).predict(xb), yb)
# and going back to the first weights gives those again
A.export(d)
same(kcompile.load_predictor(d).predict(xb), ya)
same(pB.predict(xb), yb)
print('ok')
"""


def run_isolated(script, tmp_path):
    """Run `script` with a private TMPDIR; returns that directory (which must end up empty)."""
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    directory = tmp_path / "predictor"
    env = dict(os.environ, TMPDIR=str(temp), PYTHONPATH=ROOT + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script, str(directory)], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, (f"exit status {result.returncode}\n{result.stdout}\n"
                                    f"{result.stderr}")
    assert result.stdout.strip().endswith("ok"), result.stdout
    assert os.listdir(temp) == [], os.listdir(temp)
    assert set(os.listdir(directory)) == EXPORT_FILES, os.listdir(directory)


def test_reexport_with_other_output_width_runs_the_new_library(tmp_path):
    run_isolated(DIFFERENT_WIDTH, tmp_path)


def test_reexport_with_same_architecture_gives_the_new_weights(tmp_path):
    run_isolated(SAME_ARCHITECTURE, tmp_path)


# in-process tests: IR-level exports as in test_export.py (no prediction that could overflow)

def dense_graph(n_in=6, n_out=5):
    x = B.arg("x", "f32", (None, n_in))
    w = B.arg("w", "f32", (n_in, n_out))
    b = B.arg("b", "f32", (n_out,))
    return ir.Graph("predict", [x, w, b], [("y", B.add(B.matmul(x, w), b))])


def dense_params(seed, n_in=6, n_out=5):
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(n_in, n_out)).astype(np.float32),
            "b": rng.normal(size=n_out).astype(np.float32)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("reload") / "predictor")
    params = dense_params(0)
    export_predictor(dense_graph(), params, directory, version="test")
    return directory, params


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's directory, private to the test (checked empty afterwards by the tests)."""
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def edit_manifest(source, target, **fields):
    shutil.copytree(source, target)
    path = os.path.join(target, "manifest.json")
    manifest = json.load(open(path))
    manifest.update(fields)
    with open(path, "w") as f:
        json.dump(manifest, f)
    return path


@pytest.mark.parametrize("field,value,says,truth", [
    ("output_shape", [None, 1], "outputs (None, 1)", "computes (None, 5)"),
    ("input_shape", [None, 7], "inputs (None, 7)", "takes (None, 6)")])
def test_manifest_with_wrong_shapes_is_an_error(exported, tmp_path, private_tmp, field, value, says,
                                                truth):
    path = edit_manifest(exported[0], tmp_path / "edited", **{field: value})
    with pytest.raises(PredictorError) as info:
        load_predictor(tmp_path / "edited")
    message = str(info.value)
    assert says in message and truth in message, message
    assert path in message and "export again" in message, message
    assert os.listdir(private_tmp) == []


def test_manifest_with_wrong_input_rank_is_an_error(exported, tmp_path, private_tmp):
    edit_manifest(exported[0], tmp_path / "rank", input_shape=[None, 2, 3])
    with pytest.raises(PredictorError, match=r"inputs \(None, 2, 3\) but the library .* takes "
                                             r"\(None, 6\)"):
        load_predictor(tmp_path / "rank")
    assert os.listdir(private_tmp) == []


def test_manifest_with_wrong_dtype_is_an_error(exported, tmp_path, private_tmp):
    edit_manifest(exported[0], tmp_path / "dtype", output_dtype="float64")
    with pytest.raises(PredictorError, match="outputs are float64 .* computes float32"):
        load_predictor(tmp_path / "dtype")
    assert os.listdir(private_tmp) == []


def test_reloading_an_unchanged_directory_and_no_files_left(exported, private_tmp):
    directory, params = exported
    x = np.random.default_rng(3).random((9, 6), dtype=np.float32)
    want = x @ params["w"] + params["b"]
    first, second = load_predictor(directory), load_predictor(directory)
    np.testing.assert_allclose(first.predict(x), want, atol=1e-5)
    np.testing.assert_allclose(second.predict(x), want, atol=1e-5)
    assert os.listdir(private_tmp) == []
    assert set(os.listdir(directory)) == EXPORT_FILES


def test_reexport_in_process_same_shapes(tmp_path, private_tmp):
    """Same shapes, other weights: no overflow possible, so this one runs in the test process."""
    directory = str(tmp_path / "p")
    x = np.random.default_rng(4).random((11, 6), dtype=np.float32)
    pa_params, pb_params = dense_params(1), dense_params(2)
    export_predictor(dense_graph(), pa_params, directory, version="test")
    pa = load_predictor(directory)
    export_predictor(dense_graph(), pb_params, directory, version="test")
    pb = load_predictor(directory)
    np.testing.assert_allclose(pb.predict(x), x @ pb_params["w"] + pb_params["b"], atol=1e-5)
    np.testing.assert_allclose(pa.predict(x), x @ pa_params["w"] + pa_params["b"], atol=1e-5)
    assert os.listdir(private_tmp) == []
    assert set(os.listdir(directory)) == EXPORT_FILES


def test_unusable_temp_directory_falls_back_to_the_export_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "does-not-exist"))
    directory = str(tmp_path / "p")
    params = dense_params(5)
    export_predictor(dense_graph(), params, directory, version="test")
    x = np.random.default_rng(5).random((3, 6), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(directory).predict(x),
                               x @ params["w"] + params["b"], atol=1e-5)
    assert set(os.listdir(directory)) == EXPORT_FILES
    assert not os.path.exists(tmp_path / "does-not-exist")


def test_a_load_between_an_exports_library_and_manifest_waits_for_the_manifest(tmp_path, private_tmp):
    # an export puts the new library in place, then the new manifest: a load that reads the old
    # manifest and the new library loads again once the manifest is there, instead of calling the
    # library corrupt
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    export_predictor(dense_graph(), dense_params(11), old, version="test")
    new_params = dense_params(12)
    export_predictor(dense_graph(), new_params, new, version="test")
    directory = tmp_path / "predictor"
    shutil.copytree(old, directory)
    shutil.copyfile(os.path.join(new, "libmodel.so"), directory / "libmodel.so")
    late = threading.Timer(0.3, shutil.copyfile, (os.path.join(new, "manifest.json"),
                                                 directory / "manifest.json"))
    late.start()
    try:
        predictor = load_predictor(directory)
    finally:
        late.join()
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(predictor.predict(x), x @ new_params["w"] + new_params["b"],
                               rtol=1e-5, atol=1e-5)
    # a manifest that stays as it was: the library is what does not match
    shutil.copyfile(os.path.join(old, "manifest.json"), directory / "manifest.json")
    with pytest.raises(PredictorError, match="corrupt or truncated"):
        load_predictor(directory)


def _load_in_child(directory, queue):
    queue.put(load_predictor(directory).predict(np.ones((2, 6), np.float32)).tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_load_holds_the_lock_can_load(tmp_path):
    # a thread of the parent is inside a load (holding the loaded-libraries lock) when a worker is
    # forked: the worker's own first load must not wait for a lock that no thread of it will release
    directory = str(tmp_path / "predictor")
    params = dense_params(13)
    export_predictor(dense_graph(), params, directory, version="test")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with predictor_module._LOADED_LOCK:
        child = context.Process(target=_load_in_child, args=(directory, queue))
        child.start()
        child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
        child.join()
    assert not alive, "the forked child hung in load_predictor"
    got = np.array(queue.get(timeout=10))
    np.testing.assert_allclose(got, np.ones((2, 6)) @ params["w"] + params["b"], rtol=1e-5, atol=1e-5)
