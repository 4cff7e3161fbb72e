"""An epoch of steps as runners take it (`bind_epoch` / `step`), checked once for both runners.

numpy only: the reference runner (kcompile.backend) uses it without llvmlite.  The compiled runner
(codegen.runtime) turns an `Epoch` into the plan words of the native step driver (codegen/step.py);
the reference runner runs it in numpy with the same arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Epoch:
    index: np.ndarray | None    # the epoch's row order (int64), or None: rows in order, in place
    limit: int                  # rows a step may reach: len(index), or the arrays' rows
    max_rows: int | None        # rows per step at most (the staging buffers), None in place
    counters: list              # names of u32 scalar inputs bumped after every step
    accumulate: list            # (output name, 'mean' | 'sum', accumulator array)

    def check_step(self, rows: int, start: int) -> None:
        if rows < 1 or start < 0 or start + rows > self.limit or \
                (self.max_rows is not None and rows > self.max_rows):
            raise ValueError(f"step rows {start}..{start + rows} are outside the bound epoch "
                             f"({self.limit} rows, at most {self.max_rows} per step)")


def make_epoch(feeds: dict, batched: set, output_types: dict, index=None, max_rows: int = 0,
               counters=(), accumulate=()) -> Epoch:
    """Check what `bind_epoch` was given and make the accumulators (zeroed): a float64 array of one
    element for a scalar output, a float32 array for a vector one.  `batched`: the names of the
    batched inputs; `output_types`: output name -> TensorType."""
    rows = {len(array) for name, array in feeds.items() if name in batched}
    if len(rows) > 1:
        raise ValueError(f"bound inputs disagree on the number of rows: {sorted(rows)}")
    total = rows.pop() if rows else 0
    if index is not None:
        index = np.ascontiguousarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= total):
            raise ValueError(f"row indices must lie in [0, {total}); got {index.min()}..{index.max()}")
        if max_rows < 1:
            raise ValueError("bind_epoch with an index needs max_rows >= 1 (the staging rows)")
    for name in counters:
        array = feeds.get(name)
        if not isinstance(array, np.ndarray) or array.dtype != np.uint32 or array.shape != ():
            raise TypeError(f"counter {name!r} must be a fed uint32 scalar array")
    sums = []
    for name, how in accumulate:
        ttype = output_types.get(name)
        if ttype is None or ttype.dtype != "f32" or ttype.batched or how not in ("mean", "sum"):
            raise TypeError(f"cannot accumulate output {name!r} ({ttype}) as {how!r}: only "
                            "unbatched f32 outputs, as 'mean' or 'sum'")
        sums.append((name, how, np.zeros(ttype.shape, np.float32) if ttype.rank
                     else np.zeros(1, np.float64)))
    return Epoch(index, total if index is None else len(index),
                 max_rows if index is not None else None, list(counters), sums)
