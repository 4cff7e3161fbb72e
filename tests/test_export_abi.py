"""The C ABI of exported predictors as programs use it: two models in one process, named exports
linked into one program, small thread stacks, identity models, NULL arguments.  Every check compiles
and runs a C program with `cc` (or a Python subprocess) and compares with `model.predict`; scenarios
that crash on a regression run in a subprocess, so that they fail the test instead of pytest."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import kcompile
from kcompile import layers
from kcompile.predictor import load_predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(n_in, hidden, n_out, seed):
    kcompile.utils.set_random_seed(seed)
    return kcompile.Sequential([layers.Input((n_in,)), layers.Dense(hidden, activation="relu"),
                                layers.Dense(n_out, activation="softmax")])


def build_and_run(directory, source, libraries=(), args=(), extra=()):
    """Compile `source` (C) in `directory` against the export directories `libraries` ((dir, lib
    name) pairs), run it, return the completed process."""
    (directory / "main.c").write_text(source)
    command = ["cc", "-O1", "-o", "main", "main.c"]
    for lib_dir, name in libraries:
        command += [f"-I{lib_dir}", f"-L{lib_dir}", f"-l{name}", f"-Wl,-rpath,{lib_dir}"]
    build = subprocess.run(command + list(extra), cwd=directory, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return subprocess.run(["./main", *map(str, args)], cwd=directory, capture_output=True,
                          text=True)


def floats(text):
    return np.array([float(v) for v in text.split()], np.float32)


# -- two libraries with the same names in one process -------------------------------------------

@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two unnamed exports (both kcompile_predict) of different models: 6 -> 10 and 4 -> 3."""
    root = tmp_path_factory.mktemp("two")
    a, b = mlp(6, 8, 10, 1), mlp(4, 8, 3, 2)
    a.export(str(root / "a"))
    b.export(str(root / "b"))
    rng = np.random.default_rng(0)
    xa, xb = rng.random((5, 6), dtype=np.float32), rng.random((7, 4), dtype=np.float32)
    return root, (a, xa), (b, xb)


TWO_LIBRARIES_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include "model.h"    /* model a's, linked into this program */

typedef int (*predict_fn)(const float *, int64_t, float *);

int main(int argc, char **argv) {
    /* model b's library, with the same function names, opened RTLD_LOCAL or RTLD_GLOBAL */
    void *b = dlopen(argv[1], (argv[2][0] == 'g' ? RTLD_GLOBAL : RTLD_LOCAL) | RTLD_NOW);
    if (!b) { fprintf(stderr, "%s\n", dlerror()); return 3; }
    predict_fn b_predict = (predict_fn)dlsym(b, "kcompile_predict");
    float xa[5 * 6], xb[7 * 4], ya[5 * 10], yb[7 * 3 + 16];
    for (int i = 0; i < 5 * 6; i++) xa[i] = %XA%;
    for (int i = 0; i < 7 * 4; i++) xb[i] = %XB%;
    for (int i = 0; i < 7 * 3 + 16; i++) yb[i] = -1.0f;
    if (b_predict(xb, 7, yb) != 0) return 4;
    if (kcompile_predict(xa, 5, ya) != KCOMPILE_OK) return 5;
    for (int i = 7 * 3; i < 7 * 3 + 16; i++) if (yb[i] != -1.0f) return 6;   /* past b's output */
    for (int i = 0; i < 5 * 10; i++) printf("%.9g ", ya[i]);
    printf("\n");
    for (int i = 0; i < 7 * 3; i++) printf("%.9g ", yb[i]);
    printf("\n");
    return 0;
}
"""


def c_array(x):
    return "(float[]){" + ",".join(f"{v!r}f" for v in x.reshape(-1).tolist()) + "}[i]"


@pytest.mark.parametrize("mode", ["local", "global"])
def test_a_program_linked_with_one_model_dlopens_another_and_gets_both(two_models, mode,
                                                                        tmp_path):
    """b's kcompile_predict used to call kcompile_predict_with_workspace through the PLT, which
    bound to a's (the program's): b's buffers went through a's graph, with status 0."""
    root, (a, xa), (b, xb) = two_models
    source = TWO_LIBRARIES_C.replace("%XA%", c_array(xa)).replace("%XB%", c_array(xb))
    run = build_and_run(tmp_path, source, [(root / "a", "model")],
                        [root / "b" / "libmodel.so", mode], extra=["-ldl"])
    assert run.returncode == 0, (run.returncode, run.stderr)
    ya, yb = run.stdout.splitlines()
    np.testing.assert_allclose(floats(ya).reshape(5, 10), a.predict(xa, verbose=0), atol=1e-6)
    np.testing.assert_allclose(floats(yb).reshape(7, 3), b.predict(xb, verbose=0), atol=1e-6)


def test_python_predictor_runs_its_own_library_beside_a_global_one(two_models, tmp_path):
    root, (a, xa), (b, xb) = two_models
    np.save(tmp_path / "xb.npy", xb)
    np.save(tmp_path / "yb.npy", b.predict(xb, verbose=0))
    script = (
        "import ctypes, sys, numpy as np\n"
        "from kcompile.predictor import load_predictor\n"
        f"ctypes.CDLL({str(root / 'a' / 'libmodel.so')!r}, mode=ctypes.RTLD_GLOBAL)\n"
        f"p = load_predictor({str(root / 'b')!r})\n"
        f"got = p.predict(np.load({str(tmp_path / 'xb.npy')!r}))\n"
        f"np.testing.assert_allclose(got, np.load({str(tmp_path / 'yb.npy')!r}), atol=1e-6)\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0 and "ok" in result.stdout, (result.returncode, result.stderr)


def test_public_functions_never_call_public_functions(two_models):
    """Only the ABI is exported, and the library's code calls no symbol through the PLT but
    malloc and free: each library always runs its own code."""
    library = two_models[0] / "a" / "libmodel.so"
    defined = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True,
                             text=True).stdout.split()
    assert sorted(s for s in defined if s.startswith("kcompile")) == sorted(
        f"kcompile_{f}" for f in ("predict", "workspace_bytes", "predict_with_workspace",
                                  "input_rank", "input_shape", "output_rank", "output_shape",
                                  "version"))
    relocations = subprocess.run(["objdump", "-R", library], capture_output=True, text=True).stdout
    assert "kcompile" not in relocations, relocations


# -- named exports -----------------------------------------------------------------------------

NAMED_C = r"""
#include <stdio.h>
#include "alpha.h"
#include "beta.h"
#include "alpha.h"     /* guards */

int main(void) {
    float xa[3 * 6], xb[2 * 4], ya[3 * 10], yb[2 * 3];
    for (int i = 0; i < 3 * 6; i++) xa[i] = %XA%;
    for (int i = 0; i < 2 * 4; i++) xb[i] = %XB%;
    int64_t dims[2];
    alpha_input_shape(dims);
    if (alpha_input_rank() != 2 || dims[0] != -1 || dims[1] != 6) return 3;
    beta_output_shape(dims);
    if (beta_output_rank() != 2 || dims[1] != 3) return 4;
    if (alpha_predict(xa, 3, ya) != ALPHA_OK) return 5;
    if (beta_predict(xb, 2, yb) != BETA_OK) return 6;
    if (beta_predict(xb, 0, yb) != BETA_ERR_ROWS || beta_workspace_bytes(2) <= 0) return 7;
    for (int i = 0; i < 3 * 10; i++) printf("%.9g ", ya[i]);
    printf("\n");
    for (int i = 0; i < 2 * 3; i++) printf("%.9g ", yb[i]);
    printf("\n%s\n", alpha_version());
    return 0;
}
"""


def test_two_named_models_link_into_one_program(tmp_path):
    a, b = mlp(6, 8, 10, 3), mlp(4, 5, 3, 4)
    a.export(str(tmp_path / "a"), name="alpha")
    b.export(str(tmp_path / "b"), name="beta")
    for directory, name in ((tmp_path / "a", "alpha"), (tmp_path / "b", "beta")):
        assert {f"lib{name}.so", f"{name}.o", f"{name}.h", "example.c", "manifest.json"} <= set(
            os.listdir(directory))
        manifest = json.load(open(directory / "manifest.json"))
        assert (manifest["name"], manifest["symbol_prefix"]) == (name, name)
        header = (directory / f"{name}.h").read_text()
        assert f"#ifndef KCOMPILE_{name}_H" in header and "kcompile_" not in header
    rng = np.random.default_rng(1)
    xa, xb = rng.random((3, 6), dtype=np.float32), rng.random((2, 4), dtype=np.float32)
    source = NAMED_C.replace("%XA%", c_array(xa)).replace("%XB%", c_array(xb))
    work = tmp_path / "c"
    work.mkdir()
    run = build_and_run(work, source, [(tmp_path / "a", "alpha"), (tmp_path / "b", "beta")])
    assert run.returncode == 0, (run.returncode, run.stderr)
    ya, yb, version = run.stdout.splitlines()
    np.testing.assert_allclose(floats(ya).reshape(3, 10), a.predict(xa, verbose=0), atol=1e-6)
    np.testing.assert_allclose(floats(yb).reshape(2, 3), b.predict(xb, verbose=0), atol=1e-6)
    assert version == kcompile.__version__
    # the Python loader finds the named functions; the example program builds as its comment says
    np.testing.assert_allclose(load_predictor(tmp_path / "b").predict(xb),
                               b.predict(xb, verbose=0), atol=1e-6)
    example = (tmp_path / "b" / "example.c").read_text()
    assert "beta_predict" in example and "-lbeta" in example
    xb.tofile(tmp_path / "b" / "input.f32")
    build = subprocess.run(json.load(open(tmp_path / "b" / "manifest.json"))["build_example"],
                           shell=True, cwd=tmp_path / "b", capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run(["./example", "input.f32", "2"], cwd=tmp_path / "b", capture_output=True,
                         text=True)
    assert run.stdout.split() == [str(c) for c in np.argmax(b.predict(xb, verbose=0), axis=1)]


CASED_C = r"""
#include <stdio.h>
#include "net.h"
#include "NET.h"
int main(void) {
    float x[4] = {0.5f, -1.0f, 2.0f, 0.25f}, a[2], b[3];
    if (net_predict(x, 1, a) != NET_OK || NET_predict(x, 1, b) != NET_OK) return 1;
    printf("%.9g %.9g\n%.9g %.9g %.9g\n", a[0], a[1], b[0], b[1], b[2]);
    return 0;
}
"""


def test_two_names_differing_in_case_go_into_one_program(tmp_path):
    """`net` and `NET`: distinct header guards (the name's case kept), the same upper-case macros
    defined alike (C allows that), and each library's own function, warning-free."""
    nets = {name: mlp(4, 5, width, seed) for name, width, seed in (("net", 2, 1), ("NET", 3, 2))}
    for name, model in nets.items():
        model.export(str(tmp_path / name), name=name)
        assert f"#ifndef KCOMPILE_{name}_H" in (tmp_path / name / f"{name}.h").read_text()
    work = tmp_path / "c"
    work.mkdir()
    run = build_and_run(work, CASED_C, [(tmp_path / name, name) for name in nets],
                        extra=["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"])
    assert run.returncode == 0, (run.returncode, run.stderr)
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    for line, model in zip(run.stdout.splitlines(), nets.values()):
        np.testing.assert_allclose(floats(line), model.predict(x, verbose=0)[0], atol=1e-6)


@pytest.mark.parametrize("name", ["my-model", "1st", "", "a b", "x" * 65, "ümlaut"])
def test_a_bad_name_is_refused_before_anything_is_written(name, tmp_path):
    model = mlp(4, 5, 3, 5)
    with pytest.raises(ValueError, match="must be a C identifier"):
        model.export(str(tmp_path / "out"), name=name)
    assert not (tmp_path / "out").exists()


def test_the_cli_takes_a_name(tmp_path):
    from kcompile.cli import main
    model = mlp(4, 5, 3, 6)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert main(["export", path, "-o", str(tmp_path / "bad"), "--name", "my-model"]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["export", path, "-o", str(tmp_path / "good"), "--name", "iris"]) == 0
    assert os.path.isfile(tmp_path / "good" / "libiris.so")
    x = np.random.default_rng(2).random((4, 4), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(tmp_path / "good").predict(x),
                               model.predict(x, verbose=0), atol=1e-6)


def test_an_export_from_before_names_still_loads(tmp_path):
    """A manifest without symbol_prefix (older kcompile) means the kcompile_ functions."""
    model = mlp(4, 5, 3, 7)
    model.export(str(tmp_path / "old"))
    path = tmp_path / "old" / "manifest.json"
    manifest = json.load(open(path))
    del manifest["symbol_prefix"], manifest["name"]
    path.write_text(json.dumps(manifest))
    x = np.random.default_rng(3).random((2, 4), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(tmp_path / "old").predict(x),
                               model.predict(x, verbose=0), atol=1e-6)


# -- small thread stacks -----------------------------------------------------------------------

SMALL_STACK_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

#define STACK (64 * 1024)
static long rows;
static float *x, *out;
static int status;

static void *run(void *arg) { (void)arg; status = kcompile_predict(x, rows, out); return NULL; }

int main(int argc, char **argv) {
    rows = atol(argv[1]);
    x = malloc(sizeof(float) * rows * 784);
    out = malloc(sizeof(float) * rows * 10);
    FILE *f = fopen("input.f32", "rb");
    if (fread(x, sizeof(float) * 784, rows, f) != (size_t)rows) return 3;
    fclose(f);
    /* a 64 KiB stack of our own, filled with a pattern to see how deep the call went */
    unsigned char *stack;
    if (posix_memalign((void **)&stack, 4096, STACK)) return 4;
    memset(stack, 0xA5, STACK);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, stack, STACK);
    pthread_t thread;
    if (pthread_create(&thread, &attr, run, NULL)) return 5;
    pthread_join(thread, NULL);
    long untouched = 0;
    while (untouched < STACK && stack[untouched] == 0xA5) untouched++;
    fprintf(stderr, "stack used: %ld bytes\n", STACK - untouched);
    if (status != KCOMPILE_OK) return 6;
    for (long i = 0; i < rows * 10; i++) printf("%.9g ", out[i]);
    return 0;
}
"""


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """784 -> 512 -> 10: the JIT's GEMMs keep 128 KiB packing buffers on the stack."""
    model = mlp(784, 512, 10, 8)
    directory = tmp_path_factory.mktemp("wide") / "export"
    model.export(str(directory))
    return model, directory


@pytest.mark.parametrize("rows", [1, 8, 1000])
def test_predict_runs_on_a_64_kib_thread_stack(wide_model, rows, tmp_path):
    """GEMM scratch comes from the workspace: a thread with a small stack (musl's default is
    128 KiB) used to crash with SIGSEGV."""
    model, directory = wide_model
    x = np.random.default_rng(rows).random((rows, 784), dtype=np.float32)
    x.tofile(tmp_path / "input.f32")
    run = build_and_run(tmp_path, SMALL_STACK_C, [(directory, "model")], [rows],
                        extra=["-pthread"])
    assert run.returncode == 0, (run.returncode, run.stderr)
    np.testing.assert_allclose(floats(run.stdout).reshape(rows, 10), model.predict(x, verbose=0),
                               atol=1e-6)
    used = int(run.stderr.split("stack used:")[1].split()[0])
    # (glibc puts the thread's descriptor and TLS at the top of a caller's stack: ~2-4 KiB of this)
    assert used < 16 * 1024, run.stderr


def test_the_workspace_holds_the_gemm_scratch(wide_model):
    model, directory = wide_model
    manifest = json.load(open(directory / "manifest.json"))
    workspace = manifest["workspace"]
    assert 0 < workspace["gemm_scratch_bytes"] <= 128 * 1024
    import ctypes
    lib = ctypes.CDLL(str(directory / "libmodel.so"))
    lib.kcompile_workspace_bytes.argtypes = [ctypes.c_int64]
    lib.kcompile_workspace_bytes.restype = ctypes.c_int64
    assert lib.kcompile_workspace_bytes(3) == (64 + workspace["gemm_scratch_bytes"]
                                               + workspace["static_bytes"]
                                               + 3 * workspace["batch_bytes"])


# -- identity models and failed exports --------------------------------------------------------

@pytest.mark.parametrize("layer", [lambda: layers.Dropout(0.5), lambda: layers.Activation("linear"),
                                   lambda: layers.Flatten()])
def test_a_model_that_predicts_its_input_exports_a_copy(layer, tmp_path):
    kcompile.utils.set_random_seed(9)
    model = kcompile.Sequential([layers.Input((3, 4)), layer()])
    model.export(str(tmp_path / "identity"))
    x = np.random.default_rng(4).random((6, 3, 4), dtype=np.float32) - 0.5
    x[0, 0, 0] = -0.0
    got = load_predictor(tmp_path / "identity").predict(x)
    want = model.predict(x, verbose=0)
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got.reshape(-1)[0])


def test_a_failed_export_leaves_no_directory(tmp_path, monkeypatch):
    model = mlp(4, 5, 3, 10)
    monkeypatch.setenv("CC", "false")                  # a "compiler" that fails to link
    with pytest.raises(RuntimeError, match="linking"):
        model.export(str(tmp_path / "new" / "nested" / "out"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError, match="linking"):
        model.export(str(tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir()                # not ours to remove
    assert not [f for f in os.listdir(tmp_path / "kept") if f.endswith((".so", ".tmp"))]


# -- NULL arguments ----------------------------------------------------------------------------

def test_shape_functions_ignore_null(two_models):
    library = two_models[0] / "a" / "libmodel.so"
    script = (
        "import ctypes\n"
        f"lib = ctypes.CDLL({str(library)!r})\n"
        "lib.kcompile_input_shape.argtypes = lib.kcompile_output_shape.argtypes = [ctypes.c_void_p]\n"
        "lib.kcompile_input_shape(None); lib.kcompile_output_shape(None)\n"
        "dims = (ctypes.c_int64 * 2)()\n"
        "lib.kcompile_output_shape(dims)\n"
        "print(list(dims))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.split("\n")[0] == "[-1, 10]"
    header = (two_models[0] / "a" / "model.h").read_text()
    assert "`dims` must hold rank entries" in header


# -- GEMM scratch from the caller --------------------------------------------------------------

@pytest.mark.parametrize("layout,m,n,k,runtime", [
    ("TN", 2 * 256 + 37, 10, 33, False),              # narrow: C^T blocks + their packing
    ("NT", 9, 70, 600, False),                        # B^T panels, two k blocks
    ("NN", 1000, 10, 512, False),                     # a column tail (Dense(10) after 512 units)
    ("NN", 1000, 512, 784, False),                    # whole panels of 64 (AVX-512): no scratch
    ("NN", 1000, 480, 784, False),                    # whole panels of 24 (AVX2) and 16 too
    ("NN", 37, 70, 100, True),                        # runtime sizes: the worst case
])
@pytest.mark.parametrize("pack_full", [False, True])
def test_gemms_use_only_the_scratch_caller_scratch_elements_gives(layout, m, n, k, runtime,
                                                                   pack_full, monkeypatch):
    """What an exported GEMM packs into goes to the caller's buffers, sized by
    caller_scratch_elements for this product (no alloca); a canary past them stays intact.
    Whole panels of B are packed too or read in place (gemm.PACK_FULL_PANELS; the host's
    vector width picks one)."""
    import ctypes
    from llvmlite import ir as llvm_ir
    from codegen import gemm
    from codegen.gemm import caller_scratch_elements, emit_gemm
    from codegen.jit import JitModule
    monkeypatch.setattr(gemm, "PACK_FULL_PANELS", pack_full)
    ptr, i64 = llvm_ir.PointerType(), llvm_ir.IntType(64)
    trans_a, trans_b = layout[0] == "T", layout[1] == "T"
    module = llvm_ir.Module("caller_scratch")
    fn = llvm_ir.Function(module, llvm_ir.FunctionType(llvm_ir.VoidType(), [ptr] * 5 + [i64] * 3),
                          "g")
    a, b, c, pack_ptr, narrow_ptr, *sizes = fn.args
    dims = sizes if runtime else (m, n, k)
    pack, narrow = caller_scratch_elements(*dims, trans_a=trans_a, trans_b=trans_b)
    builder = llvm_ir.IRBuilder(fn.append_basic_block("entry"))
    emit_gemm(builder, a, b, c, *dims, trans_a=trans_a, trans_b=trans_b, scratch_ptr=pack_ptr,
              narrow_scratch_ptr=narrow_ptr)
    builder.ret_void()
    assert "alloca" not in str(module)
    panel = gemm.tile_shape(gemm.target.vector_lanes(32))[1] * gemm.target.vector_lanes(32)
    if n % panel == 0 and not trans_b and not runtime:
        assert narrow == 0 and (pack > 0) == pack_full
    jit = JitModule(module)            # (kept: the code lives as long as the engine)
    f = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 5, *[ctypes.c_int64] * 3)(jit.address("g"))
    rng = np.random.default_rng(m + n + k)
    x = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    out = np.zeros((m, n), np.float32)
    canary = 4096
    buffers = [np.full(size + canary, 7.0, np.float32) for size in (pack, narrow)]
    f(x.ctypes.data, w.ctypes.data, out.ctypes.data, buffers[0].ctypes.data,
      buffers[1].ctypes.data, m, n, k)
    want = (x.T if trans_a else x).astype(np.float64) @ (w.T if trans_b else w)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
    for buffer, size in zip(buffers, (pack, narrow)):
        assert (buffer[size:] == 7.0).all()
        assert size == 0 or (buffer[:size] != 7.0).any()     # used, up to its size
