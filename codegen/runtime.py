"""Calling compiled graphs: buffers owned by Python, addresses cached, one ctypes call per run.

`CompiledRunner` implements the runner contract of `kcompile.backend` (state arrays updated in
place, `run(feeds)` returns the other outputs) without knowing anything about Keras.  The pointer
table is a numpy uint64 array built once; per call only the entries of the fed inputs change, and the
workspace arena grows when a larger batch arrives.
"""
from __future__ import annotations

import ctypes

import numpy as np

import ir
from ir.ops import np_dtype

from .buffers import aligned_empty, note_write
from .compiler import CompileOptions, compile_graph
from .step import NAME as STEP_DRIVER

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)
_STEP = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_void_p)


def address_of(array: np.ndarray) -> int:
    """The address of an array's first element.  NOTE: through ctypes' from_buffer, 0.45 us, where
    `array.ctypes.data` takes 1.5 us (a tenth of a one-sample predict's native call); an array
    from_buffer refuses (read-only, empty) takes the slow way."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError, BufferError):
        return array.ctypes.data


class CompiledRunner:
    def __init__(self, graph: ir.Graph, state: dict, options: CompileOptions | None = None,
                 compiled=None):
        self.compiled = compiled or compile_graph(graph, options)
        self.state = state
        self._entry_address = self.compiled.address
        self._fn = _ENTRY(self._entry_address)
        self._step = _STEP(self.compiled.code.address(STEP_DRIVER))
        signature = self.signature = self.compiled.signature
        self.n_inputs = len(signature.inputs)
        self.table = np.zeros(self.n_inputs + len(signature.outputs) + 1, dtype=np.uint64)
        self._table_address = self.table.ctypes.data
        self.feed_index = {}
        self.input_types = {}
        self._keep = {}
        for i, (name, ttype) in enumerate(signature.inputs):
            self.input_types[name] = ttype
            if name in state:
                array = state[name]
                self._check(name, array, ttype, None, strict=True)
                self.table[i] = array.ctypes.data
                self._keep[name] = array
            else:
                self.feed_index[name] = i
        self.result_names = [name for name, _ in signature.outputs]
        self.updates_state = any(name in state for name in self.result_names)
        self.result_types = dict(signature.outputs)
        self._capacity = -1
        self._workspace = None
        self._outputs = {}
        self._bound = []

    @property
    def graph(self) -> ir.Graph:
        """The graph the code was compiled from, after the passes."""
        return self.compiled.optimized

    def clone(self) -> "CompiledRunner":
        """A runner of the same code and state (the weights: the same arrays), with bindings,
        outputs and workspace of its own: for a call made while this runner is in the middle of
        a loop of calls (a callback's predict during a predict)."""
        return CompiledRunner(None, self.state, compiled=self.compiled)

    @staticmethod
    def _check(name, array, ttype, batch, strict=False):
        if not isinstance(array, np.ndarray) or array.dtype != np.dtype(np_dtype(ttype.dtype)) \
                or not array.flags.c_contiguous:
            raise TypeError(f"buffer {name!r} must be a C-contiguous {np.dtype(np_dtype(ttype.dtype))}"
                            f" array")
        expected = ttype.concrete_shape(batch if batch is not None else array.shape[0]
                                        if ttype.batched else 0)
        if array.shape != expected:
            raise ValueError(f"buffer {name!r} must have shape {ttype.shape}, got {array.shape}")

    def _ensure(self, batch: int) -> None:
        if batch <= self._capacity:
            return
        capacity = max(batch, 1)
        self._workspace = aligned_empty(self.signature.workspace_bytes(capacity))
        self.table[-1] = self._workspace.ctypes.data
        for j, name in enumerate(self.result_names):
            ttype = self.result_types[name]
            out = np.empty(ttype.concrete_shape(capacity), dtype=np_dtype(ttype.dtype))
            self._outputs[name] = out
            self.table[self.n_inputs + j] = out.ctypes.data
        self._capacity = capacity

    def bind(self, feeds: dict) -> None:
        """Fix the buffers of fed inputs for `call`: whole arrays (a dataset, or staging buffers
        refilled every step); `call(batch, offset)` then reads rows [offset, offset + batch)."""
        self._bound = []
        for name, array in feeds.items():
            ttype = self.input_types[name]
            if not isinstance(array, np.ndarray) or array.dtype != np.dtype(np_dtype(ttype.dtype)) \
                    or not array.flags.c_contiguous:
                raise TypeError(f"bound input {name!r} must be a C-contiguous "
                                f"{np.dtype(np_dtype(ttype.dtype))} array")
            self._check(name, array, ttype, array.shape[0] if ttype.batched else None)
            index = self.feed_index[name]
            self.table[index] = array.ctypes.data
            self._keep[name] = array
            if ttype.batched:
                row_bytes = array.strides[0] if array.ndim else 0
                self._bound.append((index, array.ctypes.data, row_bytes, array.shape[0]))

    def call(self, batch: int, offset: int = 0) -> None:
        """Run on the bound buffers with `batch` rows starting at row `offset`."""
        table = self.table
        for index, base, row_bytes, rows in self._bound:
            if offset + batch > rows:
                raise ValueError(f"rows {offset}..{offset + batch} are past the {rows} bound rows")
            table[index] = base + offset * row_bytes
        if batch > self._capacity:
            self._ensure(batch)
        self._run(batch)

    def _run(self, batch: int) -> None:
        """The native call on the table as it is; a graph that updates its state in place counts as a
        write to the weights (codegen.buffers.writes)."""
        self._fn(batch, self._table_address)
        if self.updates_state:
            note_write()

    def bind_epoch(self, feeds: dict, index: np.ndarray | None = None, max_rows: int = 0,
                   counters=(), accumulate=()) -> dict:
        """Prepare `step(rows, start)`, one native call per step that does all the per-step work
        (codegen/step.py): `feeds` are whole arrays (batched inputs: all the epoch's rows) and other
        inputs; with `index` (the epoch's row order, integers) each step gathers rows
        index[start:start + rows] of every batched input into a staging buffer of `max_rows` rows,
        without it the step reads rows start.. in place.  `counters` name u32 scalar inputs
        incremented after every step; `accumulate` is [(output name, 'mean' | 'sum')]: f32 outputs
        added over the steps ('mean': a batch mean, added times the step's rows) into the returned
        accumulators (name -> float64 array of one element for a scalar, float32 array for a vector).
        """
        from .epoch import make_epoch
        from .step import ACC_MEAN, ACC_SUM, ACC_VECTOR
        batched = {name for name in feeds if self.input_types[name].batched}
        epoch = make_epoch(feeds, batched, self.result_types, index, max_rows, counters, accumulate)
        self.bind(feeds)
        index = epoch.index
        keep = [index]
        words = [0 if index is None else index.ctypes.data, len(batched)]
        for name, array in feeds.items():
            if name not in batched:
                continue
            staging = None
            if index is not None:
                staging = np.empty((max_rows,) + array.shape[1:], array.dtype)
                keep.append(staging)
            words += [self.feed_index[name], array.ctypes.data,
                      0 if staging is None else staging.ctypes.data, array.strides[0]]
        words.append(len(epoch.counters))
        words += [self.feed_index[name] for name in epoch.counters]
        words.append(len(epoch.accumulate))
        for name, how, acc in epoch.accumulate:
            kind = ACC_VECTOR if acc.dtype == np.float32 else ACC_MEAN if how == "mean" else ACC_SUM
            words += [kind, self.n_inputs + self.result_names.index(name), acc.ctypes.data, acc.size]
            keep.append(acc)
        self._epoch = epoch
        self._epoch_plan = np.array(words, dtype=np.uint64)
        self._epoch_keep = keep
        self._plan_address = self._epoch_plan.ctypes.data
        return {name: acc for name, _, acc in epoch.accumulate}

    def step(self, rows: int, start: int) -> None:
        """One step on rows [start, start + rows) of the epoch bound by `bind_epoch`."""
        self._epoch.check_step(rows, start)
        if rows > self._capacity:
            self._ensure(rows)
        self._step(self._entry_address, rows, start, self._table_address, self._plan_address)
        if self.updates_state:
            note_write()

    def call_on(self, name: str, array: np.ndarray) -> None:
        """Run with `array` as the batched input `name` (the only fed input), all its rows: the
        caller has checked that it is a C-contiguous array of the input's dtype and row shape."""
        batch = len(array)
        self.table[self.feed_index[name]] = address_of(array)
        self._keep[name] = array
        self._bound = []
        if batch > self._capacity:
            self._ensure(batch)
        self._run(batch)

    def output(self, name: str, batch: int) -> np.ndarray:
        out = self._outputs[name]
        return out[:batch] if self.result_types[name].batched else out

    def call_on_copy(self, name: str, array: np.ndarray, output: str) -> np.ndarray:
        """call_on(name, array), then a copy of output `output`'s rows: a one-batch predict in one
        method (its few microseconds of Python are a share of a one-sample predict's)."""
        self.call_on(name, array)
        out = self._outputs[output]
        return out[:len(array)].copy() if self.result_types[output].batched else out.copy()

    def run(self, feeds: dict) -> dict:
        batch = None
        prepared = {}
        for name, i in self.feed_index.items():
            if name not in feeds:
                raise ValueError(f"missing input {name!r}")
            ttype = self.input_types[name]
            array = np.asarray(feeds[name], dtype=np_dtype(ttype.dtype))
            if not array.flags.c_contiguous:   # (ascontiguousarray would turn a 0-d seed into 1-d)
                array = array.copy(order="C")
            if ttype.batched:
                if batch is not None and array.shape[0] != batch:
                    raise ValueError(f"inputs disagree on the batch size ({name!r} has "
                                     f"{array.shape[0]} rows, another input {batch})")
                batch = array.shape[0]
            self._check(name, array, ttype, batch)
            prepared[name] = array
        batch = 0 if batch is None else batch
        for name, array in prepared.items():
            self.table[self.feed_index[name]] = array.ctypes.data
        self._keep.update(prepared)
        self._bound = []
        self._ensure(batch)
        self._run(batch)
        return {name: self.output(name, batch).copy() for name in self.result_names}
