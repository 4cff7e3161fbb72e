"""Runners: how a traced graph is executed for the training loop, whatever the target.

A runner owns nothing but a compiled (or interpreted) function.  `state` maps input names to numpy
arrays that persist between calls (parameters, optimizer slots, the step counter): outputs named like
a state entry are written back into that array in place.  `run(feeds)` takes the other inputs
(x, y, seed, ...) and returns the other outputs.  Both targets obey the same contract, so the
training loop does not know which one it drives.
"""
from __future__ import annotations

import numpy as np

import ir
from codegen.buffers import note_write   # numpy only

TARGETS = ("llvm", "reference")


class ReferenceRunner:
    """Runs the graph with the numpy reference interpreter (`target='reference'`)."""

    def __init__(self, graph: ir.Graph, state: dict):
        self.graph = graph
        self.state = state
        self.state_outputs = [n for n in graph.output_names if n in state]
        self.result_outputs = [n for n in graph.output_names if n not in state]
        self._batched = {n.attr("name") for n in graph.inputs if n.type.batched}
        self._bound: dict = {}
        self._epoch_bound: dict = {}
        self._last: dict = {}

    def clone(self) -> "ReferenceRunner":
        """As codegen.runtime.CompiledRunner.clone."""
        return ReferenceRunner(self.graph, self.state)

    def run(self, feeds: dict) -> dict:
        inputs = {name: self.state[name] for name in self.graph.input_names if name in self.state}
        inputs.update(feeds)
        out = ir.run(self.graph, inputs)
        # Everything is computed before anything is written: an error leaves the state untouched.
        for name in self.state_outputs:
            self.state[name][...] = out[name]
        if self.state_outputs:
            note_write()
        return {name: out[name] for name in self.result_outputs}

    # The fast-path contract the training loop uses (the compiled runner implements it natively):
    # bind whole arrays once, then call(batch, offset) per step and read outputs.

    def bind(self, feeds: dict) -> None:
        self._bound = dict(feeds)

    def call(self, batch: int, offset: int = 0) -> None:
        feeds = {name: (array[offset:offset + batch] if name in self._batched else array)
                 for name, array in self._bound.items()}
        self._last = self.run(feeds)

    def bind_epoch(self, feeds: dict, index=None, max_rows: int = 0, counters=(),
                   accumulate=()) -> dict:
        """As codegen.runtime.CompiledRunner.bind_epoch, in numpy, with the same arithmetic."""
        from codegen.epoch import make_epoch   # numpy only
        outputs = {name: self.graph.output(name).type for name in self.graph.output_names}
        self._epoch = make_epoch(feeds, self._batched, outputs, index, max_rows, counters,
                                 accumulate)
        # NOTE: apart from `bind`'s feeds, as the compiled runner's epoch binding is: a callback may
        # call train_on_batch (bind + call) between two steps of the epoch.
        self._epoch_bound = dict(feeds)
        return {name: acc for name, _, acc in self._epoch.accumulate}

    def step(self, rows: int, start: int) -> None:
        epoch = self._epoch
        epoch.check_step(rows, start)
        take = slice(start, start + rows) if epoch.index is None else epoch.index[start:start + rows]
        bound = self._epoch_bound
        feeds = {name: (array[take] if name in self._batched else array)
                 for name, array in bound.items()}
        self._last = self.run(feeds)
        for name in epoch.counters:
            np.add(bound[name], np.uint32(1), out=bound[name])  # wraps as u32
        for name, how, acc in epoch.accumulate:
            out = self._last[name]
            if acc.dtype == np.float32:
                acc += out
            else:
                acc[0] += float(out) * rows if how == "mean" else float(out)

    def call_on(self, name: str, array: np.ndarray) -> None:
        self._bound = {}
        self._last = self.run({name: array})

    def output(self, name: str, batch: int) -> np.ndarray:
        return self._last[name]

    def call_on_copy(self, name: str, array: np.ndarray, output: str) -> np.ndarray:
        self.call_on(name, array)
        return np.array(self._last[output], copy=True)


def make_runner(graph: ir.Graph, target: str, state: dict, **options):
    return make_runners({"main": graph}, target, state, **options)["main"]


def make_runners(graphs: dict, target: str, state: dict, *, alias: str | None = None, extra=None,
                 **options) -> dict:
    """Runners for several graphs of one model (entry name -> graph), sharing `state`.  For 'llvm'
    they are compiled into one module, so the kernels and GEMMs they have alike are compiled once;
    `alias` and `extra` file the module in the compile cache under the caller's description of the
    graphs (codegen.compiler.compile_graphs), for `load_runners`."""
    if target == "reference":
        return {name: ReferenceRunner(graph, state) for name, graph in graphs.items()}
    if target == "llvm":
        from codegen.compiler import compile_graphs
        from codegen.runtime import CompiledRunner
        compiled = compile_graphs(graphs, options.get("options"), alias=alias, extra=extra)
        return {name: CompiledRunner(graph, state, compiled=compiled[name])
                for name, graph in graphs.items()}
    raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")


def load_runners(alias: str, traces: dict, state: dict, **options):
    """(entry name -> runner, extra) of a module filed under `alias` by make_runners (target 'llvm'),
    or None when the cache has none; `traces` maps entry names to functions that trace their graphs
    (called only if something asks for a graph)."""
    from codegen.compiler import load_alias
    from codegen.runtime import CompiledRunner
    found = load_alias(alias, traces, options.get("options"))
    if found is None:
        return None
    compiled, extra = found
    return {name: CompiledRunner(None, state, compiled=fn) for name, fn in compiled.items()}, extra


# ----------------------------------------------------------------------------------------------
# Keras's `keras.backend` utilities (the settings kcompile has, and the one float type it computes in)
# ----------------------------------------------------------------------------------------------

def backend() -> str:
    """The name of the backend: 'kcompile' (Keras answers 'jax', 'tensorflow' or 'torch')."""
    return "kcompile"


def floatx() -> str:
    """The default float type: 'float32', the one kcompile computes in."""
    return "float32"


def set_floatx(value) -> None:
    if value != "float32":
        raise ValueError(f"kcompile computes in float32 only; set_floatx({value!r}) is not supported")


def epsilon() -> float:
    """The fuzz factor of the losses (probabilities are clipped to [epsilon, 1 - epsilon]): 1e-7."""
    from kcompile import losses
    return losses.EPSILON


def set_epsilon(value) -> None:
    """Set the losses' fuzz factor (used by models compiled afterwards)."""
    from kcompile import losses
    value = float(value)
    if not 0.0 <= value < 0.5:
        raise ValueError(f"set_epsilon needs a value in [0, 0.5); got {value!r}")
    losses.EPSILON = value


def image_data_format() -> str:
    """'channels_last', the layout of kcompile's images (batch, height, width, channels)."""
    return "channels_last"


def set_image_data_format(data_format) -> None:
    if data_format != "channels_last":
        raise ValueError("kcompile supports data_format='channels_last' only; got "
                         f"set_image_data_format({data_format!r})")


def clear_session(free_memory=True) -> None:
    """As Keras's: forget global state.  kcompile's models keep their own (names, compiled code), so
    this only collects garbage, which frees the compiled code of models no longer referenced."""
    import gc
    if free_memory:
        gc.collect()
