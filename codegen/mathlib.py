"""Scalar math emitters (exp, log, tanh, sigmoid, sqrt, fma) that LLVM's loop vectorizer can vectorize.

Why not `llvm.exp` / `llvm.log` / `llvm.tanh`: on vectors LLVM scalarizes them into one libm call per lane
(exp 0.76 G elements/s, tanh 0.08 G/s, measured on one core of the 2-core AMD EPYC reference machine;
a hand-written exp of this kind auto-vectorized to 8.7 G elements/s).  Every emitter here is built only
from instructions and intrinsics that have vector forms -- fmul/fadd/fdiv, `llvm.fmuladd`, `llvm.fabs`,
`llvm.copysign`, `llvm.sqrt`, integer shifts, bitcasts, compares and selects -- so a loop that
applies them vectorizes to the target's full width, and the emitted code contains no `call` to libm.

Each emitter takes an IRBuilder and a value of type `float`, `double`, or a vector of either (e.g.
`<16 x float>` inside a hand-vectorized kernel) and returns a value of the same type.  Constants and
polynomials are chosen by the element type.

Algorithms (all branch-free: every path is computed, selects pick the answer):
  exp   n = rint(x*log2 e) (by adding a shifter constant); r = x - n*ln2 by a two-constant Cody-Waite split
        with fma; e^r by a polynomial (Cephes expf's degree-7 form for f32, Taylor to degree 13 for f64,
        |r| <= ln2/2); 2^n from exponent bits, applied as two halves 2^(n>>1) * 2^(n - n>>1) so that
        overflow to inf and gradual underflow into denormals come out of the last multiply, rounded once.
  log   x = 2^k * m with m in [sqrt(1/2), sqrt 2) taken from the bits (subnormals scaled up first), f = m - 1;
        f32: Cephes logf, log(1+f) = f - f^2/2 + f^3 P(f) (degree 8, no division);
        f64: fdlibm, s = f/(2+f), log(1+f) = f - f^2/2 + s*(f^2/2 + R(s^2)); k*ln2 added as a hi/lo pair.
  tanh  |x| < 0.625: odd polynomial (f32) / rational (f64) from Cephes, accurate near 0 and keeps -0;
        otherwise 1 - 2/(e^(2|x|) + 1) with the sign copied back, which saturates to +-1 for large |x|.
  sigmoid  1/(1 + e^(-x)) for x >= 0 and e^x/(1 + e^x) for x < 0, with one exp(-|x|): nothing overflows,
        so it saturates to exactly 0 and 1 and stays accurate relative to tiny results.

NOTE: no fast-math flags are put on any instruction.  `nnan`/`ninf` would let LLVM delete the NaN and
infinity handling; `reassoc`/`contract`/`afn` would let it reorder the Cody-Waite reduction and the
polynomials, which is exactly the rounding these algorithms rely on; `arcp` would turn the divisions in
log/tanh/sigmoid into approximate reciprocals.  None is needed for vectorization (only reductions need
`reassoc`).

Measured accuracy (max over tests/test_mathlib.py's inputs, and for f32 also over every 97th bit pattern,
against numpy float64 references for f32 and long double references for f64):
  f32: exp 1 ulp, log 1 ulp, tanh 1 ulp, sigmoid 2 ulp (max abs error: tanh 7.5e-8, sigmoid 8.9e-8).
  f64: exp 1 ulp, log 1 ulp, tanh 1 ulp, sigmoid 2 ulp.  sqrt is correctly rounded.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from llvmlite import ir

__all__ = ["emit_exp", "emit_log", "emit_tanh", "emit_sigmoid", "emit_sqrt", "emit_fma", "emit_fabs",
           "emit_copysign"]


# --------------------------------------------------------------------------------------------------
# Per-type constants


@dataclass(frozen=True)
class _Format:
    int_bits: int           # width of the integer with the same size
    struct_code: str        # struct format of the float ('<f' / '<d')
    mantissa_bits: int      # explicit mantissa bits (23 / 52)
    bias: int               # exponent bias (127 / 1023)
    min_normal: float
    subnormal_scale_log2: int   # log multiplies subnormals by 2^this before splitting the bits
    exp_clamp_low: float    # below this exp(x) is 0 even with denormals; keeps 2^n's exponent in range
    exp_clamp_high: float   # above this exp(x) is inf
    ln2_hi: float           # Cody-Waite split for exp: n*ln2_hi exact for the n range in use
    ln2_lo: float
    exp_poly: tuple         # coefficients of P in e^r = 1 + r + r^2 P(r), highest degree first
    log_ln2_hi: float       # fdlibm's split for k*ln2 in log
    log_ln2_lo: float
    log_lg: tuple           # Lg1, Lg2, ... of fdlibm's log
    sqrt_half_bits: int     # bit pattern of sqrt(1/2) rounded, the low end of log's mantissa interval
    tanh_small: float       # below this |x|, tanh uses the small-argument polynomial


_F32 = _Format(
    int_bits=32, struct_code="<f", mantissa_bits=23, bias=127, min_normal=1.1754943508222875e-38,
    subnormal_scale_log2=25,
    # exp(-104) = 6.8e-46 < half the smallest denormal (7.0e-46): rounds to 0.  exp(89) > FLT_MAX.
    exp_clamp_low=-104.0, exp_clamp_high=89.0,
    # Cephes' split: ln2_hi has 9 significant bits, so n*ln2_hi and x - n*ln2_hi are exact; the fma then
    # rounds x - n*ln2 once.
    ln2_hi=0.693359375, ln2_lo=-2.121944400546905827679e-4,
    # Cephes expf (minimax on [-ln2/2, ln2/2]).
    exp_poly=(1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
              5.0000001201e-1),
    # Cephes logf's split of ln2 (its polynomial is _LOG_F32_POLY; Lg is unused for f32).
    log_ln2_hi=0.693359375, log_ln2_lo=-2.12194440e-4,
    log_lg=(),
    sqrt_half_bits=0x3F3504F3,
    tanh_small=0.625,
)

_F64 = _Format(
    int_bits=64, struct_code="<d", mantissa_bits=52, bias=1023, min_normal=2.2250738585072014e-308,
    subnormal_scale_log2=54,
    # exp(-746) < half the smallest denormal (4.9e-324 / 2): rounds to 0.  exp(710) > DBL_MAX.
    exp_clamp_low=-746.0, exp_clamp_high=710.0,
    # fdlibm's split: ln2_hi has 32 trailing zero bits, so n*ln2_hi is exact for |n| < 2^20.
    ln2_hi=6.93147180369123816490e-01, ln2_lo=1.90821492927058770002e-10,
    # Taylor 1/k! for k = 13..2: truncation error |r|^14/14! < 5e-18 on |r| <= ln2/2, below 1/40 ulp.
    exp_poly=tuple(1.0 / math.factorial(k) for k in range(13, 1, -1)),
    log_ln2_hi=6.93147180369123816490e-01, log_ln2_lo=1.90821492927058770002e-10,
    # fdlibm/musl log: Lg1..Lg7.
    log_lg=(6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
            2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
            1.479819860511658591e-01),
    sqrt_half_bits=0x3FE6A09E667F3BCD,
    tanh_small=0.625,
)

# Cephes logf: log(1+f) = f - f^2/2 + f^3 P(f), highest degree first.
_LOG_F32_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
                 -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
# Cephes tanhf, |x| < 0.625: tanh x = x + x^3 P(x^2), highest degree first.
_TANH_F32_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)
# Cephes tanh (double), |x| < 0.625: tanh x = x + x^3 P(x^2)/Q(x^2), Q monic.
_TANH_F64_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_F64_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


# --------------------------------------------------------------------------------------------------
# Type helpers: everything works elementwise on scalars and vectors alike


def _element_type(ty):
    return ty.element if isinstance(ty, ir.VectorType) else ty


def _format(ty) -> _Format:
    element = _element_type(ty)
    if isinstance(element, ir.FloatType):
        return _F32
    if isinstance(element, ir.DoubleType):
        return _F64
    raise TypeError(f"math emitters take float, double or vectors of them; got {ty}")


def _like(ty, element):
    """`element` (a scalar type) shaped like `ty` (scalar or vector)."""
    return ir.VectorType(element, ty.count) if isinstance(ty, ir.VectorType) else element


def _const(ty, value):
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


def _int_type(ty):
    return _like(ty, ir.IntType(_format(ty).int_bits))


def _intrinsic_suffix(ty) -> str:
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{_intrinsic_suffix(ty.element)}"
    if isinstance(ty, ir.FloatType):
        return "f32"
    if isinstance(ty, ir.DoubleType):
        return "f64"
    raise TypeError(f"no intrinsic suffix for {ty}")


def _call_intrinsic(builder, name, args):
    """Call the overloaded float intrinsic `name` on `args`, all of the same (scalar or vector) type."""
    ty = args[0].type
    full_name = f"{name}.{_intrinsic_suffix(ty)}"
    module = builder.module
    fn = module.globals.get(full_name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ty, [ty] * len(args)), name=full_name)
    return builder.call(fn, args)


def _mul_add(builder, a, b, c):
    """a*b + c, fused where the target has FMA (`llvm.fmuladd`).

    NOTE: not `llvm.fma`, which on a target without FMA (SSE-only x86-64) becomes a libm call per lane.
    Every use below is accurate unfused too: the Cody-Waite high parts have enough trailing zero bits that
    n*ln2_hi is exact, and the polynomials were designed for plain multiply-add.
    """
    return _call_intrinsic(builder, "llvm.fmuladd", [a, b, c])


def _horner(builder, x, coefficients):
    """c0*x^(n-1) + ... + c_(n-1), highest degree first, with a multiply-add at each step."""
    ty = x.type
    acc = _const(ty, coefficients[0])
    for c in coefficients[1:]:
        acc = _mul_add(builder, acc, x, _const(ty, c))
    return acc


def _power_of_two(builder, n_int, ty):
    """2^n as a float of type `ty`, from an integer n whose biased exponent is in the normal range."""
    fmt = _format(ty)
    ity = n_int.type
    biased = builder.add(n_int, _const(ity, fmt.bias))
    return builder.bitcast(builder.shl(biased, _const(ity, fmt.mantissa_bits)), ty)


# --------------------------------------------------------------------------------------------------
# Public emitters


def emit_fma(builder, a, b, c):
    """a*b + c with one rounding (`llvm.fma`): one instruction on FMA targets (x86-64 since Haswell, aarch64),
    but a libm call on targets without FMA, where `_mul_add`'s `llvm.fmuladd` is the portable choice."""
    return _call_intrinsic(builder, "llvm.fma", [a, b, c])


def emit_sqrt(builder, x):
    """sqrt(x) via `llvm.sqrt`, which lowers to sqrtss/vsqrtps, not a libm call; sqrt(-x) = nan."""
    return _call_intrinsic(builder, "llvm.sqrt", [x])


def emit_fabs(builder, x):
    return _call_intrinsic(builder, "llvm.fabs", [x])


def emit_copysign(builder, magnitude, sign):
    return _call_intrinsic(builder, "llvm.copysign", [magnitude, sign])


def emit_exp(builder, x):
    """e^x; exp(nan) = nan, exp(inf) = inf, exp(-inf) = 0, overflow to inf, gradual underflow to 0."""
    ty = x.type
    fmt = _format(ty)
    ity = _int_type(ty)
    # Clamp with ordered compares: a NaN compares false and passes through untouched.
    high = _const(ty, fmt.exp_clamp_high)
    low = _const(ty, fmt.exp_clamp_low)
    xc = builder.select(builder.fcmp_ordered(">", x, high), high, x)
    xc = builder.select(builder.fcmp_ordered("<", xc, low), low, xc)

    # n = rint(x*log2 e) by the shifter trick: adding 1.5*2^mantissa_bits rounds to an integer (round to
    # nearest even, as rint) and leaves n in the low bits of the sum, so 2^n comes from integer ops on those
    # bits.  This avoids fptosi, whose result is poison for NaN, and is cheaper than rint + convert.
    shifter = 1.5 * 2.0 ** fmt.mantissa_bits
    shifted = _mul_add(builder, xc, _const(ty, 1.0 / math.log(2.0)), _const(ty, shifter))
    n = builder.fsub(shifted, _const(ty, shifter))
    r = _mul_add(builder, n, _const(ty, -fmt.ln2_hi), xc)
    r = _mul_add(builder, n, _const(ty, -fmt.ln2_lo), r)

    p = _horner(builder, r, fmt.exp_poly)
    p = _mul_add(builder, p, builder.fmul(r, r), r)
    p = builder.fadd(p, _const(ty, 1.0))

    # For a NaN input the bits below are garbage, but p is NaN and so is the product.
    shifter_bits = int.from_bytes(struct.pack(fmt.struct_code, shifter), "little")
    n_int = builder.sub(builder.bitcast(shifted, ity), _const(ity, shifter_bits))
    # 2^n in two halves: n spans about [-150, 129] (f32), outside the normal exponent range of one float,
    # and this way overflow and gradual underflow are rounded once, by the last multiply.
    n_half = builder.ashr(n_int, _const(ity, 1))
    n_rest = builder.sub(n_int, n_half)
    result = builder.fmul(p, _power_of_two(builder, n_half, ty))
    return builder.fmul(result, _power_of_two(builder, n_rest, ty))


def _log_f32_kernel(builder, f, dk):
    """Cephes logf: log(1+f) = f - f^2/2 + f^3 P(f) on f in [sqrt(1/2)-1, sqrt(2)-1), plus dk*ln2.

    NOTE: chosen over musl's f/(2+f) form for f32 because it needs no division: same 1 ulp, about 1.3x the
    throughput with 16-lane vectors.
    """
    ty = f.type
    z = builder.fmul(f, f)
    y = builder.fmul(builder.fmul(_horner(builder, f, _LOG_F32_POLY), f), z)
    y = _mul_add(builder, dk, _const(ty, _F32.log_ln2_lo), y)
    y = _mul_add(builder, z, _const(ty, -0.5), y)
    result = builder.fadd(f, y)
    return _mul_add(builder, dk, _const(ty, _F32.log_ln2_hi), result)


def _log_f64_kernel(builder, f, dk):
    """fdlibm log: s = f/(2+f), log(1+f) = f - f^2/2 + s*(f^2/2 + R(s^2)), plus dk*ln2 as a hi/lo pair."""
    ty = f.type
    hfsq = builder.fmul(_const(ty, 0.5), builder.fmul(f, f))
    s = builder.fdiv(f, builder.fadd(_const(ty, 2.0), f))
    z = builder.fmul(s, s)
    w = builder.fmul(z, z)
    lg = _F64.log_lg
    # R = z*(Lg1 + w*(Lg3 + w*(Lg5 + w*Lg7))) + w*(Lg2 + w*(Lg4 + w*Lg6)), fdlibm's even/odd split.
    odd = _horner(builder, w, lg[0::2][::-1])
    even = _horner(builder, w, lg[1::2][::-1])
    big_r = builder.fadd(builder.fmul(z, odd), builder.fmul(w, even))
    # s*(hfsq+R) + dk*ln2_lo - hfsq + f + dk*ln2_hi, in this order (small terms first).
    result = builder.fmul(s, builder.fadd(hfsq, big_r))
    result = builder.fadd(result, builder.fmul(dk, _const(ty, _F64.log_ln2_lo)))
    result = builder.fsub(result, hfsq)
    result = builder.fadd(result, f)
    return builder.fadd(result, builder.fmul(dk, _const(ty, _F64.log_ln2_hi)))


def emit_log(builder, x):
    """Natural log; log(+-0) = -inf, log(x<0) = nan, log(inf) = inf, log(nan) = nan, subnormals exact."""
    ty = x.type
    fmt = _format(ty)
    ity = _int_type(ty)

    # Subnormals: scale into the normal range first (the compare is also true for x <= 0; those lanes are
    # replaced by the special-value selects at the end).
    is_small = builder.fcmp_ordered("<", x, _const(ty, fmt.min_normal))
    scaled = builder.fmul(x, _const(ty, float(2 ** fmt.subnormal_scale_log2)))
    xs = builder.select(is_small, scaled, x)
    k_adjust = builder.select(is_small, _const(ity, -fmt.subnormal_scale_log2), _const(ity, 0))

    # x = 2^k * m with m in [sqrt(1/2), sqrt(2)): shift the bits so that the exponent field rolls over at
    # sqrt(2) instead of 2, read k from it, then put m back on the exponent of sqrt(1/2).
    one_bits = fmt.bias << fmt.mantissa_bits
    bits = builder.bitcast(xs, ity)
    bits = builder.add(bits, _const(ity, one_bits - fmt.sqrt_half_bits))
    k = builder.sub(builder.ashr(bits, _const(ity, fmt.mantissa_bits)), _const(ity, fmt.bias))
    k = builder.add(k, k_adjust)
    mantissa_mask = (1 << fmt.mantissa_bits) - 1
    bits = builder.add(builder.and_(bits, _const(ity, mantissa_mask)), _const(ity, fmt.sqrt_half_bits))
    m = builder.bitcast(bits, ty)

    f = builder.fsub(m, _const(ty, 1.0))
    dk = builder.sitofp(k, ty)
    if fmt is _F32:
        result = _log_f32_kernel(builder, f, dk)
    else:
        result = _log_f64_kernel(builder, f, dk)

    inf = _const(ty, math.inf)
    result = builder.select(builder.fcmp_ordered("==", x, inf), inf, result)
    result = builder.select(builder.fcmp_ordered("==", x, _const(ty, 0.0)), _const(ty, -math.inf), result)
    # Unordered-or-less: true for negative x and for NaN; hand back a NaN (the input itself when it is one).
    is_nan = builder.fcmp_unordered("uno", x, x)
    nan = builder.select(is_nan, x, _const(ty, math.nan))
    return builder.select(builder.fcmp_unordered("<", x, _const(ty, 0.0)), nan, result)


def emit_tanh(builder, x):
    """tanh x; exactly +-1 for large |x|, -0 stays -0, tanh(+-inf) = +-1, tanh(nan) = nan."""
    ty = x.type
    fmt = _format(ty)
    one = _const(ty, 1.0)
    ax = emit_fabs(builder, x)

    # Both paths work on |x|; the sign is copied back at the end (tanh is odd), which also keeps -0.
    # Small |x|: odd series, no cancellation near 0.
    z = builder.fmul(x, x)
    if fmt is _F32:
        small = builder.fmul(_horner(builder, z, _TANH_F32_POLY), z)
    else:
        p = _horner(builder, z, _TANH_F64_P)
        q = _horner(builder, z, (1.0,) + _TANH_F64_Q)
        small = builder.fdiv(builder.fmul(z, p), q)
    small = _mul_add(builder, small, ax, ax)

    # Large |x|: 1 - 2/(e^(2|x|) + 1); e^(2|x|) = inf gives exactly 1.
    e = emit_exp(builder, builder.fadd(ax, ax))
    large = builder.fsub(one, builder.fdiv(_const(ty, 2.0), builder.fadd(e, one)))

    # Ordered compare: NaN takes the large path, where exp(NaN) propagates.
    use_small = builder.fcmp_ordered("<", ax, _const(ty, fmt.tanh_small))
    return emit_copysign(builder, builder.select(use_small, small, large), x)


def emit_sigmoid(builder, x):
    """1/(1 + e^(-x)), as e/(1 + e) with e = e^x for x < 0: e^(-|x|) never overflows, so the result keeps its
    relative accuracy down to the denormals (x -> -inf gives 0), x -> +inf gives 1, nan gives nan."""
    ty = x.type
    one = _const(ty, 1.0)
    e = emit_exp(builder, builder.fneg(emit_fabs(builder, x)))
    numerator = builder.select(builder.fcmp_ordered("<", x, _const(ty, 0.0)), e, one)
    return builder.fdiv(numerator, builder.fadd(one, e))
