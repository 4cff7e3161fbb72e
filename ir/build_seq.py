"""Builders of the sequence primitives (`ir.ops_seq`) and the conveniences made of them.

As in `ir.build`: trivial cases return the operand itself (a slice of the whole axis, a pad by
nothing, a concat of one value), axes may be negative, and a slice that falls inside one operand
of a concat reads that operand directly.  The last rule matters for stacked recurrent layers: the
second layer takes timestep t of the first one's `return_sequences` output, which is then the first
layer's h_t itself rather than a slice of a copy of every step.
"""
from __future__ import annotations

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
