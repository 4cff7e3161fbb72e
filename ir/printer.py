"""The text form of the IR, one line per value, read like jaxpr or HLO:

    graph predict
      %0:f32[?,28,28] = arg name=x
      %1:f32[784,512] = arg name=dense/kernel
      %2:f32[?,784] = reshape %0 shape=(?,784)
      %3:f32[?,512] = matmul %2, %1 transpose_a=false transpose_b=false
      return out=%3

The batch dimension prints as `?`.  Array constants print as `@digest` (their bytes live in the node;
`ir.parse` takes a table for them).  Kernel groups of a fused graph print as `kernel NAME kind {...}`.
`ir.parse(print_graph(g))` prints identically.
"""
from __future__ import annotations

import json
import re

from . import ops
from .graph import ConstValue, Graph, Node

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./:\-]*$")


def format_name(name: str) -> str:
    return name if _BARE.match(name) and name not in ("true", "false") else json.dumps(name)


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
    """Text of `graph`; with `groups` (a list of (name, kind, [nodes])) the kernels are delimited."""
    order = graph.nodes()
    if groups is not None:
        grouped = [n for _, _, members in groups for n in members]
        in_group = set(grouped)
        order = [n for n in order if n not in in_group] + grouped
    names = {node: f"%{i}" for i, node in enumerate(order)}
    lines = [f"graph {format_name(graph.name)}"]
    if groups is None:
        lines += ["  " + format_node(n, names) for n in order]
    else:
        in_group = {n for _, _, members in groups for n in members}
        lines += ["  " + format_node(n, names) for n in order if n not in in_group]
        for name, kind, members in groups:
            lines.append(f"  kernel {format_name(name)} {format_name(kind)} {{")
            lines += ["    " + format_node(n, names) for n in members]
            lines.append("  }")
    lines.append("  return " + ", ".join(f"{format_name(k)}={names[v]}" for k, v in graph.outputs))
    return "\n".join(lines) + "\n"
