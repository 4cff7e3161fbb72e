"""Builders of the sequence primitives (`ir.ops_seq`) and the conveniences made of them.

As in `ir.build`: trivial cases return the operand itself (a slice of the whole axis, a pad by
nothing, a concat of one value), axes may be negative, and a slice that falls inside one operand
of a concat reads that operand directly.  The last rule matters for stacked recurrent layers: the
second layer takes timestep t of the first one's `return_sequences` output, which is then the first
layer's h_t itself rather than a slice of a copy of every step.
"""
from __future__ import annotations

import builtins
import numbers

import numpy as np

from .build import reshape
from .graph import Node
from .ops import make


def _axis(x: Node, axis: int) -> int:
    rank = x.type.rank
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for {x.type}")
    return axis % rank


def slice(x: Node, start: int, stop: int, axis: int = -1) -> Node:  # noqa: A001 - numpy's name
    """x[..., start:stop, ...] along `axis`; negative start/stop count from the end, as in Python."""
    axis = _axis(x, axis)
    size = x.shape[axis]
    if size is None:
        raise ValueError(f"cannot slice the batch axis of {x.type}: its size is not static")
    start, stop = (int(v) + size if int(v) < 0 else int(v) for v in (start, stop))
    if start == 0 and stop == size:
        return x
    if x.op == "slice" and x.attr("axis") == axis:
        base = x.attr("start")
        return slice(x.operands[0], base + start, base + stop, axis)
    if x.op == "concat" and x.attr("axis") == axis:
        offset = 0
        for operand in x.operands:
            length = operand.shape[axis]
            if offset <= start and stop <= offset + length:
                return slice(operand, start - offset, stop - offset, axis)
            offset += length
    return make("slice", (x,), axis=axis, start=start, stop=stop)


def pad(x: Node, before: int, after: int, axis: int = -1) -> Node:
    """`before` zeros, then x, then `after` zeros along `axis`."""
    axis = _axis(x, axis)
    if before == 0 and after == 0:
        return x
    return make("pad", (x,), axis=axis, before=int(before), after=int(after))


def concat(xs, axis: int = -1) -> Node:
    """numpy's concatenate along `axis`."""
    xs = list(xs)
    if not xs:
        raise ValueError("concat needs at least one value")
    axis = _axis(xs[0], axis)
    if len(xs) == 1:
        return xs[0]
    return make("concat", xs, axis=axis)


def take(x: Node, index: int, axis: int = 1) -> Node:
    """x[:, index] along `axis`, the axis removed: timestep `index` of a (batch, time, ...) value."""
    axis = _axis(x, axis)
    step = slice(x, index, index + 1 if index != -1 else x.shape[axis], axis)
    return reshape(step, x.shape[:axis] + x.shape[axis + 1:])


def stack(xs, axis: int = 1) -> Node:
    """numpy's stack: a new axis `axis` (counted in the result) holding the values in order."""
    xs = list(xs)
    if not xs:
        raise ValueError("stack needs at least one value")
    rank = xs[0].type.rank + 1
    if not -rank <= axis < rank:
        raise ValueError(f"stack axis {axis} is out of range for rank {rank}")
    axis %= rank
    if axis == 0 and xs[0].type.batched:
        raise ValueError("stack cannot put a new axis before the batch axis")
    return concat([reshape(x, x.shape[:axis] + (1,) + x.shape[axis:]) for x in xs], axis)


def split(x: Node, sections, axis: int = -1) -> list:
    """numpy's split: into `sections` equal parts, or parts of the given sizes (a list)."""
    axis = _axis(x, axis)
    size = x.shape[axis]
    if isinstance(sections, int):
        if sections <= 0 or size is None or size % sections:
            raise ValueError(f"cannot split axis {axis} of {x.type} into {sections} equal parts")
        sizes = [size // sections] * sections
    else:
        sizes = [int(s) for s in sections]
        if sum(sizes) != size:
            raise ValueError(f"split sizes {sizes} do not add up to axis {axis} of {x.type}")
    parts, start = [], 0
    for s in sizes:
        parts.append(slice(x, start, start + s, axis))
        start += s
    return parts



# numpy's `:`; this module's `slice` is the primitive's builder
_FULL = builtins.slice(None)


def getitem(x: Node, key) -> Node:
    """`x[key]` with a static key, as numpy's basic indexing: integers (negative from the end),
    slices with a positive step, one Ellipsis and None (a new axis of size 1), built from `slice`,
    `pad` and `reshape`.  The batch axis (its size is not static) takes only `:`.  Anything else
    (an array, list or traced value as an index, a boolean mask, a negative step) is a TypeError.
    """
    items = key if isinstance(key, tuple) else (key,)
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not (
                item is None or item is Ellipsis
                or isinstance(item, (numbers.Integral, builtins.slice))):
            raise TypeError(
                f"a traced value ({x!r}) takes only static basic indices: integers, slices with a "
                f"positive step, ... and None; got {item!r} (of type {type(item).__name__}). Index "
                "arrays, lists, traced values and boolean masks are not supported (for a mask, "
                "select elementwise: kcompile.ops.where(mask, x, 0))")
    if sum(item is Ellipsis for item in items) > 1:
        raise IndexError(f"an index can only have a single ellipsis ('...'); got {key!r}")
    real = sum(item is not None and item is not Ellipsis for item in items)
    rank = x.type.rank
    if real > rank:
        raise IndexError(f"too many indices for a traced value of rank {rank} ({x.type}): {key!r}")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + (_FULL,) * (rank - real) + items[at + 1:]
    else:
        items = items + (_FULL,) * (rank - real)
    shape = []      # the result's shape, made by one reshape at the end
    axis = 0        # the axis of x at hand (slices keep every axis; the reshape drops and adds)
    for item in items:
        if item is None:
            if axis == 0 and x.type.batched:
                raise TypeError(f"a new axis (None) before the batch axis of a traced value "
                                f"({x.type}) is not supported: the batch axis stays first")
            shape.append(1)
            continue
        size = x.shape[axis]
        if size is None:
            if isinstance(item, numbers.Integral) or item.indices(2 ** 62) != (0, 2 ** 62, 1):
                raise TypeError(f"cannot index the batch axis of a traced value ({x.type}) with "
                                f"{item!r}: its size is not known while the graph is traced; "
                                "use `:` there and index the other axes (x[:, i])")
            shape.append(None)
        elif isinstance(item, numbers.Integral):
            index = int(item)
            if not -size <= index < size:
                raise IndexError(f"index {index} is out of bounds for axis {axis} with size "
                                 f"{size} ({x.type})")
            x = slice(x, index % size, index % size + 1, axis)
        else:
            x = _strided_slice(x, item, axis, size)
            shape.append(x.shape[axis])
        axis += 1
    return reshape(x, tuple(shape))


def _strided_slice(x: Node, item, axis: int, size: int) -> Node:
    """x[..., start:stop:step, ...] along `axis` for a positive step: the elements from start on,
    padded to whole groups of `step`, regrouped as (count, step) and the first of each group kept."""
    if item.step is not None and (isinstance(item.step, bool) or not isinstance(
            item.step, numbers.Integral) or item.step <= 0):
        raise TypeError(f"a traced value takes slices with a positive integer step; got {item!r} "
                        "(negative steps, which reverse an axis, are not supported)")
    for bound in (item.start, item.stop):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Integral)):
            raise TypeError(f"a traced value's slice bounds must be integers or None; got {item!r}")
    start, stop, step = item.indices(size)
    count = len(range(start, stop, step))
    if count == 0:
        raise IndexError(f"{item!r} selects nothing from axis {axis} of size {size}: kcompile "
                         "values cannot be empty")
    if step == 1:
        return slice(x, start, start + count, axis)
    end = start + count * step
    x = slice(x, start, min(end, size), axis)
    if end > size:
        x = pad(x, 0, end - size, axis)
    shape = x.shape
    grouped = reshape(x, shape[:axis] + (count, step) + shape[axis + 1:])
    return reshape(slice(grouped, 0, 1, axis + 1), shape[:axis] + (count,) + shape[axis + 1:])
