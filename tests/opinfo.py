"""The OpInfo-style table that drives tests/test_ops.py (JAX's `OpRecord` feeding `testOpAgainstNumpy`).

One `OpCase` = one small graph around one primitive: its builder (arg nodes -> output node, or a dict of
named outputs), its input types (the batch dimension written `None`), an input generator and a tolerance.
A new op gets its tests -- compiled vs reference at fusion levels 0 and 1 and batch sizes 1, 3, 17,
gradient vs finite differences, compiled backward vs interpreted backward -- by adding entries here.

Also the shared helpers of the ir/codegen tests: compiled runners cached by graph text (compiling costs
50-200 ms, running microseconds), a comparison that knows NaN, infinities and ulps, gradient graphs.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

import codegen.lower  # noqa: F401  (fills in REGISTRY[op].lowering)
import ir
from codegen.compiler import CompileOptions, compile_graph, optimize_graph
from codegen.runtime import CompiledRunner
from ir import build as B
from ir.fusion import fuse
from ir.graph import FLOAT_DTYPES, Graph
from ir.ops import np_dtype

N = None                 # the batch dimension in input shapes
BATCHES = (1, 3, 17)     # one compiled function serves them all: the batch size is a runtime argument
ALL_DTYPES = ("f32", "f64", "i32", "u32", "bool")
T = "T"                  # dtype placeholder in OpCase templates, replaced by `expand`


# ----------------------------------------------------------------------------------------------
# Compiled runners, cached per graph structure
# ----------------------------------------------------------------------------------------------

_RUNNERS: dict = {}
_BY_KERNELS: dict = {}


def compiled_runner(graph: Graph, level: int = 1, reuse_memory: bool = True,
                    passes: tuple | None = None) -> CompiledRunner:
    """A runner for `graph`, compiled once per (graph text, options) in this process.

    `passes=None` runs the default `ir.passes` pipeline, as `fit` does; `passes=()` lowers the graph as
    traced, so that each op's own lowering runs (the pipeline would fold a static `iota`, drop
    `stop_gradient`, turn a static `dim_size` into a constant).

    NOTE: the printed text identifies the structure completely (array constants print as the digest of
    their bytes), so two graphs that print alike compile to the same code.
    """
    key = (ir.print_graph(graph), level, reuse_memory, passes)
    runner = _RUNNERS.get(key)
    if runner is None:
        options = CompileOptions(fusion_level=level, reuse_memory=reuse_memory, passes=passes)
        # Fusion levels 0 and 1 often partition a one-op graph alike: then the code is the same and
        # is compiled once (the key is the kernel-delimited text, which lowering is a function of).
        kernels = (fuse(optimize_graph(graph, options), level).text(), reuse_memory)
        compiled = _BY_KERNELS.get(kernels)
        if compiled is None:
            compiled = _BY_KERNELS[kernels] = compile_graph(graph, options)
        runner = _RUNNERS[key] = CompiledRunner(graph, {}, options, compiled=compiled)
    return runner


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable floats between a and b (same float dtype; -0 and +0 are 0 apart)."""
    bits = {np.dtype(np.float32): (np.int32, 0x7FFFFFFF),
            np.dtype(np.float64): (np.int64, 0x7FFFFFFFFFFFFFFF)}
    itype, mask = bits[a.dtype]

    def ordered(x):
        i = np.ascontiguousarray(x).view(itype).astype(np.int64)
        return [int(v) if v >= 0 else -(int(v) & mask) for v in i.reshape(-1)]
    return np.array([abs(p - q) for p, q in zip(ordered(a), ordered(b))], dtype=object).reshape(a.shape)


def assert_matches(actual, expected, *, rtol: float = 0.0, atol: float = 0.0, ulp: int | None = None,
                   what: str = "") -> None:
    """`actual` equals `expected` in shape and dtype; integers and booleans exactly; floats with NaN at
    the same places, the same infinities, and finite values within `ulp` ulps or rtol/atol."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != reference {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != reference {expected.dtype}"
    if expected.dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if (nan_a != nan_e).any():
        where = np.argwhere(nan_a != nan_e)[:5].tolist()
        raise AssertionError(f"{what}: NaN at different places, e.g. {where}: compiled "
                             f"{actual[nan_a != nan_e][:5]}, reference {expected[nan_a != nan_e][:5]}")
    inf = (np.isinf(actual) | np.isinf(expected)) & ~nan_e
    if (actual[inf] != expected[inf]).any():
        raise AssertionError(f"{what}: infinities differ: compiled {actual[inf]}, reference {expected[inf]}")
    finite = ~nan_e & ~inf
    a, e = actual[finite], expected[finite]
    if ulp is not None:
        dist = ulp_distance(a, e)
        bad = (dist > ulp) & (np.abs(a.astype(np.float64) - e) > atol)
        if bad.any():
            raise AssertionError(f"{what}: {int(bad.sum())} values more than {ulp} ulp (and {atol} abs) "
                                 f"off, worst {max(dist[bad])} ulp: compiled {a[bad][:5]}, reference "
                                 f"{e[bad][:5]}")
        return
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what)


# ----------------------------------------------------------------------------------------------
# Input generators: gen(rng, [(concrete shape, dtype), ...]) -> [array, ...]
# ----------------------------------------------------------------------------------------------

def each(fn):
    """A generator applying fn(rng, shape, dtype) to every input."""
    def gen(rng, specs):
        return [fn(rng, shape, dtype) for shape, dtype in specs]
    gen.__name__ = fn.__name__
    return gen


def _as(array, dtype):
    return np.asarray(array).astype(np_dtype(dtype))


def standard(rng, shape, dtype):
    if dtype in FLOAT_DTYPES:
        return _as(rng.normal(0.0, 2.0, shape), dtype)
    if dtype == "i32":
        return _as(rng.integers(-100, 100, shape), dtype)
    if dtype == "u32":
        return _as(rng.integers(0, 200, shape), dtype)
    return rng.random(shape) < 0.5


def unit(rng, shape, dtype):
    return _as(rng.normal(0.0, 1.0, shape), dtype) if dtype in FLOAT_DTYPES else standard(rng, shape, dtype)


def positive(rng, shape, dtype):
    """Away from 0 on the positive side (log, sqrt and their gradients)."""
    return _as(rng.uniform(0.5, 4.0, shape), dtype)


def nonzero(rng, shape, dtype):
    """|x| >= 0.25 (divisors, abs's kink); integers in +-[1, 9]."""
    sign = np.where(rng.random(shape) < 0.5, -1, 1)
    if dtype in FLOAT_DTYPES:
        return _as(sign * rng.uniform(0.25, 3.0, shape), dtype)
    if dtype == "u32":
        return _as(rng.integers(1, 10, shape), dtype)
    return _as(sign * rng.integers(1, 10, shape), dtype)


def full_range(rng, shape, dtype):
    """Integers over their whole range (unsigned compares, wrapping casts); floats over +-1e3."""
    if dtype == "i32":
        x = rng.integers(-2**31, 2**31, shape, dtype=np.int64)
        return _as(x, dtype)
    if dtype == "u32":
        return _as(rng.integers(0, 2**32, shape, dtype=np.uint64), dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return _as(rng.normal(0.0, 1e3, shape), dtype)


def distinct(rng, shape, dtype):
    """All elements distinct (no ties for reduce_max / argmax and their gradients)."""
    size = int(np.prod(shape, dtype=np.int64))
    values = rng.permutation(size).reshape(shape)
    if dtype in FLOAT_DTYPES:
        return _as(values * 0.37 - size * 0.15 + rng.uniform(0, 0.1, shape), dtype)
    if dtype == "u32":
        return _as(values.astype(np.uint64) * 1234567 + 2**31 - 1000, dtype)   # straddles 2^31
    return _as(values - size // 2, dtype)


def few_values(rng, shape, dtype):
    """Many ties (argmax picks the first, eq/ge/le see equality)."""
    if dtype in FLOAT_DTYPES:
        return _as(rng.integers(-2, 2, shape) * 0.5, dtype)
    if dtype == "u32":
        return _as(np.array([0, 1, 2**31, 2**32 - 1], np.uint32)[rng.integers(0, 4, shape)], dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return _as(rng.integers(-2, 2, shape), dtype)


SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0])


def with_specials(rng, shape, dtype):
    """Standard values with a third of them NaN, +-inf, +-0 or +-1."""
    x = standard(rng, shape, dtype)
    if dtype in FLOAT_DTYPES:
        pick = rng.random(shape) < 0.35
        x = np.where(pick, SPECIALS[rng.integers(0, len(SPECIALS), shape)], x).astype(x.dtype)
    return x


def away_from_ties(rng, specs):
    """Two operands that differ by at least 0.25 everywhere (max/min gradients are defined)."""
    (shape, dtype), (shape_b, _) = specs
    assert shape == shape_b
    a = standard(rng, shape, dtype)
    return [a, (a + nonzero(rng, shape, dtype)).astype(a.dtype)]


def comparable(rng, specs):
    """Two operands equal at ~30% of the places, with NaN/inf/0 sprinkled in for floats."""
    (shape, dtype), _ = specs
    gen = with_specials if dtype in FLOAT_DTYPES else (full_range if dtype == "u32" else standard)
    a, b = gen(rng, shape, dtype), gen(rng, shape, dtype)
    b = np.where(rng.random(shape) < 0.3, a, b).astype(a.dtype)
    return [a, b]


def select_inputs(rng, specs):
    (cond_shape, _), (shape, dtype), (shape_b, dtype_b) = specs
    return [rng.random(cond_shape) < 0.5, standard(rng, shape, dtype), standard(rng, shape_b, dtype_b)]


def seed_input(rng, specs):
    return [np.uint32(rng.integers(0, 2**32))] + [standard(rng, s, d) for s, d in specs[1:]]


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpCase:
    op: str                       # the registry op this case exercises
    name: str                     # unique id
    build: Callable               # (*arg nodes) -> node | {output name: node}
    inputs: tuple                 # ((shape, dtype), ...), shape with None for the batch dimension
    gen: Callable = each(standard)
    rtol: float = 1e-6
    atol: float = 0.0
    ulp: int | None = None        # compare finite floats in ulps instead of rtol/atol
    grad: bool = False            # differentiable: check gradients (f32 cases)
    fd: bool = True               # ... by finite differences too (off for large inputs)
    grad_eps: float = 1e-6
    grad_rtol: float = 1e-5
    grad_atol: float = 1e-6


def expand(dtypes, op, name, build, inputs, **kw) -> list:
    """One case per dtype, substituting T in the input types; gradients only for f32."""
    out = []
    for dtype in dtypes:
        types = tuple((shape, dtype if d == T else d) for shape, d in inputs)
        extra = dict(kw)
        if dtype != "f32":
            extra["grad"] = False
        out.append(OpCase(op, f"{name}-{dtype}", build, types, **extra))
    return out


FLOATS = ("f32", "f64")
NUMERIC = ("f32", "f64", "i32", "u32")
X34 = ((N, 3, 4), T)


def _case_list() -> list:
    cases: list = []
    add = cases.extend

    # -- elementwise binary
    for op, fn in [("add", B.add), ("sub", B.sub), ("mul", B.mul)]:
        add(expand(NUMERIC, op, op, fn, (X34, X34), grad=True))
    add(expand(NUMERIC, "div", "div", B.div, (X34, X34),
               gen=lambda rng, specs: [standard(rng, *specs[0]), nonzero(rng, *specs[1])], grad=True))
    # integer division by 0 gives 0 and i32's minimum / -1 wraps (the hardware's divide faults)
    add(expand(("i32", "u32"), "div", "div_by_zero_and_overflow", B.div, (X34, X34),
               gen=lambda rng, specs: [np.where(rng.random(specs[0][0]) < 0.4,
                                                few_values(rng, *specs[0]),
                                                full_range(rng, *specs[0])).astype(
                                           np_dtype(specs[0][1])),
                                       few_values(rng, *specs[1])]))
    for op, fn in [("max", B.maximum), ("min", B.minimum)]:
        add(expand(NUMERIC, op, op, fn, (X34, X34), gen=away_from_ties, grad=True))
        add(expand(("i32", "u32"), op, f"{op}_full_range", fn, (X34, X34), gen=each(full_range)))
        add(expand(FLOATS, op, f"{op}_nan", fn, (X34, X34), gen=each(with_specials)))

    # -- elementwise unary
    add(expand(FLOATS, "exp", "exp", B.exp, (X34,), gen=each(standard), ulp=4, grad=True))
    add(expand(FLOATS, "log", "log", B.log, (X34,), gen=each(positive), ulp=4, grad=True))
    add(expand(FLOATS, "tanh", "tanh", B.tanh, (X34,), ulp=4, atol=1e-6, grad=True))
    add(expand(FLOATS, "sqrt", "sqrt", B.sqrt, (X34,), gen=each(positive), ulp=0, grad=True))
    # codegen/mathlib is polynomial: <= 4 ulp for exp and log, 1e-6 absolute for tanh; sqrt is exact
    for op, fn, tol in [("exp", B.exp, dict(ulp=4)), ("log", B.log, dict(ulp=4)),
                        ("tanh", B.tanh, dict(ulp=4, atol=1e-6)), ("sqrt", B.sqrt, dict(ulp=0))]:
        add(expand(FLOATS, op, f"{op}_specials", fn, (X34,), gen=each(with_specials), **tol))
    add(expand(NUMERIC, "neg", "neg", B.neg, (X34,), grad=True))
    add(expand(NUMERIC, "abs", "abs", B.abs, (X34,), gen=each(nonzero), grad=True))
    add(expand(("i32", "u32"), "abs", "abs_full_range", B.abs, (X34,), gen=each(full_range)))
    add(expand(FLOATS, "abs", "abs_specials", B.abs, (X34,), gen=each(with_specials)))
    # NOTE: finite differences see through stop_gradient; test_ops checks its gradient analytically.
    add(expand(FLOATS + ("i32",), "stop_gradient", "stop_gradient",
               lambda x: B.mul(B.stop_gradient(x), x), (X34,), grad=True, fd=False))

    # -- comparisons (NaN: false except ne; u32 compares unsigned)
    for op in ("gt", "ge", "lt", "le", "eq", "ne"):
        fn = getattr(B, op)
        add(expand(ALL_DTYPES, op, op, fn, (X34, X34), gen=comparable))

    # -- select
    add(expand(ALL_DTYPES, "select", "select", B.select, (((N, 3, 4), "bool"), X34, X34),
               gen=select_inputs, grad=True))
    add(expand(FLOATS, "select", "select_bcast",
               lambda c, a, b: B.select(c, a, b), (((N, 1), "bool"), ((4,), T), ((N, 4), T)),
               gen=select_inputs, grad=True))

    # -- casts: every ordered pair of distinct dtypes, one graph per source dtype
    def casts(targets):
        return lambda x: {f"to_{d}": B.cast(x, d) for d in targets if d != x.dtype}

    def cast_source(rng, specs):
        ((shape, dtype),) = specs
        if dtype in FLOAT_DTYPES:
            # non-negative (float -> u32 of a negative is undefined) with exact integers, halves, zeros
            x = rng.uniform(0, 300, shape)
            kind = rng.integers(0, 4, shape)
            x = np.where(kind == 1, np.round(x), np.where(kind == 2, np.floor(x) + 0.5, x))
            x = np.where(kind == 3, rng.choice([0.0, -0.0, 1.0, 2.0**31 - 128], shape), x)
            return [_as(x, dtype)]
        if dtype in ("i32", "u32"):
            x = full_range(rng, shape, dtype)
            return [np.where(rng.random(shape) < 0.3, few_values(rng, shape, dtype), x).astype(x.dtype)]
        return [rng.random(shape) < 0.5]

    for src in ALL_DTYPES:
        add(expand((src,), "cast", "cast_all", casts(ALL_DTYPES), (X34,), gen=cast_source))
    # negative floats (to the signed and float dtypes) and NaN / inf (to float and bool)
    add(expand(FLOATS, "cast", "cast_signed", casts(("f32", "f64", "i32", "bool")), (X34,),
               gen=each(lambda rng, s, d: _as(rng.uniform(-3e4, 3e4, s), d))))
    add(expand(FLOATS, "cast", "cast_to_u32_large", casts(("u32",)), (X34,),
               gen=each(lambda rng, s, d: _as(rng.uniform(0, 2.0**32 - 512, s), d))))
    add(expand(FLOATS, "cast", "cast_specials", casts(("f32", "f64", "bool")), (X34,),
               gen=each(with_specials)))
    # to integers, saturating: NaN gives 0, +-inf and values past the range the nearest end
    add(expand(FLOATS, "cast", "cast_to_int_saturating", casts(("i32", "u32")), (X34,),
               gen=each(lambda rng, s, d: _as(np.where(
                   rng.random(s) < 0.5, SPECIALS[rng.integers(0, len(SPECIALS), s)],
                   rng.normal(0, 1e10, s)), d))))
    add(expand(("f64",), "cast", "cast_f64_overflow", casts(("f32",)), (X34,),
               gen=each(lambda rng, s, d: _as(rng.normal(0, 1e39, s), d))))
    add(expand(("f32",), "cast", "cast_roundtrip",
               lambda x: B.cast(B.cast(x, "f64" if x.dtype == "f32" else "f32"), x.dtype), (X34,),
               grad=True, grad_eps=1e-3, grad_rtol=1e-3, grad_atol=1e-4))

    # -- reductions over each axis incl. the batch axis, with and without keepdims
    def reductions(fn, spec):
        return lambda x: {"axes" + "".join(map(str, axes)) + ("k" if keep else ""): fn(x, axes, keep)
                          for axes, keep in spec}

    full = [((0,), False), ((0,), True), ((1,), False), ((2,), True), ((1, 2), False),
            ((0, 2), True), ((0, 1, 2), False)]
    some = [((0,), False), ((2,), True), ((0, 1, 2), False)]
    two = [((0,), False), ((1,), True), ((0, 1), False)]
    red_tol = dict(rtol=1e-5, atol=1e-4)
    for op, fn, gen in [("reduce_sum", B.reduce_sum, each(standard)),
                        ("reduce_mean", B.reduce_mean, each(standard)),
                        ("reduce_max", B.reduce_max, each(distinct))]:
        add(expand(FLOATS, op, op, reductions(fn, full), (X34,), gen=gen, grad=True, **red_tol))
        add(expand(("i32", "u32"), op, op, reductions(fn, some), (X34,), gen=gen))
        add(expand(("f32",), op, f"{op}_2d", reductions(fn, two), (((N, 37), T),), gen=gen, grad=True,
                   **red_tol))
        add(expand(("f32",), op, f"{op}_static", reductions(fn, two), (((5, 7), T),), gen=gen,
                   grad=True, **red_tol))
        add(expand(("f32",), op, f"{op}_specials", reductions(fn, some[:2]), (X34,),
                   gen=each(with_specials), **red_tol))
    add(expand(("i32", "u32"), "reduce_max", "reduce_max_full_range", reductions(B.reduce_max, some),
               (X34,), gen=each(full_range)))
    # sums over the batch of 17 rows between 2^31 and 2^32: an unsigned division is needed
    add(expand(("u32",), "reduce_mean", "reduce_mean_large", reductions(B.reduce_mean, some[:2]),
               (X34,), gen=each(lambda rng, s, d: _as(rng.integers(2**27, 2**27 + 2**25, s), d))))
    add(expand(("i32",), "reduce_sum", "reduce_sum_wrapping", reductions(B.reduce_sum, some[:2]),
               (X34,), gen=each(full_range)))

    # -- argmax: the first maximum; NaN counts as the maximum (numpy)
    def argmaxes(x):
        return {f"axis{a}": B.argmax(x, a) for a in range(x.type.rank)}
    add(expand(NUMERIC, "argmax", "argmax", argmaxes, (X34,), gen=each(distinct)))
    add(expand(NUMERIC + ("bool",), "argmax", "argmax_ties", argmaxes, (X34,), gen=each(few_values)))
    add(expand(FLOATS, "argmax", "argmax_nan", argmaxes, (X34,), gen=each(with_specials)))
    add(expand(("u32",), "argmax", "argmax_full_range", argmaxes, (X34,), gen=each(full_range)))

    # -- injective ops
    add(expand(("f32", "i32", "bool"), "reshape", "reshape",
               lambda x: {"flat": B.reshape(x, (N, 12)), "r26": B.reshape(x, (N, 2, 6)),
                          "r43": B.reshape(x, (N, 4, 3)), "r2111": B.reshape(x, (N, 2, 1, 6, 1))},
               (X34,)))
    add(expand(("f32",), "reshape", "reshape_grad",
               lambda x: B.mul(B.reshape(x, (N, 2, 6)), B.reshape(B.exp(x), (N, 2, 6))), (X34,),
               grad=True, rtol=1e-5))
    add(expand(("f32",), "reshape", "reshape_unflatten", lambda x: B.reshape(x, (N, 3, 4)),
               (((N, 12), T),), grad=True))
    add(expand(("f32",), "reshape", "reshape_static",
               lambda x: {"r38": B.reshape(x, (3, 8)), "r234": B.reshape(x, (2, 3, 4)),
                          "flat": B.reshape(x, (24,))}, (((6, 4), T),), grad=True))
    add(expand(("f32", "bool"), "transpose", "transpose",
               lambda x: B.transpose(x, (0, 2, 1)), (X34,), grad=True))
    add(expand(("f32", "i32"), "transpose", "transpose_static",
               lambda x: {"p201": B.transpose(x, (2, 0, 1)), "p120": B.transpose(x, (1, 2, 0)),
                          "p021": B.transpose(x, (0, 2, 1))}, (((3, 4, 5), T),), grad=True))
    add(expand(("f32",), "transpose", "transpose_4d",
               lambda x: B.transpose(x, (0, 3, 1, 2)), (((N, 2, 3, 4), T),), grad=True))

    def bcast(shape):
        return lambda x, y: B.add(B.broadcast(x, shape), y)
    bcases = [("scalar", (), (N, 3)), ("row", (4,), (N, 4)), ("column", (N, 1), (N, 4)),
              ("row1", (1, 4), (N, 4)), ("mid", (N, 1, 4), (N, 3, 4)), ("static", (3, 1), (2, 3, 4)),
              ("new_axes", (4,), (N, 2, 3, 4)), ("batch_to_static", (1, 1), (5, 3))]
    for label, src, dst in bcases:
        add(expand(("f32", "i32"), "broadcast", f"broadcast_{label}", bcast(dst), ((src, T), (dst, T)),
                   grad=True))
    add(expand(("bool",), "broadcast", "broadcast_bool",
               lambda x, y: {"a": B.broadcast(x, (N, 3, 4)), "b": B.broadcast(y, (N, 2, 4))},
               (((N, 1, 4), T), ((4,), T))))

    # -- matmul, all three modes, batched leading dims, 3-D operands, gemm tails and blocking
    mm = dict(rtol=1e-5, atol=1e-5, grad=True, gen=each(unit))
    add(expand(FLOATS, "matmul", "matmul", B.matmul, (((N, 5), T), ((5, 6), T)), **mm))
    add(expand(FLOATS, "matmul", "matmul_3d", B.matmul, (((N, 3, 5), T), ((5, 6), T)), **mm))
    add(expand(FLOATS, "matmul", "matmul_tb", lambda a, b: B.matmul(a, b, transpose_b=True),
               (((N, 5), T), ((6, 5), T)), **mm))
    add(expand(FLOATS, "matmul", "matmul_3d_tb", lambda a, b: B.matmul(a, b, transpose_b=True),
               (((N, 3, 5), T), ((6, 5), T)), **mm))
    add(expand(FLOATS, "matmul", "matmul_ta", lambda a, b: B.matmul(a, b, transpose_a=True),
               (((N, 5), T), ((N, 6), T)), **mm))
    add(expand(FLOATS, "matmul", "matmul_3d_ta", lambda a, b: B.matmul(a, b, transpose_a=True),
               (((N, 3, 5), T), ((N, 3, 6), T)), **mm))
    add(expand(("f32",), "matmul", "matmul_static", B.matmul, (((7, 5), T), ((5, 3), T)), **mm))
    add(expand(("f32",), "matmul", "matmul_static_ta", lambda a, b: B.matmul(a, b, transpose_a=True),
               (((7, 5), T), ((7, 3), T)), **mm))
    big = dict(mm, fd=False, rtol=1e-4, atol=1e-3)
    add(expand(("f32",), "matmul", "matmul_tails", B.matmul, (((N, 15, 37), T), ((37, 33), T)), **big))
    add(expand(("f32",), "matmul", "matmul_tails_tb", lambda a, b: B.matmul(a, b, transpose_b=True),
               (((N, 15, 37), T), ((33, 37), T)), **big))
    add(expand(("f32",), "matmul", "matmul_bigk", B.matmul, (((N, 600), T), ((600, 7), T)), **big))
    add(expand(("f32",), "matmul", "matmul_bigk_ta", lambda a, b: B.matmul(a, b, transpose_a=True),
               (((N, 40, 5), T), ((N, 40, 6), T)), **big))

    # -- sources
    def randoms(seed, x):
        return {"static": B.random_uniform(seed, (3, 5), 7),
                "batched": B.add(B.random_uniform(seed, (N, 4), 0xFFFFFFFF), x),
                "scalar": B.random_uniform(seed, (), 12345)}
    add([OpCase("random_uniform", "random_uniform", randoms, (((), "u32"), ((N, 4), "f32")),
                gen=seed_input, rtol=0.0)])
    def iotas(x, dtype):
        out = {f"axis{a}": B.iota((N, 3, 4), a, dtype) for a in range(3)}
        # used in arithmetic too, where its value type must agree with the other operand's
        out["eq"] = B.eq(B.iota((N, 3, 4), 2, dtype), B.cast(x, dtype))
        return out
    for dtype in ALL_DTYPES:
        add([OpCase("iota", f"iota-{dtype}", lambda x, dtype=dtype: iotas(x, dtype),
                    (((N, 3, 4), "f32"),), gen=each(lambda rng, s, d: _as(rng.integers(0, 4, s), d)))])
    add([OpCase("iota", "iota_static", lambda: {"a0": B.iota((5, 2), 0), "a1": B.iota((5, 2), 1, "f32")},
                ())])
    add([OpCase("dim_size", "dim_size",
                lambda x: {"batch_f32": B.dim_size(x, 0), "batch_f64": B.dim_size(x, 0, "f64"),
                           "batch_i32": B.dim_size(x, 0, "i32"), "batch_u32": B.dim_size(x, 0, "u32"),
                           "axis2": B.dim_size(x, 2, "i32"),
                           "scaled": B.div(x, B.dim_size(x, 0, x.dtype))},
                (((N, 3, 4), "f32"),), grad=True)])
    add([OpCase("const", "const_arrays",
                lambda x: {"f": B.add(x, B.const(np.arange(12.0).reshape(3, 4) / 7, x.dtype)),
                           "b": B.select(B.const(np.arange(12).reshape(3, 4) % 3 == 0), x, B.neg(x)),
                           "i": B.add(B.cast(x, "i32"), B.const(np.arange(4, dtype=np.int32)))},
                (((N, 3, 4), "f32"),), grad=True)])
    return cases


CASES = _case_list()
CASES += __import__("opinfo_seq").seq_cases()   # tests/opinfo_seq.py: slice, pad, concat
from opinfo_nn import nn_cases  # noqa: E402  (convolution and embedding primitives)
CASES += nn_cases()
_names = [c.name for c in CASES]
assert len(set(_names)) == len(_names), "duplicate OpCase names"


# ----------------------------------------------------------------------------------------------
# Graphs and feeds of a case
# ----------------------------------------------------------------------------------------------

def _outputs(out) -> dict:
    return dict(out) if isinstance(out, dict) else {"out": out}


def _input_types(case: OpCase, float_dtype: str | None):
    if float_dtype is None:
        return case.inputs
    return tuple((s, float_dtype if d in FLOAT_DTYPES else d) for s, d in case.inputs)


def forward_graph(case: OpCase, float_dtype: str | None = None) -> Graph:
    """The case's graph; `float_dtype` retypes every float input (f64 for finite differences)."""
    args = [B.arg(f"x{i}", d, s) for i, (s, d) in enumerate(_input_types(case, float_dtype))]
    return Graph(case.name.replace("-", "_"), args, list(_outputs(case.build(*args)).items()))


def loss_graphs(case: OpCase, float_dtype: str):
    """(loss graph, gradient graph): loss = sum over float outputs of sum(out * w_out), the weights
    being inputs; the gradient graph returns the loss and d loss / d x for every float input."""
    fwd = forward_graph(case, float_dtype)
    loss, weights = None, []
    for name, out in fwd.outputs:
        if out.dtype not in FLOAT_DTYPES:
            continue
        w = B.arg(f"w_{name}", out.dtype, out.shape)
        weights.append(w)
        term = B.reduce_sum(B.mul(out, w))
        term = B.cast(term, float_dtype)
        loss = term if loss is None else B.add(loss, term)
    assert loss is not None, f"{case.name} has no float output to differentiate"
    inputs = list(fwd.inputs) + weights
    wrt = [x for x in fwd.inputs if x.dtype in FLOAT_DTYPES]
    grads = ir.gradients(loss, wrt)
    name = fwd.name
    loss_graph = Graph(f"{name}_loss", inputs, [("loss", loss)])
    grad_graph = Graph(f"{name}_grad", inputs,
                       [("loss", loss)] + [(f"d_{x.attr('name')}", g) for x, g in zip(wrt, grads)])
    return loss_graph, grad_graph


def case_rng(case_name: str, batch: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(case_name.encode()), batch, salt])


def make_feeds(graph: Graph, case: OpCase, batch: int, salt: int = 0) -> dict:
    """Inputs of `graph` (a case's forward, loss or gradient graph) for `batch` rows: the case's
    generator for its own inputs, unit normals for loss weights."""
    rng = case_rng(case.name, batch, salt)
    own = [n for n in graph.inputs if not n.attr("name").startswith("w_")]
    specs = [(n.type.concrete_shape(batch), n.dtype) for n in own]
    values = case.gen(rng, specs)
    feeds = {n.attr("name"): np.asarray(v).astype(np_dtype(n.dtype)) for n, v in zip(own, values)}
    for n in graph.inputs:
        if n.attr("name").startswith("w_"):
            feeds[n.attr("name")] = _as(rng.normal(0.0, 1.0, n.type.concrete_shape(batch)), n.dtype)
    return feeds


def has_batch(graph: Graph) -> bool:
    return any(n.type.batched for n in graph.inputs)


def check_compiled(graph: Graph, feeds_for: Callable, level: int, *, rtol=1e-6, atol=0.0, ulp=None,
                   batches=BATCHES, passes: tuple | None = None, what: str = "") -> CompiledRunner:
    """Compile `graph` once and compare it with the reference interpreter at every batch size."""
    runner = compiled_runner(graph, level, passes=passes)
    for batch in batches if has_batch(graph) else batches[:1]:
        feeds = feeds_for(batch)
        expected = ir.run(graph, feeds)
        actual = runner.run(feeds)
        assert set(actual) == set(expected), f"{what}: outputs {sorted(actual)} != {sorted(expected)}"
        for name in expected:
            assert_matches(actual[name], expected[name], rtol=rtol, atol=atol, ulp=ulp,
                           what=f"{what} output {name!r}, fusion level {level}, batch {batch}")
    return runner


# ----------------------------------------------------------------------------------------------
# Composite graphs shared by tests/test_fusion.py and tests/test_memory.py
# ----------------------------------------------------------------------------------------------

def dense_relu_graph(in_dim: int = 20, units: int = 16) -> Graph:
    x = B.arg("x", "f32", (N, in_dim))
    w = B.arg("kernel", "f32", (in_dim, units))
    b = B.arg("bias", "f32", (units,))
    return Graph("dense_relu", [x, w, b], [("y", B.relu(B.add(B.matmul(x, w), b)))])


def flatten_graph() -> Graph:
    """Reshapes of materialized values (views of their buffers) read by matmuls and reductions."""
    x = B.arg("x", "f32", (N, 4, 5))
    w = B.arg("kernel", "f32", (20, 12))
    flat = B.reshape(x, (N, 20))
    h = B.relu(B.matmul(flat, w))
    cube = B.reshape(h, (N, 3, 4))
    return Graph("flatten", [x, w], [("rows", B.reduce_sum(cube, 2)), ("cols", B.reduce_max(cube, 1)),
                                     ("flat_sum", B.reduce_sum(flat, 1)),
                                     ("back", B.matmul(B.reshape(cube, (N, 12)), w, transpose_b=True))])


def softmax_graph(classes: int = 10) -> Graph:
    x = B.arg("logits", "f32", (N, classes))
    return Graph("softmax", [x], [("probabilities", B.softmax(x)), ("log_probabilities", B.log_softmax(x))])


def cross_entropy_graph(classes: int = 7) -> Graph:
    """Mean log-softmax cross-entropy over the batch, with its gradient and an accuracy count."""
    logits = B.arg("logits", "f32", (N, classes))
    labels = B.arg("labels", "f32", (N, classes))
    per_row = B.neg(B.reduce_sum(B.mul(labels, B.log_softmax(logits)), 1))
    loss = B.reduce_mean(per_row)
    (d_logits,) = ir.gradients(loss, [logits])
    correct = B.reduce_sum(B.cast(B.eq(B.argmax(logits, 1), B.argmax(labels, 1)), "f32"))
    return Graph("cross_entropy", [logits, labels],
                 [("loss", loss), ("d_logits", d_logits), ("correct", correct)])


MLP_PARAMS = {"w1": (12, 16), "b1": (16,), "w2": (16, 5), "b2": (5,)}


def mlp_train_step_graph(dropout: bool = True) -> Graph:
    """A train step as `fit` compiles one: (params, Adam slots, step, seed, x, y) ->
    (loss, correct, params', slots', step'), every updated buffer an output named like its input."""
    x = B.arg("x", "f32", (N, 3, 4))
    y = B.arg("y", "f32", (N, 5))
    seed = B.arg("seed", "u32", ())
    step = B.arg("step", "f32", ())
    params = {k: B.arg(k, "f32", s) for k, s in MLP_PARAMS.items()}
    m = {k: B.arg(f"m/{k}", "f32", s) for k, s in MLP_PARAMS.items()}
    v = {k: B.arg(f"v/{k}", "f32", s) for k, s in MLP_PARAMS.items()}
    h = B.relu(B.add(B.matmul(B.reshape(x, (N, 12)), params["w1"]), params["b1"]))   # Flatten
    if dropout:
        keep = B.ge(B.random_uniform(seed, (N, 16), stream=1), 0.25)
        h = B.select(keep, B.div(h, 0.75), 0.0)
    logits = B.add(B.matmul(h, params["w2"]), params["b2"])
    loss = B.reduce_mean(B.neg(B.reduce_sum(B.mul(y, B.log_softmax(logits)), 1)))
    correct = B.reduce_sum(B.cast(B.eq(B.argmax(logits, 1), B.argmax(y, 1)), "f32"))
    grads = dict(zip(params, ir.gradients(loss, list(params.values()))))
    beta1, beta2, lr, eps = 0.9, 0.999, 0.01, 1e-7
    t = B.add(step, 1.0)
    # lr * sqrt(1 - beta2^t) / (1 - beta1^t), with beta^t = exp(t * log(beta))
    power = lambda beta: B.exp(B.mul(t, float(np.log(beta))))  # noqa: E731
    lr_t = B.div(B.mul(lr, B.sqrt(B.sub(1.0, power(beta2)))), B.sub(1.0, power(beta1)))
    outputs = [("loss", loss), ("correct", correct), ("step", t)]
    for k, p in params.items():
        g = grads[k]
        m_new = B.add(B.mul(m[k], beta1), B.mul(g, 1 - beta1))
        v_new = B.add(B.mul(v[k], beta2), B.mul(B.mul(g, g), 1 - beta2))
        p_new = B.sub(p, B.div(B.mul(B.broadcast(lr_t, p.shape), m_new), B.add(B.sqrt(v_new), eps)))
        outputs += [(k, p_new), (f"m/{k}", m_new), (f"v/{k}", v_new)]
    inputs = [x, y, seed, step] + list(params.values()) + list(m.values()) + list(v.values())
    return Graph("train_step", inputs, outputs)


def mlp_state(rng: np.random.Generator) -> dict:
    state = {"step": np.zeros((), np.float32)}
    for k, shape in MLP_PARAMS.items():
        state[k] = (rng.normal(0, 0.5, shape)).astype(np.float32)
        state[f"m/{k}"] = np.zeros(shape, np.float32)
        state[f"v/{k}"] = np.zeros(shape, np.float32)
    return state


def mlp_batch(rng: np.random.Generator, batch: int, seed: int = 1) -> dict:
    labels = rng.integers(0, 5, batch)
    return {"x": rng.normal(size=(batch, 3, 4)).astype(np.float32),
            "y": np.eye(5, dtype=np.float32)[labels], "seed": np.uint32(seed)}


def constants_of(graph: Graph) -> dict:
    """digest -> array for every array constant (what ir.parse needs to rebuild them)."""
    return {n.attr("value").digest: n.attr("value").array for n in graph.nodes()
            if n.op == "const" and n.type.shape != ()}
