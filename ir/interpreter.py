"""The reference interpreter: runs any graph with each op's numpy reference.

It decides semantics: every compiled kernel, fused or not, is tested against it.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .graph import Graph, Node


def batch_size(graph: Graph, feeds: dict) -> int | None:
    """The batch size implied by the batched inputs (all must agree)."""
    batch = None
    for node in graph.inputs:
        if node.type.batched:
            name = node.attr("name")
            n = np.shape(feeds[name])[0]
            if batch is not None and n != batch:
                raise ValueError(f"inputs disagree on the batch size: {name!r} has {n} rows, "
                                 f"another input has {batch}")
            batch = n
    return batch


def check_feed(node: Node, value, batch) -> np.ndarray:
    name = node.attr("name")
    array = np.asarray(value)
    expected = node.type.concrete_shape(batch if batch is not None else 0)
    if array.shape != expected:
        raise ValueError(f"input {name!r} must have shape {node.type.shape} "
                         f"(concrete {expected}), got {array.shape}")
    array = array.astype(ops.np_dtype(node.dtype), copy=False)
    if node.attr("finite", False) and not np.isfinite(array).all():
        raise ValueError(f"input {name!r} is marked finite=true but holds inf or NaN; feed finite "
                         f"values or drop the mark")
    return array


def run(graph: Graph, feeds: dict, *, batch: int | None = None, env: dict | None = None) -> dict:
    """Evaluate `graph` on `feeds` (input name -> array); returns output name -> array."""
    missing = [n for n in graph.input_names if n not in feeds]
    if missing:
        raise ValueError(f"missing inputs for graph {graph.name}: {missing}")
    if batch is None:
        batch = batch_size(graph, feeds)
    values: dict = {}
    for node in graph.inputs:
        values[node] = check_feed(node, feeds[node.attr("name")], batch)
    for node in graph.nodes():
        if node in values:
            continue
        opdef = ops.get(node.op)
        result = opdef.reference([values[o] for o in node.operands], node.attr_dict, node, batch)
        result = np.asarray(result)
        expected = node.type.concrete_shape(batch if batch is not None else 0)
        if result.shape != expected or result.dtype != np.dtype(ops.np_dtype(node.dtype)):
            raise AssertionError(f"reference of {node.op} gave {result.dtype}{result.shape}, "
                                 f"its type says {node.type}")
        values[node] = result
    if env is not None:
        env.update(values)
    return {name: values[v] for name, v in graph.outputs}
