"""The compile pipeline of one graph: passes -> fusion -> memory plan -> lowering -> machine code.

Every choice is an option (`CompileOptions`), not hard-wired: fusion level, whether the arena
reuses memory, the optimization level.  `compile_graph` returns a `CompiledFunction`, which knows its
table layout and gives the address of its entry point.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np

import ir
from ir import fusion as ir_fusion
from ir.fusion import fuse
from ir.graph import TensorType
from ir.memory import plan_memory

from . import lower as lowering
from .jit import env_flag, without_ir_passes
from .lower import COMPANION, GEMM_LIBRARY, blocked_anchors, lower
from .step import emit_step_driver


@dataclass(frozen=True)
class CompileOptions:
    fusion_level: int = 1
    reuse_memory: bool = True
    speed_level: int = 3
    passes: tuple | None = None          # None: the default pipeline of ir.passes
    # per-kernel cycle counters; the default read from the environment when the options are made
    # (a model's compile), not when kcompile is imported
    profile: bool = field(default_factory=lambda: env_flag("KCOMPILE_PROFILE"))
    threading: bool | None = None        # None: parallel regions when libgomp loads; False: never
    verify_each_pass: bool = field(default_factory=lambda: env_flag("KCOMPILE_VERIFY"))


@dataclass(frozen=True)
class Signature:
    """What a caller of a compiled entry needs to know: its inputs and outputs in table order (name,
    TensorType) and its workspace size.  Computed by the passes, stored in the cache's program
    manifest, so that a warm process can call the entry without running them."""
    inputs: tuple
    outputs: tuple
    static_bytes: int
    batch_bytes: int

    @classmethod
    def of(cls, optimized: ir.Graph, plan) -> "Signature":
        return cls(tuple((n.attr("name"), n.type) for n in optimized.inputs),
                   tuple((name, optimized.output(name).type) for name in plan.outputs),
                   int(plan.static_bytes), int(plan.batch_bytes))

    def workspace_bytes(self, batch: int) -> int:
        return self.static_bytes + self.batch_bytes * batch

    def to_json(self) -> dict:
        def values(pairs):
            return [[name, t.to_json()] for name, t in pairs]
        return {"inputs": values(self.inputs), "outputs": values(self.outputs),
                "static_bytes": self.static_bytes, "batch_bytes": self.batch_bytes}

    @classmethod
    def from_json(cls, data: dict) -> "Signature":
        def values(rows):
            return tuple((str(name), TensorType.from_json(t)) for name, t in rows)
        return cls(values(data["inputs"]), values(data["outputs"]), int(data["static_bytes"]),
                   int(data["batch_bytes"]))


class CompiledFunction:
    """One entry of a compiled module: its machine code (`code`, `address`), its `signature`, and
    the graph at every stage (`graph` as traced, `optimized`, `fused`, `plan`, `stages`).  When the
    code came from the cache's program manifest, the stages after tracing are computed again only
    if something asks for them (inspection, profiling)."""

    def __init__(self, graph, code, signature: Signature, *, name: str = "main",
                 options: CompileOptions | None = None, prepared: tuple | None = None,
                 lowered=None):
        self._graph = graph                 # an ir.Graph, or a function that traces it
        self.code = code                    # a jit.JitModule (or cached equivalent)
        self.signature = signature
        self.name = name
        self.lowered = lowered
        self._options = options or CompileOptions()
        self._prepared = prepared           # (stages, optimized, fused, plan)

    @property
    def graph(self) -> ir.Graph:
        if not isinstance(self._graph, ir.Graph):
            self._graph = self._graph()
        return self._graph

    def _stage(self, i: int):
        if self._prepared is None:
            self._prepared = _prepare(self.graph, self._options)
        return self._prepared[i]

    stages = property(lambda self: self._stage(0))
    optimized = property(lambda self: self._stage(1))
    fused = property(lambda self: self._stage(2))
    plan = property(lambda self: self._stage(3))

    @property
    def address(self) -> int:
        return self.code.address(self.name)

    def profile(self) -> list:
        """(kernel name, kind, root node, cycles) per kernel, when compiled with profile=True: the
        time stamp counter's cycles spent in each kernel's calls since the code was loaded."""
        import ctypes
        if not self._options.profile:
            raise RuntimeError("this function was compiled without profile counters: set "
                               "KCOMPILE_PROFILE=1 before it compiles")
        addr = self.code.engine.get_global_value_address(f"{self.name}.profile")
        counts = (ctypes.c_int64 * (len(self.fused.groups) + 1)).from_address(addr)
        return [(g.name, g.kind, g.root, counts[i]) for i, g in enumerate(self.fused.groups)]

    @property
    def input_names(self) -> list:
        return [name for name, _ in self.signature.inputs]

    @property
    def output_names(self) -> list:
        return [name for name, _ in self.signature.outputs]


def optimize_graph(graph: ir.Graph, options: CompileOptions, stages: dict | None = None) -> ir.Graph:
    """The pass pipeline.  The verifier runs on the result (the tests run it after every pass, with
    `verify_each_pass=True`; in production that would double the time of this stage)."""
    from ir import passes
    result = passes.run_pipeline(graph, options.passes, stages=stages,
                                 verify=options.verify_each_pass)
    return ir.verify(result)


def _prepare(graph: ir.Graph, options: CompileOptions) -> tuple:
    """(stages, optimized, fused, plan) of a traced graph: everything before lowering."""
    ir.verify(graph)
    stages: dict = {"traced": graph}
    optimized = optimize_graph(graph, options, stages)
    fused = fuse(optimized, level=options.fusion_level)
    return stages, optimized, fused, plan_memory(fused, reuse=options.reuse_memory,
                                                 blocked=blocked_anchors(fused))


def compile_graph(graph: ir.Graph, options: CompileOptions | None = None, name: str = "main"
                  ) -> CompiledFunction:
    return compile_graphs({name: graph}, options)[name]


def compile_graphs(graphs: dict, options: CompileOptions | None = None, *, alias: str | None = None,
                   extra=None) -> dict:
    """Compile several graphs (entry name -> graph) into one module of machine code.

    Kernels alike (same structure, see codegen.lower.kernel_structure) and GEMM functions of the same
    shape are generated, optimized and compiled once for all of them: a model's train step, evaluate
    and predict functions share most of their forward kernels and every GEMM.  Returns entry name ->
    CompiledFunction, all holding the same `code`.

    A process that finds these graphs in the cache's program manifests (codegen.cache.load_program)
    loads the machine code without running the passes (they run later only if a stage is asked for).
    `alias` (text) is the caller's own complete description of what the graphs are made from: the
    module is also filed under it, with `extra` (a JSON value), for `load_alias`, which needs no graphs.
    """
    options = options or CompileOptions()
    threading = _threading(options)
    description = program_description(graphs, options, threading)
    found = None if description is None else _from_manifest(description, graphs, options)
    functions = None if found is None else found[0]
    if functions is None:
        functions = _compile_graphs(graphs, options, threading)
        if description is not None:
            _store_manifest(description, functions, None, options)
    alias_key = alias_description(alias, options, threading) if alias is not None else None
    if alias_key is not None:
        _store_manifest(alias_key, functions, extra, options)
    return functions


def load_alias(alias: str, graphs: dict, options: CompileOptions | None = None):
    """(entry name -> CompiledFunction, extra) filed by `compile_graphs(..., alias=alias)`, or None.

    `graphs` maps each entry name to a function returning its graph, called only if something asks
    for a stage of that entry (the machine code and signatures come from the cache)."""
    options = options or CompileOptions()
    key = alias_description(alias, options, _threading(options))
    return None if key is None else _from_manifest(key, graphs, options)


def _threading(options: CompileOptions) -> bool:
    if options.threading is not None:
        return options.threading
    from .parallel import threads_available
    return threads_available()


def _compile_graphs(graphs: dict, options: CompileOptions, threading: bool) -> dict:
    from llvmlite import ir as llvm_ir
    prepared = {name: _prepare(graph, options) for name, graph in graphs.items()}
    lowered: dict = {}

    def build():
        # NOTE: three modules: the kernels, a companion module with a share of them, and the GEMM
        # library they call.  This process compiles the first while a forked one compiles the other
        # two (codegen.jit.compile_objects); they are linked in one engine when loaded.  The library
        # (register-tiled micro-kernels, packers and the loops that drive them) is written as the
        # machine should run it: it gets LLVM's code generator but none of its IR passes, which
        # saved ~0.2 s of CPU time on W1's train+evaluate+predict with the same inner loops.
        module = llvm_ir.Module(name="kcompile." + "+".join(graphs))
        companion = llvm_ir.Module(name=module.name + ".2")
        library = without_ir_passes(llvm_ir.Module(name=module.name + ".gemm"))
        GEMM_LIBRARY[module] = GEMM_LIBRARY[companion] = library
        COMPANION[module] = companion
        shared: dict = {}
        for name, (_, _, fused, plan) in prepared.items():
            lowered[name] = lower(fused, plan, name=name, module=module, profile=options.profile,
                                  threading=threading, shared_kernels=shared)
        emit_step_driver(module)
        return [m for m in (module, companion, library) if m is module or m.functions]

    key = source_key([(name, fused, plan) for name, (_, _, fused, plan) in prepared.items()], options,
                     threading)
    code = _compile_module(build, key, options)
    functions = {}
    for name, graph in graphs.items():
        stages, optimized, fused, plan = prepared[name]
        fn = functions[name] = CompiledFunction(graph, code, Signature.of(optimized, plan), name=name,
                                                options=options, prepared=prepared[name],
                                                lowered=lowered.get(name))
        _maybe_dump(fn)
    return functions


def _options_description(options: CompileOptions, threading: bool) -> list | None:
    # None when a module cannot be described: custom passes (their code is not hashed), per-kernel
    # profiling or stage dumps (both want the passes' results).
    if options.passes is not None or options.profile or os.environ.get("KCOMPILE_DUMP"):
        return None
    # (numpy's version: constant folding runs numpy's arithmetic)
    return [code_fingerprint(), f"numpy={np.__version__}", f"threading={threading}",
            f"fusion_level={options.fusion_level}", f"reuse_memory={options.reuse_memory}",
            f"share_producers={ir_fusion.SHARE_PRODUCERS}", _code_switches_description()]


def _code_switches_description() -> str:
    """The lowering's zero-skipping switches (the column blocks' lists included), the GEMM's panel
    packing and prefetches, and the dW
    prefetch (and the L2 size it depends on), which change the code (part of both cache keys)."""
    from . import gemm
    from .target import l2_cache_bytes
    return (f"skip_zeros={lowering.SKIP_ZEROS},{lowering.SKIP_ZEROS_TALL},"
            f"{lowering.SKIP_ZEROS_ROWS} pack_full_panels={gemm.PACK_FULL_PANELS} "
            f"prefetch_next_copy={gemm.PREFETCH_NEXT_COPY}/{gemm.PREFETCH_COPY_MIN_K} "
            f"prefetch_c={gemm.PREFETCH_C}/{gemm.PREFETCH_C_MAX_K} "
            f"pack_a={gemm.PACK_A}/{gemm.PACK_A_MAX_BYTES}/{gemm.PACK_A_MIN_K} "
            f"gemv_prefetch={gemm.GEMV_PREFETCH_AHEAD} sparse_tiles={lowering.SPARSE_TILES} "
            f"sparse_columns={lowering.SPARSE_COLUMNS}/{lowering.SPARSE_COLUMNS_SHARE} "
            f"prefetch_streams={lowering.MAX_PREFETCH_STREAMS}/{lowering.PREFETCH_L2_SHARE} "
            f"l2={l2_cache_bytes()}")


def program_description(graphs: dict, options: CompileOptions, threading: bool) -> str | None:
    """Everything the module compiled from `graphs` is a function of, as text (the key of a program
    manifest), or None when it cannot be described."""
    parts = _options_description(options, threading)
    if parts is None:
        return None
    for name, graph in graphs.items():
        parts += [f"entry {name}", ir.print_graph(graph)]
    return "\n".join(parts)


def alias_description(alias: str, options: CompileOptions, threading: bool) -> str | None:
    """The manifest key of a caller's description of its graphs (see compile_graphs), or None."""
    parts = _options_description(options, threading)
    return None if parts is None else "\n".join(parts + ["alias", alias])


def _store_manifest(description: str, functions: dict, extra, options: CompileOptions) -> None:
    from .cache import store_program
    code = next(iter(functions.values())).code
    data = {"entries": {name: fn.signature.to_json() for name, fn in functions.items()},
            "extra": extra}
    store_program(description, code, data, speed_level=options.speed_level)


def _from_manifest(description: str, graphs: dict, options: CompileOptions):
    """(entry name -> CompiledFunction, extra) from the cache's program manifest for the entries of
    `graphs` (graphs, or functions that trace them), or None (a miss)."""
    from .cache import load_program
    found = load_program(description, speed_level=options.speed_level)
    if found is None:
        return None
    code, data = found
    try:
        signatures = {name: Signature.from_json(value) for name, value in data["entries"].items()}
        extra = data["extra"]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if set(signatures) != set(graphs):
        return None
    return {name: CompiledFunction(graph, code, signatures[name], name=name, options=options)
            for name, graph in graphs.items()}, extra


def _compile_module(build, key, options):
    from .cache import compile_cached
    return compile_cached(build=build, source_key=key, speed_level=options.speed_level)


_FINGERPRINTS: dict = {}


def source_fingerprint(*packages) -> str:
    """A hash of the Python source of `packages` (directories, searched recursively), computed
    once per process: what code made an entry is part of its key."""
    key = tuple(str(p) for p in packages)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for package in packages:
            root = pathlib.Path(package)
            for path in sorted(root.rglob("*.py")):
                h.update(f"{root.name}/{path.relative_to(root)}".encode())
                h.update(path.read_bytes())
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def code_fingerprint() -> str:
    """A hash of the compiler's own source (codegen and ir): cached machine code is reused only by
    the code that made it."""
    root = pathlib.Path(__file__).resolve().parent
    return source_fingerprint(root, root.parent / "ir")


def source_key(entries, options, threading) -> str:
    """Everything a lowered module is a function of, as text; `entries` is [(name, fused, plan)]."""
    parts = [code_fingerprint(), f"profile={options.profile}", f"threading={threading}",
             _code_switches_description()]
    for name, fused, plan in entries:
        parts += [f"entry {name}", fused.text(), memory_text_of(plan, fused)]
    return "\n".join(parts)


def memory_text_of(plan, fused) -> str:
    order = {n: i for i, n in enumerate(fused.graph.nodes())}
    slots = sorted((order.get(node, -1), str(slot)) for node, slot in plan.slots.items())
    return f"{plan.static_bytes} {plan.batch_bytes} {plan.outputs} {plan.copies and [c[0] for c in plan.copies]} {slots}"


# (directory, graph name) -> functions of that name this process has dumped there
_DUMPED: dict = {}


def _maybe_dump(fn: CompiledFunction) -> None:
    """KCOMPILE_DUMP=dir: every stage of `fn` as `dir/<graph>.<stage>.txt`; the second function of the
    same name this process compiles is `<graph>-2`, and so on, so one model's files do not replace
    another's."""
    directory = os.environ.get("KCOMPILE_DUMP")
    if not directory:
        return
    from .stages import stage_texts
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise OSError(f"KCOMPILE_DUMP={directory!r}: cannot make that directory for the compiler's "
                      f"stages ({error}); point it at a writable directory, or unset it") from None
    key = (os.path.abspath(directory), fn.graph.name)
    _DUMPED[key] = count = _DUMPED.get(key, 0) + 1
    name = fn.graph.name if count == 1 else f"{fn.graph.name}-{count}"
    for stage, text in stage_texts(fn).items():
        path = os.path.join(directory, f"{name}.{stage}.txt")
        with open(path, "w") as f:
            f.write(text)
