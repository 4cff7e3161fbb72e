"""evaluate and predict convert an input that the compiled code cannot read in place (not float32 in
C order: float64 data, a memmap of a big file, a broadcast view) one batch at a time, never whole."""
import tracemalloc

import numpy as np
import pytest

from kcompile import optimizers
from kcompile.layers import Dense, Input
from kcompile.models import Sequential


def _model(target):
    model = Sequential([Input((4,)), Dense(1)])
    kernel = np.array([[0.5], [-1.0], [2.0], [0.25]], np.float32)
    bias = np.array([0.125], np.float32)
    model.set_weights([kernel, bias])
    model.compile(optimizer=optimizers.SGD(0.1), loss="mse", target=target)
    return model, kernel, bias


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_a_large_input_is_converted_a_batch_at_a_time(target):
    """A float64 broadcast view of 2e6 rows (32 MB as float32, 4 bytes of real memory): predict and
    evaluate allocate their output and a batch, not a float32 copy of x (measured with tracemalloc,
    which sees numpy's allocations), and give numpy's values."""
    model, kernel, bias = _model(target)
    rows = 2_000_000
    x = np.broadcast_to(np.array([1.0, 2.0, 3.0, 4.0]), (rows, 4))
    y = np.zeros((rows, 1), np.float32)
    row = float(np.array([1.0, 2.0, 3.0, 4.0]) @ kernel[:, 0] + bias[0])   # 5.125
    # (compiled, and its buffers sized for a batch, outside the measurement)
    model.predict(x[:100_000], batch_size=100_000, verbose=0)
    model.evaluate(x[:100_000], y[:100_000], batch_size=100_000, verbose=0)
    tracemalloc.start()
    try:
        out = model.predict(x, batch_size=100_000, verbose=0)
        peak_predict = tracemalloc.get_traced_memory()[1]
        del out
        tracemalloc.reset_peak()
        loss = model.evaluate(x, y, batch_size=100_000, verbose=0)
        peak_evaluate = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    output_bytes = rows * 4
    # a float32 copy of x alone would be 32 MB; a batch is 1.6 MB (the interpreter keeps a few
    # batch-sized intermediates)
    assert peak_predict < output_bytes + 12e6, peak_predict
    assert peak_evaluate < 12e6, peak_evaluate
    np.testing.assert_allclose(loss, row ** 2, rtol=1e-6)
    out = model.predict(x[:5], verbose=0)
    np.testing.assert_allclose(out, np.full((5, 1), row), rtol=1e-6)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_batchwise_conversion_gives_what_float32_input_gives(target, tmp_path):
    """float64, Fortran-order and memmapped inputs (converted per batch) against the same values
    fed as float32 in C order (read in place) and against numpy: predict and evaluate (with sample
    weights, a last partial batch and a callback that sees every batch)."""
    model, kernel, bias = _model(target)
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((37, 4))
    y = rng.standard_normal((37, 1)).astype(np.float32)
    weights = rng.random(37).astype(np.float32)
    x32 = x64.astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x64)
    want = x32 @ kernel + bias
    want_loss = float(np.sum(weights * ((want - y) ** 2)[:, 0]) / 37)
    from kcompile.callbacks import LambdaCallback
    for x in (x32, x64, np.asfortranarray(x64), np.load(path, mmap_mode="r")):
        seen = []
        callback = LambdaCallback(on_predict_batch_end=lambda batch, logs: seen.append(batch))
        np.testing.assert_allclose(model.predict(x, batch_size=8, verbose=0, callbacks=[callback]),
                                   want, rtol=1e-5, atol=1e-6)
        assert seen == [0, 1, 2, 3, 4]
        loss = model.evaluate(x, y, sample_weight=weights, batch_size=8, verbose=0)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
