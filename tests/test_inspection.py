"""What the compiler did, as a user sees it: dump_ir stages, DOT, plot, KCOMPILE_DUMP."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ir
import kcompile
from kcompile.layers import Dense, Dropout, Flatten, Input


def small_model(target="llvm"):
    model = kcompile.Sequential([Flatten(input_shape=(4, 4)), Dense(8, activation="relu"),
                                 Dropout(0.5), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  target=target)
    return model


def test_stage_list_is_the_pipeline_in_order():
    stages = small_model().compiler_stages()
    from ir.passes import DEFAULT_PIPELINE
    assert stages[:2] == ["traced", "train"]
    assert stages[-5:] == ["optimized", "fused", "memory", "llvm", "asm"]
    assert len(stages) == 2 + len(DEFAULT_PIPELINE) + 5


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_every_graph_stage_round_trips_through_the_parser(target):
    model = small_model(target)
    for stage in model.compiler_stages():
        text = model.dump_ir(stage)
        assert text.strip(), stage
        if stage in ("memory", "llvm", "asm"):
            continue
        graph, groups = ir.parse(text, with_groups=True)
        assert ir.print_graph(graph, groups if groups else None) == text, stage
        ir.verify(graph)


def test_stages_show_what_the_compiler_did():
    model = small_model()
    traced = model.dump_ir("traced")
    assert "y_pred=" in traced and "random_uniform" not in traced   # inference: no dropout
    train = model.dump_ir("train")
    assert "random_uniform" in train and "optimizer/iterations" in train
    optimized = model.dump_ir("optimized")
    assert "stop_gradient" not in optimized and "stop_gradient" in train
    assert len(optimized.splitlines()) < len(train.splitlines())
    fused = model.dump_ir("fused")
    assert fused.count("kernel k") >= 3
    assert "define" in model.dump_ir("llvm")
    asm = model.dump_ir("asm")
    assert "ret" in asm
    with pytest.raises(ValueError, match="unknown stage 'bogus'"):
        model.dump_ir("bogus")
    # `graph` picks the traced graph too; 'train' is the train graph only
    assert model.dump_ir("traced", graph="train") == train
    assert "random_uniform" not in model.dump_ir("traced", graph="eval")
    with pytest.raises(ValueError, match="stage='traced', graph='predict'"):
        model.dump_ir("train", graph="predict")


def test_an_uncompiled_model_lists_no_train_stage():
    model = kcompile.Sequential([Flatten(input_shape=(2, 2)), Dense(3)])
    stages = model.compiler_stages()
    assert stages[0] == "traced" and "train" not in stages
    for stage in stages:
        assert model.dump_ir(stage).strip(), stage


def test_predict_graph_of_an_uncompiled_model():
    model = kcompile.Sequential([Flatten(input_shape=(2, 2)), Dense(3)])
    text = model.dump_ir("fused", graph="predict")
    assert "matmul" in text
    with pytest.raises(RuntimeError, match="compile"):
        model.dump_ir("optimized", graph="train")


def test_dot_has_one_cluster_per_kernel(tmp_path):
    model = small_model()
    dot = model.to_dot(tmp_path / "g.dot")
    kernels = model.dump_ir("fused").count("kernel k")
    assert dot.count("subgraph \"cluster_") == kernels
    assert (tmp_path / "g.dot").read_text() == dot


def test_plot_renders_or_says_what_is_missing(tmp_path, monkeypatch):
    model = small_model()
    if shutil.which("dot"):
        path = model.plot(tmp_path / "g.svg")
        assert open(path).read().lstrip().startswith("<?xml")
        # a training graph whose clusters Graphviz 2.43 could not rank without newrank
        other = kcompile.Sequential([Input((6,)), Dense(8, activation="relu"),
                                     Dense(3, activation="softmax")])
        other.compile("adam", "sparse_categorical_crossentropy")
        assert open(other.plot(tmp_path / "t.svg")).read().lstrip().startswith("<?xml")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz"):
        model.plot(tmp_path / "g.png")


def test_kcompile_dump_writes_every_stage(tmp_path):
    script = (
        "import numpy as np, kcompile\n"
        "from kcompile.layers import Dense, Flatten\n"
        "m = kcompile.Sequential([Flatten(input_shape=(2, 2)), Dense(3, activation='softmax')])\n"
        "m.compile(optimizer='sgd', loss='categorical_crossentropy')\n"
        "m.fit(np.zeros((4, 2, 2)), np.eye(3)[[0, 1, 2, 0]], verbose=0)\n"
        "m2 = kcompile.Sequential([Flatten(input_shape=(2, 2)), Dense(5, activation='softmax')])\n"
        "m2.compile(optimizer='sgd', loss='categorical_crossentropy')\n"
        "m2.fit(np.zeros((4, 2, 2)), np.eye(5)[[0, 1, 2, 4]], verbose=0)\n")
    env = dict(os.environ, KCOMPILE_DUMP=str(tmp_path), KCOMPILE_CACHE="0")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = sorted(os.listdir(tmp_path))
    for stage in ("traced", "simplify", "optimized", "fused", "memory", "llvm", "asm"):
        assert f"train.{stage}.txt" in names, names
        assert f"train-2.{stage}.txt" in names, names     # the second model's, beside the first's
    assert "f32[?,3]" in (tmp_path / "train.optimized.txt").read_text()
    assert "f32[?,5]" in (tmp_path / "train-2.optimized.txt").read_text()
    graph = ir.parse((tmp_path / "train.optimized.txt").read_text())
    assert "loss" in graph.output_names


@pytest.mark.parametrize("text", [
    "graph g\n %0:f32[?,3] = arg name=x\n %1:f32[?,3] = exp %x\n return o=%1",       # bad operand
    "graph g\n %0:f32[?,3] = arg name=x\n %1:f32[?,3,1] = reshape %0\n return o=%1",  # no shape=
    "graph g\n %0:f32[?,3] = arg name=x\n return o",                                  # no =%ref
])
def test_malformed_ir_text_is_a_parse_error_naming_the_line(text):
    with pytest.raises(ir.parser.ParseError, match="line 3"):
        ir.parse(text)


@pytest.mark.parametrize("edit,line,message", [
    (("arg name=x", "arg name=x foo="), 2, "attribute foo has no value"),
    (("return y=%3", "return y"), 6, "expected NAME=%N in return, got 'y' without '='"),
    (("return y=%3", "return y=%3 junk"), 6, "expected NAME=%N in return, got 'junk' without '='"),
    (("%0, %1", "%0, %x"), 4, r"bad value reference '%x'"),
    (("transpose_b=true", "transpose_b=(1,2"), 4, r"attribute transpose_b: '\(' is not closed"),
    (("%0:f32[?,4] = arg", "%0:f32[a,4] = arg"), 2, "bad dimension 'a' in f32"),
    (("%0:f32[?,4] = arg", "%0:f32[?,4,] = arg"), 2, "bad dimension '' in f32"),
])
def test_malformed_fragments_are_named_in_the_parse_error(edit, line, message):
    """What is wrong, not the parser's own IndexError or AttributeError."""
    with pytest.raises(ir.parser.ParseError, match=rf"line {line}: {message}"):
        ir.parse(_MATMUL.replace(*edit))


def test_a_reduction_that_repeats_an_axis_is_refused():
    text = ("graph g\n  %0:f32[?,4] = arg name=x\n"
            "  %1:f32[?] = reduce_sum %0 axes=(1,1) keepdims=false\n  return y=%1\n")
    with pytest.raises(ir.parser.ParseError, match=r"line 3: reduction axes \(1, 1\) repeat an axis"):
        ir.parse(text)


def test_dot_labels_escape_quotes_and_backslashes_in_names():
    """A layer named with a quote and a backslash: every label is one well-formed DOT string that
    reads back as the IR's text of the node."""
    import re
    model = kcompile.Sequential([Input((3,)), Dense(2, name='my"d\\ense')])
    model.compile("sgd", "mse")
    dot = model.to_dot(graph="predict")
    labels = re.findall(r'\[label="((?:[^"\\]|\\.)*)"[,\]]', dot)
    assert len(labels) == len(re.findall(r"\[label=", dot))
    unescaped = [re.sub(r"\\(.)", r"\1", label) for label in labels]
    assert any('name="my\\"d\\\\ense/kernel"' in text for text in unescaped), unescaped


_MATMUL = """graph g
  %0:f32[?,4] = arg name=x
  %1:f32[4,4] = arg name=w
  %2:f32[?,4] = matmul %0, %1 transpose_a=false transpose_b=true
  %3:f32[?,4] = tanh %2
  return y=%3
"""


@pytest.mark.parametrize("edit,line,message", [
    # a misspelt attribute would otherwise default (a square weight: no shape error to catch it)
    (("transpose_b=true", "transpose_bb=true"), 4,
     "matmul: unknown attribute transpose_bb; missing attribute transpose_b"),
    (("transpose_a=false ", ""), 4, "matmul: missing attribute transpose_a"),
    (("tanh %2", "tanh %2 alpha=3"), 5, "tanh: unknown attribute alpha"),
    ((" name=w", ""), 3, "arg: missing attribute name"),
    (("name=w", "name=x"), 3, "two args are named 'x'"),
    (("transpose_a=false", "transpose_a false"), 4, "expected key=value"),
    (("  %3:", "  kernel 1k elementwise {\n  %3:"), 5, "expected a name"),
    (("  %3:", "  kernel k0 elementwise {\n  %3:"), 7, r"kernel k0 \(line 5\) is not closed"),
    (("  return y=%3\n", "  return y=%3\n  %4:f32[?,4] = tanh %3\n  return z=%4\n"), 7,
     "nothing may follow the 'return' line"),
])
def test_ir_text_with_an_unknown_or_missing_attribute_or_a_broken_block_is_refused(edit, line,
                                                                                    message):
    """Every op declares its attributes (ops.OpDef.attrs): text naming another, or lacking one,
    is a ParseError naming the line, as are an unclosed kernel block, lines after the return and
    two args of one name; the unedited text parses."""
    ir.parse(_MATMUL)
    text = _MATMUL.replace(*edit)
    assert text != _MATMUL
    with pytest.raises(ir.parser.ParseError, match=f"^line {line}: {message}"):
        ir.parse(text, with_groups=True)


def test_a_parse_error_names_the_line_of_the_text_counting_blank_and_comment_lines():
    """The parser skips blank lines and `#` comments, and still names the line as an editor
    numbers it (it had named line 4 here, the line's place among the others)."""
    text = _MATMUL.replace("transpose_b=true", "transpose_bb=true").replace(
        "graph g\n", "# a comment\ngraph g\n\n  # another\n\n")
    assert text.splitlines()[7].lstrip().startswith("%2:f32[?,4] = matmul")
    with pytest.raises(ir.parser.ParseError, match="^line 8: matmul: unknown attribute transpose_bb"):
        ir.parse(text)
    with pytest.raises(ir.parser.ParseError, match="^line 4: bad dimension 'a'"):
        ir.parse("\n# x\ngraph g\n  %0:f32[a] = arg name=x\n  return y=%0\n")


_SOURCES = """graph g
  %0:f32[?,3] = arg name=x
  %1:i32[3] = iota axis=0
  %2:f32[] = const value=2.5
  %3:i32[] = const value=7
  %4:f32[?,3] = mul %0, %0
  return y=%4
"""


@pytest.mark.parametrize("text,line,message", [
    # a quoted or unknown word would read as true; a repeated attribute would silently win
    (_MATMUL.replace("transpose_b=true", 'transpose_b="false"'), 4,
     "matmul: attribute transpose_b='false' must be true or false"),
    (_MATMUL.replace("transpose_b=true", "transpose_b=maybe"), 4,
     "matmul: attribute transpose_b='maybe' must be true or false"),
    (_MATMUL.replace("transpose_b=true", "transpose_b=1"), 4,
     "matmul: attribute transpose_b=1 must be true or false"),
    (_MATMUL.replace("transpose_b=true", "transpose_b=false transpose_b=true"), 4,
     "attribute transpose_b given twice"),
    (_SOURCES.replace("iota axis=0", "iota axis=1"), 3,
     r"iota: attribute axis=1 must be an axis of shape \(3,\)"),
    (_SOURCES.replace("iota axis=0", "iota %0 axis=0"), 3, "iota takes no operands, got 1"),
    (_SOURCES.replace("%2:f32[] = const value=2.5", "%2:f32[2] = const value=(1.0,2.0)"), 4,
     r"const of shape \(2,\): its value must be an array"),
    (_SOURCES.replace("value=2.5", "value=abc"), 4, "const: value='abc' is not a f32 number"),
    (_SOURCES.replace("value=7", "value=99999999999"), 5,
     r"const: value=99999999999 is out of the range of i32"),
    (_SOURCES.replace("%3:i32[] = const value=7", "%3:u32[] = const value=-1"), 5,
     "const: value=-1 is out of the range of u32"),
    (_SOURCES.replace("value=7", "value=7.5"), 5, "const: value=7.5 is not an integer"),
    (_SOURCES.replace("arg name=x", "arg name=1"), 2, "arg: attribute name=1 must be a string"),
])
def test_ir_text_with_attribute_values_of_the_wrong_kind_is_refused(text, line, message):
    """Attribute values are checked by kind (ops._check_attr_values): a matmul's transposes are
    true or false, given once; a constant's value is a number of its dtype's range (or an array),
    an iota's axis one of its shape's, and a source takes no operands.  The unedited texts parse
    and run."""
    ir.parse(_MATMUL)
    graph = ir.parse(_SOURCES)
    assert ir.run(graph, {"x": np.ones((2, 3), np.float32)})["y"].shape == (2, 3)
    with pytest.raises(ir.parser.ParseError, match=f"^line {line}: {message}"):
        ir.parse(text)


@pytest.mark.parametrize("edit,message", [
    (("matmul %0, %1", "matmul %0"), "matmul takes 2 operands, got 1"),
    (("matmul %0, %1", "matmul %0, %1, %1"), "matmul takes 2 operands, got 3"),
    (("tanh %2", "tanh %2, %2"), "tanh takes 1 operand, got 2"),
    (("tanh %2", "reduce_sum %2, %2 axes=(1) keepdims=false"), "reduce_sum takes 1 operand, got 2"),
    (("tanh %2", "select %2, %2"), "select takes 3 operands, got 2"),
    (("tanh %2", "relu %2"), "unknown op 'relu'; known ops: \\['abs', "),
])
def test_ir_text_with_the_wrong_number_of_operands_is_refused(edit, message):
    """Every op but concat declares how many operands it takes (ops.OpDef.operands), so a node
    with too few or too many is a ParseError saying so, not a failed unpacking inside its shape
    rule; the edited node is on line 4 or 5."""
    text = _MATMUL.replace(*edit)
    assert text != _MATMUL
    with pytest.raises(ir.parser.ParseError, match=f"^line [45]: {message}"):
        ir.parse(text)
    from ir import ops
    assert [op.name for op in ops.REGISTRY.values() if op.operands is None] == ["concat"]


def test_nodes_are_made_with_their_ops_attributes_only():
    from ir import build as B
    from ir import ops
    x = B.arg("x", "f32", (None, 3))
    with pytest.raises(ValueError, match="reshape: unknown attribute shapes; missing attribute "
                                         "shape"):
        ops.make("reshape", (x,), shapes=(None, 3))
    assert ops.make("reshape", (x,), shape=(None, 3, 1)).shape == (None, 3, 1)
    assert all(op.attrs is not None for op in ops.REGISTRY.values())


def test_names_that_read_as_numbers_round_trip():
    from ir import build as B
    for name in ("Infinity", "nan", "inf", "1e5"):
        x = B.arg(name, "f32", (None, 3))
        text = ir.print_graph(ir.Graph("g", [x], [("o", B.exp(x))]))
        assert ir.parse(text).input_names == [name]
        assert ir.print_graph(ir.parse(text)) == text


def test_train_and_eval_graphs_need_a_loss_and_train_is_listed_for_the_train_graph_only():
    model = kcompile.Sequential([Input(shape=(5,)), Dense(3)])
    model.compile(optimizer="sgd", loss=None)
    for graph in ("train", "eval"):
        with pytest.raises(RuntimeError, match="compiled with a loss"):
            model.dump_ir("optimized", graph=graph)
    model.compile(optimizer="sgd", loss="mse")
    assert "train" in model.compiler_stages() and "train" in model.compiler_stages("train")
    for graph in ("eval", "predict"):
        stages = model.compiler_stages(graph)
        assert "train" not in stages
        for stage in stages[:3]:
            model.dump_ir(stage, graph=graph)


def test_kernel_profile_counts_the_cycles_of_every_kernel(monkeypatch):
    """KCOMPILE_PROFILE is read when the model compiles (here after kcompile was imported)."""
    monkeypatch.setenv("KCOMPILE_PROFILE", "1")
    model = small_model()
    x = np.random.default_rng(0).random((64, 4, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(64) % 3]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    profile = model.kernel_profile()
    kernels = [line.split()[1] for line in model.dump_ir("fused").splitlines()
               if line.strip().startswith("kernel ")]
    assert [name for name, _, _ in profile] == kernels
    assert all(cycles > 0 for _, _, cycles in profile)   # every kernel of the train step ran
    assert {kind for _, kind, _ in profile} >= {"matmul", "elementwise"}
    assert all(cycles == 0 for _, _, cycles in model.kernel_profile("predict"))   # never run

    monkeypatch.setenv("KCOMPILE_PROFILE", "0")
    unprofiled = small_model()
    unprofiled.fit(x, y, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match="KCOMPILE_PROFILE=1 before it compiles"):
        unprofiled.kernel_profile()
    with pytest.raises(RuntimeError, match="target='llvm'"):
        small_model(target="reference").kernel_profile()


def test_every_module_the_readme_names_is_an_attribute_of_kcompile():
    for name in ("describe", "inspection", "saving", "ops", "callbacks", "datasets", "predictor"):
        assert getattr(kcompile, name).__name__ == f"kcompile.{name}"
