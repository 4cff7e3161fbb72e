"""The primitives of recurrent layers: `slice`, `pad` and `concat` along one static axis.

Registered like every other op (`ir.ops`).  A recurrent layer is unrolled over its static number of
timesteps: it takes timestep t of its input with `slice`, cuts a matmul's output into gates with
`slice`, and stacks the per-step outputs of `return_sequences` with `concat`.  The three form
adjoint pairs, so their gradient rules are each other:

- `slice(x, axis, start, stop)` -> `pad(g, axis, before=start, after=size-stop)`;
- `pad(x, axis, before, after)` (zeros) -> `slice(g, axis, before, before+size)`;
- `concat(x1, ..., xn, axis)` -> one `slice` of g per operand.

All three are injective (each output element is one operand element, or a zero) and static: the
sliced, padded or concatenated axis has a size known at compile time, never the batch axis.  Their
builders, with the conveniences a tracer wants, are in `ir.build_seq`.
"""
from __future__ import annotations

import numpy as np

from .graph import TensorType
from .ops import INJECTIVE, register


def _b():
    from . import build_seq
    return build_seq


def _static_axis(op: str, t: TensorType, axis) -> int:
    if not isinstance(axis, int) or not 0 <= axis < t.rank:
        raise ValueError(f"{op} axis {axis!r} is out of range for {t}")
    if t.shape[axis] is None:
        raise ValueError(f"{op} cannot act on the batch axis of {t}: its size is not static")
    return axis


def _set(shape: tuple, axis: int, size: int) -> tuple:
    return shape[:axis] + (size,) + shape[axis + 1:]


# -- slice --------------------------------------------------------------------------------------

def _slice_infer(types, attrs):
    if len(types) != 1:
        raise ValueError(f"slice takes 1 operand, got {len(types)}")
    (t,) = types
    axis = _static_axis("slice", t, attrs["axis"])
    start, stop = attrs["start"], attrs["stop"]
    if not 0 <= start < stop <= t.shape[axis]:
        raise ValueError(f"slice [{start}:{stop}] along axis {axis} of {t} needs "
                         f"0 <= start < stop <= {t.shape[axis]}")
    return TensorType(t.dtype, _set(t.shape, axis, stop - start))


def _slice_ref(values, attrs, node, batch=None):
    (x,) = values
    index = [slice(None)] * x.ndim
    index[attrs["axis"]] = slice(attrs["start"], attrs["stop"])
    return np.ascontiguousarray(x[tuple(index)])


def _grad_slice(node, g):
    (x,) = node.operands
    axis = node.attr("axis")
    return [_b().pad(g, node.attr("start"), x.shape[axis] - node.attr("stop"), axis)]


# -- pad ----------------------------------------------------------------------------------------

def _pad_infer(types, attrs):
    if len(types) != 1:
        raise ValueError(f"pad takes 1 operand, got {len(types)}")
    (t,) = types
    axis = _static_axis("pad", t, attrs["axis"])
    before, after = attrs["before"], attrs["after"]
    if before < 0 or after < 0:
        raise ValueError(f"pad needs before >= 0 and after >= 0, got {before} and {after}")
    if t.shape[axis] == 0:
        raise ValueError(f"pad needs a non-empty axis {axis}, got {t}")
    return TensorType(t.dtype, _set(t.shape, axis, before + t.shape[axis] + after))


def _pad_ref(values, attrs, node, batch=None):
    (x,) = values
    widths = [(0, 0)] * x.ndim
    widths[attrs["axis"]] = (attrs["before"], attrs["after"])
    return np.pad(x, widths)


def _grad_pad(node, g):
    (x,) = node.operands
    axis, before = node.attr("axis"), node.attr("before")
    return [_b().slice(g, before, before + x.shape[axis], axis)]


# -- concat -------------------------------------------------------------------------------------

def _concat_infer(types, attrs):
    if not types:
        raise ValueError("concat needs at least one operand")
    first = types[0]
    axis = _static_axis("concat", first, attrs["axis"])
    for t in types:
        if t.dtype != first.dtype or t.rank != first.rank or t.shape[axis] in (None, 0) or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ValueError(f"concat along axis {axis} needs operands of one dtype whose shapes "
                             "differ only in that (static, non-empty) axis; got "
                             + ", ".join(str(t) for t in types))
    return TensorType(first.dtype, _set(first.shape, axis, sum(t.shape[axis] for t in types)))


def _concat_ref(values, attrs, node, batch=None):
    return np.concatenate(values, axis=attrs["axis"])


def _grad_concat(node, g):
    axis = node.attr("axis")
    grads, start = [], 0
    for x in node.operands:
        size = x.shape[axis]
        grads.append(_b().slice(g, start, start + size, axis))
        start += size
    return grads


register("slice", infer=_slice_infer, operands=1,
         reference=_slice_ref, grad=_grad_slice, kind=INJECTIVE,
         attrs=("axis", "start", "stop"),
         doc="x[..., start:stop, ...] along one static `axis`")
register("pad", infer=_pad_infer, operands=1, reference=_pad_ref, grad=_grad_pad, kind=INJECTIVE,
         attrs=("axis", "before", "after"),
         doc="`before` zeros, x, `after` zeros along one static `axis` (the adjoint of slice)")
register("concat", infer=_concat_infer, reference=_concat_ref, grad=_grad_concat, kind=INJECTIVE,
         attrs=("axis",),
         doc="numpy concatenate of the operands along one static `axis`")
