"""The benchmark command (kcompile.bench): its quick mode runs end to end and writes sane JSON.

Speed is not tested here (the machine is shared); structure and positivity of the figures are.
"""
import json
import os
import subprocess
import sys

import pytest

from kcompile import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_MODULES = ("torch", "jax", "jaxlib", "keras", "onnxruntime", "onnx")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "kcompile.bench", "--quick", "--peers", "none",
                           "--json", str(path)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as f:
        return json.load(f), proc.stdout


def test_quick_json_structure(quick_run):
    report, _ = quick_run
    assert set(report) >= {"meta", "skipped", "results", "targets", "errors"}
    assert report["errors"] == []
    meta = report["meta"]
    assert meta["quick"] is True and meta["peers"] == []
    assert meta["workloads"] == list(bench.WORKLOADS)
    assert meta["data"]["train_rows"] <= 1000
    assert "kcompile" in meta["versions"]
    for record in report["results"]:
        assert set(record) >= {"workload", "figure", "key", "system", "unit", "better", "median", "trials",
                               "ratio_to_kcompile"}
        assert record["workload"] in bench.WORKLOADS
        assert record["figure"] in bench.FIGURES
        assert len(record["trials"]) == meta["trials"]
        assert all(v > 0 for v in record["trials"]), record
        assert record["median"] > 0 and record["ratio_to_kcompile"] > 0, record


def test_quick_covers_every_workload(quick_run):
    report, _ = quick_run
    seen = {(r["workload"], r["figure"], r["system"]) for r in report["results"]}
    assert ("compile", "compile_first_step_s", bench.KC_COLD) in seen
    assert ("compile", "compile_first_step_s", bench.KC_WARM) in seen
    assert ("w1", "epoch_s", bench.KC) in seen
    assert ("w1", "steps_per_s", bench.KC) in seen
    assert ("w3", "latency_us", bench.KC_PREDICT) in seen
    assert ("w3", "throughput", bench.KC_PREDICT) in seen
    assert ("w3", "latency_us", bench.KC_PRED_PY) in seen
    w1_keys = {r["key"] for r in report["results"] if r["workload"] == "w1"}
    assert w1_keys == {"batch 32", "batch 128"}
    gemm = [r for r in report["results"] if r["workload"] == "gemm"]
    assert {r["key"] for r in gemm} == {s[0] for s in bench.GEMM_SHAPES}
    # kcompile, numpy in this process, numpy with the OpenBLAS environment unset, every figure saying
    # which OpenBLAS environment it used.
    assert len({r["system"] for r in gemm}) == 3
    assert all("OPENBLAS_CORETYPE" in r["note"] for r in gemm if r["system"] != bench.KC_GEMM)
    for r in report["results"]:
        if r["system"] == bench.REFERENCE[r["workload"]]:
            assert r["ratio_to_kcompile"] == pytest.approx(1.0)


def test_quick_targets_and_table(quick_run):
    report, stdout = quick_run
    names = [t["target"] for t in report["targets"]]
    assert "W1 batch 32, seconds per epoch" in names and "W3 batch-1024 throughput" in names
    assert sum(name.startswith("GEMM ") for name in names) == len(bench.GEMM_SHAPES)
    for t in report["targets"]:
        assert t["status"] in ("PASS", "MISS", "n/a")
        if t["target"].startswith("GEMM "):
            assert t["status"] in ("PASS", "MISS") and t["ratio"] > 0
        else:
            assert t["status"] == "n/a"          # no peers in this run
    assert "peers: none" in stdout
    assert "ratio" in stdout and "Targets (issue 4)" in stdout
    assert "OPENBLAS_CORETYPE" in stdout


def test_module_does_not_import_peers():
    code = ("import sys, kcompile.bench; "
            f"print(sorted(m for m in {PEER_MODULES!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_targets_pass_and_miss():
    results = bench.Results()
    for system, value in ((bench.KC, 1.0), (bench.KERAS, 4.0)):
        results.add("w1", "epoch_s", "batch 32", system, value)
    for system, value in ((bench.KC, 1.0), (bench.KERAS, 1.2)):
        results.add("w1", "epoch_s", "batch 128", system, value)
    for system, value in ((bench.KC_PREDICT, 1000.0), (bench.ORT, 900.0)):
        results.add("w3", "throughput", "batch 1024", system, value)
    targets = {t["target"]: t for t in bench.evaluate_targets(results, None, [32, 128], 2)}
    assert targets["W1 batch 32, seconds per epoch"]["status"] == "PASS"
    miss = targets["W1 batch 128, seconds per epoch"]
    assert miss["status"] == "MISS" and miss["ratio"] == pytest.approx(1 / 1.2)
    assert "too slow" in miss["note"]
    assert targets["W3 batch-1024 throughput"]["status"] == "PASS"
    assert targets["W3 one-sample predict latency"]["status"] == "n/a"


def test_medians_ratios_and_rotation():
    results = bench.Results()
    for value in (3.0, 1.0, 2.0):
        results.add("w1", "epoch_s", "batch 32", bench.KC, value)
    for value in (4.0, 6.0, 5.0):
        results.add("w1", "epoch_s", "batch 32", bench.TORCH, value)
    records = {r["system"]: r for r in results.records()}
    assert records[bench.KC]["median"] == 2.0
    assert records[bench.TORCH]["ratio_to_kcompile"] == pytest.approx(2.5)
    assert bench._verdict(records[bench.TORCH]) == "kcompile 2.50x faster"
    assert [bench._rotate("abc", t) for t in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]


@pytest.mark.parametrize("argv, message", [(["--workloads", "w2"], "w2"), (["--trials", "0"], "--trials"),
                                           (["--peers", "tensorflow"], "tensorflow")])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
