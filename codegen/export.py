"""Ahead-of-time export: a graph becomes a shared library with a C ABI, usable without Python.

The library exports (prefix `kcompile_` by default, any C identifier with `prefix=`):

    int kcompile_predict(const float *x, int64_t rows, float *out);
    int64_t kcompile_workspace_bytes(int64_t rows);
    int kcompile_predict_with_workspace(const float *x, int64_t rows, float *out, void *workspace);
    int kcompile_input_rank(void);   void kcompile_input_shape(int64_t *dims);
    int kcompile_output_rank(void);  void kcompile_output_shape(int64_t *dims);
    const char *kcompile_version(void);

Shapes report the batch dimension as -1.  Error codes: 0 ok, 1 null pointer, 2 rows <= 0 (or too
many to address), 3 out of memory.  There is no global mutable state: the workspace comes from the
caller or from malloc per call, so the functions are reentrant and thread-safe.  The workspace also
holds the GEMMs' packing buffers (lower.WORKSPACE_SCRATCH), which the JIT's code keeps on the
stack, so the stack use is a few KiB.  Weights are constants inside the code.
The public functions are thin wrappers over internal ones and never call each other: two exported
libraries in one process (same names, one of them global) each run their own code.
The same lowering serves the JIT; only the target machine (position-independent, any named CPU),
the GEMM scratch and the wrappers differ.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
from llvmlite import ir

import ir as kir
from ir.fusion import fuse
from ir.memory import plan_memory

from . import jit, target
from .loops import for_range
from .lower import F32, I8, I32, I64, PTR, WORKSPACE_SCRATCH, c64, lower

ABI_VERSION = 1
OK, ERR_NULL, ERR_ROWS, ERR_MEMORY, ERR_INPUT = 0, 1, 2, 3, 4
DEFAULT_PREFIX = "kcompile"


def _declare(module, name, ret, args):
    fn = module.globals.get(name)
    return fn or ir.Function(module, ir.FunctionType(ret, args), name)


def _internal(module, name, ret, args) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(ret, args), f"export.{name}")
    fn.linkage = "internal"
    return fn


def _public_wrappers(module, prefix: str, implementations: dict) -> None:
    """`{prefix}_{name}` for each internal implementation: a call, and nothing else.

    NOTE: every exported library defines the same kind of public names, and a call from one public
    function to another goes through the PLT, which binds to the first library in the process
    that defines the name (the program itself, a library loaded RTLD_GLOBAL): a second model's
    predict would run the first model's graph on its buffers.  So no public function calls a
    public function; they share internal implementations, which bind inside the library."""
    for name, impl in implementations.items():
        fn = ir.Function(module, impl.function_type, f"{prefix}_{name}")
        b = ir.IRBuilder(fn.append_basic_block())
        result = b.call(impl, list(fn.args))
        if isinstance(impl.function_type.return_type, ir.VoidType):
            b.ret_void()
        else:
            b.ret(result)


def _shape_functions(module, which, ttype):
    rank_fn = _internal(module, f"{which}_rank", I32, [])
    b = ir.IRBuilder(rank_fn.append_basic_block())
    b.ret(ir.Constant(I32, ttype.rank))
    shape_fn = _internal(module, f"{which}_shape", ir.VoidType(), [PTR])
    b = ir.IRBuilder(shape_fn.append_basic_block("entry"))
    store, done = shape_fn.append_basic_block("store"), shape_fn.append_basic_block("done")
    # a NULL `dims` is nothing to fill (the header asks for `rank` entries otherwise)
    b.cbranch(b.icmp_unsigned("==", shape_fn.args[0], ir.Constant(PTR, None)), done, store)
    b.position_at_end(store)
    for i, d in enumerate(ttype.shape):
        b.store(c64(-1 if d is None else d), b.gep(shape_fn.args[0], [c64(i)], source_etype=I64))
    b.branch(done)
    b.position_at_end(done)
    b.ret_void()
    return rank_fn, shape_fn


def build_module(graph: kir.Graph, version: str, fusion_level: int = 1,
                 prefix: str = DEFAULT_PREFIX, ids_below: int | None = None):
    """The LLVM module of an exported predictor: graph kernels plus the C ABI wrappers, named
    `{prefix}_predict` and so on.  Returns (module, plan, GEMM scratch bytes).

    `ids_below` N: the input holds ids that must lie in [0, N) (an Embedding's table, which the
    graph's gather would only clamp into range); the predict functions refuse any other value, NaN
    included, with ERR_INPUT before computing anything."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError("an exported predictor takes exactly one input and returns one output; "
                         f"got inputs {graph.input_names} and outputs {graph.output_names}")
    x, (y_name, y) = graph.inputs[0], graph.outputs[0]
    for node in (x, y):
        if node.dtype != "f32" or not node.type.batched:
            raise ValueError(f"exported predictors take and return batched f32 arrays, got {node.type}")
    fused = fuse(graph, level=fusion_level)
    plan = plan_memory(fused)
    if plan.outputs != [y_name]:
        raise ValueError(f"an exported predictor needs an output buffer for {y_name!r}; the memory "
                         f"plan gives outputs {plan.outputs}")
    module = ir.Module(name="kcompile.export")
    # NOTE: GEMM packing buffers come from the workspace, not the stack (WORKSPACE_SCRATCH): a
    # caller's thread may have a small stack (musl's default is 128 KiB)
    scratch_record = WORKSPACE_SCRATCH.setdefault(module, {"bytes": 0})
    # NOTE: no threads in exported code: the library must depend on libc only
    lowered = lower(fused, plan, name="kcompile_graph", module=module, threading=False)
    module.get_global("kcompile_graph").linkage = "internal"
    # (an output that is not computed by a kernel, the input itself for an identity model, is
    # copied into the output buffer by the lowering: plan.copies)
    scratch_bytes = -(-scratch_record["bytes"] // 64) * 64

    # NOTE: a row count whose buffers' sizes would overflow i64 arithmetic is refused (ERR_ROWS),
    # not wrapped around into a small workspace
    row_bytes = max([plan.batch_bytes, 1] + [4 * int(np.prod(x.shape[1:], dtype=np.int64))
                                              for x in (*graph.inputs, *[n for _, n in graph.outputs])])
    fixed_bytes = 64 + scratch_bytes + plan.static_bytes
    max_rows = (2 ** 62 - fixed_bytes) // row_bytes
    ws = _internal(module, "workspace_bytes", I64, [I64])
    b = ir.IRBuilder(ws.append_basic_block())
    rows_ok = b.and_(b.icmp_signed(">", ws.args[0], c64(0)), b.icmp_signed("<=", ws.args[0],
                                                                        c64(max_rows)))
    b.ret(b.select(rows_ok, b.add(c64(fixed_bytes), b.mul(ws.args[0], c64(plan.batch_bytes))),
                   c64(-1)))

    with_ws = _internal(module, "predict_with_workspace", I32, [PTR, I64, PTR, PTR])
    xp, rows, outp, wsp = with_ws.args
    b = ir.IRBuilder(with_ws.append_basic_block("entry"))
    bad = with_ws.append_basic_block("null")
    check_rows = with_ws.append_basic_block("rows")
    bad_rows = with_ws.append_basic_block("bad_rows")
    run = with_ws.append_basic_block("run")
    null = ir.Constant(PTR, None)
    any_null = b.or_(b.or_(b.icmp_unsigned("==", xp, null), b.icmp_unsigned("==", outp, null)),
                     b.icmp_unsigned("==", wsp, null))
    b.cbranch(any_null, bad, check_rows)
    b.position_at_end(bad)
    b.ret(ir.Constant(I32, ERR_NULL))
    b.position_at_end(check_rows)
    b.cbranch(b.or_(b.icmp_signed("<=", rows, c64(0)), b.icmp_signed(">", rows, c64(max_rows))),
              bad_rows, run)
    b.position_at_end(bad_rows)
    b.ret(ir.Constant(I32, ERR_ROWS))
    b.position_at_end(run)
    if ids_below is not None:
        _check_ids(b, with_ws, xp, b.mul(rows, c64(x.type.static_size)), ids_below)
    # align the workspace to 64 bytes (workspace_bytes reserves the slack): the GEMM scratch
    # first, then the graph's arena
    addr = b.ptrtoint(wsp, I64)
    aligned = b.and_(b.add(addr, c64(63)), c64(~63))
    scratch = b.gep(wsp, [b.sub(aligned, addr)], source_etype=I8)
    arena = b.gep(scratch, [c64(scratch_bytes)], source_etype=I8)
    table = b.alloca(PTR, size=lowered.table_size)
    entries = [xp, outp, arena, scratch]
    assert len(entries) == lowered.table_size
    for i, p in enumerate(entries):
        b.store(p, b.gep(table, [c64(i)], source_etype=PTR))
    b.call(module.get_global("kcompile_graph"), [rows, table])
    b.ret(ir.Constant(I32, OK))

    malloc = _declare(module, "malloc", PTR, [I64])
    free = _declare(module, "free", ir.VoidType(), [PTR])
    pred = _internal(module, "predict", I32, [PTR, I64, PTR])
    xp, rows, outp = pred.args
    b = ir.IRBuilder(pred.append_basic_block("entry"))
    early = pred.append_basic_block("early")
    alloc = pred.append_basic_block("alloc")
    nomem = pred.append_basic_block("nomem")
    call = pred.append_basic_block("call")
    invalid = b.or_(b.or_(b.icmp_unsigned("==", xp, null), b.icmp_unsigned("==", outp, null)),
                    b.or_(b.icmp_signed("<=", rows, c64(0)), b.icmp_signed(">", rows, c64(max_rows))))
    b.cbranch(invalid, early, alloc)
    b.position_at_end(early)
    # delegate the error code to the checking function (a null workspace is never reached)
    b.ret(b.call(with_ws, [xp, rows, outp, b.inttoptr(c64(1), PTR)]))
    b.position_at_end(alloc)
    mem = b.call(malloc, [b.call(ws, [rows])])
    b.cbranch(b.icmp_unsigned("==", mem, null), nomem, call)
    b.position_at_end(nomem)
    b.ret(ir.Constant(I32, ERR_MEMORY))
    b.position_at_end(call)
    status = b.call(with_ws, [xp, rows, outp, mem])
    b.call(free, [mem])
    b.ret(status)

    input_rank, input_shape = _shape_functions(module, "input", x.type)
    output_rank, output_shape = _shape_functions(module, "output", y.type)
    text = bytearray(version.encode() + b"\0")
    gv = ir.GlobalVariable(module, ir.ArrayType(I8, len(text)), "export.version_string")
    gv.global_constant = True
    gv.linkage = "internal"
    gv.initializer = ir.Constant(ir.ArrayType(I8, len(text)), text)
    vf = _internal(module, "version", PTR, [])
    b = ir.IRBuilder(vf.append_basic_block())
    b.ret(b.gep(gv, [c64(0), c64(0)], source_etype=gv.value_type))
    _public_wrappers(module, prefix, {
        "predict": pred, "workspace_bytes": ws, "predict_with_workspace": with_ws,
        "input_rank": input_rank, "input_shape": input_shape,
        "output_rank": output_rank, "output_shape": output_shape, "version": vf})
    return module, plan, scratch_bytes


def _check_ids(b: ir.IRBuilder, fn: ir.Function, xp, count, below: int) -> None:
    """Return ERR_INPUT from `fn` unless each of the `count` floats at `xp` lies in [0, below)
    (ordered comparisons: NaN is out); the builder continues in the block after the check.  One
    pass without early exit (the loop vectorizes)."""
    with b.goto_entry_block():
        bad = b.alloca(ir.IntType(1), name="bad_id")
    b.store(ir.Constant(ir.IntType(1), 0), bad)
    with for_range(b, 0, count, name="id") as i:
        v = b.load(b.gep(xp, [i], source_etype=F32), typ=F32)
        inside = b.and_(b.fcmp_ordered(">=", v, ir.Constant(F32, 0.0)),
                        b.fcmp_ordered("<", v, ir.Constant(F32, float(below))))
        b.store(b.or_(b.load(bad), b.not_(inside)), bad)
    refuse = fn.append_basic_block("bad_input")
    go = fn.append_basic_block("ids_ok")
    b.cbranch(b.load(bad), refuse, go)
    b.position_at_end(refuse)
    b.ret(ir.Constant(I32, ERR_INPUT))
    b.position_at_end(go)


def emit_object(module, cpu: str | None = None, features: str | None = None) -> bytes:
    tm = target.target_machine(cpu, features, for_object=True)
    ref = jit.parse_and_verify(module, tm)
    jit.optimize(ref, tm)
    return tm.emit_object(ref)


def find_c_compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise RuntimeError("no C compiler found to link the exported library; install one "
                       "(apt-get install -y gcc) or set CC")


def link_shared(object_path: str, library_path: str) -> None:
    """Link `object_path` into a shared library.  With -Bsymbolic where the linker takes it: the
    library's own references bind to its own definitions, as its internal calls already do."""
    cc = find_c_compiler()
    command = [cc, "-shared", "-o", library_path, object_path]
    result = subprocess.run(command[:2] + ["-Wl,-Bsymbolic"] + command[2:], capture_output=True,
                            text=True)
    if result.returncode != 0:
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"linking {library_path} failed:\n{result.stderr}")


HEADER = """\
/* {name}.h: the C interface of a predictor exported by kcompile {version}.
 *
 * Link with lib{name}.so (depends only on libc).  All functions are reentrant and thread-safe:
 * there is no global mutable state; scratch memory is the caller's (predict_with_workspace) or
 * malloc'ed per call (predict), the GEMMs' packing buffers included, so the stack use is small:
 * under 4 KiB measured (x86-64, glibc, MLP and CNN models), and threads with small stacks (musl's
 * 128 KiB default, or less) may call them.
 *
 * Names: every function is `{prefix}_<name>` and every macro `{macro}_<NAME>`; a model exported
 * with name=N has prefix N (functions N_predict, macros N_OK in upper case, files libN.so and
 * N.h), so two models with different names link into one program.  Each library always runs its
 * own code, whatever other kcompile libraries the process has loaded.
 *
 * Input:  float32, shape ({input_shape}), row-major; the first dimension is the number of rows.{input_domain}
 * Output: float32, shape ({output_shape}), row-major.
 */
#ifndef {guard}
#define {guard}
#include <stdint.h>
#ifdef __cplusplus
extern "C" {{
#endif

#define {macro}_OK 0             /* success */
#define {macro}_ERR_NULL 1       /* a pointer argument was NULL */
#define {macro}_ERR_ROWS 2       /* rows <= 0, or too many to address */
#define {macro}_ERR_MEMORY 3     /* the workspace could not be allocated */
#define {macro}_ERR_INPUT 4      /* an input value the model cannot take (an id outside its table) */

/* Predict `rows` rows of `x` into `out` (rows * {output_row} floats).  Returns an error code. */
int {prefix}_predict(const float *x, int64_t rows, float *out);

/* Bytes of scratch memory {prefix}_predict_with_workspace needs for `rows` rows (-1 for a row
 * count {prefix}_predict refuses with {macro}_ERR_ROWS). */
int64_t {prefix}_workspace_bytes(int64_t rows);

/* As {prefix}_predict, with caller-owned scratch of {prefix}_workspace_bytes(rows) bytes. */
int {prefix}_predict_with_workspace(const float *x, int64_t rows, float *out, void *workspace);

/* Shapes; the batch dimension is reported as -1.  `dims` must hold rank entries ({input_rank}
 * for the input, {output_rank} for the output); a NULL `dims` is left alone. */
int {prefix}_input_rank(void);
void {prefix}_input_shape(int64_t *dims);
int {prefix}_output_rank(void);
void {prefix}_output_shape(int64_t *dims);

/* The kcompile version that produced this library. */
const char *{prefix}_version(void);

#ifdef __cplusplus
}}
#endif
#endif
"""


def export_graph(graph: kir.Graph, directory: str, *, name: str = "model",
                 prefix: str = DEFAULT_PREFIX, guard: str | None = None, version: str = "0",
                 cpu: str | None = None, features: str | None = None,
                 extra_files=None, ids_below: int | None = None) -> dict:
    """Write `lib{name}.so`, `{name}.o` and `{name}.h` into `directory`; returns their paths and the
    target built for (see `target.export_target`: the host's by default).  The functions are
    `{prefix}_predict` and so on, the header's guard `guard` (KCOMPILE_{name}_H by default: the
    name's case kept, so that two names differing only in case give headers one program can
    include together; their macros, upper case, are then defined twice alike, which C allows).

    `extra_files(result, library)`, if given, returns more files for the directory ({file name:
    bytes}, written in that order): it gets what this function returns and the path of the linked
    library (under its temporary name, to hash it), so that a manifest can describe the export.
    `ids_below`: see `build_module`.

    Everything that can fail before linking (the target, the graph, code generation) runs before
    `directory` is created.  Every file is written under a temporary name and moved into place only
    once all of them exist (linking and the extra files included), the extra files last, so a
    failed export into an existing export directory leaves its files as they were (never the new
    model's library beside the old model's header or manifest)."""
    cpu, features = target.export_target(cpu, features)
    with target.generating_for(features):   # vector width and FMA use of the target, not the host
        module, plan, scratch_bytes = build_module(graph, version, prefix=prefix,
                                                   ids_below=ids_below)
    obj = emit_object(module, cpu, features)
    x, (_, y) = graph.inputs[0], graph.outputs[0]

    def fmt(t):
        return ", ".join("rows" if d is None else str(d) for d in t.shape)
    header = HEADER.format(name=name, version=version, input_shape=fmt(x.type),
                           output_shape=fmt(y.type), output_row=y.type.static_size,
                           prefix=prefix, macro=prefix.upper(),
                           guard=guard or f"KCOMPILE_{name}_H",
                           input_rank=x.type.rank, output_rank=y.type.rank,
                           input_domain="" if ids_below is None else
                           f"\n *         Every value is an id in [0, {ids_below}) (an Embedding's "
                           f"table); the predict\n *         functions refuse any other (NaN "
                           f"included) with {prefix.upper()}_ERR_INPUT.")
    os.makedirs(directory, exist_ok=True)
    obj_path = os.path.join(directory, f"{name}.o")
    lib_path = os.path.join(directory, f"lib{name}.so")
    header_path = os.path.join(directory, f"{name}.h")
    # NOTE: the staged names keep their suffixes: the C compiler driver picks a file's role (object
    # to link) by its suffix
    def stage(path):
        staged[path] = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}"
                                    f"{os.path.splitext(path)[1]}")
        return staged[path]

    staged: dict = {}
    result = {"library": lib_path, "object": obj_path, "header": header_path,
              "workspace": {"static_bytes": plan.static_bytes, "batch_bytes": plan.batch_bytes,
                            "gemm_scratch_bytes": scratch_bytes},
              "cpu": cpu, "features": features}
    try:
        _write(stage(obj_path), obj)
        _write(stage(header_path), header.encode())
        link_shared(staged[obj_path], stage(lib_path))
        extras = extra_files(result, staged[lib_path]) if extra_files is not None else {}
        for file, data in extras.items():
            _write(stage(os.path.join(directory, file)), data)
        for path in staged:
            os.replace(staged[path], path)
    finally:
        for path in staged.values():
            if os.path.exists(path):
                os.unlink(path)
    return result


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
