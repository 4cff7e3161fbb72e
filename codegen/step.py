"""The step driver: one native call per training step over whole arrays, no per-step work in Python.

    void kcompile.step(ptr entry, i64 n, i64 start, ptr table, ptr plan)

runs a compiled entry function (`void entry(i64 n, ptr table)`, see codegen.lower) on rows
[start, start + n) of an epoch, doing around it what a training loop would otherwise do in numpy
before and after every step:

* gathers the step's rows of each batched input from the whole array into the input's staging
  buffer, through the epoch's index array (a shuffled order), or, without an index array, points
  the input's table entry at rows start.. of the array in place;
* increments u32 scalar inputs after the step (a per-step random seed);
* adds outputs into accumulators (an epoch's running loss and metric sums), with the exact
  arithmetic a Python loop does: a f32 scalar is widened to f64 and added (times n for a mean over
  the batch), a f32 vector is added elementwise in f32.

`plan` is an array of 64-bit words, filled once per epoch by the runner (codegen.runtime):

    index         pointer to the epoch's i64 row indices, or 0 (rows in order)
    G, then G x   (table slot, whole array, staging buffer, row bytes)
    C, then C x   (table slot of a u32 scalar input)
    A, then A x   (kind, table slot of an output, accumulator, element count)
                  kind ACC_MEAN: f64 += f64(f32 out) * n; ACC_SUM: f64 += f64(f32 out);
                  ACC_VECTOR: f32[count] += f32[count]

The driver knows nothing of the graph: one copy per module serves every entry function in it.
"""
from __future__ import annotations

from llvmlite import ir

from .loops import for_range
from .lower import F32, F64, I1, I8, I32, I64, PTR

NAME = "kcompile.step"
ACC_MEAN, ACC_SUM, ACC_VECTOR = 0, 1, 2
VOID = ir.VoidType()


def emit_step_driver(module: ir.Module) -> ir.Function:
    """Add `kcompile.step` to `module` (once) and return it."""
    existing = module.globals.get(NAME)
    if existing is not None:
        return existing
    entry_type = ir.FunctionType(VOID, [I64, PTR])
    # (the entry parameter is typed as a pointer to the entry's function type: llvmlite needs the
    # callee's type for the indirect call)
    fn = ir.Function(module, ir.FunctionType(VOID, [entry_type.as_pointer(), I64, I64, PTR, PTR]),
                     NAME)
    fn.attributes.add("nounwind")
    entry, n, start, table, plan = fn.args
    for arg, name in zip(fn.args, ("entry", "n", "start", "table", "plan")):
        arg.name = name
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
    false = ir.Constant(I1, 0)

    def word(position):
        return b.load(b.gep(plan, [position], source_etype=I64), typ=I64)

    def as_ptr(value):
        return b.inttoptr(value, PTR)

    def table_slot(slot):
        return b.gep(table, [slot], source_etype=PTR)

    one = ir.Constant(I64, 1)
    index = as_ptr(word(ir.Constant(I64, 0)))
    shuffled = b.icmp_unsigned("!=", word(ir.Constant(I64, 0)), ir.Constant(I64, 0))
    count = word(one)
    with for_range(b, 0, count, name="g") as g:
        base = b.add(ir.Constant(I64, 2), b.mul(g, ir.Constant(I64, 4)))
        slot = word(base)
        src = as_ptr(word(b.add(base, one)))
        dst = as_ptr(word(b.add(base, ir.Constant(I64, 2))))
        row_bytes = word(b.add(base, ir.Constant(I64, 3)))
        with b.if_else(shuffled) as (gather, in_place):
            with gather:
                with for_range(b, 0, n, name="row") as row:
                    at = b.load(b.gep(index, [b.add(start, row)], source_etype=I64), typ=I64)
                    b.call(memcpy, [b.gep(dst, [b.mul(row, row_bytes)], source_etype=I8),
                                    b.gep(src, [b.mul(at, row_bytes)], source_etype=I8),
                                    row_bytes, false])
                b.store(dst, table_slot(slot))
            with in_place:
                b.store(b.gep(src, [b.mul(start, row_bytes)], source_etype=I8), table_slot(slot))
    position = b.add(ir.Constant(I64, 2), b.mul(count, ir.Constant(I64, 4)))

    b.call(entry, [n, table])

    counters = word(position)
    position = b.add(position, one)
    with for_range(b, 0, counters, name="c") as c:
        slot = word(b.add(position, c))
        pointer = b.load(table_slot(slot), typ=PTR)
        b.store(b.add(b.load(pointer, typ=I32), ir.Constant(I32, 1)), pointer)
    position = b.add(position, counters)

    accumulators = word(position)
    position = b.add(position, one)
    n_float = b.sitofp(n, F64)
    with for_range(b, 0, accumulators, name="a") as a:
        base = b.add(position, b.mul(a, ir.Constant(I64, 4)))
        kind = word(base)
        out = b.load(table_slot(word(b.add(base, one))), typ=PTR)
        acc = as_ptr(word(b.add(base, ir.Constant(I64, 2))))
        elements = word(b.add(base, ir.Constant(I64, 3)))
        with b.if_else(b.icmp_unsigned("==", kind, ir.Constant(I64, ACC_VECTOR))) as (vector, scalar):
            with vector:
                with for_range(b, 0, elements, name="e") as e:
                    target = b.gep(acc, [e], source_etype=F32)
                    value = b.load(b.gep(out, [e], source_etype=F32), typ=F32)
                    b.store(b.fadd(b.load(target, typ=F32), value), target)
            with scalar:
                value = b.fpext(b.load(out, typ=F32), F64)
                value = b.select(b.icmp_unsigned("==", kind, ir.Constant(I64, ACC_MEAN)),
                                 b.fmul(value, n_float), value)
                b.store(b.fadd(b.load(acc, typ=F64), value), acc)
    b.ret_void()
    return fn
