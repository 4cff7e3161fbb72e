"""Exported predictors: the shared library against the reference interpreter, from Python and C."""
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import ir
from ir import build as B
from codegen.target import host_cpu_features
from kcompile.export import export_predictor
from kcompile.predictor import PredictorError, load_predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_graph():
    x = B.arg("x", "f32", (None, 28, 28))
    w1 = B.arg("d1/kernel", "f32", (784, 64))
    b1 = B.arg("d1/bias", "f32", (64,))
    w2 = B.arg("d2/kernel", "f32", (64, 10))
    b2 = B.arg("d2/bias", "f32", (10,))
    h = B.relu(B.add(B.matmul(B.reshape(x, (None, 784)), w1), b1))
    y = B.softmax(B.add(B.matmul(h, w2), b2))
    return ir.Graph("predict", [x, w1, b1, w2, b2], [("y_pred", y)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rng = np.random.default_rng(1)
    params = mlp_params(rng)
    directory = str(tmp_path_factory.mktemp("export") / "predictor")
    export_predictor(mlp_graph(), params, directory, layers=["dense", "dense_1"], version="test")
    return directory, params


def mlp_params(rng, biases=True):
    """Weights for mlp_graph: small normal values (zero biases without `biases`)."""
    def bias(size, scale):
        return rng.normal(0, scale, size).astype(np.float32) if biases else np.zeros(size, np.float32)
    return {"d1/kernel": rng.normal(0, 0.05, (784, 64)).astype(np.float32), "d1/bias": bias(64, 0.1),
            "d2/kernel": rng.normal(0, 0.2, (64, 10)).astype(np.float32), "d2/bias": bias(10, 0.1)}


def reference(params, x):
    feeds = dict(params, x=x)
    return ir.run(mlp_graph(), feeds)["y_pred"]


@pytest.mark.parametrize("rows", [1, 7, 32, 1000])
def test_predictions_match_reference(exported, rows):
    directory, params = exported
    x = np.random.default_rng(rows).random((rows, 28, 28), dtype=np.float32)
    p = load_predictor(directory)
    np.testing.assert_allclose(p.predict(x), reference(params, x), atol=1e-6)


def test_directory_contents_and_manifest(exported):
    directory, _ = exported
    for name in ("libmodel.so", "model.o", "model.h", "example.c", "manifest.json"):
        assert os.path.isfile(os.path.join(directory, name)), name
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    assert manifest["input_shape"] == [None, 28, 28]
    assert manifest["output_shape"] == [None, 10]
    assert manifest["layers"] == ["dense", "dense_1"]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", os.path.join(directory, "libmodel.so")],
                               capture_output=True, text=True).stdout
    libs = {line.split("@")[-1].split("_")[0] for line in undefined.split() if "@" in line}
    assert libs <= {"GLIBC"}, undefined


def run_example(directory, x) -> list:
    """Build the export's example.c with cc and run it on the rows of x; its output lines."""
    x.tofile(directory / "input.f32")
    build = subprocess.run(["cc", "-O2", "-o", "example", "example.c", "-L.", "-lmodel",
                            "-Wl,-rpath,$ORIGIN"], cwd=directory, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(["./example", "input.f32", str(len(x))], cwd=directory, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.split()


def test_c_example_prints_same_classes(exported, tmp_path):
    directory, params = exported
    work = tmp_path / "c"
    shutil.copytree(directory, work)
    x = np.random.default_rng(5).random((9, 28, 28), dtype=np.float32)
    classes = [int(line) for line in run_example(work, x)]
    assert classes == list(np.argmax(reference(params, x), axis=1))


def test_c_example_prints_the_output_of_a_one_output_model(tmp_path):
    x_node = B.arg("x", "f32", (None, 3))
    w = B.arg("w", "f32", (3, 1))
    graph = ir.Graph("predict", [x_node, w], [("y", B.matmul(x_node, w))])
    weights = np.array([[0.5], [-1.25], [2.0]], np.float32)
    directory = tmp_path / "one"
    export_predictor(graph, {"w": weights}, str(directory))
    x = np.array([[1, 2, 3], [0, 0, 1], [4, 0, 0]], np.float32)
    np.testing.assert_allclose([float(v) for v in run_example(directory, x)], (x @ weights)[:, 0],
                               rtol=1e-5)


def test_threads_give_serial_results(exported):
    directory, _ = exported
    p = load_predictor(directory)
    inputs = [np.random.default_rng(i).random((50 + i, 28, 28), dtype=np.float32) for i in range(8)]
    serial = [p.predict(x) for x in inputs]
    results = [None] * 8

    def work(i):
        for _ in range(20):
            results[i] = p.predict(inputs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(results, serial):
        np.testing.assert_array_equal(a, b)


def test_a_predictor_pickles_as_its_export_for_a_process_pools_workers(exported, tmp_path):
    """pickle and copy.deepcopy give a predictor of the same export (loaded again); another
    process (a pool's worker) that receives it pickled predicts what this one does; a pickled
    predictor whose directory was since given another export is refused by name."""
    import copy
    import pickle
    directory, params = exported
    p = load_predictor(directory)
    x = np.random.default_rng(3).random((5, 28, 28), dtype=np.float32)
    want = p.predict(x)
    for other in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert other is not p and other.directory == os.path.abspath(directory)
        np.testing.assert_array_equal(other.predict(x), want)
    worker = ("import pickle, sys; predictor, x = pickle.loads(sys.stdin.buffer.read()); "
              "sys.stdout.buffer.write(pickle.dumps(predictor.predict(x)))")
    done = subprocess.run([sys.executable, "-c", worker], input=pickle.dumps((p, x[:2])),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    np.testing.assert_array_equal(pickle.loads(done.stdout), want[:2])
    moved = tmp_path / "moved"
    shutil.copytree(directory, moved)
    data = pickle.dumps(load_predictor(moved))
    shutil.rmtree(moved)
    other = {k: v * 2 for k, v in params.items()}
    export_predictor(mlp_graph(), other, str(moved), layers=["dense", "dense_1"], version="test")
    with pytest.raises(PredictorError, match="has changed since this predictor was pickled"):
        pickle.loads(data)


def test_bad_inputs_are_python_errors(exported):
    p = load_predictor(exported[0])
    with pytest.raises(PredictorError, match=r"shape \(rows, 28, 28\)"):
        p.predict(np.zeros((3, 784), np.float32))
    with pytest.raises(PredictorError, match="numeric"):
        p.predict(np.array([["a"] * 28] * 28, dtype=object)[None])
    assert p.predict(np.zeros((0, 28, 28))).shape == (0, 10)
    ragged = [np.zeros((28, 28)).tolist(), np.zeros((27, 28)).tolist()]
    with pytest.raises(PredictorError, match=r"shape \(rows, 28, 28\); numpy could not make one"):
        p.predict(ragged)


def test_an_export_to_a_directory_it_cannot_write_says_so_and_leaves_it(tmp_path, monkeypatch):
    """A directory that takes no new files (read-only: what os.access reports, faked here for one
    directory, since root writes into any): a ValueError naming it before anything is compiled,
    rather than the OSError of a temporary file; paths may also be bytes."""
    import kcompile
    model = kcompile.Sequential([kcompile.layers.Input((3,)), kcompile.layers.Dense(2)])
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == str(
        locked) else real_access(path, mode, **kw))
    for target in (locked / "predictor", locked / "new" / "predictor", locked):
        with pytest.raises(ValueError, match=f"cannot export to {target}: {locked} is not writable"):
            model.export(str(target))
    assert os.listdir(locked) == []
    # a path under a file, and an empty path, are named for what they are
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path / 'plain'} is a file, not a directory"):
        model.export(str(tmp_path / "plain" / "sub"))
    with pytest.raises(ValueError, match="cannot export to an empty path"):
        model.export("")
    assert (tmp_path / "plain").read_text() == "x"
    directory = model.export(os.fsencode(tmp_path / "as_bytes"))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(load_predictor(directory).predict(x), model.predict(x, verbose=0),
                               atol=1e-6)


def test_batch_size_calls_the_library_on_that_many_rows_at_a_time(exported):
    directory, params = exported
    p = load_predictor(directory)
    x = np.random.default_rng(5).random((10, 28, 28), dtype=np.float32)
    want = reference(params, x)
    for batch_size in (1, 3, 10, 64):
        np.testing.assert_allclose(p.predict(x, batch_size=batch_size), want, atol=1e-6)
    for bad in (0, -2, 2.5, "8", True):
        with pytest.raises(PredictorError, match="batch_size must be a positive integer"):
            p.predict(x, batch_size=bad)


def test_a_manifest_naming_a_library_elsewhere_or_another_abi_is_refused(exported, tmp_path):
    for field, value, message in (("library", "../other/libmodel.so", "not a file name"),
                                  ("library", "/tmp/libmodel.so", "not a file name"),
                                  ("abi_version", 2, "abi_version 2")):
        bad = tmp_path / f"bad_{field}_{len(str(value))}"
        shutil.copytree(exported[0], bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest[field] = value
        (bad / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(PredictorError, match=message):
            load_predictor(bad)


def test_native_error_codes(exported):
    import ctypes
    lib = ctypes.CDLL(os.path.join(exported[0], "libmodel.so"))
    lib.kcompile_predict.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    out = np.zeros((2, 10), np.float32)
    x = np.zeros((2, 28, 28), np.float32)
    assert lib.kcompile_predict(None, 2, out.ctypes.data) == 1
    assert lib.kcompile_predict(x.ctypes.data, 2, None) == 1
    assert lib.kcompile_predict(x.ctypes.data, 0, out.ctypes.data) == 2
    assert lib.kcompile_predict(x.ctypes.data, -5, out.ctypes.data) == 2
    # a row count whose sizes overflow 64-bit arithmetic: refused, not a wrapped-around workspace
    lib.kcompile_workspace_bytes.argtypes = [ctypes.c_int64]
    lib.kcompile_workspace_bytes.restype = ctypes.c_int64
    assert lib.kcompile_workspace_bytes(1 << 60) == -1 and lib.kcompile_workspace_bytes(0) == -1
    assert 0 < lib.kcompile_workspace_bytes(2) < lib.kcompile_workspace_bytes(4)
    assert lib.kcompile_predict(x.ctypes.data, 1 << 60, out.ctypes.data) == 2
    lib.kcompile_predict_with_workspace.argtypes = [ctypes.c_void_p, ctypes.c_int64,
                                                    ctypes.c_void_p, ctypes.c_void_p]
    assert lib.kcompile_predict_with_workspace(x.ctypes.data, 1 << 60, out.ctypes.data,
                                               out.ctypes.data) == 2


def test_corrupt_files_give_clear_errors(exported, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exported[0], bad)
    lib = bad / "libmodel.so"
    lib.write_bytes(lib.read_bytes()[: 1000])
    with pytest.raises(PredictorError, match="corrupt or truncated"):
        load_predictor(bad)
    shutil.rmtree(bad)
    shutil.copytree(exported[0], bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(PredictorError, match="corrupt"):
        load_predictor(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(PredictorError, match="no manifest.json"):
        load_predictor(bad)


def test_loader_needs_no_llvmlite(exported, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "llvmlite.py").write_text("raise ImportError('llvmlite is blocked in this test')\n")
    script = (
        "import sys, numpy as np\n"
        "from kcompile.predictor import load_predictor\n"
        f"p = load_predictor({exported[0]!r})\n"
        "print(p.predict(np.zeros((2, 28, 28), np.float32)).shape)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('llvmlite', 'ir', 'codegen', 'networkx'))\n"
        "assert not heavy, heavy\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "(2, 10)" in result.stdout


def test_portable_build_for_a_named_cpu(tmp_path):
    """cpu=/features= build for another x86-64 level (a portable AVX2 library); this host (any
    x86-64 with AVX2) runs it and gets the host build's predictions."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the portable-build example names an x86-64 CPU")
    rng = np.random.default_rng(3)
    params = mlp_params(rng, biases=False)
    from codegen import target
    if "+avx2" not in target.host_cpu_features().split(","):
        pytest.skip("this host cannot run an AVX2 build")
    directory = str(tmp_path / "portable")
    export_predictor(mlp_graph(), params, directory, cpu="haswell", features="+avx2,+fma")
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    assert manifest["target_cpu"] == "haswell"
    asm = subprocess.run(["objdump", "-d", os.path.join(directory, "model.o")],
                         capture_output=True, text=True).stdout
    assert "ymm" in asm and "zmm" not in asm          # 256-bit vectors, no AVX-512
    x = rng.random((13, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(directory).predict(x), reference(params, x),
                               atol=1e-6)


def _export_for(directory, rng, **target):
    """(directory, params, manifest) of the MLP with weights from `rng` exported for `target`."""
    params = mlp_params(rng)
    export_predictor(mlp_graph(), params, str(directory), **target)
    with open(os.path.join(directory, "manifest.json")) as f:
        return str(directory), params, json.load(f)


def test_a_cpu_without_features_gets_that_cpus_baseline_not_the_hosts(tmp_path):
    """cpu='x86-64' alone: the library is generated for SSE2 (4-lane vectors, no FMA: no libm call
    either) and runs here with the reference's predictions; bad targets fail before anything is
    written."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the baseline build names an x86-64 CPU")
    rng = np.random.default_rng(4)
    directory, params, manifest = _export_for(tmp_path / "baseline", rng, cpu="x86-64")
    assert (manifest["target_cpu"], manifest["target_features"]) == ("x86-64", "")
    asm = subprocess.run(["objdump", "-d", os.path.join(directory, "libmodel.so")],
                         capture_output=True, text=True).stdout
    assert "xmm" in asm and "ymm" not in asm and "zmm" not in asm and "vfmadd" not in asm
    undefined = subprocess.run(["nm", "-D", "--undefined-only", os.path.join(directory, "libmodel.so")],
                               capture_output=True, text=True).stdout
    assert "fma" not in undefined
    x = rng.random((13, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(directory).predict(x), reference(params, x), atol=1e-6)
    for bad, message in ((dict(features="avx2"), "must start with \\+ or -"),
                         (dict(features="+avx2,,+fma"), "must start with \\+ or -"),
                         (dict(cpu="no-such-cpu"), "'no-such-cpu' is not a recognized processor"),
                         (dict(features="+no-such-feature"), "is not a recognized feature")):
        with pytest.raises(ValueError, match=message):
            export_predictor(mlp_graph(), params, str(tmp_path / "bad"), **bad)
        assert not (tmp_path / "bad").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="it is a file"):
        export_predictor(mlp_graph(), params, str(tmp_path / "file"))


@pytest.mark.parametrize("target,width", [(dict(cpu="haswell"), "ymm"),
                                          (dict(features="+avx2,+fma"), "ymm"),
                                          (dict(cpu="x86-64-v4"), "zmm")])
def test_a_named_cpu_gets_the_vectors_it_implies_and_features_alone_a_generic_cpu(target, width,
                                                                                 tmp_path):
    """cpu='haswell' alone builds 256-bit FMA code (not 128-bit: llvmlite cannot list a CPU's
    features, so they are read off a probe LLVM compiles); features alone build for a generic CPU
    with those features, not the host's CPU (whose AVX-512 would come along)."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the CPUs named are x86-64 ones")
    runs_here = width == "ymm" or "+avx512f" in host_cpu_features().split(",")
    rng = np.random.default_rng(5)
    params = mlp_params(rng)
    directory = str(tmp_path / "named")
    export_predictor(mlp_graph(), params, directory, **target)
    asm = subprocess.run(["objdump", "-d", os.path.join(directory, "libmodel.so")],
                         capture_output=True, text=True).stdout
    assert width in asm and "vfmadd" in asm
    if width == "ymm":
        assert "zmm" not in asm and "%k1" not in asm
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    assert manifest["target_cpu"] == target.get("cpu", "x86-64")
    x = rng.random((13, 28, 28), dtype=np.float32)
    if not runs_here:        # an AVX-512 library on a CPU without: refused, not SIGILL
        with pytest.raises(PredictorError, match="uses avx512f.*which this CPU does not have"):
            load_predictor(directory)
        return
    np.testing.assert_allclose(load_predictor(directory).predict(x), reference(params, x),
                               atol=1e-5)


def test_a_named_cpus_manifest_lists_the_instruction_sets_its_code_may_use(tmp_path, monkeypatch):
    """cpu='haswell' turns on AVX2, BMI2, ... in LLVM, whose code then uses them (AVX2's integer
    ymm operations): the manifest lists them, so a CPU with AVX and FMA but no AVX2 refuses the
    library instead of dying of SIGILL; 'x86-64' implies none of them."""
    import platform
    from codegen.target import implied_features
    from kcompile import predictor
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the CPUs named are x86-64 ones")
    haswell = set(implied_features("haswell").split(","))
    assert {"+avx", "+fma", "+avx2", "+bmi", "+bmi2", "+sse4.2", "+popcnt", "+f16c"} <= haswell
    assert "+avx512f" not in haswell
    assert implied_features("x86-64") == ""
    assert {"+avx512f", "+avx512bw", "+avx512dq", "+avx512vl", "+avx2"} <= set(
        implied_features("x86-64-v4").split(","))
    flags = predictor._host_cpu_flags()
    if flags is None or "avx2" not in flags:
        pytest.skip("this CPU cannot run the haswell library to compare")
    rng = np.random.default_rng(6)
    directory, params, manifest = _export_for(tmp_path / "haswell", rng, cpu="haswell")
    assert set(manifest["target_features"].split(",")) == haswell
    monkeypatch.setattr(predictor, "_host_cpu_flags", lambda: flags - {"avx2"})
    with pytest.raises(PredictorError, match="uses avx2, which this CPU does not have"):
        load_predictor(directory)
    monkeypatch.setattr(predictor, "_host_cpu_flags", lambda: flags)
    x = rng.random((5, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(directory).predict(x), reference(params, x), atol=1e-5)


def test_a_library_for_features_this_cpu_lacks_is_refused_before_it_loads(exported, tmp_path,
                                                                          monkeypatch):
    """The manifest's target_features are checked against /proc/cpuinfo's flags before the
    library is mapped: a PredictorError naming the missing features and the fix, not SIGILL."""
    from kcompile import predictor
    directory = str(shutil.copytree(exported[0], tmp_path / "copy"))
    params = exported[1]
    flags = predictor._host_cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this system")
    manifest_path = os.path.join(directory, "manifest.json")
    manifest = json.load(open(manifest_path))
    monkeypatch.setattr(predictor, "_host_cpu_flags", lambda: flags - {"avx512f", "avx2"})
    manifest["target_features"] = "+avx2,-avx512f,+sse4.2,+no-such-feature"
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(PredictorError, match=r"uses avx2, which this CPU does not have.*"
                                             r"cpu='x86-64'"):
        load_predictor(directory)
    # '-' features and features Linux has no flag for are not requirements
    monkeypatch.setattr(predictor, "_host_cpu_flags", lambda: flags | {"avx2"})
    x = np.random.default_rng(2).random((3, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(directory).predict(x), reference(params, x),
                               atol=1e-5)


def test_zero_inputs_skip_finite_weight_rows_only(exported, tmp_path):
    """Weights are constants of the exported code: one-row products skip the weight rows of zero
    inputs when every weight is finite (the same sums), and read them all when one is not, so that
    0 * inf is NaN as in the reference."""
    directory, params = exported
    rng = np.random.default_rng(9)
    x = rng.random((3, 28, 28), dtype=np.float32)
    x[x < 0.5] = 0.0
    x[:, 0, :] = 0.0
    p = load_predictor(directory)
    for row in range(len(x)):
        np.testing.assert_allclose(p.predict(x[row:row + 1]), reference(params, x[row:row + 1]),
                                   atol=1e-6)
    bad = dict(params)
    bad["d1/kernel"] = params["d1/kernel"].copy()
    bad["d1/kernel"][5, 3] = np.inf                    # pixel (0, 5): zero in every row of x
    export_predictor(mlp_graph(), bad, str(tmp_path / "inf"), version="test")
    with np.errstate(invalid="ignore"):
        expected = reference(bad, x[:1])
    assert np.isnan(expected).all()
    assert np.isnan(load_predictor(str(tmp_path / "inf")).predict(x[:1])).all()


def test_a_large_batch_skips_zero_steps_against_finite_weights_only(tmp_path):
    """From BATCH_ROWS_MIN rows the products run in blocks of whole rows, which skip the k steps
    where a row tile of the input is zero when the weight is finite (its lists in the caller's
    workspace, not on the stack): the reference's values, NaN where an input is NaN, and with an
    inf weight facing zeros the NaN of 0 * inf."""
    from codegen.lower import BATCH_ROWS_MIN
    x_in = B.arg("x", "f32", (None, 300))
    w1, b1 = B.arg("w1", "f32", (300, 160)), B.arg("b1", "f32", (160,))
    w2 = B.arg("w2", "f32", (160, 10))
    h = B.relu(B.add(B.matmul(x_in, w1), b1))
    graph = ir.Graph("predict", [x_in, w1, b1, w2], [("y", B.matmul(h, w2))])
    rng = np.random.default_rng(10)
    params = {"w1": rng.normal(0, 0.1, (300, 160)).astype(np.float32),
              "b1": rng.normal(0, 0.1, 160).astype(np.float32),
              "w2": rng.normal(0, 0.2, (160, 10)).astype(np.float32)}
    rows = BATCH_ROWS_MIN + 88
    x = rng.random((rows, 300), dtype=np.float32)
    x[:, :100] = 0.0                                  # zero steps for every row tile
    x[x < 0.6] = 0.0
    x[17, 250] = np.nan
    export_predictor(graph, params, str(tmp_path / "finite"), version="test")
    got = load_predictor(str(tmp_path / "finite")).predict(x)
    want = ir.run(graph, dict(params, x=x))["y"]
    assert np.isnan(got[17]).all() and not np.isnan(np.delete(got, 17, axis=0)).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    bad = dict(params, w1=params["w1"].copy())
    bad["w1"][7, 3] = np.inf                          # input 7: zero in every row
    export_predictor(graph, bad, str(tmp_path / "inf"), version="test")
    assert np.isnan(load_predictor(str(tmp_path / "inf")).predict(x)).all()


def test_a_failed_re_export_leaves_the_existing_export_as_it_was(tmp_path, monkeypatch):
    """Linking fails while re-exporting another model into an export directory: every file stays
    byte for byte the old model's (the new object file is not left beside the old header and
    library), no staged file remains, and the old predictor still loads and predicts."""
    rng = np.random.default_rng(3)
    params = mlp_params(rng)
    directory = tmp_path / "predictor"
    export_predictor(mlp_graph(), params, str(directory), version="test")
    before = {f: (directory / f).read_bytes() for f in os.listdir(directory)}

    x = B.arg("x", "f32", (None, 28, 28))
    w = B.arg("w", "f32", (784, 3))
    other = ir.Graph("predict", [x, w], [("y_pred", B.matmul(B.reshape(x, (None, 784)), w))])
    other_params = {"w": np.ones((784, 3), np.float32)}
    monkeypatch.setenv("CC", "false")                  # a "compiler" that fails to link
    with pytest.raises(RuntimeError, match="linking"):
        export_predictor(other, other_params, str(directory), version="test")
    assert {f: (directory / f).read_bytes() for f in os.listdir(directory)} == before
    rows = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(str(directory)).predict(rows),
                               reference(params, rows), atol=1e-6)

    monkeypatch.delenv("CC")
    # after linking, writing the manifest fails (a full disk): still nothing replaced
    import codegen.export as codegen_export
    real_write = codegen_export._write

    def full_disk(path, data):
        if "manifest" in os.path.basename(path):
            raise OSError(28, "No space left on device")
        real_write(path, data)
    monkeypatch.setattr(codegen_export, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_predictor(other, other_params, str(directory), version="test")
    assert {f: (directory / f).read_bytes() for f in os.listdir(directory)} == before
    np.testing.assert_allclose(load_predictor(str(directory)).predict(rows),
                               reference(params, rows), atol=1e-6)

    monkeypatch.setattr(codegen_export, "_write", real_write)   # the same export: all replaced
    export_predictor(other, other_params, str(directory), version="test")
    np.testing.assert_allclose(load_predictor(str(directory)).predict(rows),
                               rows.reshape(4, 784).sum(axis=1, keepdims=True).repeat(3, axis=1),
                               rtol=1e-5)
    assert "shape (rows, 3)" in (directory / "model.h").read_text()
    assert sorted(os.listdir(directory)) == sorted(before)

    # under another name: the earlier export's library, object and header go, so that no C
    # program builds against the old model's header there (a failed one, again, keeps them)
    monkeypatch.setenv("CC", "false")
    with pytest.raises(RuntimeError, match="linking"):
        export_predictor(mlp_graph(), params, str(directory), version="test", name="net")
    assert sorted(os.listdir(directory)) == sorted(before)
    monkeypatch.delenv("CC")
    export_predictor(mlp_graph(), params, str(directory), version="test", name="net")
    assert sorted(os.listdir(directory)) == ["example.c", "libnet.so", "manifest.json", "net.h",
                                             "net.o"]
    np.testing.assert_allclose(load_predictor(str(directory)).predict(rows),
                               reference(params, rows), atol=1e-6)


def test_ids_for_an_embedding_are_range_checked_by_the_library_as_by_predict(tmp_path):
    # the graph's gather clamps ids into the table; the exported functions refuse them instead,
    # as model.predict does (ERR_INPUT from C, a PredictorError from Python), output untouched
    import ctypes
    import kcompile
    from kcompile import layers
    model = kcompile.Sequential([layers.Input((3,), dtype="int32"), layers.Embedding(5, 2),
                                 layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", target="llvm")
    directory = str(tmp_path / "ids")
    model.export(directory)
    predictor = load_predictor(directory)
    with open(os.path.join(directory, "manifest.json")) as f:
        assert json.load(f)["input_ids_below"] == 5
    with open(os.path.join(directory, "model.h")) as f:
        assert "#define KCOMPILE_ERR_INPUT 4" in f.read()
    good = np.array([[0, 4, 2], [3, 1, 1]])
    np.testing.assert_allclose(predictor.predict(good), model.predict(good, verbose=0), atol=1e-6)
    for bad, shown in ((5, "5"), (-1, "-1"), (10 ** 9, "1000000000"), (np.nan, "nan"),
                       (np.inf, "inf")):
        x = good.astype(np.float32)
        x[1, 2] = bad
        with pytest.raises(PredictorError, match=rf"ids in \[0, 5\).* id {shown} at position "
                                                 r"\[1, 2\] \(sample 1\)"):
            predictor.predict(x)
        with pytest.raises(ValueError, match="looks up ids in"):
            model.predict(x, verbose=0)
    # an integer id shows as given, not as its float32 (2**24 + 1 rounds to 2**24)
    x = good.astype(np.int64)
    x[1, 2] = 2 ** 24 + 1
    with pytest.raises(PredictorError, match=r" id 16777217 at position \[1, 2\]"):
        predictor.predict(x)
    # float64 ids are judged as given, as model.predict judges them, not as float32 rounds them:
    # 4.99999999 (float32: 5.0) is row 4 in both, -1e-50 (float32: -0.0) is refused by both
    x = good.astype(np.float64)
    x[1, 2] = 4.99999999
    want = model.predict(x, verbose=0)
    np.testing.assert_array_equal(want, model.predict(np.where(x == 4.99999999, 4, x), verbose=0))
    np.testing.assert_allclose(predictor.predict(x), want, atol=1e-6)
    x[1, 2] = -1e-50
    with pytest.raises(PredictorError, match=r" id -1e-50 at position \[1, 2\]"):
        predictor.predict(x)
    with pytest.raises(ValueError, match=r"holds the id -1e-50"):
        model.predict(x, verbose=0)
    lib = ctypes.CDLL(os.path.join(directory, "libmodel.so"))
    lib.kcompile_predict.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    x = good.astype(np.float32)
    x[0, 0] = 4.5e9
    out = np.full((2, 2), 7, np.float32)
    assert lib.kcompile_predict(x.ctypes.data, 2, out.ctypes.data) == 4
    assert (out == 7).all()
    # a model whose input is not ids has no such check: any float goes through
    plain = str(tmp_path / "mlp")
    export_predictor(mlp_graph(), mlp_params(np.random.default_rng(0)), plain)
    with open(os.path.join(plain, "manifest.json")) as f:
        assert json.load(f)["input_ids_below"] is None
    assert np.isfinite(load_predictor(plain).predict(np.full((1, 28, 28), -3e9, np.float32))).all()


def test_an_export_never_overwrites_files_of_the_users_own(tmp_path):
    """A directory that is not an earlier export keeps its files: one named as an export's would
    be (example.c, model.h, ...) makes the export a ValueError that names it, and the file is
    untouched; other files do not stand in the way, and an earlier export is replaced."""
    params = mlp_params(np.random.default_rng(3))
    project = tmp_path / "project"
    project.mkdir()
    (project / "example.c").write_text("my own code")
    (project / "notes.txt").write_text("notes")
    with pytest.raises(ValueError, match=r"already holds example\.c.*not an earlier export"):
        export_predictor(mlp_graph(), params, str(project))
    assert (project / "example.c").read_text() == "my own code"
    assert sorted(os.listdir(project)) == ["example.c", "notes.txt"]
    (project / "example.c").unlink()
    export_predictor(mlp_graph(), params, str(project))      # only notes.txt: fine
    assert (project / "notes.txt").read_text() == "notes"
    x = np.random.default_rng(4).random((2, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(str(project)).predict(x), reference(params, x),
                               atol=1e-5)
    other = mlp_params(np.random.default_rng(8))
    export_predictor(mlp_graph(), other, str(project))        # over the earlier export: replaced
    np.testing.assert_allclose(load_predictor(str(project)).predict(x), reference(other, x),
                               atol=1e-5)
