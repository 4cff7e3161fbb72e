"""Seeing what the compiler did to a model: `dump_ir`, `compiler_stages`, `kernel_profile`,
`to_dot`, `plot`, `export`.

Stages, in pipeline order:

- 'traced': the forward (predict) graph as traced from the layers;
- 'train': forward + loss + backward + optimizer update, as traced (needs `compile()`);
- one stage per pass of `ir.passes.DEFAULT_PIPELINE` ('simplify', 'fold_constants', 'cse', ...,
  repeated passes numbered 'simplify.2'), each the graph after that pass;
- 'optimized', 'fused' (kernel groups delimited), 'memory' (the arena plan), 'llvm' (optimized
  LLVM IR), 'asm' (host assembly).

The pass stages and later ones describe the train step when the model is compiled with a loss and
an optimizer, and the predict function otherwise (`graph='predict'` picks it explicitly).  The
native stages are produced by the LLVM backend even when the model trains on `target='reference'`.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

import ir


class InspectionMixin:
    """Methods of `Model` for looking inside the compiler and exporting the result."""

    # -- graphs ---------------------------------------------------------------------------------

    def _inspection_spec(self):
        input_shape = self._known_input_shape()
        if input_shape is None:
            raise ValueError(f"model {self.name!r} has no input shape yet: give the first layer "
                             "input_shape=..., start with Input(shape=...), or call build()")
        self._ensure_built(input_shape)
        output_shape = tuple(self.compute_output_shape(input_shape))
        candidates = [np.zeros((1,) + output_shape[1:], np.float32),
                      np.zeros((1,) + output_shape[1:-1], np.int32)]
        error = None
        for y in candidates:
            try:
                _, spec, loss = self._prepare_targets(y, input_shape, "y")
                return spec, loss
            except ValueError as e:
                error = e
        raise error

    def _inspected_program(self, graph: str | None):
        if graph is None:
            graph = "train" if getattr(self, "compiled", False) and self.loss is not None else "predict"
        if graph not in ("train", "eval", "predict"):
            raise ValueError(f"graph must be 'train', 'eval' or 'predict', got {graph!r}")
        if graph == "predict":
            self._ensure_built(self._known_input_shape())
            return self._program("predict")
        if not getattr(self, "compiled", False) or self.loss is None:
            raise RuntimeError(f"the {graph} graph exists once the model is compiled with a loss: "
                               "call model.compile(optimizer=..., loss=...) first")
        spec, loss = self._inspection_spec()
        return self._program(graph, spec, loss)

    def _compiled_function(self, graph: str | None = None):
        program = self._inspected_program(graph)
        compiled = getattr(program.runner, "compiled", None)
        if compiled is None:      # target='reference': compile for inspection only
            from codegen.compiler import compile_graph
            compiled = compile_graph(program.graph, name=program.graph.name)
            program.runner.compiled = compiled
        return compiled

    def compiler_stages(self, graph: str | None = None) -> list:
        """The stage names `dump_ir` accepts, in pipeline order."""
        from codegen.stages import stage_names
        names = stage_names(self._compiled_function(graph))
        # 'train' (the train graph as traced) is a stage of the train graph's list only, as
        # dump_ir takes it
        trainable = getattr(self, "compiled", False) and self.loss is not None
        train_listed = trainable and graph in (None, "train")
        return ["traced"] + (["train"] if train_listed else []) + [n for n in names if n != "traced"]

    def dump_ir(self, stage: str = "optimized", graph: str | None = None) -> str:
        """Text of one compiler stage (see `compiler_stages()`)."""
        from codegen.stages import stage_text
        if stage == "traced":     # as traced: the predict graph unless `graph` names another
            return ir.print_graph(self._inspected_program(graph or "predict").graph)
        if stage == "train":      # the train graph as traced, whatever `graph` says
            if graph not in (None, "train"):
                raise ValueError(f"stage 'train' is the traced train graph; for the {graph} graph as "
                                 f"traced use stage='traced', graph={graph!r}")
            return ir.print_graph(self._inspected_program("train").graph)
        fn = self._compiled_function(graph)
        try:
            return stage_text(fn, stage)
        except KeyError:
            raise ValueError(f"unknown stage {stage!r}; stages are "
                             f"{self.compiler_stages(graph)}") from None

    def kernel_profile(self, graph: str | None = None) -> list:
        """Where the time of a compiled program went: `(kernel name, kind, cycles)` per kernel of
        `graph` ('train', 'eval' or 'predict'; as `dump_ir` picks it by default), the time stamp
        counter's cycles of every call so far, for a model that compiled with KCOMPILE_PROFILE=1
        set on target 'llvm'.  Kernel names are those of `dump_ir('fused')`."""
        if getattr(self, "target", "llvm") != "llvm":
            raise RuntimeError(f"kernel_profile measures native code: model {self.name!r} runs on "
                               f"target {self.target!r}; compile it with target='llvm'")
        fn = self._compiled_function(graph)
        return [(name, kind, cycles) for name, kind, _, cycles in fn.profile()]

    def to_dot(self, path=None, graph: str | None = None) -> str:
        """Graphviz DOT of the fused graph, one cluster per kernel; written to `path` if given."""
        from ir.dot import to_dot
        fn = self._compiled_function(graph)
        fused = fn.fused
        text = to_dot(fused.graph, [(g.name, g.kind, g.members) for g in fused.groups])
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def plot(self, path, graph: str | None = None) -> str:
        """Render the fused graph with Graphviz's `dot` (format from the suffix: .png, .svg, .pdf)."""
        path = os.fspath(path)
        fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"plot writes .png, .svg or .pdf files, got {path!r}")
        dot = shutil.which("dot")
        if dot is None:
            raise RuntimeError("model.plot needs Graphviz's `dot` program, which is not installed "
                               "(apt-get install -y graphviz); model.to_dot(path) writes the DOT "
                               "text without it")
        result = subprocess.run([dot, f"-T{fmt}", "-o", path], input=self.to_dot(graph=graph),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dot failed: {result.stderr.strip()}")
        return path

    # -- export ---------------------------------------------------------------------------------

    def export(self, filepath, cpu: str | None = None, features: str | None = None,
               name: str | None = None) -> str:
        """Write a compiled predictor directory (see `kcompile.load_predictor`); `name` names its
        files and prefixes its C functions (see `kcompile.export`)."""
        import kcompile
        from kcompile.export import check_name, export_predictor
        from kcompile.trainer import trace_predict
        check_name(name)
        input_shape = self._known_input_shape()
        if input_shape is None:
            raise ValueError(f"model {self.name!r} has no input shape yet; build or fit it before "
                             "exporting")
        self._ensure_built(input_shape)
        params = {w.path: w.numpy() for w in self.weights}
        layers = [f"{layer.name} ({type(layer).__name__})" for layer in self.layers]
        # ids fed straight to an Embedding are range-checked by the library, as by predict
        embedding = self._input_embedding()
        ids_below = None if embedding is None else embedding.input_dim
        return export_predictor(trace_predict(self), params, os.fsdecode(os.fspath(filepath)),
                                layers=layers, version=kcompile.__version__, cpu=cpu,
                                features=features, name=name, ids_below=ids_below)
