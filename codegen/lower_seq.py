"""Lowerings of the ops of `ir.ops_seq` (slice, pad, concat): all `Index` lowerings.

An element of a slice is the operand's element at the index shifted along the axis.

An element of a pad is the operand's element at the shifted index when that index is inside the
operand, else zero: a branch around the operand's evaluation and a phi.  The operand is only ever
evaluated where it exists (no out-of-bounds load, no integer division the unpadded graph would not
do).  LLVM's vectorizer if-converts the branch, turning the operand's loads into masked loads that
stay contiguous; clamping the index into range and selecting instead would make every load a
gather, about 3x slower for pads along the innermost axis, the common case (the gradient of a gate
sliced out of a matmul's output).

A concat picks one operand per element, three ways:

- when every operand is read from memory and the axis is not the innermost one, the operand's
  address is chosen by selects on the index along the axis, which loop-invariant code motion lifts
  out of the inner loops: one contiguous load per element, whatever the number of operands (the
  T steps of a recurrent layer's `return_sequences` output);
- else, operands of one size along the axis are picked by a `switch` on index // size;
- else by a binary search of branches on the index: O(log n) compares per element.

NOTE: values computed inside one branch dominate neither the other branches nor the join, so the
evaluator's memo (value per (node, index)) is restored after each branch: what was computed before
the branches stays usable, what was computed inside is forgotten.
"""
from __future__ import annotations

from ir.fusion import is_free
from ir.graph import TensorType

from .lower import I1, STORAGE_TYPES, VALUE_TYPES, Index, c64, constant, lowers


def _shifted(index, axis: int, value) -> tuple:
    return index[:axis] + (value,) + index[axis + 1:]


def _local(b, index, axis, offset):
    return index[axis] if offset == 0 else b.sub(index[axis], c64(offset))


class _Branches:
    """Branches that each evaluate a value, joined by a phi; restores the evaluator's memo."""

    def __init__(self, ev, node):
        self.ev, self.b, self.node = ev, ev.builder, node
        self.saved = dict(ev.memo)
        self.incoming = []
        self.join = self.b.append_basic_block(f"{node.op}.join")

    def leave(self, value) -> None:
        """End the current branch with `value` (the builder is in the branch's last block)."""
        self.incoming.append((value, self.b.block))
        self.b.branch(self.join)
        self.ev.memo.clear()
        self.ev.memo.update(self.saved)

    def value(self):
        self.b.position_at_end(self.join)
        phi = self.b.phi(VALUE_TYPES[self.node.dtype], name=self.node.op)
        for value, block in self.incoming:
            phi.add_incoming(value, block)
        return phi


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
    # one unsigned compare checks both ends: a negative position wraps to a huge value
    inside = b.icmp_unsigned("<", position, c64(x.shape[axis]))
    branches = _Branches(ev, node)
    then, outside = b.append_basic_block("pad.inside"), b.append_basic_block("pad.outside")
    b.cbranch(inside, then, outside)
    b.position_at_end(then)
    branches.leave(ev.value(x, _shifted(index, axis, position)))
    b.position_at_end(outside)
    branches.leave(constant(node.dtype, 0))
    return branches.value()


@lowers("concat", Index)
def _concat(ev, node, index):
    axis = node.attr("axis")
    offsets, start = [], 0
    for x in node.operands:
        offsets.append(start)
        start += x.shape[axis]
    loaded = all(x not in ev.members and not is_free(x) and ev.emitter.has_buffer(x)
                 for x in node.operands)
    if loaded and axis < node.type.rank - 1:
        return _concat_of_buffers(ev, node, index, axis, offsets)
    if len(node.operands) > 2 and len({x.shape[axis] for x in node.operands}) == 1:
        return _concat_by_switch(ev, node, index, axis, offsets)
    return _concat_by_search(ev, node, index, axis, offsets)


def _concat_of_buffers(ev, node, index, axis, offsets):
    """Select the address of the row (index[:axis+1], 0, ..., 0) among the operands, then load at
    the offset of the inner axes, which all operands share."""
    b = ev.builder
    position = index[axis]
    zeros = tuple(c64(0) for _ in index[axis + 1:])
    row = None
    for x, offset in zip(node.operands, offsets):
        pointer = ev.pointer(x, index[:axis] + (_local(b, index, axis, offset),) + zeros)
        row = pointer if row is None else b.select(b.icmp_signed(">=", position, c64(offset)),
                                                   pointer, row)
    inner = ev.linear(index[axis + 1:], TensorType(node.dtype, node.shape[axis + 1:]))
    storage = STORAGE_TYPES[node.dtype]
    pointer = b.gep(row, [inner], source_etype=storage)
    value = b.load(pointer, typ=storage, align=4 if node.type.itemsize >= 4 else 1)
    return b.trunc(value, I1) if node.dtype == "bool" else value


def _concat_by_switch(ev, node, index, axis, offsets):
    b = ev.builder
    size = node.operands[0].shape[axis]
    which = index[axis] if size == 1 else b.udiv(index[axis], c64(size))
    branches = _Branches(ev, node)
    leaves = [b.append_basic_block(f"concat.{i}") for i in range(len(node.operands))]
    switch = b.switch(which, leaves[-1])
    for i, leaf in enumerate(leaves[:-1]):
        switch.add_case(c64(i), leaf)
    for x, offset, leaf in zip(node.operands, offsets, leaves):
        b.position_at_end(leaf)
        branches.leave(ev.value(x, _shifted(index, axis, _local(b, index, axis, offset))))
    return branches.value()


def _concat_by_search(ev, node, index, axis, offsets):
    b = ev.builder
    branches = _Branches(ev, node)

    def emit(lo: int, hi: int):
        """Operands lo..hi-1, from the builder's current block (which this terminates)."""
        if hi - lo == 1:
            x, offset = node.operands[lo], offsets[lo]
            branches.leave(ev.value(x, _shifted(index, axis, _local(b, index, axis, offset))))
            return
        mid = (lo + hi) // 2
        low = b.append_basic_block(f"concat.lt{offsets[mid]}")
        high = b.append_basic_block(f"concat.ge{offsets[mid]}")
        b.cbranch(b.icmp_signed("<", index[axis], c64(offsets[mid])), low, high)
        b.position_at_end(low)
        emit(lo, mid)
        b.position_at_end(high)
        emit(mid, hi)

    emit(0, len(node.operands))
    return branches.value()
