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

from .lower import GEMM_LIBRARY, lower
from .step import emit_step_driver


@dataclass(frozen=True)
class CompileOptions:
    fusion_level: int = 1
    reuse_memory: bool = True
    speed_level: int = 3
    passes: tuple | None = None          # None: the default pipeline of ir.passes
    profile: bool = bool(os.environ.get("KCOMPILE_PROFILE"))   # per-kernel cycle counters
    threading: bool | None = None        # None: parallel regions when libgomp loads; False: never
    verify_each_pass: bool = bool(os.environ.get("KCOMPILE_VERIFY"))


@dataclass
class CompiledFunction:
    graph: ir.Graph                      # the graph as traced
    optimized: ir.Graph                  # after the pass pipeline
    fused: object
    plan: object
    lowered: object
    code: object                         # a jit.JitModule (or cached equivalent)
    stages: dict = field(default_factory=dict)

    name: str = "main"

    @property
    def address(self) -> int:
        return self.code.address(self.name)

    def profile(self) -> list:
        """(kernel name, kind, cycles) per kernel, when compiled with profile=True."""
        import ctypes
        addr = self.code.engine.get_global_value_address(f"{self.name}.profile")
        counts = (ctypes.c_int64 * (len(self.fused.groups) + 1)).from_address(addr)
        return [(g.name, g.kind, g.root, counts[i]) for i, g in enumerate(self.fused.groups)]

    @property
    def input_names(self) -> list:
        return self.optimized.input_names

    @property
    def output_names(self) -> list:
        return list(self.plan.outputs)


def optimize_graph(graph: ir.Graph, options: CompileOptions, stages: dict | None = None) -> ir.Graph:
    """The pass pipeline.  The verifier runs on the result (the tests run it after every pass, with
    `verify_each_pass=True`; in production that would double the time of this stage)."""
    from ir import passes
    result = passes.run_pipeline(graph, options.passes, stages=stages,
                                 verify=options.verify_each_pass)
    return ir.verify(result)


def compile_graph(graph: ir.Graph, options: CompileOptions | None = None, name: str = "main"
                  ) -> CompiledFunction:
    return compile_graphs({name: graph}, options)[name]


def compile_graphs(graphs: dict, options: CompileOptions | None = None) -> dict:
    """Compile several graphs (entry name -> graph) into one module of machine code.

    Kernels alike (same structure, see codegen.lower.kernel_structure) and GEMM functions of the same
    shape are generated, optimized and compiled once for all of them: a model's train step, evaluate
    and predict functions share most of their forward kernels and every GEMM.  Returns entry name ->
    CompiledFunction, all holding the same `code`.
    """
    from llvmlite import ir as llvm_ir
    options = options or CompileOptions()
    threading = options.threading
    if threading is None:
        from .parallel import threads_available
        threading = threads_available()
    prepared = []
    for name, graph in graphs.items():
        ir.verify(graph)
        stages: dict = {"traced": graph}
        optimized = optimize_graph(graph, options, stages)
        fused = fuse(optimized, level=options.fusion_level)
        plan = plan_memory(fused, reuse=options.reuse_memory)
        prepared.append((name, graph, stages, optimized, fused, plan))
    lowered: dict = {}

    def build():
        # NOTE: two modules, the kernels and the GEMMs they call, so that two cores can compile them
        # side by side (codegen.jit.compile_objects); they are linked in one engine when loaded.
        module = llvm_ir.Module(name="kcompile." + "+".join(graphs))
        library = llvm_ir.Module(name=module.name + ".gemm")
        GEMM_LIBRARY[module] = library
        shared: dict = {}
        for name, _, _, _, fused, plan in prepared:
            lowered[name] = lower(fused, plan, name=name, module=module, profile=options.profile,
                                  threading=threading, shared_kernels=shared)
        emit_step_driver(module)
        return [module, library] if library.functions else [module]

    key = source_key([(name, fused, plan) for name, _, _, _, fused, plan in prepared], options,
                     threading)
    code = _compile_module(build, key, options)
    functions = {}
    for name, graph, stages, optimized, fused, plan in prepared:
        fn = functions[name] = CompiledFunction(graph, optimized, fused, plan, lowered.get(name), code,
                                                stages, name=name)
        _maybe_dump(fn)
    return functions


def _compile_module(build, key, options):
    from .cache import compile_cached
    return compile_cached(build=build, source_key=key, speed_level=options.speed_level)


_FINGERPRINT = []


def code_fingerprint() -> str:
    """A hash of the compiler's own source: cached machine code is reused only by the code that
    made it."""
    if not _FINGERPRINT:
        import hashlib
        import pathlib
        h = hashlib.sha256()
        root = pathlib.Path(__file__).resolve().parent
        for path in sorted(root.glob("*.py")) + sorted((root.parent / "ir").glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
        _FINGERPRINT.append(h.hexdigest())
    return _FINGERPRINT[0]


def source_key(entries, options, threading) -> str:
    """Everything a lowered module is a function of, as text; `entries` is [(name, fused, plan)]."""
    parts = [code_fingerprint(), f"profile={options.profile}", f"threading={threading}"]
    for name, fused, plan in entries:
        parts += [f"entry {name}", fused.text(), memory_text_of(plan, fused)]
    return "\n".join(parts)


def memory_text_of(plan, fused) -> str:
    order = {n: i for i, n in enumerate(fused.graph.nodes())}
    slots = sorted((order.get(node, -1), str(slot)) for node, slot in plan.slots.items())
    return f"{plan.static_bytes} {plan.batch_bytes} {plan.outputs} {plan.copies and [c[0] for c in plan.copies]} {slots}"


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
