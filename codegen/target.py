"""The host CPU as LLVM sees it: target machines, feature flags, and the vector width to generate for.

Every target machine is made with the host's CPU name and feature string: without them LLVM emits
SSE-only code on x86-64, whatever the CPU can do (that is what a target machine made without them
gives).  Nothing here assumes AVX-512: the vector width is read from the features, so the same
generator is correct on AVX2, SSE-only x86-64 and aarch64 (NEON).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import threading

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


CACHE_SYSFS = "/sys/devices/system/cpu/cpu0/cache"


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@functools.lru_cache(maxsize=None)
def l2_cache_bytes(root: str = CACHE_SYSFS) -> int | None:
    """The size of one core's L2 (data or unified) cache in bytes, from Linux's sysfs, or None
    where it is not known (another OS, a container without sysfs)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return None
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            level, kind, size = (_read_text(os.path.join(root, entry, name))
                                 for name in ("level", "type", "size"))
        except OSError:
            continue
        if level != "2" or kind not in ("Unified", "Data"):
            continue
        try:
            number = int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
        except (ValueError, IndexError):
            return None
        return number if number > 0 else None
    return None


_GENERATING = threading.local()


@contextlib.contextmanager
def generating_for(features: str):
    """Code emitted inside (in this thread) picks its vector width, register tile and FMA use for
    `features` instead of the host's: how an ahead-of-time export for another CPU is generated."""
    stack = _GENERATING.__dict__.setdefault("stack", [])
    stack.append(features)
    try:
        yield
    finally:
        stack.pop()


def code_features() -> str:
    """The feature string code is being generated for: the host's, or an export's target's."""
    stack = getattr(_GENERATING, "stack", None)
    return stack[-1] if stack else host_cpu_features()


def export_target(cpu: str | None = None, features: str | None = None) -> tuple[str, str]:
    """(cpu, features) an ahead-of-time library is built for.  By default the host's.  A `cpu` given
    without `features` gets only what that CPU implies (LLVM's defaults for it), never the host's
    features: a library for 'x86-64' must not contain AVX-512.  ValueError for a malformed feature
    string, or a CPU or feature LLVM does not know (which LLVM itself would only warn about)."""
    if features is not None:
        if not isinstance(features, str):
            raise ValueError(f"features must be a string such as '+avx2,+fma'; got {features!r}")
        items = [item.strip() for item in features.split(",")] if features.strip() else []
        bad = [item for item in items if len(item) < 2 or item[0] not in "+-"]
        if bad:
            raise ValueError(f"feature {bad[0]!r} in {features!r} must start with + or - (e.g. "
                             "'+avx2,+fma,-avx512f'), comma-separated")
        features = ",".join(items)
    if cpu is not None and (not isinstance(cpu, str) or not cpu.strip()):
        raise ValueError(f"cpu must be an LLVM CPU name such as 'x86-64' or 'haswell'; got {cpu!r}")
    if cpu is None and features is None:
        return host_cpu_name(), host_cpu_features()
    # NOTE: features without a cpu mean a generic CPU with those features: the host's CPU name
    # would bring all of its own (AVX-512 into a '+avx2,+fma' library)
    cpu = _generic_cpu() if cpu is None else cpu.strip()
    if (cpu, features) == (host_cpu_name(), host_cpu_features()):
        return cpu, features
    complaints = _llvm_complaints(cpu, features or "")
    if complaints:
        raise ValueError(f"LLVM does not know the target cpu={cpu!r} features={features!r}: "
                         + "; ".join(complaints))
    return cpu, implied_features(cpu) if features is None else features


def _x86() -> bool:
    return llvm.get_default_triple().startswith(("x86_64", "amd64"))


def _generic_cpu() -> str:
    return "x86-64" if _x86() else "generic"


#: (feature, LLVM IR of a probe function, what its assembly holds only when the CPU has the
#: feature): instruction-set features beyond vector width and FMA that LLVM's code for a CPU name
#: may use, so that an export's manifest lists them (kcompile.predictor refuses a library whose
#: features the machine lacks, where it would die of SIGILL).
_FEATURE_PROBES = (
    ("avx2", "<8 x i32>", "%r = mul <8 x i32> %a, %a", ("vpmulld", "%ymm")),
    ("sse4.1", "<4 x i32>", "%r = mul <4 x i32> %a, %a", ("pmulld",)),
    ("sse4.2", "<2 x i64>", "%c = icmp sgt <2 x i64> %a, zeroinitializer\n"
     "  %r = sext <2 x i1> %c to <2 x i64>", ("pcmpgtq",)),
    ("popcnt", "i64", "%r = call i64 @llvm.ctpop.i64(i64 %a)", ("popcnt",)),
    ("lzcnt", "i64", "%r = call i64 @llvm.ctlz.i64(i64 %a, i1 false)", ("lzcnt",)),
    ("bmi", "i64", "%n = xor i64 %a, -1\n  %q = lshr i64 %a, 7\n  %r = and i64 %n, %q", ("andn",)),
    ("bmi2", "i64", "%s = lshr i64 %a, 58\n  %b = add i64 %a, 1\n  %r = shl i64 %b, %s", ("shlx",)),
    ("movbe", "i32", "%r = call i32 @llvm.bswap.i32(i32 %a)", ("movbe",)),
    ("f16c", "<8 x float>", "%h = fptrunc <8 x float> %a to <8 x half>\n"
     "  %r = fpext <8 x half> %h to <8 x float>", ("vcvtps2ph",)),
    ("avx512cd", "<16 x i32>", "%r = call <16 x i32> @llvm.ctlz.v16i32(<16 x i32> %a, i1 false)",
     ("vplzcntd",)),
    ("avx512bw", "<32 x i16>", "%r = mul <32 x i16> %a, %a", ("vpmullw", "%zmm")),
    ("xop", "<4 x i32>", "%r = call <4 x i32> @llvm.fshl.v4i32(<4 x i32> %a, <4 x i32> %a, "
     "<4 x i32> <i32 3, i32 3, i32 3, i32 3>)", ("vprotd",)),
    ("avx512dq", "<8 x i64>", "%r = mul <8 x i64> %a, %a", ("vpmullq",)),
    ("avx512vl", "<4 x i64>", "%r = ashr <4 x i64> %a, <i64 3, i64 3, i64 3, i64 3>",
     ("vpsraq", "%ymm")),
)


@functools.lru_cache(maxsize=None)
def implied_features(cpu: str) -> str:
    """The instruction-set features a CPU name implies, read off the code LLVM emits for it
    (llvmlite cannot ask LLVM for a CPU's features): a <16 x float> multiply-add in zmm registers
    means AVX-512, in ymm AVX (with vfmadd, FMA too), which decide the generator's vector width and
    FMA use; and the features of _FEATURE_PROBES, which the code may use too."""
    if not _x86():
        return ""          # aarch64: NEON and FMA are baseline (vector_bits, has_fma)
    initialize()
    machine = llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features="")

    def assembly(ty, operation):
        return machine.emit_assembly(llvm.parse_assembly(
            "declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)\n"
            "declare i64 @llvm.ctpop.i64(i64)\ndeclare i64 @llvm.ctlz.i64(i64, i1)\n"
            "declare i32 @llvm.bswap.i32(i32)\n"
            "declare <16 x i32> @llvm.ctlz.v16i32(<16 x i32>, i1)\n"
            "declare <4 x i32> @llvm.fshl.v4i32(<4 x i32>, <4 x i32>, <4 x i32>)\n"
            "define void @probe(ptr %p) {\n"
            f"  %a = load {ty}, ptr %p, align 4\n"
            f"  {operation}\n"
            f"  store {ty} %r, ptr %p, align 4\n"
            "  ret void\n}\n"))

    widest = assembly("<16 x float>", "%m = fmul <16 x float> %a, %a\n  %r = fadd <16 x float> %m, %a")
    implied = ["+avx512f"] if "%zmm" in widest else ["+avx"] if "%ymm" in widest else []
    fused = assembly("<16 x float>", "%r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, "
                     "<16 x float> %a, <16 x float> %a)")
    # (FMA3's multiply-adds are vfmadd132/213/231..., AMD's older FMA4's vfmaddps and the like)
    if re.search(r"vfmadd(132|213|231)", fused):
        implied.append("+fma")
    if re.search(r"vfmadd(ps|pd|ss|sd)\b", fused):
        implied.append("+fma4")
    for feature, ty, operation, needles in _FEATURE_PROBES:
        code = assembly(ty, operation)
        if all(needle in code for needle in needles):
            implied.append("+" + feature)
    return ",".join(implied)


def _llvm_complaints(cpu: str, features: str) -> list[str]:
    """What LLVM prints on stderr while making a target machine for (cpu, features): it warns about
    an unknown CPU or feature and goes on with the host's defaults."""
    initialize()
    sys.stderr.flush()
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        return []        # nowhere to catch LLVM's words: it only warns, and goes on
    saved = os.dup(2)
    with capture:
        os.dup2(capture.fileno(), 2)
        try:
            llvm.Target.from_default_triple().create_target_machine(cpu=cpu, features=features)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    lines = sorted({line.strip() for line in text.splitlines() if "not a recognized" in line})
    return [line.split(" (ignoring")[0] for line in lines]


def _enabled(features: str) -> set[str]:
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def vector_bits(features: str | None = None) -> int:
    """Width in bits of the widest float vector register the features allow."""
    feats = _enabled(code_features() if features is None else features)
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
    feats = _enabled(code_features() if features is None else features)
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
