"""Compile an llvmlite module to machine code in this process and hand out function addresses.

Render (codegen.lower) -> compile (here) -> load (addresses for ctypes) are separate stages.
"""
from __future__ import annotations

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


class JitModule:
    """Machine code of one module, living as long as this object does.

    `JitModule(llvm_module)` compiles (parse, verify, optimize, MCJIT codegen); `JitModule.from_object`
    loads machine code compiled earlier (see codegen/cache.py).  Either way `.address(name)` gives function
    addresses, `.optimized_ir` the IR after optimization, `.assembly()` the assembly (made on first use).
    """

    cache_hit = False  # set by codegen.cache.compile_cached when the code came from the disk cache

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

    @classmethod
    def from_object(cls, object_code: bytes, optimized_ir: str) -> "JitModule":
        """Load an object file made by `JitModule(..., keep_object=True)`: no parsing, no codegen (~1 ms).

        `optimized_ir` is only kept for `.optimized_ir` and `.assembly()`; `.module_ref` is None.
        """
        self = cls.__new__(cls)
        tm = target.target_machine()
        empty = llvm.parse_assembly("")
        empty.triple = tm.triple
        empty.data_layout = str(tm.target_data)
        self.module_ref = None
        self.optimized_ir = optimized_ir
        self.object_code = bytes(object_code)
        self._assembly = None
        self.engine = llvm.create_mcjit_compiler(empty, tm)
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(self.object_code))
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
            ref = llvm.parse_assembly(self.optimized_ir)
            ref.triple = tm.triple
            ref.data_layout = str(tm.target_data)
            self._assembly = tm.emit_assembly(ref)
        return self._assembly
