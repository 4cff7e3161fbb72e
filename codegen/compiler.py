"""The compile pipeline of one graph: passes -> fusion -> memory plan -> lowering -> machine code.

Every choice is an option (`CompileOptions`), not hard-wired: fusion level, whether the arena
reuses memory, the optimization level.  `compile_graph` returns a `CompiledFunction`, which knows its
table layout and gives the address of its entry point.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import ir
from ir.fusion import fuse
from ir.memory import plan_memory

from . import jit
from .lower import lower


@dataclass(frozen=True)
class CompileOptions:
    fusion_level: int = 1
    reuse_memory: bool = True
    speed_level: int = 3
    passes: tuple | None = None          # None: the default pipeline of ir.passes
    profile: bool = bool(os.environ.get("KCOMPILE_PROFILE"))   # per-kernel cycle counters
    threading: bool | None = None        # None: parallel regions when libgomp loads; False: never


@dataclass
class CompiledFunction:
    graph: ir.Graph                      # the graph as traced
    optimized: ir.Graph                  # after the pass pipeline
    fused: object
    plan: object
    lowered: object
    code: object                         # a jit.JitModule (or cached equivalent)
    stages: dict = field(default_factory=dict)

    @property
    def address(self) -> int:
        return self.code.address(self.lowered.name)

    def profile(self) -> list:
        """(kernel name, kind, cycles) per kernel, when compiled with profile=True."""
        import ctypes
        addr = self.code.engine.get_global_value_address(f"{self.lowered.name}.profile")
        counts = (ctypes.c_int64 * (len(self.fused.groups) + 1)).from_address(addr)
        return [(g.name, g.kind, g.root, counts[i]) for i, g in enumerate(self.fused.groups)]

    @property
    def input_names(self) -> list:
        return self.optimized.input_names

    @property
    def output_names(self) -> list:
        return list(self.plan.outputs)


def optimize_graph(graph: ir.Graph, options: CompileOptions, stages: dict | None = None) -> ir.Graph:
    try:
        from ir import passes
    except ImportError:
        return graph
    return passes.run_pipeline(graph, options.passes, stages=stages)


def compile_graph(graph: ir.Graph, options: CompileOptions | None = None, name: str = "main"
                  ) -> CompiledFunction:
    options = options or CompileOptions()
    ir.verify(graph)
    stages: dict = {"traced": graph}
    optimized = optimize_graph(graph, options, stages)
    fused = fuse(optimized, level=options.fusion_level)
    plan = plan_memory(fused, reuse=options.reuse_memory)
    lowered = lower(fused, plan, name=name, profile=options.profile, threading=options.threading)
    code = _compile_module(lowered.module, options)
    fn = CompiledFunction(graph, optimized, fused, plan, lowered, code, stages)
    _maybe_dump(fn)
    return fn


def _compile_module(module, options):
    try:
        from .cache import compile_cached
    except ImportError:
        return jit.JitModule(module, speed_level=options.speed_level)
    return compile_cached(module, speed_level=options.speed_level)


def _maybe_dump(fn: CompiledFunction) -> None:
    directory = os.environ.get("KCOMPILE_DUMP")
    if not directory:
        return
    from .stages import stage_texts
    os.makedirs(directory, exist_ok=True)
    for stage, text in stage_texts(fn).items():
        path = os.path.join(directory, f"{fn.graph.name}.{stage}.txt")
        with open(path, "w") as f:
            f.write(text)
