"""Compile an llvmlite module to machine code in this process and hand out function addresses.

Render (codegen.lower) -> compile (here) -> load (addresses for ctypes) are separate stages.
"""
from __future__ import annotations

import hashlib
import os
import select
import signal
import struct
import threading
import time
import warnings
import weakref

import llvmlite.binding as llvm

from . import target


# NOTE: LLVM's loop unroller roughly doubles compile time of a training step and measured no faster
# (the GEMM micro-kernels are unrolled by construction; the vectorizer still interleaves).
LOOP_UNROLLING = False


def optimize(module_ref, tm, speed_level: int = 3) -> None:
    """Run LLVM's O`speed_level` pipeline (new pass manager) with loop and SLP vectorization on."""
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = LOOP_UNROLLING
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module_ref, pb)


def parse_and_verify(llvm_module, tm):
    """Parse the textual form of an llvmlite.ir.Module, set its triple and data layout, verify it."""
    target.initialize()
    ref = llvm.parse_assembly(str(llvm_module))
    ref.triple = tm.triple
    ref.data_layout = str(tm.target_data)
    ref.verify()
    return ref


# Between the optimized IR of the modules of one JitModule (the kernels and their GEMM library).
MODULE_SEPARATOR = "\n; ---- kcompile: the next module, linked with the one above ----\n"


class JitModule:
    """Machine code of one module, living as long as this object does.

    `JitModule(llvm_module)` compiles (parse, verify, optimize, MCJIT codegen); `JitModule.from_object`
    loads machine code compiled earlier (see codegen/cache.py).  Either way `.address(name)` gives function
    addresses, `.optimized_ir` the IR after optimization, `.assembly()` the assembly (made on first use).
    """

    cache_hit = False  # set by codegen.cache.compile_cached when the code came from the disk cache
    cache_key = None   # and the name of its cache entry (None: not cached)

    def __init__(self, llvm_module, *, speed_level: int = 3, keep_object: bool = False):
        """`keep_object=True` also keeps the object file MCJIT produced in `.object_code` (bytes)."""
        tm = target.target_machine()
        self.module_ref = parse_and_verify(llvm_module, tm)
        optimize(self.module_ref, tm, speed_level)
        self.optimized_ir = str(self.module_ref)
        self.engine = llvm.create_mcjit_compiler(self.module_ref, target.target_machine())
        self.object_code = None
        self._assembly = None
        captured = []
        if keep_object:
            # NOTE: MCJIT's object-cache hook hands over the very object it is about to load, so keeping
            # the code costs no second codegen.  It is the same bytes as emit_object() with a JIT target
            # machine (checked by tests/test_codegen_cache.py), and MCJIT relocates it again on reload.
            self.engine.set_object_cache(lambda _module, buffer: captured.append(bytes(buffer)), None)
        self.engine.finalize_object()
        if keep_object:
            self.object_code = captured[0] if captured else target.target_machine().emit_object(self.module_ref)
        self.objects = None if self.object_code is None else [self.object_code]

    @classmethod
    def from_object(cls, object_code: bytes, optimized_ir: str) -> "JitModule":
        """Load an object file made by `JitModule(..., keep_object=True)`: no parsing, no codegen (~1 ms).

        `optimized_ir` is only kept for `.optimized_ir` and `.assembly()`; `.module_ref` is None.
        """
        return cls.from_objects([object_code], optimized_ir)

    @classmethod
    def from_objects(cls, objects: list, optimized_ir: str) -> "JitModule":
        """Load and link object files (from `compile_objects`, or the cache) into one engine: calls
        from one to a function another defines are resolved within this engine."""
        self = cls.__new__(cls)
        tm = target.target_machine()
        empty = llvm.parse_assembly("")
        empty.triple = tm.triple
        empty.data_layout = str(tm.target_data)
        self.module_ref = None
        self.optimized_ir = optimized_ir
        self.objects = [bytes(o) for o in objects]
        self.object_code = self.objects[0] if len(self.objects) == 1 else None
        self._assembly = None
        self.engine = llvm.create_mcjit_compiler(empty, tm)
        for code in self.objects:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        self.engine.finalize_object()
        return self

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise KeyError(f"no function {name!r} in the compiled module")
        return addr

    def assembly(self) -> str:
        """Assembly of the optimized module, generated on first call from `.optimized_ir`."""
        if self._assembly is None:
            # NOTE: re-parsed rather than taken from module_ref: MCJIT's codegen has run on module_ref in
            # place, and on a cache hit there is no module at all.
            tm = target.target_machine()
            self._assembly = "".join(tm.emit_assembly(parse_and_verify(text, tm))
                                     for text in self.optimized_ir.split(MODULE_SEPARATOR))
        return self._assembly


# -- compiling several modules at once ---------------------------------------------------------------

_WITHOUT_IR_PASSES: "weakref.WeakSet" = weakref.WeakSet()


def without_ir_passes(module):
    """Mark an llvmlite.ir.Module to be compiled by compile_object with no IR optimization (only the
    code generator's own passes): for straight-line vector code, written as the machine should run
    it, where LLVM's optimizer costs compile time and changes nothing.  Returns the module."""
    _WITHOUT_IR_PASSES.add(module)
    return module


def compile_object(module, speed_level: int = 3) -> tuple:
    """(object file bytes, optimized IR text) of one module (an llvmlite.ir.Module or its IR text),
    made with the JIT's target machine, so `JitModule.from_objects` can load it."""
    tm = target.target_machine()
    ref = parse_and_verify(module, tm)
    if isinstance(module, str) or module not in _WITHOUT_IR_PASSES:
        optimize(ref, tm, speed_level)
    return tm.emit_object(ref), str(ref)


def env_flag(name: str, default: bool = False) -> bool:
    """An on/off environment variable: 0, false, no and off are off, any other value on; unset or
    empty, `default`."""
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def compile_jobs() -> int:
    """How many processes may compile the modules of one function at once: $KCOMPILE_COMPILE_JOBS,
    else 2 when the process may use 2 or more cores (1: everything in this process)."""
    value = os.environ.get("KCOMPILE_COMPILE_JOBS", "").strip()
    if value:
        try:
            jobs = int(value)
        except ValueError:
            raise ValueError(f"KCOMPILE_COMPILE_JOBS must be a positive integer, got {value!r}") from None
        if jobs < 1:
            raise ValueError(f"KCOMPILE_COMPILE_JOBS must be a positive integer, got {value!r}")
        return jobs
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


def _hold_llvm_across_fork() -> None:
    """Fork waits for any thread inside LLVM (llvmlite's lock is taken around the fork and released
    on both sides), so that a child never inherits the lock held by a thread it does not have."""
    from llvmlite.binding import ffi
    lock = getattr(getattr(ffi.lib, "_lock", None), "_lock", None)   # llvmlite's RLock
    if lock is not None and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=lock.acquire, after_in_parent=lock.release,
                            after_in_child=lock.release)


_hold_llvm_across_fork()


def _can_fork() -> bool:
    # NOTE: forking is safe here only when no other Python thread can be inside LLVM (holding
    # llvmlite's lock, which the child would inherit held); libgomp's worker threads never enter it.
    return hasattr(os, "fork") and threading.active_count() == 1


_CHILD_TIMEOUT_S = 120.0


def compile_objects(modules: list, speed_level: int = 3, jobs: int | None = None) -> list:
    """[(object bytes, optimized IR)] for each module.  With `jobs` processes, module i is compiled
    by process min(i, jobs - 1): this one compiles the first, forked children the rest (LLVM's
    optimizer and code generator are single-threaded; a module of kernels and one of GEMMs compile
    side by side on two cores).

    Any failure of a child (it died, timed out, or its result is damaged) makes this process compile
    its modules itself, so the result never depends on whether forking worked."""
    jobs = compile_jobs() if jobs is None else jobs
    share = {}
    if jobs > 1 and len(modules) > 1 and _can_fork():
        for index in range(1, len(modules)):
            share.setdefault(min(index, jobs - 1), []).append(index)
    children = {}
    # NOTE: forked before any module is rendered as text: rendering is Python work (tens of ms
    # for a train step's module), so each process renders the modules it compiles.
    for process, indices in share.items():
        children[process] = (indices, _fork_compile([modules[i] for i in indices], speed_level))
    mine = set(range(len(modules))) - {i for indices in share.values() for i in indices}
    results = [None] * len(modules)
    try:
        for index in sorted(mine):
            results[index] = compile_object(modules[index], speed_level)
    except BaseException:
        # NOTE: a KeyboardInterrupt (or an error) here must not leave the children blocked on
        # pipes nobody reads: kill and reap them, then let it propagate
        for _, (pid, read_fd) in children.values():
            _abandon(pid, read_fd)
        raise
    for indices, child in children.values():
        got = _collect(child, len(indices))
        for position, index in enumerate(indices):
            results[index] = got[position] if got is not None else \
                compile_object(modules[index], speed_level)
    return results


def _fork_compile(modules: list, speed_level: int):
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # NOTE: Python 3.12+ warns when forking a process with other OS threads; here those are
        # libgomp's idle workers, which hold no lock the child (LLVM alone) could need.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: compile, send, and leave without running any Python cleanup
        status = 1
        try:
            os.close(read_fd)
            lengths, parts = [], []
            for module in modules:
                code, optimized = compile_object(module, speed_level)
                payload = optimized.encode("utf-8")
                lengths += [len(code), len(payload)]
                parts += [code, payload]
            header = struct.pack(f"<Q{len(lengths)}Q", len(modules), *lengths)
            digest = hashlib.sha256(header + b"".join(parts)).digest()
            with os.fdopen(write_fd, "wb") as out:
                out.write(header + digest)
                for part in parts:
                    out.write(part)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def _abandon(pid: int, read_fd: int) -> None:
    """Kill a compiling child whose result is no longer wanted, and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid, read_fd)


def _reap(pid: int, read_fd: int) -> None:
    os.close(read_fd)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _collect(child, count: int):
    """The child's [(object, IR)] for its `count` modules, or None when anything went wrong (then
    the caller compiles them)."""
    pid, read_fd = child
    chunks = []
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                return None
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        _reap(pid, read_fd)
    data = b"".join(chunks)
    header_size = 8 * (1 + 2 * count)
    if len(data) < header_size + 32:
        return None
    sent, *lengths = struct.unpack_from(f"<Q{2 * count}Q", data)
    digest, body = data[header_size:header_size + 32], data[header_size + 32:]
    if sent != count or len(body) != sum(lengths) or \
            hashlib.sha256(data[:header_size] + body).digest() != digest:
        return None
    results, offset = [], 0
    for code_length, ir_length in zip(lengths[::2], lengths[1::2]):
        code = bytes(body[offset:offset + code_length])
        text = bytes(body[offset + code_length:offset + code_length + ir_length]).decode("utf-8")
        results.append((code, text))
        offset += code_length + ir_length
    return results
