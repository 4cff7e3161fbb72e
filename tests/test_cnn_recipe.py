"""The recipe of examples/fashion_mnist_cnn.py (Conv2D/MaxPooling2D x2, Flatten, Dense relu, Dense
softmax, categorical cross-entropy, Adam) on a small image, against a numpy float64 implementation
written from Keras 3's formulas.

The images are what Fashion-MNIST looks like to the first layers: a zero background and flat regions
of one pixel value, so with a positive convolution bias the pooled windows hold exact ties at a
positive value.  Keras (on JAX, TensorFlow or PyTorch) sends a max-pooling gradient to the *first*
maximum of its window in row-major order, never to all of the tied positions: sending it to every
tied position multiplied the gradient of the convolutions in flat regions by up to 4 and cost the
CNN example accuracy.
"""
import math

import numpy as np
import pytest

from kcompile.layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from kcompile.models import Sequential
from kcompile.optimizers import SGD, Adam
from kcompile.utils import set_random_seed

TARGETS = ("reference", "llvm")
EPSILON = 1e-7  # Keras's backend epsilon: the clip of categorical cross-entropy, Adam's default


# -- numpy float64 reference ------------------------------------------------------------------

def _conv(x, kernel, bias):
    """'valid' cross-correlation, channels last; also returns the im2col columns."""
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    columns = np.stack([x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)], axis=3)
    columns = columns.reshape(n, oh, ow, kh * kw * cin)
    return columns @ kernel.reshape(-1, cout) + bias, columns


def _conv_input_grad(g, kernel, image_shape):
    kh, kw, cin, cout = kernel.shape
    oh, ow = g.shape[1:3]
    dcolumns = (g @ kernel.reshape(-1, cout).T).reshape(g.shape[:3] + (kh, kw, cin))
    dx = np.zeros(image_shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, i:i + oh, j:j + ow, :] += dcolumns[:, :, :, i, j, :]
    return dx


def _max_pool(x):
    """2x2 windows, stride 2, 'valid'; the winner of a window is its first maximum (row-major)."""
    n, h, w, c = x.shape
    oh, ow = h // 2, w // 2
    windows = (x[:, :oh * 2, :ow * 2, :].reshape(n, oh, 2, ow, 2, c)
               .transpose(0, 1, 3, 2, 4, 5).reshape(n, oh, ow, 4, c))
    return windows.max(axis=3), windows.argmax(axis=3)   # numpy's argmax: the first maximum


def _max_pool_grad(g, winner, image_shape):
    n, oh, ow, c = g.shape
    routed = np.zeros((n, oh, ow, 4, c))
    np.put_along_axis(routed, winner[:, :, :, None, :], g[:, :, :, None, :], axis=3)
    dx = np.zeros(image_shape)
    dx[:, :oh * 2, :ow * 2, :] = (routed.reshape(n, oh, ow, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
                                  .reshape(n, oh * 2, ow * 2, c))
    return dx


def loss_and_gradients(weights, x, y):
    """Keras's loss (mean over the batch) and its gradient for every weight, in float64."""
    k1, b1, k2, b2, w3, b3, w4, b4 = [np.asarray(w, np.float64) for w in weights]
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z1, c1 = _conv(x, k1, b1)
    p1, win1 = _max_pool(np.maximum(z1, 0))
    z2, c2 = _conv(p1, k2, b2)
    p2, win2 = _max_pool(np.maximum(z2, 0))
    f = p2.reshape(len(x), -1)                       # Flatten: row-major over (h, w, c)
    z3 = f @ w3 + b3
    h3 = np.maximum(z3, 0)
    z4 = h3 @ w4 + b4
    e = np.exp(z4 - z4.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    q = p / p.sum(axis=1, keepdims=True)             # Keras normalizes, then clips to [eps, 1 - eps]
    assert np.all((q > EPSILON) & (q < 1 - EPSILON)), "the test keeps the clip inactive"
    loss = float(np.mean(-np.sum(y * np.log(q), axis=1)))
    n = len(x)
    dz4 = (p - y) / n                                # softmax + cross-entropy, clip inactive
    dw4, db4 = h3.T @ dz4, dz4.sum(0)
    dz3 = (dz4 @ w4.T) * (z3 > 0)
    dw3, db3 = f.T @ dz3, dz3.sum(0)
    dp2 = (dz3 @ w3.T).reshape(p2.shape)
    dz2 = _max_pool_grad(dp2, win2, z2.shape) * (z2 > 0)
    dk2 = (c2.reshape(-1, c2.shape[-1]).T @ dz2.reshape(-1, dz2.shape[-1])).reshape(k2.shape)
    db2 = dz2.sum((0, 1, 2))
    dp1 = _conv_input_grad(dz2, k2, p1.shape)
    dz1 = _max_pool_grad(dp1, win1, z1.shape) * (z1 > 0)
    dk1 = (c1.reshape(-1, c1.shape[-1]).T @ dz1.reshape(-1, dz1.shape[-1])).reshape(k1.shape)
    db1 = dz1.sum((0, 1, 2))
    return loss, [dk1, db1, dk2, db2, dw3, db3, dw4, db4]


def adam_steps(weights, batches, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=EPSILON):
    """Keras 3's Adam: lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); m += (g - m)(1 - beta_1);
    v += (g^2 - v)(1 - beta_2); w -= lr_t * m / (sqrt(v) + epsilon)."""
    weights = [np.asarray(w, np.float64) for w in weights]
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    losses = []
    for t, (x, y) in enumerate(batches, start=1):
        loss, grads = loss_and_gradients(weights, x, y)
        losses.append(loss)
        lr_t = learning_rate * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for i, g in enumerate(grads):
            m[i] += (g - m[i]) * (1 - beta_1)
            v[i] += (g * g - v[i]) * (1 - beta_2)
            weights[i] = weights[i] - lr_t * m[i] / (np.sqrt(v[i]) + epsilon)
    return losses, weights


# -- data and model -----------------------------------------------------------------------------

def _images(count, seed):
    """Fashion-MNIST-like 14x14 images: zero background, a garment of flat 8-bit regions, a little
    texture; scaled by 1/255 as the example does."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 14, 14, 1), np.uint8)
    for image in images:
        top, left = rng.integers(1, 4, 2)
        bottom, right = rng.integers(10, 14, 2)
        image[top:bottom, left:right, 0] = rng.integers(60, 250)           # one flat region
        mid = (top + bottom) // 2
        image[mid:bottom, left:right, 0] = rng.integers(60, 250)           # a second one
        texture = rng.random(image.shape[:2]) < 0.15
        image[texture & (image[:, :, 0] > 0), 0] = rng.integers(0, 256, int(
            (texture & (image[:, :, 0] > 0)).sum()))
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, count)]
    return images / 255.0, labels


def _model(target, optimizer):
    set_random_seed(0)
    model = Sequential([
        Input(shape=(14, 14, 1)),
        Conv2D(4, (3, 3), activation="relu"), MaxPooling2D((2, 2)),     # 12x12x4 -> 6x6x4
        Conv2D(6, (3, 3), activation="relu"), MaxPooling2D((2, 2)),     # 4x4x6 -> 2x2x6
        Flatten(), Dense(8, activation="relu"), Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=optimizer, loss="categorical_crossentropy", target=target)
    weights = model.get_weights()
    # Positive convolution biases: the zero background then pools to exact ties above zero (as
    # after the first steps of training); a kernel with a positive sum keeps flat regions positive.
    weights[0] = np.abs(weights[0])
    weights[1] = np.full_like(weights[1], 0.05)
    weights[3] = np.full_like(weights[3], 0.02)
    model.set_weights(weights)
    return model, weights


def _tie_count(x, weights):
    """How many pooled windows of the first block hold a tie at their (positive) maximum."""
    z1, _ = _conv(np.asarray(x, np.float64), *[np.asarray(w, np.float64) for w in weights[:2]])
    h = np.maximum(z1, 0)[:, :12, :12, :].reshape(len(x), 6, 2, 6, 2, -1).transpose(0, 1, 3, 2, 4, 5)
    h = h.reshape(len(x), 6, 6, 4, -1)
    maxima = h.max(axis=3, keepdims=True)
    return int(np.sum(((h == maxima).sum(axis=3) > 1) & (maxima[:, :, :, 0] > 0)))


# -- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_one_sgd_step_takes_keras_gradient_with_max_pool_ties(target):
    """One SGD step with lr=1 from the same weights: w - gradient, the gradient of every weight as
    the numpy reference (first-maximum routing) computes it."""
    x, y = _images(16, seed=1)
    model, weights = _model(target, SGD(learning_rate=1.0))
    assert _tie_count(x, weights) > 100     # the case this test is about really occurs
    loss, grads = loss_and_gradients(weights, x, y)
    got_loss = model.train_on_batch(x, y)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
    names = ["conv1 kernel", "conv1 bias", "conv2 kernel", "conv2 bias", "dense1 kernel",
             "dense1 bias", "dense2 kernel", "dense2 bias"]
    for name, before, after, grad in zip(names, weights, model.get_weights(), grads):
        scale = np.abs(grad).max()
        assert scale > 0, name
        np.testing.assert_allclose((before - after) / scale, grad / scale, atol=2e-5, err_msg=name)


def test_all_tied_window_passes_one_gradient():
    """A 1x1 convolution of a zero image is its bias everywhere: every 2x2 window is a four-way tie.
    The bias gradient counts one winner per window (4 windows x d loss / d pooled value), not every
    tied pixel (16 of them)."""
    model = Sequential([Input(shape=(4, 4, 1)), Conv2D(1, (1, 1)), MaxPooling2D((2, 2)), Flatten(),
                        Dense(1, use_bias=False)])
    model.compile(optimizer=SGD(learning_rate=0.01), loss="mean_squared_error", target="llvm")
    model.set_weights([np.ones((1, 1, 1, 1)), np.full(1, 0.5), np.ones((4, 1))])
    model.train_on_batch(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 1), np.float32))
    # prediction 4 * 0.5 = 2; d(mse)/d prediction = 2 * 2 = 4; each window passes 4 to one pixel
    bias = model.get_weights()[1]
    np.testing.assert_allclose(bias, [0.5 - 0.01 * 4 * 4], rtol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_adam_steps_follow_keras_formulas(target):
    """Three Adam steps (the example's optimizer and defaults) on three batches: the losses and the
    updates of every weight as Keras 3's formulas give them."""
    x, y = _images(48, seed=2)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in (0, 16, 32)]
    model, weights = _model(target, Adam(learning_rate=0.001))
    losses, expected = adam_steps(weights, batches)
    got = [float(model.train_on_batch(bx, by)) for bx, by in batches]
    np.testing.assert_allclose(got, losses, rtol=1e-5)
    for before, after, want in zip(weights, model.get_weights(), expected):
        update, expected_update = after - before, want - before
        np.testing.assert_allclose(update, expected_update, rtol=1e-3,
                                   atol=1e-3 * np.abs(expected_update).max())


def test_conv_kernel_glorot_fans_count_the_window():
    """Glorot uniform for a (3, 3, 32, 64) kernel: limit sqrt(6 / (9 * 32 + 9 * 64))."""
    set_random_seed(0)
    layer = Conv2D(64, (3, 3))
    layer.build((None, 13, 13, 32))
    kernel = layer.get_weights()[0]
    limit = math.sqrt(6.0 / (9 * 32 + 9 * 64))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.99 * limit
    assert abs(kernel.std() - limit / math.sqrt(3)) < 0.02 * limit


def test_fit_keeps_the_last_partial_batch():
    """40 samples in batches of 16: 3 steps per epoch (16, 16, 8), as Keras."""
    x, y = _images(40, seed=3)
    model, _ = _model("llvm", Adam(learning_rate=0.001))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 6


def test_nan_in_a_pooled_window_reaches_the_loss():
    """The training path's pooling picks a tap equal to the maximum; a NaN equals none, and still
    propagates (a NaN loss, as Keras), not 0."""
    model = Sequential([Input(shape=(4, 4, 1)), MaxPooling2D((2, 2)), Flatten(), Dense(1)])
    model.compile(optimizer=SGD(learning_rate=0.01), loss="mean_squared_error", target="llvm")
    x = np.ones((1, 4, 4, 1), np.float32)
    x[0, 1, 2, 0] = np.nan
    assert np.isnan(model.train_on_batch(x, np.zeros((1, 1), np.float32)))
