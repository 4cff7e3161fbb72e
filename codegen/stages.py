"""Text of every stage a compiled function went through, for `dump_ir`, the CLI and KCOMPILE_DUMP.

Stage names of one compiled function, in pipeline order: 'traced' (its graph as traced), one per
pass of the pipeline ('simplify', 'fold_constants', 'cse', ..., repeated passes as 'simplify.2'),
'optimized', 'fused' (kernel groups delimited), 'memory' (the arena plan), 'llvm' (optimized LLVM
IR) and 'asm' (machine code for the host CPU).  KCOMPILE_DUMP writes these for every function
(`train.traced.txt` is the train graph as traced).

A model's `compiler_stages()` and `dump_ir` (kcompile/inspection.py) present one more, 'train', after
'traced': there 'traced' is the predict graph as traced and 'train' the train step as traced
(forward, loss, backward and optimizer update), listed when the model is compiled with a loss.
"""
from __future__ import annotations

import ir


def stage_names(fn) -> list:
    return list(fn.stages) + ["optimized", "fused", "memory", "llvm", "asm"]


def memory_text(fn) -> str:
    plan = fn.plan
    lines = [plan.report()]
    names = {}
    for g in fn.fused.groups:
        for n in g.members:
            names.setdefault(n, g.name)
    for node, slot in plan.slots.items():
        if slot.where == "arena":
            unit = "bytes" if slot.region == "static" else "bytes per row"
            lines.append(f"  {node.op:14s} {str(node.type):18s} arena {slot.region:6s} "
                         f"offset {slot.offset} {unit} (kernel {names.get(node, '-')})")
    return "\n".join(lines) + "\n"


def stage_text(fn, stage: str) -> str:
    if stage in fn.stages:
        return ir.print_graph(fn.stages[stage])
    if stage == "optimized":
        return ir.print_graph(fn.optimized)
    if stage == "fused":
        return fn.fused.text()
    if stage == "memory":
        return memory_text(fn)
    if stage == "llvm":
        return fn.code.optimized_ir
    if stage == "asm":
        return fn.code.assembly()
    raise KeyError(f"unknown stage {stage!r}; stages are {stage_names(fn)}")


def stage_texts(fn) -> dict:
    return {stage: stage_text(fn, stage) for stage in stage_names(fn)}
