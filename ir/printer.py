"""The text form of the IR, one line per value, read like jaxpr or HLO.  `dump_ir('traced')` of
`Sequential([Flatten(input_shape=(28, 28)), Dense(10)])`:

    graph predict
      %0:f32[?,28,28] = arg name=x
      %1:f32[784,10] = arg finite=true name=dense/kernel
      %2:f32[10] = arg finite=true name=dense/bias
      %3:f32[?,784] = reshape %0 shape=(?,784)
      %4:f32[?,10] = matmul %3, %1 transpose_a=false transpose_b=false
      %5:f32[?,10] = broadcast %2 shape=(?,10)
      %6:f32[?,10] = add %4, %5
      return y_pred=%6

Each line is `%N:dtype[shape] = op operands attributes`, attributes sorted by name.  The batch
dimension prints as `?`.  `finite=true` on an `arg` is a promise that the input holds no inf or NaN
(`graph.known_finite`): the model's predict program makes it for its weights, which `predict` checks
after every change to them, so that lowering may skip the zero entries of a one-row product.
Array constants print as `@digest` (their bytes live in the node; `ir.parse` takes a table for
them).  Kernel groups of a fused graph print as `kernel NAME kind {...}`.  `ir.parse(print_graph(g))`
prints identically; `ir.parse(text, with_groups=True)` also returns the kernel groups.
"""
from __future__ import annotations

import json
import re

from . import ops
from .graph import ConstValue, Graph, Node

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./:\-]*$")


def format_name(name: str) -> str:
    return name if _BARE.match(name) and name not in ("true", "false") and not _number(name) \
        else json.dumps(name)


def _number(word: str) -> bool:
    """Whether the parser would read the bare word as a number ('inf', 'nan', 'Infinity')."""
    try:
        float(word)
    except ValueError:
        return False
    return True


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return format_name(value)
    if isinstance(value, ConstValue):
        return "@" + value.digest
    if isinstance(value, tuple):
        return "(" + ",".join("?" if v is None else format_value(v) for v in value) + ")"
    raise TypeError(f"cannot print attribute value {value!r}")


def format_node(node: Node, names: dict) -> str:
    opdef = ops.get(node.op)
    parts = [f"{names[node]}:{node.type} = {node.op}"]
    if node.operands:
        parts.append(" " + ", ".join(names[o] for o in node.operands))
    for key, value in node.attrs:
        if opdef.source and key in ("shape", "dtype"):
            continue  # printed as the result type
        parts.append(f" {key}={format_value(value)}")
    return "".join(parts)


def print_graph(graph: Graph, groups=None) -> str:
    """Text of `graph`; with `groups` (a list of (name, kind, [nodes])) the kernels are delimited.

    Nodes outside every kernel (inputs, constants, views that kernels evaluate inline) print at
    top level just before the first kernel that needs them.
    """
    names: dict = {}
    lines = [f"graph {format_name(graph.name)}"]

    def emit(node, indent="  "):
        names[node] = f"%{len(names)}"
        lines.append(indent + format_node(node, names))

    if groups is None:
        for node in graph.nodes():
            emit(node)
    else:
        in_group = {n for _, _, members in groups for n in members}

        def emit_loose(node):
            stack = [(node, False)]
            while stack:
                n, expanded = stack.pop()
                if n in names or n in in_group:
                    continue
                if expanded:
                    emit(n)
                else:
                    stack.append((n, True))
                    stack.extend((o, False) for o in reversed(n.operands))

        for node in graph.inputs:
            emit_loose(node)
        for name, kind, members in groups:
            for m in members:
                for o in m.operands:
                    emit_loose(o)
            lines.append(f"  kernel {format_name(name)} {format_name(kind)} {{")
            for m in members:
                emit(m, "    ")
            lines.append("  }")
        for _, value in graph.outputs:
            emit_loose(value)
    lines.append("  return " + ", ".join(f"{format_name(k)}={names[v]}" for k, v in graph.outputs))
    return "\n".join(lines) + "\n"
