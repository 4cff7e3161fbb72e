"""Graphviz DOT of a graph; with kernel groups, each kernel is a cluster."""
from __future__ import annotations

from .graph import Graph, to_networkx
from .printer import format_value


def _label(node) -> str:
    attrs = " ".join(f"{k}={format_value(v)}" for k, v in node.attrs
                     if k not in ("shape", "dtype") and not (node.op == "const" and k == "value"
                                                             and node.type.shape != ()))
    # (a name's quotes and backslashes escaped for DOT; then DOT's own line break)
    text = f"{node.op} {attrs}".strip().replace("\\", "\\\\").replace('"', '\\"')
    return text + f"\\n{node.type}"


def to_dot(graph: Graph, groups=None) -> str:
    """DOT text.  Edges come from networkx (operand -> user, labelled with the operand index)."""
    nx_graph = to_networkx(graph)
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes())}
    # NOTE: newrank: without it Graphviz 2.43's ranking of edges between clusters fails on small
    # training graphs ("trouble in init_rank ... lost edge").
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", "  newrank=true;",
             '  node [shape=box, fontname="monospace"];']
    grouped = set()
    for gi, (name, kind, members) in enumerate(groups or []):
        lines.append(f'  subgraph "cluster_{gi}" {{')
        lines.append(f'    label="{name} ({kind})"; style=rounded; color=steelblue;')
        for node in members:
            grouped.add(node)
            lines.append(f'    {ids[node]} [label="{_label(node)}"];')
        lines.append("  }")
    for node in graph.nodes():
        if node in grouped:
            continue
        style = ', style=filled, fillcolor="#e8f0ff"' if node.op == "arg" else ""
        lines.append(f'  {ids[node]} [label="{_label(node)}"{style}];')
    for src, dst, index in nx_graph.edges(keys=True):
        lines.append(f'  {ids[src]} -> {ids[dst]} [label="{index}", fontsize=8];')
    for i, (name, node) in enumerate(graph.outputs):
        lines.append(f'  out{i} [label="{name}", shape=ellipse];')
        lines.append(f"  {ids[node]} -> out{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"
