"""Reverse-mode automatic differentiation over the IR.

`gradients(y, xs)` walks the nodes between `xs` and the scalar `y` in reverse topological order,
applying each op's gradient rule (which emits IR nodes) and summing contributions with `add`.  The
result is ordinary IR: it prints, parses, and is optimized by the same passes as the forward graph.
"""
from __future__ import annotations

from . import build as B
from . import ops
from .graph import FLOAT_DTYPES, Node, topological_order


def gradients(y: Node, xs: list, seed: Node | None = None) -> list:
    """d y / d x for each x in xs (zeros when y does not depend on x)."""
    if y.type.shape != () and seed is None:
        raise ValueError(f"gradients needs a scalar to differentiate, got {y.type}; "
                         "reduce it first or pass seed=")
    if y.dtype not in FLOAT_DTYPES:
        raise ValueError(f"cannot differentiate a {y.dtype} value")
    order = topological_order([y])
    # Only nodes that lie on a path from some x to y carry gradient.
    wanted = set(xs)
    reaches: set = set()
    for node in order:
        if node in wanted or any(o in reaches for o in node.operands):
            reaches.add(node)
    grads: dict = {y: seed if seed is not None else B.scalar(1.0, y)}
    for node in reversed(order):
        g = grads.get(node)
        if g is None or not node.operands:
            continue
        if not any(o in reaches for o in node.operands):
            continue
        contributions = ops.get(node.op).grad(node, g)
        for operand, contribution in zip(node.operands, contributions):
            if contribution is None or operand not in reaches:
                continue
            if contribution.type != operand.type:
                raise AssertionError(f"gradient rule of {node.op} gave {contribution.type} "
                                     f"for an operand of type {operand.type}")
            previous = grads.get(operand)
            grads[operand] = contribution if previous is None else B.add(previous, contribution)
    return [grads[x] if x in grads else B.zeros_like(x) for x in xs]
