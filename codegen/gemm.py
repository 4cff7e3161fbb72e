"""Register-tiled matrix multiply, emitted inline into a caller's LLVM function.

    emit_gemm(builder, a_ptr, b_ptr, c_ptr, m, n, k, trans_a=..., trans_b=..., accumulate=...)

computes C = op(A) @ op(B) (C += ... with `accumulate`), every operand dense and row-major.

Design (measured on one core of the 2-core AMD EPYC reference machine, float32 128x784x512: the
naive dot-product loop reaches 1.6 GFLOP/s even at O3 with fast-math, a register tile of
splat(A) * row(B) FMAs 270, against an FMA peak of about 287; so only the latter is ever emitted):

* The micro-kernel computes an `mr x (nv * lanes)` tile of C: `mr * nv` vector accumulators carried
  through the k loop in SSA registers; each k step loads `nv` vectors of a row of op(B), broadcasts `mr`
  scalars of op(A) and issues `mr * nv` `llvm.fma` calls.  The tile is chosen so accumulators, the B row
  and a broadcast fit the register file (`tile_shape`: 6 x 4 vectors with 32 registers, 4 x 3 with
  16).
  Column tails narrower than the full tile use taller tiles (12 x 1 or 12 x 2, `tile_rows`), which
  keeps enough independent FMA chains for n = 10.  Each kernel is a separate internal, noinline
  function (LLVM allocates its registers in isolation, and one copy serves every gemm of the module
  with the same dtype, lanes and tile).
* op(A) is read in place, through a row and a column stride the kernel takes as arguments.  Without
  trans_a the `mr` broadcasts come from `mr` rows of A; with trans_a (A stored (k, m)) they are `mr`
  consecutive scalars of one row of A.  So neither layout of A is ever packed, and both share kernels.
* op(B) must give contiguous rows of `nv * lanes` columns.  Without trans_b the full column panels are
  read in place when they are 256 bytes wide or more (AVX-512), and copied into scratch like the
  others when narrower (AVX2, SSE, NEON: see `_packs_full_panels`).  With trans_b (B stored
  (n, k)) each panel is packed (transposed) into a scratch buffer, `lanes x lanes` blocks at a
  time with shuffles in registers; the packing is amortised over every row tile of C.  A column
  tail (n not a multiple of the panel width) is also copied into the scratch buffer, padded to
  whole vectors, so the kernel's B loads never need masks; only C's loads and stores in the last
  vector of a tail tile are masked (`llvm.masked.load/store`).  While a B^T panel's row tiles
  compute, they prefetch the rows of B the next panel will pack (one line per k step); the first
  row tile of a copied panel of an untransposed B prefetches the short rows the next panel will
  copy (`_next_copy_prefetch`).
* Row tails (m not a multiple of mr) use kernels of 8, 4, 2, 1 rows: the binary digits of the remainder.
* Narrow C from a transposed A (dW = X^T dY of Dense(10): 512 x 10, where a row of C fills 10 of 16
  lanes) is computed as C^T = dY^T X, whose rows are long, in blocks of `NARROW_BLOCK` rows of C, and
  transposed into C in registers (`_store_transposed`); X's rows are read in place as B panels
  (one thread, 512 x 128 x 10 against numpy: 0.82-0.88 -> 1.24-1.37, `python -m kcompile.bench
  --workloads gemm --peers none --trials 3`).
* Zero skipping (`skip_zeros`, an option, off in the compiler: see codegen.lower.SKIP_ZEROS): before
  the panels of an m block, each full row tile lists the k steps where one of its `mr` rows of
  op(A) is not zero (`_zero_skip_list`, branch-free), and its kernel's k loop then runs over that
  list, for every column panel (a branch per k step instead measured 1.1-1.4x slower: the zero
  pattern is not predictable).  Steps whose row of op(B) holds an inf or NaN are always listed, so
  that 0 * inf is NaN as in the dense product.  Activations after relu and Dropout and their
  gradients are mostly zero: after an epoch of W1, 86% of the second layer's inputs, and 31-58% of
  the k steps of its large products' row tiles.
* Cache blocking: k in blocks of at most `KC` (the B panel, `KC x nv*lanes`, stays in L2 while every row
  tile of C streams over it), m in blocks of `MC` rows (the A block `MC x KC` stays in L2 across
  panels).  The second and later k blocks add to C.

Epilogues (bias, activation) are NOT fused here: callers run them as a separate loop over C, which is
still hot in cache for the shapes of a training step.  See `emit_gemm`'s docstring.

All loads and stores of user memory claim `align 4` only: numpy buffers are 16-byte aligned at best.
"""
from __future__ import annotations

import math
import weakref

from llvmlite import ir

from . import target
from .loops import I64, for_range, i64, smin

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)

#: Largest k block (elements of the contracted dimension processed per pass over C).
KC = 512
#: Rows of C per m block (a multiple of every row tile used).
MC = 240
# NOTE: kernels and packers are `noinline`: one copy serves every call site of the module.  Measured on
# the benchmark's 9 gemms: compile 1.28 s -> 0.99 s, run time unchanged (the k loop does not benefit
# from constant strides; the call costs nothing next to a tile's k loop).
_NOINLINE = True
_PREFETCH_NEXT_PANEL = True
#: The first row tile of a copied panel of an untransposed B prefetches the rows the next panel
#: will copy, for k blocks of at least PREFETCH_COPY_MIN_K rows (see `_next_copy_prefetch`).
PREFETCH_NEXT_COPY = True
PREFETCH_COPY_MIN_K = 256
#: Each row tile of a k loop of at most PREFETCH_C_MAX_K steps prefetches (for writing) the lines
#: of its C tile before the loop, so that the misses of C's lines overlap the tile's FMAs instead
#: of stalling its stores (see `_kernel`; emit_gemm's `prefetch_c` turns it off for a C in cache).
PREFETCH_C = True
PREFETCH_C_MAX_K = 256
#: A transposed A's m blocks are copied as contiguous row tiles (`_pack_a_tiles`) when an m block
#: of its k block takes at most PACK_A_MAX_BYTES, its k block has PACK_A_MIN_K steps or more (a
#: shorter one stays in L1 as it is), and emit_gemm's scratch is its own (no `scratch_ptr`).
PACK_A = True
PACK_A_MAX_BYTES = 256 << 10
PACK_A_MIN_K = 64
#: Copy the full column panels of an untransposed B into scratch as well (True), read them in place
#: (False), or decide by the panel's width (None, see `_packs_full_panels`).
PACK_FULL_PANELS = None

_KERNEL_PREFIX = "kcompile.gemm"


# --------------------------------------------------------------------------------------------------
# Tile selection

def vector_registers(features: str | None = None) -> int:
    """Architectural vector registers: 32 with AVX-512 (zmm/ymm/xmm 0-31) or on aarch64, else 16."""
    features = target.code_features() if features is None else features
    feats = {f[1:] for f in features.split(",") if f.startswith("+")}
    if "avx512f" in feats or "neon" in feats or "fp-armv8" in feats:
        return 32
    return 16


def _registers_for(lanes: int, dtype_bits: int, features: str | None) -> int:
    """Vector registers available for `lanes`-wide logical vectors (a logical vector wider than the
    hardware's takes several registers)."""
    per_vector = max(1, math.ceil(lanes * dtype_bits / target.vector_bits(features)))
    return vector_registers(features) // per_vector


#: Row counts a tile may have; MC is a multiple of each.
_TILE_ROWS = (12, 8, 6, 4, 3, 2, 1)


def tile_rows(vectors: int, registers: int) -> int:
    """Rows of a tile `vectors` vectors wide: the most whose accumulators, the `vectors` of a B row
    and one broadcast fit in `registers` (6 for 4 vectors in 32 registers, 12 for 1 or 2)."""
    for rows in _TILE_ROWS:
        if rows * vectors + vectors + 1 <= registers:
            return rows
    return 1


def tile_shape(lanes: int, dtype_bits: int = 32, features: str | None = None) -> tuple[int, int]:
    """(rows, vectors per row) of the full register tile for `lanes`-wide vectors of `dtype_bits`
    floats: the most accumulators that fit (`tile_rows`), and of those the widest tile, whose k
    step broadcasts fewest A values per FMA: 6 x 4 vectors with 32 registers, 4 x 3 with 16.
    Narrower column tails use taller tiles (`tile_rows`).

    NOTE (AVX2 on a Zen 3 EPYC, W1's GEMMs on one thread, throwaway /tmp/kc9/gab2.py): 4 x 3 (4
    broadcasts and 3 B loads per 12 FMAs) ran 1.12-1.24x faster than 6 x 2 (6 broadcasts, 2
    loads) on the 512-column products, 0.95-1.06x on the others; a broadcast from memory takes a
    slot of the FP pipes the FMAs need.  W1's epoch on two threads (throwaway /tmp/kc9/ab.py,
    both in one process, alternating, six pairs): 0.90 of the time at batch 32, 0.87 at 128.
    With 32 registers, 8 x 3 has as many accumulators as 6 x 4 and more broadcasts, so 6 x 4
    stays (at the FMA peak on a Zen 4 core)."""
    registers = _registers_for(lanes, dtype_bits, features)
    fits = [(tile_rows(vectors, registers) * vectors, vectors) for vectors in (4, 3, 2, 1)
            if tile_rows(vectors, registers) * vectors + vectors + 1 <= registers]
    if not fits:
        return 1, 1
    accumulators, vectors = max(fits)
    return accumulators // vectors, vectors


# --------------------------------------------------------------------------------------------------
# Small emitters

def _is_const(x) -> bool:
    return isinstance(x, int)


def _gep(builder, ptr, index, etype):
    if isinstance(index, int) and index == 0:
        return ptr
    return builder.gep(ptr, [i64(index)], inbounds=True, source_etype=etype)


def _mul(builder, a, b):
    if _is_const(a) and _is_const(b):
        return a * b
    if _is_const(a) and a == 0 or _is_const(b) and b == 0:
        return 0
    if _is_const(a) and a == 1:
        return b
    if _is_const(b) and b == 1:
        return a
    return builder.mul(i64(a), i64(b), flags=("nsw",))


def _add(builder, a, b):
    if _is_const(a) and _is_const(b):
        return a + b
    if _is_const(a) and a == 0:
        return b
    if _is_const(b) and b == 0:
        return a
    return builder.add(i64(a), i64(b), flags=("nsw",))


def _round_down(builder, x, multiple: int):
    """x - x % multiple for x >= 0."""
    if _is_const(x):
        return x - x % multiple
    if multiple & (multiple - 1) == 0:
        return builder.and_(x, i64(~(multiple - 1)))
    return builder.sub(x, builder.urem(x, i64(multiple)), flags=("nsw",))


def _type_tag(dtype) -> str:
    if isinstance(dtype, ir.FloatType):
        return "f32"
    if isinstance(dtype, ir.DoubleType):
        return "f64"
    raise TypeError(f"emit_gemm supports float and double, got {dtype}")


def _intrinsic(module, name: str, ret, args):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return fn


class _Vec:
    """Vector helpers for one (module, dtype, lanes)."""

    def __init__(self, module, dtype, lanes: int):
        self.module, self.dtype, self.lanes = module, dtype, lanes
        self.type = ir.VectorType(dtype, lanes)
        self.mask_type = ir.VectorType(I1, lanes)
        suffix = f"v{lanes}{_type_tag(dtype)}"
        # NOTE: llvm.fmuladd becomes one FMA instruction where the CPU has one and mul+add where it
        # does not; llvm.fma would become a libm call per lane on a CPU without FMA.
        fma = "llvm.fma" if target.has_fma() else "llvm.fmuladd"
        self._fma = _intrinsic(module, f"{fma}.{suffix}", self.type, [self.type] * 3)
        ptr = ir.PointerType()
        # The 4-argument form (explicit alignment) is what llvmlite's older LLVMs require; LLVM 22
        # auto-upgrades it to an `align` attribute on the pointer.
        self._mload = _intrinsic(module, f"llvm.masked.load.{suffix}.p0", self.type,
                                 [ptr, I32, self.mask_type, self.type])
        self._mstore = _intrinsic(module, f"llvm.masked.store.{suffix}.p0", ir.VoidType(),
                                  [self.type, ptr, I32, self.mask_type])
        self.prefetch = _intrinsic(module, "llvm.prefetch.p0", ir.VoidType(), [ptr, I32, I32, I32])
        self.zero = ir.Constant(self.type, None)
        self.iota = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))

    def fma(self, builder, a, b, c):
        return builder.call(self._fma, [a, b, c])

    def splat(self, builder, scalar):
        vec = builder.insert_element(ir.Constant(self.type, ir.Undefined), scalar, ir.Constant(I32, 0))
        return builder.shuffle_vector(vec, ir.Constant(self.type, ir.Undefined),
                                      ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes))

    def load(self, builder, ptr):
        return builder.load(ptr, typ=self.type, align=4)

    def store(self, builder, value, ptr):
        builder.store(value, ptr, align=4)

    def lane_mask(self, builder, count):
        """<lanes x i1>: lane < count (count an i64)."""
        splat = builder.insert_element(ir.Constant(ir.VectorType(I64, self.lanes), ir.Undefined),
                                       i64(count), ir.Constant(I32, 0))
        splat = builder.shuffle_vector(splat, ir.Constant(ir.VectorType(I64, self.lanes), ir.Undefined),
                                       ir.Constant(ir.VectorType(I32, self.lanes), [0] * self.lanes))
        return builder.icmp_signed("<", self.iota, splat)

    def masked_load(self, builder, ptr, mask):
        return builder.call(self._mload, [ptr, ir.Constant(I32, 4), mask, self.zero])

    def masked_store(self, builder, value, ptr, mask):
        builder.call(self._mstore, [value, ptr, ir.Constant(I32, 4), mask])


def _function(module, name, args, names=(), noalias=(), returns=None):
    """(fn, True): a new internal function `name` (void, or returning `returns`) for the caller to
    define, its parameters named by `names` in order, `noalias` (indices) marking pointer
    parameters that alias nothing else; or (fn, False) when the module has `name` already (one
    copy serves every call site)."""
    fn = module.globals.get(name)
    if fn is not None:
        return fn, False
    fn = ir.Function(module, ir.FunctionType(returns or ir.VoidType(), args), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    if _NOINLINE:
        fn.attributes.add("noinline")
    for arg, nm in zip(fn.args, names):
        arg.name = nm
    for index in noalias:
        fn.args[index].add_attribute("noalias")
    return fn, True


# --------------------------------------------------------------------------------------------------
# Micro-kernel

def _kernel(vec: _Vec, rows: int, nvec: int, masked: bool, prefetch: int = 0, listed: bool = False,
            prefetch_c: bool = False):
    """void kernel(a, a_rs, a_cs, b, ldb, c, ldc, k, load_c, ncols_last[, prefetch..., prefetch_step]
    [, steps]).

    C[r, v*L + l] (+)= sum_p opA[r, p] * B[p, v*L + l] for r < rows, v < nvec, with B rows `ldb` apart
    and opA[r, p] = a[r*a_rs + p*a_cs]: (lda, 1) reads A in place, (1, lda) reads it transposed (one
    kernel serves both layouts: a stride costs the k loop nothing, a second kernel costs compile time).
    With `masked`, only the first `ncols_last` lanes of the last vector of each C row are read and
    written.  With `prefetch` = s > 0 streams, k step p also prefetches (into L2) the byte
    `prefetch_i + p * prefetch_step` of each stream i: how row tiles pull in memory that is read
    after them (the next panel of B to pack, an epilogue's operands) while they compute.
    With `listed`, the k loop visits only the `k` steps listed in `steps` (an i16 array, see
    `_zero_skip_list`): the steps where some of the tile's A values is not zero; with `prefetch`
    too, the lines of the skipped steps (`steps_total` - k of them) are prefetched after the loop,
    so that the streams are fetched whole (an update reading them after the product relies on it).
    """
    module, T, L = vec.module, vec.dtype, vec.lanes
    pf = "" if not prefetch else ".pf" if prefetch == 1 else f".pf{prefetch}"
    name = (f"{_KERNEL_PREFIX}.kernel.{_type_tag(T)}x{L}.{rows}x{nvec}{'.masked' if masked else ''}{pf}"
            f"{'.listed' if listed else ''}{'.pc' if prefetch_c else ''}")
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, I64, I64, ptr, I64, ptr, I64, I64, I1, I64]
                        + [ptr] * prefetch + ([I64] if prefetch else [])
                        + ([ptr] + ([I64] if prefetch else []) if listed else []),
                        ("a", "a_rs", "a_cs", "b", "ldb", "c", "ldc", "k", "load_c", "ncols_last")
                        + tuple(f"prefetch{i}" for i in range(prefetch))
                        + (("prefetch_step",) if prefetch else ())
                        + (("steps",) + (("steps_total",) if prefetch else ()) if listed else ()),
                        noalias=(0, 3, 5))
    if not new:
        return fn
    a, a_rs, a_cs, b, ldb, c, ldc, k, load_c, ncols_last = fn.args[:10]

    entry = fn.append_basic_block("entry")
    body = fn.append_basic_block("k.body")
    done = fn.append_basic_block("k.done")
    addc = fn.append_basic_block("add_c")
    store = fn.append_basic_block("store")
    bld = ir.IRBuilder(entry)

    a_rows = [_gep(bld, a, _mul(bld, r, a_rs), T) for r in range(rows)]
    if prefetch_c:
        # Every line of the C tile (its rows need not be line-aligned: the last byte's line too),
        # for writing, into L1: C is read or written only after the k loop.  Only for loops of
        # PREFETCH_C_MAX_K steps at most: a longer one streams more of B through L1 than the
        # lines would survive.
        row_bytes = nvec * L * (_dtype_bits(T) // 8)
        offsets = sorted(set(range(0, row_bytes, 64)) | {row_bytes - 1})
        fetch = fn.append_basic_block("prefetch_c")
        guard = fn.append_basic_block("k.guard")
        bld.cbranch(bld.icmp_signed("<=", k, i64(PREFETCH_C_MAX_K)), fetch, guard)
        bld.position_at_end(fetch)
        for r in range(rows):
            c_row = _gep(bld, c, _mul(bld, r, ldc), T)
            for offset in offsets:
                address = bld.gep(c_row, [i64(offset)], source_etype=ir.IntType(8))
                bld.call(vec.prefetch, [address, ir.Constant(I32, 1), ir.Constant(I32, 3),
                                        ir.Constant(I32, 1)])
        bld.branch(guard)
        bld.position_at_end(guard)
        entry = guard        # (the k loop's phis come from here)
    bld.cbranch(bld.icmp_signed(">", k, i64(0)), body, done)

    # k loop, rotated (guard in entry, test at the bottom) with the accumulators as phis.
    bld.position_at_end(body)
    p = bld.phi(I64, name="p")
    p.add_incoming(i64(0), entry)
    accs = []
    for r in range(rows):
        row = []
        for v in range(nvec):
            phi = bld.phi(vec.type, name=f"acc{r}_{v}")
            phi.add_incoming(vec.zero, entry)
            row.append(phi)
        accs.append(row)
    step_index = p
    steps_arg = fn.args[10 + prefetch + (1 if prefetch else 0)] if listed else None
    if listed:
        step_index = bld.zext(bld.load(_gep(bld, steps_arg, p, I16), typ=I16, align=2), I64)
    b_row = _gep(bld, b, bld.mul(step_index, ldb, flags=("nsw",)), T)
    b_vecs = [vec.load(bld, _gep(bld, b_row, v * L, T)) for v in range(nvec)]
    a_step = bld.mul(step_index, a_cs, flags=("nsw",))
    a_ptrs = [_gep(bld, a_rows[r], a_step, T) for r in range(rows)]
    new_accs = []
    for r in range(rows):
        a_splat = vec.splat(bld, bld.load(a_ptrs[r], typ=T, align=4))
        new_accs.append([vec.fma(bld, a_splat, b_vecs[v], accs[r][v]) for v in range(nvec)])
    def prefetch_line(bld, line):
        # NOTE: a plain (not inbounds) gep: the address may lie past the end of its buffer, which a
        # prefetch tolerates.
        step = bld.mul(line, fn.args[10 + prefetch])
        for i in range(prefetch):
            address = bld.gep(fn.args[10 + i], [step], source_etype=ir.IntType(8))
            bld.call(vec.prefetch, [address, ir.Constant(I32, 0), ir.Constant(I32, 2),
                                    ir.Constant(I32, 1)])

    if prefetch and not listed:
        prefetch_line(bld, p)
    p_next = bld.add(p, i64(1), flags=("nsw", "nuw"))
    p.add_incoming(p_next, body)
    for r in range(rows):
        for v in range(nvec):
            accs[r][v].add_incoming(new_accs[r][v], body)
    bld.cbranch(bld.icmp_signed("<", p_next, k), body, done)

    bld.position_at_end(done)
    results = []
    for r in range(rows):
        row = []
        for v in range(nvec):
            phi = bld.phi(vec.type)
            phi.add_incoming(vec.zero, entry)
            phi.add_incoming(new_accs[r][v], body)
            row.append(phi)
        results.append(row)
    if listed and prefetch:
        # every line, after the loop (prefetches in the listed loop cost it registers)
        total = fn.args[-1]
        before = bld.block
        tail = fn.append_basic_block("pf.tail")
        tail_done = fn.append_basic_block("pf.done")
        bld.cbranch(bld.icmp_signed("<", i64(0), total), tail, tail_done)
        bld.position_at_end(tail)
        line = bld.phi(I64, name="line")
        line.add_incoming(i64(0), before)
        prefetch_line(bld, line)
        line_next = bld.add(line, i64(1), flags=("nsw", "nuw"))
        line.add_incoming(line_next, tail)
        bld.cbranch(bld.icmp_signed("<", line_next, total), tail, tail_done)
        bld.position_at_end(tail_done)
    mask = vec.lane_mask(bld, ncols_last) if masked else None
    c_rows = [_gep(bld, c, _mul(bld, r, ldc), T) for r in range(rows)]
    c_ptrs = [[_gep(bld, c_rows[r], v * L, T) for v in range(nvec)] for r in range(rows)]
    results_block = bld.block
    bld.cbranch(load_c, addc, store)

    def is_masked(v):
        return masked and v == nvec - 1

    bld.position_at_end(addc)
    summed = []
    for r in range(rows):
        row = []
        for v in range(nvec):
            old = (vec.masked_load(bld, c_ptrs[r][v], mask) if is_masked(v)
                   else vec.load(bld, c_ptrs[r][v]))
            row.append(bld.fadd(results[r][v], old))
        summed.append(row)
    bld.branch(store)

    bld.position_at_end(store)
    final = []
    for r in range(rows):
        for v in range(nvec):
            phi = bld.phi(vec.type)
            phi.add_incoming(results[r][v], results_block)
            phi.add_incoming(summed[r][v], addc)
            final.append((r, v, phi))
    for r, v, value in final:
        if is_masked(v):
            vec.masked_store(bld, value, c_ptrs[r][v], mask)
        else:
            vec.store(bld, value, c_ptrs[r][v])
    bld.ret_void()
    return fn


def _zero_skip_list(vec: _Vec, rows: int, flags: bool = True, unit_steps: bool = False):
    """void list(a, a_rs, a_cs, k, steps, count, nonfinite): the steps p < k at which some opA[r, p]
    (r < rows, addressed as in `_kernel`) is not zero (+0 or -0; a NaN is not zero), or whose row of
    op(B) holds an inf or NaN (`nonfinite[p]`, see `_nonfinite_steps`), in order, into `steps` (i16),
    and how many into `*count` (i64).  A listed kernel then skips the others: their FMAs would add
    exact zeros (x + 0*b == x for every finite b), so C is the same bit for bit (but for a zero's
    sign).  Without `flags` (op(B) known finite: the one-row GEMV) `nonfinite` is not read; with
    `unit_steps` a_cs is taken to be 1 (NOTE: the GEMM library is compiled without IR passes, so
    a runtime stride stays a multiply per step: 5-7% of a one-sample predict's native call in
    in-process A/Bs)."""
    module, T = vec.module, vec.dtype
    ptr = ir.PointerType()
    name = (f"{_KERNEL_PREFIX}.zero_skip_list.{_type_tag(T)}.{rows}{'' if flags else '.finite'}"
            f"{'.unit' if unit_steps else ''}")
    fn, new = _function(module, name, [ptr, I64, I64, I64, ptr, ptr, ptr],
                        ("a", "a_rs", "a_cs", "k", "steps", "count", "nonfinite"),
                        noalias=(0, 4, 5, 6))
    if not new:
        return fn
    a, a_rs, a_cs, k, steps, count, nonfinite = fn.args
    bits = ir.IntType(_dtype_bits(T))
    magnitude_mask = ir.Constant(bits, (1 << (bits.width - 1)) - 1)
    entry = fn.append_basic_block("entry")
    body = fn.append_basic_block("body")
    done = fn.append_basic_block("done")
    bld = ir.IRBuilder(entry)
    a_rows = [_gep(bld, a, _mul(bld, r, a_rs), T) for r in range(rows)]
    bld.cbranch(bld.icmp_signed(">", k, i64(0)), body, done)
    bld.position_at_end(body)
    p = bld.phi(I64, name="p")
    n = bld.phi(I64, name="n")
    p.add_incoming(i64(0), entry)
    n.add_incoming(i64(0), entry)
    a_step = p if unit_steps else bld.mul(p, a_cs, flags=("nsw",))
    word = None
    for r in range(rows):
        value = bld.bitcast(bld.load(_gep(bld, a_rows[r], a_step, T), typ=T, align=4), bits)
        word = value if word is None else bld.or_(word, value)
    nonzero = bld.icmp_unsigned("!=", bld.and_(word, magnitude_mask), ir.Constant(bits, 0))
    listed = nonzero
    if flags:
        b_flag = bld.load(_gep(bld, nonfinite, p, I8), typ=I8, align=1)
        listed = bld.or_(nonzero, bld.icmp_unsigned("!=", b_flag, ir.Constant(I8, 0)))
    # Branch-free: every step is written at the next free slot, which only a listed step takes.
    bld.store(bld.trunc(p, I16), _gep(bld, steps, n, I16), align=2)
    n_next = bld.add(n, bld.zext(listed, I64), flags=("nsw", "nuw"))
    p_next = bld.add(p, i64(1), flags=("nsw", "nuw"))
    p.add_incoming(p_next, body)
    n.add_incoming(n_next, body)
    bld.cbranch(bld.icmp_signed("<", p_next, k), body, done)
    bld.position_at_end(done)
    total = bld.phi(I64)
    total.add_incoming(i64(0), entry)
    total.add_incoming(n_next, body)
    bld.store(total, count, align=8)
    bld.ret_void()
    return fn


#: Steps (i16) each row tile's list of `tile_zero_lists` has room for: KC and one vector more
#: (its last vector writes up to a vector past the listed steps).
TILE_LIST_STRIDE = KC + 64


def tile_zero_lists(module, dtype, rows: int, lanes: int | None = None) -> ir.Function:
    """i64 lists(a, lda, tiles, k, steps, counts): for each full row tile t < tiles of A (row-major,
    rows `lda` apart; tile t is rows t*rows.. of it), the steps p < k (k <= KC) at which one of its
    rows is not zero (+0 or -0; a NaN is not zero), in order, into steps[t * TILE_LIST_STRIDE..]
    (i16), how many into counts[t] (i64); returns the steps listed over all tiles.  A vector of
    steps at a time: the tile's rows ORed (magnitude bits), then each lane's step stored at the
    next free slot, which only a listed step takes (branch-free).  The lists of a product that
    every column block of it shares: computed once, where `_zero_skip_list` lists a tile per
    gemm call."""
    T = dtype
    L = lanes or target.vector_lanes(_dtype_bits(T))
    name = f"{_KERNEL_PREFIX}.tile_zero_lists.{_type_tag(T)}x{L}.{rows}"
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, I64, I64, I64, ptr, ptr],
                        ("a", "lda", "tiles", "k", "steps", "counts"), returns=I64)
    if not new:
        return fn
    a, lda, tiles, k, steps, counts = fn.args
    vec = _Vec(module, T, L)
    bits = ir.IntType(_dtype_bits(T))
    int_vec = ir.VectorType(bits, L)
    magnitude = ir.Constant(int_vec, [(1 << (bits.width - 1)) - 1] * L)
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    total_slot = bld.alloca(I64)
    bld.store(i64(0), total_slot)
    with for_range(bld, 0, tiles, name="t") as t:
        first = bld.mul(bld.mul(t, i64(rows)), lda)
        tile_steps = _gep(bld, steps, bld.mul(t, i64(TILE_LIST_STRIDE)), I16)

        def one_vector(p, n, mask):
            word = None
            for r in range(rows):
                at = _gep(bld, a, bld.add(first, bld.add(bld.mul(i64(r), lda), p)), T)
                value = vec.masked_load(bld, at, mask) if mask is not None else vec.load(bld, at)
                value = bld.and_(bld.bitcast(value, int_vec), magnitude)
                word = value if word is None else bld.or_(word, value)
            nonzero = bld.icmp_unsigned("!=", word, ir.Constant(int_vec, None))
            for lane in range(L):
                bld.store(bld.trunc(bld.add(p, i64(lane)), I16), _gep(bld, tile_steps, n, I16),
                          align=2)
                n = bld.add(n, bld.zext(bld.extract_element(nonzero, ir.Constant(I32, lane)), I64),
                            flags=("nsw", "nuw"))
            return n

        whole = _round_down(bld, k, L)
        n = _carried_range(bld, 0, whole, L, i64(0), lambda p, n: one_vector(p, n, None),
                           name="p")
        rest = bld.sub(k, whole)
        before = bld.block
        tail = fn.append_basic_block("tail")
        after = fn.append_basic_block("after")
        bld.cbranch(bld.icmp_signed(">", rest, i64(0)), tail, after)
        bld.position_at_end(tail)
        n_tail = one_vector(whole, n, vec.lane_mask(bld, rest))
        tail_end = bld.block
        bld.branch(after)
        bld.position_at_end(after)
        count = bld.phi(I64)
        count.add_incoming(n, before)
        count.add_incoming(n_tail, tail_end)
        bld.store(count, _gep(bld, counts, t, I64), align=8)
        bld.store(bld.add(bld.load(total_slot, typ=I64), count), total_slot)
    bld.ret(bld.load(total_slot, typ=I64))
    return fn


def _nonfinite_steps(vec: _Vec, trans_b: bool):
    """void flags(b, ldb, k, n, out): out[p] (i8) = whether row p < k of op(B) (its n columns; B
    stored (k, n), or (n, k) with trans_b, rows `ldb` apart) holds an inf or NaN.  A zero of A facing
    one must not be skipped (0 * inf is NaN), so `_zero_skip_list` lists those steps too.  One pass
    over the operand per k block, in vectors: the largest of each lane's exponent bits (an unsigned
    max, no compare in the loop) is all ones exactly when one of its values is an inf or NaN; tails
    masked; `out` must have room for k rounded up to the lanes.
    NOTE: LLVM left the first, scalar version of this loop (an i8 OR per element) scalar: for dW1's
    row blocks it cost more than zero skipping saved (W1's step, one thread, in-process A/B)."""
    module, T, L = vec.module, vec.dtype, vec.lanes
    ptr = ir.PointerType()
    name = f"{_KERNEL_PREFIX}.nonfinite_steps.{_type_tag(T)}x{L}{'.t' if trans_b else ''}"
    fn, new = _function(module, name, [ptr, I64, I64, I64, ptr], ("b", "ldb", "k", "n", "out"),
                        noalias=(0, 4))
    if not new:
        return fn
    b, ldb, k, n, out = fn.args
    bits = ir.IntType(_dtype_bits(T))
    int_vec = ir.VectorType(bits, L)
    exponent = ((1 << (bits.width - 1)) - 1) & ~((1 << (23 if bits.width == 32 else 52)) - 1)
    exponents = ir.Constant(int_vec, [exponent] * L)
    umax = _intrinsic(module, f"llvm.umax.v{L}i{bits.width}", int_vec, [int_vec, int_vec])
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    none = ir.Constant(int_vec, None)

    def add(acc, ptr, mask):
        """max(acc, exponent bits of the L values at ptr), masked lanes reading zero."""
        value = vec.masked_load(bld, ptr, mask) if mask is not None else vec.load(bld, ptr)
        return bld.call(umax, [acc, bld.and_(bld.bitcast(value, int_vec), exponents)])

    # NOTE: the accumulators are phis (_carried_range), not a stack slot: the GEMM library is
    # compiled without IR passes, so nothing would promote one (a store and reload per vector).
    if trans_b:
        # out[q:q+L]: the stored rows j's values q..q+L (contiguous), masked at k
        with for_range(bld, 0, k, L, name="q") as q:
            mask = vec.lane_mask(bld, smin(bld, i64(L), bld.sub(k, q)))
            acc = _carried_range(bld, 0, n, 1, none, lambda j, acc: add(
                acc, _gep(bld, b, bld.add(bld.mul(j, ldb), q), T), mask), name="j")
            flags = bld.icmp_unsigned("==", acc, exponents)
            bld.store(bld.zext(flags, ir.VectorType(I8, L)), _gep(bld, out, q, I8), align=1)
    else:
        whole = _round_down(bld, n, L)
        tail_mask = vec.lane_mask(bld, bld.sub(n, whole))   # (all false when n is whole vectors)
        with for_range(bld, 0, k, name="p") as p:
            row = _gep(bld, b, bld.mul(p, ldb), T)
            acc = _carried_range(bld, 0, whole, L, none, lambda index, acc: add(
                acc, _gep(bld, row, index, T), None), name="v")
            acc = add(acc, _gep(bld, row, whole, T), tail_mask)
            flags = bld.icmp_unsigned("==", acc, exponents)
            any_flag = bld.icmp_unsigned("!=", bld.bitcast(flags, ir.IntType(L)),
                                         ir.Constant(ir.IntType(L), 0))
            bld.store(bld.zext(any_flag, I8), _gep(bld, out, p, I8), align=1)
    bld.ret_void()
    return fn


def _carried_range(bld: ir.IRBuilder, start, stop, step: int, init, update, name: str):
    """acc = init; for i in range(start, stop, step): acc = update(i, acc); the final acc.  The
    accumulator is a phi beside for_range's index (for code compiled without IR passes, see
    _nonfinite_steps)."""
    preheader = bld.block
    with for_range(bld, start, stop, step, name=name) as index:
        head = index.parent
        acc = ir.IRBuilder(head)
        acc.position_at_start(head)
        acc = acc.phi(init.type, name=f"{name}.acc")
        acc.add_incoming(init, preheader)
        acc.add_incoming(update(index, acc), bld.block)
    return acc


# --------------------------------------------------------------------------------------------------
# Packing of op(B) panels into scratch

def _transpose(builder, vec: _Vec, rows):
    """Transpose a lanes x lanes block held as `lanes` vectors (lanes a power of two).

    Stage b swaps bit b of the row index with bit b of the column index, so after one stage per bit
    every element (i, j) sits at (j, i).
    """
    L = vec.lanes
    rows = list(rows)
    mask_t = ir.VectorType(I32, L)
    b = L // 2
    while b >= 1:
        lo_mask = ir.Constant(mask_t, [j if j & b == 0 else L + j - b for j in range(L)])
        hi_mask = ir.Constant(mask_t, [j + b if j & b == 0 else L + j for j in range(L)])
        for i in range(L):
            if i & b:
                continue
            x, y = rows[i], rows[i + b]
            rows[i] = builder.shuffle_vector(x, y, lo_mask)
            rows[i + b] = builder.shuffle_vector(x, y, hi_mask)
        b //= 2
    return rows


class _FiniteCheck:
    """The exponent bits of every value `_pack_copy` loads, folded with an unsigned max (as
    `_nonfinite_steps`): a lane ends all ones exactly when one of its values was an inf or NaN.
    Masked-off lanes load zero."""

    def __init__(self, module, vec: _Vec):
        bits = ir.IntType(_dtype_bits(vec.dtype))
        self.int_vec = ir.VectorType(bits, vec.lanes)
        exponent = ((1 << (bits.width - 1)) - 1) & ~((1 << (23 if bits.width == 32 else 52)) - 1)
        self.exponents = ir.Constant(self.int_vec, [exponent] * vec.lanes)
        self.zero = ir.Constant(self.int_vec, None)
        self.lanes = vec.lanes
        self._umax = _intrinsic(module, f"llvm.umax.v{vec.lanes}i{bits.width}", self.int_vec,
                                [self.int_vec, self.int_vec])

    def fold(self, bld, acc, value):
        return bld.call(self._umax, [acc, bld.and_(bld.bitcast(value, self.int_vec),
                                                   self.exponents)])

    def finite(self, bld, acc):
        flags = bld.icmp_unsigned("==", acc, self.exponents)
        return bld.icmp_unsigned("==", bld.bitcast(flags, ir.IntType(self.lanes)),
                                 ir.Constant(ir.IntType(self.lanes), 0))


def _pack_transposed(vec: _Vec, nvec: int):
    """void pack(src, ld, valid, k, dst): dst[p, j] = src[min(j, valid-1)*ld + p] for j < nvec*lanes.

    `src` is B stored (n, k) offset to the panel's first row and the block's first p; `dst` gets
    rows of nvec*lanes elements for p < round_up(k, lanes).  Rows of B past `valid` are clamped to the
    last valid one: the columns they fill are computed but never stored.
    """
    module, T, L = vec.module, vec.dtype, vec.lanes
    name = f"{_KERNEL_PREFIX}.pack_t.{_type_tag(T)}x{L}.{nvec}"
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, I64, I64, I64, ptr], noalias=(0, 4))
    if not new:
        return fn
    src, ld, valid, k, dst = fn.args
    width = nvec * L
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    last = bld.sub(valid, i64(1))
    kceil = _round_down(bld, bld.add(k, i64(L - 1)), L)

    # NOTE: one block body for whole and partial blocks of k (the lanes past k masked off): the
    # shuffles of a transpose are the costliest code of the library to compile, and a masked load
    # of all lanes runs as fast as a plain one.
    with for_range(bld, 0, width, L, name="jb") as jb:
        with for_range(bld, 0, kceil, L, name="p") as p:
            mask = vec.lane_mask(bld, bld.sub(k, p))
            rows = []
            for c in range(L):
                j = smin(bld, _add(bld, jb, c), last)
                rptr = _gep(bld, _gep(bld, src, bld.mul(j, ld, flags=("nsw",)), T), p, T)
                rows.append(vec.masked_load(bld, rptr, mask))
            cols = _transpose(bld, vec, rows)
            for q in range(L):
                dptr = _gep(bld, dst, _add(bld, _mul(bld, _add(bld, p, q), width), jb), T)
                vec.store(bld, cols[q], dptr)
    bld.ret_void()
    return fn


def _pack_copy(vec: _Vec, nvec: int, check: bool = False):
    """void pack(src, ld, valid, k, dst): dst[p, j] = j < valid ? src[p*ld + j] : 0 for j < nvec*lanes.
    With `check` it returns whether every value copied is finite (an i1)."""
    module, T, L = vec.module, vec.dtype, vec.lanes
    name = f"{_KERNEL_PREFIX}.pack_n.{_type_tag(T)}x{L}.{nvec}"
    ptr = ir.PointerType()
    fn, new = _function(module, name + (".chk" if check else ""), [ptr, I64, I64, I64, ptr],
                        noalias=(0, 4), returns=I1 if check else None)
    if not new:
        return fn
    src, ld, valid, k, dst = fn.args
    width = nvec * L
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    masks = [vec.lane_mask(bld, bld.sub(valid, i64(v * L))) for v in range(nvec)]
    checker = _FiniteCheck(module, vec) if check else None

    def row(p, acc):
        srow = _gep(bld, src, bld.mul(p, ld, flags=("nsw",)), T)
        drow = _gep(bld, dst, bld.mul(p, i64(width), flags=("nsw",)), T)
        for v in range(nvec):
            value = vec.masked_load(bld, _gep(bld, srow, v * L, T), masks[v])
            vec.store(bld, value, _gep(bld, drow, v * L, T))
            if checker is not None:
                acc = checker.fold(bld, acc, value)
        return acc

    if checker is None:
        with for_range(bld, 0, k, name="p") as p:
            row(p, None)
        bld.ret_void()
        return fn
    acc = _carried_range(bld, 0, k, 1, checker.zero, row, name="p")
    bld.ret(checker.finite(bld, acc))
    return fn


def _pack_a_tiles(vec: _Vec, rows: int):
    """void pack(src, ld, tiles, k, dst): dst[t*k*rows + p*rows + r] = src[p*ld + t*rows + r] for
    t < tiles, p < k, r < rows: a transposed A's block (stored (k, m), `ld` apart) as the
    contiguous k steps of each row tile of `rows` rows, which the kernels read with strides
    (1, rows) instead of one cache line of A per k step."""
    T = vec.dtype
    name = f"{_KERNEL_PREFIX}.pack_a.{_type_tag(T)}.{rows}"
    ptr = ir.PointerType()
    fn, new = _function(vec.module, name, [ptr, I64, I64, I64, ptr], noalias=(0, 4))
    if not new:
        return fn
    src, ld, tiles, k, dst = fn.args
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    with for_range(bld, 0, tiles, name="t") as t:
        scol = _gep(bld, src, bld.mul(t, i64(rows), flags=("nsw",)), T)
        dtile = _gep(bld, dst, bld.mul(bld.mul(t, k, flags=("nsw",)), i64(rows), flags=("nsw",)), T)
        with for_range(bld, 0, k, name="p") as p:
            srow = _gep(bld, scol, bld.mul(p, ld, flags=("nsw",)), T)
            drow = _gep(bld, dtile, bld.mul(p, i64(rows), flags=("nsw",)), T)
            for r in range(rows):
                value = bld.load(_gep(bld, srow, r, T), typ=T, align=4)
                bld.store(value, _gep(bld, drow, r, T), align=4)
    bld.ret_void()
    return fn


# --------------------------------------------------------------------------------------------------
# The driver

# Scratch slots already allocated per caller function: {(dtype, elements)...}.  The gemms of one
# function run one after another, so they can share one buffer.
_SCRATCH_SLOTS: "weakref.WeakKeyDictionary[ir.Function, dict]" = weakref.WeakKeyDictionary()


def _function_scratch(builder, dtype, elements: int, purpose: str = "pack"):
    """A 64-byte aligned `alloca` of at least `elements` dtypes in the entry block of the builder's
    function, shared by every gemm emitted into that function (one slot per `purpose`: buffers that
    are live at the same time need different purposes)."""
    slots = _SCRATCH_SLOTS.setdefault(builder.function, {})
    key = (str(dtype), purpose)
    if key in slots and slots[key][1] >= elements:
        return slots[key][0]
    entry = builder.function.entry_basic_block
    if builder.block is entry:
        # NOTE: a second builder inserting into the caller's current block would leave the caller's
        # insertion index stale, so emit in place: anywhere in the entry block is a static alloca.
        bld = builder
    else:
        bld = ir.IRBuilder(entry)
        if entry.instructions:
            bld.position_before(entry.instructions[0])
    slot = bld.alloca(ir.ArrayType(dtype, elements), name=f"gemm.{purpose}")
    slot.align = 64
    slots[key] = (slot, elements)
    return slot


def _lanes_and_panel(dtype, lanes) -> tuple[int, int]:
    """(vector lanes, panel width nr) emit_gemm uses for `dtype`."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    return L, tile_shape(L, _dtype_bits(dtype))[1] * L


def _packs_full_panels(nr: int, dtype) -> bool:
    """Does emit_gemm copy the full column panels of an untransposed B into scratch?

    Read in place, a panel of KC rows of B is KC short runs `ldb` elements apart; with W1's
    ldb = 512 floats (2 KiB) they fall into a few sets of L1 and the kernel waits on L2.
    NOTE (W1's GEMMs on one thread, AVX2 on a Zen 3 EPYC, panels of 16 floats = 64 bytes;
    throwaway /tmp/kc9/gab2.py, an in-process A/B alternating the two builds over seven rounds,
    the first build of each round left out: it runs on cold caches): packing made NN 32x784x512
    1.25-1.33x faster, 128x784x512 1.41x, TN (dW) 784x128x512 1.38x and 512x128x512 1.45x, the
    other 512-column products 1.0-1.25x; the 10-column ones, whose tail is packed anyway, within
    +-7%.  W1's epoch on two threads (throwaway /tmp/kc9/ab.py, both builds in one process,
    alternating): 0.83 of the time at batch 128 (six pairs); at batch 32 no change beyond the
    noise (1.006 over eight pairs; kernels 5.70M against 5.75M cycles a step).  With AVX-512
    (panels of 64 floats = 256 bytes) the products read in place ran at 106-110 GFLOP/s on a
    Zen 4 core, its FMA peak, so panels of 256 bytes or more stay in place."""
    if PACK_FULL_PANELS is not None:
        return PACK_FULL_PANELS
    return nr * _dtype_bits(dtype) // 8 < 256


def _packs_b(n, trans_b: bool, nr: int, dtype=ir.FloatType()) -> bool:
    """Does emit_gemm copy op(B) panels into scratch (B^T, columns that are not whole panels, or
    every panel when `_packs_full_panels`)?"""
    return trans_b or _packs_full_panels(nr, dtype) or not _is_const(n) or n % nr != 0


def scratch_elements(n, k, *, trans_b=False, dtype=ir.FloatType(), lanes=None) -> int:
    """Elements of scratch space emit_gemm needs for these arguments (0 when it needs none)."""
    L, nr = _lanes_and_panel(dtype, lanes)
    return _round_up(_k_block(k, L)[0], L) * nr if _packs_b(n, trans_b, nr, dtype) else 0


def caller_scratch_elements(m, n, k, *, trans_a=False, trans_b=False, dtype=ir.FloatType(),
                            lanes=None) -> tuple[int, int]:
    """(pack, narrow): elements of the two scratch buffers emit_gemm needs for these arguments when
    the caller provides them (`scratch_ptr`, `narrow_scratch_ptr`), each 0 when it needs none.

    Sized for this product (its k block and the panels it really packs), not for the largest k
    block as the shared stack slot is: code that takes its scratch from a caller's workspace
    (codegen.export) reserves only what its GEMMs use."""
    L, nr = _lanes_and_panel(dtype, lanes)
    if _narrow_columns(m, n, trans_a, trans_b, L, nr):
        # C^T blocks of NARROW_BLOCK (and m % NARROW_BLOCK) columns, from an untransposed B
        blocks = [rows for rows in (NARROW_BLOCK if m >= NARROW_BLOCK else 0, m % NARROW_BLOCK)
                  if rows]
        return (max(_pack_elements(rows, k, False, L, nr, dtype) for rows in blocks),
                n * NARROW_BLOCK)
    return _pack_elements(n, k, trans_b, L, nr, dtype), 0


def _zero_skip_layout(dtype=ir.FloatType(), lanes=None) -> tuple[int, int, int]:
    """Byte offsets (counts, flags, end) of skip_zeros' buffers in a caller's list scratch
    (`list_scratch_ptr` of emit_gemm): the i16 step lists of an m block's full row tiles first,
    then their i64 counts, then the i8 inf-or-NaN flags of a k block's rows of op(B); each part
    starts 64-byte aligned."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    capacity = MC // tile_shape(L, _dtype_bits(dtype))[0]
    counts = _round_up(capacity * KC * 2, 64)
    flags = counts + _round_up(capacity * 8, 64)
    return counts, flags, flags + _round_up(KC, 64)


def zero_skip_scratch_bytes(dtype=ir.FloatType(), lanes=None) -> int:
    """Bytes of the list scratch a caller gives emit_gemm with skip_zeros (`list_scratch_ptr`)."""
    return _zero_skip_layout(dtype, lanes)[2]


def _pack_elements(n, k, trans_b: bool, L: int, nr: int, dtype) -> int:
    """Scratch elements the op(B) panels of emit_gemm's main path fill (see its `b_panel`): every
    panel with trans_b or `_packs_full_panels`, otherwise only the column tail (one vector per
    runtime-n step)."""
    if not _packs_b(n, trans_b, nr, dtype):
        return 0
    if trans_b or _packs_full_panels(nr, dtype):
        width = nr
    elif not _is_const(n):
        width = L
    else:
        width = -(-(n % nr) // L) * L
    return _round_up(_k_block(k, L)[0], L) * width


def _dtype_bits(dtype) -> int:
    return 32 if _type_tag(dtype) == "f32" else 64


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _k_block(k, lanes: int):
    """(block size, single block?) for the contracted dimension."""
    if _is_const(k):
        if k <= KC:
            return max(k, 1), True
        blocks = -(-k // KC)
        return _round_up(-(-k // blocks), lanes), False
    return KC, False


#: Vectors per panel of a skipping product whose rows are mostly zero (a relu's outputs), by the
#: vector registers of the host (None: the full tile's).  NOTE (AVX2 on a Zen 3 EPYC, one thread,
#: throwaway /tmp/kc11/gab4.py: W3's products in blocks of 128 rows on a model trained for half
#: an epoch, both builds in one process): the second layer, whose inputs are 86% zeros, ran 1.23x
#: as fast in 2 x 4 tiles as in 4 x 3 (it skips 67% of the k steps of a 2-row tile, 55% of a
#: 4-row one) and 0.95x in 2 x 5; the first, on pixels (50% zeros), 0.92x in 2 x 4.  On two
#: threads, W3's batch-1024 predict (throwaway /tmp/kc11/abp2.py and prof4.py, a model trained for
#: an epoch): the second layer's kernel 2856 -> 2664 us (minima over 10 windows), the throughput
#: 1.017-1.08x (paired medians of three runs, one with the builds in the other order).
_SPARSE_PANEL_VECTORS = {16: 4}


def sparse_panel_vectors(dtype=ir.FloatType(), lanes=None) -> int | None:
    """emit_gemm's `panel_vectors` for a skipping product of mostly-zero rows on this host (tiles
    of 2 rows with 16 vector registers), or None where the full tile stays (not measured)."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    return _SPARSE_PANEL_VECTORS.get(_registers_for(L, _dtype_bits(dtype), None))


#: Vectors per panel of a product that multiplies only the listed k steps of its row tiles
#: (`tile_lists`, codegen.lower.SPARSE_COLUMNS), by the vector registers of the host.  With 16
#: registers the shorter tiles of _SPARSE_PANEL_VECTORS; with 32 the full 6 x 4 tile.  NOTE (AVX-512
#: on a Zen 4 EPYC, throwaway /tmp/kc19/ab_sparse.py: W1 trained for 20000 rows, then epochs of 5000
#: rows at batch 32, all builds in one process, alternating, the machine shared with two other
#: jobs): on one thread the second layer's product took 267k cycles per step in 6 x 4 tiles, 319k
#: in 4 x 5, 284k in 3 x 6, and 410k without lists (6 of 6 epochs faster, 0.962 of the time); on
#: two threads 0.968 of the time (7 of 10).
_LISTED_PANEL_VECTORS = {16: 4, 32: 4}


def listed_panel_vectors(dtype=ir.FloatType(), lanes=None) -> int | None:
    """emit_gemm's `panel_vectors` for a product with `tile_lists` on this host, or None where
    products do not list (not measured)."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    return _LISTED_PANEL_VECTORS.get(_registers_for(L, _dtype_bits(dtype), None))


def sparse_tile_rows(dtype=ir.FloatType(), lanes=None) -> int | None:
    """Rows of the tiles of a listed product, in `listed_panel_vectors`' panels (2 with 16
    registers, 6 with 32), or None where products do not list."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    vectors = listed_panel_vectors(dtype, L)
    return None if vectors is None else tile_rows(vectors, _registers_for(L, _dtype_bits(dtype),
                                                                           None))


def _next_copy_prefetch(builder, b_ptr, pc, j0, nr: int, ldb, T):
    """(streams, step): the prefetch arguments with which a panel's first row tile pulls into L2 the
    rows of an untransposed B that the next panel (columns j0 + nr on, k rows from pc) will copy:
    per k step, the cache lines of one row's `nr` elements, `ldb` elements on from the last.

    NOTE (AVX2 on a Zen 3 EPYC, one thread, throwaway /tmp/kc11/gab3.py, both builds in one
    process, alternating rounds): copying a panel is KC rows 2 KiB apart, each a miss to L3 with
    W1's weights, that no row tile overlapped.  With the prefetch, while the machine's shared L3
    was slow (the same products at 55-65 GFLOP/s), NN 128x784x512 ran 1.07-1.12x as fast over
    four runs of 10-16 rounds, 128x512x512 1.00-1.14x, 1024x784x512 1.08-1.11x and the 32-row
    products 1.00-1.07x; while it was fast (75-83 GFLOP/s), 1.02-1.03x.  Products of k 32 or 128
    (dW) copy short panels and gained nothing, hence PREFETCH_COPY_MIN_K."""
    row_bytes = nr * _dtype_bits(T) // 8
    start = builder.gep(b_ptr, [i64(_add(builder, _mul(builder, pc, ldb), _add(builder, j0, nr)))],
                        source_etype=T)
    # the first byte, one in every line after it, and the last: every line the row's run touches
    offsets = sorted(set(range(0, row_bytes, 64)) | {row_bytes - 1})
    streams = [start if off == 0 else builder.gep(start, [i64(off)], source_etype=I8)
               for off in offsets]
    return streams, builder.mul(i64(ldb), i64(_dtype_bits(T) // 8))


def emit_gemm(builder: ir.IRBuilder, a_ptr, b_ptr, c_ptr, m, n, k, *, trans_a: bool = False,
              trans_b: bool = False, dtype=ir.FloatType(), lanes: int | None = None,
              accumulate: bool = False, scratch_ptr=None, lda=None, ldb=None, ldc=None,
              then_read=(), narrow_scratch_ptr=None, skip_zeros: bool = False,
              b_finite: bool = False, list_scratch_ptr=None,
              panel_vectors: int | None = None, prefetch_c: bool | None = None,
              tile_lists=None) -> None:
    """Emit C = op(A) @ op(B) (C += ... with accumulate) at the builder's position.

    A is stored (m, k), or (k, m) with trans_a; B is stored (k, n), or (n, k) with trans_b; C is
    (m, n).  All are dense row-major pointers to `dtype` (float or double), aligned to the element
    only.  m, n, k are Python ints (compile-time constants) or i64 values, in any mix; any may be zero
    (with k == 0, C is zeroed unless accumulating).

    `lanes` defaults to the host's vector width for `dtype` (`target.vector_lanes`); a smaller power of
    two is also correct (the tests use 8 and 4 on an AVX-512 host).

    Scratch: with trans_b, with panels narrower than 256 bytes (`_packs_full_panels`), or when n
    is not a multiple of the panel width (or is a runtime value), op(B) panels are copied into a
    scratch buffer of `scratch_elements(n, k, ...)` elements: at most 512 x 64 floats = 128 KiB
    (f32, 16 lanes; the same in bytes for f64).  Pass `scratch_ptr` to provide it (64-byte
    aligned preferred); otherwise it is an `alloca` in the entry block of the
    caller's function, shared by every gemm emitted into that function, so the frame grows by 128 KiB
    once per dtype.  Code running on small thread stacks should pass `scratch_ptr`, and
    `narrow_scratch_ptr` too: a narrow product from a transposed A (see `narrow_product`) computes
    C^T blocks into a second buffer, otherwise also an entry-block `alloca`.
    `caller_scratch_elements` gives the sizes of both.  Without `scratch_ptr`, the m blocks of a
    transposed A are also copied as contiguous row tiles (`PACK_A`) into a third `alloca` of up to
    PACK_A_MAX_BYTES: the kernels then read A sequentially instead of a cache line per k step.

    Epilogue: none is fused (no `epilogue=` hook).  Callers apply bias/activation as a separate
    vectorizable loop over C afterwards; C of a training-step GEMM is at most a few hundred KiB and
    still in L2 (a per-element scalar callback inside the tile would defeat the vector stores).

    `lda`, `ldb`, `ldc` (ints or i64 values, in elements) override the row strides of the stored
    matrices, which are otherwise dense (A: k, or m with trans_a; B: n, or k with trans_b; C: n):
    that is how a caller multiplies a block of rows or columns of larger matrices in place.

    `then_read`: (pointer, bytes) pairs of memory the caller reads right after this product (an
    epilogue's operands): the row tiles prefetch it into L2, one cache line per k step and pair, so
    that it arrives while they compute instead of when the epilogue waits for it.  Each pair costs
    a prefetch per k step; bytes past what the k steps cover (k x 64 per full tile) are not fetched.

    `skip_zeros`: each full row tile of C first lists the k steps where one of its rows of op(A) is
    not zero (`_zero_skip_list`), and its kernel then runs only those, for every column panel; the
    lists take two `alloca`s of the caller's function (MC / tile rows x KC i16 steps, 40 KiB with
    AVX-512, and the counts).  Activations after relu and Dropout, and their gradients, are mostly
    zero, and in row tiles often together: W1's training step skips about a third of the FMAs of its
    large products.  Only when C has two full column panels or more (the list is then reused).
    A step whose row of op(B) holds an inf or NaN is always listed (`_nonfinite_steps`, one pass
    over op(B) per k block), so 0 * inf is NaN as in the dense product: results are the same bit for
    bit (but for the sign of a zero sum).  `b_finite`: op(B) is known to hold no inf or NaN (a
    predict's weights), so that pass is left out.  The lists live on the stack, or in
    `list_scratch_ptr` (zero_skip_scratch_bytes of the caller's memory, 64-byte aligned) when given.

    `panel_vectors`: the column panels' width in vectors, instead of the full tile's
    (`tile_shape`); the tiles' rows follow (`tile_rows`).  With zero skipping, a narrower panel
    has shorter tiles, whose rows are all zero at more of the k steps (`sparse_panel_vectors`).
    Not with `list_scratch_ptr` (whose size assumes the full tile).

    `tile_lists` = (steps, counts): the caller's lists of the k steps of every full row tile of
    op(A) (`tile_zero_lists`, tiles of `tile_rows(panel_vectors)` rows), which the full column
    panels' row tiles run instead of every step: one listing serves every column block of a
    product, where `skip_zeros` lists per call.  Every panel is copied, and copying it also tells
    whether it holds an inf or NaN; such a panel multiplies every step (0 * inf is NaN), so the
    values are the dense product's (but for the sign of a zero sum).  For untransposed A and B
    only (a transposed B's listed product was never faster than its dense one, see
    codegen.lower.SPARSE_COLUMNS); the caller guarantees one m block (m <= MC; a runtime m is
    not checked), and k must fit one block (k <= KC).

    `prefetch_c` (default PREFETCH_C): each row tile of a k block of at most PREFETCH_C_MAX_K
    steps prefetches its C tile for writing before its k loop, for a C that is not in cache (a
    product written to memory); a caller whose C block is in cache already (a scratch its
    epilogue consumes) passes False.

    Limits: `lanes` must be a power of two; sizes are signed i64 and must be >= 0; C must not overlap
    A or B (A and B may be the same buffer); float and double only; single-threaded code, but
    reentrant (its only state is the caller's stack or scratch).
    """
    module = builder.module
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    if L & (L - 1):
        raise ValueError(f"emit_gemm needs a power-of-two lane count, got {L}")
    vec = _Vec(module, dtype, L)
    T = dtype
    registers = _registers_for(L, _dtype_bits(dtype), None)
    _, nv = tile_shape(L, _dtype_bits(dtype))
    if panel_vectors is not None:
        if list_scratch_ptr is not None or not 1 <= panel_vectors <= nv + 2:
            raise ValueError(f"panel_vectors={panel_vectors!r}: a width of 1 to {nv + 2} vectors, "
                             "without list_scratch_ptr")
        nv = panel_vectors
    nr = nv * L
    mc = MC
    prefetch_c = PREFETCH_C if prefetch_c is None else prefetch_c

    lda = (m if trans_a else k) if lda is None else lda
    ldb = (k if trans_b else n) if ldb is None else ldb
    ldc = n if ldc is None else ldc

    if _narrow_columns(m, n, trans_a, trans_b, L, nr):
        _emit_narrow(builder, vec, a_ptr, b_ptr, c_ptr, m, n, k, lda, ldb, ldc, accumulate,
                     scratch_ptr, narrow_scratch_ptr)
        return

    kc, single_k = _k_block(k, L)
    pack_full = _packs_full_panels(nr, T) or tile_lists is not None   # (the copy checks a panel)
    needs_scratch = _packs_b(n, trans_b, nr, T) or tile_lists is not None   # (copied, checked)
    scratch = None
    if needs_scratch:
        if scratch_ptr is not None:
            scratch = scratch_ptr
        else:
            # NOTE: sized for the largest k block rather than this gemm's, so that one slot serves
            # every gemm of the function; pages this gemm does not touch cost nothing.
            scratch = _function_scratch(builder, T, _round_up(KC, L) * nr)

    a_strides = [i64(1), i64(lda)] if trans_a else [i64(lda), i64(1)]
    mr_main = tile_rows(nv, registers)
    a_block_elements = (min(m, MC) if _is_const(m) else MC) * kc
    # (only when the copy serves two column panels or more)
    pack_a = (PACK_A and trans_a and scratch_ptr is None and (not _is_const(n) or n >= 2 * nr)
              and a_block_elements * _dtype_bits(T) // 8 <= PACK_A_MAX_BYTES
              and (not _is_const(k) or kc >= PACK_A_MIN_K))
    a_scratch = (_function_scratch(builder, T, a_block_elements, purpose="pack_a")
                 if pack_a else None)
    use_lists = skip_zeros and _is_const(n) and n // nr >= 2
    if tile_lists is not None and (trans_a or trans_b or skip_zeros or not single_k
                                   or (_is_const(m) and m > MC)):
        raise ValueError("tile_lists: for untransposed A and B, one m and one k block, without "
                         "skip_zeros")
    list_offsets = _zero_skip_layout(dtype, L)
    list_stride = KC if tile_lists is None else TILE_LIST_STRIDE

    def nonfinite_steps(pc, kcur):
        """Which rows of the op(B) block [pc:pc+kcur] hold an inf or NaN (see `skip_zeros`)."""
        if list_scratch_ptr is not None:
            flags = _gep(builder, list_scratch_ptr, list_offsets[1], I8)
        else:
            flags = _function_scratch(builder, I8, KC, purpose="zero_skip_nonfinite")
        if b_finite:
            memset = module.declare_intrinsic("llvm.memset", [ir.PointerType(), I64])
            builder.call(memset, [flags, ir.Constant(I8, 0), i64(kcur), ir.Constant(I1, 0)])
            return flags
        src = _gep(builder, b_ptr, pc if trans_b else _mul(builder, pc, ldb), T)
        builder.call(_nonfinite_steps(vec, trans_b), [src, i64(ldb), i64(kcur), i64(n), flags])
        return flags

    def zero_skip_lists(a_block, mcur, kcur, nonfinite):
        """(steps, counts) of every full row tile of the m block (see `skip_zeros`)."""
        capacity = MC // mr_main
        if list_scratch_ptr is not None:
            steps = list_scratch_ptr
            counts = _gep(builder, list_scratch_ptr, list_offsets[0], I8)
        else:
            steps = _function_scratch(builder, I16, capacity * KC, purpose="zero_skip")
            counts = _function_scratch(builder, I64, capacity, purpose="zero_skip_count")
        fn = _zero_skip_list(vec, mr_main)
        with for_range(builder, 0, _round_down(builder, mcur, mr_main), mr_main, name="zl") as row:
            tile = builder.udiv(i64(row), i64(mr_main))
            builder.call(fn, [a_tile(a_block, row), *a_strides, i64(kcur),
                              _gep(builder, steps, builder.mul(tile, i64(KC)), I16),
                              _gep(builder, counts, tile, I64), nonfinite])
        return steps, counts

    def a_tile(a_block, row):
        # opA rows start `row` rows down: row*lda elements without trans_a, `row` elements with it.
        return _gep(builder, a_block, row if trans_a else _mul(builder, row, lda), T)

    def row_tiles(a_block, mcur, b_src, b_ld, c_block, nvec, masked, ncols_last, kcur, load_c,
                  prefetch=None, lists=None, first_prefetch=None, packed=None):
        """Every row tile of one column panel of C, for mcur rows starting at a_block/c_block.

        `prefetch` = (streams, panel): memory the full row tiles should pull into L2 as they go,
        `streams` a list of (start, bytes), one cache line per k step and stream, the t-th full tile
        of the product taking the lines from t * kcur on (this panel's first tile is the
        `panel`-th times the full tiles per panel).  `first_prefetch` = (addresses, step): the
        prefetch arguments of this panel's first full tile only (`_next_copy_prefetch`).
        `packed` = (copy, made): the m block's full row tiles of A as `_pack_a_tiles` copied
        them and an i1 saying whether it did, used when their rows are this panel's tile's.
        """
        mr = tile_rows(nvec, registers)
        if packed is not None and mr != mr_main:
            packed = None

        def call(rows, row, prefetch_args=(), listed=None):
            fn = _kernel(vec, rows, nvec, masked, len(prefetch_args) - 1 if prefetch_args else 0,
                         listed is not None, prefetch_c)
            steps, count = listed if listed is not None else ((), i64(kcur))
            if listed is not None and prefetch_args:
                steps = (*steps, i64(kcur))      # steps_total: the prefetch lines to cover
            a_args = [a_tile(a_block, row), *a_strides]
            if packed is not None and rows == mr:
                copy, made = packed
                a_args = [builder.select(made, x, y) for x, y in zip(
                    [_gep(builder, copy, _mul(builder, row, kcur), T), i64(1), i64(mr)], a_args)]
            builder.call(fn, [*a_args, b_src, i64(b_ld),
                              _gep(builder, c_block, _mul(builder, row, ldc), T), i64(ldc),
                              count, load_c, i64(ncols_last), *prefetch_args, *steps])

        def full_tile(row, first=None):
            listed = None
            if lists is not None:
                steps, counts = lists
                tile = builder.udiv(i64(row), i64(mr))
                listed = ((_gep(builder, steps, builder.mul(tile, i64(list_stride)), I16),),
                          builder.load(_gep(builder, counts, tile, I64), typ=I64, align=8))
            if first is not None:
                call(mr, row, (*first[0], first[1]), listed)
                return
            if prefetch is None:
                call(mr, row, listed=listed)
                return
            streams, panel = prefetch
            tile = builder.add(builder.mul(i64(panel), builder.udiv(i64(mfull), i64(mr))),
                               builder.udiv(i64(row), i64(mr)))
            offset = builder.mul(tile, builder.mul(i64(kcur), i64(64)))
            addresses, any_inside = [], None
            for start, nbytes in streams:
                inside = builder.icmp_signed("<", offset, i64(nbytes))
                addresses.append(builder.gep(start, [builder.select(inside, offset, i64(0))],
                                             source_etype=ir.IntType(8)))
                any_inside = inside if any_inside is None else builder.or_(any_inside, inside)
            call(mr, row, (*addresses, builder.select(any_inside, i64(64), i64(0))), listed)

        tail_sizes = [size for size in (8, 4, 2, 1) if size < mr]
        mfull = _round_down(builder, mcur, mr)
        if first_prefetch is not None:
            if _is_const(mfull):
                if mfull >= mr:
                    full_tile(0, first_prefetch)
            else:
                with builder.if_then(builder.icmp_signed(">=", mfull, i64(mr))):
                    full_tile(0, first_prefetch)
            with for_range(builder, mr, mfull, mr, name="ir") as row:
                full_tile(row)
        elif _is_const(mfull):
            if mfull == mr:
                full_tile(0)
            elif mfull > 0:
                with for_range(builder, 0, mfull, mr, name="ir") as row:
                    full_tile(row)
        else:
            with for_range(builder, 0, mfull, mr, name="ir") as row:
                full_tile(row)
        # The remainder (< mr) as a sum of distinct powers of two: one smaller kernel per set bit.
        if _is_const(mcur):
            rem, row = mcur - mfull, mfull
            for size in tail_sizes:
                if rem & size:
                    call(size, row)
                    row += size
        else:
            rem = builder.sub(mcur, mfull)
            for size in tail_sizes:
                bit = builder.and_(rem, i64(size))
                with builder.if_then(builder.icmp_signed("!=", bit, i64(0))):
                    row = builder.add(mfull, builder.and_(rem, i64(~(2 * size - 1))))
                    call(size, row)

    def b_panel(pc, kcur, j0, nvec, valid, full, check=False):
        """Pointer and row stride of the op(B) panel [pc:pc+kcur, j0:j0+nvec*L]; with `check` (a
        copied panel), and an i1 saying whether every value of the panel is finite."""
        if trans_b:
            src = _gep(builder, b_ptr, _add(builder, _mul(builder, j0, ldb), pc), T)
            builder.call(_pack_transposed(vec, nvec), [src, i64(ldb), i64(valid), i64(kcur), scratch])
            return scratch, nvec * L
        src = _gep(builder, b_ptr, _add(builder, _mul(builder, pc, ldb), j0), T)
        if full and not pack_full:
            return src, ldb
        finite = builder.call(_pack_copy(vec, nvec, check),
                              [src, i64(ldb), i64(valid), i64(kcur), scratch])
        return (scratch, nvec * L) + ((finite,) if check else ())

    def m_block(pc, kcur, load_c, ic, mcur, nonfinite=None):
        if trans_a:
            a_block = _gep(builder, a_ptr, _add(builder, _mul(builder, pc, lda), ic), T)
        else:
            a_block = _gep(builder, a_ptr, _add(builder, _mul(builder, ic, lda), pc), T)
        c_row = _gep(builder, c_ptr, _mul(builder, ic, ldc), T)
        lists = zero_skip_lists(a_block, mcur, kcur, nonfinite) if use_lists else tile_lists
        packed = None
        if pack_a:
            # copied from PACK_A_MIN_K steps on, decided at run time for a runtime k (the batch of
            # a dW; a constant condition folds), the kernels' A operands chosen to match
            made = builder.icmp_signed(">=", i64(kcur), i64(PACK_A_MIN_K))
            with builder.if_then(made):
                builder.call(_pack_a_tiles(vec, mr_main), [a_block, i64(lda),
                                                           builder.udiv(i64(mcur), i64(mr_main)),
                                                           i64(kcur), a_scratch])
            packed = (a_scratch, made)

        def panel(j0, nvec, valid, full, masked, ncols_last):
            checked = tile_lists is not None and nvec == nv
            b_src, b_ld, *finite = b_panel(pc, kcur, j0, nvec, valid, full, checked)
            prefetch = None
            if trans_b and full and single_k and _PREFETCH_NEXT_PANEL:
                # The rows of B the next panel will pack are contiguous (k fits one block): have
                # this panel's row tiles prefetch them, so the next pack does not wait on L3/DRAM.
                nxt = _add(builder, j0, nr)
                rows_left = smin(builder, nr, builder.sub(i64(n), i64(nxt)))
                start = builder.gep(b_ptr, [i64(_mul(builder, nxt, ldb))], source_etype=T)
                nbytes = builder.mul(builder.mul(rows_left, i64(ldb)), i64(_dtype_bits(T) // 8))
                prefetch = ([(start, nbytes)], 0)
            elif then_read:
                prefetch = (then_read, builder.udiv(i64(j0), i64(nr)))
            first = None
            if PREFETCH_NEXT_COPY and prefetch is None and not trans_b and pack_full and full \
                    and kc >= PREFETCH_COPY_MIN_K:
                first = _next_copy_prefetch(builder, b_ptr, pc, j0, nr, ldb, T)
            def tiles(panel_lists):
                row_tiles(a_block, mcur, b_src, b_ld, _gep(builder, c_row, j0, T), nvec, masked,
                          ncols_last, kcur, load_c, prefetch, panel_lists, first, packed)

            if not checked:
                tiles(lists if nvec == nv else None)
                return
            # the caller's lists skip zeros of A only: a panel holding an inf or NaN (where 0 * inf
            # must give NaN) multiplies every step
            with builder.if_else(finite[0]) as (listed, every):
                with listed:
                    tiles(lists)
                with every:
                    tiles(None)

        nfull = _round_down(builder, n, nr)
        if _is_const(nfull) and nfull == nr:
            panel(0, nv, nr, True, False, L)
        elif not _is_const(nfull) or nfull > 0:
            with for_range(builder, 0, nfull, nr, name="jc") as j0:
                panel(j0, nv, nr, True, False, L)
        if _is_const(n):
            nrem = n - nfull
            if nrem:
                nvt = -(-nrem // L)
                last = nrem - (nvt - 1) * L
                panel(nfull, nvt, nrem, False, last != L, last)
        else:
            with for_range(builder, nfull, n, L, name="jv") as jv:
                valid = smin(builder, L, builder.sub(n, jv))
                panel(jv, 1, valid, False, True, valid)

    def k_block(pc, kcur, load_c):
        nonfinite = nonfinite_steps(pc, kcur) if use_lists else None
        if _is_const(m) and m <= mc:
            if m > 0:
                m_block(pc, kcur, load_c, 0, m, nonfinite)
            return
        with for_range(builder, 0, m, mc, name="ic") as ic:
            m_block(pc, kcur, load_c, ic, smin(builder, mc, builder.sub(i64(m), ic)), nonfinite)

    true, false = ir.Constant(I1, 1), ir.Constant(I1, 0)
    if single_k:
        k_block(0, k, true if accumulate else false)
    else:
        # At least one block even for k == 0, so that C is still written (zeroed).
        kmax = builder.select(builder.icmp_signed(">", i64(k), i64(0)), i64(k), i64(1)) \
            if not _is_const(k) else max(k, 1)
        with for_range(builder, 0, kmax, kc, name="pc") as pc:
            kcur = smin(builder, kc, builder.sub(i64(k), pc))
            load_c = true if accumulate else builder.icmp_signed("!=", pc, i64(0))
            k_block(pc, kcur, load_c)


# --------------------------------------------------------------------------------------------------
# Narrow C from a transposed A (dW of a layer with few units): computed as C^T

#: Rows of C per block of the narrow path (columns of the C^T block in scratch).
NARROW_BLOCK = 256


def _narrow_columns(m, n, trans_a, trans_b, lanes, panel) -> bool:
    """Whether C = A^T @ B is better computed as C^T = B^T @ A: C has a few columns that fill
    vectors badly (n = 10 uses 10 of 16 lanes) and many rows, which fill them well as columns of C^T;
    A^T's rows are A's contiguous columns, so C^T's B operand is read in place, with no packing.
    Only for constant sizes (the transposed store is specialised on n)."""
    return (trans_a and not trans_b and _is_const(m) and _is_const(n) and n < panel
            and n % lanes != 0 and m >= 4 * lanes)


def narrow_product(m, n, trans_a: bool, trans_b: bool, dtype=ir.FloatType(),
                   lanes: int | None = None) -> bool:
    """Whether emit_gemm computes this product as C^T (see `_narrow_columns`): callers that cut a
    product into row blocks give such a product blocks of NARROW_BLOCK rows."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    _, nv = tile_shape(L, _dtype_bits(dtype))
    return _narrow_columns(m, n, trans_a, trans_b, L, nv * L)


def _emit_narrow(builder, vec, a_ptr, b_ptr, c_ptr, m, n, k, lda, ldb, ldc, accumulate,
                 scratch_ptr, narrow_scratch_ptr=None):
    """C (+)= A^T @ B for A stored (k, m), B stored (k, n), n narrow: by blocks of NARROW_BLOCK rows
    of C, C^T's block = B^T @ A[:, block] into a scratch buffer (n x NARROW_BLOCK), then transposed
    into C by `_store_transposed`."""
    T, L = vec.dtype, vec.lanes
    nb = NARROW_BLOCK
    ct = narrow_scratch_ptr if narrow_scratch_ptr is not None else \
        _function_scratch(builder, T, n * nb, purpose="narrow")
    store = _store_transposed(vec, n, accumulate)

    def block(row, rows):
        emit_gemm(builder, b_ptr, _gep(builder, a_ptr, row, T), ct, n, rows, k, trans_a=True,
                  dtype=T, lanes=L, scratch_ptr=scratch_ptr, lda=ldb, ldb=lda, ldc=nb)
        builder.call(store, [ct, i64(nb), i64(rows),
                             _gep(builder, c_ptr, _mul(builder, row, ldc), T), i64(ldc)])

    full = m - m % nb
    if full == nb:
        block(0, nb)
    elif full:
        with for_range(builder, 0, full, nb, name="nr") as row:
            block(row, nb)
    if m % nb:
        block(full, m % nb)


def _store_transposed(vec: _Vec, n: int, add: bool):
    """void store(ct, ld_ct, rows, c, ldc): C[i, j] = CT[j, i] (+= with `add`) for i < rows, j < n
    (n a constant), lanes rows at a time through a transpose in registers; C's rows are written with
    masked stores of n lanes."""
    module, T, L = vec.module, vec.dtype, vec.lanes
    name = f"{_KERNEL_PREFIX}.store_t.{_type_tag(T)}x{L}.{n}{'.add' if add else ''}"
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, I64, I64, ptr, I64], noalias=(0, 3))
    if not new:
        return fn
    ct, ld_ct, rows, c, ldc = fn.args
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    groups = -(-n // L)
    masks = [vec.lane_mask(bld, i64(min(L, n - g * L))) for g in range(groups)]
    with for_range(bld, 0, rows, L, name="i") as i:
        for g in range(groups):
            # CT rows j = g*L + q for q < L; rows past n are zero (never stored).  Lanes past `rows`
            # in the last group read scratch that is allocated but not computed: never stored either.
            cols = [vec.load(bld, _gep(bld, ct, _add(bld, _mul(bld, g * L + q, ld_ct), i), T))
                    if g * L + q < n else vec.zero for q in range(L)]
            out = _transpose(bld, vec, cols)
            for q in range(L):
                inside = bld.icmp_signed("<", _add(bld, i, q), rows)
                with bld.if_then(inside):
                    dst = _gep(bld, _gep(bld, c, _mul(bld, _add(bld, i, q), ldc), T), g * L, T)
                    value = out[q]
                    if add:
                        value = bld.fadd(value, vec.masked_load(bld, dst, masks[g]))
                    vec.masked_store(bld, value, dst, masks[g])
    bld.ret_void()
    return fn


# --------------------------------------------------------------------------------------------------
# One-row products (GEMV)

#: Vectors of C per pass of a one-row product (16 x 16 floats: 1 KiB of each row of B per k step).
GEMV_GROUP = 16
#: A skipping GEMV's pass prefetches (into L1) the run of B's row this many listed steps ahead
#: (0: none).  NOTE (W3's one-sample predict on two threads, throwaway /tmp/kc11/ablat.py, both
#: builds in one process, alternating windows of 500 calls): 8 took 0.938 of the time (12 pairs,
#: all 0.92-0.955) and 0.946 (16 pairs), 4 0.990, 16 0.978 and 12 against 8 0.977.
GEMV_PREFETCH_AHEAD = 8


def _gemv_pass(vec: _Vec, nvec: int, masked: bool):
    """void pass(a, b, c, k, ldb, kc, ncols_last): c[v*L + l] = sum_p a[p] * b[p*ldb + v*L + l] for
    v < nvec, k > 0, summed exactly as the GEMM micro-kernel sums one row: in k blocks of `kc`,
    each block's products accumulated from zero in order of p by FMA and the block's sum added to
    the sum so far (so a one-row product gives, bit for bit, the row a batch would).  With `masked`
    only the first `ncols_last` lanes of the last vector are read and written.  (Skipping the rows
    of B whose a[p] is zero: _gemv_listed_pass; fma(0, b, acc) is acc for every finite b, so the sums
    are the same bit for bit when B holds no inf or NaN, the caller's condition, but for the sign
    of a zero sum: a skipped fma(0, b, -0.0) would have made it +0.0.)"""
    module, T, L = vec.module, vec.dtype, vec.lanes
    name = f"{_KERNEL_PREFIX}.gemv.{_type_tag(T)}x{L}.{nvec}{'.masked' if masked else ''}"
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, ptr, ptr, I64, I64, I64, I64],
                        ("a", "b", "c", "k", "ldb", "kc", "ncols_last"), noalias=(0, 1, 2))
    if not new:
        return fn
    a, b, c, k, ldb, kc, ncols_last = fn.args
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    mask = vec.lane_mask(bld, ncols_last) if masked else None
    c_ptrs = [_gep(bld, c, v * L, T) for v in range(nvec)]

    with for_range(bld, 0, k, kc, name="pc") as pc:
        kend = smin(bld, bld.add(pc, kc), k)
        head = bld.block
        body = bld.append_basic_block("p.body")
        done = bld.append_basic_block("p.done")
        bld.branch(body)
        bld.position_at_end(body)
        p = bld.phi(I64, name="p")
        p.add_incoming(pc, head)
        accs = []
        for v in range(nvec):
            phi = bld.phi(vec.type, name=f"acc{v}")
            phi.add_incoming(vec.zero, head)
            accs.append(phi)
        a_p = bld.load(_gep(bld, a, p, T), typ=T, align=4)
        new = _gemv_row_fmas(bld, vec, a_p, _gep(bld, b, bld.mul(p, ldb, flags=("nsw",)), T),
                             accs, mask)
        p_next = bld.add(p, i64(1), flags=("nsw", "nuw"))
        p.add_incoming(p_next, bld.block)
        for v in range(nvec):
            accs[v].add_incoming(new[v], bld.block)
        bld.cbranch(bld.icmp_signed("<", p_next, kend), body, done)
        bld.position_at_end(done)
        _gemv_store(bld, vec, c_ptrs, new, bld.icmp_signed("==", pc, i64(0)), mask)
    bld.ret_void()
    return fn


def _gemv_row_fmas(bld, vec: _Vec, a_value, row, accs, mask):
    """accs[v] + a_value * row[v*L:(v+1)*L] by FMA for every vector v of one row of B (the last
    vector masked when `mask` is given): a step of the GEMV passes."""
    a_splat = vec.splat(bld, a_value)
    new = []
    for v, acc in enumerate(accs):
        ptr_v = _gep(bld, row, v * vec.lanes, vec.dtype)
        masked = mask is not None and v == len(accs) - 1
        b_vec = vec.masked_load(bld, ptr_v, mask) if masked else vec.load(bld, ptr_v)
        new.append(vec.fma(bld, a_splat, b_vec, acc))
    return new


def _gemv_store(bld, vec: _Vec, c_ptrs, sums, first, mask) -> None:
    """c = sums where `first` (the first k block) else c + sums, the GEMM's way of adding k
    blocks (the last vector masked when `mask` is given)."""
    for v, (ptr, total) in enumerate(zip(c_ptrs, sums)):
        masked = mask is not None and v == len(sums) - 1
        old = vec.masked_load(bld, ptr, mask) if masked else vec.load(bld, ptr)
        value = bld.select(first, total, bld.fadd(total, old))
        if masked:
            vec.masked_store(bld, value, ptr, mask)
        else:
            vec.store(bld, value, ptr)


def _gemv_listed_pass(vec: _Vec, nvec: int, masked: bool):
    """void pass(a, b, c, steps, count, ldb, first, ncols_last): one k block of _gemv_pass with
    `skip_zeros` (a and b at the block's first step), over the `count` steps p listed (i16,
    ascending, by _zero_skip_list) in `steps` rather than over every step: acc = sum of
    a[p] * b[p*ldb + v*L + l] by FMA in the list's order, then c = acc where `first` (i1: the first
    k block) else c + acc.  The same sums as _gemv_pass's, without its branch
    per step (see gemv_function)."""
    module, T, L = vec.module, vec.dtype, vec.lanes
    ahead = GEMV_PREFETCH_AHEAD
    name = (f"{_KERNEL_PREFIX}.gemv.{_type_tag(T)}x{L}.{nvec}{'.masked' if masked else ''}.listed"
            f"{f'.pf{ahead}' if ahead else ''}")
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, ptr, ptr, ptr, I64, I64, I1, I64],
                        ("a", "b", "c", "steps", "count", "ldb", "first", "ncols_last"),
                        noalias=(0, 1, 2, 3))
    if not new:
        return fn
    a, b, c, steps, count, ldb, first, ncols_last = fn.args
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    mask = vec.lane_mask(bld, ncols_last) if masked else None
    c_ptrs = [_gep(bld, c, v * L, T) for v in range(nvec)]

    head = bld.block
    body = bld.append_basic_block("i.body")
    done = bld.append_basic_block("i.done")
    bld.cbranch(bld.icmp_signed(">", count, i64(0)), body, done)
    bld.position_at_end(body)
    i = bld.phi(I64, name="i")
    i.add_incoming(i64(0), head)
    accs = []
    for v in range(nvec):
        phi = bld.phi(vec.type, name=f"acc{v}")
        phi.add_incoming(vec.zero, head)
        accs.append(phi)
    p = bld.zext(bld.load(_gep(bld, steps, i, I16), typ=I16, align=2), I64)
    if ahead:
        # the row `ahead` steps on in the list (the last one near its end): the skipped rows
        # leave gaps the hardware's stream prefetch does not follow
        later = bld.add(i, i64(ahead))
        later = bld.select(bld.icmp_signed("<", later, count), later, i)
        q = bld.zext(bld.load(_gep(bld, steps, later, I16), typ=I16, align=2), I64)
        row = _gep(bld, b, bld.mul(q, ldb, flags=("nsw",)), T)
        for off in range(0, nvec * L * (_dtype_bits(T) // 8), 64):
            bld.call(vec.prefetch, [bld.gep(row, [i64(off)], source_etype=I8), ir.Constant(I32, 0),
                                    ir.Constant(I32, 3), ir.Constant(I32, 1)])
    new = _gemv_row_fmas(bld, vec, bld.load(_gep(bld, a, p, T), typ=T, align=4),
                         _gep(bld, b, bld.mul(p, ldb, flags=("nsw",)), T), accs, mask)
    i_next = bld.add(i, i64(1), flags=("nsw", "nuw"))
    i.add_incoming(i_next, body)
    for v in range(nvec):
        accs[v].add_incoming(new[v], body)
    bld.cbranch(bld.icmp_signed("<", i_next, count), body, done)
    bld.position_at_end(done)
    sums = []
    for v in range(nvec):
        phi = bld.phi(vec.type, name=f"sum{v}")
        phi.add_incoming(vec.zero, head)
        phi.add_incoming(new[v], body)
        sums.append(phi)
    _gemv_store(bld, vec, c_ptrs, sums, first, mask)
    bld.ret_void()
    return fn


def gemv_function(module, dtype=ir.FloatType(), lanes: int | None = None,
                  skip_zeros: bool = False) -> ir.Function:
    """`void gemv(a, b, c, ncols, k, ldb, kc)`: C (one row of ncols) = A (one row of k) @ B (k rows
    `ldb` apart, ncols columns), k > 0, summed in k blocks of `kc` (at most KC) as emit_gemm sums
    (see _gemv_pass).  The memory-bound product of a one-sample predict: passes of GEMV_GROUP
    vectors stream whole 1 KiB runs of each row of B, then 4- and 1-vector passes and a masked one
    take the rest of the columns.  `skip_zeros` (only for a B known to hold no inf or NaN): rows of
    B whose entry of A is zero are not read, with the same sums (but for the sign of a zero sum,
    see _gemv_pass; a batch's GEMM, which skips a step only for a whole tile of zero rows, may give
    a zero row entry the other sign): each k block first lists the steps
    whose a[p] is not zero (_zero_skip_list of one row, branch-free), and every column pass runs
    over that list (_gemv_listed_pass).
    NOTE (one thread, W3's one-sample predict, interleaved processes): 50-53 us against 55-56 us
    with the GEMM's one-row tiles; software prefetch of rows 4, 8 or 16 ahead was slower.  Skipping
    the zero rows (half of Fashion-MNIST's pixels, and most of a trained ReLU layer's outputs): 34 us
    against 55 us on one thread, 30-34 us against 36-49 us on two (/tmp/kc3/lat3.py, a model trained
    for one epoch on 10000 rows; figures vary with the load).  That first version tested a[p] with
    a branch in every pass: the same input over and over ran in 13 us, inputs in turn 23-25 us (the
    zero pattern changes, the branches mispredict); the list takes them out of the passes (figures
    in the closing note of the change)."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    name = f"{_KERNEL_PREFIX}.gemv.{_type_tag(dtype)}x{L}{'.nz' if skip_zeros else ''}"
    ptr = ir.PointerType()
    fn, new = _function(module, name, [ptr, ptr, ptr, I64, I64, I64, I64],
                        ("a", "b", "c", "ncols", "k", "ldb", "kc"))
    if not new:
        return fn
    vec = _Vec(module, dtype, L)
    a, b, c, ncols, k, ldb, kc = fn.args
    bld = ir.IRBuilder(fn.append_basic_block("entry"))
    if skip_zeros:
        steps = bld.alloca(I16, size=i64(KC), name="steps")
        steps.align = 64
        count_slot = bld.alloca(I64, name="count")
        lister = _zero_skip_list(vec, 1, flags=False, unit_steps=True)
        with for_range(bld, 0, k, kc, name="pc") as pc:
            a_blk = _gep(bld, a, pc, dtype)
            b_blk = _gep(bld, b, bld.mul(pc, ldb), dtype)
            bld.call(lister, [a_blk, i64(0), i64(1), bld.sub(smin(bld, bld.add(pc, kc), k), pc),
                              steps, count_slot, ir.Constant(ptr, None)])
            count = bld.load(count_slot, typ=I64, align=8)
            first = bld.icmp_signed("==", pc, i64(0))
            _gemv_column_passes(bld, vec, ncols, lambda group, masked, j, cols: bld.call(
                _gemv_listed_pass(vec, group, masked),
                [a_blk, _gep(bld, b_blk, j, dtype), _gep(bld, c, j, dtype), steps, count, ldb,
                 first, cols]))
    else:
        _gemv_column_passes(bld, vec, ncols, lambda group, masked, j, cols: bld.call(
            _gemv_pass(vec, group, masked),
            [a, _gep(bld, b, j, dtype), _gep(bld, c, j, dtype), k, ldb, kc, cols]))
    bld.ret_void()
    return fn


def _gemv_column_passes(bld: ir.IRBuilder, vec: _Vec, ncols, call) -> None:
    """call(group, masked, first column, ncols_last) for the passes that cover ncols columns:
    GEMV_GROUP-vector passes, then 4- and 1-vector ones, then a masked one for the rest."""
    L = vec.lanes
    done_cols = i64(0)
    for group in (GEMV_GROUP, 4, 1):
        width = group * L
        stop = _round_down(bld, ncols, width)
        with for_range(bld, done_cols, stop, width, name=f"g{group}") as j:
            call(group, False, j, i64(L))
        done_cols = bld.select(bld.icmp_signed(">", stop, done_cols), stop, done_cols)
    with bld.if_then(bld.icmp_signed("<", done_cols, ncols)):
        call(1, True, done_cols, bld.sub(ncols, done_cols))


def gemv_k_block(k: int, dtype=ir.FloatType(), lanes: int | None = None) -> int:
    """The k block emit_gemm uses for a static k (what gemv_function must be given as kc)."""
    L = lanes or target.vector_lanes(_dtype_bits(dtype))
    return _k_block(k, L)[0]
