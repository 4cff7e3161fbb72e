"""Optimization passes: named pure functions `Graph -> Graph`, run from one explicit pipeline list.

Every pass takes a graph and returns a new one (nodes are immutable, so the input graph is never
touched); no state is shared between passes.  Every pass keeps the graph's signature: the same `arg`
nodes in the same order (even unused ones), and the same output names in the same order.
`run_pipeline` runs `DEFAULT_PIPELINE` (or any sequence of passes or pass names), checks that
contract and runs the verifier after every pass, and can keep the graph after each pass for
inspection (`stages`).

The passes:

- `simplify`: local algebraic identities that hold bit for bit in IEEE arithmetic, written as a
  declarative table of (pattern, replacement) rules (tinygrad's PatternMatcher, TVM's rewrite).  The
  one deliberate exception, `x + 0.0 -> x`, is explained at `SIGNED_ZERO_RULES`; `simplify_exact`
  leaves it out.
- `fold_constants`: one rule, "all operands constant -> evaluate the op's numpy reference".
- `cse`: structurally equal nodes become one node (hash-consing).
- `dce`: rebuilds only what the outputs need, and cuts edges that only carry a shape.

The passes assume the graph will not be differentiated again (`simplify` removes `stop_gradient`):
they run on what the compiler is about to lower, after `ir.gradients` has done its work.
"""
from __future__ import annotations

import struct
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from . import build as B
from . import ops
from .graph import ConstValue, Graph, Node, rebuild
from .verify import VerificationError
from .verify import verify as verify_graph

__all__ = ["with_operands", "structural_key", "splat_value", "Pat", "Rule", "RULES", "EXACT_RULES",
           "SIGNED_ZERO_RULES", "rewrite_graph", "simplify", "simplify_exact", "fold_constants",
           "cse", "dce", "PASSES", "DEFAULT_PIPELINE", "get_pass", "run_pipeline"]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def with_operands(node: Node, operands: tuple) -> Node:
    """`node` over new operands (the node itself when nothing changed).  Passes only ever replace a
    value by one of the same type, so the rebuilt node must infer the type it had."""
    if len(operands) == len(node.operands) and all(a is b for a, b in zip(operands, node.operands)):
        return node
    new = ops.make(node.op, operands, **node.attr_dict)
    if new.type != node.type:
        raise AssertionError(f"rebuilding {node.op} changed its type from {node.type} "
                             f"to {new.type}")
    return new


def _attr_key(value):
    """A hashable key that tells apart what Python's `==` confuses: 0.0 and -0.0, 1 and 1.0 and
    True; and that makes a NaN equal to itself (same bits, same value)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, tuple):
        return ("t",) + tuple(_attr_key(v) for v in value)
    if isinstance(value, ConstValue):
        return ("c", value.digest)
    return (type(value).__name__, value)


def structural_key(node: Node) -> tuple:
    """What CSE compares: op, operand identities, attributes (exactly) and result type."""
    return (node.op, tuple(o.uid for o in node.operands),
            tuple((k, _attr_key(v)) for k, v in node.attrs), node.type)


def _const_array(node: Node):
    """The value of a `const` node as a numpy array, or None when its data is unknown (a constant
    parsed from text without its table)."""
    value = node.attr("value")
    if isinstance(value, ConstValue):
        return value.array
    return np.asarray(value, dtype=ops.np_dtype(node.dtype))


def splat_value(node: Node):
    """The single value every element of `node` has, if that is known statically: a scalar `const`,
    an array `const` whose elements all have the same bits, or a broadcast / reshape / transpose of
    such a value.  Returns a numpy scalar of the node's dtype, or None."""
    while node.op in ("broadcast", "reshape", "transpose"):
        node = node.operands[0]
    if node.op != "const":
        return None
    array = _const_array(node)
    if array is None or array.size == 0:
        return None
    flat = array.reshape(-1)
    if flat.size > 1:
        # Compare bits, not values: -0.0 == 0.0, and NaN != NaN.
        bits = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
        if not np.all(bits == bits[0]):
            return None
    return flat[0]


def _scalar_source(node: Node):
    """The rank-0 `const` that `node` splats (through broadcast / reshape / transpose), or None."""
    while node.op in ("broadcast", "reshape", "transpose"):
        node = node.operands[0]
    if node.op == "const" and node.type.shape == ():
        return node
    return None


def _is_float(value) -> bool:
    return np.issubdtype(value.dtype, np.floating)


# The additive identities.  In IEEE arithmetic x + (-0.0) == x for every x (including -0.0 and NaN),
# while x + (+0.0) turns x = -0.0 into +0.0; for x - c it is the other way round.  Integers have
# one zero, which is an identity of both.
def _exact_add_zero(v) -> bool:
    return v == 0 and (not _is_float(v) or bool(np.signbit(v)))


def _exact_sub_zero(v) -> bool:
    return v == 0 and (not _is_float(v) or not bool(np.signbit(v)))


def _other_signed_zero_add(v) -> bool:
    return v == 0 and _is_float(v) and not bool(np.signbit(v))


def _other_signed_zero_sub(v) -> bool:
    return v == 0 and _is_float(v) and bool(np.signbit(v))


def _is_one(v) -> bool:
    return v == 1


# Ops that apply one scalar function at every position: f(splat) is a splat, and an op over
# broadcasts of scalars is a broadcast of the op over the scalars.  `random_uniform` and `iota` have
# the elementwise fusion kind but depend on the position, so they are not here.
POINTWISE = frozenset(name for name, d in ops.REGISTRY.items()
                      if d.kind == ops.ELEMWISE and not d.source and name != "random_uniform")


# ----------------------------------------------------------------------------------------------
# Patterns and rules
# ----------------------------------------------------------------------------------------------

class Pat:
    """A pattern over nodes, like tinygrad's UPat.

    `op` is an op name, a collection of names or None (any op); `src` the operand patterns (None:
    any operands); `name` captures the matched node (a name used twice must match the same node:
    `select(c, x, x)`); `where` is a predicate on the node; `commutative` also tries the two
    operands swapped.
    """

    __slots__ = ("ops", "src", "name", "where", "commutative")

    def __init__(self, op=None, src: Sequence["Pat"] | None = None, *, name: str | None = None,
                 where: Callable[[Node], bool] | None = None, commutative: bool = False):
        self.ops = None if op is None else frozenset((op,) if isinstance(op, str) else op)
        self.src = None if src is None else tuple(src)
        self.name = name
        self.where = where
        self.commutative = commutative
        if commutative and (self.src is None or len(self.src) != 2):
            raise ValueError("a commutative pattern needs exactly two operand patterns")

    @staticmethod
    def var(name: str) -> "Pat":
        """Any node, captured as `name`."""
        return Pat(name=name)

    @staticmethod
    def splat(predicate: Callable, name: str | None = None) -> "Pat":
        """A node whose elements are all one known value satisfying `predicate`: a scalar constant,
        a uniform array constant, or a broadcast/reshape/transpose of one (looked through)."""
        def where(node):
            value = splat_value(node)
            return value is not None and bool(predicate(value))
        return Pat(name=name, where=where)

    def match(self, node: Node, captures: dict | None = None) -> dict | None:
        """The captures of a match (a new dict), or None."""
        captures = {} if captures is None else captures
        if self.ops is not None and node.op not in self.ops:
            return None
        if self.where is not None and not self.where(node):
            return None
        if self.name is not None:
            bound = captures.get(self.name)
            if bound is not None and bound is not node:
                return None
            captures = {**captures, self.name: node}
        if self.src is None:
            return captures
        if len(self.src) != len(node.operands):
            return None
        orders = [node.operands]
        if self.commutative:
            orders.append(node.operands[::-1])
        for operands in orders:
            trial = captures
            for pattern, operand in zip(self.src, operands):
                trial = pattern.match(operand, trial)
                if trial is None:
                    break
            if trial is not None:
                return trial
        return None


class Rule(NamedTuple):
    """`pattern` matched at a node -> `replace(node, **captures)` gives its replacement (a node of
    the same type), or None to decline."""
    name: str
    pattern: Pat
    replace: Callable


X, Y, C = Pat.var("x"), Pat.var("y"), Pat.var("c")


def _same_type(node: Node) -> bool:
    return node.operands[0].type == node.type


def _compose_transposes(node, x, inner):
    p1, p2 = inner.attr("perm"), node.attr("perm")
    return B.transpose(x, [p1[i] for i in p2])


def _single_element(node: Node) -> bool:
    return not node.type.batched and node.type.static_size == 1


def _is_scalar(node: Node) -> bool:
    return node.type.shape == ()


def _broadcast_of_scalar(node: Node) -> bool:
    return node.op == "broadcast" and _is_scalar(node.operands[0])


def _all_broadcasts_of_scalars(node: Node) -> bool:
    return bool(node.operands) and all(map(_broadcast_of_scalar, node.operands))


def _hoist_pointwise(node: Node, **_):
    """op(broadcast(a), broadcast(b), ...) over scalars a, b -> broadcast(op(a, b, ...))."""
    scalars = [o.operands[0] for o in node.operands]
    return B.broadcast(ops.make(node.op, scalars, **node.attr_dict), node.shape)


def _static_dim(node: Node, x: Node):
    size = x.shape[node.attr("axis")]
    return None if size is None else B.const(size, node.dtype)


# Identities that hold bit for bit for every input (NaN payloads aside).  Each is safe because the
# replacement computes the same IEEE value at every position; shapes never change because the
# driver checks the replacement's type.
EXACT_RULES = (
    # -- arithmetic identities; the constant side may be a broadcast of a scalar (looked through)
    Rule("x*1 -> x", Pat("mul", (X, Pat.splat(_is_one)), commutative=True), lambda node, x: x),
    Rule("x/1 -> x", Pat("div", (X, Pat.splat(_is_one))), lambda node, x: x),
    Rule("x+(-0.0) -> x", Pat("add", (X, Pat.splat(_exact_add_zero)), commutative=True),
         lambda node, x: x),
    Rule("x-(+0.0) -> x", Pat("sub", (X, Pat.splat(_exact_sub_zero))), lambda node, x: x),
    Rule("neg(neg(x)) -> x", Pat("neg", (Pat("neg", (X,)),)), lambda node, x: x),
    # IEEE 754 defines x - y as x + (-y), and addition is commutative.
    Rule("x+neg(y) -> x-y", Pat("add", (X, Pat("neg", (Y,))), commutative=True),
         lambda node, x, y: ops.make("sub", (x, y))),
    Rule("x-neg(y) -> x+y", Pat("sub", (X, Pat("neg", (Y,)))),
         lambda node, x, y: ops.make("add", (x, y))),
    # -- identities of value-preserving ops
    Rule("stop_gradient(x) -> x", Pat("stop_gradient", (X,)), lambda node, x: x),
    Rule("cast(x: T -> T) -> x", Pat("cast", (X,), where=_same_type), lambda node, x: x),
    Rule("select(c, x, x) -> x", Pat("select", (C, X, X)), lambda node, c, x: x),
    Rule("select(true, x, y) -> x", Pat("select", (Pat.splat(bool), X, Y)), lambda node, x, y: x),
    Rule("select(false, x, y) -> y", Pat("select", (Pat.splat(lambda v: not v), X, Y)),
         lambda node, x, y: y),
    Rule("reduce over no axes -> x",
         Pat(("reduce_sum", "reduce_max", "reduce_mean"), (X,),
             where=lambda n: n.attr("axes") == ()),
         lambda node, x: x if x.type == node.type else None),
    Rule("dim_size(x, static axis) -> const", Pat("dim_size", (X,)), _static_dim),
    # -- layout chains
    Rule("reshape(x) to x's shape -> x", Pat("reshape", (X,), where=_same_type), lambda node, x: x),
    Rule("reshape(reshape(x)) -> reshape(x)", Pat("reshape", (Pat("reshape", (X,)),)),
         lambda node, x: B.reshape(x, node.shape)),
    Rule("transpose(x) by the identity -> x", Pat("transpose", (X,), where=_same_type),
         lambda node, x: x if node.attr("perm") == tuple(range(x.type.rank)) else None),
    Rule("transpose(transpose(x)) -> transpose(x)",
         Pat("transpose", (Pat("transpose", (X,), name="inner"),)), _compose_transposes),
    Rule("broadcast(x) to x's shape -> x", Pat("broadcast", (X,), where=_same_type),
         lambda node, x: x),
    Rule("broadcast(broadcast(x)) -> broadcast(x)", Pat("broadcast", (Pat("broadcast", (X,)),)),
         lambda node, x: B.broadcast(x, node.shape)),
    # a one-element value reshaped, then broadcast: broadcasting it directly gives the same values
    Rule("broadcast(reshape(x: one element)) -> broadcast(x)",
         Pat("broadcast", (Pat("reshape", (Pat(name="x", where=_single_element),)),)),
         lambda node, x: (B.broadcast(x, node.shape)
                          if ops.broadcast_compatible(x.shape, node.shape) else None)),
    # -- a splat stays a broadcast of a scalar however it is reshaped, transposed or computed on,
    #    so later passes see one scalar (and kernels compute the op once, not per element)
    Rule("reshape/transpose(broadcast(scalar)) -> broadcast(scalar)",
         Pat(("reshape", "transpose"), (Pat("broadcast", (Pat(name="s", where=_is_scalar),)),)),
         lambda node, s: B.broadcast(s, node.shape)),
    Rule("op(broadcast(scalar), ...) -> broadcast(op(scalar, ...))",
         Pat(POINTWISE, where=_all_broadcasts_of_scalars),
         _hoist_pointwise),
)

# NOTE: `x + 0.0 -> x` (and `x - (-0.0) -> x`) is not IEEE-exact: for x = -0.0 it gives -0.0 where
# the unsimplified graph gives +0.0.  We accept it in the default pipeline, as XLA's algebraic
# simplifier (`A + 0 => A`) and therefore Keras on JAX do: the two zeros compare equal, and every op
# of this IR maps them to equal values except a division by them (1/-0 = -inf, 1/+0 = +inf), which
# no trained model relies on.  `x*0 -> 0` and `x/x -> 1` are another matter (they change NaN and inf
# results) and are nowhere here.  `simplify_exact` runs without these two rules.
SIGNED_ZERO_RULES = (
    Rule("x+0.0 -> x (sign of a zero result)",
         Pat("add", (X, Pat.splat(_other_signed_zero_add)), commutative=True), lambda node, x: x),
    Rule("x-(-0.0) -> x (sign of a zero result)",
         Pat("sub", (X, Pat.splat(_other_signed_zero_sub))), lambda node, x: x),
)

RULES = EXACT_RULES + SIGNED_ZERO_RULES


# ----------------------------------------------------------------------------------------------
# The rewrite driver
# ----------------------------------------------------------------------------------------------

_MAX_REWRITES_PER_NODE = 64


def rewrite_graph(graph: Graph, rules: Sequence[Rule]) -> Graph:
    """Apply `rules` bottom-up until none matches.

    Design note.  Nodes are visited in topological order with their operands already rewritten, so a
    rule sees simplified operands.  At a node, the first matching rule's replacement is itself
    rewritten again (its freshly made operands first), until no rule matches: `neg(neg(neg(x)))`
    ends as `neg(x)` in one pass.  Safe because each rule is an identity (see the tables) and the
    driver refuses any replacement whose type differs from the node it replaces.
    """
    by_op: dict = {}
    generic: list = []
    for rule in rules:
        if rule.pattern.ops is None:
            generic.append(rule)
        else:
            for op in rule.pattern.ops:
                by_op.setdefault(op, []).append(rule)
    done: set = set()
    cache: dict = {}

    def rules_for(op: str) -> list:
        if op not in cache:
            cache[op] = by_op.get(op, []) + generic
        return cache[op]

    def settle(node: Node) -> Node:
        for _ in range(_MAX_REWRITES_PER_NODE):
            if node in done:
                return node
            operands = tuple(o if o in done else settle(o) for o in node.operands)
            node = with_operands(node, operands)
            for rule in rules_for(node.op):
                captures = rule.pattern.match(node)
                if captures is None:
                    continue
                new = rule.replace(node, **captures)
                if new is None or new is node:
                    continue
                if new.type != node.type:
                    raise AssertionError(f"rule {rule.name!r} replaced {node} by {new}: a rewrite "
                                         "must keep the type")
                node = new
                break
            else:
                done.add(node)
                return node
        raise RuntimeError(f"rewrite rules keep rewriting {node}; two rules undo each other")

    def rewrite(node, operands):
        if node.op == "arg":
            done.add(node)
            return node
        return settle(with_operands(node, operands))

    return rebuild(graph, rewrite)


def simplify(graph: Graph) -> Graph:
    """Algebraic simplification with `RULES` (the IEEE-exact table plus `x + 0.0 -> x`)."""
    return rewrite_graph(graph, RULES)


def simplify_exact(graph: Graph) -> Graph:
    """Algebraic simplification with the IEEE-exact rules only (keeps `x + 0.0`)."""
    return rewrite_graph(graph, EXACT_RULES)


# ----------------------------------------------------------------------------------------------
# Constant folding
# ----------------------------------------------------------------------------------------------

FOLD_TINY = 16             # elements: a result this small is always worth storing
FOLD_EVAL_LIMIT = 1 << 22  # elements: never evaluate a constant intermediate larger than this


def fold_constants(graph: Graph) -> Graph:
    """Evaluate at compile time what depends only on constants.

    Design note.  The rule is one: all operands constant -> evaluate the op's numpy reference (the
    interpreter's semantics, so the folded graph computes exactly what the unfolded one does) and
    put the result in a `const`.  What would make the graph worse is left alone:

    - Splats stay scalars.  A pointwise op (or a reshape/transpose/broadcast) over broadcasts of
      scalar constants is evaluated on the scalars and broadcast again: `mul(bcast(2), bcast(3))`
      becomes `bcast(6)`, whatever the shape, even with a batch dimension; `broadcast(scalar)`
      itself is the canonical form, free inside a kernel, and is never turned into an array.
    - A value with a batch dimension cannot be evaluated (its size is a runtime value).
    - A result is stored only when it is no larger than the constant data it is computed from
      (the largest array constant behind its operands) or at most `FOLD_TINY` elements: folding
      `transpose(W)`, `W * 2` or a reduction pays; materializing a broadcast of a scalar,
      `random_uniform(const seed, [1000])` or an outer product does not (kernels recompute those for
      free).  Such values stay as they are, but still count as constant for their users.
    - Constants parsed from text without their data are opaque.
    """
    constant: set = set()   # rewritten nodes whose value is known (and unbatched)
    stored: dict = {}       # constant node -> elements of the largest array constant it reads
    values: dict = {}       # memo of their arrays, evaluated on demand

    def mark_constant(node: Node) -> Node:
        constant.add(node)
        stored[node] = (node.type.static_size if node.op == "const"
                        else max((stored[o] for o in node.operands), default=0))
        return node

    def value_of(node: Node):
        if node not in values:
            if node.op == "const":
                values[node] = _const_array(node)
            else:
                operands = [value_of(o) for o in node.operands]
                values[node] = np.asarray(ops.get(node.op).reference(operands, node.attr_dict, node,
                                                                      None))
        return values[node]

    def rewrite(node: Node, operands: tuple) -> Node:
        node = with_operands(node, operands)
        if node.op == "const":
            return mark_constant(node) if _const_array(node) is not None else node
        if not node.operands:
            return node   # arg, iota: a source, nothing to fold
        scalars = [_scalar_source(o) for o in node.operands]
        if all(s is not None for s in scalars) and (
                node.op in POINTWISE or node.op in ("reshape", "transpose", "broadcast")):
            if node.op == "broadcast" and node.operands[0].type.shape == ():
                splat = node   # already the canonical form
            elif node.op in POINTWISE:
                scalar_node = ops.make(node.op, scalars, **node.attr_dict)
                value = ops.get(node.op).reference([_const_array(s) for s in scalars],
                                                   scalar_node.attr_dict, scalar_node, None)
                splat = B.broadcast(mark_constant(B.const(np.asarray(value), node.dtype)),
                                    node.shape)
            else:
                splat = B.broadcast(scalars[0], node.shape)
            return splat if splat.type.batched or splat.op == "const" else mark_constant(splat)
        if node.type.batched or not all(o in constant for o in node.operands):
            return node
        if node.type.static_size > FOLD_EVAL_LIMIT:
            return node
        if node.type.static_size > max(FOLD_TINY, *(stored[o] for o in node.operands)):
            return mark_constant(node)   # not worth storing, but its users may fold
        value = value_of(node)
        if value.shape != node.shape or value.dtype != np.dtype(ops.np_dtype(node.dtype)):
            raise AssertionError(f"reference of {node.op} gave {value.dtype}{value.shape} for a "
                                 f"node of type {node.type}")
        folded = mark_constant(B.const(value, node.dtype))
        values[folded] = _const_array(folded)
        return folded

    return rebuild(graph, rewrite)


# ----------------------------------------------------------------------------------------------
# Common-subexpression elimination and dead-code elimination
# ----------------------------------------------------------------------------------------------

def cse(graph: Graph) -> Graph:
    """Merge structurally equal nodes.

    Design note.  Bottom-up, each node is looked up by (op, operand identities after merging,
    attributes, type) in a table of the nodes kept so far; an equal one replaces it.  Safe because
    every op of this IR is a pure function of its operands and attributes: even `random_uniform`
    is counter-based, so the same seed, stream and shape give the same bits.  Attributes compare
    exactly (`-0.0` is not `0.0`, `1` is not `1.0`; array constants by dtype, shape and bytes).
    Inputs are never merged: they are the function's signature.
    """
    table: dict = {}

    def rewrite(node: Node, operands: tuple) -> Node:
        node = with_operands(node, operands)
        if node.op == "arg":
            return node
        return table.setdefault(structural_key(node), node)

    return rebuild(graph, rewrite)


def dce(graph: Graph) -> Graph:
    """Dead-code elimination.

    Design note.  A graph holds exactly the nodes reachable from its outputs, so rebuilding it from
    the outputs drops whatever an earlier rewrite left behind; inputs stay even when unused (they
    are the signature).  What makes the pass do more than that: a value read only for its *shape* is
    dead.  `dim_size(v, 0)` of a batched `v` reads the batch size, which is one runtime value for
    the whole function, so it is rewritten to read it from the first batched input and `v` dies if
    nothing else uses it.  (`dim_size` of a static axis is a constant; `simplify` folds it.)
    """
    batch_source = next((n for n in graph.inputs if n.type.batched), None)

    def rewrite(node: Node, operands: tuple) -> Node:
        node = with_operands(node, operands)
        if (node.op == "dim_size" and batch_source is not None and node.attr("axis") == 0
                and node.operands[0].type.batched and node.operands[0] is not batch_source):
            return ops.make("dim_size", (batch_source,), **node.attr_dict)
        return node

    return rebuild(graph, rewrite)


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------

PASSES: dict = {fn.__name__: fn for fn in (simplify, simplify_exact, fold_constants, cse, dce)}

# simplify first (removes stop_gradient, x*1, layout chains, so more is visibly constant), fold,
# merge duplicates, then simplify and fold again (merging makes `select(c, z, z)` and new splats
# visible), merge what those made equal, drop shape-only uses, and merge once more: dce points
# every batch `dim_size` at the first batched input, which makes them (and what they feed) equal,
# so that the pipeline run twice changes nothing the second time.
DEFAULT_PIPELINE = (simplify, fold_constants, cse, simplify, fold_constants, cse, dce, cse)


def get_pass(name: str) -> Callable:
    try:
        return PASSES[name]
    except KeyError:
        raise KeyError(f"unknown pass {name!r}; passes are: {', '.join(sorted(PASSES))}") from None


def _resolve(p) -> tuple:
    if isinstance(p, str):
        return p, get_pass(p)
    if callable(p):
        return getattr(p, "__name__", type(p).__name__), p
    raise TypeError(f"a pass is a function Graph -> Graph or the name of one, got {p!r}")


def _check_contract(before: Graph, after: Graph, name: str) -> None:
    if not isinstance(after, Graph):
        raise VerificationError(f"pass {name} returned {type(after).__name__}, not a Graph")
    if len(after.inputs) != len(before.inputs) or any(
            a is not b for a, b in zip(after.inputs, before.inputs)):
        raise VerificationError(f"pass {name} changed the inputs of graph {before.name}: "
                                f"{before.input_names} -> {after.input_names}; passes must keep "
                                "the signature")
    if after.output_names != before.output_names:
        raise VerificationError(f"pass {name} changed the outputs of graph {before.name}: "
                                f"{before.output_names} -> {after.output_names}")


def run_pipeline(graph: Graph, passes: Iterable | None = None, *, stages: dict | None = None,
                 verify: bool = True) -> Graph:
    """Run `passes` (functions or names; default `DEFAULT_PIPELINE`) in order.

    With `stages`, the graph after each pass is stored under the pass's name, a second run of the
    same pass as 'name.2', and so on.  With `verify`, the verifier runs on the input and after every
    pass, naming the pass that broke the graph.  The inputs and output names are always checked.
    """
    resolved = [_resolve(p) for p in (DEFAULT_PIPELINE if passes is None else passes)]
    if verify:
        verify_graph(graph)
    runs: dict = {}
    for name, fn in resolved:
        result = fn(graph)
        _check_contract(graph, result, name)
        if verify:
            try:
                verify_graph(result)
            except VerificationError as e:
                raise VerificationError(f"after pass {name}: {e}") from e
        runs[name] = runs.get(name, 0) + 1
        if stages is not None:
            stages[name if runs[name] == 1 else f"{name}.{runs[name]}"] = result
        graph = result
    return graph
