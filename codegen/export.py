"""Ahead-of-time export: a graph becomes a shared library with a C ABI, usable without Python.

The library exports (prefix `kcompile_`):

    int kcompile_predict(const float *x, int64_t rows, float *out);
    int64_t kcompile_workspace_bytes(int64_t rows);
    int kcompile_predict_with_workspace(const float *x, int64_t rows, float *out, void *workspace);
    int kcompile_input_rank(void);   void kcompile_input_shape(int64_t *dims);
    int kcompile_output_rank(void);  void kcompile_output_shape(int64_t *dims);
    const char *kcompile_version(void);

Shapes report the batch dimension as -1.  Error codes: 0 ok, 1 null pointer, 2 rows <= 0 (or too
many to address), 3 out of memory.  There is no global mutable state: the workspace comes from the
caller or from malloc per call, so the functions are reentrant and thread-safe.  Weights are
constants inside the code.
The same lowering serves the JIT; only the target machine (position-independent, any named CPU)
and the wrappers differ.
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
from .lower import I8, I32, I64, PTR, c64, lower

ABI_VERSION = 1
OK, ERR_NULL, ERR_ROWS, ERR_MEMORY = 0, 1, 2, 3


def _declare(module, name, ret, args):
    fn = module.globals.get(name)
    return fn or ir.Function(module, ir.FunctionType(ret, args), name)


def _shape_functions(module, prefix, ttype):
    rank_fn = ir.Function(module, ir.FunctionType(I32, []), f"kcompile_{prefix}_rank")
    b = ir.IRBuilder(rank_fn.append_basic_block())
    b.ret(ir.Constant(I32, ttype.rank))
    shape_fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), f"kcompile_{prefix}_shape")
    b = ir.IRBuilder(shape_fn.append_basic_block())
    for i, d in enumerate(ttype.shape):
        b.store(c64(-1 if d is None else d), b.gep(shape_fn.args[0], [c64(i)], source_etype=I64))
    b.ret_void()


def build_module(graph: kir.Graph, version: str, fusion_level: int = 1):
    """The LLVM module of an exported predictor: graph kernels plus the C ABI wrappers."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError("an exported predictor takes exactly one input and returns one output; "
                         f"got inputs {graph.input_names} and outputs {graph.output_names}")
    x, (_, y) = graph.inputs[0], graph.outputs[0]
    for node in (x, y):
        if node.dtype != "f32" or not node.type.batched:
            raise ValueError(f"exported predictors take and return batched f32 arrays, got {node.type}")
    fused = fuse(graph, level=fusion_level)
    plan = plan_memory(fused)
    module = ir.Module(name="kcompile.export")
    # NOTE: no threads in exported code: the library must depend on libc only
    lowered = lower(fused, plan, name="kcompile_graph", module=module, threading=False)
    module.get_global("kcompile_graph").linkage = "internal"
    out_slot = plan.slots.get(y)
    if out_slot is None or out_slot.where != "output":
        raise ValueError("the predictor's output must be computed by the graph")

    # NOTE: a row count whose buffers' sizes would overflow i64 arithmetic is refused (ERR_ROWS),
    # not wrapped around into a small workspace
    row_bytes = max([plan.batch_bytes, 1] + [4 * int(np.prod(x.shape[1:], dtype=np.int64))
                                              for x in (*graph.inputs, *[n for _, n in graph.outputs])])
    max_rows = (2 ** 62 - plan.static_bytes - 64) // row_bytes
    ws = ir.Function(module, ir.FunctionType(I64, [I64]), "kcompile_workspace_bytes")
    b = ir.IRBuilder(ws.append_basic_block())
    rows_ok = b.and_(b.icmp_signed(">", ws.args[0], c64(0)), b.icmp_signed("<=", ws.args[0],
                                                                        c64(max_rows)))
    b.ret(b.select(rows_ok, b.add(c64(plan.static_bytes + 64), b.mul(ws.args[0],
                                                                      c64(plan.batch_bytes))),
                   c64(-1)))

    with_ws = ir.Function(module, ir.FunctionType(I32, [PTR, I64, PTR, PTR]),
                          "kcompile_predict_with_workspace")
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
    # align the workspace to 64 bytes (kcompile_workspace_bytes reserves the slack)
    addr = b.ptrtoint(wsp, I64)
    aligned = b.and_(b.add(addr, c64(63)), c64(~63))
    wsa = b.gep(wsp, [b.sub(aligned, addr)], source_etype=I8)
    table = b.alloca(PTR, size=lowered.table_size)
    entries = [xp, outp, wsa]
    for i, p in enumerate(entries):
        b.store(p, b.gep(table, [c64(i)], source_etype=PTR))
    b.call(module.get_global("kcompile_graph"), [rows, table])
    b.ret(ir.Constant(I32, OK))

    malloc = _declare(module, "malloc", PTR, [I64])
    free = _declare(module, "free", ir.VoidType(), [PTR])
    pred = ir.Function(module, ir.FunctionType(I32, [PTR, I64, PTR]), "kcompile_predict")
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

    _shape_functions(module, "input", x.type)
    _shape_functions(module, "output", y.type)
    text = bytearray(version.encode() + b"\0")
    gv = ir.GlobalVariable(module, ir.ArrayType(I8, len(text)), "kcompile_version_string")
    gv.global_constant = True
    gv.linkage = "internal"
    gv.initializer = ir.Constant(ir.ArrayType(I8, len(text)), text)
    vf = ir.Function(module, ir.FunctionType(PTR, []), "kcompile_version")
    b = ir.IRBuilder(vf.append_basic_block())
    b.ret(b.gep(gv, [c64(0), c64(0)], source_etype=gv.value_type))
    return module, plan


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
    cc = find_c_compiler()
    result = subprocess.run([cc, "-shared", "-o", library_path, object_path], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"linking {library_path} failed:\n{result.stderr}")


HEADER = """\
/* {name}.h: the C interface of a predictor exported by kcompile {version}.
 *
 * Link with lib{name}.so (depends only on libc).  All functions are reentrant and thread-safe:
 * there is no global mutable state; scratch memory is the caller's (predict_with_workspace) or
 * malloc'ed per call (predict).
 *
 * Input:  float32, shape ({input_shape}), row-major; the first dimension is the number of rows.
 * Output: float32, shape ({output_shape}), row-major.
 */
#ifndef KCOMPILE_{guard}_H
#define KCOMPILE_{guard}_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {{
#endif

#define KCOMPILE_OK 0             /* success */
#define KCOMPILE_ERR_NULL 1       /* a pointer argument was NULL */
#define KCOMPILE_ERR_ROWS 2       /* rows <= 0, or too many to address */
#define KCOMPILE_ERR_MEMORY 3     /* the workspace could not be allocated */

/* Predict `rows` rows of `x` into `out` (rows * {output_row} floats).  Returns an error code. */
int kcompile_predict(const float *x, int64_t rows, float *out);

/* Bytes of scratch memory kcompile_predict_with_workspace needs for `rows` rows (-1 for a row
 * count kcompile_predict refuses with KCOMPILE_ERR_ROWS). */
int64_t kcompile_workspace_bytes(int64_t rows);

/* As kcompile_predict, with caller-owned scratch of kcompile_workspace_bytes(rows) bytes. */
int kcompile_predict_with_workspace(const float *x, int64_t rows, float *out, void *workspace);

/* Shapes; the batch dimension is reported as -1. */
int kcompile_input_rank(void);
void kcompile_input_shape(int64_t *dims);
int kcompile_output_rank(void);
void kcompile_output_shape(int64_t *dims);

/* The kcompile version that produced this library. */
const char *kcompile_version(void);

#ifdef __cplusplus
}}
#endif
#endif
"""


def export_graph(graph: kir.Graph, directory: str, *, name: str = "model", version: str = "0",
                 cpu: str | None = None, features: str | None = None) -> dict:
    """Write `lib{name}.so`, `{name}.o` and `{name}.h` into `directory`; returns their paths and the
    target built for (see `target.export_target`: the host's by default)."""
    cpu, features = target.export_target(cpu, features)
    os.makedirs(directory, exist_ok=True)
    with target.generating_for(features):   # vector width and FMA use of the target, not the host
        module, plan = build_module(graph, version)
    obj = emit_object(module, cpu, features)
    obj_path = os.path.join(directory, f"{name}.o")
    lib_path = os.path.join(directory, f"lib{name}.so")
    header_path = os.path.join(directory, f"{name}.h")
    _atomic_write(obj_path, obj)
    tmp_lib = lib_path + ".tmp"
    link_shared(obj_path, tmp_lib)
    os.replace(tmp_lib, lib_path)
    x, (_, y) = graph.inputs[0], graph.outputs[0]

    def fmt(t):
        return ", ".join("rows" if d is None else str(d) for d in t.shape)
    header = HEADER.format(name=name, version=version, input_shape=fmt(x.type),
                           output_shape=fmt(y.type), output_row=y.type.static_size,
                           guard=name.upper().replace("-", "_"))
    _atomic_write(header_path, header.encode())
    return {"library": lib_path, "object": obj_path, "header": header_path,
            "workspace": {"static_bytes": plan.static_bytes, "batch_bytes": plan.batch_bytes},
            "cpu": cpu, "features": features}


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
