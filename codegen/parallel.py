"""Parallel regions in generated code: a loop range split into chunks that threads take as they come, through libgomp.

    emit_parallel_for(builder, start, stop, captured, body, *, min_chunk=1, grain=1, name="par")

`body(builder, lo, hi, values)` emits the work for the half-open chunk [lo, hi); `values` are the
chunk function's copies of `captured`.  What gets emitted, in the caller's function:

    chunk = NAME(lo, hi, captured...)          internal function holding the body; the captured values
                                               are its parameters (noalias carried over, see below)
    NAME.omp(ptr ctx)                          internal; what GOMP_parallel runs on every thread: loads
                                               start, stop and the captures from ctx, then takes chunks
                                               (atomic add on ctx's counter) and calls NAME on each
                                               until none is left
    at the call site:
        want = min(load kcompile_num_threads, (stop - start) / min_chunk, units of `grain`)
        if want >= 2:  ctx = {start, stop, 0, captured...};  GOMP_parallel(NAME.omp, &ctx, want, 0)
        elif start < stop:  NAME(start, stop, captured...)       (serial: no libgomp call at all)

Why this shape:
* The body is a separate function, so everything it allocates (`alloca` in its entry block, e.g. the
  GEMM's B-panel scratch) is per thread, and the serial path is a plain direct call: no context struct,
  no libgomp, the same machine code the body would have had without threads (LLVM inlines it when small).
* The serial path never asks libgomp who it is.  Inside another parallel region omp_get_num_threads()
  answers for the *outer* team, so a piece size computed from it would be off there; only NAME.omp,
  which runs as the body of our own region, calls omp_get_num_threads.  A nested region
  (a parallel body calling code with parallel regions) gets a team of one from libgomp and is correct.
* Chunks are contiguous pieces of ceil(units / (T * PIECES_PER_THREAD)) units of the range cut into
  units of `grain` elements (the last piece may be shorter), handed out in order by an atomic counter
  to whichever of the T threads asks next: every index is covered exactly once, chunk boundaries fall
  on start + k*grain (GEMM row tiles, vector widths, cache lines), and the body is never called with an
  empty range.  A thread that the OS (or the hypervisor) has descheduled holds at most the piece it
  started, not 1/T of the region: the others take the rest.  The results never depend on which thread
  runs a piece (the body writes only its chunk's part of memory), nor on the thread count.
  NOTE (W1 batch-32 epochs of 20000 rows, alternating with one static chunk per thread, throwaway
  /tmp/kc3/fit20k.py): beside a busy loop on one core, 2.69-3.08 s against 2.84-3.35 s in five pairs;
  idle, no difference beyond the noise in twenty pairs (0.52-1.28 s against 0.53-0.98 s, both
  drifting with the machine).  A region's end still waits for every thread of the team, so beside a
  busy process one thread (KCOMPILE_NUM_THREADS=1) is much faster: 1.02-1.24 s in the same test.
* The thread count is read when the region starts from `kcompile_num_threads`, an `external global
  i32` that this module defines in the process (a ctypes int registered with llvmlite's add_symbol):
  one knob for every compiled module, cached ones included, changed with `set_num_threads` without
  recompiling.  Its first value is the `num_threads()` policy: $KCOMPILE_NUM_THREADS, else the CPUs
  this process may run on.  Small ranges (fewer than 2 * min_chunk elements) stay serial: a region costs
  about a microsecond when the workers are spinning (0.5-1.4 us measured on the 2-core machine), and
  far more when the machine is oversubscribed (a spinning pool beside a busy process took 7.6 ms per
  empty region), so choose min_chunk as the number of elements worth ~10-20 us.
* libgomp is optional.  `threads_available()` loads it once (load_library_permanently) and only then
  may a module reference GOMP_parallel, omp_* or kcompile_num_threads: when it cannot be loaded, or
  `threading=False` is passed (exported shared libraries, which must depend on libc only), the region
  is emitted as the plain serial call and the module has no trace of threads.
  NOTE (measured on the 2-core reference machine): with libgomp's default wait policy a region costs
  0.6-0.8 us back to back and a 110 us GEMM split by rows runs 1.9x faster on 2 threads; when another
  process keeps a core busy the same region costs 3-12 ms (the waiting thread spins while the one it
  waits for is not scheduled).  OMP_WAIT_POLICY=passive bounds that to ~10 us but costs 7-8 us per
  region on an idle machine, where it made the 2-thread GEMM slower than 1 thread.  So the wait policy
  stays libgomp's, but the spin before a waiting thread sleeps is shortened: `_load_libgomp` sets
  GOMP_SPINCOUNT=10000 (libgomp's default without OMP_WAIT_POLICY is 300000) with
  os.environ.setdefault before loading libgomp, which reads it once.  A value the user set wins, and
  subprocesses started afterwards inherit the variable.  Even so, beside a busy process one thread
  is faster than two, and on an idle machine two are faster than one: the training and inference
  loops measure which and set the count between steps (codegen.governor), unless the user fixed it
  ($KCOMPILE_NUM_THREADS, set_num_threads).
  NOTE: MCJIT aborts the process on an unresolved symbol, so an object file that references libgomp
  must be loaded only in a process where threads_available() returned True.  The compile cache keys on
  the IR text, which is lowered (and so has called threads_available()) before the cache is consulted.

Captured values: any first-class `ir.Value`s of the caller (pointers, integers, floats, vectors).  The
body must use only those copies, its own instructions, constants and globals; using a caller's
instruction directly is caught here with a ValueError naming the value, before LLVM's verifier would
reject the module.  A captured caller argument marked `noalias` that is captured once gives a `noalias`
parameter: the chunk function sees the same buffer, and the vectorizer keeps skipping overlap checks.

Fork: libgomp's worker pool does not survive fork(): a forked child that starts a region with two or
more threads waits forever for workers that do not exist (tried with this libgomp).  A child of a process that loaded libgomp here
therefore starts with the thread count set to 1, so its regions run serially without calling libgomp,
and set_num_threads(n > 1) in it raises RuntimeError.  (multiprocessing's 'spawn' and 'forkserver'
start methods give children that can use threads.)

Thread-safety: regions may be started from several Python threads at once (libgomp gives each its own
team); the body must only write to its own chunk's part of memory.
"""
from __future__ import annotations

import ctypes
import os
import threading as _threading
from typing import Callable, Sequence

import llvmlite.binding as llvm
from llvmlite import ir

from .loops import I64, i64

__all__ = ["emit_parallel_for", "threads_available", "num_threads", "get_num_threads", "set_num_threads",
           "reset_num_threads", "adaptive_count",
           "NUM_THREADS_SYMBOL", "ENV_NUM_THREADS", "LIBGOMP"]

LIBGOMP = "libgomp.so.1"
#: Name of the process-wide i32 that generated code reads at each region to get its thread count.
NUM_THREADS_SYMBOL = "kcompile_num_threads"
ENV_NUM_THREADS = "KCOMPILE_NUM_THREADS"

I32 = ir.IntType(32)
PTR = ir.PointerType()
VOID = ir.VoidType()

# The storage behind NUM_THREADS_SYMBOL.  0 = not configured yet (threads_available() sets it from the
# policy); generated code treats anything below 2 as "run serially".
_num_threads_cell = ctypes.c_int32(0)
_lock = _threading.Lock()
_libgomp_handle = None  # ctypes.CDLL, kept so that the library is never unloaded (see threads_available)


# ----------------------------------------------------------------------------------------------
# Thread-count policy and the runtime knob
# ----------------------------------------------------------------------------------------------

def num_threads() -> int:
    """The thread count policy: $KCOMPILE_NUM_THREADS if set, else the number of CPUs this process may use.

    An empty value counts as unset.  Anything but a positive integer raises ValueError.
    """
    raw = os.environ.get(ENV_NUM_THREADS, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(
                f"{ENV_NUM_THREADS} must be a positive integer (how many threads compiled code may use), "
                f"got {raw!r}; set it to 1 to run single-threaded, or unset it to use the "
                f"{_available_cpus()} CPUs this process may run on")
        return value
    return _available_cpus()


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """The thread count compiled parallel regions use now (the policy's value until set_num_threads)."""
    value = _num_threads_cell.value
    return value if value > 0 else num_threads()


def set_num_threads(count: int) -> int:
    """Set how many threads compiled parallel regions may use (1 = serial); returns the previous count.

    Takes effect at the next region started, in every module compiled by this process, without
    recompiling.  Regions still never use more threads than their range allows (see min_chunk).
    A count set here (or by $KCOMPILE_NUM_THREADS) is kept: the training and inference loops no
    longer adapt it (codegen.governor) until `reset_num_threads()`.
    """
    global _count_fixed
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"set_num_threads needs a positive int, got {count!r}")
    if count > 1 and _forked_child:
        raise RuntimeError("compiled code cannot use threads in a process forked after libgomp was loaded "
                           "(libgomp's thread pool does not survive fork and the region would hang); start "
                           "worker processes with multiprocessing's 'spawn' or 'forkserver' method instead")
    with _lock:
        previous = get_num_threads()
        _num_threads_cell.value = min(count, 2**31 - 1)
        _count_fixed = True
    return previous


def reset_num_threads() -> int:
    """Undo `set_num_threads`: back to the policy's count (`num_threads()`), which the loops may adapt
    again unless $KCOMPILE_NUM_THREADS fixes it; returns the previous count."""
    global _count_fixed
    with _lock:
        previous = get_num_threads()
        _count_fixed = False
        if not _forked_child:
            _num_threads_cell.value = min(num_threads(), 2**31 - 1)
    return previous


_count_fixed = False   # set_num_threads was called (reset_num_threads clears it)


def adaptive_count() -> int:
    """The most threads a loop may adapt the count between (see codegen.governor), or 0 when the count
    is not to be adapted: set by set_num_threads or $KCOMPILE_NUM_THREADS, a forked child, no libgomp,
    or one CPU."""
    if _count_fixed or _forked_child or os.environ.get(ENV_NUM_THREADS, "").strip():
        return 0
    if not threads_available():
        return 0
    top = num_threads()
    return top if top > 1 else 0


def _set_adapted_count(count: int) -> None:
    """The governor's setter: like set_num_threads, without fixing the count (a no-op once it is fixed)."""
    with _lock:
        if not (_count_fixed or _forked_child):
            _num_threads_cell.value = count


_forked_child = False


def _after_fork_in_child() -> None:
    # NOTE: libgomp's pool is not fork-safe (a region in the child waits for threads that do not exist).
    global _forked_child, _lock
    _forked_child = True
    _num_threads_cell.value = 1
    _lock = _threading.Lock()   # (another thread of the parent may have held it at the fork)


def threads_available() -> bool:
    """Load libgomp into the process once; True when generated code may use it.

    On success the JIT can also resolve NUM_THREADS_SYMBOL, whose value is set from `num_threads()` here
    unless set_num_threads came first (so an invalid $KCOMPILE_NUM_THREADS raises ValueError here).
    """
    global _available
    if _available is not None:
        return _available
    with _lock:
        if _available is None:
            _available = _load_libgomp()
    return _available


_available: bool | None = None


def _load_libgomp() -> bool:
    global _libgomp_handle
    try:
        # NOTE: llvmlite dlcloses what load_library_permanently loaded when the process exits
        # (llvm::sys::DynamicLibrary's globals), while libgomp's workers may still be spinning in its
        # code: with OMP_WAIT_POLICY=active a script that ran one region crashed at exit 10 times in 10.
        # An RTLD_NODELETE handle of our own keeps the library mapped until the process is gone.
        # NOTE: libgomp reads its environment once, when loaded.  Its default spin (300k iterations
        # before sleeping) is what collapses a region to milliseconds when another process holds a
        # core; 10k iterations bounded a batch-32 training step to 2.75 ms where the default took
        # 7.3 ms (one thread: 1.85 ms) on the loaded 2-core machine.  A user's setting wins.
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
        _libgomp_handle = ctypes.CDLL(LIBGOMP, mode=os.RTLD_GLOBAL | getattr(os, "RTLD_NODELETE", 0))
        llvm.load_library_permanently(LIBGOMP)
    except (OSError, RuntimeError):
        return False
    if not (llvm.address_of_symbol("GOMP_parallel") and llvm.address_of_symbol("omp_get_num_threads")):
        return False
    if _num_threads_cell.value == 0:
        _num_threads_cell.value = min(num_threads(), 2**31 - 1)
    llvm.add_symbol(NUM_THREADS_SYMBOL, ctypes.addressof(_num_threads_cell))
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    return True


# ----------------------------------------------------------------------------------------------
# Emission
# ----------------------------------------------------------------------------------------------

def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name)
    return fn


def _num_threads_global(module: ir.Module) -> ir.GlobalVariable:
    gv = module.globals.get(NUM_THREADS_SYMBOL)
    if gv is None:
        gv = ir.GlobalVariable(module, I32, NUM_THREADS_SYMBOL)  # no initializer: external, the process's
    return gv


def _entry_alloca(builder: ir.IRBuilder, ty, name: str) -> ir.Value:
    """A static alloca in the entry block of the builder's function (not one per loop iteration)."""
    entry = builder.function.entry_basic_block
    if builder.block is entry:
        # NOTE: as in gemm._function_scratch: a second builder inserting into the block the caller's
        # builder is in would leave its insertion index stale, so emit in place.
        return builder.alloca(ty, name=name)
    bld = ir.IRBuilder(entry)
    if entry.instructions:
        bld.position_before(entry.instructions[0])
    return bld.alloca(ty, name=name)


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"emit_parallel_for needs {what} to be a positive int, got {value!r}")
    return value


def _foreign_operand(function: ir.Function, values) -> ir.Value | None:
    """The first instruction or argument among `values` that belongs to a function other than `function`."""
    for value in values:
        if isinstance(value, ir.Argument):
            owner = value.parent
        elif isinstance(value, ir.Instruction):
            owner = value.parent.parent if value.parent is not None else None
        else:
            continue
        if owner is not function:
            return value
    return None


def _check_closed(function: ir.Function, captured: Sequence[ir.Value]) -> None:
    for block in function.blocks:
        for instr in block.instructions:
            operands = list(instr.operands)
            if isinstance(instr, ir.PhiInstr):
                operands += [v for v, _ in instr.incomings]
            bad = _foreign_operand(function, operands)
            if bad is not None:
                hint = (" (it is one of `captured`: use the body's copy from its `values` argument)"
                        if any(bad is c for c in captured) else " (add it to `captured`)")
                raise ValueError(f"the body of parallel region {function.name!r} uses {bad.get_reference()} "
                                 f"of another function{hint}")


#: A region's units are handed out in pieces of ceil(units / (threads * PIECES_PER_THREAD)), each
#: taken by whichever thread asks next (see the module docstring).
PIECES_PER_THREAD = 4


def emit_parallel_for(builder: ir.IRBuilder, start, stop, captured: Sequence[ir.Value],
                      body: Callable[[ir.IRBuilder, ir.Value, ir.Value, list], None], *,
                      min_chunk: int = 1, grain: int = 1, name: str = "par",
                      threading: bool | None = None, pieces_per_thread: int = 0) -> ir.Function:
    """Emit `for chunk in split(range(start, stop)): body(chunk)`, the chunks running on parallel threads.

    start, stop:  i64 values or Python ints.
    captured:     caller values the body needs; `body` receives the chunk function's copies, in order.
    body:         body(builder, lo, hi, values) emits the work for [lo, hi) (lo < hi, both i64) at the
                  builder's position; it may add blocks and leaves the builder where the chunk ends.
    min_chunk:    at most (stop - start) // min_chunk threads run the region, so chunks average at
                  least min_chunk elements, and a range shorter than 2 * min_chunk runs serially on the
                  calling thread.  Pick it as the elements worth ~10-20 us of work.
    grain:        chunk boundaries (other than stop) fall on start + k * grain.
    threading:    None = use libgomp if threads_available(); False = emit only the serial call.
    pieces_per_thread: how finely the range is cut (PIECES_PER_THREAD by default); a region of a few
                  costly units (GEMM blocks) passes a large number, so that each unit is one piece
                  and the threads finish within one unit of each other.

    The builder must be at the end of a block (the region adds blocks, as for_range does); it is left
    after the region.  Returns the chunk function.
    """
    min_chunk = _positive_int(min_chunk, "min_chunk")
    grain = _positive_int(grain, "grain")
    captured = list(captured)
    for value in captured:
        if not isinstance(value, ir.Value) or isinstance(value.type, (ir.VoidType, ir.FunctionType)):
            raise TypeError(f"captured values must be first-class ir.Values, got {value!r}")
    start, stop = i64(start), i64(stop)
    if threading is None:
        threading = threads_available()
    elif threading and not threads_available():
        raise RuntimeError(f"threading=True but {LIBGOMP} could not be loaded; pass threading=None to fall "
                           f"back to serial code")

    module, caller = builder.module, builder.function
    base = module.get_unique_name(f"{caller.name}.{name}")

    # -- the chunk function: the body over [lo, hi) with the captures as parameters ---------------------
    chunk_fn = ir.Function(module, ir.FunctionType(VOID, [I64, I64] + [v.type for v in captured]), base)
    chunk_fn.linkage = "internal"
    chunk_fn.attributes.add("nounwind")
    # NOTE: noinline: the body is called from the serial path(s) and from the trampoline; inlined, LLVM
    # would optimize and vectorize up to three copies of it (measured: ~15% of a train step's compile).
    chunk_fn.attributes.add("noinline")
    lo, hi, *values = chunk_fn.args
    lo.name, hi.name = "lo", "hi"
    for src, param in zip(captured, values):
        if isinstance(src, ir.Argument) and "noalias" in src.attributes \
                and sum(c is src for c in captured) == 1:
            param.add_attribute("noalias")
    inner = ir.IRBuilder(chunk_fn.append_basic_block("entry"))
    body(inner, lo, hi, list(values))
    if inner.block.terminator is None:
        inner.ret_void()
    _check_closed(chunk_fn, captured)

    def call_serial(b: ir.IRBuilder) -> None:
        nonempty = b.icmp_signed("<", start, stop)
        with b.if_then(nonempty):
            b.call(chunk_fn, [start, stop] + captured)

    if not threading:
        call_serial(builder)
        return chunk_fn

    # -- the per-thread trampoline GOMP_parallel runs ------------------------------------------------------
    # ctx = {start, stop, next unit to hand out, captured...}
    ctx_type = ir.LiteralStructType([I64, I64, I64] + [v.type for v in captured])
    omp_fn = ir.Function(module, ir.FunctionType(VOID, [PTR]), f"{base}.omp")
    omp_fn.linkage = "internal"
    omp_fn.attributes.add("nounwind")
    ctx_arg = omp_fn.args[0]
    ctx_arg.name = "ctx"
    b = ir.IRBuilder(omp_fn.append_basic_block("entry"))
    fields = [b.load(b.gep(ctx_arg, [ir.Constant(I32, 0), ir.Constant(I32, i)], source_etype=ctx_type,
                           inbounds=True), typ=t)
              for i, t in enumerate(ctx_type.elements)]
    t_start, t_stop, _, *t_values = fields
    next_unit = b.gep(ctx_arg, [ir.Constant(I32, 0), ir.Constant(I32, 2)], source_etype=ctx_type,
                      inbounds=True)
    get_count = _declare(module, "omp_get_num_threads", ir.FunctionType(I32, []))
    team = b.zext(b.call(get_count, []), I64, name="team")
    total = b.sub(t_stop, t_start, name="total")
    units = total if grain == 1 else b.udiv(b.add(total, i64(grain - 1)), i64(grain))
    pieces = b.mul(team, i64(pieces_per_thread or PIECES_PER_THREAD))
    piece = b.udiv(b.add(units, b.sub(pieces, i64(1))), pieces, name="piece")

    def element(unit):
        if grain == 1:
            return b.add(t_start, unit)
        offset = b.mul(unit, i64(grain))
        return b.add(t_start, b.select(b.icmp_unsigned("<", offset, total), offset, total))

    loop, done = omp_fn.append_basic_block("take"), omp_fn.append_basic_block("done")
    b.branch(loop)
    b.position_at_end(loop)
    first = b.atomic_rmw("add", next_unit, piece, "monotonic", name="first")
    work = omp_fn.append_basic_block("work")
    b.cbranch(b.icmp_unsigned("<", first, units), work, done)
    b.position_at_end(work)
    last = b.add(first, piece)
    last = b.select(b.icmp_unsigned("<", last, units), last, units)
    b.call(chunk_fn, [element(first), element(last)] + t_values)
    b.branch(loop)
    b.position_at_end(done)
    b.ret_void()

    # -- the call site ---------------------------------------------------------------------------------------
    gomp_parallel = _declare(module, "GOMP_parallel", ir.FunctionType(VOID, [PTR, PTR, I32, I32]))
    ctx = _entry_alloca(builder, ctx_type, f"{name}.ctx")
    total = builder.sub(stop, start, name=f"{name}.total")
    # Largest useful team: at most total // min_chunk threads, and no more threads than grain units.
    # Negative or small totals give <= 1, i.e. the serial path.
    limit = builder.sdiv(total, i64(min_chunk)) if min_chunk > 1 else total
    if grain > 1:
        units = builder.sdiv(builder.add(total, i64(grain - 1)), i64(grain))
        limit = builder.select(builder.icmp_signed("<", units, limit), units, limit)
    wanted = builder.sext(builder.load_atomic(_num_threads_global(module), "monotonic", 4, typ=I32), I64)
    team_size = builder.select(builder.icmp_signed("<", wanted, limit), wanted, limit, name=f"{name}.team")
    with builder.if_else(builder.icmp_signed(">", team_size, i64(1))) as (parallel, serial):
        with parallel:
            for i, value in enumerate([start, stop, i64(0)] + captured):
                # NOTE: no source_etype: llvmlite then types the field pointer from the (typed) alloca,
                # which store() checks; with source_etype it would claim to point at the whole struct.
                builder.store(value, builder.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, i)],
                                                 inbounds=True))
            builder.call(gomp_parallel, [omp_fn, ctx, builder.trunc(team_size, I32), ir.Constant(I32, 0)])
        with serial:
            call_serial(builder)
    return chunk_fn
