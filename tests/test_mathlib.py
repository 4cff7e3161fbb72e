"""codegen.mathlib emitters, JIT-compiled in a loop over an array, against numpy references.

Tolerances are the measured worst cases over the inputs below with a little headroom; the bounds measured
when this test was written are in each case's comment.
"""
from __future__ import annotations

import ctypes
import functools
import platform
import re

import numpy as np
import pytest
import llvmlite.binding as llvm
from llvmlite import ir

from codegen import mathlib, target
from codegen.jit import JitModule, optimize, parse_and_verify

EMITTERS = {
    "exp": mathlib.emit_exp,
    "log": mathlib.emit_log,
    "tanh": mathlib.emit_tanh,
    "sigmoid": mathlib.emit_sigmoid,
    "sqrt": mathlib.emit_sqrt,
}
DTYPES = {np.float32: ir.FloatType(), np.float64: ir.DoubleType()}


def _sigmoid_reference(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


REFERENCES = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "sigmoid": _sigmoid_reference, "sqrt": np.sqrt}


def build_unary_loop(module, name, emitter, element_type):
    """void name(T* noalias in, T* noalias out, i64 n): out[i] = emitter(in[i])."""
    ptr = ir.PointerType()
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, i64]), name=name)
    src, dst, n = fn.args
    for arg in (src, dst):
        arg.add_attribute("noalias")
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    builder = ir.IRBuilder(entry)
    builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(i64, "i")
    i.add_incoming(ir.Constant(i64, 0), entry)
    x = builder.load(builder.gep(src, [i], source_etype=element_type), typ=element_type)
    builder.store(emitter(builder, x), builder.gep(dst, [i], source_etype=element_type))
    i_next = builder.add(i, ir.Constant(i64, 1))
    i.add_incoming(i_next, loop)
    builder.cbranch(builder.icmp_signed("<", i_next, n), loop, done)
    builder.position_at_end(done)
    builder.ret_void()
    return fn


@functools.lru_cache(maxsize=None)
def compiled():
    """One module with a loop per (function, dtype); compiled once for the whole test file."""
    module = ir.Module(name="mathlib_test")
    for fname, emitter in EMITTERS.items():
        for dtype, element_type in DTYPES.items():
            build_unary_loop(module, f"{fname}_{np.dtype(dtype).name}", emitter, element_type)
    return JitModule(module)


def run(fname, x):
    jit = compiled()
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        jit.address(f"{fname}_{x.dtype.name}"))
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


def inputs(dtype):
    """Special values, tiny/huge magnitudes and a dense sweep over the interesting range."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, info.tiny, -info.tiny, info.smallest_subnormal,
               -info.smallest_subnormal, info.max, -info.max, info.eps, 1.0, -1.0, 0.5, 0.625, -0.625,
               2.0, 10.0, -10.0]
    special += [88.72283, 88.72284, 88.7228, 89.0, -87.3, -103.2, -103.97, -104.0, -110.0,
                709.78, 709.79, -745.0, -745.2]
    magnitudes = 10.0 ** rng.uniform(-45 if dtype == np.float32 else -320, 38 if dtype == np.float32 else 300,
                                     50_000)
    signs = rng.choice([-1.0, 1.0], size=magnitudes.size)
    sweep = np.linspace(-120.0, 120.0, 200_001)
    near_zero = np.linspace(-2.0, 2.0, 100_001)
    with np.errstate(over="ignore"):
        return np.concatenate([np.array(special), magnitudes * signs, sweep, near_zero]).astype(dtype)


def ulp_distance(a, b):
    """|a - b| in units in the last place of the format (sign-magnitude bits mapped to a monotone integer)."""
    ints = {np.float32: np.int32, np.float64: np.int64}[a.dtype.type]
    bits = a.dtype.itemsize * 8

    def ordered(v):
        i = v.view(ints).astype(np.int64)
        # NOTE: for f64 the subtraction below would overflow int64; work in Python ints via object arrays.
        if bits == 64:
            i = i.astype(object)
            return np.where(i < 0, -(2 ** 63) - i, i)
        return np.where(i < 0, -(2 ** 31) - i, i)

    return np.abs(ordered(a) - ordered(b)).astype(np.float64)


def reference(fname, x):
    """Correctly rounded-ish reference: float64 for f32 inputs, long double for f64 inputs."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    if fname == "sqrt":
        wide = x.dtype  # IEEE sqrt is correctly rounded; going through long double would round twice
    with np.errstate(all="ignore"):
        return REFERENCES[fname](x.astype(wide)).astype(x.dtype)


# (function, dtype) -> max ulp error allowed on finite reference values.
# Measured: f32 exp 1, log 1, tanh 1, sigmoid 2, sqrt 0; f64 exp 1, log 1, tanh 1, sigmoid 2, sqrt 0.
ULP_TOLERANCE = {
    ("exp", np.float32): 2, ("log", np.float32): 2, ("tanh", np.float32): 2, ("sigmoid", np.float32): 2,
    ("sqrt", np.float32): 0,
    ("exp", np.float64): 2, ("log", np.float64): 2, ("tanh", np.float64): 2, ("sigmoid", np.float64): 2,
    ("sqrt", np.float64): 0,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fname", list(EMITTERS))
def test_against_numpy(fname, dtype):
    x = inputs(dtype)
    got = run(fname, x)
    want = reference(fname, x)
    # Special values must match exactly, including NaN where numpy gives NaN and the sign of zeros/infs.
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{fname}: NaN mismatch")
    infinite = np.isinf(want)
    np.testing.assert_array_equal(got[infinite], want[infinite], err_msg=f"{fname}: inf mismatch")
    zero = want == 0
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]),
                                  err_msg=f"{fname}: sign of zero")
    finite = np.isfinite(want)
    ulps = ulp_distance(got[finite], want[finite])
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= ULP_TOLERANCE[fname, dtype], (
        f"{fname}({x[finite][worst]!r}) = {got[finite][worst]!r}, want {want[finite][worst]!r}: "
        f"{ulps[worst]} ulp")


@pytest.mark.parametrize("fname", ["tanh", "sigmoid"])
def test_tanh_sigmoid_abs_error_f32(fname):
    # Measured max abs error vs the float64 reference (unrounded): tanh 7.5e-8, sigmoid 8.9e-8.
    x = inputs(np.float32)
    x = x[np.isfinite(x)]
    got = run(fname, x).astype(np.float64)
    want = REFERENCES[fname](x.astype(np.float64))
    assert np.max(np.abs(got - want)) <= 2e-7


def test_special_values_exact():
    values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0], dtype=np.float32)
    for dtype in (np.float32, np.float64):
        x = values.astype(dtype)
        exp = run("exp", x)
        assert exp[0] == 1 and exp[1] == 1 and exp[2] == np.inf and exp[3] == 0 and np.isnan(exp[4])
        log = run("log", x)
        assert log[0] == -np.inf and log[1] == -np.inf and log[2] == np.inf
        assert np.isnan(log[3]) and np.isnan(log[4]) and np.isnan(log[5])
        tanh = run("tanh", x)
        assert tanh[0] == 0 and not np.signbit(tanh[0]) and tanh[1] == 0 and np.signbit(tanh[1])
        assert tanh[2] == 1 and tanh[3] == -1 and np.isnan(tanh[4])
        sigmoid = run("sigmoid", x)
        assert sigmoid[0] == 0.5 and sigmoid[2] == 1 and sigmoid[3] == 0 and np.isnan(sigmoid[4])
        # Saturation for large |x| is exact.
        big = np.array([20.0, -20.0, 1e30, -1e30], dtype=dtype)
        np.testing.assert_array_equal(run("tanh", big)[2:], [1, -1])
        np.testing.assert_array_equal(run("sigmoid", big)[2:], [1, 0])
        if dtype == np.float32:
            np.testing.assert_array_equal(run("tanh", big)[:2], [1, -1])


def test_exp_overflow_and_underflow_thresholds_f32():
    # exp(-103.972077) is half the smallest denormal: below it the result rounds to 0.
    x = np.array([88.72283, 88.72284, 89.0, 1000.0, -103.2, -103.98, -104.0, -1000.0], dtype=np.float32)
    got = run("exp", x)
    assert np.isfinite(got[0]) and got[0] > 3.4e38
    assert np.all(np.isinf(got[1:4]))
    assert 0 < got[4] < 1e-44  # a denormal
    assert np.all(got[5:] == 0)


def _loop_body_ir(fname, dtype_name):
    ir_text = compiled().optimized_ir
    match = re.search(rf"define [^\n]*@{fname}_{dtype_name}\(.*?\n}}\n", ir_text, re.S)
    assert match, f"no function {fname}_{dtype_name} in the optimized IR"
    return match.group(0)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("fname", list(EMITTERS))
def test_loops_vectorize_without_calls(fname, dtype_name):
    body = _loop_body_ir(fname, dtype_name)
    element = {"float32": "float", "float64": "double"}[dtype_name]
    assert re.search(rf"<\d+ x {element}>", body), f"{fname} {dtype_name} loop was not vectorized"
    calls = re.findall(r"call [^\n]*@([\w.]+)\(", body)
    libm = [c for c in calls if not c.startswith("llvm.")]
    assert not libm, f"{fname} loop calls {libm}"
    assert not any(re.match(r"llvm\.(exp|log|tanh)", c) for c in calls), calls


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="compiles for generic x86-64")
def test_portable_to_targets_without_fma():
    """For a baseline x86-64 (SSE2, no FMA) the code has no calls (llvm.fma would become fmaf calls) and the
    accuracy holds with unfused multiply-adds.  Such code runs on any x86-64 host, so it is run here."""
    module = ir.Module(name="mathlib_sse2")
    for fname, emitter in EMITTERS.items():
        for dtype, element_type in DTYPES.items():
            build_unary_loop(module, f"{fname}_{np.dtype(dtype).name}", emitter, element_type)

    def baseline():
        return target.target_machine(cpu="x86-64", features="")

    ref = parse_and_verify(module, baseline())
    optimize(ref, baseline())
    assembly = baseline().emit_assembly(ref)
    assert "vfmadd" not in assembly and "mulps" in assembly
    assert not re.search(r"\bcall", assembly), re.findall(r"call\w*\s+\S+", assembly)
    engine = llvm.create_mcjit_compiler(ref, baseline())
    engine.finalize_object()
    for dtype in (np.float32, np.float64):
        x = inputs(dtype)
        for fname in EMITTERS:
            out = np.empty_like(x)
            fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
                engine.get_function_address(f"{fname}_{np.dtype(dtype).name}"))
            fn(x.ctypes.data, out.ctypes.data, x.size)
            want = reference(fname, x)
            np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
            finite = np.isfinite(want)
            np.testing.assert_array_equal(out[np.isinf(want)], want[np.isinf(want)])
            # Measured: the same bounds as with FMA.
            assert ulp_distance(out[finite], want[finite]).max() <= ULP_TOLERANCE[fname, dtype], (fname, dtype)


def test_vector_operands():
    """The emitters also take vector values directly (for hand-vectorized kernels)."""
    vector = ir.VectorType(ir.FloatType(), 8)
    module = ir.Module(name="vector_math")
    ptr = ir.PointerType()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr]), name="vexp")
    builder = ir.IRBuilder(fn.append_basic_block())
    x = builder.load(fn.args[0], typ=vector, align=4)
    builder.store(mathlib.emit_sigmoid(builder, mathlib.emit_log(builder, mathlib.emit_exp(builder, x))),
                  fn.args[1], align=4)
    builder.ret_void()
    jit = JitModule(module)
    x = np.array([-3, -1, 0, 0.5, 1, 2, 5, 30], dtype=np.float32)
    out = np.empty_like(x)
    ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(jit.address("vexp"))(x.ctypes.data, out.ctypes.data)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_rejects_non_float_types():
    builder = ir.IRBuilder()
    with pytest.raises(TypeError, match="float, double"):
        mathlib.emit_exp(builder, ir.Constant(ir.IntType(32), 1))
