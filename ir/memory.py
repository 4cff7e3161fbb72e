"""Memory planning: where every value of a fused graph lives while a compiled function runs.

Design note.  Inputs and outputs live in buffers the caller owns (an output named like an input is
written into that input's buffer: in-place parameter and optimizer-slot updates).  Every other value
a kernel materializes goes into one workspace arena, allocated once per compiled function by its
caller.  Liveness is measured in kernel steps of the schedule; two values whose live ranges do not
overlap may share bytes (first-fit over intervals, largest first).  Because the batch size is a
runtime argument, the arena has two regions: a static one (values without a batch dimension, offsets
in bytes) and a batch-scaled one (values with a batch dimension, offsets in bytes *per batch row*,
multiplied by the batch size at run time).  The workspace needs `static_bytes + batch_bytes * n`.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ops
from .fusion import FusedGraph, group_inputs, is_free, is_materialized_source

ALIGN = 64


def _round(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Slot:
    """Where a value lives: ('input', i), ('output', j), ('arena', 'static'|'batch', offset) or
    ('const',) for array constants embedded in the code."""
    where: str
    index: int = 0
    region: str = ""
    offset: int = 0


@dataclass
class MemoryPlan:
    slots: dict              # node -> Slot
    outputs: list            # names of outputs that get their own caller buffer, in table order
    static_bytes: int
    batch_bytes: int         # per batch row
    copies: list             # (output name, node) for outputs whose value lives elsewhere

    def workspace_bytes(self, batch: int) -> int:
        return self.static_bytes + self.batch_bytes * batch

    def peak_bytes(self, batch: int) -> int:
        return self.workspace_bytes(batch)

    def report(self) -> str:
        return (f"workspace: {self.static_bytes} static bytes + {self.batch_bytes} bytes per batch "
                f"row; {len(self.slots)} values placed; peak {self.peak_bytes(32)} bytes at batch 32")


def _first_fit(intervals: list) -> tuple[dict, int]:
    """intervals: (key, size, start, end).  Returns offsets and total size."""
    placed: list = []   # (offset, size, start, end)
    offsets: dict = {}
    total = 0
    for key, size, start, end in sorted(intervals, key=lambda t: (-t[1], t[2])):
        busy = sorted((o, o + s) for o, s, a, b in placed if not (b < start or end < a))
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        offsets[key] = offset
        placed.append((offset, size, start, end))
        total = max(total, offset + size)
    return offsets, total


def _reads_elsewhere(group, target, aliases: dict) -> bool:
    """Does the elementwise loop of `group` read `target` at an index other than the one it writes
    (through a transpose, broadcast, reshape, slice, pad, concat...)?  Then writing its result into `target`'s buffer in
    place would clobber elements the loop has yet to read."""
    stack, seen = [(o, False) for o in group.outputs if o is not group.anchor], set()
    while stack:
        node, moved = stack.pop()
        if node is target or aliases.get(node) is target:
            if moved or node is not target:
                return True
            continue
        if (node, moved) in seen or node is group.anchor or node.op == "dim_size" \
                or node in group.inputs:
            continue
        seen.add((node, moved))
        # NOTE: by kind, not by name: slice, pad, concat, patches, gather... remap the index too
        moved = moved or ops.get(node.op).kind in (ops.BROADCAST, ops.INJECTIVE)
        stack.extend((o, moved) for o in node.operands)
    return False


def plan_memory(fused: FusedGraph, reuse: bool = True, blocked: frozenset = frozenset()) -> MemoryPlan:
    """Where every value of `fused` lives.  `blocked`: anchors that get no buffer, because the code
    generator keeps them a block at a time in scratch of its own (the row blocks of a dW that only
    the optimizer's update reads: codegen.lower.blocked_anchors)."""
    graph = fused.graph
    slots: dict = {}
    for i, node in enumerate(graph.inputs):
        slots[node] = Slot("input", i)
    input_by_name = {n.attr("name"): n for n in graph.inputs}
    writer = {node: g for g in fused.groups for node in g.outputs}
    own_outputs, copies, deferred = [], [], set()
    for name, value in graph.outputs:
        target = input_by_name.get(name)
        if value in slots or is_free(value) or is_materialized_source(value):
            copies.append((name, value))       # value lives elsewhere: copy it into the output
            if target is None:
                own_outputs.append(name)
            continue
        if (target is not None and value in writer
                and _reads_elsewhere(writer[value], target, fused.aliases)):
            # NOTE: computed in the arena and copied into the input's buffer after every kernel
            deferred.add(value)
            copies.append((name, value))
            continue
        if target is not None:
            slots[value] = Slot("input", graph.inputs.index(target))
        else:
            slots[value] = Slot("output", len(own_outputs))
            own_outputs.append(name)
    for node in graph.nodes():
        if node.op == "const" and node.type.shape != ():
            slots[node] = Slot("const")

    # live ranges of arena values, in kernel steps
    start: dict = {}
    end: dict = {}
    for step, group in enumerate(fused.groups):
        for node in group.outputs + ([group.anchor] if group.anchor is not None else []):
            if node not in slots and node not in blocked:
                start.setdefault(node, step)
                end[node] = max(end.get(node, step), step)
        for node in group_inputs(group):
            node = fused.aliases.get(node, node)
            if node in start:
                end[node] = max(end[node], step)
    last = len(fused.groups)
    for node in deferred:
        end[node] = last            # read by its copy, after the last kernel
    static, batch = [], []
    for node, s in start.items():
        e = end[node] if reuse else last
        if not reuse:
            s = 0
        if node.type.batched:
            batch.append((node, _round(node.type.static_size * node.type.itemsize), s, e))
        else:
            static.append((node, _round(node.type.static_size * node.type.itemsize), s, e))
    static_offsets, static_total = _first_fit(static)
    batch_offsets, batch_total = _first_fit(batch)
    for node, off in static_offsets.items():
        slots[node] = Slot("arena", region="static", offset=off)
    for node, off in batch_offsets.items():
        slots[node] = Slot("arena", region="batch", offset=off)
    for node, base in fused.aliases.items():
        if base in slots:
            slots[node] = slots[base]
    return MemoryPlan(slots, own_outputs, static_total, batch_total, copies)
