"""kcompile's own thread pool: what generated parallel regions run on (see codegen.parallel).

    kcompile_parallel(fn, ctx, units)     runs fn(ctx, u, units) once for every u in [0, units)

The calling thread and the pool's workers take units from one shared counter (an atomic add), so a
unit runs on whichever thread gets to it first, and the caller waits only for units a worker has
actually started.  That is the point of having a pool of our own: with libgomp's GOMP_parallel the
caller waited at the region's end for every thread of the team, so when another process held a
core, each region waited for a descheduled worker to be scheduled again (measured on the 2-core
machine with a busy loop on one core: a batch-32 epoch of W1 took 2.7 s on 2 threads against 1.1 s
on one).  Here a worker that is not running simply takes no units and the caller does them.

Design:
* The runtime is a small LLVM module compiled once per process (`start`); `kcompile_parallel` is
  registered as a process symbol, so every module, cached objects included, resolves it.
* One job at a time: a region started while another runs (from a second Python thread, or nested
  inside a parallel body) runs all its units on its own thread.  `units` must be >= 1.
* Shared state, each word on its own cache line: `word` = units << 32 | next unit to take; `done` =
  units finished; `fn`, `ctx` of the current job; `busy`, the owner's lock; `stop`.  The owner writes
  fn, ctx and done, then publishes `word` with a release store; a thread that takes a unit below
  `units` by an atomic add on `word` (acquire) is sure that fn and ctx are the current job's and
  stay so until it counts the unit done (the owner waits for that before starting another job).
* Workers are native threads (pthread_create), started from Python with ctypes: they never take the
  GIL and do not count as Python threads.  An idle worker spins a few tens of microseconds (a
  training step's regions come much closer together than that), then sleeps in usleep with a
  backoff up to 5 ms: a region that starts while the workers sleep runs on the caller alone.
* At exit (atexit) the workers are told to stop and joined before the runtime's code is freed.  A
  forked child has no workers (threads do not survive fork); codegen.parallel then runs its
  regions serially.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import platform
import threading

import llvmlite.binding as llvm

from . import target

#: The function generated code calls: void kcompile_parallel(ptr fn, ptr ctx, i64 units).
PARALLEL_SYMBOL = "kcompile_parallel"

# Idle worker: this many polls with a pause between them, then sleeps of 20 us doubling to 5 ms.
_SPIN_POLLS = 4000
_SLEEP_FIRST_US = 20
_SLEEP_MAX_US = 5000
# The owner waiting for units in progress: polls with a pause, yielding the core after this many.
_WAIT_POLLS_BEFORE_YIELD = 2000

_lock = threading.Lock()
_runtime = None          # the JitModule of the runtime: kept for the life of the process
_workers: list = []      # pthread_t values of the running workers
_stop_address = 0
_failed = False


def _pause() -> str:
    machine = platform.machine().lower()
    return "call void @llvm.x86.sse2.pause()" if machine in ("x86_64", "amd64", "i686", "i386") else ""


def _runtime_ir() -> str:
    pause = _pause()
    declare_pause = "declare void @llvm.x86.sse2.pause()" if pause else ""
    return f"""
@kcompile_pool_word = global i64 0, align 64
@kcompile_pool_done = global i64 0, align 64
@kcompile_pool_fn = global ptr null, align 64
@kcompile_pool_ctx = global ptr null, align 8
@kcompile_pool_busy = global i64 0, align 64
@kcompile_pool_stop = global i64 0, align 64

declare i32 @usleep(i32)
declare i32 @sched_yield()
{declare_pause}

define void @{PARALLEL_SYMBOL}(ptr %fn, ptr %ctx, i64 %units) nounwind {{
entry:
  %cx = cmpxchg ptr @kcompile_pool_busy, i64 0, i64 1 acquire monotonic
  %own = extractvalue {{ i64, i1 }} %cx, 1
  br i1 %own, label %publish, label %serial
serial:
  %su = phi i64 [0, %entry], [%su1, %serial.body]
  %more = icmp slt i64 %su, %units
  br i1 %more, label %serial.body, label %exit
serial.body:
  call void %fn(ptr %ctx, i64 %su, i64 %units)
  %su1 = add i64 %su, 1
  br label %serial
publish:
  store ptr %fn, ptr @kcompile_pool_fn, align 8
  store ptr %ctx, ptr @kcompile_pool_ctx, align 8
  store i64 0, ptr @kcompile_pool_done, align 8
  %job = shl i64 %units, 32
  store atomic i64 %job, ptr @kcompile_pool_word release, align 8
  br label %take
take:
  %prev = atomicrmw add ptr @kcompile_pool_word, i64 1 acq_rel
  %unit = and i64 %prev, 4294967295
  %mine = icmp slt i64 %unit, %units
  br i1 %mine, label %run, label %wait
run:
  call void %fn(ptr %ctx, i64 %unit, i64 %units)
  %d0 = atomicrmw add ptr @kcompile_pool_done, i64 1 release
  br label %take
wait:
  %polls = phi i64 [0, %take], [%polls1, %wait.more], [%polls1, %wait.yield]
  %done = load atomic i64, ptr @kcompile_pool_done acquire, align 8
  %all = icmp sge i64 %done, %units
  br i1 %all, label %release, label %wait.more
wait.more:
  {pause}
  %polls1 = add i64 %polls, 1
  %long = icmp sgt i64 %polls1, {_WAIT_POLLS_BEFORE_YIELD}
  br i1 %long, label %wait.yield, label %wait
wait.yield:
  %y = call i32 @sched_yield()
  br label %wait
release:
  store atomic i64 0, ptr @kcompile_pool_busy release, align 8
  br label %exit
exit:
  ret void
}}

define ptr @kcompile_pool_worker(ptr %unused) nounwind {{
entry:
  br label %loop
loop:
  %idle = phi i64 [0, %entry], [0, %ran], [%idle1, %spin], [0, %slept]
  %sleep = phi i32 [{_SLEEP_FIRST_US}, %entry], [{_SLEEP_FIRST_US}, %ran], [%sleep, %spin], [%sleep2, %slept]
  %stop = load atomic i64, ptr @kcompile_pool_stop monotonic, align 8
  %stopping = icmp ne i64 %stop, 0
  br i1 %stopping, label %exit, label %look
look:
  %w = load atomic i64, ptr @kcompile_pool_word monotonic, align 8
  %next = and i64 %w, 4294967295
  %units = lshr i64 %w, 32
  %open = icmp ult i64 %next, %units
  br i1 %open, label %take, label %idle.spin
take:
  %prev = atomicrmw add ptr @kcompile_pool_word, i64 1 acq_rel
  %unit = and i64 %prev, 4294967295
  %of = lshr i64 %prev, 32
  %mine = icmp ult i64 %unit, %of
  br i1 %mine, label %run, label %ran
run:
  %fn = load ptr, ptr @kcompile_pool_fn, align 8
  %ctx = load ptr, ptr @kcompile_pool_ctx, align 8
  call void %fn(ptr %ctx, i64 %unit, i64 %of)
  %d0 = atomicrmw add ptr @kcompile_pool_done, i64 1 release
  br label %ran
ran:
  br label %loop
idle.spin:
  %idle1 = add i64 %idle, 1
  %spinning = icmp slt i64 %idle1, {_SPIN_POLLS}
  br i1 %spinning, label %spin, label %nap
spin:
  {pause}
  br label %loop
nap:
  %r = call i32 @usleep(i32 %sleep)
  %sleep1 = shl i32 %sleep, 1
  %capped = icmp sgt i32 %sleep1, {_SLEEP_MAX_US}
  %sleep2 = select i1 %capped, i32 {_SLEEP_MAX_US}, i32 %sleep1
  br label %slept
slept:
  br label %loop
exit:
  ret ptr null
}}
"""


def start(workers: int) -> bool:
    """Compile the runtime (once) and have at least `workers` worker threads running.  False when the
    pool cannot run here (then generated code must run its regions serially)."""
    global _runtime, _stop_address, _failed
    with _lock:
        if _failed:
            return False
        try:
            if _runtime is None:
                from .jit import JitModule
                target.initialize()
                # NOTE: no IR passes: the runtime is written as it should run (9 ms to compile
                # here, against 26 ms through the O3 pipeline).
                runtime = JitModule(_runtime_ir(), ir_passes=False)
                llvm.add_symbol(PARALLEL_SYMBOL, runtime.address(PARALLEL_SYMBOL))
                _stop_address = runtime.engine.get_global_value_address("kcompile_pool_stop")
                _runtime = runtime
                atexit.register(_stop_workers)
            while len(_workers) < workers:
                _workers.append(_spawn())
        except (OSError, RuntimeError, AttributeError, KeyError) as error:
            if _runtime is None:
                _failed = True
            if not _workers:
                raise RuntimeError(f"kcompile's thread pool cannot start: {error}") from error
        return True


def _spawn() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    create = libc.pthread_create
    create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    create.restype = ctypes.c_int
    handle = ctypes.c_ulong(0)
    error = create(ctypes.byref(handle), None, ctypes.c_void_p(_runtime.address("kcompile_pool_worker")),
                   None)
    if error:
        raise OSError(error, f"pthread_create failed: {os.strerror(error)}")
    return handle.value


def workers() -> int:
    """How many worker threads run (the caller of a region is one more)."""
    return len(_workers)


def _stop_workers() -> None:
    """Stop and join every worker (at exit, before the runtime's code goes away)."""
    if not _workers or not _stop_address:
        return
    ctypes.c_int64.from_address(_stop_address).value = 1
    libc = ctypes.CDLL(None)
    join = libc.pthread_join
    join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    for handle in _workers:
        join(handle, None)
    _workers.clear()


def _after_fork_in_child() -> None:
    # NOTE: only the forking thread survives fork: the workers' handles mean nothing in the child, and
    # a job the parent was running (from another thread) is not the child's.
    _workers.clear()
    if _runtime is not None:
        for name in ("kcompile_pool_word", "kcompile_pool_done", "kcompile_pool_busy"):
            ctypes.c_int64.from_address(_runtime.engine.get_global_value_address(name)).value = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
