"""Tests for kcompile.utils: to_categorical and the global random state."""

import random

import numpy as np
import pytest

import kcompile.utils
from kcompile.utils import random as kcompile_random
from kcompile.utils import pad_sequences, set_random_seed, to_categorical


# --- pad_sequences (expectations worked by hand from Keras's documented rules) ---

def test_pad_sequences_pads_and_truncates_at_either_end():
    seqs = [[1, 2, 3], [4], [], [5, 6, 7, 8, 9]]
    np.testing.assert_array_equal(pad_sequences(seqs), [[0, 0, 1, 2, 3], [0, 0, 0, 0, 4],
                                                        [0, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(pad_sequences(seqs, maxlen=3, padding="post", truncating="post",
                                                value=-1),
                                  [[1, 2, 3], [4, -1, -1], [-1, -1, -1], [5, 6, 7]])
    np.testing.assert_array_equal(pad_sequences(seqs, maxlen=2), [[2, 3], [0, 4], [0, 0], [8, 9]])
    assert pad_sequences(seqs).dtype == np.int32
    floats = pad_sequences([[0.5], [1.5, 2.5]], dtype="float32", padding="post")
    np.testing.assert_array_equal(floats, np.array([[0.5, 0], [1.5, 2.5]], np.float32))
    assert pad_sequences([], maxlen=4).shape == (0, 4)


def test_pad_sequences_keeps_the_shape_of_each_step_and_refuses_bad_input():
    steps = [np.ones((2, 3)), np.full((1, 3), 2.0)]
    out = pad_sequences(steps, dtype="float32")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[1], [[0, 0, 0], [2, 2, 2]])
    with pytest.raises(ValueError, match="'pre' or 'post'"):
        pad_sequences([[1]], padding="middle")
    with pytest.raises(ValueError, match="non-iterable: 3 at position 1"):
        pad_sequences([[1], 3])
    with pytest.raises(ValueError, match="different from expected shape"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="maxlen"):
        pad_sequences([[1]], maxlen=-1)


# --- to_categorical ---


def test_to_categorical_list():
    result = to_categorical([0, 2, 1])
    np.testing.assert_array_equal(result, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert result.dtype == np.float32


def test_to_categorical_num_classes_and_dtype():
    result = to_categorical(np.array([1, 3]), num_classes=5, dtype="int32")
    assert result.shape == (2, 5) and result.dtype == np.int32
    np.testing.assert_array_equal(result.argmax(axis=-1), [1, 3])


def test_to_categorical_drops_trailing_axis_of_size_one():
    assert to_categorical(np.array([[0], [1], [2]])).shape == (3, 3)


def test_to_categorical_keeps_other_shapes():
    labels = np.array([[0, 1], [2, 3], [1, 1]], dtype=np.uint8)
    result = to_categorical(labels, num_classes=4)
    assert result.shape == (3, 2, 4)
    np.testing.assert_array_equal(result.argmax(axis=-1), labels)
    assert to_categorical(np.zeros((2, 1, 3), int), 2).shape == (2, 1, 3, 2)


def test_to_categorical_scalar_and_integral_floats():
    np.testing.assert_array_equal(to_categorical(2, num_classes=3), [0, 0, 1])
    np.testing.assert_array_equal(to_categorical([1.0, 0.0]), [[0, 1], [1, 0]])


def test_to_categorical_empty_with_num_classes():
    assert to_categorical(np.array([], dtype=int), num_classes=3).shape == (0, 3)


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        ([0, -1], None, "negative label -1"),
        ([0, 3], 3, "label 3 but num_classes=3"),
        ([0.5, 1.0], None, "non-integer"),
        (["a", "b"], None, "integer class labels"),
        ([], None, "pass num_classes"),
        ([0, 1], 0, "positive integer"),
    ],
)
def test_to_categorical_errors(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        to_categorical(labels, num_classes=num_classes)


# --- random state ---


def test_set_random_seed_makes_everything_reproducible():
    set_random_seed(1234)
    first = (random.random(), np.random.rand(), kcompile_random.get_generator().random(), kcompile_random.next_seed())
    set_random_seed(1234)
    second = (random.random(), np.random.rand(), kcompile_random.get_generator().random(), kcompile_random.next_seed())
    assert first == second
    set_random_seed(4321)
    assert kcompile_random.next_seed() != first[3]


def test_next_seed_range_and_type():
    set_random_seed(0)
    seeds = [kcompile_random.next_seed() for _ in range(100)]
    assert all(type(seed) is int and 0 <= seed < 2**32 for seed in seeds)
    assert len(set(seeds)) == 100


def test_generator_exists_without_seed(monkeypatch):
    monkeypatch.setattr(kcompile_random, "_generator", None)
    generator = kcompile_random.get_generator()
    assert isinstance(generator, np.random.Generator)
    assert kcompile_random.get_generator() is generator


def test_set_random_seed_accepts_numpy_integers():
    set_random_seed(np.int64(7))
    value = kcompile_random.next_seed()
    set_random_seed(7)
    assert kcompile_random.next_seed() == value


@pytest.mark.parametrize(
    "seed, error",
    [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError), (None, TypeError)],
)
def test_set_random_seed_rejects_invalid_seeds(seed, error):
    with pytest.raises(error, match="seed"):
        set_random_seed(seed)


def test_utils_exports():
    assert kcompile.utils.to_categorical is to_categorical
    assert kcompile.utils.set_random_seed is kcompile_random.set_random_seed


# --- keras.backend's utilities ---

def test_backend_settings_are_keras_defaults_and_epsilon_reaches_the_losses():
    from kcompile import backend, losses
    assert (backend.floatx(), backend.epsilon(), backend.image_data_format()) == \
        ("float32", 1e-7, "channels_last")
    y_true = np.array([[0.0, 1.0]], np.float32)
    y_pred = np.array([[1.0, 0.0]], np.float32)      # the true class has probability 0: clipped
    default = float(losses.CategoricalCrossentropy()(y_true, y_pred))
    assert default == pytest.approx(-np.log(1e-7), rel=1e-5)
    try:
        backend.set_epsilon(1e-3)
        assert float(losses.CategoricalCrossentropy()(y_true, y_pred)) == \
            pytest.approx(-np.log(1e-3), rel=1e-5)
    finally:
        backend.set_epsilon(1e-7)
    with pytest.raises(ValueError, match="float32 only"):
        backend.set_floatx("float16")
    with pytest.raises(ValueError, match="channels_last"):
        backend.set_image_data_format("channels_first")
    kcompile.utils.clear_session()   # as Keras's: callable, and the library still works afterwards
    assert backend.floatx() == "float32"


def test_sequence_is_keras_2s_name_of_pydataset():
    from kcompile import Sequential, layers

    class Batches(kcompile.utils.Sequence):      # a Keras 2 style subclass
        def __len__(self):
            return 3

        def __getitem__(self, index):
            x = np.full((4, 2), index, np.float32)
            return x, x.sum(axis=1, keepdims=True)

    assert kcompile.utils.Sequence is kcompile.utils.PyDataset
    model = Sequential([layers.Input((2,)), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    history = model.fit(Batches(), epochs=1, verbose=0)
    assert history.params["steps"] == 3


def test_set_epsilon_reaches_a_model_compiled_afterwards_on_every_target(tmp_path, monkeypatch):
    # A second, identical model must not reuse the first one's compiled programs (traced with the
    # old epsilon), in this process or from the disk cache.
    from kcompile import Sequential, backend, layers
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    x = np.array([[0.0]], np.float32)
    y = np.array([[1.0]], np.float32)

    def loss_for(target):
        model = Sequential([layers.Input((1,)), layers.Dense(1, activation="sigmoid")])
        model.compile(loss="binary_crossentropy", target=target)
        model.set_weights([np.array([[60.0]], np.float32), np.array([-30.0], np.float32)])
        return model.evaluate(x, y, verbose=0)   # p = sigmoid(-30) for y = 1: clipped to eps

    before = loss_for("llvm")
    assert before == pytest.approx(-np.log(1e-7), rel=1e-4)
    try:
        backend.set_epsilon(0.1)
        assert loss_for("reference") == pytest.approx(-np.log(0.1), rel=1e-4)
        assert loss_for("llvm") == pytest.approx(-np.log(0.1), rel=1e-4)
    finally:
        backend.set_epsilon(1e-7)


def test_normalize_over_no_axis_and_to_categorical_of_a_huge_label():
    """normalize(x, axis=None) divides by the norm of the whole array (numpy's, as Keras 3 takes
    it; it had raised numpy's TypeError), and a label past int64 is named as too large (its cast
    had wrapped it to a 'negative label')."""
    from kcompile.utils import normalize
    x = np.array([[3.0, 4.0], [0.0, 5.0]], np.float32)
    np.testing.assert_allclose(normalize(x, axis=None), x / np.linalg.norm(x, 2), rtol=1e-6)
    np.testing.assert_allclose(normalize(np.array([3.0, 4.0]), axis=None), [[0.6, 0.8]], rtol=1e-6)
    for labels in ([1e20], np.array([2 ** 63], np.uint64)):
        with pytest.raises(ValueError, match="too large for a class label"):
            to_categorical(labels)
