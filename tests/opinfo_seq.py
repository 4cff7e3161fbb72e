"""OpInfo cases of the sequence primitives (`ir.ops_seq`: slice, pad, concat), appended to
`tests/opinfo.CASES` by `seq_cases()`.

Each primitive along every kind of axis (a middle axis, the innermost one, axis 0 of a static
value), for every dtype, with finite-difference gradients; concat every way it is lowered (rows
picked among operands read from memory, a switch, a binary search of branches), with inlined
operands that share subexpressions across the branches, and the shapes a recurrent layer builds
(timestep slices, gate slices of a matmul, the stacked `return_sequences` output).
"""
from __future__ import annotations

from ir import build as B
from ir import build_seq as S


def seq_cases() -> list:
    # NOTE: imported here, not at the top: tests/opinfo.py imports this module while it is itself
    # being imported, so its names exist only once `_case_list` has run.
    from opinfo import ALL_DTYPES, FLOATS, N, T, X34, each, expand, unit

    cases: list = []
    add = cases.extend
    X56 = ((N, 5, 6), T)
    STATIC = ((4, 6), T)

    # -- slice
    def slices(x):
        return {"mid": S.slice(x, 1, 4, 1), "last": S.slice(x, 2, 5, 2), "first_row": S.slice(x, 0, 1, 1),
                "tail": S.slice(x, -2, 6, -1)}
    add(expand(ALL_DTYPES, "slice", "slice", slices, (X56,), grad=True))
    add(expand(("f32",), "slice", "slice_static",
               lambda x: {"a0": S.slice(x, 1, 3, 0), "a1": S.slice(x, 3, 6, 1)}, (STATIC,), grad=True))
    add(expand(FLOATS, "slice", "slice_of_expression",
               lambda x: B.mul(S.slice(B.exp(x), 1, 3, 1), S.slice(x, 0, 2, 1)), (X34,), grad=True,
               rtol=1e-5))

    # -- pad
    def pads(x):
        return {"mid": S.pad(x, 2, 1, 1), "last": S.pad(x, 0, 3, 2), "first": S.pad(x, 4, 0, 1)}
    add(expand(ALL_DTYPES, "pad", "pad", pads, (X34,), grad=True))
    add(expand(("f32",), "pad", "pad_static", lambda x: {"a0": S.pad(x, 1, 2, 0), "a1": S.pad(x, 2, 2, 1)},
               (STATIC,), grad=True))
    # the adjoint of many timestep slices: a sum of pads, fused into one loop
    add(expand(("f32",), "pad", "pad_sum",
               lambda x: B.add(B.add(S.pad(B.tanh(x), 0, 2, 1), S.pad(x, 1, 1, 1)), S.pad(x, 2, 0, 1)),
               (X34,), grad=True, rtol=1e-5, atol=1e-6))

    # -- concat: a few operands and many, along a middle and the last axis
    def concat2(a, b):
        return {"a1": S.concat([a, b], 1), "a2": S.concat([a, a], 2)}
    add(expand(ALL_DTYPES, "concat", "concat_two", concat2, (X34, ((N, 2, 4), T)), grad=True))

    def concat_many(*xs):
        return {"a1": S.concat(xs, 1), "a2": S.concat([B.transpose(x, (0, 2, 1)) for x in xs], 2),
                "three": S.concat(xs[:3], 1)}
    sizes = [1, 3, 2, 1, 4]
    add(expand(ALL_DTYPES, "concat", "concat_many", concat_many,
               tuple(((N, s, 4), T) for s in sizes), grad=True))
    # a recurrent layer's return_sequences output: steps stacked along axis 1 (loaded rows), and
    # along the innermost axis (a switch on the position)
    add(expand(("f32", "i32", "bool"), "concat", "concat_stack",
               lambda *xs: {"steps": S.stack(xs, 1), "innermost": S.stack(xs, 2)},
               tuple(((N, 4), T) for _ in range(6)), grad=True))
    add(expand(("f32",), "concat", "concat_static",
               lambda a, b: {"a0": S.concat([a, b, a, b], 0), "a1": S.concat([a, a, a, a], 1)},
               (STATIC, STATIC), grad=True))

    # Operands computed inline, sharing subexpressions with each other and with the concat's user:
    # a value evaluated inside one branch must not be reused in another branch or after the join.
    def shared(x, bias):
        parts = [B.add(B.tanh(S.take(x, t, 1)), bias) for t in range(5)]
        stacked = S.stack(parts, 1)
        return {"stacked": B.mul(stacked, bias), "nested": S.concat([S.concat([x, x], 1), stacked], 1),
                "reversed": S.stack(parts[::-1], 1)}
    add(expand(FLOATS, "concat", "concat_inline_operands", shared, (X56, ((6,), T)), grad=True,
               ulp=4, atol=1e-6, grad_rtol=1e-5, grad_atol=1e-6))

    # the pieces of an unrolled LSTM step: gates sliced from a matmul, steps stacked
    def recurrent(x, w):
        outputs, h = [], None
        for t in range(3):
            z = B.matmul(S.take(x, t, 1), w)
            i, f, g, o = S.split(z, 4, 1)
            c = B.mul(B.sigmoid(i), B.tanh(g)) if h is None else B.add(B.mul(B.sigmoid(f), h),
                                                                          B.mul(B.sigmoid(i), B.tanh(g)))
            h = B.mul(B.sigmoid(o), B.tanh(c))
            outputs.append(h)
        return {"sequences": S.stack(outputs, 1), "last": h}
    add(expand(("f32",), "slice", "unrolled_gates", recurrent, (((N, 3, 5), T), ((5, 8), T)),
               gen=each(unit), grad=True, rtol=1e-5, atol=1e-6))
    return cases
