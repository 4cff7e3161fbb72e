"""Fusion: partition a graph's computation into kernels, by pattern kind as TVM's FuseOps does.

Design note.  Nodes are visited in reverse topological order, so a node's users already have
groups.  A node joins the group of its users when all of them are in one group and that group can
compute the node *inline* (re-evaluating it at whatever index the users need):

- elementwise / broadcast / injective nodes fuse into any consumer group, except as the operand of a
  matmul (which needs its operands in memory);
- a node that must also be materialized (a graph output, e.g. an in-place parameter update) fuses only
  when every user reads it elementwise at the group's own index, and becomes an extra output;
- a matmul (out-elementwise-fusable) or reduction becomes the *anchor* of the elementwise group of
  its users when they read it elementwise at its own shape: matmul + bias + activation is one
  kernel, and so is dW = X^T dY followed by the optimizer's update of W, m and v.

- an elementwise value that several kernels read (a layer's pre-activation, which the backward
  pass reads too) is computed by the first of them in graph order as one more output, when that
  kernel can evaluate it at its own index, instead of in a kernel of its own: in a train step
  matmul + bias + activation (+ Dropout's select) is then one kernel too (SHARE_PRODUCERS).
  Should that make two kernels wait for each other, fusion runs again without it.

Why it is safe: inlining only re-evaluates pure ops, so the fused graph computes what the unfused one
does (the tests run both in the reference interpreter, and compiled); a group is never split across
another group's dependency because members join only when *all* their users are in that group.
`level=0` gives one kernel per op, for debugging and for measuring what fusion buys.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import ops
from .graph import Graph, Node

_INLINABLE = (ops.ELEMWISE, ops.BROADCAST, ops.INJECTIVE)
_VIEWS = ("broadcast", "reshape", "transpose", "stop_gradient", "dim_size", "iota")


def is_free(node: Node) -> bool:
    """Sources that every kernel can produce itself: scalar constants, nothing else."""
    return node.op == "const" and node.type.shape == ()


def is_materialized_source(node: Node) -> bool:
    return node.op == "arg" or (node.op == "const" and node.type.shape != ())


@dataclass
class Group:
    name: str
    kind: str                  # 'elementwise' | 'matmul' | 'reduce' | 'argmax'
    root: Node                 # the value whose shape is the loop space
    anchor: Node | None = None  # the matmul / reduction the elementwise part is fused onto
    members: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    inputs: list = field(default_factory=list)   # materialized values read, set by fuse()

    @property
    def shape(self):
        return self.root.shape


@dataclass(frozen=True)
class FusedGraph:
    graph: Graph
    groups: tuple   # of Group, in a valid execution order
    aliases: dict = field(default_factory=dict)   # reshape node -> the node whose buffer it reuses

    def text(self) -> str:
        from .printer import print_graph
        return print_graph(self.graph, [(g.name, g.kind, g.members) for g in self.groups])


def _kind_of(node: Node) -> str:
    if node.op == "matmul":
        return "matmul"
    if node.op == "argmax":
        return "argmax"
    if ops.get(node.op).kind == ops.REDUCE:
        return "reduce"
    return "elementwise"


def _reads_elementwise(user: Node, node: Node) -> bool:
    """Does `user` read `node` at its own index (same shape, no index remapping)?"""
    return ops.get(user.op).kind == ops.ELEMWISE and user.shape == node.shape


#: Whether an elementwise value read by several kernels is computed in the first of them (as one
#: of its outputs) rather than in a kernel of its own (see the module docstring).
SHARE_PRODUCERS = True


def fuse(graph: Graph, level: int = 1, _copied: frozenset = frozenset(),
         _share: bool | None = None) -> FusedGraph:
    """Kernel groups of `graph` (see the module docstring).  `_copied`: reshapes that must not
    alias their operand (set by the retry below)."""
    share = SHARE_PRODUCERS if _share is None else _share
    order = graph.nodes()
    users = graph.users()
    outputs = {v for _, v in graph.outputs}
    group_of: dict = {}
    groups: list = []
    floating: set = set()   # cheap views evaluated inline by every group that reads them
    aliases: dict = {}      # reshapes of a materialized value: the same bytes, no kernel at all

    def groups_reading(node) -> dict:
        found = {}
        for u in users.get(node, []):
            if u in floating or u in aliases:
                found.update(groups_reading(u))
            else:
                found[id(group_of[u])] = group_of[u]
        return found

    def reads_through(view, anchor) -> bool:
        """Does `anchor` read `view` (a reshape aliasing its operand), directly or via views?"""
        return any(u is anchor or (u in aliases and reads_through(u, anchor))
                   for u in users.get(view, []))

    def new_group(node):
        g = Group(f"k{len(groups)}", _kind_of(node), node,
                  anchor=None if _kind_of(node) == "elementwise" else node)
        g.members.append(node)
        g.outputs.append(node)
        groups.append(g)
        group_of[node] = g

    position = {n: i for i, n in enumerate(order)}
    for node in reversed(order):
        if is_free(node) or is_materialized_source(node):
            continue
        us = users.get(node, [])
        target = None
        user_groups = groups_reading(node)
        if (level >= 1 and node.op == "reshape" and node not in outputs and node not in _copied
                and not (len(user_groups) == 1 and all(u.op != "matmul" for u in us))):
            # A row-major reshape is a view: read the operand's buffer through the new shape.
            # (When its only readers are one fusable group, inlining it there is better still.)
            aliases[node] = node.operands[0]
            continue
        if (level >= 1 and node.op in _VIEWS and len(user_groups) > 1 and node not in outputs
                and not any(u.op == "matmul" for u in us)):
            floating.add(node)
            continue
        if level >= 1 and len(user_groups) == 1:
            g = next(iter(user_groups.values()))
            kind = ops.get(node.op).kind
            # a reshape view of this node read by the anchor reads this node's buffer
            feeds_anchor = any(u is g.anchor or (u in aliases and reads_through(u, g.anchor))
                               for u in us)
            if kind in _INLINABLE:
                # a matmul reads its operands from memory; reductions evaluate producers inline
                ok = not (feeds_anchor and g.kind == "matmul")
                if node in outputs:
                    ok = (ok and not feeds_anchor and g.kind in ("elementwise", "matmul")
                          and node.shape == g.shape
                          and all(_reads_elementwise(u, node) for u in us))
                if ok:
                    target = g
            elif node.op == "matmul" or (kind == ops.REDUCE and node.op != "argmax"):
                if (g.kind == "elementwise" and g.anchor is None and node.shape == g.shape
                        and all(_reads_elementwise(u, node) for u in us)
                        and (node.op != "matmul" or _reads_at_its_index(g, node, users))):
                    g.kind = _kind_of(node)
                    g.anchor = node
                    target = g
        shared = False
        if (target is None and share and level >= 1 and len(user_groups) > 1
                and ops.get(node.op).kind in _INLINABLE):
            target = _first_reader(node, us, user_groups, group_of, position)
            if target is not None and any(
                    (u in floating or u in aliases) and id(target) in groups_reading(u) for u in us):
                # the kernel would also read it through a view (a transpose), at another index
                target = None
            shared = target is not None
        if target is None:
            new_group(node)
            continue
        target.members.append(node)
        group_of[node] = target
        if node in outputs or shared:
            target.outputs.append(node)
    # Members were appended in reverse topological order; groups were created consumers-first.
    for g in groups:
        g.members.sort(key=position.__getitem__)
        g.outputs.sort(key=position.__getitem__)
    for g in groups:
        g.inputs = _inputs_of(g, floating)
    # an alias of an alias reads the first one's base
    for node in list(aliases):
        base = aliases[node]
        while base in aliases:
            base = aliases[base]
        aliases[node] = base
    # A reshape aliases a buffer, so its base must be one: an argument, an array constant or a
    # group's output.  Whether it is was decided after the reshape (producers come later in this
    # walk): a base that ended up a view evaluated inline (a transpose read by several kernels)
    # or a member inside a kernel has none, and the reshape is a copy after all.
    written = {node for g in groups for node in g.outputs}
    bufferless = frozenset(node for node, base in aliases.items()
                           if not (is_materialized_source(base) or base in written))
    if bufferless:
        return fuse(graph, level, _copied | bufferless)
    try:
        groups = _schedule(graph, groups, group_of, aliases)
    except _Cycle:
        if not share:
            raise
        # a value computed in one reader's kernel made two kernels wait for each other: fuse
        # again without sharing
        return fuse(graph, level, _copied, _share=False)
    for i, g in enumerate(groups):
        g.name = f"k{i}"
    return FusedGraph(graph, tuple(groups), aliases)


def _first_reader(node, us, user_groups: dict, group_of: dict, position: dict):
    """The kernel among `node`'s readers that computes it as one more output: the one that runs
    first in graph order, when it can evaluate `node` at its own index (same shape, read
    elementwise there, not an operand of its matmul); the others read the materialized value."""
    g = min(user_groups.values(), key=lambda grp: position[grp.root])
    if g.kind not in ("elementwise", "matmul") or node.shape != g.shape:
        return None
    if any(o.op == "random_uniform" for o in node.operands):
        # NOTE: a Dropout mask stays a loop of its own: in W1's step, drawing it in the forward
        # product's block epilogue took 20-30k cycles more a step (KCOMPILE_PROFILE, two threads)
        return None
    readers = [u for u in us if group_of.get(u) is g]
    if not readers or not all(_reads_elementwise(u, node) for u in readers):
        return None
    if g.anchor is not None and any(u is g.anchor for u in us):
        return None
    return g


class _Cycle(ValueError):
    """Kernels that cannot be ordered (see _schedule)."""


def _reads_at_its_index(group: Group, anchor: Node, users: dict) -> bool:
    """Does every member of `group` computed from `anchor` read it at its own index (elementwise
    ops of its shape only)?  A product's epilogue runs block by block as the blocks of the product
    are computed (codegen.lower._emit_blocked_matmul), so it may read no other element of it: in
    `(w + w^T) @ ...`'s gradient, the transpose of dW read rows of blocks not computed yet."""
    members = set(group.members)
    stack, seen = [anchor], set()
    while stack:
        node = stack.pop()
        for user in users.get(node, []):
            if user in members and user not in seen:
                if not _reads_elementwise(user, node) or user.shape != anchor.shape:
                    return False
                seen.add(user)
                stack.append(user)
    return True


def _inputs_of(group: Group, floating: set) -> list:
    members = set(group.members)
    seen, out = set(), []

    def visit(o):
        if o in members or is_free(o) or o in seen:
            return
        seen.add(o)
        if o in floating:
            for p in o.operands:
                visit(p)
        else:
            out.append(o)
    for m in group.members:
        for o in m.operands:
            visit(o)
    return out


def group_inputs(group: Group) -> list:
    """Materialized values a group reads (args, array constants, other groups' outputs)."""
    return group.inputs


def _schedule(graph: Graph, groups: list, group_of: dict, aliases: dict) -> list:
    """Order groups so that producers run first and every reader of a buffer updated in place runs
    before the group that overwrites it."""
    import networkx as nx
    dag = nx.DiGraph()
    index = {id(g): i for i, g in enumerate(groups)}
    for i in range(len(groups)):
        dag.add_node(i)
    readers: dict = {}
    for i, g in enumerate(groups):
        for o in group_inputs(g):
            o = aliases.get(o, o)
            if o in group_of:
                dag.add_edge(index[id(group_of[o])], i)
            readers.setdefault(o, set()).add(i)
    inputs_by_name = {n.attr("name"): n for n in graph.inputs}
    for name, value in graph.outputs:
        target = inputs_by_name.get(name)
        if target is None or value not in group_of:
            continue
        writer = index[id(group_of[value])]
        for r in readers.get(target, ()):
            if r != writer:
                dag.add_edge(r, writer)
    if not nx.is_directed_acyclic_graph(dag):
        raise _Cycle("in-place updates cannot be ordered: a value is read after the group that "
                         "overwrites it must run")
    position = {n: i for i, n in enumerate(graph.nodes())}
    order = nx.lexicographical_topological_sort(dag, key=lambda i: position[groups[i].root])
    return [groups[i] for i in order]
