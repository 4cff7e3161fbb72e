"""codegen.parallel: chunk coverage, results equal to the serial run, the serial fallbacks, the thread policy.

Most functions live in one module compiled once (compile time dominates).  Every region records the chunks
it ran in a log (slot taken with an atomic add), so the tests see the schedule itself, not only results.
The overhead/speedup measurement at the end prints its figures (pytest -s) and asserts only correctness.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from llvmlite import ir

from codegen import parallel
from codegen.gemm import emit_gemm, tile_shape
from codegen.jit import JitModule
from codegen.loops import for_range, smin
from codegen import target

REPO = Path(__file__).resolve().parent.parent
I32, I64 = ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
VOIDP = ctypes.c_void_p

pytestmark = pytest.mark.skipif(not parallel.threads_available(), reason="libgomp cannot be loaded")

# (name, emit_parallel_for options) of the coverage functions: cover_<name>(counts, log, slot, start, stop)
COVER_VARIANTS = {
    "plain": dict(),
    "grain6": dict(grain=6),
    "min100": dict(min_chunk=100),
    "grain6_min100": dict(grain=6, min_chunk=100),
    "serial": dict(threading=False),
    "one_unit_pieces": dict(pieces_per_thread=1 << 20),
    "grain6_two_pieces": dict(grain=6, pieces_per_thread=2),
}
BLOCK = 4096  # elements per partial sum in block_sums


@contextlib.contextmanager
def threads(count: int):
    previous = parallel.set_num_threads(count)
    try:
        yield
    finally:
        parallel.set_num_threads(previous)


def _function(module, name, arg_types, noalias=()):
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), arg_types), name)
    for i in noalias:
        fn.args[i].add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _log_chunk(b, lo, hi, log, slot):
    """log[2k], log[2k+1] = lo, hi with k taken from an atomic counter."""
    k = b.atomic_rmw("add", slot, ir.Constant(I64, 1), "seq_cst")
    index = b.mul(k, ir.Constant(I64, 2))
    b.store(lo, b.gep(log, [index], source_etype=I64))
    b.store(hi, b.gep(log, [b.add(index, ir.Constant(I64, 1))], source_etype=I64))


def _emit_cover(module, name, options):
    """cover_NAME(counts i32*, log i64*, slot i64*, start, stop): counts[i] += 1 for every i the region runs."""
    fn, b = _function(module, f"cover_{name}", [PTR, PTR, PTR, I64, I64])
    counts, log, slot, start, stop = fn.args

    def body(bb, lo, hi, values):
        counts_, log_, slot_ = values
        _log_chunk(bb, lo, hi, log_, slot_)
        with for_range(bb, lo, hi) as i:
            p = bb.gep(counts_, [i], source_etype=I32)
            bb.store(bb.add(bb.load(p, typ=I32), ir.Constant(I32, 1)), p)

    parallel.emit_parallel_for(b, start, stop, [counts, log, slot], body, name=name, **options)
    b.ret_void()


def _emit_fill(module):
    """fill(x f64*, y f64*, n): y = x*x - 3x + 1, with x and y noalias as lower.py's kernels have them."""
    fn, b = _function(module, "fill", [PTR, PTR, I64], noalias=(0, 1))
    x, y, n = fn.args

    def body(bb, lo, hi, values):
        x_, y_ = values
        with for_range(bb, lo, hi) as i:
            v = bb.load(bb.gep(x_, [i], source_etype=F64), typ=F64)
            r = bb.fadd(bb.fsub(bb.fmul(v, v), bb.fmul(ir.Constant(F64, 3.0), v)), ir.Constant(F64, 1.0))
            bb.store(r, bb.gep(y_, [i], source_etype=F64))

    parallel.emit_parallel_for(b, 0, n, [x, y], body, min_chunk=16384, name="fill")
    b.ret_void()


def _emit_block_sums(module):
    """block_sums(x f32*, sums f32*, n): sums[k] = sum(x[k*BLOCK : (k+1)*BLOCK]), chunks on block bounds.

    The partial sums are per block, not per thread, so the result does not depend on the thread count.
    """
    fn, b = _function(module, "block_sums", [PTR, PTR, I64], noalias=(0, 1))
    x, sums, n = fn.args

    def body(bb, lo, hi, values):
        x_, sums_ = values
        with for_range(bb, lo, hi, BLOCK, name="blk") as b0:
            b1 = smin(bb, bb.add(b0, ir.Constant(I64, BLOCK)), hi)
            acc = bb.alloca(F32)  # NOTE: in a loop body only for brevity; mem2reg/SROA remove it
            bb.store(ir.Constant(F32, 0.0), acc)
            with for_range(bb, b0, b1) as i:
                v = bb.load(bb.gep(x_, [i], source_etype=F32), typ=F32)
                bb.store(bb.fadd(bb.load(acc, typ=F32), v, flags=("reassoc", "nsz")), acc)
            k = bb.sdiv(b0, ir.Constant(I64, BLOCK))
            bb.store(bb.load(acc, typ=F32), bb.gep(sums_, [k], source_etype=F32))

    parallel.emit_parallel_for(b, 0, n, [x, sums], body, grain=BLOCK, min_chunk=BLOCK, name="sums")
    b.ret_void()


def _emit_nested(module):
    """nested(counts i32*, rows, cols): a parallel loop over rows whose body has a parallel loop over
    columns (libgomp runs the inner one with a team of one): counts[r*cols + c] += 1."""
    fn, b = _function(module, "nested", [PTR, I64, I64])
    counts, rows, cols = fn.args

    def outer(bb, r0, r1, values):
        counts_, cols_ = values
        with for_range(bb, r0, r1, name="r") as r:
            row = bb.gep(counts_, [bb.mul(r, cols_)], source_etype=I32)

            def inner(ib, c0, c1, inner_values):
                row_, = inner_values
                with for_range(ib, c0, c1, name="c") as c:
                    p = ib.gep(row_, [c], source_etype=I32)
                    ib.store(ib.add(ib.load(p, typ=I32), ir.Constant(I32, 1)), p)

            parallel.emit_parallel_for(bb, 0, cols_, [row], inner, name="inner")

    parallel.emit_parallel_for(b, 0, rows, [counts, cols], outer, name="outer")
    b.ret_void()


def _emit_regions(module):
    """regions(out i64*, reps, n): `reps` back-to-back regions over [0, n), each chunk storing one i64,
    so the time per region is the cost of starting and joining it."""
    fn, b = _function(module, "regions", [PTR, I64, I64])
    out, reps, n = fn.args

    def body(bb, lo, hi, values):
        out_, = values
        bb.store(hi, bb.gep(out_, [bb.mul(lo, ir.Constant(I64, 8))], source_etype=I64))  # own cache line

    with for_range(b, 0, reps, name="rep"):
        parallel.emit_parallel_for(b, 0, n, [out], body, name="region")
    b.ret_void()


@pytest.fixture(scope="module")
def compiled():
    module = ir.Module("test_parallel")
    for name, options in COVER_VARIANTS.items():
        _emit_cover(module, name, options)
    _emit_fill(module)
    _emit_block_sums(module)
    _emit_nested(module)
    _emit_regions(module)
    jit = JitModule(module)
    proto = {
        "cover": ctypes.CFUNCTYPE(None, VOIDP, VOIDP, VOIDP, ctypes.c_int64, ctypes.c_int64),
        "two": ctypes.CFUNCTYPE(None, VOIDP, VOIDP, ctypes.c_int64),
        "three": ctypes.CFUNCTYPE(None, VOIDP, ctypes.c_int64, ctypes.c_int64),
    }
    fns = {f"cover_{name}": proto["cover"](jit.address(f"cover_{name}")) for name in COVER_VARIANTS}
    fns.update(fill=proto["two"](jit.address("fill")), block_sums=proto["two"](jit.address("block_sums")),
               nested=proto["three"](jit.address("nested")), regions=proto["three"](jit.address("regions")))
    return jit, fns


def run_cover(fns, variant, start, stop):
    """Run cover_<variant> over [start, stop); returns (counts over [start, stop), sorted chunks)."""
    size = max(stop - start, 0)
    counts = np.zeros(size + 2, dtype=np.int32)  # one guard slot each side
    log = np.full(2 * max(64, size + 1), -1, dtype=np.int64)   # room for a chunk per index
    slot = np.zeros(1, dtype=np.int64)
    base = counts.ctypes.data + 4 - 4 * start  # so that counts[start] is the first slot after the guard
    fns[f"cover_{variant}"](base, log.ctypes.data, slot.ctypes.data, start, stop)
    assert counts[0] == 0 and counts[-1] == 0, "a chunk wrote outside [start, stop)"
    chunks = sorted(map(tuple, log[:2 * int(slot[0])].reshape(-1, 2).tolist()))
    return counts[1:-1], chunks


def expected_team(size, requested, *, min_chunk=1, grain=1):
    units = -(-size // grain)
    return max(1, min(requested, size // min_chunk, units)) if size > 0 else 0


def expected_piece(size, team, grain=1, pieces_per_thread=0):
    """Units of `grain` per chunk a team of `team` hands out (codegen.parallel.PIECES_PER_THREAD
    unless the region asks for `pieces_per_thread`)."""
    units = -(-size // grain)
    if team <= 1:
        return units                      # the serial path: one chunk
    pieces = team * (pieces_per_thread or parallel.PIECES_PER_THREAD)
    return -(-units // pieces)


# ----------------------------------------------------------------------------------------------
# Coverage: every index exactly once, the pieces of the schedule, grain and min_chunk
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(COVER_VARIANTS))
@pytest.mark.parametrize("requested", [1, 2, 3, 4, 8])
def test_every_index_covered_exactly_once(compiled, variant, requested):
    _, fns = compiled
    options = COVER_VARIANTS[variant]
    grain, min_chunk = options.get("grain", 1), options.get("min_chunk", 1)
    with threads(requested):
        for start, size in [(0, 0), (0, 1), (0, 3), (0, 7), (0, 8), (5, 7), (-3, 100), (0, 199), (0, 200),
                            (0, 1_000_003), (11, 1_000_003)]:
            counts, chunks = run_cover(fns, variant, start, start + size)
            assert (counts == 1).all(), (variant, requested, start, size)
            team = 1 if options.get("threading") is False and size else \
                expected_team(size, requested, min_chunk=min_chunk, grain=grain)
            if not size:
                assert not chunks
                continue
            piece = expected_piece(size, team, grain, options.get("pieces_per_thread", 0))
            assert len(chunks) == -(-(-(-size // grain)) // piece), (variant, requested, start, size, chunks)
            # contiguous, ascending, non-empty, boundaries on the grain, all pieces but the last whole
            assert chunks[0][0] == start and chunks[-1][1] == start + size
            assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
            assert all(lo < hi and (lo - start) % grain == 0 for lo, hi in chunks)
            assert all(hi - lo == piece * grain for lo, hi in chunks[:-1])


@pytest.mark.parametrize("variant", list(COVER_VARIANTS))
def test_empty_and_reversed_ranges_never_call_the_body(compiled, variant):
    _, fns = compiled
    with threads(2):
        for start, stop in [(0, 0), (5, 5), (7, 3), (0, -10)]:
            log = np.full(4, -1, dtype=np.int64)
            slot = np.zeros(1, dtype=np.int64)
            fns[f"cover_{variant}"](0, log.ctypes.data, slot.ctypes.data, start, stop)  # counts: never touched
            assert slot[0] == 0


def test_nested_region_inside_a_parallel_body(compiled):
    """The inner region must split its own range, not take the outer team's thread number."""
    _, fns = compiled
    with threads(2):
        for rows, cols in [(1, 5), (2, 7), (13, 1000), (64, 3)]:
            counts = np.zeros(rows * cols, dtype=np.int32)
            fns["nested"](counts.ctypes.data, rows, cols)
            assert (counts == 1).all(), (rows, cols)


# ----------------------------------------------------------------------------------------------
# Results equal the serial run
# ----------------------------------------------------------------------------------------------

def test_elementwise_fill_matches_serial_and_numpy(compiled):
    _, fns = compiled
    n = 1_000_000
    x = np.random.default_rng(0).standard_normal(n)
    results = {}
    for count in (1, 2, 3):
        y = np.full(n, np.nan)
        with threads(count):
            fns["fill"](x.ctypes.data, y.ctypes.data, n)
        results[count] = y
    np.testing.assert_array_equal(results[1], x * x - 3.0 * x + 1.0)
    np.testing.assert_array_equal(results[2], results[1])
    np.testing.assert_array_equal(results[3], results[1])


def test_block_partial_sums_match_serial_exactly(compiled):
    _, fns = compiled
    x = np.random.default_rng(1).random(1_000_003).astype(np.float32)
    blocks = -(-x.size // BLOCK)
    results = {}
    for count in (1, 2, 5):
        sums = np.full(blocks + 1, np.nan, dtype=np.float32)
        with threads(count):
            fns["block_sums"](x.ctypes.data, sums.ctypes.data, x.size)
        assert np.isnan(sums[-1]), "wrote past the last block"
        results[count] = sums[:-1]
    assert np.array_equal(results[2], results[1]) and np.array_equal(results[5], results[1])
    reference = np.add.reduceat(x.astype(np.float64), np.arange(0, x.size, BLOCK))
    np.testing.assert_allclose(results[1], reference, rtol=1e-5)


def test_gemm_over_row_blocks_matches_serial(compiled):
    """C = A @ B with each thread running emit_gemm on its rows (chunks on the micro-kernel's row tile).

    The GEMM's B-panel scratch is an alloca of the chunk function, hence per thread."""
    m, k, n = 100, 96, 80  # n not a multiple of the panel width: the gemm uses its scratch
    module = ir.Module("test_parallel_gemm")
    fn, b = _function(module, "gemm_rows", [PTR, PTR, PTR, I64], noalias=(2,))
    a_ptr, b_ptr, c_ptr, rows = fn.args
    tile_rows = tile_shape(target.vector_lanes(32))[0]

    def body(bb, lo, hi, values):
        a_, b_, c_ = values
        a_rows = bb.gep(a_, [bb.mul(lo, ir.Constant(I64, k))], source_etype=F32)
        c_rows = bb.gep(c_, [bb.mul(lo, ir.Constant(I64, n))], source_etype=F32)
        emit_gemm(bb, a_rows, b_, c_rows, bb.sub(hi, lo), n, k)

    parallel.emit_parallel_for(b, 0, rows, [a_ptr, b_ptr, c_ptr], body, grain=tile_rows, name="gemm")
    b.ret_void()
    jit = JitModule(module)
    gemm = ctypes.CFUNCTYPE(None, VOIDP, VOIDP, VOIDP, ctypes.c_int64)(jit.address("gemm_rows"))
    rng = np.random.default_rng(2)
    a = rng.standard_normal((m, k)).astype(np.float32)
    bm = rng.standard_normal((k, n)).astype(np.float32)
    results = {}
    for count in (1, 2, 3):
        c = np.full((m, n), np.nan, dtype=np.float32)
        with threads(count):
            gemm(a.ctypes.data, bm.ctypes.data, c.ctypes.data, m)
        results[count] = c
    np.testing.assert_allclose(results[1], a.astype(np.float64) @ bm.astype(np.float64), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(results[2], results[1])
    np.testing.assert_array_equal(results[3], results[1])


# ----------------------------------------------------------------------------------------------
# Serial fallbacks: no libgomp in the module, libgomp missing, threads = 1
# ----------------------------------------------------------------------------------------------

def _ir_mentions_threads(text: str) -> bool:
    return any(s in text for s in ("GOMP_", "omp_get", parallel.NUM_THREADS_SYMBOL))


def test_threading_false_emits_no_libgomp_reference():
    module = ir.Module("serial_only")
    _emit_cover(module, "only", dict(threading=False))
    assert not _ir_mentions_threads(str(module))
    module = ir.Module("threaded")
    _emit_cover(module, "only", dict())
    assert _ir_mentions_threads(str(module))


def test_threads_unavailable_gives_serial_code(monkeypatch):
    """What lowering does when libgomp is missing (the real load failure runs in the subprocess test)."""
    monkeypatch.setattr(parallel, "threads_available", lambda: False)
    module = ir.Module("no_gomp")
    _emit_cover(module, "x", dict())
    assert not _ir_mentions_threads(str(module))
    with pytest.raises(RuntimeError, match="could not be loaded"):
        _emit_cover(module, "y", dict(threading=True))


def test_missing_libgomp_in_a_fresh_process():
    """A process where libgomp cannot be loaded: threads_available() is False and the code runs serially."""
    script = textwrap.dedent("""
        import ctypes, numpy as np
        from llvmlite import ir
        from codegen import parallel
        parallel.LIBGOMP = "libgomp-that-does-not-exist.so.1"
        assert parallel.threads_available() is False
        from codegen.jit import JitModule
        import tests.test_parallel as t
        module = ir.Module("m")
        t._emit_cover(module, "plain", {})
        assert not t._ir_mentions_threads(str(module))
        jit = JitModule(module)
        f = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, ctypes.c_int64, ctypes.c_int64)(
            jit.address("cover_plain"))
        counts, chunks = t.run_cover({"cover_plain": f}, "plain", 0, 1001)
        assert (counts == 1).all() and chunks == [(0, 1001)], chunks
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_one_thread_runs_one_chunk_on_the_caller(compiled):
    _, fns = compiled
    with threads(1):
        counts, chunks = run_cover(fns, "plain", 0, 1_000_003)
    assert (counts == 1).all() and chunks == [(0, 1_000_003)]


def test_cached_object_resolves_the_thread_count(compiled):
    """An object file loaded again (the compile cache's path) still finds kcompile_num_threads and libgomp."""
    module = ir.Module("reload")
    _emit_cover(module, "plain", dict())
    first = JitModule(module, keep_object=True)
    again = JitModule.from_object(first.object_code, first.optimized_ir)
    f = ctypes.CFUNCTYPE(None, VOIDP, VOIDP, VOIDP, ctypes.c_int64, ctypes.c_int64)(again.address("cover_plain"))
    with threads(2):
        counts, chunks = run_cover({"cover_plain": f}, "plain", 0, 10)
    piece = expected_piece(10, 2)           # a team of two hands out pieces (one thread: one chunk)
    assert (counts == 1).all() and chunks == [(lo, min(lo + piece, 10)) for lo in range(0, 10, piece)]


def test_forked_child_runs_serially(compiled):
    """libgomp's pool does not survive fork: a child must not start a team (it would hang)."""
    _, fns = compiled
    with threads(2):
        run_cover(fns, "plain", 0, 100)  # make sure the parent's pool exists
        pid = os.fork()
        if pid == 0:  # child: exit status says what happened; never return into pytest
            status = 1
            try:
                counts, chunks = run_cover(fns, "plain", 0, 100)
                status = 0 if (counts == 1).all() and chunks == [(0, 100)] else 2
                try:
                    parallel.set_num_threads(2)
                    status = 3
                except RuntimeError:
                    pass
            finally:
                os._exit(status)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung in a parallel region")
            time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


# ----------------------------------------------------------------------------------------------
# API checks: the policy, the knob, misuse of captures
# ----------------------------------------------------------------------------------------------

def test_num_threads_policy(monkeypatch):
    monkeypatch.delenv(parallel.ENV_NUM_THREADS, raising=False)
    assert parallel.num_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(parallel.ENV_NUM_THREADS, "")
    assert parallel.num_threads() == len(os.sched_getaffinity(0))
    for value, expected in [("1", 1), ("3", 3), (" 16 ", 16)]:
        monkeypatch.setenv(parallel.ENV_NUM_THREADS, value)
        assert parallel.num_threads() == expected
    for bad in ["0", "-2", "two", "1.5", "2x"]:
        monkeypatch.setenv(parallel.ENV_NUM_THREADS, bad)
        with pytest.raises(ValueError, match="KCOMPILE_NUM_THREADS must be a positive integer"):
            parallel.num_threads()


def test_set_num_threads_validates_and_returns_previous():
    with threads(3):
        assert parallel.get_num_threads() == 3
        assert parallel.set_num_threads(2) == 3
        assert parallel.get_num_threads() == 2
        for bad in [0, -1, 1.5, True, "2"]:
            with pytest.raises(ValueError):
                parallel.set_num_threads(bad)
        assert parallel.get_num_threads() == 2


def test_body_using_a_caller_value_directly_is_rejected():
    module = ir.Module("leak")
    fn, b = _function(module, "f", [PTR, I64])
    out, n = fn.args

    def leaky(bb, lo, hi, values):
        bb.store(lo, bb.gep(out, [lo], source_etype=I64))  # `out` instead of values[0]

    with pytest.raises(ValueError, match="one of `captured`"):
        parallel.emit_parallel_for(b, 0, n, [out], leaky)
    with pytest.raises(ValueError, match="min_chunk"):
        parallel.emit_parallel_for(b, 0, n, [], lambda *a: None, min_chunk=0)
    with pytest.raises(ValueError, match="grain"):
        parallel.emit_parallel_for(b, 0, n, [], lambda *a: None, grain=2.0)


def test_noalias_carried_to_chunk_function_only_when_unique():
    module = ir.Module("attrs")
    fn, b = _function(module, "f", [PTR, PTR, I64], noalias=(0, 1))
    x, y, n = fn.args
    chunk = parallel.emit_parallel_for(b, 0, n, [x, y, x], lambda *a: None)
    b.ret_void()
    flags = ["noalias" in arg.attributes for arg in chunk.args[2:]]
    assert flags == [False, True, False]


# ----------------------------------------------------------------------------------------------
# Measurement (printed, not asserted: the machine is shared)
# ----------------------------------------------------------------------------------------------

def _seconds_per_call(fn, budget: float) -> float:
    """Best time per call of fn(reps) over a few rounds, with reps grown until a round takes >= budget/10."""
    reps = 1
    while True:
        t0 = time.perf_counter()
        fn(reps)
        elapsed = time.perf_counter() - t0
        if elapsed >= budget / 10 or reps >= 1 << 20:
            break
        reps *= 4
    best = elapsed / reps
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _build_bench_gemm(m, k, n):
    module = ir.Module("bench_gemm")
    fn, b = _function(module, "gemm_rows", [PTR, PTR, PTR, I64], noalias=(2,))
    a_ptr, b_ptr, c_ptr, rows = fn.args
    tile_rows = tile_shape(target.vector_lanes(32))[0]

    def body(bb, lo, hi, values):
        a_, b_, c_ = values
        emit_gemm(bb, bb.gep(a_, [bb.mul(lo, ir.Constant(I64, k))], source_etype=F32), b_,
                  bb.gep(c_, [bb.mul(lo, ir.Constant(I64, n))], source_etype=F32), bb.sub(hi, lo), n, k)

    parallel.emit_parallel_for(b, 0, rows, [a_ptr, b_ptr, c_ptr], body, grain=tile_rows, name="gemm")
    b.ret_void()
    jit = JitModule(module)
    return jit, ctypes.CFUNCTYPE(None, VOIDP, VOIDP, VOIDP, ctypes.c_int64)(jit.address("gemm_rows"))


def measure(fns, budget: float = 0.15, shape=(48, 256, 512)) -> dict:
    """Per-region cost (serial path and 2 threads) and a GEMM (by default ~100 us on one core) on 1 and 2
    threads, split by rows."""
    out = np.zeros(8 * 64, dtype=np.int64)
    result = {}
    for count in (1, 2):
        with threads(count):
            fns["regions"](out.ctypes.data, 100, 2)  # start the pool
            result[f"region_us_{count}"] = 1e6 * _seconds_per_call(
                lambda reps: fns["regions"](out.ctypes.data, reps, 2), budget)
    m, k, n = shape
    jit, gemm = _build_bench_gemm(m, k, n)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((m, k)).astype(np.float32)
    bm = rng.standard_normal((k, n)).astype(np.float32)
    c = np.zeros((m, n), dtype=np.float32)
    addrs = (a.ctypes.data, bm.ctypes.data, c.ctypes.data)
    outputs = {}

    def run(reps):
        for _ in range(reps):
            gemm(*addrs, m)

    for count in (1, 2):
        with threads(count):
            run(2)
            result[f"gemm_us_{count}"] = 1e6 * _seconds_per_call(run, budget)
            outputs[count] = c.copy()
    np.testing.assert_array_equal(outputs[2], outputs[1])
    result["gemm_shape"] = (m, k, n)
    result["gemm_gflops_1"] = 2 * m * n * k / result["gemm_us_1"] / 1e3
    result["speedup_2"] = result["gemm_us_1"] / result["gemm_us_2"]
    return result


def report(r: dict) -> str:
    m, k, n = r["gemm_shape"]
    return (f"region overhead: {r['region_us_1']:.3f} us serial path, {r['region_us_2']:.2f} us with 2 threads; "
            f"gemm {m}x{k}x{n}: {r['gemm_us_1']:.1f} us on 1 thread ({r['gemm_gflops_1']:.0f} GFLOP/s), "
            f"{r['gemm_us_2']:.1f} us on 2, speedup {r['speedup_2']:.2f}x (load average "
            f"{os.getloadavg()[0]:.2f})")


def test_measure_region_overhead_and_speedup(compiled):
    """Prints the figures (pytest -s); `python tests/test_parallel.py` measures longer."""
    print("\n[parallel] " + report(measure(compiled[1])))


def test_no_crash_at_exit_with_spinning_workers():
    """llvmlite dlcloses libgomp at exit while OMP_WAIT_POLICY=active workers spin in it (SIGSEGV
    every time before threads_available() kept its own RTLD_NODELETE handle)."""
    script = textwrap.dedent("""
        import ctypes, numpy as np
        from llvmlite import ir
        from codegen import parallel
        from codegen.jit import JitModule
        import tests.test_parallel as t
        module = ir.Module("m")
        t._emit_regions(module)
        jit = JitModule(module)
        f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)(jit.address("regions"))
        parallel.set_num_threads(2)
        out = np.zeros(512, dtype=np.int64)
        f(out.ctypes.data, 10, 2)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "active"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, (out.returncode, out.stderr)


if __name__ == "__main__":
    module = ir.Module("bench")
    _emit_regions(module)
    bench_jit = JitModule(module)
    bench_fns = {"regions": ctypes.CFUNCTYPE(None, VOIDP, ctypes.c_int64, ctypes.c_int64)(
        bench_jit.address("regions"))}
    for gemm_shape in [(48, 256, 512), (48, 256, 512), (96, 512, 512), (96, 512, 512)]:
        print(report(measure(bench_fns, budget=1.0, shape=gemm_shape)))
