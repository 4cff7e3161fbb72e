"""Tests of `ir.passes`.

Every pass is tested as before/after IR text (TVM's `test_transform_fold_constant.py`, XLA's
`ParseAndReturnVerifiedModule`): the input is written as text, parsed, the pass runs, and the
printed result is compared with the expected text.  Every graph a test touches is also checked to

- verify before and after the pass,
- print, parse back and print identically (with its constant table),
- compute bit for bit what it computed before the pass, in the reference interpreter, on random
  inputs (every rule of the default pipeline is an identity in IEEE arithmetic on such inputs; the
  sign-of-zero rule `x + 0.0 -> x` differs only at x = -0.0, which random inputs do not contain).

Then the whole pipeline runs on a traced MLP train step (forward, softmax cross-entropy, gradients,
SGD update) and on an inference graph whose weights are constants.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import ir
from ir import build as B
from ir import passes
from ir.graph import ConstValue, Graph, Node, TensorType

BATCH = 3


# ----------------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------------

def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def constant_table(graph: Graph) -> dict:
    return {n.attr("value").digest: n.attr("value").array for n in graph.nodes()
            if n.op == "const" and isinstance(n.attr("value"), ConstValue)
            and n.attr("value").array is not None}


def has_all_data(graph: Graph) -> bool:
    return all(not (n.op == "const" and isinstance(n.attr("value"), ConstValue)
                    and n.attr("value").array is None) for n in graph.nodes())


def assert_round_trip(graph: Graph) -> None:
    text = ir.print_graph(graph)
    again = ir.parse(text, constant_table(graph))
    assert ir.print_graph(again) == text
    if has_all_data(graph):
        ir.verify(again)


def random_feeds(graph: Graph, seed: int = 0, batch: int = BATCH) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for node in graph.inputs:
        shape = node.type.concrete_shape(batch)
        if node.dtype in ("f32", "f64"):
            value = rng.standard_normal(shape)
        elif node.dtype == "bool":
            value = rng.random(shape) < 0.5
        elif node.dtype == "u32":
            value = rng.integers(0, 2 ** 32, shape)
        else:
            value = rng.integers(-100, 100, shape)
        feeds[node.attr("name")] = np.asarray(value).astype(ir.ops.np_dtype(node.dtype))
    return feeds


def assert_same_results(before: Graph, after: Graph, seeds=(0, 1)) -> None:
    for seed in seeds:
        feeds = random_feeds(before, seed)
        expected, got = ir.run(before, feeds, batch=BATCH), ir.run(after, feeds, batch=BATCH)
        assert list(got) == list(expected)
        for name in expected:
            assert got[name].dtype == expected[name].dtype, name
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def check_pass(pass_fn, before: str, after: str, constants: dict | None = None,
               canonical: bool = True) -> Graph:
    """Parse `before`, run `pass_fn`, compare the printed result with `after`; check verification,
    round trips, the signature, purity and (when every constant has data) semantics."""
    before, after = dedent(before), dedent(after)
    graph = ir.parse(before, constants)
    if canonical:   # the test's input is written as the printer writes it
        assert ir.print_graph(graph) == before
    ir.verify(graph)
    printed_before = ir.print_graph(graph)
    result = pass_fn(graph)
    ir.verify(result)
    assert ir.print_graph(result) == after
    assert ir.print_graph(graph) == printed_before, "a pass must not change its input graph"
    assert result.inputs == graph.inputs and result.output_names == graph.output_names
    assert_round_trip(graph)
    assert_round_trip(result)
    if has_all_data(graph):
        assert_same_results(graph, result)
    return result


# ----------------------------------------------------------------------------------------------
# dce
# ----------------------------------------------------------------------------------------------

def test_dce_drops_values_read_only_for_their_shape():
    # exp(x) is read only for its batch size; the batch size comes from x itself.  The `neg` line
    # is dead in the text already; the unused input stays (it is the signature).
    check_pass(passes.dce, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:f32[4] = arg name=unused
          %2:f32[] = const value=1.0
          %3:f32[?,4] = exp %0
          %4:f32[] = dim_size %3 axis=0 dtype=f32
          %5:f32[] = div %2, %4
          %6:f32[?,4] = neg %3
          return inv_n=%5
        """, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:f32[4] = arg name=unused
          %2:f32[] = const value=1.0
          %3:f32[] = dim_size %0 axis=0 dtype=f32
          %4:f32[] = div %2, %3
          return inv_n=%4
        """, canonical=False)


def test_dce_keeps_values_with_other_users():
    check_pass(passes.dce, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:f32[?,4] = exp %0
          %2:f32[] = reduce_sum %1 axes=(0,1) keepdims=false
          %3:f32[] = dim_size %1 axis=0 dtype=f32
          %4:f32[] = div %2, %3
          return mean=%4
        """, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:f32[?,4] = exp %0
          %2:f32[] = reduce_sum %1 axes=(0,1) keepdims=false
          %3:f32[] = dim_size %0 axis=0 dtype=f32
          %4:f32[] = div %2, %3
          return mean=%4
        """)


# ----------------------------------------------------------------------------------------------
# cse
# ----------------------------------------------------------------------------------------------

def test_cse_merges_equal_nodes():
    # Equal constants, their broadcasts and the products over them merge; so do two draws of the
    # same random stream (counter-based: pure).  Another stream does not merge, nor do the zeros.
    check_pass(passes.cse, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:u32[] = arg name=seed
          %2:f32[] = const value=2.0
          %3:f32[?,4] = broadcast %2 shape=(?,4)
          %4:f32[?,4] = mul %0, %3
          %5:f32[] = const value=2.0
          %6:f32[?,4] = broadcast %5 shape=(?,4)
          %7:f32[?,4] = mul %0, %6
          %8:f32[?,4] = add %4, %7
          %9:f32[?,4] = random_uniform %1 shape=(?,4) stream=1
          %10:f32[?,4] = random_uniform %1 shape=(?,4) stream=1
          %11:f32[?,4] = sub %9, %10
          %12:f32[?,4] = random_uniform %1 shape=(?,4) stream=2
          %13:f32[] = const value=0.0
          %14:f32[?,4] = broadcast %13 shape=(?,4)
          %15:f32[?,4] = mul %0, %14
          %16:f32[] = const value=-0.0
          %17:f32[?,4] = broadcast %16 shape=(?,4)
          %18:f32[?,4] = mul %0, %17
          return a=%8, r=%11, s=%12, pz=%15, nz=%18
        """, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:u32[] = arg name=seed
          %2:f32[] = const value=2.0
          %3:f32[?,4] = broadcast %2 shape=(?,4)
          %4:f32[?,4] = mul %0, %3
          %5:f32[?,4] = add %4, %4
          %6:f32[?,4] = random_uniform %1 shape=(?,4) stream=1
          %7:f32[?,4] = sub %6, %6
          %8:f32[?,4] = random_uniform %1 shape=(?,4) stream=2
          %9:f32[] = const value=0.0
          %10:f32[?,4] = broadcast %9 shape=(?,4)
          %11:f32[?,4] = mul %0, %10
          %12:f32[] = const value=-0.0
          %13:f32[?,4] = broadcast %12 shape=(?,4)
          %14:f32[?,4] = mul %0, %13
          return a=%5, r=%7, s=%8, pz=%11, nz=%14
        """)


def test_cse_merges_array_constants_by_content_and_never_merges_inputs():
    a = np.arange(4, dtype=np.float32)
    b = np.arange(4, dtype=np.float32)[::-1].copy()
    da, db = ConstValue(a).digest, ConstValue(b).digest
    check_pass(passes.cse, f"""
        graph f
          %0:f32[4] = arg name=p
          %1:f32[4] = arg name=q
          %2:f32[4] = const value=@{da}
          %3:f32[4] = add %0, %2
          %4:f32[4] = const value=@{da}
          %5:f32[4] = add %0, %4
          %6:f32[4] = const value=@{db}
          %7:f32[4] = add %1, %6
          return u=%3, v=%5, w=%7
        """, f"""
        graph f
          %0:f32[4] = arg name=p
          %1:f32[4] = arg name=q
          %2:f32[4] = const value=@{da}
          %3:f32[4] = add %0, %2
          %4:f32[4] = const value=@{db}
          %5:f32[4] = add %1, %4
          return u=%3, v=%3, w=%5
        """, constants={da: a, db: b})


# ----------------------------------------------------------------------------------------------
# fold_constants
# ----------------------------------------------------------------------------------------------

def test_fold_transpose_of_constant_weights():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    dw, dwt = ConstValue(w).digest, ConstValue(w.T).digest
    result = check_pass(passes.fold_constants, f"""
        graph f
          %0:f32[?,3] = arg name=x
          %1:f32[2,3] = const value=@{dw}
          %2:f32[3,2] = transpose %1 perm=(1,0)
          %3:f32[?,2] = matmul %0, %2 transpose_a=false transpose_b=false
          return y=%3
        """, f"""
        graph f
          %0:f32[?,3] = arg name=x
          %1:f32[3,2] = const value=@{dwt}
          %2:f32[?,2] = matmul %0, %1 transpose_a=false transpose_b=false
          return y=%2
        """, constants={dw: w})
    np.testing.assert_array_equal(result.output("y").operands[1].attr("value").array, w.T)


def test_fold_keeps_scalars_scalar_and_splats_broadcast():
    # const + const folds to a scalar; an op over broadcasts of scalars is computed on the scalars
    # (even with a batch dimension); a big broadcast of a scalar stays, but its sum folds.
    check_pass(passes.fold_constants, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:f32[] = const value=2.0
          %2:f32[?,4] = broadcast %1 shape=(?,4)
          %3:f32[] = const value=3.0
          %4:f32[?,4] = broadcast %3 shape=(?,4)
          %5:f32[?,4] = mul %2, %4
          %6:f32[?,4] = add %0, %5
          %7:f32[] = add %1, %3
          %8:f32[] = const value=1.0
          %9:f32[64,64] = broadcast %8 shape=(64,64)
          %10:f32[] = reduce_sum %9 axes=(0,1) keepdims=false
          %11:f32[?,4] = exp %2
          return y=%6, five=%7, count=%10, big=%9, e=%11
        """, """
        graph f
          %0:f32[?,4] = arg name=x
          %1:f32[] = const value=6.0
          %2:f32[?,4] = broadcast %1 shape=(?,4)
          %3:f32[?,4] = add %0, %2
          %4:f32[] = const value=5.0
          %5:f32[] = const value=4096.0
          %6:f32[] = const value=1.0
          %7:f32[64,64] = broadcast %6 shape=(64,64)
          %8:f32[] = const value=7.3890557289123535
          %9:f32[?,4] = broadcast %8 shape=(?,4)
          return y=%3, five=%4, count=%5, big=%7, e=%9
        """)


def test_fold_does_not_materialize_what_kernels_recompute_for_free():
    # random bits from a constant seed and an outer product would be stored larger than the data
    # they come from: they stay (their reductions fold).  A tiny random draw folds.  Nothing with a
    # batch dimension is evaluated.
    col = np.arange(32, dtype=np.float32).reshape(32, 1)
    row = np.ones((1, 32), np.float32)
    dc, dr = ConstValue(col).digest, ConstValue(row).digest
    graph = check_pass(passes.fold_constants, f"""
        graph f
          %0:f32[?,32] = arg name=x
          %1:u32[] = const value=7
          %2:f32[1000] = random_uniform %1 shape=(1000) stream=3
          %3:f32[] = reduce_max %2 axes=(0) keepdims=false
          %4:f32[32,1] = const value=@{dc}
          %5:f32[1,32] = const value=@{dr}
          %6:f32[32,32] = matmul %4, %5 transpose_a=false transpose_b=false
          %7:f32[?,32] = broadcast %5 shape=(?,32)
          %8:f32[?,32] = mul %0, %7
          %9:f32[4] = random_uniform %1 shape=(4) stream=3
          return mx=%3, rand=%2, outer=%6, y=%8, tiny=%9
        """, f"""
        graph f
          %0:f32[?,32] = arg name=x
          %1:f32[] = const value=0.9992895126342773
          %2:u32[] = const value=7
          %3:f32[1000] = random_uniform %2 shape=(1000) stream=3
          %4:f32[32,1] = const value=@{dc}
          %5:f32[1,32] = const value=@{dr}
          %6:f32[32,32] = matmul %4, %5 transpose_a=false transpose_b=false
          %7:f32[?,32] = broadcast %5 shape=(?,32)
          %8:f32[?,32] = mul %0, %7
          %9:f32[4] = const value=@TINY
          return mx=%1, rand=%3, outer=%6, y=%8, tiny=%9
        """.replace("@TINY", "@" + _tiny_random_digest()), constants={dc: col, dr: row})
    assert graph.output("tiny").op == "const"


def _tiny_random_digest() -> str:
    seed = B.const(7, "u32")
    value = ir.run(Graph("r", [], [("r", B.random_uniform(seed, (4,), 3))]), {})["r"]
    return ConstValue(value).digest


def test_fold_leaves_constants_without_data_alone():
    # parsed without its constant table, @0123... has a digest but no bytes: nothing to evaluate
    text = """
        graph f
          %0:f32[3,2] = const value=@0123456789abcdef
          %1:f32[2,3] = transpose %0 perm=(1,0)
          return t=%1
        """
    check_pass(passes.fold_constants, text, text)


# ----------------------------------------------------------------------------------------------
# simplify: one before/after case per rule, on a shared set of inputs
# ----------------------------------------------------------------------------------------------

HEADER = """\
graph g
  %0:f32[?,4] = arg name=x
  %1:f32[?,4] = arg name=y
  %2:bool[?,4] = arg name=c
  %3:f32[2,3,4] = arg name=w
  %4:f32[] = arg name=s
  %5:f32[4] = arg name=b
"""


def with_header(body: str) -> str:
    return HEADER + "".join("  " + line.strip() + "\n" for line in body.strip().splitlines())


ONE = "%6:f32[] = const value=1.0\n%7:f32[?,4] = broadcast %6 shape=(?,4)\n"
SIMPLIFY_CASES = {
    # arithmetic identities; the constant side is a broadcast of a scalar, looked through
    "x*1": (ONE + "%8:f32[?,4] = mul %0, %7\nreturn out=%8", "return out=%0"),
    "1*x": (ONE + "%8:f32[?,4] = mul %7, %0\nreturn out=%8", "return out=%0"),
    "x/1": (ONE + "%8:f32[?,4] = div %0, %7\nreturn out=%8", "return out=%0"),
    "x-0.0": ("""%6:f32[] = const value=0.0
                 %7:f32[?,4] = broadcast %6 shape=(?,4)
                 %8:f32[?,4] = sub %0, %7
                 return out=%8""", "return out=%0"),
    "x+(-0.0)": ("""%6:f32[] = const value=-0.0
                    %7:f32[?,4] = broadcast %6 shape=(?,4)
                    %8:f32[?,4] = add %0, %7
                    return out=%8""", "return out=%0"),
    "(-0.0)+x": ("""%6:f32[] = const value=-0.0
                    %7:f32[?,4] = broadcast %6 shape=(?,4)
                    %8:f32[?,4] = add %7, %0
                    return out=%8""", "return out=%0"),
    "x+0.0 (sign of zero, accepted)": ("""%6:f32[] = const value=0.0
                    %7:f32[?,4] = broadcast %6 shape=(?,4)
                    %8:f32[?,4] = add %0, %7
                    return out=%8""", "return out=%0"),
    "x-(-0.0) (sign of zero, accepted)": ("""%6:f32[] = const value=-0.0
                    %7:f32[?,4] = broadcast %6 shape=(?,4)
                    %8:f32[?,4] = sub %0, %7
                    return out=%8""", "return out=%0"),
    "scalar x*1": ("""%6:f32[] = const value=1.0
                      %7:f32[] = mul %4, %6
                      return out=%7""", "return out=%4"),
    "neg(neg(x))": ("""%6:f32[?,4] = neg %0
                       %7:f32[?,4] = neg %6
                       return out=%7""", "return out=%0"),
    "neg(neg(neg(x)))": ("""%6:f32[?,4] = neg %0
                            %7:f32[?,4] = neg %6
                            %8:f32[?,4] = neg %7
                            return out=%8""", """%6:f32[?,4] = neg %0
                                                 return out=%6"""),
    "x+neg(y)": ("""%6:f32[?,4] = neg %1
                    %7:f32[?,4] = add %0, %6
                    return out=%7""", """%6:f32[?,4] = sub %0, %1
                                         return out=%6"""),
    "neg(y)+x": ("""%6:f32[?,4] = neg %1
                    %7:f32[?,4] = add %6, %0
                    return out=%7""", """%6:f32[?,4] = sub %0, %1
                                         return out=%6"""),
    "x-neg(y)": ("""%6:f32[?,4] = neg %1
                    %7:f32[?,4] = sub %0, %6
                    return out=%7""", """%6:f32[?,4] = add %0, %1
                                         return out=%6"""),
    # value-preserving ops
    "stop_gradient(x)": ("""%6:f32[?,4] = stop_gradient %0
                            return out=%6""", "return out=%0"),
    "cast to the same dtype": ("""%6:f32[?,4] = cast %0 dtype=f32
                                  return out=%6""", "return out=%0"),
    "select(c, x, x)": ("""%6:f32[?,4] = select %2, %0, %0
                           return out=%6""", "return out=%0"),
    "select(true, x, y)": ("""%6:bool[] = const value=true
                              %7:bool[?,4] = broadcast %6 shape=(?,4)
                              %8:f32[?,4] = select %7, %0, %1
                              return out=%8""", "return out=%0"),
    "select(false, x, y)": ("""%6:bool[] = const value=false
                               %7:bool[?,4] = broadcast %6 shape=(?,4)
                               %8:f32[?,4] = select %7, %0, %1
                               return out=%8""", "return out=%1"),
    "dim_size of a static axis": ("""%6:f32[] = dim_size %0 axis=1 dtype=f32
                                     return out=%6""", """%6:f32[] = const value=4.0
                                                          return out=%6"""),
    # layout chains
    "reshape(reshape(x)) back to x's shape": ("""%6:f32[?,2,2] = reshape %0 shape=(?,2,2)
                                                 %7:f32[?,4] = reshape %6 shape=(?,4)
                                                 return out=%7""", "return out=%0"),
    "reshape(reshape(x))": ("""%6:f32[?,2,2] = reshape %0 shape=(?,2,2)
                               %7:f32[?,1,4] = reshape %6 shape=(?,1,4)
                               return out=%7""", """%6:f32[?,1,4] = reshape %0 shape=(?,1,4)
                                                    return out=%6"""),
    "transpose(transpose(w)) to the identity": ("""%6:f32[3,4,2] = transpose %3 perm=(1,2,0)
                                                   %7:f32[2,3,4] = transpose %6 perm=(2,0,1)
                                                   return out=%7""", "return out=%3"),
    "transpose(transpose(w)) composed": ("""%6:f32[3,2,4] = transpose %3 perm=(1,0,2)
                                            %7:f32[3,4,2] = transpose %6 perm=(0,2,1)
                                            return out=%7""",
                                         """%6:f32[3,4,2] = transpose %3 perm=(1,2,0)
                                            return out=%6"""),
    "broadcast(broadcast(b))": ("""%6:f32[3,4] = broadcast %5 shape=(3,4)
                                   %7:f32[?,3,4] = broadcast %6 shape=(?,3,4)
                                   return out=%7""", """%6:f32[?,3,4] = broadcast %5 shape=(?,3,4)
                                                        return out=%6"""),
    "broadcast(reshape(s))": ("""%6:f32[1] = reshape %4 shape=(1)
                                 %7:f32[?,4] = broadcast %6 shape=(?,4)
                                 return out=%7""", """%6:f32[?,4] = broadcast %4 shape=(?,4)
                                                      return out=%6"""),
    # a splat stays a broadcast of a scalar: the op runs once, on the scalar
    "neg(broadcast(s))": ("""%6:f32[?,4] = broadcast %4 shape=(?,4)
                             %7:f32[?,4] = neg %6
                             %8:f32[?,4] = mul %0, %7
                             return out=%8""", """%6:f32[] = neg %4
                                                  %7:f32[?,4] = broadcast %6 shape=(?,4)
                                                  %8:f32[?,4] = mul %0, %7
                                                  return out=%8"""),
    "reshape(broadcast(s))": ("""%6:f32[?,4] = broadcast %4 shape=(?,4)
                                 %7:f32[?,2,2] = reshape %6 shape=(?,2,2)
                                 return out=%7""", """%6:f32[?,2,2] = broadcast %4 shape=(?,2,2)
                                                      return out=%6"""),
}


@pytest.mark.parametrize("case", list(SIMPLIFY_CASES))
def test_simplify_rule(case):
    before, after = SIMPLIFY_CASES[case]
    check_pass(passes.simplify, with_header(before), with_header(after))


# What is not an identity in IEEE arithmetic stays: x*0 (NaN, inf, -0), x/x (0, inf, NaN),
# x-x (inf, NaN), x+0 for a non-splat "zero" with mixed signs; and a broadcast of a scalar
# constant feeding an elementwise op is not turned into anything else.
NOT_SIMPLIFIED = {
    "x*0": """%6:f32[] = const value=0.0
              %7:f32[?,4] = broadcast %6 shape=(?,4)
              %8:f32[?,4] = mul %0, %7
              return out=%8""",
    "x/x": """%6:f32[?,4] = div %0, %0
              return out=%6""",
    "x-x": """%6:f32[?,4] = sub %0, %0
              return out=%6""",
    "x*2": """%6:f32[] = const value=2.0
              %7:f32[?,4] = broadcast %6 shape=(?,4)
              %8:f32[?,4] = mul %0, %7
              return out=%8""",
    "cast to another dtype": """%6:f64[?,4] = cast %0 dtype=f64
                                return out=%6""",
    "select(c, x, y)": """%6:f32[?,4] = select %2, %0, %1
                          return out=%6""",
}


@pytest.mark.parametrize("case", list(NOT_SIMPLIFIED))
def test_simplify_leaves_non_identities(case):
    text = with_header(NOT_SIMPLIFIED[case])
    check_pass(passes.simplify, text, text)


def test_simplify_exact_keeps_adding_positive_zero():
    # x + 0.0 is -0.0 -> +0.0 for x = -0.0: simplify_exact keeps it, x + (-0.0) goes in both.
    plus_zero = with_header("""%6:f32[] = const value=0.0
                               %7:f32[?,4] = broadcast %6 shape=(?,4)
                               %8:f32[?,4] = add %0, %7
                               return out=%8""")
    check_pass(passes.simplify_exact, plus_zero, plus_zero)
    minus_zero = with_header("""%6:f32[] = const value=-0.0
                                %7:f32[?,4] = broadcast %6 shape=(?,4)
                                %8:f32[?,4] = add %0, %7
                                return out=%8""")
    check_pass(passes.simplify_exact, minus_zero, with_header("return out=%0"))
    # the reason it is not exact, in the interpreter
    graph = ir.parse(plus_zero)
    feeds = {"x": np.full((1, 4), -0.0, np.float32), "y": np.zeros((1, 4), np.float32),
             "c": np.zeros((1, 4), bool), "w": np.zeros((2, 3, 4), np.float32),
             "s": np.float32(0), "b": np.zeros(4, np.float32)}
    assert not np.signbit(ir.run(graph, feeds)["out"]).any()
    assert np.signbit(ir.run(passes.simplify(graph), feeds)["out"]).all()


def test_simplify_looks_through_uniform_array_constants():
    ones = np.ones(4, np.float32)
    mixed_zeros = np.array([0.0, -0.0, 0.0, 0.0], np.float32)   # not one splat value: kept
    d1, dz = ConstValue(ones).digest, ConstValue(mixed_zeros).digest
    check_pass(passes.simplify, with_header(f"""%6:f32[4] = const value=@{d1}
                                               %7:f32[4] = mul %5, %6
                                               %8:f32[4] = const value=@{dz}
                                               %9:f32[4] = add %7, %8
                                               return out=%9"""),
               with_header(f"""%6:f32[4] = const value=@{dz}
                               %7:f32[4] = add %5, %6
                               return out=%7"""), constants={d1: ones, dz: mixed_zeros})


def test_pattern_matcher():
    x, y = B.arg("x", "f32", (2,)), B.arg("y", "f32", (2,))
    pattern = passes.Pat("add", (passes.Pat.var("a"), passes.Pat("neg", (passes.Pat.var("b"),))),
                         commutative=True)
    node = ir.ops.make("add", (B.neg(y), x))
    assert pattern.match(node) == {"a": x, "b": y}
    assert pattern.match(ir.ops.make("add", (x, y))) is None
    same = passes.Pat("mul", (passes.Pat.var("a"), passes.Pat.var("a")))
    assert same.match(ir.ops.make("mul", (x, x))) == {"a": x}
    assert same.match(ir.ops.make("mul", (x, y))) is None
    assert passes.splat_value(B.full_like(x, 3.0)) == 3.0
    assert passes.splat_value(x) is None
    with pytest.raises(ValueError):
        passes.Pat("neg", (passes.Pat.var("a"),), commutative=True)


def test_a_rule_that_changes_the_type_is_refused():
    bad = passes.Rule("exp(x) -> x as f64", passes.Pat("exp", (passes.Pat.var("x"),)),
                      lambda node, x: B.cast(x, "f64"))
    x = B.arg("x", "f32", (2,))
    with pytest.raises(AssertionError, match="must keep the type"):
        passes.rewrite_graph(Graph("g", [x], [("out", B.exp(x))]), [bad])


# ----------------------------------------------------------------------------------------------
# The pipeline on traced graphs
# ----------------------------------------------------------------------------------------------

def mlp_train_step(dropout: bool = True, learning_rate: float = 0.01) -> Graph:
    """Dense(8) + relu (+ dropout) + Dense(3) + softmax cross-entropy, its gradients and an SGD
    update: the shape of what `fit` compiles."""
    x, y = B.arg("x", "f32", (None, 4)), B.arg("y", "f32", (None, 3))
    w1, b1 = B.arg("dense/kernel", "f32", (4, 8)), B.arg("dense/bias", "f32", (8,))
    w2, b2 = B.arg("dense_1/kernel", "f32", (8, 3)), B.arg("dense_1/bias", "f32", (3,))
    seed = B.arg("seed", "u32", ())
    h = B.relu(B.add(B.matmul(x, w1), b1))
    if dropout:
        rate = 0.25
        keep = B.ge(B.random_uniform(seed, h.shape, stream=1), rate)
        h = B.select(keep, B.div(h, 1.0 - rate), 0.0)
    logits = B.add(B.matmul(h, w2), b2)
    per_example = B.neg(B.reduce_sum(B.mul(y, B.log_softmax(logits)), -1))
    loss = B.reduce_mean(per_example)
    params = [w1, b1, w2, b2]
    grads = ir.gradients(loss, params)
    outputs = [("loss", loss)]
    outputs += [(p.attr("name"), B.sub(p, B.mul(g, learning_rate))) for p, g in zip(params, grads)]
    return Graph("train_step", [x, y, w1, b1, w2, b2, seed], outputs)


def count(graph: Graph, op: str | None = None) -> int:
    return sum(1 for n in graph.nodes() if op is None or n.op == op)


@pytest.mark.parametrize("pass_name", sorted(passes.PASSES))
def test_each_pass_preserves_the_train_step(pass_name):
    graph = mlp_train_step()
    result = passes.run_pipeline(graph, [pass_name])
    assert result.inputs == graph.inputs and result.output_names == graph.output_names
    assert count(result) <= count(graph)
    assert_same_results(graph, result)
    assert_round_trip(result)


def test_pipeline_shrinks_the_train_step_and_keeps_its_results():
    graph = mlp_train_step()
    stages: dict = {}
    optimized = passes.run_pipeline(graph, stages=stages)
    names = [getattr(p, "__name__") for p in passes.DEFAULT_PIPELINE]
    assert list(stages) == [n if names[:i].count(n) == 0 else f"{n}.{names[:i].count(n) + 1}"
                            for i, n in enumerate(names)]
    assert stages[list(stages)[-1]] is optimized
    counts = {"traced": count(graph), **{k: count(g) for k, g in stages.items()}}
    print("train step node counts:", counts)
    assert count(optimized) < count(graph)
    assert count(graph) - count(optimized) >= 10
    assert count(optimized, "stop_gradient") == 0
    # every scalar constant appears once
    scalars = [n.attr("value") for n in optimized.nodes() if n.op == "const"]
    assert len(scalars) == len(set(scalars))
    for stage in [graph, *stages.values()]:
        ir.verify(stage)
        assert_round_trip(stage)
        assert_same_results(graph, stage)
    # the optimized graph is a fixed point of the pipeline
    assert ir.print_graph(passes.run_pipeline(optimized)) == ir.print_graph(optimized)


def test_pipeline_on_the_train_step_without_dropout():
    graph = mlp_train_step(dropout=False)
    optimized = passes.run_pipeline(graph)
    assert count(optimized) < count(graph)
    assert_same_results(graph, optimized)
    assert_round_trip(optimized)


def test_inference_graph_precomputes_everything_that_depends_only_on_weights():
    # Dense with a kernel stored [out, in] and a folded batch-normalization scale: nothing that
    # depends only on constants is left to compute at run time.
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    gamma = rng.standard_normal(3).astype(np.float32)
    variance = rng.random(3).astype(np.float32)
    x = B.arg("x", "f32", (None, 4))
    w = B.transpose(B.const(kernel), (1, 0))
    scale = B.div(B.const(gamma), B.sqrt(B.add(B.const(variance), 1e-3)))
    y = B.mul(B.add(B.matmul(x, w), B.const(bias)), scale)
    out = B.softmax(B.relu(y))
    graph = Graph("predict", [x], [("probabilities", out)])
    stages: dict = {}
    optimized = passes.run_pipeline(graph, stages=stages)

    assert count(optimized, "transpose") == 0 and count(optimized, "sqrt") == 0
    matmul = next(n for n in optimized.nodes() if n.op == "matmul")
    np.testing.assert_array_equal(matmul.operands[1].attr("value").array, kernel.T)
    depends_on_input = set(optimized.inputs)
    for node in optimized.nodes():
        if any(o in depends_on_input for o in node.operands):
            depends_on_input.add(node)
        elif node.op != "arg":
            assert node.op == "const" or (node.op == "broadcast" and node.operands[0].op == "const"
                                          ), f"{node} depends only on constants but was not folded"
    assert count(optimized) < count(graph)
    for stage in [graph, *stages.values()]:
        assert_round_trip(stage)
    feeds = random_feeds(graph)
    np.testing.assert_array_equal(ir.run(optimized, feeds)["probabilities"],
                                  ir.run(graph, feeds)["probabilities"])


# ----------------------------------------------------------------------------------------------
# run_pipeline, the pass registry, the contract
# ----------------------------------------------------------------------------------------------

def test_default_pipeline_merges_what_simplify_makes_equal():
    # Only after cse are the two neg(x) one node, so only then is select(c, n, n) -> n visible to
    # simplify; the mul it leaves behind equals q's, which the second cse merges.
    before = with_header("""%6:f32[?,4] = neg %0
                            %7:f32[?,4] = neg %0
                            %8:f32[?,4] = select %2, %6, %7
                            %9:f32[?,4] = mul %8, %1
                            %10:f32[?,4] = mul %6, %1
                            return p=%9, q=%10""")
    after = with_header("""%6:f32[?,4] = neg %0
                           %7:f32[?,4] = mul %6, %1
                           return p=%7, q=%7""")
    check_pass(passes.run_pipeline, before, after)


def test_the_pipeline_merges_the_batch_sizes_dce_makes_equal():
    """dce points every batch dim_size at the first batched input; the pipeline's last cse then
    merges them and what they feed, so that running the pipeline again changes nothing."""
    before = with_header("""%6:f32[?,4] = neg %0
                            %7:f32[?,4] = exp %0
                            %8:f32[] = dim_size %6 axis=0 dtype=f32
                            %9:f32[] = dim_size %7 axis=0 dtype=f32
                            %10:f32[] = const value=2.0
                            %11:f32[] = mul %8, %10
                            %12:f32[] = mul %9, %10
                            %13:f32[] = add %11, %12
                            return p=%13""")
    after = with_header("""%6:f32[] = dim_size %0 axis=0 dtype=f32
                           %7:f32[] = const value=2.0
                           %8:f32[] = mul %6, %7
                           %9:f32[] = add %8, %8
                           return p=%9""")
    check_pass(passes.run_pipeline, before, after, canonical=False)
    optimized = passes.run_pipeline(ir.parse(before))
    assert ir.print_graph(passes.run_pipeline(optimized)) == ir.print_graph(optimized)


def test_run_pipeline_takes_names_and_numbers_repeated_stages():
    graph = mlp_train_step()
    stages: dict = {}
    result = passes.run_pipeline(graph, ["simplify", passes.cse, "simplify", "dce"], stages=stages)
    assert list(stages) == ["simplify", "cse", "simplify.2", "dce"]
    assert stages["dce"] is result


def test_get_pass_names_the_passes_it_knows():
    assert passes.get_pass("cse") is passes.cse
    assert set(passes.PASSES) >= {"dce", "cse", "fold_constants", "simplify"}
    with pytest.raises(KeyError, match="cse, dce, fold_constants, simplify"):
        passes.get_pass("constant_fold")
    with pytest.raises(KeyError, match="unknown pass"):
        passes.run_pipeline(mlp_train_step(), ["licm"])


def test_the_verifier_runs_after_every_pass():
    def retype(graph):   # a broken pass: gives a node a type its operands do not give
        def rewrite(node, operands):
            if node.op == "arg":
                return node
            new_type = TensorType("f64", node.shape) if node.op == "exp" else node.type
            return Node(node.op, operands, node.attrs, new_type)
        return ir.graph.rebuild(graph, rewrite)

    x = B.arg("x", "f32", (None, 2))
    graph = Graph("g", [x], [("out", B.neg(B.exp(x)))])
    with pytest.raises(ir.VerificationError, match="after pass retype"):
        passes.run_pipeline(graph, [passes.simplify, retype])
    passes.run_pipeline(graph, [retype], verify=False)   # the caller asked for no verification


def test_a_pass_must_keep_the_signature():
    x, unused = B.arg("x", "f32", (2,)), B.arg("unused", "f32", (2,))
    graph = Graph("g", [x, unused], [("out", B.exp(x))])

    def drop_unused_inputs(g):
        return Graph(g.name, [n for n in g.inputs if n in g.users()], g.outputs)

    def rename_outputs(g):
        return Graph(g.name, g.inputs, [(name.upper(), v) for name, v in g.outputs])

    for bad in (drop_unused_inputs, rename_outputs):
        with pytest.raises(ir.VerificationError, match="passes must keep|changed the outputs"):
            passes.run_pipeline(graph, [bad], verify=False)
    result = passes.run_pipeline(graph)
    assert result.inputs == (x, unused)
