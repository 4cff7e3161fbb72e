"""The host CPU as LLVM sees it: target machines, feature flags, and the vector width to generate for.

Every target machine is made with the host's CPU name and feature string: without them LLVM emits
SSE-only code (see ../shared/LLVM-NOTES.md).  Nothing here assumes AVX-512: the vector width is read
from the features, so the same generator is correct on AVX2, SSE-only x86-64 and aarch64 (NEON).
"""
from __future__ import annotations

import functools

import llvmlite
import llvmlite.binding as llvm


@functools.lru_cache(maxsize=None)
def initialize() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


@functools.lru_cache(maxsize=None)
def host_cpu_name() -> str:
    initialize()
    return llvm.get_host_cpu_name()


@functools.lru_cache(maxsize=None)
def host_cpu_features() -> str:
    initialize()
    return llvm.get_host_cpu_features().flatten()


def _enabled(features: str) -> set[str]:
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def vector_bits(features: str | None = None) -> int:
    """Width in bits of the widest float vector register the features allow."""
    feats = _enabled(host_cpu_features() if features is None else features)
    # NOTE: AVX-512 float vectors need avx512f; 'prefer-256-bit' style tuning is left to LLVM.
    if "avx512f" in feats:
        return 512
    if "avx" in feats or "avx2" in feats:
        return 256
    return 128  # SSE2 is baseline on x86-64, NEON on aarch64


def vector_lanes(dtype_bits: int = 32, features: str | None = None) -> int:
    """How many elements of a `dtype_bits`-wide float fit in one vector register."""
    return max(1, vector_bits(features) // dtype_bits)


def has_fma(features: str | None = None) -> bool:
    feats = _enabled(host_cpu_features() if features is None else features)
    return "fma" in feats or "neon" in feats or "fp-armv8" in feats


def target_machine(cpu: str | None = None, features: str | None = None, *, for_object: bool = False,
                   opt: int = 3):
    """A fresh target machine (MCJIT takes ownership of the one it is given, so make one per engine).

    `for_object=True` gives position-independent code with the default code model, as a shared
    library needs; the JIT uses LLVM's defaults.
    """
    initialize()
    target = llvm.Target.from_default_triple()
    cpu = host_cpu_name() if cpu is None else cpu
    features = host_cpu_features() if features is None else features
    if for_object:
        return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic",
                                            codemodel="default")
    return target.create_target_machine(cpu=cpu, features=features, opt=opt)


def identity() -> str:
    """What compiled code depends on besides its IR: used in cache keys."""
    return f"{llvm.get_default_triple()}|{host_cpu_name()}|{host_cpu_features()}|llvmlite-{llvmlite.__version__}"
