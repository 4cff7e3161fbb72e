"""The train step as two graphs, `trace_gradients` then `trace_update`, with the gradients in one
flat buffer between them (what data-parallel training sums across processes), against the fused
step of `trace_train`: the same loss, metrics, weights, optimizer slots and moving statistics, on
the reference interpreter and compiled.  A sum of two processes' buffers is checked too: the update
of the mean of two batches' gradients is the fused step on both batches at once."""
import numpy as np
import pytest

import ir
from codegen.compiler import CompileOptions
from codegen.runtime import CompiledRunner
from kcompile import layers, losses, metrics, optimizers
from kcompile.models import Sequential
from kcompile.trainer import GRADIENTS, TargetSpec, trace_gradients, trace_train, trace_update

SPEC = TargetSpec("f32", (None, 3), (None, 3))
ACCURACY = [("accuracy", metrics.CategoricalAccuracy(), False)]
OPTIMIZERS = {
    "adam clipnorm": lambda: optimizers.Adam(learning_rate=0.01, clipnorm=0.5),
    "adamw global clipnorm": lambda: optimizers.AdamW(learning_rate=0.01, weight_decay=0.1,
                                                      global_clipnorm=1.0),
    "sgd nesterov": lambda: optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
    # (its scalar 'optimizer/u_product' is an input and output of the update too)
    "nadam": lambda: optimizers.Nadam(learning_rate=0.01),
}


def model_and_feeds(rows=8, seed=0):
    rng = np.random.default_rng(seed)
    model = Sequential([layers.Input((5,)), layers.Dense(7, activation="relu"),
                        layers.BatchNormalization(), layers.Dropout(0.3),
                        layers.Dense(3, activation="softmax")])
    model.compile(loss="categorical_crossentropy", target="reference")
    x = rng.standard_normal((rows, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, rows)]
    return model, x, y


def state_feeds(model, optimizer, graph):
    """Weights as the model holds them; slots, rate and step counter with nonzero values."""
    rng = np.random.default_rng(1)
    feeds = {v.path: v.numpy() for v in model.weights}
    for node in graph.inputs:
        name = node.attr("name")
        if name not in feeds and name not in ("x", "y", "seed", GRADIENTS):
            shape = tuple(node.shape)
            if name == optimizers.ITERATIONS:
                feeds[name] = np.array(3, np.int32)
            elif name == optimizers.LEARNING_RATE:
                feeds[name] = np.array(0.01, np.float32)
            else:   # a slot (Adam's v must be >= 0)
                feeds[name] = rng.random(shape).astype(np.float32) * 0.01
    return feeds


def run(graph, feeds, compiled):
    wanted = {n.attr("name") for n in graph.inputs}
    feeds = {k: np.array(v, copy=True) for k, v in feeds.items() if k in wanted}
    if compiled:
        return {k: np.array(v, copy=True)
                for k, v in CompiledRunner(graph, {}, CompileOptions()).run(feeds).items()}
    return ir.run(graph, feeds)


@pytest.mark.parametrize("compiled", [False, True], ids=["reference", "llvm"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_gradients_then_update_is_the_fused_step(name, compiled):
    model, x, y = model_and_feeds()
    optimizer = OPTIMIZERS[name]()
    fused = trace_train(model, losses.get("categorical_crossentropy"), ACCURACY,
                        optimizer, SPEC)
    gradients = trace_gradients(model, losses.get("categorical_crossentropy"), ACCURACY,
                                SPEC)
    update = trace_update(model, optimizer)
    feeds = {"x": x, "y": y, "seed": np.array(7, np.uint32), **state_feeds(model, optimizer, fused)}
    want = run(fused, feeds, compiled)
    first = run(gradients, feeds, compiled)
    total = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert first[GRADIENTS].shape == (total,)
    second = run(update, {**feeds, GRADIENTS: first[GRADIENTS]}, compiled)
    got = {**first, **second}
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=1e-6, err_msg=key)


def test_the_update_of_two_processes_summed_gradients_is_the_step_on_both_batches():
    """Data-parallel training: each process computes its batch's gradients, an Allreduce sums the
    buffers, and each applies the update of their mean.  Without Dropout and BatchNormalization
    (whose batch statistics differ by batch) that is the step on the two batches together."""
    rng = np.random.default_rng(3)
    model = Sequential([layers.Input((5,)), layers.Dense(7, activation="tanh"),
                        layers.Dense(3, activation="softmax")])
    model.compile(loss="categorical_crossentropy", target="reference")
    optimizer = optimizers.Adam(learning_rate=0.01)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)]
    fused = trace_train(model, losses.get("categorical_crossentropy"), [], optimizer, SPEC)
    gradients = trace_gradients(model, losses.get("categorical_crossentropy"), [], SPEC)
    update = trace_update(model, optimizer)
    state = state_feeds(model, optimizer, fused)
    seed = np.array(0, np.uint32)
    want = run(fused, {"x": x, "y": y, "seed": seed, **state}, compiled=True)
    halves = [run(gradients, {"x": x[s], "y": y[s], "seed": seed, **state}, compiled=True)[GRADIENTS]
              for s in (slice(0, 8), slice(8, 16))]
    got = run(update, {**state, GRADIENTS: (halves[0] + halves[1]) / 2}, compiled=True)
    for key, value in got.items():
        np.testing.assert_allclose(value, want[key], rtol=2e-5, atol=1e-6, err_msg=key)
