"""Code for CPUs other than the host's: the train step and predict function of an MLP, a CNN and
an LSTM, lowered for each vector width (`target.generating_for`), verified by LLVM and compiled to
machine code for aarch64 (NEON, 4 floats), SSE-only x86-64 (4 floats) and AVX2 x86-64 (8 floats).
The host cannot run that code; this checks that the generator emits nothing only the host's CPU
has (an x86 intrinsic on aarch64, a 16-float vector without AVX-512), and that it picks the vector
width of the CPU it generates for.  The code's arithmetic at each width is tested on the host
(tests/test_gemm.py runs 4- and 8-lane GEMMs against numpy)."""
import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir as lir

import kcompile
from codegen import target
from codegen.compiler import CompileOptions, optimize_graph
from codegen.lower import blocked_anchors, lower
from ir.fusion import fuse
from ir.memory import plan_memory
from kcompile import layers

TARGETS = {   # triple, cpu, features, floats per vector
    "aarch64 NEON": ("aarch64-unknown-linux-gnu", "generic", "+neon,+fp-armv8", 4),
    "x86-64 SSE": ("x86_64-unknown-linux-gnu", "x86-64", "+sse2", 4),
    "x86-64 AVX2": ("x86_64-unknown-linux-gnu", "haswell", "+avx2,+fma", 8),
}

MODELS = {
    "mlp": lambda: kcompile.Sequential([
        layers.Input((6, 6)), layers.Flatten(), layers.Dense(40, activation="relu"),
        layers.Dropout(0.2), layers.Dense(10, activation="softmax")]),
    "cnn": lambda: kcompile.Sequential([
        layers.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(10, activation="softmax")]),
    "lstm": lambda: kcompile.Sequential([
        layers.Input((5, 3)), layers.LSTM(8), layers.Dense(10, activation="softmax")]),
}


def traced_graphs(make):
    """The train and predict graphs of a model, traced (the reference target compiles nothing)."""
    model = make()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  target="reference")
    x = np.random.default_rng(0).random((4,) + model.input_shape[1:]).astype(np.float32)
    model.fit(x, np.eye(10, dtype=np.float32)[:4], batch_size=4, epochs=1, verbose=0)
    train_key = next(key for key in model._programs if key[0] == "train")
    train, _, _ = model._trace("train", train_key[1], model.loss, False)
    predict, _, _ = model._trace("predict", None, None, False)
    return {"train": train, "predict": predict}


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_every_model_compiles_for_other_cpus_at_their_vector_width(model_name):
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    graphs = traced_graphs(MODELS[model_name])
    for target_name, (triple, cpu, features, lanes) in TARGETS.items():
        machine = llvm.Target.from_triple(triple).create_target_machine(
            cpu=cpu, features=features, reloc="pic", codemodel="default")
        for graph_name, graph in graphs.items():
            with target.generating_for(features):
                fused = fuse(optimize_graph(graph, CompileOptions()))
                plan = plan_memory(fused, blocked=blocked_anchors(fused))
                module = lir.Module(name=f"{model_name}.{graph_name}")
                module.triple = triple
                lower(fused, plan, name=graph_name, module=module, threading=True)
            text = str(module)
            where = f"{model_name} {graph_name} for {target_name}"
            assert "llvm.x86" not in text, where
            widths = {int(w) for w in re.findall(r"<(\d+) x float>", text)}
            assert max(widths) == lanes, (where, widths)
            parsed = llvm.parse_assembly(text)
            parsed.triple = triple
            parsed.data_layout = str(machine.target_data)
            parsed.verify()
            assert len(machine.emit_object(parsed)) > 1000, where
