"""Benchmark: kcompile against what a user would pick instead, in one run, alternating the systems.

    python -m kcompile.bench [--quick] [--json PATH] [--workloads compile,w1,w2,w3,gemm,fusion]
                             [--batch-sizes 32,128] [--epochs 2] [--trials 3]
                             [--peers auto|none|torch,keras,jax,onnxruntime]

Workloads (the targets a run is held to, ratios to a peer measured in the same run, are in
`evaluate_targets` and printed at the end):

* ``compile``: W1's compile + first training step, and the compile of train + evaluate + predict (the
  first fit step, evaluate and predict calls), measured in fresh processes (imports not counted):
  kcompile with an empty cache directory (``KCOMPILE_CACHE_DIR`` = a new temporary directory) and then a
  second process on the same, now warm, directory; both figures for both processes.
* ``w1``: the seed's MLP on Fashion-MNIST (Flatten -> Dense 512 relu -> Dropout 0.2 -> Dense 512 relu ->
  Dropout 0.2 -> Dense 10 softmax, categorical cross-entropy, Adam(1e-3, epsilon=1e-7)): steady-state
  seconds per epoch (``fit(..., epochs=1)`` after a warm-up fit) per batch size, and (full mode only)
  the test accuracy after ``--epochs`` epochs at the first batch size.
* ``w2``: the small CNN of examples/fashion_mnist_cnn.py (Input 28x28x1 -> Conv2D 32 3x3 relu
  -> MaxPooling2D 2 -> Conv2D 64 3x3 relu -> MaxPooling2D 2 -> Flatten -> Dense 128 relu -> Dense 10
  softmax, the same loss and Adam), batch 128 always (``--batch-sizes`` is W1's): compile + first step
  and compile of train + evaluate + predict in fresh processes as for ``compile`` (kcompile cold and warm
  cache), steady-state seconds per epoch after a warm-up, and (full mode only) the test accuracy after
  ``--epochs`` epochs.  Peers: PyTorch eager (``nn.Conv2d`` on NCHW, Glorot-uniform weights, zero
  biases, 2 threads as in every torch workload) and Keras 3 on JAX.  Its target, printed with the
  others: kcompile's epoch <= 0.7 x PyTorch eager's.
* ``w3``: inference with the trained W1 model: one-sample latency (median of 1000 calls) and
  batch-1024 throughput of ``model.predict``, of the exported predictor from Python
  (``kcompile.load_predictor``) and from C (a small timing program built with ``cc``), of a numpy
  forward pass and of the peers, every peer running kcompile's trained weights.
* ``gemm``: the matrix multiplies of W1 (forward NN, backward NT for dX and TN for dW, batch 32 and 128)
  through ``codegen.gemm.emit_gemm``, against numpy with one thread, both with the OpenBLAS environment
  as set in this process and in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed (OpenBLAS
  picks its kernels when it loads, so that needs another process).  With ``w1`` in the same run, the W1
  epoch targets also state ``products_floor``: W1's eight products at these one-thread rates, shared
  perfectly among kcompile's threads, as a floor the machine's arithmetic sets.
* ``fusion``: what fusion buys on W1's batch-32 train step.  The train graph fit traces (the model's
  train program, as ``model.dump_ir`` sees it) is compiled twice through ``kcompile.backend.make_runner``,
  with ``codegen.compiler.CompileOptions(fusion_level=0)`` (one kernel per op) and with the default
  options, each on its own copy of the weights and optimizer state; both must agree on one step first.
  Figures: the number of kernels, and native steps per second: one epoch of rows (60000 -> 1875 steps)
  bound once with ``runner.bind_epoch`` (a shuffled order, the dropout seed as a counter, the loss and
  metric sums accumulated) and stepped through with ``runner.step(32, start)``, one native call per step
  that also gathers the batch, as fit's array epochs do (fit adds only its Python loop and callbacks).
  For comparison, in the same trials: ``model.fit`` of kcompile, PyTorch eager and Keras 3 on JAX, their
  steps per second *derived from one batch-32 W1 epoch* over the same rows (steps / epoch seconds: their
  own training loops, per-step batch handling included; the kcompile ``model.fit`` line shows what the
  loop around the native steps costs kcompile).  Ratios are to the default-options native figure.

Peers (benchmark only; the library never imports them, and neither does this module outside its worker
processes): PyTorch eager, Keras 3 on JAX, a hand-written JAX jit step, onnxruntime (W3, with the
graph built by the ``onnx`` helper API).  Each peer runs in its own long-lived worker process (its
threads, environment and backend never leak into another system), driven trial by trial over a pipe, so
the systems alternate: the machine is shared and noisy, so every figure is a median over trials and is
compared as a ratio to kcompile's figure measured in the same run.

``--quick`` uses tiny sizes (a few hundred rows, one short epoch, few repetitions) so CI can run it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

WORKLOADS = ("compile", "w1", "w2", "w3", "gemm", "fusion")
PEERS = ("torch", "keras", "jax", "onnxruntime")
PEER_ALIASES = {"pytorch": "torch", "onnx": "onnxruntime", "ort": "onnxruntime", "keras-jax": "keras"}
RESULT_MARKER = "KCOMPILE_BENCH_RESULT "

# Display names of the systems (the JSON uses the same strings).
KC = "kcompile"
KC_COLD = "kcompile (cold cache)"
KC_WARM = "kcompile (warm cache, 2nd process)"
KC_PREDICT = "kcompile model.predict"
KC_PRED_PY = "kcompile predictor from Python"
KC_PRED_C = "kcompile predictor from C"
KC_PRED_C_WS = "kcompile predictor from C, caller's workspace"
KC_GEMM = "kcompile emit_gemm"
KC_FUSED = "kcompile native step, default options"
KC_UNFUSED = "kcompile native step, fusion_level=0"
KC_FIT = "kcompile model.fit (from epoch time)"
TORCH = "PyTorch eager"
KERAS = "Keras 3 on JAX"
JAX = "JAX jit, hand-written step"
ORT = "onnxruntime session.run"

# figure id -> (description, unit, which direction is better)
FIGURES = {
    "compile_first_step_s": ("compile + first step", "s", "lower"),
    "compile_all_s": ("compile train+evaluate+predict (first calls)", "s", "lower"),
    "compile_s": ("of which the compiler (trace, passes, codegen, or cache)", "s", "lower"),
    "epoch_s": ("steady-state seconds per epoch", "s", "lower"),
    "kernels": ("kernels in the compiled train step", "kernels", "lower"),
    "steps_per_s": ("training steps per second", "steps/s", "higher"),
    "accuracy": ("test accuracy", "", "higher"),
    "latency_us": ("one-sample predict latency, median", "us", "lower"),
    "throughput": ("batch-1024 predict throughput", "samples/s", "higher"),
    "gflops": ("GFLOP/s, one thread", "GFLOP/s", "higher"),
}
WORKLOAD_TITLES = {"compile": "W1 compile", "w1": "W1", "w2": "W2", "w3": "W3", "gemm": "GEMM",
                   "fusion": "W1 fusion"}
REFERENCE = {"compile": KC_COLD, "w1": KC, "w2": KC, "w3": KC_PREDICT, "gemm": KC_GEMM, "fusion": KC_FUSED}
# (compile_s: kcompile's only)
COMPILE_FIGURES = ("compile_first_step_s", "compile_all_s", "compile_s")


def reference_system(workload, figure):
    """The kcompile figure the ratios of (workload, figure) are taken to: the cold-cache process for
    compile figures (W2 has them too), else the workload's reference."""
    return KC_COLD if figure in COMPILE_FIGURES else REFERENCE[workload]

# The matrix multiplies of a W1 training step: (label, trans_a, trans_b, m, n, k, runtime dimension).
# The label is "kind MxKxN" with op(A) M x K and op(B) K x N; the batch is the runtime dimension, as the
# compiler emits it.  NN: forward x @ W; NT: dX = dY @ W^T; TN: dW = X^T @ dY.
GEMM_SHAPES = [
    ("NN 32x784x512", False, False, 32, 512, 784, "m"),
    ("NN 32x512x512", False, False, 32, 512, 512, "m"),
    ("NN 32x512x10", False, False, 32, 10, 512, "m"),
    ("NN 128x784x512", False, False, 128, 512, 784, "m"),
    ("NN 128x512x512", False, False, 128, 512, 512, "m"),
    ("NN 128x512x10", False, False, 128, 10, 512, "m"),
    ("NT 32x512x512 (dX)", False, True, 32, 512, 512, "m"),
    ("NT 32x10x512 (dX)", False, True, 32, 512, 10, "m"),
    ("NT 128x512x512 (dX)", False, True, 128, 512, 512, "m"),
    ("NT 128x10x512 (dX)", False, True, 128, 512, 10, "m"),
    ("TN 784x32x512 (dW)", True, False, 784, 512, 32, "k"),
    ("TN 512x32x512 (dW)", True, False, 512, 512, 32, "k"),
    ("TN 512x32x10 (dW)", True, False, 512, 10, 32, "k"),
    ("TN 784x128x512 (dW)", True, False, 784, 512, 128, "k"),
    ("TN 512x128x512 (dW)", True, False, 512, 512, 128, "k"),
    ("TN 512x128x10 (dW)", True, False, 512, 10, 128, "k"),
]

LEARNING_RATE, EPSILON, DROPOUT = 1e-3, 1e-7, 0.2
W3_BATCH = 1024
W2_BATCH = 128
FUSION_BATCH = 32


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------

def _median(values):
    return float(statistics.median(values)) if values else float("nan")


def _rotate(items, trial):
    """The systems in a different order each trial, so no system always runs first (or after a
    particular other one)."""
    items = list(items)
    if not items:
        return items
    shift = trial % len(items)
    return items[shift:] + items[:shift]


def _latency_us(fn, inputs, n):
    """Median wall time of `n` calls of fn(one row), in microseconds, cycling through `inputs`."""
    for i in range(min(20, n)):
        fn(inputs[i % len(inputs)])
    times = []
    clock = time.perf_counter_ns
    count = len(inputs)
    for i in range(n):
        x = inputs[i % count]
        t0 = clock()
        fn(x)
        times.append(clock() - t0)
    return _median(times) / 1e3


def _throughput(fn, x, reps):
    """Samples per second of fn(x) over x's rows: rows / the median time of `reps` calls."""
    fn(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return len(x) / _median(times)


def _w3_inputs(x_test, rows=64):
    """One-row inputs (contiguous, cycling through the first test samples) and a batch of 1024 rows."""
    ones = [np.ascontiguousarray(x_test[i:i + 1]) for i in range(min(rows, len(x_test)))]
    batch = np.ascontiguousarray(x_test[np.arange(W3_BATCH) % len(x_test)])
    return ones, batch


def _nhwc(x):
    """Images (n, 28, 28) as (n, 28, 28, 1), a view (the layout of kcompile's and Keras's Conv2D)."""
    return x.reshape(len(x), 28, 28, 1)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _load_weights(path):
    with np.load(path) as data:
        return [np.ascontiguousarray(data[f"w{i}"]) for i in range(6)]


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_env(changes=None):
    """This process's environment with `changes` applied (None removes a variable), the repository on
    PYTHONPATH (so `python -m kcompile.bench` finds this very module when it is not installed)."""
    env = dict(os.environ)
    root = _repo_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _openblas_env_text(env=None):
    env = os.environ if env is None else env
    parts = []
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        parts.append(f"{key}={env[key]}" if key in env else f"{key} unset")
    return ", ".join(parts)


class _OpenBLAS:
    """numpy's bundled OpenBLAS through ctypes: thread count and the kernel core it chose."""

    def __init__(self):
        import ctypes
        import glob
        self.lib, self.suffix = None, ""
        base = os.path.dirname(np.__file__)
        candidates = glob.glob(os.path.join(base, "..", "numpy.libs", "*openblas*"))
        candidates += glob.glob(os.path.join(base, ".dylibs", "*openblas*"))
        for path in candidates:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
                                   ("openblas_", "64_"), ("openblas_", "")):
                if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                    self.lib, self.prefix, self.suffix = lib, prefix, suffix
                    getattr(lib, f"{prefix}get_corename{suffix}").restype = ctypes.c_char_p
                    return

    def _fn(self, name):
        return getattr(self.lib, f"{self.prefix}{name}{self.suffix}")

    def threads(self):
        return int(self._fn("get_num_threads")()) if self.lib else None

    def set_threads(self, count):
        if self.lib:
            self._fn("set_num_threads")(int(count))

    def corename(self):
        return self._fn("get_corename")().decode() if self.lib else "unknown"


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _gemm_operands(ta, tb, m, n, k, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    return a, b, c


def _seconds_per_call(fn, min_time):
    """Best of 3 batches of calls, each batch at least `min_time` seconds long."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


# ------------------------------------------------------------------------------------------------
# The systems.  Each has the same methods; peers run in worker processes (see _serve), kcompile in
# the benchmark's own process.  Peer libraries are imported in __init__, i.e. only in the workers.
# ------------------------------------------------------------------------------------------------

class _System:
    label = "?"

    def load_data(self, directory):
        self.set_data(*(np.load(os.path.join(directory, f"{name}.npy"))
                        for name in ("x_train", "y_train", "x_test", "y_test")))
        return True

    def set_data(self, x_train, y_train, x_test, y_test):
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self._w3_ones, self._w3_batch = _w3_inputs(x_test)

    def _warmup_rows(self, batch):
        # Two full batches and the epoch's last partial batch: every batch shape an epoch sees.
        n = len(self.x_train)
        return min(n, 2 * batch + n % batch)

    def version(self):
        return ""


def _keras_api_first_calls(build, x, y, batch):
    """Compile + first step, and + the first evaluate and predict, of a model `build()` makes,
    through the Keras API (kcompile and Keras alike)."""
    t0 = time.perf_counter()
    model = build()
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.evaluate(x[:batch], y[:batch], batch_size=batch, verbose=0)
    model.predict(x[:1], verbose=0)
    result = {"compile_first_step_s": first, "compile_all_s": first + time.perf_counter() - t0}
    if hasattr(model, "compile_seconds"):   # kcompile: the compiler's own part of those calls
        result["compile_s"] = model.compile_seconds
    return result


def _tiny_first_calls(model):
    """fit, evaluate and predict once on a tiny model: a system's one-time start-up."""
    x, y = np.ones((4, 3), np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)


def _same(x):
    return x


class _KerasAPI:
    """W1 and W2 through the Keras API (`self.build(seed)` and `self.build_w2(seed)` give compiled
    Sequentials): kcompile and Keras run the same calls.  W1's accuracy model is kept as
    `self.trained` (kcompile's W3 runs it)."""

    _w1 = _w2 = trained = None

    def _prepare(self, which, build, shape, batch):
        if getattr(self, which) is None:
            setattr(self, which, build(seed=1))
        rows = self._warmup_rows(batch)
        getattr(self, which).fit(shape(self.x_train[:rows]), self.y_train[:rows], batch_size=batch,
                                 epochs=1, verbose=0)
        return True

    def _epoch_s(self, model, shape, batch):
        x = shape(self.x_train)
        t0 = time.perf_counter()
        model.fit(x, self.y_train, batch_size=batch, epochs=1, verbose=0)
        return time.perf_counter() - t0

    def _accuracy(self, model, shape, epochs, batch):
        model.fit(shape(self.x_train), self.y_train, batch_size=batch, epochs=epochs, verbose=0)
        return float(model.evaluate(shape(self.x_test), self.y_test, batch_size=256, verbose=0)[1])

    def compile_first_step(self, x, y, batch):
        return _keras_api_first_calls(self.build, x, y, batch)

    def w1_prepare(self, batch):
        return self._prepare("_w1", self.build, _same, batch)

    def w1_epoch(self, batch):
        return self._epoch_s(self._w1, _same, batch)

    def w1_accuracy(self, epochs, batch, seed=0):
        self.trained = self.build(seed)
        return self._accuracy(self.trained, _same, epochs, batch)

    def w2_compile_first_step(self, x, y, batch):
        return _keras_api_first_calls(self.build_w2, _nhwc(x), y, batch)

    def w2_prepare(self, batch):
        return self._prepare("_w2", self.build_w2, _nhwc, batch)

    def w2_epoch(self, batch):
        return self._epoch_s(self._w2, _nhwc, batch)

    def w2_accuracy(self, epochs, batch, seed=0):
        return self._accuracy(self.build_w2(seed), _nhwc, epochs, batch)


class KcompileSystem(_KerasAPI, _System):
    label = KC

    def __init__(self):
        import kcompile  # noqa: F401  (light: submodules load on first use)
        self._fusion = {}

    def version(self):
        import kcompile
        import llvmlite
        from codegen import parallel, target
        adapted = parallel.adaptive_count()
        threads = (f"1 to {adapted} threads, adapted while running" if adapted else
                   f"{parallel.get_num_threads()} threads")
        return (f"kcompile {kcompile.__version__}, llvmlite {llvmlite.__version__}, CPU "
                f"{target.host_cpu_name()}, {threads}")

    def build(self, seed=0):
        from kcompile.layers import Dense, Dropout, Flatten
        from kcompile.models import Sequential
        from kcompile.optimizers import Adam
        from kcompile.utils import set_random_seed
        set_random_seed(seed)
        model = Sequential([Flatten(input_shape=(28, 28)), Dense(512, activation="relu"), Dropout(DROPOUT),
                            Dense(512, activation="relu"), Dropout(DROPOUT), Dense(10, activation="softmax")])
        model.compile(optimizer=Adam(learning_rate=LEARNING_RATE, epsilon=EPSILON),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def prepare(self):
        """One-time start-up (LLVM, lazy imports) on a tiny model of other shapes: not W1's compile."""
        from codegen import target
        from kcompile.layers import Dense
        from kcompile.models import Sequential
        target.initialize()
        model = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        _tiny_first_calls(model)

    def weights(self):
        return [np.asarray(w.numpy(), np.float32) for w in self.trained.weights]

    # -- W2: the CNN ------------------------------------------------------------------------------

    def build_w2(self, seed=0):
        from kcompile.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
        from kcompile.models import Sequential
        from kcompile.optimizers import Adam
        from kcompile.utils import set_random_seed
        set_random_seed(seed)
        model = Sequential([Input(shape=(28, 28, 1)), Conv2D(32, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
                            Conv2D(64, (3, 3), activation="relu"), MaxPooling2D((2, 2)), Flatten(),
                            Dense(128, activation="relu"), Dense(10, activation="softmax")])
        model.compile(optimizer=Adam(learning_rate=LEARNING_RATE, epsilon=EPSILON),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    # -- fusion: W1's train step compiled with and without fusion ---------------------------------

    def fusion_prepare(self, batch, steps):
        """Compile W1's traced train step with the default options and with fusion_level=0, each
        runner on its own copy of the weights and optimizer state, bind an epoch of `steps` batches as
        fit does, and check that one step of both agrees.  Returns the kernel counts and compile times."""
        from codegen.compiler import CompileOptions
        from kcompile import backend
        model = self.build(seed=2)
        # The train graph exactly as fit traces it: the model's train program, the one model.dump_ir
        # and model.compiler_stages inspect (with the targets spec of one-hot float labels).
        graph = model._inspected_program("train").graph
        state = model._state()
        rows = min(len(self.x_train), steps * batch)
        x = np.ascontiguousarray(self.x_train[:rows], dtype=np.float32)
        y = np.ascontiguousarray(self.y_train[:rows], dtype=np.float32)
        order = np.random.default_rng(0).permutation(rows)           # a shuffled epoch, as fit's
        # fit's accumulators: the loss (a batch mean) and every metric sum, i.e. the other outputs
        sums = [(name, "sum") for name in graph.output_names if name != "loss" and name not in state]
        self._fusion = {}
        info = {}
        for label, options in ((KC_FUSED, CompileOptions()), (KC_UNFUSED, CompileOptions(fusion_level=0))):
            own = {name: np.array(array, copy=True, order="C") for name, array in state.items()}
            t0 = time.perf_counter()
            runner = backend.make_runner(graph, "llvm", own, options=options)
            compile_s = time.perf_counter() - t0
            seed = np.zeros((), np.uint32)
            runner.bind_epoch({"x": x, "y": y, "seed": seed}, index=order, max_rows=batch, counters=("seed",),
                              accumulate=[("loss", "mean")] + sums)
            self._fusion[label] = (runner, own)
            info[label] = {"kernels": len(runner.compiled.fused.groups), "fusion_level": options.fusion_level,
                           "compile_s (cache as found)": compile_s}
        # Both variants compute the same step: one step from the same state, rows and seed.
        (fused, fused_state), (unfused, unfused_state) = self._fusion[KC_FUSED], self._fusion[KC_UNFUSED]
        fused.step(batch, 0)
        unfused.step(batch, 0)
        loss_a, loss_b = float(fused.output("loss", batch)), float(unfused.output("loss", batch))
        # Summation order differs between the variants, so an Adam update whose gradient is ~0 may
        # differ by up to 2 x the learning rate; a wrong step would differ in most elements.
        floats = [name for name in fused_state if fused_state[name].dtype.kind == "f"]
        diffs = np.concatenate([np.abs(fused_state[n].astype(np.float64) - unfused_state[n]).ravel() for n in floats])
        worst, off = float(diffs.max()), float(np.mean(diffs > 1e-4))
        if not (np.isfinite(loss_a) and np.isfinite(diffs).all()
                and abs(loss_a - loss_b) <= 1e-4 * max(1.0, abs(loss_a)) and off <= 1e-3):
            raise RuntimeError(f"fusion_level=0 and the default options disagree on one train step: loss "
                               f"{loss_b:.6g} vs {loss_a:.6g}, {off:.2%} of the state differs by more than "
                               f"1e-4 (largest difference {worst:.3g})")
        for label in self._fusion:        # warm-up: a few more steps of each
            self.fusion_steps(label, batch, min(steps, 10))
        info["one_step_agreement"] = {"loss": [loss_a, loss_b], "max_state_difference": worst,
                                      "fraction_over_1e-4": off}
        info["steps"] = rows // batch
        return info

    def fusion_steps(self, label, batch, steps):
        """Native steps per second of one variant: `steps` runner.step()s through the bound epoch, each
        one native call that gathers the batch through the shuffled order, runs the train step, bumps the
        dropout seed and adds up the loss and metric sums, as fit's array epochs do."""
        runner, _ = self._fusion[label]
        step = runner.step
        t0 = time.perf_counter()
        for i in range(steps):
            step(batch, i * batch)
        return steps / (time.perf_counter() - t0)

    def w3_load(self, predictor=None):
        self._predictor = predictor
        return True

    def w3_latency(self, n):
        model = self.trained
        out = {KC_PREDICT: _latency_us(lambda x: model.predict(x, verbose=0), self._w3_ones, n)}
        if self._predictor is not None:
            out[KC_PRED_PY] = _latency_us(self._predictor.predict, self._w3_ones, n)
        return out

    def w3_throughput(self, batch, reps):
        model = self.trained
        x = self._w3_batch[:batch]
        out = {KC_PREDICT: _throughput(lambda v: model.predict(v, batch_size=batch, verbose=0), x, reps)}
        if self._predictor is not None:
            out[KC_PRED_PY] = _throughput(self._predictor.predict, x, reps)
        return out


class NumpyForward(_System):
    """A hand-written numpy forward pass of the trained model (W3 only), in the benchmark's process."""
    label = "numpy forward"

    def w3_load(self, weights):
        self.w = _load_weights(weights)
        return True

    def _forward(self, x):
        w0, b0, w1, b1, w2, b2 = self.w
        h = x.reshape(len(x), -1)
        h = np.maximum(h @ w0 + b0, 0.0)
        h = np.maximum(h @ w1 + b1, 0.0)
        return _softmax(h @ w2 + b2)

    def w3_latency(self, n):
        return {self.name: _latency_us(self._forward, self._w3_ones, n)}

    def w3_throughput(self, batch, reps):
        return {self.name: _throughput(self._forward, self._w3_batch[:batch], reps)}


class TorchSystem(_System):
    label = TORCH

    def __init__(self):
        import torch
        torch.set_num_threads(2)
        self.torch = torch
        self._w1 = None
        self._w2 = None

    def version(self):
        return f"torch {self.torch.__version__}, {self.torch.get_num_threads()} threads"

    def set_data(self, x_train, y_train, x_test, y_test):
        super().set_data(x_train, y_train, x_test, y_test)
        t = self.torch
        self.tx, self.ty = t.from_numpy(np.ascontiguousarray(x_train)), t.from_numpy(np.ascontiguousarray(y_train))

    def build(self, seed=0):
        torch = self.torch
        nn = torch.nn
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(DROPOUT),
                              nn.Linear(512, 512), nn.ReLU(), nn.Dropout(DROPOUT), nn.Linear(512, 10))
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        return model, torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=EPSILON)

    def _epoch(self, state, x, y, batch):
        torch = self.torch
        F = torch.nn.functional
        model, opt = state
        model.train()
        n = len(x)
        perm = torch.randperm(n)
        total = torch.zeros(())
        correct = torch.zeros((), dtype=torch.int64)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            with torch.no_grad():
                total += loss.detach() * len(idx)
                correct += (logits.argmax(1) == yb.argmax(1)).sum()
        return float(total) / n

    def prepare(self):
        """One-time start-up (lazy imports of the first optimizer step) on a tiny model."""
        torch = self.torch
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=EPSILON)
        x, y = torch.ones(4, 3), torch.eye(2)[[0, 1, 0, 1]]
        self._epoch((model, opt), x, y, 4)
        model.eval()
        with torch.no_grad():
            model(x)

    def compile_first_step(self, x, y, batch):
        t0 = time.perf_counter()
        state = self.build()
        self._epoch(state, self.torch.from_numpy(x[:batch]), self.torch.from_numpy(y[:batch]), batch)
        first = time.perf_counter() - t0
        model = state[0]
        t0 = time.perf_counter()
        model.eval()
        with self.torch.no_grad():
            model(self.torch.from_numpy(x[:batch]))
            model(self.torch.from_numpy(x[:1]))
        return {"compile_first_step_s": first, "compile_all_s": first + time.perf_counter() - t0}

    def w1_prepare(self, batch):
        if self._w1 is None:
            self._w1 = self.build(seed=1)
        rows = self._warmup_rows(batch)
        self._epoch(self._w1, self.tx[:rows], self.ty[:rows], batch)
        return True

    def w1_epoch(self, batch):
        t0 = time.perf_counter()
        self._epoch(self._w1, self.tx, self.ty, batch)
        return time.perf_counter() - t0

    def w1_accuracy(self, epochs, batch, seed=0):
        state = self.build(seed)
        for _ in range(epochs):
            self._epoch(state, self.tx, self.ty, batch)
        model = state[0]
        model.eval()
        with self.torch.no_grad():
            pred = model(self.torch.from_numpy(self.x_test)).argmax(1).numpy()
        return float(np.mean(pred == self.y_test.argmax(1)))

    def w3_load(self, weights):
        torch = self.torch
        w = _load_weights(weights)
        model, _ = self.build()
        linears = [layer for layer in model if isinstance(layer, torch.nn.Linear)]
        with torch.no_grad():
            for i, layer in enumerate(linears):
                layer.weight.copy_(torch.from_numpy(w[2 * i].T.copy()))
                layer.bias.copy_(torch.from_numpy(w[2 * i + 1]))
        model.eval()
        self._w3_model = model
        return True

    def _predict(self, x):
        return self.torch.softmax(self._w3_model(self.torch.from_numpy(x)), 1).numpy()

    # -- W2: the CNN, NCHW ------------------------------------------------------------------------

    def build_w2(self, seed=0):
        torch = self.torch
        nn = torch.nn
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(),
                              nn.Linear(128, 10))
        for layer in model:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(layer.weight)     # fans of a conv: in/out channels x 3 x 3, as Keras
                nn.init.zeros_(layer.bias)
        return model, torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=EPSILON)

    def _nchw(self, x):
        x = x if isinstance(x, self.torch.Tensor) else self.torch.from_numpy(np.ascontiguousarray(x))
        return x.reshape(len(x), 1, 28, 28)

    def w2_compile_first_step(self, x, y, batch):
        torch = self.torch
        x, y = self._nchw(x), torch.from_numpy(y)
        t0 = time.perf_counter()
        state = self.build_w2()
        self._epoch(state, x[:batch], y[:batch], batch)
        first = time.perf_counter() - t0
        model = state[0]
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            model(x[:batch])
            model(x[:1])
        return {"compile_first_step_s": first, "compile_all_s": first + time.perf_counter() - t0}

    def w2_prepare(self, batch):
        if self._w2 is None:
            self._w2 = self.build_w2(seed=1)
        rows = self._warmup_rows(batch)
        self._epoch(self._w2, self._nchw(self.tx[:rows]), self.ty[:rows], batch)
        return True

    def w2_epoch(self, batch):
        x = self._nchw(self.tx)
        t0 = time.perf_counter()
        self._epoch(self._w2, x, self.ty, batch)
        return time.perf_counter() - t0

    def w2_accuracy(self, epochs, batch, seed=0):
        torch = self.torch
        state = self.build_w2(seed)
        x = self._nchw(self.tx)
        for _ in range(epochs):
            self._epoch(state, x, self.ty, batch)
        model = state[0]
        model.eval()
        xt = self._nchw(self.x_test)
        with torch.no_grad():      # in chunks: the whole test set's activations would take ~1 GB
            pred = torch.cat([model(xt[i:i + 1000]).argmax(1) for i in range(0, len(xt), 1000)]).numpy()
        return float(np.mean(pred == self.y_test.argmax(1)))

    def w3_latency(self, n):
        with self.torch.no_grad():
            return {f"{TORCH}, no_grad": _latency_us(self._predict, self._w3_ones, n)}

    def w3_throughput(self, batch, reps):
        with self.torch.no_grad():
            return {f"{TORCH}, no_grad": _throughput(self._predict, self._w3_batch[:batch], reps)}


class KerasSystem(_KerasAPI, _System):
    label = KERAS

    def __init__(self):
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import keras
        if keras.backend.backend() != "jax":
            raise RuntimeError(f"Keras runs on {keras.backend.backend()!r}, not JAX (set KERAS_BACKEND=jax)")
        self.keras = keras

    def version(self):
        import jax
        return f"keras {self.keras.__version__}, jax {jax.__version__}"

    def build(self, seed=0):
        keras = self.keras
        L = keras.layers
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input(shape=(28, 28)), L.Flatten(), L.Dense(512, activation="relu"),
                                  L.Dropout(DROPOUT), L.Dense(512, activation="relu"), L.Dropout(DROPOUT),
                                  L.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE, epsilon=EPSILON),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def prepare(self):
        """One-time start-up (JAX backend, Keras's trainer) on a tiny model of other shapes."""
        keras = self.keras
        model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(4, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        _tiny_first_calls(model)

    def w3_load(self, weights):
        self._w3_model = self.build()
        self._w3_model.set_weights(_load_weights(weights))
        return True

    def build_w2(self, seed=0):
        keras = self.keras
        L = keras.layers
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input(shape=(28, 28, 1)), L.Conv2D(32, (3, 3), activation="relu"),
                                  L.MaxPooling2D((2, 2)), L.Conv2D(64, (3, 3), activation="relu"),
                                  L.MaxPooling2D((2, 2)), L.Flatten(), L.Dense(128, activation="relu"),
                                  L.Dense(10, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE, epsilon=EPSILON),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def w3_latency(self, n):
        m = self._w3_model
        return {f"{KERAS} predict": _latency_us(lambda x: m.predict(x, verbose=0), self._w3_ones, n),
                f"{KERAS} predict_on_batch": _latency_us(m.predict_on_batch, self._w3_ones, n)}

    def w3_throughput(self, batch, reps):
        m = self._w3_model
        x = self._w3_batch[:batch]
        return {f"{KERAS} predict": _throughput(lambda v: m.predict(v, batch_size=batch, verbose=0), x, reps),
                f"{KERAS} predict_on_batch": _throughput(m.predict_on_batch, x, reps)}


class JaxSystem(_System):
    """The same MLP as a hand-written jitted JAX step (Glorot-uniform weights, Keras's Adam rule)."""
    label = JAX

    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self._step = jax.jit(self._step_impl, donate_argnums=(0, 1))
        self._predict = jax.jit(lambda params, x: jax.nn.softmax(self._forward(params, x), axis=-1))
        self._counter = 0
        self._rng = np.random.default_rng(0)
        self._w1 = None

    def version(self):
        return f"jax {self.jax.__version__}"

    def build(self, seed=0):
        jnp = self.jnp
        rng = np.random.default_rng(seed)
        params = []
        for fan_in, fan_out in ((784, 512), (512, 512), (512, 10)):
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            params.append((jnp.asarray(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)),
                           jnp.zeros((fan_out,), jnp.float32)))
        first = self.jax.tree_util.tree_map(jnp.zeros_like, params)
        second = self.jax.tree_util.tree_map(jnp.zeros_like, params)
        self._key = self.jax.random.PRNGKey(seed)
        return [params, (first, second, jnp.zeros((), jnp.float32))]

    def _forward(self, params, x, key=None):
        jax, jnp = self.jax, self.jnp
        h = x.reshape(x.shape[0], -1)
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jnp.maximum(h, 0.0)
                if key is not None:
                    key, sub = jax.random.split(key)
                    keep = jax.random.bernoulli(sub, 1.0 - DROPOUT, h.shape)
                    h = jnp.where(keep, h / (1.0 - DROPOUT), 0.0)
        return h

    def _step_impl(self, params, opt, x, y, key, i):
        jax, jnp = self.jax, self.jnp
        tree_map = jax.tree_util.tree_map
        key = jax.random.fold_in(key, i)

        def loss_fn(p):
            logits = self._forward(p, x, key)
            return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1)), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        m, v, t = opt
        t = t + 1.0
        b1, b2 = 0.9, 0.999
        m = tree_map(lambda m_, g: m_ + (g - m_) * (1 - b1), m, grads)
        v = tree_map(lambda v_, g: v_ + (g * g - v_) * (1 - b2), v, grads)
        alpha = LEARNING_RATE * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        params = tree_map(lambda p, m_, v_: p - alpha * m_ / (jnp.sqrt(v_) + EPSILON), params, m, v)
        correct = jnp.sum(jnp.argmax(logits, -1) == jnp.argmax(y, -1))
        return params, (m, v, t), loss, correct

    def _epoch(self, state, x, y, batch):
        n = len(x)
        perm = self._rng.permutation(n)
        params, opt = state
        loss = None
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            params, opt, loss, _ = self._step(params, opt, x[idx], y[idx], self._key, self._counter)
            self._counter += 1
        self.jax.block_until_ready((params, loss))
        state[0], state[1] = params, opt

    def prepare(self):
        """One-time start-up (backend, XLA compiler) on a tiny jitted gradient of other shapes."""
        jax, jnp = self.jax, self.jnp
        f = jax.jit(jax.value_and_grad(lambda w, x: jnp.sum(jnp.maximum(x @ w, 0.0))))
        jax.block_until_ready(f(jnp.ones((3, 4)), jnp.ones((4, 3))))

    def compile_first_step(self, x, y, batch):
        t0 = time.perf_counter()
        state = self.build()
        self._epoch(state, x[:batch], y[:batch], batch)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        np.asarray(self._predict(state[0], x[:batch]))
        np.asarray(self._predict(state[0], x[:1]))
        return {"compile_first_step_s": first, "compile_all_s": first + time.perf_counter() - t0}

    def w1_prepare(self, batch):
        if self._w1 is None:
            self._w1 = self.build(seed=1)
        rows = self._warmup_rows(batch)
        self._epoch(self._w1, self.x_train[:rows], self.y_train[:rows], batch)
        return True

    def w1_epoch(self, batch):
        t0 = time.perf_counter()
        self._epoch(self._w1, self.x_train, self.y_train, batch)
        return time.perf_counter() - t0

    def w1_accuracy(self, epochs, batch, seed=0):
        state = self.build(seed)
        for _ in range(epochs):
            self._epoch(state, self.x_train, self.y_train, batch)
        probs = np.asarray(self._predict(state[0], self.x_test))
        return float(np.mean(probs.argmax(1) == self.y_test.argmax(1)))

    def w3_load(self, weights):
        w = _load_weights(weights)
        self._w3_params = [(self.jnp.asarray(w[2 * i]), self.jnp.asarray(w[2 * i + 1])) for i in range(3)]
        return True

    def _w3_call(self, x):
        return np.asarray(self._predict(self._w3_params, x))

    def w3_latency(self, n):
        return {"JAX jitted function": _latency_us(self._w3_call, self._w3_ones, n)}

    def w3_throughput(self, batch, reps):
        return {"JAX jitted function": _throughput(self._w3_call, self._w3_batch[:batch], reps)}


class OnnxSystem(_System):
    """onnxruntime on an ONNX graph of the trained model, built with the `onnx` helper API."""
    label = ORT

    def __init__(self):
        import onnx
        import onnxruntime
        self.onnx, self.ort = onnx, onnxruntime

    def version(self):
        return f"onnxruntime {self.ort.__version__}, onnx {self.onnx.__version__}"

    def w3_load(self, weights):
        from onnx import TensorProto, helper, numpy_helper
        w = _load_weights(weights)
        nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1)]
        initializers = []
        for i in range(3):
            initializers += [numpy_helper.from_array(w[2 * i], f"W{i}"),
                             numpy_helper.from_array(w[2 * i + 1], f"b{i}")]
            nodes.append(helper.make_node("Gemm", [f"h{2 * i}", f"W{i}", f"b{i}"], [f"h{2 * i + 1}"]))
            if i < 2:
                nodes.append(helper.make_node("Relu", [f"h{2 * i + 1}"], [f"h{2 * i + 2}"]))
        nodes.append(helper.make_node("Softmax", ["h5"], ["y"], axis=1))
        graph = helper.make_graph(
            nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 28, 28])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        self.onnx.checker.check_model(model)
        self.session = self.ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return True

    def _run(self, x):
        return self.session.run(None, {"x": x})[0]

    def w3_latency(self, n):
        return {ORT: _latency_us(self._run, self._w3_ones, n)}

    def w3_throughput(self, batch, reps):
        return {ORT: _throughput(self._run, self._w3_batch[:batch], reps)}


class NumpyGemm:
    """numpy matmul on the W1 shapes with one OpenBLAS thread (in this process or in a worker whose
    OpenBLAS environment differs)."""
    label = "numpy"

    def __init__(self):
        self.blas = _OpenBLAS()
        self._operands = {}

    def version(self):
        return f"numpy {np.__version__}"

    def info(self):
        return {"corename": self.blas.corename(), "threads": self.blas.threads(),
                "env": _openblas_env_text()}

    def set_threads(self, count):
        previous = self.blas.threads()
        self.blas.set_threads(count)
        return previous

    def gemm(self, label, min_time):
        shape = next(s for s in GEMM_SHAPES if s[0] == label)
        _, ta, tb, m, n, k, _ = shape
        if label not in self._operands:
            self._operands[label] = _gemm_operands(ta, tb, m, n, k)
        a, b, c = self._operands[label]
        oa, ob = (a.T if ta else a), (b.T if tb else b)
        return _seconds_per_call(lambda: np.matmul(oa, ob, out=c), min_time)


WORKER_SYSTEMS = {"torch": TorchSystem, "keras": KerasSystem, "jax": JaxSystem,
                  "onnxruntime": OnnxSystem, "numpy": NumpyGemm, "kcompile": KcompileSystem}


def _peer_env(kind):
    if kind == "keras":
        return {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kind == "jax":
        return {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return {}


# ------------------------------------------------------------------------------------------------
# Worker processes: one request per line on stdin, one JSON answer per line on the original stdout
# ------------------------------------------------------------------------------------------------

def _serve(kind):
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)            # whatever the libraries print goes to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(message):
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        impl = WORKER_SYSTEMS[kind]()
        send({"ok": {"version": impl.version()}})
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which says "skipped"
        send({"error": f"{type(e).__name__}: {e}"})
        return 1
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            break
        try:
            send({"ok": getattr(impl, command)(**request)})
        except Exception as e:  # noqa: BLE001
            send({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    return 0


class WorkerError(RuntimeError):
    pass


class Worker:
    """A system in a separate process, called like a local object: worker.call('w1_epoch', batch=32)."""

    def __init__(self, kind, env_changes=None, timeout=1800.0):
        self.kind = kind
        self.timeout = timeout
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "kcompile.bench", "--worker", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=_child_env(env_changes), text=True, bufsize=1)
        self._hello = None

    def ready(self):
        if self._hello is None:
            self._hello = self._read()
        return self._hello

    def call(self, method, **kwargs):
        self.ready()
        try:
            self.proc.stdin.write(json.dumps({"cmd": method, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(f"{self.kind} worker is gone: {self._log_tail()}") from None
        return self._read()

    def _log_tail(self, lines=8):
        try:
            self.log.seek(0)
            text = self.log.read().strip().splitlines()
        except (OSError, ValueError):
            return ""
        return " | ".join(text[-lines:])

    def _read(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.proc.kill()
            raise WorkerError(f"{self.kind} worker timed out after {self.timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"{self.kind} worker exited with code {code}: {self._log_tail()}")
        message = json.loads(line)
        if "error" in message:
            raise WorkerError(f"{self.kind}: {message['error']}")
        return message["ok"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Local:
    """A system in this process, with the Worker's calling convention."""

    def __init__(self, impl):
        self.impl = impl

    def call(self, method, **kwargs):
        return getattr(self.impl, method)(**kwargs)

    def close(self):
        pass


def _child_compile(system, batch, model="w1"):
    """In a fresh process: import, start the backend, then time compile + first step of W1 or W2
    (printed as JSON)."""
    t0 = time.perf_counter()
    impl = WORKER_SYSTEMS[system]()
    imported = time.perf_counter() - t0
    t0 = time.perf_counter()
    impl.prepare()
    warmup = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    result = (impl.w2_compile_first_step if model == "w2" else impl.compile_first_step)(x, y, batch)
    result["import_s"] = imported
    result["warmup_s"] = warmup
    cache = os.environ.get("KCOMPILE_CACHE_DIR")
    if system == "kcompile" and cache and os.path.isdir(cache):
        result["cache_entries"] = len([f for f in os.listdir(cache) if f.endswith(".kco")])
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------
# The C timing program for the exported predictor
# ------------------------------------------------------------------------------------------------

C_HARNESS = r"""/* Times an exported kcompile predictor from C: one-row latency and batch throughput. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int (*predict_fn)(const float *, int64_t, float *);
typedef int (*predict_ws_fn)(const float *, int64_t, float *, void *);
typedef int64_t (*workspace_fn)(int64_t);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, long n) {
    qsort(v, (size_t)n, sizeof(double), by_value);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static predict_fn predict;
static predict_ws_fn predict_ws;
static void *workspace;

static int call(int use_ws, const float *x, int64_t rows, float *out) {
    return use_ws ? predict_ws(x, rows, out, workspace) : predict(x, rows, out);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s LIB INPUT ROWS ROW_LEN OUT_LEN N_LATENCY REPS\n", argv[0]);
        return 2;
    }
    long rows = atol(argv[3]), row_len = atol(argv[4]), out_len = atol(argv[5]);
    long n = atol(argv[6]), reps = atol(argv[7]);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    predict = (predict_fn)dlsym(lib, "kcompile_predict");
    predict_ws = (predict_ws_fn)dlsym(lib, "kcompile_predict_with_workspace");
    workspace_fn ws_bytes = (workspace_fn)dlsym(lib, "kcompile_workspace_bytes");
    if (!predict) { fprintf(stderr, "no kcompile_predict in %s\n", argv[1]); return 1; }
    float *x = malloc(sizeof(float) * (size_t)rows * (size_t)row_len);
    float *out = malloc(sizeof(float) * (size_t)rows * (size_t)out_len);
    double *t = malloc(sizeof(double) * (size_t)(n > reps ? n : reps));
    FILE *f = fopen(argv[2], "rb");
    if (!x || !out || !t || !f || fread(x, sizeof(float) * (size_t)row_len, (size_t)rows, f) != (size_t)rows) {
        fprintf(stderr, "cannot read %ld rows from %s\n", rows, argv[2]);
        return 1;
    }
    fclose(f);
    int modes = 1;
    if (predict_ws && ws_bytes) {
        int64_t bytes = ws_bytes(rows);
        if (bytes > 0 && posix_memalign(&workspace, 64, (size_t)bytes) == 0) modes = 2;
    }
    printf("{");
    for (int use_ws = 0; use_ws < modes; use_ws++) {
        for (long i = 0; i < 50; i++)
            if (call(use_ws, x + (i % rows) * row_len, 1, out)) { fprintf(stderr, "predict failed\n"); return 1; }
        for (long i = 0; i < n; i++) {
            const float *row = x + (i % rows) * row_len;
            double t0 = now();
            call(use_ws, row, 1, out);
            t[i] = now() - t0;
        }
        double latency = median(t, n);
        call(use_ws, x, rows, out);
        for (long i = 0; i < reps; i++) {
            double t0 = now();
            call(use_ws, x, rows, out);
            t[i] = now() - t0;
        }
        double per_call = median(t, reps);
        printf("%s\"%s\": {\"latency_us\": %.4f, \"throughput\": %.1f}", use_ws ? ", " : "",
               use_ws ? "workspace" : "plain", latency * 1e6, (double)rows / per_call);
    }
    printf("}\n");
    return 0;
}
"""


class CPredictor:
    """The exported predictor timed from C (a program built here with `cc`)."""

    def __init__(self, export_dir, workdir, x_test, reps):
        self._reps = reps
        with open(os.path.join(export_dir, "manifest.json")) as f:
            manifest = json.load(f)
        self.library = os.path.abspath(os.path.join(export_dir, manifest["library"]))
        self.row_len = int(np.prod(manifest["input_shape"][1:]))
        self.out_len = int(np.prod(manifest["output_shape"][1:]))
        source = os.path.join(workdir, "bench_predictor.c")
        self.program = os.path.join(workdir, "bench_predictor")
        with open(source, "w") as f:
            f.write(C_HARNESS)
        cc = shutil.which("cc")
        subprocess.run([cc, "-O2", "-std=c11", "-o", self.program, source, "-ldl"], check=True,
                       capture_output=True, text=True)
        _, batch = _w3_inputs(x_test)
        self.rows = len(batch)
        self.input = os.path.join(workdir, "bench_input.f32")
        batch.astype(np.float32).tofile(self.input)
        self._cached = None

    def _run(self, n, reps):
        proc = subprocess.run([self.program, self.library, self.input, str(self.rows), str(self.row_len),
                               str(self.out_len), str(n), str(reps)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the C timing program failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def w3_latency(self, n):
        # One run of the program gives both figures; the throughput call of the same trial uses it.
        self._cached = self._run(n, self._reps)
        return self._pick("latency_us")

    def w3_throughput(self, batch, reps):
        data = self._cached or self._run(100, reps)
        self._cached = None
        return self._pick("throughput", data)

    def _pick(self, figure, data=None):
        data = data or self._cached
        out = {KC_PRED_C: data["plain"][figure]}
        if "workspace" in data:
            out[KC_PRED_C_WS] = data["workspace"][figure]
        return out


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

class Results:
    def __init__(self):
        self.data = {}     # (workload, figure, key) -> {system: [trial values]}
        self.notes = {}    # (workload, figure, key, system) -> note

    def add(self, workload, figure, key, system, value, note=None):
        self.data.setdefault((workload, figure, key), {}).setdefault(system, []).append(float(value))
        if note:
            self.notes[(workload, figure, key, system)] = note

    def median(self, workload, figure, key, system):
        values = self.data.get((workload, figure, key), {}).get(system)
        return _median(values) if values else None

    def records(self):
        out = []
        position = {k: i for i, k in enumerate(self.data)}
        order = sorted(self.data, key=lambda k: (WORKLOADS.index(k[0]), list(FIGURES).index(k[1]), position[k]))
        for workload, figure, key in order:
            ref_name = reference_system(workload, figure)
            systems = self.data[(workload, figure, key)]
            systems = dict(sorted(systems.items(), key=lambda item: (item[0] != ref_name,
                                                                      not item[0].startswith(KC))))
            description, unit, better = FIGURES[figure]
            ref = self.median(workload, figure, key, ref_name)
            for system, values in systems.items():
                med = _median(values)
                out.append({"workload": workload, "figure": figure, "description": description, "key": key,
                             "system": system, "unit": unit, "better": better, "median": med,
                             "trials": values, "ratio_to_kcompile": (med / ref) if ref else None,
                             "note": self.notes.get((workload, figure, key, system))})
        return out


def _format_value(value, unit):
    if value is None:
        return "-"
    if unit == "samples/s":
        return f"{value / 1e3:.1f}k/s"
    if unit == "":
        return f"{value:.4f}"
    if unit == "s":
        return f"{value:.3g} s" if value >= 0.01 else f"{value * 1e3:.3g} ms"
    if unit == "us":
        return f"{value:.1f} us"
    if unit == "GFLOP/s":
        return f"{value:.1f}"
    if unit == "kernels":
        return f"{value:.0f}"
    return f"{value:.3g} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"


def _verdict(record):
    ratio, better = record["ratio_to_kcompile"], record["better"]
    if ratio is None or record["system"].startswith(KC):
        return ""
    if record["figure"] in ("accuracy", "kernels"):
        return ""
    factor = ratio if better == "lower" else 1 / ratio     # > 1: kcompile is faster
    if factor >= 1:
        return f"kcompile {factor:.2f}x faster"
    return f"kcompile {1 / factor:.2f}x slower"


def print_table(records, out=sys.stdout):
    header = ("workload", "figure", "case", "system", "median", "ratio", "")
    rows = []
    for r in records:
        ratio = "-" if r["ratio_to_kcompile"] is None else f"{r['ratio_to_kcompile']:.2f}"
        figure = r["description"] + (f" ({r['unit']})" if r["unit"] else "")
        rows.append((WORKLOAD_TITLES[r["workload"]], figure, str(r["key"]), r["system"],
                     _format_value(r["median"], r["unit"]), ratio, _verdict(r)))
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line.rstrip(), file=out)
    print("-" * len(line.rstrip()), file=out)
    previous = None
    for row in rows:
        shown = list(row)
        if previous is not None:
            if row[:2] != previous[:2]:
                print("", file=out)
            else:
                shown[0] = shown[1] = ""       # same workload and figure as the row above
                if row[2] == previous[2]:
                    shown[2] = ""
        print("  ".join(str(c).ljust(w) for c, w in zip(shown, widths)).rstrip(), file=out)
        previous = row
    print("ratio = the system's median / kcompile's median for the same figure (times: > 1 means "
          "kcompile is faster; rates: < 1 means kcompile is faster)", file=out)
    notes = {}
    for r in records:
        if r.get("note"):
            notes.setdefault(r["system"], r["note"])
    for system, note in notes.items():
        print(f"  {system}: {note}", file=out)


# ------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------

def w1_products(batch):
    """The GEMM_SHAPES entries that are W1's matrix products in a training step of `batch` rows (three
    forward, two dX, three dW), or fewer when `batch` is not one of the shapes' batch sizes."""
    return [s for s in GEMM_SHAPES if {"m": s[3], "k": s[5]}[s[6]] == batch]


def products_floor(results, batch, rows, threads):
    """Seconds per epoch of `rows` rows that W1's matrix products alone take at kcompile's one-thread
    GEMM rates measured in this run (the ``gemm`` workload), were they shared perfectly among `threads`
    threads and nothing else took time: a lower bound on a kcompile epoch of dense products, which
    says how far a W1 target is from what this machine's arithmetic allows.  Every product's work is
    proportional to the batch rows, so a partial last batch counts by its rows.  None when the run
    measured no rates for this batch size."""
    shapes = w1_products(batch)
    if len(shapes) != 8 or not rows or not threads:
        return None
    seconds = 0.0
    for label, _, _, m, n, k, _ in shapes:
        rate = results.median("gemm", "gflops", label, KC_GEMM)
        if not rate:
            return None
        seconds += 2.0 * m * n * k / (rate * 1e9)
    return seconds * rows / batch / threads


def evaluate_targets(results, numpy_unset_label, batch_sizes, epochs, rows=None, threads=None):
    """The targets' verdicts.  With `rows` (W1's epoch) and `threads` (kcompile's most threads), a W1
    epoch target also gets `floor`, `products_floor`'s seconds, and its ratio to the peer's epoch."""
    targets = []

    def ratio_target(name, workload, figure, key, ours, theirs, op, bound):
        mine = results.median(workload, figure, key, ours)
        other = results.median(workload, figure, key, theirs)
        entry = {"target": name, "requirement": f"{op} {bound:g} x {theirs}", "kcompile": mine, "peer": other,
                 "ratio": None, "status": "n/a", "note": ""}
        if mine is None or other is None:
            entry["note"] = f"not measured ({ours if mine is None else theirs} missing)"
        else:
            ratio = mine / other
            entry["ratio"] = ratio
            ok = ratio <= bound if op == "<=" else ratio >= bound
            entry["status"] = "PASS" if ok else "MISS"
            if not ok:
                entry["note"] = (f"{ratio / bound:.2f}x too slow" if op == "<=" else
                                 f"{bound / ratio:.2f}x too slow")
        targets.append(entry)

    for batch, bound in ((32, 0.35), (128, 0.7)):
        ratio_target(f"W1 batch {batch}, seconds per epoch", "w1", "epoch_s", f"batch {batch}", KC, KERAS,
                     "<=", bound)
        floor = products_floor(results, batch, rows, threads)
        peer = targets[-1]["peer"]
        if floor is not None and peer:
            targets[-1]["floor"] = floor
            targets[-1]["note"] += ("; " if targets[-1]["note"] else "") + (
                f"W1's products alone, at kcompile's one-thread GEMM rates of this run on {threads} "
                f"thread{'s' if threads > 1 else ''}: {floor:.3g} s = {floor / peer:.3f} x {KERAS}")
    ratio_target(f"W2 batch {W2_BATCH}, seconds per epoch", "w2", "epoch_s", f"batch {W2_BATCH}", KC, TORCH,
                 "<=", 0.7)
    compile_key = f"batch {batch_sizes[0]}"
    ratio_target("W1 compile + first step, cold", "compile", "compile_first_step_s", compile_key, KC_COLD,
                 KERAS, "<=", 1.0)
    ratio_target("W3 one-sample predict latency", "w3", "latency_us", "1 sample", KC_PREDICT, ORT, "<=", 0.6)
    ratio_target("W3 batch-1024 throughput", "w3", "throughput", f"batch {W3_BATCH}", KC_PREDICT, ORT, ">=", 1.0)
    if numpy_unset_label:
        for label, *_ in GEMM_SHAPES:
            ratio_target(f"GEMM {label}, one thread", "gemm", "gflops", label, KC_GEMM, numpy_unset_label,
                         ">=", 0.9)
    key = f"batch {batch_sizes[0]}, {epochs} epochs"
    mine = results.median("w1", "accuracy", key, KC)
    peers = {s: _median(v) for s, v in results.data.get(("w1", "accuracy", key), {}).items() if s != KC}
    entry = {"target": f"W1 test accuracy after {epochs} epochs", "requirement": "within 0.5 points of the peers'",
             "kcompile": mine, "peer": _median(list(peers.values())) if peers else None, "ratio": None,
             "status": "n/a", "note": "not measured" if mine is None or not peers else ""}
    if mine is not None and peers:
        low, high = min(peers.values()), max(peers.values())
        ok = low - 0.005 <= mine <= high + 0.005
        entry["status"] = "PASS" if ok else "MISS"
        entry["note"] = f"peers {low:.4f}-{high:.4f}"
        runs = len(results.data[("w1", "accuracy", key)][KC])
        if runs > 1:
            entry["note"] += f"; medians of {runs} seeds each"
    targets.append(entry)
    return targets


def print_targets(targets, out=sys.stdout):
    print("Targets, ratios of medians measured in this run:", file=out)
    for t in targets:
        ratio = "" if t["ratio"] is None else f"ratio {t['ratio']:.3f}"
        if t["ratio"] is None and t["kcompile"] is not None and t["peer"] is not None:
            ratio = f"kcompile {t['kcompile']:.4f} vs {t['peer']:.4f}"
        note = f" ({t['note']})" if t["note"] else ""
        print(f"  {t['status']:4s}  {t['target']}: {t['requirement']}; {ratio}{note}", file=out)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def _parse_list(text, allowed, what, aliases=None):
    items = [s.strip().lower() for s in text.split(",") if s.strip()]
    items = [(aliases or {}).get(s, s) for s in items]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    if not items:
        raise argparse.ArgumentTypeError(f"no {what} given; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _batch_sizes(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are comma-separated integers, e.g. 32,128; got "
                                         f"{text!r}") from None


def build_parser():
    p = argparse.ArgumentParser(prog="kcompile bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (a few hundred rows, one short epoch, few repetitions), for CI")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   type=lambda s: _parse_list(s, WORKLOADS, "workload"),
                   help="comma-separated subset of: " + ", ".join(WORKLOADS) + " (default: all)")
    p.add_argument("--batch-sizes", default=None, type=_batch_sizes,
                   help="W1 batch sizes (default 32,128; W2 always uses 128, fusion 32)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the W1 and W2 accuracy runs, full mode only (default 2)")
    p.add_argument("--accuracy-seeds", type=int, default=1, metavar="N",
                   help="train every system's W1 accuracy model with seeds 0..N-1 and compare the "
                        "medians (default 1: one run each; two epochs of W1 vary by about a point "
                        "from seed to seed)")
    p.add_argument("--trials", type=int, default=None,
                   help="trials per figure, systems alternating (default 3; --quick: 2)")
    p.add_argument("--peers", default="auto",
                   help="auto (every installed peer), none, or a comma-separated list of: " + ", ".join(PEERS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--child-compile", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--child-model", choices=("w1", "w2"), default="w1", help=argparse.SUPPRESS)
    return p


def _installed(peer):
    def has(name):
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False
    needs = {"torch": ["torch"], "keras": ["keras", "jax", "jaxlib"], "jax": ["jax", "jaxlib"],
             "onnxruntime": ["onnxruntime", "onnx"]}[peer]
    missing = [n for n in needs if not has(n)]
    if not missing:
        return None
    if peer == "onnxruntime" and missing == ["onnx"]:
        return "onnx not installed (needed to build the ONNX graph)"
    return f"{', '.join(missing)} not installed"


class Bench:
    def __init__(self, args, out=sys.stdout):
        self.args = args
        self.out = out
        self.quick = args.quick
        self.trials = args.trials or (2 if self.quick else 3)
        self.batch_sizes = args.batch_sizes or [32, 128]
        self.epochs = args.epochs or 2
        self.accuracy_seeds = getattr(args, "accuracy_seeds", 1)
        self.workloads = args.workloads
        self.results = Results()
        self.errors = []
        self.skipped = {}
        self.meta = {}
        self.handles = {}            # peer name -> Worker
        self.versions = {}
        self.tmp = tempfile.mkdtemp(prefix="kcompile-bench-")
        self.kc = None
        self.numpy_unset_label = None
        self.timeout = 300.0 if self.quick else 3600.0
        if self.quick:
            self.n_train, self.n_test, self.latency_n, self.throughput_reps, self.gemm_min = 384, 256, 100, 3, 0.002
        else:
            self.n_train, self.n_test, self.latency_n, self.throughput_reps, self.gemm_min = None, None, 1000, 20, 0.02

    def say(self, text=""):
        print(text, file=self.out, flush=True)

    # -- setup ------------------------------------------------------------------------------------

    def select_peers(self):
        spec = self.args.peers.strip().lower()
        if spec == "none":
            self.say("peers: none (--peers none)")
            return []
        wanted = list(PEERS) if spec == "auto" else _parse_list(spec, PEERS, "peer", PEER_ALIASES)
        chosen = []
        for peer in wanted:
            why = _installed(peer)
            if why:
                self.skipped[peer] = why
                self.say(f"skipped: {why}" if why == f"{peer} not installed" else f"skipped: {peer} ({why})")
            else:
                chosen.append(peer)
        return chosen

    def load_data(self):
        from kcompile.datasets import fashion_mnist
        try:
            (x, y), (xt, yt) = fashion_mnist.load_data()
            source = "Fashion-MNIST"
        except FileNotFoundError as e:
            if not self.quick:
                raise
            self.say(f"note: {e}\nnote: --quick goes on with random data of the same shapes")
            rng = np.random.default_rng(0)
            x, xt = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (self.n_train, self.n_test))
            y, yt = (rng.integers(0, 10, n) for n in (self.n_train, self.n_test))
            source = "random (Fashion-MNIST not installed)"
        if self.n_train:
            x, y, xt, yt = x[:self.n_train], y[:self.n_train], xt[:self.n_test], yt[:self.n_test]
        eye = np.eye(10, dtype=np.float32)
        self.data = (np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0), eye[y],
                     np.ascontiguousarray(xt, dtype=np.float32) / np.float32(255.0), eye[yt])
        self.data_dir = os.path.join(self.tmp, "data")
        os.makedirs(self.data_dir)
        self.meta["data"] = {"source": source, "train_rows": len(x), "test_rows": len(xt), "scaled": "[0, 1]"}
        self._data_written = False

    def _write_data(self):
        if not self._data_written:
            for name, array in zip(("x_train", "y_train", "x_test", "y_test"), self.data):
                np.save(os.path.join(self.data_dir, f"{name}.npy"), array)
            self._data_written = True

    def peer(self, name):
        """The worker of a peer, started (and handed the data) on first use; None if it failed."""
        if name in self.skipped:
            return None
        if name not in self.handles:
            self._write_data()
            worker = Worker(name, _peer_env(name), timeout=self.timeout)
            try:
                hello = worker.ready()
                worker.call("load_data", directory=self.data_dir)
            except WorkerError as e:
                worker.close()
                self.skipped[name] = f"failed to start: {e}"
                self.say(f"skipped: {name} failed to start: {e}")
                return None
            self.versions[name] = hello.get("version", "")
            self.handles[name] = worker
        return self.handles[name]

    def kcompile(self):
        if self.kc is None:
            impl = KcompileSystem()
            impl.set_data(*self.data)
            self.kc = Local(impl)
            self.versions["kcompile"] = impl.version()
        return self.kc

    def _guard(self, what, fn, *args):
        """Run a part of the benchmark; a failure is reported and recorded, and the run goes on."""
        self.meta["load_average"][f"before {what}"] = _load_average()
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            self.errors.append({"part": what, "error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc()})
            self.say(f"ERROR in {what}: {type(e).__name__}: {e}")
            return None

    def _peer_call(self, name, handle, method, **kwargs):
        """A system's call; a failing system is dropped from the rest of the workload (None returned).
        Failures of peers are reported but do not fail the run; kcompile's own do."""
        try:
            return handle.call(method, **kwargs)
        except Exception as e:  # noqa: BLE001
            peer = name in PEERS
            self.errors.append({"part": f"{name}.{method}", "error": f"{type(e).__name__}: {e}", "peer": peer,
                                "traceback": traceback.format_exc()})
            self.say(f"{'peer failed' if peer else 'ERROR'}: {name}.{method}: {type(e).__name__}: {e}")
            return None

    # -- workloads --------------------------------------------------------------------------------

    def run_compile(self, peers):
        batch = self.batch_sizes[0]
        self.say(f"== compile + first step of W1 (fresh processes, batch {batch}; not counted: imports and "
                 "one-time start-up, done first on a tiny model of other shapes) ==")
        systems = ["kcompile"] + [p for p in peers if p in ("torch", "keras", "jax")]
        self._compile_trials("compile", "w1", batch, systems)

    def _compile_trials(self, workload, model, batch, systems):
        """Compile + first step (and + first evaluate and predict) of `model` in fresh processes, the
        systems alternating trial by trial: kcompile on an empty cache directory, then a second process
        on the same directory (warm), each peer in its own process."""
        key = f"batch {batch}"
        labels = {"torch": TORCH, "keras": KERAS, "jax": JAX}
        failed = set()
        for trial in range(self.trials):
            for system in _rotate(systems, trial):
                if system in failed:
                    continue
                if system == "kcompile":
                    cache = tempfile.mkdtemp(prefix="cache-", dir=self.tmp)
                    env = {"KCOMPILE_CACHE_DIR": cache, "KCOMPILE_CACHE": "1"}
                    cold = self._child_compile("kcompile", batch, env, model)
                    warm = self._child_compile("kcompile", batch, env, model)
                    missed = warm.get("cache_entries", 0) > cold.get("cache_entries", 0)
                    for label, r in ((KC_COLD, cold), (KC_WARM, warm)):
                        if label == KC_WARM and missed:
                            continue
                        for figure in COMPILE_FIGURES:
                            if figure in r:
                                self.results.add(workload, figure, key, label, r[figure])
                    self.say(f"  trial {trial + 1}: kcompile cold {cold['compile_first_step_s']:.3f} s "
                             f"(+ evaluate, predict: {cold['compile_all_s']:.3f} s; compiler "
                             f"{cold.get('compile_s', float('nan')):.4f} s), warm "
                             f"{warm['compile_first_step_s']:.3f} s ({warm['compile_all_s']:.3f} s; compiler "
                             f"{warm.get('compile_s', float('nan')):.4f} s); cache "
                             f"entries {cold.get('cache_entries')} -> {warm.get('cache_entries')}")
                    if missed:
                        self.say("    the second process missed the cache (did the compiler's source change "
                                 "during the run?): its figure is left out")
                        self.meta.setdefault("warm_cache_misses", 0)
                        self.meta["warm_cache_misses"] += 1
                else:
                    try:
                        r = self._child_compile(system, batch, _peer_env(system), model)
                    except RuntimeError as e:
                        failed.add(system)
                        self.errors.append({"part": f"{system} {model} compile", "error": str(e), "peer": True})
                        self.say(f"peer failed: {system} {model} compile: {e}")
                        continue
                    for figure in COMPILE_FIGURES:
                        if figure in r:
                            self.results.add(workload, figure, key, labels[system], r[figure])
                    self.say(f"  trial {trial + 1}: {labels[system]} {r['compile_first_step_s']:.3f} s "
                             f"(+ evaluate, predict: {r['compile_all_s']:.3f} s)")

    def _child_compile(self, system, batch, env, model="w1"):
        proc = subprocess.run([sys.executable, "-m", "kcompile.bench", "--child-compile", system,
                               "--child-model", model, "--batch", str(batch)], env=_child_env(env),
                              capture_output=True, text=True, timeout=self.timeout)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(RESULT_MARKER):
                return json.loads(line[len(RESULT_MARKER):])
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"the {system} compile process failed (exit {proc.returncode}): {tail}")

    def run_w1(self, peers):
        kc = self.kcompile()
        systems = {KC: ("kcompile", kc)}
        for peer, label in (("torch", TORCH), ("keras", KERAS), ("jax", JAX)):
            if peer in peers:
                handle = self.peer(peer)
                if handle is not None:
                    systems[label] = (peer, handle)
        rows = len(self.data[0])
        self.say(f"== W1: seconds per epoch ({rows} rows), batch sizes {self.batch_sizes} ==")
        for batch in self.batch_sizes:
            for label, (name, handle) in list(systems.items()):
                if label == KC:
                    kc.call("w1_prepare", batch=batch)
                elif self._peer_call(name, handle, "w1_prepare", batch=batch) is None:
                    del systems[label]
        for trial in range(self.trials):
            for batch in self.batch_sizes:
                steps = -(-rows // batch)
                for label in _rotate(list(systems), trial):
                    name, handle = systems[label]
                    seconds = (kc.call("w1_epoch", batch=batch) if label == KC
                               else self._peer_call(name, handle, "w1_epoch", batch=batch))
                    if seconds is None:
                        del systems[label]
                        continue
                    self.results.add("w1", "epoch_s", f"batch {batch}", label, seconds)
                    self.results.add("w1", "steps_per_s", f"batch {batch}", label, steps / seconds)
                    self.say(f"  trial {trial + 1}, batch {batch}: {label} {seconds:.3f} s")
        if self.quick:
            return
        batch = self.batch_sizes[0]
        key = f"batch {batch}, {self.epochs} epochs"
        seeds = range(self.accuracy_seeds)
        self.say(f"== W1: test accuracy after {self.epochs} epochs at batch {batch} (fresh models, "
                 f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}) ==")
        for seed in seeds:
            for label, (name, handle) in list(systems.items()):
                acc = (kc.call("w1_accuracy", epochs=self.epochs, batch=batch, seed=seed)
                       if label == KC else
                       self._peer_call(name, handle, "w1_accuracy", epochs=self.epochs, batch=batch,
                                       seed=seed))
                if acc is None:
                    del systems[label]
                    continue
                self.results.add("w1", "accuracy", key, label, acc)
                self.say(f"  seed {seed}, {label}: {acc:.4f}")

    def _epoch_systems(self, peers, wanted):
        """kcompile (this process) and the wanted peers' workers that started: label -> (name, handle)."""
        systems = {KC: ("kcompile", self.kcompile())}
        for peer, label in (("torch", TORCH), ("keras", KERAS), ("jax", JAX)):
            if peer in peers and peer in wanted:
                handle = self.peer(peer)
                if handle is not None:
                    systems[label] = (peer, handle)
        return systems

    def run_w2(self, peers):
        batch = W2_BATCH
        key = f"batch {batch}"
        self.say(f"== W2 (CNN): compile + first step (fresh processes, batch {batch}; not counted: imports and "
                 "one-time start-up, done first on a tiny model of other shapes) ==")
        self._compile_trials("w2", "w2", batch, ["kcompile"] + [p for p in peers if p in ("torch", "keras")])
        systems = self._epoch_systems(peers, ("torch", "keras"))
        rows = len(self.data[0])
        steps = -(-rows // batch)
        self.say(f"== W2 (CNN): seconds per epoch ({rows} rows, batch {batch}) ==")
        for label, (name, handle) in list(systems.items()):
            if self._peer_call(name, handle, "w2_prepare", batch=batch) is None:
                del systems[label]
        for trial in range(self.trials):
            for label in _rotate(list(systems), trial):
                name, handle = systems[label]
                seconds = self._peer_call(name, handle, "w2_epoch", batch=batch)
                if seconds is None:
                    del systems[label]
                    continue
                self.results.add("w2", "epoch_s", key, label, seconds)
                self.results.add("w2", "steps_per_s", key, label, steps / seconds)
                self.say(f"  trial {trial + 1}: {label} {seconds:.3f} s")
        if self.quick:
            return
        key = f"batch {batch}, {self.epochs} epochs"
        self.say(f"== W2 (CNN): test accuracy after {self.epochs} epochs at batch {batch} (fresh models) ==")
        for label, (name, handle) in systems.items():
            acc = self._peer_call(name, handle, "w2_accuracy", epochs=self.epochs, batch=batch)
            if acc is not None:
                self.results.add("w2", "accuracy", key, label, acc)
                self.say(f"  {label}: {acc:.4f}")

    def run_fusion(self, peers):
        batch = FUSION_BATCH
        kc = self.kcompile()
        rows = len(self.data[0])
        steps = rows // batch
        self.say(f"== W1 fusion: the batch-{batch} train step compiled with fusion_level=0 and with the default "
                 f"options; native steps/s over {steps} steps of a bound epoch; model.fit and the peers: steps / "
                 f"seconds of one W1 epoch ({rows} rows) ==")
        info = kc.call("fusion_prepare", batch=batch, steps=steps)
        self.meta["fusion"] = info
        for label in (KC_FUSED, KC_UNFUSED):
            self.say(f"  {label}: {info[label]['kernels']} kernels "
                     f"(compiled in {info[label]['compile_s (cache as found)']:.2f} s, cache as found)")
        agreement = info["one_step_agreement"]
        self.say(f"  one step from the same state agrees: loss {agreement['loss'][0]:.6f} vs "
                 f"{agreement['loss'][1]:.6f}, largest state difference {agreement['max_state_difference']:.2g}")
        epoch_systems = self._epoch_systems(peers, ("torch", "keras"))
        epoch_systems[KC_FIT] = epoch_systems.pop(KC)
        for label, (name, handle) in list(epoch_systems.items()):
            if self._peer_call(name, handle, "w1_prepare", batch=batch) is None:
                del epoch_systems[label]
        epoch_steps = -(-rows // batch)
        order = [KC_FUSED, KC_UNFUSED] + list(epoch_systems)
        key = f"batch {batch}"
        for trial in range(self.trials):
            for label in _rotate(order, trial):
                if label in (KC_FUSED, KC_UNFUSED):
                    rate = self._peer_call("kcompile", kc, "fusion_steps", label=label, batch=batch, steps=steps)
                    if rate is None:
                        return
                    self.results.add("fusion", "kernels", "W1 train step", label, info[label]["kernels"])
                else:
                    if label not in epoch_systems:
                        continue
                    name, handle = epoch_systems[label]
                    seconds = self._peer_call(name, handle, "w1_epoch", batch=batch)
                    if seconds is None:
                        del epoch_systems[label]
                        continue
                    rate = epoch_steps / seconds
                self.results.add("fusion", "steps_per_s", key, label, rate)
                self.say(f"  trial {trial + 1}: {label} {rate:.1f} steps/s")

    def _trained_kcompile(self):
        kc = self.kcompile()
        if kc.impl.trained is None:
            epochs = 1 if self.quick else self.epochs
            self.say(f"  (training the kcompile model for W3: {epochs} epoch(s) at batch {self.batch_sizes[0]})")
            kc.call("w1_accuracy", epochs=epochs, batch=self.batch_sizes[0])
        return kc

    def run_w3(self, peers):
        self.say(f"== W3: inference with the trained W1 model (latency: median of {self.latency_n} calls; "
                 f"throughput: batch {W3_BATCH}, median of {self.throughput_reps}) ==")
        kc = self._trained_kcompile()
        weights = os.path.join(self.tmp, "weights.npz")
        np.savez(weights, **{f"w{i}": w for i, w in enumerate(kc.impl.weights())})
        export_dir = os.path.join(self.tmp, "predictor")
        predictor = self._guard("export", self._export, kc.impl.trained, export_dir)
        kc.call("w3_load", predictor=predictor)
        systems = {"kcompile": kc}
        if predictor is not None:
            if shutil.which("cc"):
                c = self._guard("C timing program", CPredictor, export_dir, self.tmp, self.data[2],
                                self.throughput_reps)
                if c is not None:
                    systems["C"] = Local(c)
            else:
                self.say("skipped: the exported predictor from C (no `cc` on PATH)")
                self.skipped["C predictor"] = "cc not found"
        numpy_forward = NumpyForward()
        numpy_forward.name = "numpy forward (env as set)"
        numpy_forward.set_data(*self.data)
        numpy_forward.w3_load(weights)
        systems["numpy"] = Local(numpy_forward)
        for peer in peers:
            handle = self.peer(peer)
            if handle is not None and self._peer_call(peer, handle, "w3_load", weights=weights) is not None:
                systems[peer] = handle
        for trial in range(self.trials):
            for name in _rotate(list(systems), trial):
                handle = systems[name]
                lat = self._peer_call(name, handle, "w3_latency", n=self.latency_n)
                thr = lat and self._peer_call(name, handle, "w3_throughput", batch=W3_BATCH,
                                              reps=self.throughput_reps)
                if lat is None or thr is None:
                    del systems[name]
                    continue
                for label, value in lat.items():
                    note = (f"OpenBLAS {_openblas_env_text()}, core {_OpenBLAS().corename()}"
                            if name == "numpy" else None)
                    self.results.add("w3", "latency_us", "1 sample", label, value, note)
                for label, value in thr.items():
                    self.results.add("w3", "throughput", f"batch {W3_BATCH}", label, value)
                self.say(f"  trial {trial + 1}: " + "; ".join(
                    f"{label} {lat[label]:.1f} us, {thr.get(label, 0) / 1e3:.1f}k/s" for label in lat))

    def _export(self, model, directory):
        import kcompile
        if hasattr(model, "export"):
            model.export(directory)
        else:
            from kcompile.export import export_predictor
            from kcompile.trainer import trace_predict
            export_predictor(trace_predict(model), {w.path: w.numpy() for w in model.weights}, directory)
        load = getattr(kcompile, "load_predictor", None)
        if load is None:
            from kcompile.predictor import load_predictor as load
        predictor = load(directory)
        got = predictor.predict(self.data[2][:7])
        want = model.predict(self.data[2][:7], verbose=0)
        if not np.allclose(got, want, atol=1e-5):
            raise RuntimeError(f"the exported predictor disagrees with model.predict "
                               f"(max difference {np.abs(got - want).max():.3g})")
        return predictor

    def run_gemm(self):
        from llvmlite import ir

        from codegen import target
        from codegen.gemm import emit_gemm, tile_shape
        from codegen.jit import JitModule
        import ctypes

        module = ir.Module("bench_gemm")
        ptr, i64 = ir.PointerType(), ir.IntType(64)
        for idx, (_, ta, tb, m, n, k, runtime) in enumerate(GEMM_SHAPES):
            fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i64]), f"gemm{idx}")
            bld = ir.IRBuilder(fn.append_basic_block("entry"))
            a, b, c, dim = fn.args
            dims = {"m": m, "n": n, "k": k}
            dims[runtime] = dim
            emit_gemm(bld, a, b, c, dims["m"], dims["n"], dims["k"], trans_a=ta, trans_b=tb)
            bld.ret_void()
        t0 = time.perf_counter()
        jit = JitModule(module)
        compile_s = time.perf_counter() - t0
        lanes = target.vector_lanes(32)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
        kernels = {}
        for idx, (label, ta, tb, m, n, k, runtime) in enumerate(GEMM_SHAPES):
            a, b, c = _gemm_operands(ta, tb, m, n, k)
            f = proto(jit.address(f"gemm{idx}"))
            dim = {"m": m, "n": n, "k": k}[runtime]
            f(a.ctypes.data, b.ctypes.data, c.ctypes.data, dim)
            ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
            err = float(np.abs(c - ref).max() / max(1.0, np.abs(ref).max()))
            if err > 1e-4:
                raise RuntimeError(f"emit_gemm {label}: relative error {err:.3g}")
            kernels[label] = (f, (a, b, c), a.ctypes.data, b.ctypes.data, c.ctypes.data, dim)

        here = NumpyGemm()
        here_info = here.info()
        here_label = "numpy, env as set, in-process"
        here_note = f"OpenBLAS {here_info['env']}, core {here_info['corename']}, 1 thread"
        unset_env = {"OPENBLAS_NUM_THREADS": "1", "OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
        unset = Worker("numpy", unset_env, timeout=self.timeout)
        try:
            unset.ready()
            unset_info = unset.call("info")
            unset_label = "numpy, CORETYPE+L2_SIZE unset, subprocess"
            unset_note = (f"OpenBLAS {unset_info['env']}, core {unset_info['corename']}, "
                          f"{unset_info['threads']} thread")
            self.numpy_unset_label = unset_label
            self.meta["gemm"] = {
                "kcompile": f"emit_gemm, {lanes} f32 lanes, tile {tile_shape(lanes)} (rows, vectors), "
                            f"{len(GEMM_SHAPES)} gemms compiled in {compile_s:.2f} s",
                "numpy_in_process": {**here_info, "label": here_label, "note": here_note},
                "numpy_env_unset": {**unset_info, "label": unset_label, "note": unset_note}}
            self.say("== GEMM: W1's matrix multiplies, one thread, GFLOP/s ==")
            self.say(f"  kcompile: {self.meta['gemm']['kcompile']}")
            self.say(f"  numpy figure 1 used: {here_info['env']} -> OpenBLAS core {here_info['corename']}, "
                     f"1 thread (this process)")
            self.say(f"  numpy figure 2 used: {unset_info['env']} -> OpenBLAS core {unset_info['corename']}, "
                     f"{unset_info['threads']} thread (a subprocess with OPENBLAS_NUM_THREADS=1)")
            previous = here.set_threads(1)
            if here.blas.threads() != 1:
                self.say("  note: could not set numpy's OpenBLAS to one thread in this process; figure 1 "
                         "uses its default thread count")
            try:
                for trial in range(self.trials):
                    for label, _, _, m, n, k, _ in GEMM_SHAPES:
                        flops = 2.0 * m * n * k
                        for system in _rotate(["kcompile", "here", "unset"], trial):
                            if system == "kcompile":
                                f, _keep, pa, pb, pc, dim = kernels[label]
                                sec = _seconds_per_call(lambda: f(pa, pb, pc, dim), self.gemm_min)
                                self.results.add("gemm", "gflops", label, KC_GEMM, flops / sec / 1e9)
                            elif system == "here":
                                sec = here.gemm(label, self.gemm_min)
                                self.results.add("gemm", "gflops", label, here_label, flops / sec / 1e9,
                                                 here_note)
                            else:
                                sec = unset.call("gemm", label=label, min_time=self.gemm_min)
                                self.results.add("gemm", "gflops", label, unset_label, flops / sec / 1e9,
                                                 unset_note)
            finally:
                if previous:
                    here.set_threads(previous)
        finally:
            unset.close()

    # -- the whole run ---------------------------------------------------------------------------

    def run(self):
        started = time.perf_counter()
        self.say(f"kcompile bench ({'quick' if self.quick else 'full'}): workloads {','.join(self.workloads)}, "
                 f"trials {self.trials}, batch sizes {self.batch_sizes}; the systems alternate trial by trial")
        peers = self.select_peers()
        self.meta.update({
            "command": " ".join([os.path.basename(sys.executable), "-m", "kcompile.bench"] + self.args.argv),
            "quick": self.quick, "trials": self.trials, "batch_sizes": self.batch_sizes, "epochs": self.epochs,
            "workloads": self.workloads, "peers": peers, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "openblas_env": _openblas_env_text(),
            "KCOMPILE_NUM_THREADS": os.environ.get("KCOMPILE_NUM_THREADS"),
            "load_average": {"start": _load_average()},
        })
        load = self.meta["load_average"]["start"]
        if load:
            self.say(f"machine: {self.meta['cpus']} CPUs, load average {load[0]:.2f} (1 min) at the start")
        try:
            if any(w in self.workloads for w in ("w1", "w2", "w3", "fusion")):
                self.load_data()
            else:
                self.data = None
            if "compile" in self.workloads:
                self._guard("compile", self.run_compile, peers)
            if "w1" in self.workloads:
                self._guard("W1", self.run_w1, peers)
            if "w2" in self.workloads:
                self._guard("W2", self.run_w2, peers)
            if "w3" in self.workloads:
                self._guard("W3", self.run_w3, peers)
            if "gemm" in self.workloads:
                self._guard("GEMM", self.run_gemm)
            if "fusion" in self.workloads:
                self._guard("fusion", self.run_fusion, peers)
        finally:
            for handle in self.handles.values():
                handle.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.meta["versions"] = self.versions
        self.meta["seconds"] = time.perf_counter() - started
        self.meta["load_average"]["end"] = _load_average()
        records = self.results.records()
        from codegen import parallel
        targets = evaluate_targets(self.results, self.numpy_unset_label, self.batch_sizes, self.epochs,
                                   rows=len(self.data[0]) if self.data else None,
                                   threads=parallel.num_threads() if self.kc is not None else None)
        self.say("")
        print_table(records, self.out)
        self.say("")
        print_targets(targets, self.out)
        if self.skipped:
            self.say("")
            for name, why in self.skipped.items():
                self.say(f"skipped: {name}: {why}")
        self.say("versions: " + "; ".join(f"{k}: {v}" for k, v in self.versions.items()))
        loads = [v[0] for v in self.meta["load_average"].values() if v]
        busy = loads and max(loads) > 1.25 * self.meta["cpus"]
        self.say(f"load average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f} on "
                 f"{self.meta['cpus']} CPUs" if loads else "load average: unknown")
        if busy:
            self.say("WARNING: other processes were busy during the run; systems that run several threads "
                     "with spinning barriers (PyTorch's OpenMP pool in particular) slow down out of "
                     "proportion, so their ratios are less trustworthy than usual")
        if self.kc is not None:
            from codegen import governor
            shares = governor.time_shares()
            self.meta["kcompile_thread_shares"] = {str(k): v for k, v in shares.items()}
            if shares:
                self.say("kcompile's thread count, adapted in its loops (codegen.governor): " + ", ".join(
                    f"{count} thread{'s' if count > 1 else ''} {share:.0%}" for count, share in shares.items())
                    + " of the measured time")
        self.say(f"took {self.meta['seconds']:.1f} s")
        report = {"meta": self.meta, "skipped": self.skipped, "results": records, "targets": targets,
                  "errors": self.errors}
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(report, f, indent=2, default=float)
            self.say(f"wrote {self.args.json}")
        own_errors = [e for e in self.errors if not e.get("peer")]
        return 1 if own_errors else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return _serve(args.worker)
    if args.child_compile:
        return _child_compile(args.child_compile, args.batch, args.child_model)
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.accuracy_seeds < 1:
        parser.error("--accuracy-seeds must be at least 1")
    if args.batch_sizes is not None and (not args.batch_sizes or min(args.batch_sizes) < 1):
        parser.error("--batch-sizes needs positive integers")
    if args.peers.strip().lower() not in ("auto", "none"):
        try:
            _parse_list(args.peers, PEERS, "peer", PEER_ALIASES)
        except argparse.ArgumentTypeError as e:
            parser.error(f"--peers: {e}")
    if args.json:
        # checked before a run that may take many minutes, not when its results are written
        directory = os.path.dirname(os.path.abspath(args.json)) or "."
        if os.path.isdir(args.json) or not os.path.isdir(directory) \
                or not os.access(directory, os.W_OK):
            parser.error(f"--json {args.json}: cannot write there (the directory must exist and be "
                         "writable, and the path must not be a directory)")
    args.argv = argv
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
