"""emit_gemm against numpy (float64 reference), and the for_range loop helper.

Compile time dominates, so each test builds one module holding many gemms and then runs every shape
through it; runtime-sized gemms are run on the whole shape grid, constant-sized ones on a sample.
"""
from __future__ import annotations

import ctypes
import itertools
import re

import numpy as np
import pytest
from llvmlite import ir

from codegen import target
from codegen.gemm import KC, MC, NARROW_BLOCK, emit_gemm, narrow_product, scratch_elements, tile_shape
from codegen.jit import JitModule
from codegen.loops import for_range

PTR, I64 = ir.PointerType(), ir.IntType(64)
LAYOUTS = {"NN": (False, False), "NT": (False, True), "TN": (True, False), "TT": (True, True)}
HOST_LANES = target.vector_lanes(32)
LANES = sorted({HOST_LANES, 8, 4}, reverse=True)

M_VALUES = (1, 5, 6, 7, 13, 32, 37)
N_VALUES = (1, 10, 16, 17, 64, 65, 130)
K_VALUES = (1, 3, 28, 100)
GRID = list(itertools.product(M_VALUES, N_VALUES, K_VALUES))
# Shapes that cross the cache blocks: m > MC (several m blocks, row tails in the last), k > KC
# (several k blocks, the later ones adding to C).
BIG = [(MC + 13, 70, 7), (9, 33, KC + 77), (MC + 1, 17, KC + 1)]
# A sample of the grid for gemms with every size a constant (each shape is its own code).
CONSTANT_SAMPLE = [(1, 1, 1), (5, 10, 3), (6, 16, 28), (7, 17, 100), (13, 65, 3), (37, 130, 28),
                   (32, 64, 100), (1, 130, 100), (37, 1, 28)]
PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


class GemmSpec:
    """One gemm to compile: layout, which of m/n/k are constants (and their values), options."""

    def __init__(self, layout, m=None, n=None, k=None, accumulate=False, skip_zeros=False,
                 b_finite=False):
        self.trans_a, self.trans_b = LAYOUTS[layout]
        self.layout, self.dims, self.accumulate = layout, {"m": m, "n": n, "k": k}, accumulate
        self.skip_zeros, self.b_finite = skip_zeros, b_finite

    def accepts(self, m, n, k):
        return all(v is None or v == x for v, x in zip(self.dims.values(), (m, n, k)))


def compile_gemms(specs, *, dtype=ir.FloatType(), lanes=None):
    """One module, one function `g<i>(a, b, c, m, n, k)` per spec; returns the ctypes callables."""
    module = ir.Module("test_gemm")
    for idx, spec in enumerate(specs):
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64, I64, I64]),
                         f"g{idx}")
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        a, b, c, *sizes = fn.args
        m, n, k = (v if v is not None else arg for v, arg in zip(spec.dims.values(), sizes))
        emit_gemm(builder, a, b, c, m, n, k, trans_a=spec.trans_a, trans_b=spec.trans_b, dtype=dtype,
                  lanes=lanes, accumulate=spec.accumulate, skip_zeros=spec.skip_zeros,
                  b_finite=spec.b_finite)
        builder.ret_void()
    jit = JitModule(module)
    return jit, [PROTO(jit.address(f"g{idx}")) for idx in range(len(specs))]


def misaligned(shape, dtype, rng):
    """A random array whose data starts 1 element past a 64-byte boundary: the gemm may only assume
    element alignment."""
    size = int(np.prod(shape))
    raw = np.empty(size + 64, dtype)
    start = (-raw.ctypes.data // raw.itemsize) % (64 // raw.itemsize) + 1
    out = raw[start:start + size].reshape(shape)
    out[...] = rng.standard_normal(shape)
    return out


def check(fn, spec, m, n, k, dtype, rng):
    np_dtype = np.float32 if dtype == ir.FloatType() else np.float64
    a = misaligned((k, m) if spec.trans_a else (m, k), np_dtype, rng)
    b = misaligned((n, k) if spec.trans_b else (k, n), np_dtype, rng)
    c = misaligned((m, n), np_dtype, rng)
    c0 = c.copy()
    op_a = (a.T if spec.trans_a else a).astype(np.float64)
    op_b = (b.T if spec.trans_b else b).astype(np.float64)
    ref = op_a @ op_b
    scale = np.abs(op_a) @ np.abs(op_b)
    if spec.accumulate:
        ref += c0
        scale += np.abs(c0)
    fn(a.ctypes.data, b.ctypes.data, c.ctypes.data, m, n, k)
    rtol = 1e-5 if np_dtype == np.float32 else 1e-13
    err = np.abs(c - ref) - rtol * scale
    assert (err <= 1e-30).all(), (
        f"{spec.layout} m={m} n={n} k={k} accumulate={spec.accumulate}: worst error "
        f"{np.abs(c - ref).max()} at {np.unravel_index(np.argmax(err), err.shape)}")


def run_specs(specs, shapes, *, dtype=ir.FloatType(), lanes=None, seed=0):
    rng = np.random.default_rng(seed)
    _, fns = compile_gemms(specs, dtype=dtype, lanes=lanes)
    runs = 0
    for spec, fn in zip(specs, fns):
        for m, n, k in shapes:
            if spec.accepts(m, n, k):
                check(fn, spec, m, n, k, dtype, rng)
                runs += 1
    assert runs > 0


@pytest.mark.parametrize("lanes", LANES)
def test_runtime_sizes_every_layout(lanes):
    """m, n, k all runtime: every tail path, on the whole grid, plain and accumulating."""
    specs = [GemmSpec(layout, accumulate=acc) for layout in LAYOUTS for acc in (False, True)]
    run_specs(specs, GRID + BIG, lanes=None if lanes == HOST_LANES else lanes)


@pytest.mark.parametrize("lanes", LANES)
def test_constant_sizes_every_layout(lanes):
    specs = [GemmSpec(layout, m, n, k) for layout in LAYOUTS for m, n, k in CONSTANT_SAMPLE]
    specs.append(GemmSpec("NN", *BIG[0], accumulate=True))
    specs.append(GemmSpec("NT", *BIG[2]))
    run_specs(specs, CONSTANT_SAMPLE + BIG, lanes=None if lanes == HOST_LANES else lanes)


@pytest.mark.parametrize("pack_full", [False, True])
def test_whole_panels_packed_or_read_in_place_give_the_same_products(pack_full, monkeypatch):
    """gemm.PACK_FULL_PANELS: an untransposed B's whole column panels copied into scratch, or read
    in place (the host's panel width picks one), for runtime and constant sizes, with zero
    skipping and across k and m blocks."""
    from codegen import gemm
    monkeypatch.setattr(gemm, "PACK_FULL_PANELS", pack_full)
    specs = [GemmSpec(layout, accumulate=acc) for layout in ("NN", "TN") for acc in (False, True)]
    specs += [GemmSpec("NN", *shape) for shape in ((32, 64, 100), (37, 130, 28))]
    specs += [GemmSpec("TN", 37, 130, 28, skip_zeros=True), GemmSpec("NN", *BIG[0]),
              GemmSpec("TN", *BIG[1])]
    run_specs(specs, GRID + BIG)


@pytest.mark.parametrize("skip_zeros", [False, True])
def test_the_prefetch_of_the_next_copied_panel_changes_no_value(skip_zeros, monkeypatch):
    """gemm.PREFETCH_NEXT_COPY: the first row tile of a copied panel (8 lanes: panels of 96 or 128
    bytes, always copied) prefetches the next panel's rows, for k blocks of PREFETCH_COPY_MIN_K
    rows and more, in whole blocks and the last, from constant and runtime sizes, with and without
    zero skipping; the products are the same bits as without it, and numpy's."""
    from codegen import gemm
    shapes = [(13, 70, 300), (MC + 9, 3 * 32 + 5, KC + 77), (4, 64, 784), (2, 40, 600)]
    specs = [GemmSpec("NN", *shape, skip_zeros=skip_zeros, b_finite=skip_zeros) for shape in shapes]
    specs += [GemmSpec("NN", skip_zeros=skip_zeros, b_finite=skip_zeros),
              GemmSpec("NN", accumulate=True)]
    monkeypatch.setattr(gemm, "PREFETCH_NEXT_COPY", True)
    jit_on, with_prefetch = compile_gemms(specs, lanes=8)
    kernel = r"kcompile\.gemm\.kernel\.f32x8\.\d+x\d+\.pf3"   # three lines per row of 96 or 128 bytes
    assert re.search(kernel, jit_on.optimized_ir)
    monkeypatch.setattr(gemm, "PREFETCH_NEXT_COPY", False)
    jit_off, without = compile_gemms(specs, lanes=8)
    assert not re.search(r"\.pf\d", jit_off.optimized_ir)
    rng = np.random.default_rng(3)
    for spec, on, off in zip(specs, with_prefetch, without):
        for m, n, k in shapes:
            if not spec.accepts(m, n, k):
                continue
            a = _sparse((m, k), "mostly_zero", rng) if skip_zeros else \
                rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            c0 = rng.standard_normal((m, n)).astype(np.float32)
            got, want = c0.copy(), c0.copy()
            on(a.ctypes.data, b.ctypes.data, got.ctypes.data, m, n, k)
            off(a.ctypes.data, b.ctypes.data, want.ctypes.data, m, n, k)
            np.testing.assert_array_equal(got, want, err_msg=f"m={m} n={n} k={k}")
            ref = a.astype(np.float64) @ b.astype(np.float64) + (c0 if spec.accumulate else 0)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3, err_msg=f"m={m} n={n} k={k}")


@pytest.mark.parametrize("dtype", [ir.FloatType(), ir.DoubleType()], ids=["f32", "f64"])
@pytest.mark.parametrize("lanes", LANES)
def test_a_transposed_a_copied_as_row_tiles_gives_the_same_products(lanes, dtype, monkeypatch):
    """gemm.PACK_A: the m blocks of a transposed A copied as contiguous row tiles (when a block
    fits PACK_A_MAX_BYTES and has PACK_A_MIN_K steps or more: k 128 and 100 here, not 28 or 5;
    decided at run time for a runtime k); with constant and runtime sizes, row tails, column tails
    whose tiles have other rows (read in place), several m blocks, accumulation and zero skipping,
    the products are the same bits as read in place, and numpy's.  A runtime k (blocks of KC)
    with a runtime m is not copied: its blocks would not fit."""
    from codegen import gemm
    lanes_arg = None if lanes == HOST_LANES else lanes
    nr = tile_shape(lanes, 64 if isinstance(dtype, ir.DoubleType) else 32)[1] * lanes
    np_dtype = np.float64 if isinstance(dtype, ir.DoubleType) else np.float32
    shapes = [(MC + 9, 2 * nr + 3, 128), (37, 2 * nr + 3, 28), (48, 3 * nr, 100), (3, nr, 5)]
    specs = [GemmSpec("TN", *shape) for shape in shapes]
    specs += [GemmSpec("TT", *shapes[1]), GemmSpec("TN", *shapes[0], accumulate=True),
              GemmSpec("TN", 48, None, None), GemmSpec("TN", *shapes[1], skip_zeros=True),
              GemmSpec("TN")]
    monkeypatch.setattr(gemm, "PACK_A", True)
    jit_on, packed = compile_gemms(specs, dtype=dtype, lanes=lanes_arg)
    tag = "f64" if np_dtype == np.float64 else "f32"
    copies = re.findall(rf"define internal .*@\"?kcompile\.gemm\.pack_a\.{tag}\.\d+",
                        jit_on.optimized_ir)
    assert copies, "no row tiles of A were copied"
    monkeypatch.setattr(gemm, "PACK_A", False)
    jit_off, in_place = compile_gemms(specs, dtype=dtype, lanes=lanes_arg)
    assert "pack_a" not in jit_off.optimized_ir
    runs = 0
    for spec, on, off in zip(specs, packed, in_place):
        for m, n, k in shapes:
            if not spec.accepts(m, n, k):
                continue
            check(on, spec, m, n, k, dtype, np.random.default_rng(m * n + k))
            rng = np.random.default_rng(7)
            a = rng.standard_normal((k, m)).astype(np_dtype)
            a[rng.random(a.shape) < 0.7] = 0.0
            b = rng.standard_normal((n, k) if spec.trans_b else (k, n)).astype(np_dtype)
            got = rng.standard_normal((m, n)).astype(np_dtype)
            want = got.copy()
            on(a.ctypes.data, b.ctypes.data, got.ctypes.data, m, n, k)
            off(a.ctypes.data, b.ctypes.data, want.ctypes.data, m, n, k)
            np.testing.assert_array_equal(got, want, err_msg=f"{spec.layout} m={m} n={n} k={k}")
            runs += 1
    assert runs == len(specs) + len(shapes) - 1   # the all-runtime spec takes every shape


@pytest.mark.parametrize("lanes", LANES)
def test_the_prefetch_of_the_c_tile_changes_no_value(lanes, monkeypatch):
    """gemm.PREFETCH_C: every row tile of a k block of PREFETCH_C_MAX_K steps at most (k 28 and 3
    here, not 300 or KC + 77) prefetches its C tile's lines before its k loop; in every layout,
    with masked column tails, row tails, several m and k blocks, accumulation and zero skipping,
    the products are the same bits as without it, and numpy's."""
    from codegen import gemm
    lanes_arg = None if lanes == HOST_LANES else lanes
    nr = tile_shape(lanes)[1] * lanes
    specs = [GemmSpec(layout, accumulate=acc) for layout in LAYOUTS for acc in (False, True)]
    specs += [GemmSpec("NN", skip_zeros=True), GemmSpec("TN", 37, 2 * nr + 3, 28, skip_zeros=True)]
    shapes = [(13, 70, 300), (MC + 9, 2 * nr + 3, KC + 77), (37, 2 * nr + 3, 28), (1, 5, 3)]
    monkeypatch.setattr(gemm, "PREFETCH_C", True)
    jit_on, with_prefetch = compile_gemms(specs, lanes=lanes_arg)
    assert re.search(rf"kcompile\.gemm\.kernel\.f32x{lanes}\.\d+x\d+(\.\w+)*\.pc\b",
                     jit_on.optimized_ir)
    assert "llvm.prefetch" in jit_on.optimized_ir
    monkeypatch.setattr(gemm, "PREFETCH_C", False)
    jit_off, without = compile_gemms(specs, lanes=lanes_arg)
    assert not re.search(r"kernel\.[\w.]*\.pc\b", jit_off.optimized_ir)
    runs = 0
    for spec, on, off in zip(specs, with_prefetch, without):
        for m, n, k in shapes:
            if not spec.accepts(m, n, k):
                continue
            check(on, spec, m, n, k, ir.FloatType(), np.random.default_rng(m + n + k))
            rng = np.random.default_rng(5)
            a = rng.standard_normal((k, m) if spec.trans_a else (m, k)).astype(np.float32)
            a[rng.random(a.shape) < 0.7] = 0.0
            b = rng.standard_normal((n, k) if spec.trans_b else (k, n)).astype(np.float32)
            got = rng.standard_normal((m, n)).astype(np.float32)
            want = got.copy()
            on(a.ctypes.data, b.ctypes.data, got.ctypes.data, m, n, k)
            off(a.ctypes.data, b.ctypes.data, want.ctypes.data, m, n, k)
            np.testing.assert_array_equal(got, want, err_msg=f"{spec.layout} m={m} n={n} k={k}")
            runs += 1
    assert runs >= 4 * len(LAYOUTS) * 2


def _sparse(shape, pattern, rng):
    """A float32 matrix whose zeros follow `pattern` (how relu and Dropout leave activations)."""
    a = rng.standard_normal(shape).astype(np.float32)
    if pattern == "rows":
        a[rng.random(shape[0]) < 0.5] = 0.0
    elif pattern == "columns":
        a[:, rng.random(shape[1]) < 0.5] = 0.0
    elif pattern == "mostly_zero":
        a[rng.random(shape) < 0.85] = 0.0
    elif pattern == "zero":
        a[...] = 0.0
    elif pattern == "negative_zero":
        a[rng.random(shape) < 0.7] = -0.0
    return a


@pytest.mark.parametrize("b_finite", [False, True])
@pytest.mark.parametrize("lanes", LANES)
def test_zero_skipping_gives_the_dense_products_values(lanes, b_finite):
    """skip_zeros: every layout, runtime and constant sizes across the m and k blocks, with C of two
    and more column panels plus a tail; against numpy and, value for value, the dense kernels.
    With b_finite (B is finite here) op(B) is not scanned, with the same values."""
    lanes_arg = None if lanes == HOST_LANES else lanes
    nr = tile_shape(lanes)[1] * lanes
    shapes = [(37, 2 * nr + 10, 28), (6, 2 * nr, 3), (MC + 13, 3 * nr, 7), (9, 2 * nr + 1, KC + 77),
              (32, 4 * nr, 100), (1, 2 * nr, 5)]
    specs, dense = [], []
    for layout in LAYOUTS:
        for acc in (False, True):
            specs.append(GemmSpec(layout, n=2 * nr + 10, accumulate=acc, skip_zeros=True,
                                  b_finite=b_finite))
            dense.append(GemmSpec(layout, n=2 * nr + 10, accumulate=acc))
        # runtime n: no lists, dense kernels
        specs.append(GemmSpec(layout, skip_zeros=True, b_finite=b_finite))
        dense.append(GemmSpec(layout))
    for m, n, k in shapes[1:]:
        specs.append(GemmSpec("TN", m=m, n=n, k=k, skip_zeros=True, b_finite=b_finite))
        dense.append(GemmSpec("TN", m=m, n=n, k=k))
        specs.append(GemmSpec("NN", n=n, skip_zeros=True, b_finite=b_finite))
        dense.append(GemmSpec("NN", n=n))
    _, fns = compile_gemms(specs + dense, lanes=lanes_arg)
    rng = np.random.default_rng(11)
    runs = 0
    for spec, fn, plain in zip(specs, fns[:len(specs)], fns[len(specs):]):
        for m, n, k in shapes:
            if not spec.accepts(m, n, k):
                continue
            for pattern in ("rows", "columns", "mostly_zero", "zero", "negative_zero"):
                a = _sparse((k, m) if spec.trans_a else (m, k), pattern, rng)
                b = rng.standard_normal((n, k) if spec.trans_b else (k, n)).astype(np.float32)
                c0 = rng.standard_normal((m, n)).astype(np.float32)
                got, want = c0.copy(), c0.copy()
                fn(a.ctypes.data, b.ctypes.data, got.ctypes.data, m, n, k)
                plain(a.ctypes.data, b.ctypes.data, want.ctypes.data, m, n, k)
                where = f"{spec.layout} m={m} n={n} k={k} acc={spec.accumulate} {pattern}"
                np.testing.assert_array_equal(got, want, err_msg=where)
                op_a = (a.T if spec.trans_a else a).astype(np.float64)
                op_b = (b.T if spec.trans_b else b).astype(np.float64)
                ref = op_a @ op_b + (c0 if spec.accumulate else 0)
                np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=where)
                runs += 1
    assert runs > 100


GEMV_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


@pytest.mark.parametrize("lanes", LANES)
def test_one_row_products_skip_zero_steps_with_the_gemms_values(lanes):
    """gemv_function (a one-sample predict's product) with and without skip_zeros: the listed
    steps of each k block give, bit for bit, the sums of every step, which are the GEMM's own for
    that row; column counts with every pass (GEMV_GROUP, 4, 1 vectors and the masked tail), k in
    one and in several k blocks, B rows `ldb` apart, zeros of either sign, a NaN input read."""
    from codegen.gemm import GEMV_GROUP, gemv_function, gemv_k_block
    lanes_arg = None if lanes == HOST_LANES else lanes
    module = ir.Module("test_gemv")
    plain = gemv_function(module, lanes=lanes_arg)
    listed = gemv_function(module, lanes=lanes_arg, skip_zeros=True)
    for name, fn in (("dense", plain), ("listed", listed)):
        fn.linkage = "external"
        fn.name = name
    gemm = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64, I64, I64]), "g")
    builder = ir.IRBuilder(gemm.append_basic_block("entry"))
    emit_gemm(builder, *gemm.args[:3], 1, gemm.args[4], gemm.args[5], lanes=lanes_arg)
    builder.ret_void()
    jit = JitModule(module)
    dense, skipping = (GEMV_PROTO(jit.address(name)) for name in ("dense", "listed"))
    row_gemm = PROTO(jit.address("g"))
    rng = np.random.default_rng(21)
    wide = 2 * GEMV_GROUP * lanes + 5 * lanes + 7
    runs = 0
    for ncols, k in [(1, 1), (5, 37), (lanes, 3), (4 * lanes + 3, 100), (wide, KC + 77),
                     (GEMV_GROUP * lanes, 2 * KC + 5)]:
        # the k block the GEMM would use for this constant k (runtime k: KC)
        kc = gemv_k_block(k, lanes=lanes)
        ldb = ncols + 3
        b = rng.standard_normal((k, ldb)).astype(np.float32)
        for pattern in ("mostly_zero", "zero", "negative_zero", "block", "nan"):
            a = _sparse((1, k), pattern if pattern in ("mostly_zero", "zero", "negative_zero")
                        else "mostly_zero", rng)
            if pattern == "block":
                a[0, : min(k, kc + 3)] = 0.0              # a whole k block of zeros
            if pattern == "nan":
                a[0, k // 2] = np.nan
            got, want = (np.full(ncols + 1, 7.0, np.float32) for _ in range(2))
            skipping(a.ctypes.data, b.ctypes.data, got.ctypes.data, ncols, k, ldb, kc)
            dense(a.ctypes.data, b.ctypes.data, want.ctypes.data, ncols, k, ldb, kc)
            where = f"lanes={lanes} ncols={ncols} k={k} {pattern}"
            assert got[ncols] == 7.0 and want[ncols] == 7.0, where   # nothing past the row
            np.testing.assert_array_equal(got, want, err_msg=where)
            with np.errstate(invalid="ignore"):
                ref = (a.astype(np.float64) @ b[:, :ncols])[0]
            np.testing.assert_allclose(got[:ncols], ref, rtol=1e-4, atol=1e-4, err_msg=where)
            if kc == KC or k <= KC:
                # a runtime-k GEMM blocks k by KC: for those k the GEMM's row is this row
                bc = np.ascontiguousarray(b[:, :ncols])
                row = np.empty(ncols, np.float32)
                row_gemm(a.ctypes.data, bc.ctypes.data, row.ctypes.data, 1, ncols, k)
                np.testing.assert_array_equal(got[:ncols], row, err_msg=where)
            runs += 1
    assert runs == 30


def test_the_step_lists_hold_exactly_the_steps_to_compute():
    """What makes zero skipping skip: a row tile's list (_zero_skip_list) holds, in order, the
    steps where one of its rows is nonzero (a NaN counts, -0.0 does not) or op(B)'s row is flagged
    inf/NaN; a GEMV's (one row, without flags) the nonzero entries of its row."""
    from codegen.gemm import _Vec, _zero_skip_list
    rows, k = 6, 40
    module = ir.Module("test_lists")
    vec = _Vec(module, ir.FloatType(), HOST_LANES)
    for name, fn in (("tile_list", _zero_skip_list(vec, rows)),
                     ("row_list", _zero_skip_list(vec, 1, flags=False, unit_steps=True))):
        fn.linkage, fn.name = "external", name
    jit = JitModule(module)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    rng = np.random.default_rng(14)
    a_tile = rng.standard_normal((rows, k)).astype(np.float32)
    a_tile[:, rng.random(k) < 0.6] = 0.0
    a_tile[:, 5] = -0.0
    a_tile[2, 7] = np.nan
    a_tile[:, 9] = 0.0
    a_tile[:, 11] = 0.0
    flags = np.zeros(k, np.uint8)
    flags[11] = 1                                     # op(B)'s row 11 holds an inf
    steps = np.full(k, -1, np.int16)
    count = np.zeros(1, np.int64)
    proto(jit.address("tile_list"))(a_tile.ctypes.data, k, 1, k, steps.ctypes.data,
                                    count.ctypes.data, flags.ctypes.data)
    want = np.nonzero((a_tile != 0).any(axis=0) | np.isnan(a_tile).any(axis=0) | (flags != 0))[0]
    assert 11 in want and 9 not in want and 5 not in want and 7 in want
    assert count[0] == len(want) < k
    np.testing.assert_array_equal(steps[:count[0]], want)
    row = np.ascontiguousarray(a_tile[2])
    for start, stop in ((0, k), (8, 30)):
        steps[:] = -1
        proto(jit.address("row_list"))(row[start:].ctypes.data, 0, 1, stop - start,
                                       steps.ctypes.data, count.ctypes.data, None)
        want = np.nonzero((row[start:stop] != 0) | np.isnan(row[start:stop]))[0]
        assert 0 < count[0] == len(want) < stop - start
        np.testing.assert_array_equal(steps[:count[0]], want)


TILE_LISTS_PROTO = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                    ctypes.c_void_p)


def _tile_lists_module(module, rows, lanes):
    """tile_zero_lists of `module` for tiles of `rows` rows, made callable as 'lists'."""
    from codegen.gemm import tile_zero_lists
    fn = tile_zero_lists(module, ir.FloatType(), rows, lanes)
    fn.linkage, fn.name = "external", "lists"


def _list_tiles(jit, a, rows, k):
    """(steps, counts, total) of tile_zero_lists over the full row tiles of a (m x k)."""
    from codegen.gemm import TILE_LIST_STRIDE
    tiles = len(a) // rows
    steps = np.full(max(tiles, 1) * TILE_LIST_STRIDE, -1, np.int16)
    counts = np.full(max(tiles, 1), -1, np.int64)
    total = TILE_LISTS_PROTO(jit.address("lists"))(a.ctypes.data, a.shape[1], tiles, k,
                                                   steps.ctypes.data, counts.ctypes.data)
    return steps, counts, total


@pytest.mark.parametrize("lanes", LANES)
def test_tile_lists_hold_exactly_each_tiles_nonzero_steps(lanes):
    """tile_zero_lists (a product's lists, made once for all its column blocks): for each full row
    tile, in order, the steps where one of its rows is not zero (a NaN counts, -0.0 does not), for
    k below, at and past whole vectors, up to KC; the total is the sum of the counts."""
    from codegen.gemm import TILE_LIST_STRIDE
    lanes_arg = None if lanes == HOST_LANES else lanes
    rng = np.random.default_rng(21)
    for rows in (1, 2, 4):
        module = ir.Module("test_tile_lists")
        _tile_lists_module(module, rows, lanes_arg)
        jit = JitModule(module)
        for m, k in ((rows, 1), (3 * rows + 1, lanes - 1), (2 * rows, lanes), (5 * rows, 37),
                     (4 * rows, KC)):
            a = rng.standard_normal((m, k + 3)).astype(np.float32)   # rows k + 3 apart
            a[rng.random(a.shape) < 0.8] = 0.0
            a[rng.random(a.shape) < 0.05] = -0.0
            a[0, min(2, k - 1)] = np.nan
            steps, counts, total = _list_tiles(jit, a, rows, k)
            tiles = m // rows
            assert total == counts[:tiles].sum()
            for t in range(tiles):
                tile = a[t * rows:(t + 1) * rows, :k]
                want = np.nonzero((tile != 0).any(axis=0) | np.isnan(tile).any(axis=0))[0]
                got = steps[t * TILE_LIST_STRIDE:t * TILE_LIST_STRIDE + counts[t]]
                np.testing.assert_array_equal(got, want, err_msg=f"rows={rows} m={m} k={k} t={t}")


@pytest.mark.parametrize("width", ["short", "listed"])
@pytest.mark.parametrize("pack_full", [None, False])
@pytest.mark.parametrize("lanes", LANES)
def test_tile_lists_give_the_dense_products_values_and_keep_zero_times_inf_nan(lanes, pack_full,
                                                                                width, monkeypatch):
    """emit_gemm with the caller's `tile_lists` (B in column panels, the last a tail that
    multiplies every step): value for value the dense kernels' products, for runtime m (tails of
    the tiles included) and k up to KC; a panel holding an inf or NaN multiplies every step, so
    0 * inf is NaN there as in numpy.  The listed product copies every panel (found finite while
    copying), also where PACK_FULL_PANELS False has the dense one read them in place.  Panels
    of a short tile's width with a tail panel, and of the width training steps list in
    (`listed_panel_vectors`: with 32 registers the full tile, whose dense product reads whole
    panels in place) with whole panels only."""
    from codegen import gemm
    from codegen.gemm import _registers_for, listed_panel_vectors, tile_rows
    monkeypatch.setattr(gemm, "PACK_FULL_PANELS", pack_full)
    lanes_arg = None if lanes == HOST_LANES else lanes
    vectors = ((4 if _registers_for(lanes, 32, None) == 16 else 2) if width == "short"
               else listed_panel_vectors(lanes=lanes))
    rows = tile_rows(vectors, _registers_for(lanes, 32, None))
    nr = vectors * lanes
    n = 2 * nr + 5 if width == "short" else 2 * nr     # (whole panels only: a training step's block)
    shapes = ((rows, 3), (7 * rows + 1, 37), (32, 100), (MC, KC))   # (m at run time, k)
    module = ir.Module("test_tile_list_gemms")
    names = []
    for _, k in shapes:
        for listed in (True, False):
            fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64, PTR, PTR]),
                             f"NN{k}{listed}")
            builder = ir.IRBuilder(fn.append_basic_block("entry"))
            a, b, c, m, steps, counts = fn.args
            emit_gemm(builder, a, b, c, m, n, k, lanes=lanes_arg,
                      panel_vectors=vectors if listed else None,
                      tile_lists=(steps, counts) if listed else None)
            builder.ret_void()
            names.append(fn.name)
    _tile_lists_module(module, rows, lanes_arg)
    jit = JitModule(module)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)
    fns = {name: proto(jit.address(name)) for name in names}
    rng = np.random.default_rng(22)
    runs = 0
    for m, k in shapes:
        for pattern in ("mostly_zero", "columns", "zero", "negative_zero"):
            for poison in (None, np.inf, np.nan):
                a = _sparse((m, k), pattern, rng)
                b = rng.standard_normal((k, n)).astype(np.float32)
                if poison is not None:
                    a[:, 1] = 0.0                  # every tile skips step 1 ...
                    b[1, nr + 3] = poison          # ... where the second panel holds poison
                steps, counts, _ = _list_tiles(jit, a, rows, k)
                got, want = (np.full((m, n), 7.0, np.float32) for _ in range(2))
                fns[f"NN{k}True"](a.ctypes.data, b.ctypes.data, got.ctypes.data, m,
                                  steps.ctypes.data, counts.ctypes.data)
                fns[f"NN{k}False"](a.ctypes.data, b.ctypes.data, want.ctypes.data, m, None, None)
                where = f"m={m} k={k} {pattern} {poison}"
                np.testing.assert_array_equal(got, want, err_msg=where)
                with np.errstate(invalid="ignore"):
                    ref = a.astype(np.float64) @ b.astype(np.float64)
                np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=where)
                if poison is not None:
                    assert np.isnan(got[:, nr + 3]).all(), where
                finite = ~np.isnan(ref)
                np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-4, atol=1e-4,
                                           err_msg=where)
                runs += 1
    assert runs == 48


def test_tile_lists_refuse_what_they_cannot_serve():
    """tile_lists serve one m block and one k block of untransposed A and B, without
    skip_zeros."""
    module = ir.Module("test_tile_lists_refused")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * 5), "g")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    a, b, c, steps, counts = fn.args
    for kwargs in ({"trans_a": True}, {"trans_b": True}, {"skip_zeros": True}):
        with pytest.raises(ValueError, match="tile_lists"):
            emit_gemm(builder, a, b, c, 32, 64, 40, tile_lists=(steps, counts), **kwargs)
    for m, k in ((MC + 1, 40), (32, KC + 1)):
        with pytest.raises(ValueError, match="tile_lists"):
            emit_gemm(builder, a, b, c, m, 64, k, tile_lists=(steps, counts))


@pytest.mark.parametrize("b_finite", [False, True])
def test_zero_skipping_never_skips_a_nan(b_finite):
    nr = tile_shape(HOST_LANES)[1] * HOST_LANES
    _, (fn,) = compile_gemms([GemmSpec("NN", n=2 * nr, skip_zeros=True, b_finite=b_finite)])
    a = np.zeros((12, 9), np.float32)
    a[7, 4] = np.nan
    b = np.ones((9, 2 * nr), np.float32)
    c = np.empty((12, 2 * nr), np.float32)
    fn(a.ctypes.data, b.ctypes.data, c.ctypes.data, 12, 2 * nr, 9)
    assert np.isnan(c[7]).all() and not np.isnan(np.delete(c, 7, axis=0)).any()
    assert (np.delete(c, 7, axis=0) == 0).all()


@pytest.mark.parametrize("lanes", LANES)
def test_the_scan_for_inf_and_nan_flags_exactly_the_rows_of_op_b_holding_one(lanes):
    """_nonfinite_steps (skip_zeros' pass over op(B)), in both layouts, with column and k counts
    that leave masked tails, and rows `ldb` apart, against numpy."""
    from codegen.gemm import _nonfinite_steps, _Vec
    module = ir.Module("test_scan")
    vec = _Vec(module, ir.FloatType(), lanes)
    for trans_b in (False, True):
        fn = _nonfinite_steps(vec, trans_b)
        fn.linkage, fn.name = "external", f"scan{int(trans_b)}"
    jit = JitModule(module)
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                             ctypes.c_int64, ctypes.c_void_p)
    rng = np.random.default_rng(13)
    for k, n in [(1, 1), (3, lanes - 1), (lanes + 3, 2 * lanes + 5), (37, 70), (KC, 3)]:
        op_b = rng.standard_normal((k, n)).astype(np.float32)
        for special in (np.inf, -np.inf, np.nan):
            p, j = rng.integers(0, k), rng.integers(0, n)
            op_b[p, j] = special
        op_b[k - 1, n - 1] = np.nan                      # in the last (tail) vector
        op_b.view(np.uint32)[0, 0] = 0x7F7FFFFF          # the largest finite float: not flagged
        want = ~np.isfinite(op_b).all(axis=1)
        for trans_b in (False, True):
            stored = op_b.T if trans_b else op_b
            padded = np.full((stored.shape[0], stored.shape[1] + 3), np.nan, np.float32)
            padded[:, :stored.shape[1]] = stored          # rows ldb apart, NaN past the row
            out = np.full(-(-k // lanes) * lanes, 7, np.uint8)
            proto(jit.address(f"scan{int(trans_b)}"))(padded.ctypes.data, padded.shape[1], k,
                                                      n, out.ctypes.data)
            np.testing.assert_array_equal(out[:k].astype(bool), want,
                                          err_msg=f"lanes={lanes} k={k} n={n} trans_b={trans_b}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_skipping_keeps_zero_times_inf_nan(layout):
    """A zero row tile of A facing an inf or NaN of B: the step is computed, as the dense product
    (0 * inf is NaN), in every layout and across k blocks."""
    nr = tile_shape(HOST_LANES)[1] * HOST_LANES
    m, n, k = 13, 2 * nr + 5, KC + 40
    spec = GemmSpec(layout, n=n, skip_zeros=True)
    _, (fn, plain) = compile_gemms([spec, GemmSpec(layout, n=n)])
    rng = np.random.default_rng(12)
    op_a = rng.standard_normal((m, k)).astype(np.float32)
    op_a[:, [3, KC + 7, KC + 39]] = 0.0              # zero for every row tile, in both k blocks
    op_b = rng.standard_normal((k, n)).astype(np.float32)
    op_b[3, 5] = np.inf
    op_b[KC + 7, n - 1] = -np.inf
    op_b[KC + 39, nr + 6] = np.nan
    a = np.ascontiguousarray(op_a.T if spec.trans_a else op_a)
    b = np.ascontiguousarray(op_b.T if spec.trans_b else op_b)
    got, want = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
    fn(a.ctypes.data, b.ctypes.data, got.ctypes.data, m, n, k)
    plain(a.ctypes.data, b.ctypes.data, want.ctypes.data, m, n, k)
    assert np.isnan(got[:, [5, n - 1, nr + 6]]).all()
    np.testing.assert_array_equal(got, want)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got, op_a.astype(np.float64) @ op_b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lanes", LANES)
def test_compiler_cases(lanes):
    """The mixes the compiler emits: forward x@W and dX = dY@W^T with a runtime batch m, and
    dW = X^T@dY with a runtime batch k; feature sizes constant, including Dense(10)'s n = 10."""
    features = [(784, 512), (512, 10), (100, 65)]  # (inputs, outputs)
    specs, shapes = [GemmSpec("TN", m=100, n=65, accumulate=True)], []
    for inputs, outputs in features:
        specs.append(GemmSpec("NN", n=outputs, k=inputs))
        specs.append(GemmSpec("NT", n=inputs, k=outputs))
        specs.append(GemmSpec("TN", m=inputs, n=outputs))
        for batch in (1, 7, 32, 37):
            shapes += [(batch, outputs, inputs), (batch, inputs, outputs), (inputs, outputs, batch)]
    run_specs(specs, shapes, lanes=None if lanes == HOST_LANES else lanes)


# A^T @ B with few columns and many rows, which emit_gemm computes as C^T = B^T @ A in blocks of
# NARROW_BLOCK rows and transposes into C: one and two vector groups of C^T rows, several blocks and a
# remainder that is not a whole vector, one row past a vector, and k = 0.
NARROW = [(512, 10, 128), (300, 17, 50), (777, 3, 1), (2 * NARROW_BLOCK + 5, 15, 37), (65, 1, 9),
          (520, 10, 0)]


@pytest.mark.parametrize("lanes", LANES)
def test_narrow_columns_are_computed_transposed(lanes):
    run_lanes = None if lanes == HOST_LANES else lanes
    panel = tile_shape(lanes)[1] * lanes         # the host's registers decide the panel width
    assert narrow_product(512, 10, True, False, lanes=lanes) == (10 < panel)
    assert narrow_product(777, 3, True, False, lanes=lanes)
    if lanes == 16:
        assert all(narrow_product(m, n, True, False, lanes=lanes) for m, n, _ in NARROW)
    assert not narrow_product(512, 10, False, False, lanes=lanes)   # A not transposed
    assert not narrow_product(4 * lanes - 1, 10, True, False, lanes=lanes)  # too few rows
    assert not narrow_product(512, 4 * lanes, True, False, lanes=lanes)  # whole vectors already
    specs = [GemmSpec("TN", m, n, accumulate=acc) for m, n, _ in NARROW for acc in (False, True)]
    jit, _ = compile_gemms([GemmSpec("TN", 777, 3)], lanes=run_lanes)
    assert "kcompile.gemm.store_t" in jit.optimized_ir
    run_specs(specs, NARROW, lanes=run_lanes)


def test_narrow_columns_write_a_block_of_a_larger_c_only():
    """ldc > n: the transposed store writes n columns of each row and nothing past them."""
    M, K, N, c0, n = 300, 20, 40, 3, 10
    module = ir.Module("narrow_ld")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR]), "g")
    a, b, c = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    b_block = builder.gep(b, [ir.Constant(I64, c0)], source_etype=ir.FloatType())
    c_block = builder.gep(c, [ir.Constant(I64, c0)], source_etype=ir.FloatType())
    assert narrow_product(M, n, True, False)
    emit_gemm(builder, a, b_block, c_block, M, n, K, trans_a=True, ldb=N, ldc=N, accumulate=True)
    builder.ret_void()
    jit = JitModule(module)
    f = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3)(jit.address("g"))
    rng = np.random.default_rng(3)
    A = rng.standard_normal((K, M)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    C = np.full((M, N), 5.0, np.float32)
    f(A.ctypes.data, B.ctypes.data, C.ctypes.data)
    expected = 5.0 + A.T.astype(np.float64) @ B[:, c0:c0 + n].astype(np.float64)
    np.testing.assert_allclose(C[:, c0:c0 + n], expected, rtol=1e-5, atol=1e-4)
    outside = np.ones_like(C, bool)
    outside[:, c0:c0 + n] = False
    assert (C[outside] == 5.0).all()


def test_float64():
    specs = [GemmSpec(layout, accumulate=acc) for layout in LAYOUTS for acc in (False, True)]
    specs += [GemmSpec("NN", n=65, k=100), GemmSpec("TN", m=37, n=17)]
    shapes = [(m, n, k) for m, n, k in GRID if (m + n + k) % 3 == 0] + BIG
    run_specs(specs, shapes, dtype=ir.DoubleType())


def test_empty_and_zero_k():
    """k == 0 gives C = 0 (or leaves C when accumulating); m or n == 0 writes nothing."""
    specs = [GemmSpec("NN"), GemmSpec("NT", k=0), GemmSpec("TN", accumulate=True)]
    _, fns = compile_gemms(specs)
    c = np.full((5, 7), 3.0, np.float32)
    a = np.ones((5, 1), np.float32)
    fns[0](a.ctypes.data, a.ctypes.data, c.ctypes.data, 5, 7, 0)
    assert (c == 0).all()
    c[...] = 3.0
    fns[1](a.ctypes.data, a.ctypes.data, c.ctypes.data, 5, 7, 0)
    assert (c == 0).all()
    c[...] = 3.0
    fns[2](a.ctypes.data, a.ctypes.data, c.ctypes.data, 5, 7, 0)
    assert (c == 3.0).all()
    for m, n in ((0, 7), (5, 0)):
        fns[0](a.ctypes.data, a.ctypes.data, c.ctypes.data, m, n, 1)
        assert (c == 3.0).all()


def test_caller_scratch_and_non_entry_block(monkeypatch):
    """A caller-provided scratch buffer; and a gemm emitted outside the entry block (its alloca
    still goes to the entry block)."""
    from codegen import gemm
    panel = tile_shape(HOST_LANES)[1] * HOST_LANES
    monkeypatch.setattr(gemm, "PACK_FULL_PANELS", False)
    assert scratch_elements(2 * panel, 100) == 0   # whole panels read in place
    assert scratch_elements(2 * panel + 1, 100) > 0    # the column tail is packed
    monkeypatch.setattr(gemm, "PACK_FULL_PANELS", True)
    assert scratch_elements(2 * panel, 100) >= 100 * panel
    monkeypatch.setattr(gemm, "PACK_FULL_PANELS", None)
    need = scratch_elements(65, 100, trans_b=True)
    assert need > 0
    module = ir.Module("scratch")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, PTR, I64]), "g")
    a, b, c, scratch, m = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    emit_gemm(builder, a, b, c, m, 65, 100, trans_b=True, scratch_ptr=scratch)
    with builder.if_then(builder.icmp_signed(">", m, ir.Constant(I64, 0))):
        emit_gemm(builder, a, b, c, m, 65, 100, trans_b=True, accumulate=True)
    builder.ret_void()
    assert "alloca" in str(fn.entry_basic_block)
    jit = JitModule(module)
    f = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4, ctypes.c_int64)(jit.address("g"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 100)).astype(np.float32)
    w = rng.standard_normal((65, 100)).astype(np.float32)
    out = np.zeros((9, 65), np.float32)
    buf = np.full(need, np.nan, np.float32)
    f(x.ctypes.data, w.ctypes.data, out.ctypes.data, buf.ctypes.data, 9)
    np.testing.assert_allclose(out, 2 * (x @ w.T), rtol=1e-4, atol=1e-4)
    assert not np.isnan(buf).all()  # the panel was packed there


def test_tile_shapes():
    assert tile_shape(16, 32, "+avx512f,+avx2,+fma") == (6, 4)
    assert tile_shape(8, 32, "+avx2,+fma") == (4, 3)    # 12 accumulators, fewest broadcasts
    assert tile_shape(4, 32, "+sse2") == (4, 3)
    assert tile_shape(16, 32, "+avx2") == (6, 1)  # a 16-lane vector takes two ymm registers
    assert tile_shape(8, 64, "+avx512f") == (6, 4)


def test_emits_fma_tile_not_dot_loop():
    """The hot loop is the register tile: llvm.fma on vectors of the chosen width."""
    jit, _ = compile_gemms([GemmSpec("NN", n=64, k=28)])
    assert f"llvm.fma.v{HOST_LANES}f32" in jit.optimized_ir or "fmuladd" in jit.optimized_ir


# ---------------------------------------------------------------------------------------------
# codegen.loops


def test_for_range():
    """sum(range(start, stop, step)) with constant and runtime bounds, nested loops, empty ranges."""
    module = ir.Module("loops")
    fn = ir.Function(module, ir.FunctionType(I64, [I64, I64, I64]), "f")
    start, stop, step = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    total = builder.alloca(I64)
    builder.store(ir.Constant(I64, 0), total)
    with for_range(builder, start, stop, step) as i:
        builder.store(builder.add(builder.load(total), i), total)
    # A nested constant loop: adds sum over j < 3 of (j * 1000) * 1 for each of 2 outer iterations.
    with for_range(builder, 0, 2, name="o"):
        with for_range(builder, 0, 3, name="j") as j:
            builder.store(builder.add(builder.load(total), builder.mul(j, ir.Constant(I64, 1000))),
                          total)
    builder.ret(builder.load(total))
    jit = JitModule(module)
    f = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(
        jit.address("f"))
    for args in ((0, 10, 1), (3, 17, 4), (5, 5, 1), (9, 2, 1), (-7, 7, 3)):
        assert f(*args) == sum(range(*args)) + 6000, args
    with pytest.raises(ValueError):
        with for_range(builder, 0, 1, 0):
            pass


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False)])
def test_blocks_of_larger_matrices_through_leading_dimensions(trans_a, trans_b):
    """lda/ldb/ldc let a caller multiply a block of rows or columns in place: the block results
    must equal the same block of the full product, and C outside the block stays untouched."""
    M, N, K = 37, 150, 29
    r0, r1, c0, c1 = 7, 30, 16, 99   # a row block of op(A) and a column block of op(B)
    module = ir.Module("ld")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64]), "g")
    a, b, c, rows = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    a_block = builder.gep(a, [ir.Constant(I64, r0 if trans_a else r0 * K)], source_etype=ir.FloatType())
    b_block = builder.gep(b, [ir.Constant(I64, c0 * K if trans_b else c0)], source_etype=ir.FloatType())
    c_block = builder.gep(c, [ir.Constant(I64, r0 * N + c0)], source_etype=ir.FloatType())
    emit_gemm(builder, a_block, b_block, c_block, rows, c1 - c0, K, trans_a=trans_a, trans_b=trans_b,
              lda=M if trans_a else K, ldb=K if trans_b else N, ldc=N)
    builder.ret_void()
    jit = JitModule(module)   # keep the engine (and its code) alive while f is called
    f = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, ctypes.c_int64)(jit.address("g"))
    rng = np.random.default_rng(7)
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    C = np.full((M, N), 5.0, np.float32)
    f(A.ctypes.data, B.ctypes.data, C.ctypes.data, r1 - r0)
    full = (A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
    np.testing.assert_allclose(C[r0:r1, c0:c1], full[r0:r1, c0:c1], rtol=1e-5, atol=1e-4)
    outside = np.ones_like(C, bool)
    outside[r0:r1, c0:c1] = False
    assert (C[outside] == 5.0).all()


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("layout", ["NN", "TN", "NT"])
def test_prefetching_what_is_read_next_leaves_the_product_unchanged(layout, streams):
    """`then_read` makes the row tiles prefetch other memory (a dW block's epilogue operands): the
    prefetch kernels take extra arguments, which must not shift the ones that compute.  The product
    is bit-for-bit the one without prefetching, for regions shorter and longer than the k steps
    cover, empty, and reaching past the end of their buffer."""
    trans_a, trans_b = LAYOUTS[layout]
    module = ir.Module("then_read")
    for name, count in (("plain", 0), ("pf", streams)):
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR, I64, I64, I64]
                                                 + [PTR, I64] * count), name)
        builder = ir.IRBuilder(fn.append_basic_block("entry"))
        a, b, c, m, n, k, *pairs = fn.args
        emit_gemm(builder, a, b, c, m, n, k, trans_a=trans_a, trans_b=trans_b,
                  then_read=list(zip(pairs[::2], pairs[1::2])))
        builder.ret_void()
    jit = JitModule(module)
    assert jit.optimized_ir.count("call void @llvm.prefetch") >= streams
    plain = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 3)(jit.address("plain"))
    pf = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, *[ctypes.c_int64] * 3,
                          *[ctypes.c_void_p, ctypes.c_int64] * streams)(jit.address("pf"))
    rng = np.random.default_rng(streams)
    other = rng.standard_normal(4096).astype(np.float32)
    for m, n, k in [(48, 512, 32), (37, 130, 28), (6, 64, 1), (13, 17, 100)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        want, got = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
        plain(a.ctypes.data, b.ctypes.data, want.ctypes.data, m, n, k)
        regions = [(other.ctypes.data, other.nbytes), (other.ctypes.data + 4000, 1 << 20),
                   (other.ctypes.data + other.nbytes, 0)][:streams]
        pf(a.ctypes.data, b.ctypes.data, got.ctypes.data, m, n, k,
           *[x for region in regions for x in region])
        np.testing.assert_array_equal(got, want, err_msg=f"{layout} {m}x{n}x{k}")
        ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
