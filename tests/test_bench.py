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


@pytest.fixture(scope="module")
def quick_new_workloads(tmp_path_factory):
    """W2 and fusion alone (the data is loaded for them without W1 or W3), one trial."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "kcompile.bench", "--quick", "--peers", "none",
                           "--workloads", "w2,fusion", "--trials", "1", "--json", str(path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as f:
        return json.load(f), proc.stdout


def _figures(report):
    return {(r["workload"], r["figure"], r["key"], r["system"]): r for r in report["results"]}


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
    warm_ok = not report["meta"].get("warm_cache_misses")   # (a compiler edit mid-run drops warm figures)
    for workload in ("compile", "w2"):
        for figure in ("compile_first_step_s", "compile_all_s"):
            assert (workload, figure, bench.KC_COLD) in seen
            assert (workload, figure, bench.KC_WARM) in seen or not warm_ok
    assert ("w2", "epoch_s", bench.KC) in seen
    assert ("fusion", "kernels", bench.KC_FUSED) in seen and ("fusion", "kernels", bench.KC_UNFUSED) in seen
    assert ("fusion", "steps_per_s", bench.KC_FUSED) in seen
    assert ("fusion", "steps_per_s", bench.KC_UNFUSED) in seen
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
        if r["system"] == bench.reference_system(r["workload"], r["figure"]):
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
    assert "ratio" in stdout and "Targets, ratios of medians" in stdout
    assert "OPENBLAS_CORETYPE" in stdout


def test_quick_w2(quick_new_workloads):
    report, stdout = quick_new_workloads
    assert report["errors"] == []
    assert report["meta"]["workloads"] == ["w2", "fusion"]
    assert report["meta"]["data"]["train_rows"] <= 1000
    figures = _figures(report)
    key = f"batch {bench.W2_BATCH}"
    for figure in ("compile_first_step_s", "compile_all_s"):
        cold = figures[("w2", figure, key, bench.KC_COLD)]
        assert cold["median"] > 0 and cold["ratio_to_kcompile"] == pytest.approx(1.0)
    assert (figures[("w2", "compile_all_s", key, bench.KC_COLD)]["median"]
            >= figures[("w2", "compile_first_step_s", key, bench.KC_COLD)]["median"])
    epoch = figures[("w2", "epoch_s", key, bench.KC)]
    assert epoch["median"] > 0 and epoch["unit"] == "s" and len(epoch["trials"]) == 1
    assert figures[("w2", "steps_per_s", key, bench.KC)]["median"] > 0
    assert not any(r["figure"] == "accuracy" for r in report["results"])     # full mode only
    assert {r["system"] for r in report["results"] if r["workload"] == "w2"} <= {
        bench.KC, bench.KC_COLD, bench.KC_WARM}
    target = next(t for t in report["targets"] if t["target"].startswith("W2 "))
    assert target["requirement"] == f"<= 0.7 x {bench.TORCH}" and target["status"] == "n/a"
    assert "W2" in stdout and "<= 0.7 x PyTorch eager" in stdout


def test_quick_fusion(quick_new_workloads):
    report, stdout = quick_new_workloads
    figures = _figures(report)
    fused = figures[("fusion", "kernels", "W1 train step", bench.KC_FUSED)]
    unfused = figures[("fusion", "kernels", "W1 train step", bench.KC_UNFUSED)]
    # one kernel per op without fusion; matmul + bias + activation, optimizer updates... fused by default
    assert unfused["median"] > fused["median"] > 0
    assert unfused["ratio_to_kcompile"] == pytest.approx(unfused["median"] / fused["median"])
    key = f"batch {bench.FUSION_BATCH}"
    for system in (bench.KC_FUSED, bench.KC_UNFUSED, bench.KC_FIT):
        record = figures[("fusion", "steps_per_s", key, system)]
        assert record["median"] > 0 and record["unit"] == "steps/s" and record["better"] == "higher"
    assert figures[("fusion", "steps_per_s", key, bench.KC_FUSED)]["ratio_to_kcompile"] == pytest.approx(1.0)
    meta = report["meta"]["fusion"]
    assert meta[bench.KC_UNFUSED]["fusion_level"] == 0 and meta[bench.KC_FUSED]["fusion_level"] >= 1
    assert meta["steps"] == report["meta"]["data"]["train_rows"] // bench.FUSION_BATCH
    loss_default, loss_unfused = meta["one_step_agreement"]["loss"]
    assert loss_unfused == pytest.approx(loss_default, rel=1e-4)
    assert "fusion_level=0" in stdout and "kernels" in stdout


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
    assert targets["W2 batch 128, seconds per epoch"]["status"] == "n/a"
    for torch_epoch, status in ((10.0, "PASS"), (1.2, "MISS")):
        results = bench.Results()
        results.add("w2", "epoch_s", "batch 128", bench.KC, 1.0)
        results.add("w2", "epoch_s", "batch 128", bench.TORCH, torch_epoch)
        targets = {t["target"]: t for t in bench.evaluate_targets(results, None, [32, 128], 2)}
        assert targets["W2 batch 128, seconds per epoch"]["status"] == status


def test_accuracy_compares_the_medians_over_seeds():
    """--accuracy-seeds N: each system's accuracy is the median of its N runs; one outlying seed
    does not decide the target, and the note says how many seeds."""
    key = "batch 32, 2 epochs"
    results = bench.Results()
    for value in (0.8401, 0.8648, 0.8546):
        results.add("w1", "accuracy", key, bench.KC, value)
    for value in (0.8568, 0.8592, 0.8531):
        results.add("w1", "accuracy", key, bench.KERAS, value)
    target = next(t for t in bench.evaluate_targets(results, None, [32, 128], 2)
                  if t["target"].startswith("W1 test accuracy"))
    assert target["status"] == "PASS" and target["kcompile"] == pytest.approx(0.8546)
    assert target["note"] == "peers 0.8568-0.8568; medians of 3 seeds each"
    results = bench.Results()
    results.add("w1", "accuracy", key, bench.KC, 0.8401)
    results.add("w1", "accuracy", key, bench.KERAS, 0.8568)
    target = next(t for t in bench.evaluate_targets(results, None, [32, 128], 2)
                  if t["target"].startswith("W1 test accuracy"))
    assert target["status"] == "MISS" and target["note"] == "peers 0.8568-0.8568"
    assert bench.build_parser().parse_args(["--accuracy-seeds", "3"]).accuracy_seeds == 3


def test_fusion_and_w2_records():
    results = bench.Results()
    results.add("fusion", "kernels", "W1 train step", bench.KC_UNFUSED, 192)
    results.add("fusion", "kernels", "W1 train step", bench.KC_FUSED, 34)
    results.add("fusion", "steps_per_s", "batch 32", bench.KC_UNFUSED, 50.0)
    results.add("fusion", "steps_per_s", "batch 32", bench.KC_FUSED, 200.0)
    results.add("fusion", "steps_per_s", "batch 32", bench.TORCH, 100.0)
    results.add("w2", "compile_first_step_s", "batch 128", bench.KC_COLD, 2.0)
    results.add("w2", "compile_first_step_s", "batch 128", bench.TORCH, 0.5)
    results.add("w2", "epoch_s", "batch 128", bench.KC, 4.0)
    records = results.records()
    # W2 before the fusion workload; the default-options figure first, and every ratio taken to it
    assert [r["workload"] for r in records][:3] == ["w2"] * 3
    kernels = [r for r in records if r["figure"] == "kernels"]
    assert [r["system"] for r in kernels] == [bench.KC_FUSED, bench.KC_UNFUSED]
    assert kernels[1]["ratio_to_kcompile"] == pytest.approx(192 / 34)
    assert bench._verdict(kernels[1]) == "" and bench._format_value(192, "kernels") == "192"
    assert bench._format_value(1183.4, "steps/s") == "1183 steps/s"
    steps = {r["system"]: r for r in records if r["figure"] == "steps_per_s"}
    assert bench._verdict(steps[bench.TORCH]) == "kcompile 2.00x faster"
    assert steps[bench.KC_UNFUSED]["ratio_to_kcompile"] == pytest.approx(0.25)
    w2_compile = {r["system"]: r for r in records if r["figure"] == "compile_first_step_s"}
    assert w2_compile[bench.TORCH]["ratio_to_kcompile"] == pytest.approx(0.25)     # to the cold process


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


@pytest.mark.parametrize("argv, message", [(["--workloads", "w9"], "w9"), (["--trials", "0"], "--trials"),
                                           (["--peers", "tensorflow"], "tensorflow"),
                                           (["--workloads", ","], "no workload given"),
                                           (["--batch-sizes", "a"], "comma-separated integers"),
                                           (["--accuracy-seeds", "0"], "--accuracy-seeds"),
                                           (["--json", "/no/such/dir/b.json"], "cannot write there")])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_w1_targets_state_the_products_floor():
    """With the GEMM rates of the run, a W1 epoch target says how long W1's eight products alone take
    at those rates on kcompile's threads: at batch 32, 2 * 32 * (784*512 + 512*512 + 512*10) flops
    forward, the same for dW, 2 * 32 * (512*512 + 10*512) for dX."""
    assert [s[0] for s in bench.w1_products(32)] == [
        "NN 32x784x512", "NN 32x512x512", "NN 32x512x10", "NT 32x512x512 (dX)", "NT 32x10x512 (dX)",
        "TN 784x32x512 (dW)", "TN 512x32x512 (dW)", "TN 512x32x10 (dW)"]
    assert bench.w1_products(64) == []
    results = bench.Results()
    for label, *_ in bench.w1_products(32):
        results.add("gemm", "gflops", label, bench.KC_GEMM, 100.0)
    step_flops = 2 * 32 * (784 * 512 + 512 * 512 + 512 * 10) * 2 + 2 * 32 * (512 * 512 + 10 * 512)
    expected = step_flops / 100e9 * (60000 / 32) / 2
    assert bench.products_floor(results, 32, 60000, 2) == pytest.approx(expected)
    assert bench.products_floor(results, 128, 60000, 2) is None      # no batch-128 rates measured
    results.add("w1", "epoch_s", "batch 32", bench.KC, 1.5)
    results.add("w1", "epoch_s", "batch 32", bench.KERAS, 2.5)
    targets = {t["target"]: t for t in bench.evaluate_targets(results, None, [32, 128], 2, rows=60000,
                                                              threads=2)}
    target = targets["W1 batch 32, seconds per epoch"]
    assert target["status"] == "MISS" and target["floor"] == pytest.approx(expected)
    assert f"{expected:.3g} s = {expected / 2.5:.3f} x {bench.KERAS}" in target["note"]
    assert "floor" not in targets["W1 batch 128, seconds per epoch"]
    # without the run's rows and threads (or its rates) the targets are as before
    plain = {t["target"]: t for t in bench.evaluate_targets(results, None, [32, 128], 2)}
    assert "floor" not in plain["W1 batch 32, seconds per epoch"]
