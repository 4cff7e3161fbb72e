"""Single-thread GFLOP/s of emit_gemm against numpy's matmul on the W1 (MLP) shapes.

    python -m codegen._bench_gemm [--repeat N]

Our kernels run in this process; numpy runs in subprocesses with OPENBLAS_NUM_THREADS=1, once with the
environment as set, once with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed, and once with
OPENBLAS_CORETYPE=Haswell forced (what the project environment is documented to set), because the
OpenBLAS kernel choice is fixed when the library loads.  The dimensions are runtime or constant as the
compiler will emit them: the batch dimension is an argument, feature sizes are constants.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np
from llvmlite import ir

# (label, trans_a, trans_b, m, n, k, runtime dimension)
SHAPES = [
    ("NN  x@W    32x784x512", False, False, 32, 512, 784, "m"),
    ("NN  x@W    32x512x512", False, False, 32, 512, 512, "m"),
    ("NN  x@W    32x512x10", False, False, 32, 10, 512, "m"),
    ("NN  x@W   128x784x512", False, False, 128, 512, 784, "m"),
    ("NT  dY@W^T m32 k512 n784", False, True, 32, 784, 512, "m"),
    ("NT  dY@W^T m32 k512 n512", False, True, 32, 512, 512, "m"),
    ("NT  dY@W^T m32 k10 n512", False, True, 32, 512, 10, "m"),
    ("TN  X^T@dY m784 n512 k32", True, False, 784, 512, 32, "k"),
    ("TN  X^T@dY m784 n512 k128", True, False, 784, 512, 128, "k"),
    ("TN  X^T@dY m512 n10 k32", True, False, 512, 10, 32, "k"),
    ("NN  x@W     1x784x512", False, False, 1, 512, 784, "m"),
]


def fma_peak(lanes: int) -> float:
    """GFLOP/s of a loop of 24 independent `llvm.fma` chains on `lanes` floats: the ceiling of any
    kernel on this machine right now (the machine is shared, so it moves from run to run)."""
    from .jit import JitModule

    module = ir.Module("peak")
    i64, vec = ir.IntType(64), ir.VectorType(ir.FloatType(), lanes)
    fma = ir.Function(module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ir.PointerType(), i64]), "peak")
    out, count = fn.args
    entry, loop, done = (fn.append_basic_block(name) for name in ("entry", "loop", "done"))
    bld = ir.IRBuilder(entry)
    bld.branch(loop)
    bld.position_at_end(loop)
    i = bld.phi(i64)
    accs = [bld.phi(vec) for _ in range(24)]
    x = ir.Constant(vec, [1.0001] * lanes)
    new = [bld.call(fma, [acc, x, x]) for acc in accs]
    nxt = bld.add(i, ir.Constant(i64, 1))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(nxt, loop)
    for acc, value in zip(accs, new):
        acc.add_incoming(ir.Constant(vec, [0.0] * lanes), entry)
        acc.add_incoming(value, loop)
    bld.cbranch(bld.icmp_signed("<", nxt, count), loop, done)
    bld.position_at_end(done)
    total = new[0]
    for value in new[1:]:
        total = bld.fadd(total, value)
    bld.store(total, out, align=4)
    bld.ret_void()
    jit = JitModule(module)
    f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(jit.address("peak"))
    buf = np.zeros(lanes, np.float32)
    steps = 200_000
    return _time(lambda: f(buf.ctypes.data, steps), 2.0 * 24 * lanes * steps, 7)[0]


def _operands(ta, tb, m, n, k, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c = np.zeros((m, n), np.float32)
    return a, b, c


def _time(fn, flops, repeat):
    """Best of `repeat` batches, each batch long enough (>= 20 ms) to average out timer noise."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(0.02 / once))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return flops / best / 1e9, best


def numpy_child(repeat: int) -> None:
    out = {}
    for label, ta, tb, m, n, k, _ in SHAPES:
        a, b, c = _operands(ta, tb, m, n, k)
        oa = a.T if ta else a
        ob = b.T if tb else b
        out[label] = _time(lambda: np.matmul(oa, ob, out=c), 2.0 * m * n * k, repeat)[0]
    print(json.dumps(out))


def _numpy_in(env_changes: dict, repeat: int) -> dict:
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = "1"
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run([sys.executable, "-m", "codegen._bench_gemm", "--numpy-child",
                           "--repeat", str(repeat)], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(repeat: int) -> dict:
    from .gemm import emit_gemm, tile_shape
    from .jit import JitModule
    from . import target

    module = ir.Module("bench_gemm")
    ptr, i64 = ir.PointerType(), ir.IntType(64)
    for idx, (_, ta, tb, m, n, k, runtime) in enumerate(SHAPES):
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
    print(f"# emit_gemm: {lanes} f32 lanes, tile {tile_shape(lanes)} (rows, vectors); "
          f"compiled {len(SHAPES)} gemms in {compile_s:.2f} s")
    out = {}
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    for idx, (label, ta, tb, m, n, k, runtime) in enumerate(SHAPES):
        a, b, c = _operands(ta, tb, m, n, k)
        f = proto(jit.address(f"gemm{idx}"))
        pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
        dim = {"m": m, "n": n, "k": k}[runtime]
        f(pa, pb, pc, dim)
        ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        err = np.abs(c - ref).max() / max(1.0, np.abs(ref).max())
        assert err < 1e-4, (label, err)
        out[label] = _time(lambda: f(pa, pb, pc, dim), 2.0 * m * n * k, repeat)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--numpy-child", action="store_true")
    args = parser.parse_args()
    if args.numpy_child:
        numpy_child(args.repeat)
        return
    env_note = {key: os.environ.get(key) for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    ours_res = ours(args.repeat)
    np_set = _numpy_in({}, args.repeat)
    np_unset = _numpy_in({"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}, args.repeat)
    np_haswell = _numpy_in({"OPENBLAS_CORETYPE": "Haswell"}, args.repeat)
    print(f"# single thread; environment as set: {env_note}")
    from . import target
    print(f"# FMA peak now (24 chains of llvm.fma.v{target.vector_lanes(32)}f32): "
          f"{fma_peak(target.vector_lanes(32)):.1f} GFLOP/s")
    print(f"{'shape':28s} {'emit_gemm':>10s} {'us':>8s} {'np(as set)':>11s} {'np(unset)':>10s} "
          f"{'np(Haswell)':>12s}   GFLOP/s")
    for label, *_ in SHAPES:
        g, sec = ours_res[label]
        print(f"{label:28s} {g:10.1f} {sec * 1e6:8.1f} {np_set[label]:11.1f} {np_unset[label]:10.1f} "
              f"{np_haswell[label]:12.1f}")


if __name__ == "__main__":
    main()
