"""Lowerings of the ops of `ir.ops_seq` (slice, pad, concat): all `Index` lowerings.

An element of a slice is the operand's element at the index shifted along the axis.  An element of
a pad is the operand's element at the shifted index *clamped into range*, replaced by zero with a
`select` when the index falls in the padding: the operand is always evaluated at an index where it
exists (no out-of-bounds load, no integer division the unpadded graph would not do), and no load is
conditional, so the loop still vectorizes.

A concat of a few operands is lowered the same way, one clamped evaluation and one select per
operand.  With many operands (the T steps of a recurrent layer's `return_sequences` output) that
would evaluate every step at every element, so the operand is chosen by a binary search of branches
on the index along the axis, and a phi joins the leaves: O(log n) compares per element.

NOTE: values computed inside one branch do not dominate the others nor the join, so the evaluator's
memo (value per (node, index)) is restored after each branch: what was computed before the branches
stays usable, what was computed inside is forgotten.
"""
from __future__ import annotations

from .lower import VALUE_TYPES, Index, c64, constant, lowers

# A concat of at most this many operands evaluates them all and selects (vectorizable); above it,
# branches pick one operand per element.
SELECT_MAX_OPERANDS = 3


def _shifted(index, axis: int, value) -> tuple:
    return index[:axis] + (value,) + index[axis + 1:]


def _clamped(b, position, size: int):
    """(0 <= position < size, position clamped into [0, size)) for an i64 position.  One unsigned
    compare covers both bounds: a negative position wraps to a huge unsigned value."""
    inside = b.icmp_unsigned("<", position, c64(size))
    return inside, b.select(inside, position, c64(0))


@lowers("slice", Index)
def _slice(ev, node, index):
    (x,) = node.operands
    axis, start = node.attr("axis"), node.attr("start")
    position = index[axis] if start == 0 else ev.builder.add(index[axis], c64(start))
    return ev.value(x, _shifted(index, axis, position))


@lowers("pad", Index)
def _pad(ev, node, index):
    (x,) = node.operands
    b = ev.builder
    axis, before = node.attr("axis"), node.attr("before")
    position = index[axis] if before == 0 else b.sub(index[axis], c64(before))
    inside, clamped = _clamped(b, position, x.shape[axis])
    value = ev.value(x, _shifted(index, axis, clamped))
    return b.select(inside, value, constant(node.dtype, 0))


@lowers("concat", Index)
def _concat(ev, node, index):
    axis = node.attr("axis")
    offsets, start = [], 0
    for x in node.operands:
        offsets.append(start)
        start += x.shape[axis]
    if len(node.operands) <= SELECT_MAX_OPERANDS:
        return _concat_by_select(ev, node, index, axis, offsets)
    return _concat_by_branches(ev, node, index, axis, offsets)


def _local(b, index, axis, offset):
    return index[axis] if offset == 0 else b.sub(index[axis], c64(offset))


def _concat_by_select(ev, node, index, axis, offsets):
    b = ev.builder
    result = None
    for x, offset in zip(node.operands, offsets):
        inside, clamped = _clamped(b, _local(b, index, axis, offset), x.shape[axis])
        value = ev.value(x, _shifted(index, axis, clamped))
        result = value if result is None else b.select(inside, value, result)
    return result


def _concat_by_branches(ev, node, index, axis, offsets):
    b = ev.builder
    position = index[axis]
    join = b.append_basic_block("concat.join")
    incoming = []
    saved = dict(ev.memo)

    def emit(lo: int, hi: int):
        """Code for operands lo..hi-1, at the builder's current position (which it terminates)."""
        if hi - lo == 1:
            x = node.operands[lo]
            value = ev.value(x, _shifted(index, axis, _local(b, index, axis, offsets[lo])))
            incoming.append((value, b.block))
            b.branch(join)
            ev.memo.clear()
            ev.memo.update(saved)
            return
        mid = (lo + hi) // 2
        low = b.append_basic_block(f"concat.lt{offsets[mid]}")
        high = b.append_basic_block(f"concat.ge{offsets[mid]}")
        b.cbranch(b.icmp_signed("<", position, c64(offsets[mid])), low, high)
        b.position_at_end(low)
        emit(lo, mid)
        b.position_at_end(high)
        emit(mid, hi)

    emit(0, len(node.operands))
    b.position_at_end(join)
    phi = b.phi(VALUE_TYPES[node.dtype], name="concat")
    for value, block in incoming:
        phi.add_incoming(value, block)
    return phi

