"""Loop and small IR helpers for llvmlite builders, in the style of numba's `cgutils`.

Every index is an i64.  Bounds may be Python ints (emitted as constants) or i64 `ir.Value`s.
"""
from __future__ import annotations

import contextlib

from llvmlite import ir

I64 = ir.IntType(64)


def i64(value) -> ir.Value:
    """An i64 value from a Python int or an existing i64 value."""
    if isinstance(value, ir.Value):
        if value.type != I64:
            raise TypeError(f"expected an i64 value, got {value.type}")
        return value
    return ir.Constant(I64, int(value))


@contextlib.contextmanager
def for_range(builder: ir.IRBuilder, start, stop, step=1, *, name: str = "i"):
    """`for i in range(start, stop, step)` with an i64 induction variable `i` (yielded).

    `step` must be positive (a positive int, or an i64 value the caller knows to be positive): the exit
    test is a signed `i < stop`.  On exit the builder is positioned after the loop.  The body may
    create blocks of its own; the increment is appended to wherever the body leaves the builder.
    """
    if isinstance(step, int) and step <= 0:
        raise ValueError(f"for_range needs a positive step, got {step}")
    start, stop, step = i64(start), i64(stop), i64(step)
    preheader = builder.basic_block
    cond = builder.append_basic_block(f"{name}.cond")
    body = builder.append_basic_block(f"{name}.body")
    end = builder.append_basic_block(f"{name}.end")
    builder.branch(cond)

    builder.position_at_end(cond)
    index = builder.phi(I64, name=name)
    index.add_incoming(start, preheader)
    builder.cbranch(builder.icmp_signed("<", index, stop), body, end)

    builder.position_at_end(body)
    yield index
    # NOTE: `nsw` is true because i < stop <= INT64_MAX - step for any buffer that fits in memory; it
    # lets LLVM compute trip counts and strength-reduce addresses.
    nxt = builder.add(index, step, name=f"{name}.next", flags=("nsw",))
    index.add_incoming(nxt, builder.basic_block)
    builder.branch(cond)

    builder.position_at_end(end)


def smin(builder: ir.IRBuilder, a, b) -> ir.Value:
    """Signed minimum of two i64s (ints are folded when both are ints)."""
    if isinstance(a, int) and isinstance(b, int):
        return i64(min(a, b))
    a, b = i64(a), i64(b)
    return builder.select(builder.icmp_signed("<", a, b), a, b)
