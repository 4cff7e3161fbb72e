"""Compile an llvmlite module to machine code in this process and hand out function addresses.

Render (codegen.lower) -> compile (here) -> load (addresses for ctypes) are separate stages.
"""
from __future__ import annotations

import llvmlite.binding as llvm

from . import target


def optimize(module_ref, tm, speed_level: int = 3) -> None:
    """Run LLVM's O`speed_level` pipeline (new pass manager) with loop and SLP vectorization on."""
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
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
    """Machine code of one module, living as long as this object does."""

    def __init__(self, llvm_module, *, speed_level: int = 3):
        tm = target.target_machine()
        self.module_ref = parse_and_verify(llvm_module, tm)
        optimize(self.module_ref, tm, speed_level)
        self.optimized_ir = str(self.module_ref)
        self.engine = llvm.create_mcjit_compiler(self.module_ref, target.target_machine())
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise KeyError(f"no function {name!r} in the compiled module")
        return addr
