"""Tests for kcompile.datasets: the IDX reader, Fashion-MNIST from the system package, MNIST from user files."""

import gzip
import os
import struct

import numpy as np
import pytest

from kcompile.datasets import _idx, fashion_mnist, mnist

SYSTEM_DIRECTORY = fashion_mnist.DEFAULT_DIRECTORY
requires_system_files = pytest.mark.skipif(
    bool(_idx.missing_split_files(SYSTEM_DIRECTORY)),
    reason="install with `apt-get update && apt-get install -y dataset-fashion-mnist`",
)


def write_split_directory(directory, train_count=6, test_count=4, compress=True, rows=28, columns=28):
    """Writes a small MNIST-style dataset and returns its arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (train_count, rows, columns), dtype=np.uint8),
        "y_train": rng.integers(0, 10, train_count, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (test_count, rows, columns), dtype=np.uint8),
        "y_test": rng.integers(0, 10, test_count, dtype=np.uint8),
    }
    suffix = ".gz" if compress else ""
    for key, names in _idx.SPLIT_FILES.items():
        _idx.write_idx(os.path.join(directory, names[0] + suffix), arrays[key])
    return arrays


# --- the IDX reader ---


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / f"data-idx3{suffix}"
    _idx.write_idx(path, array)
    loaded = _idx.read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)
    loaded[0, 0, 0] = 1  # writable


def test_idx_header_is_big_endian(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", 1, -2))
    np.testing.assert_array_equal(_idx.read_idx(path), np.array([1, -2], dtype=np.int32))


def test_idx_empty_array(tmp_path):
    path = tmp_path / "empty"
    _idx.write_idx(path, np.zeros((0, 28, 28), np.uint8))
    assert _idx.read_idx(path).shape == (0, 28, 28)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "fewer than the 4-byte header"),
        (b"\x1f\x8b\x08\x01" + b"\x00" * 8, "magic number"),
        (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00", "unknown IDX data type code 0x07"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x01\x02", "truncated"),
        (bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + b"\x00" * 7, "truncated"),
        (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + b"\x01\x02\x03", "1 extra bytes"),
    ],
)
def test_idx_invalid_files_name_file_and_problem(tmp_path, data, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(ValueError) as error:
        _idx.read_idx(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_truncated_gzip_raises_value_error(tmp_path):
    path = tmp_path / "images-idx3-ubyte.gz"
    _idx.write_idx(path, np.ones((50, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="not a valid gzip file") as error:
        _idx.read_idx(path)
    assert str(path) in str(error.value)


def test_gzip_with_truncated_payload_raises_value_error(tmp_path):
    path = tmp_path / "images-idx3-ubyte.gz"
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10, 28, 28)
    with gzip.open(path, "wb") as file:
        file.write(header + b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        _idx.read_idx(path)


def test_uncompressed_gzip_data_without_gz_suffix_is_explained(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    _idx.write_idx(tmp_path / "real.gz", np.ones((2, 2), np.uint8))
    path.write_bytes((tmp_path / "real.gz").read_bytes())
    with pytest.raises(ValueError, match="'.gz' name"):
        _idx.read_idx(path)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype int64"):
        _idx.write_idx(tmp_path / "x", np.zeros(3, np.int64))


# --- Fashion-MNIST from the Debian package ---


@pytest.fixture(scope="module")
def system_fashion_mnist():
    return fashion_mnist.load_data()


@requires_system_files
def test_fashion_mnist_shapes_and_dtypes(system_fashion_mnist):
    (x_train, y_train), (x_test, y_test) = system_fashion_mnist
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8


@requires_system_files
def test_fashion_mnist_known_facts(system_fashion_mnist):
    (x_train, y_train), (x_test, y_test) = system_fashion_mnist
    assert y_train.min() == 0 and y_train.max() == 9
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    # The first training image is an ankle boot, as in Keras's copy.
    assert fashion_mnist.CLASS_NAMES[y_train[0]] == "Ankle boot"
    assert x_train.max() == 255 and x_train.min() == 0


@requires_system_files
def test_fashion_mnist_explicit_system_path_matches_default(system_fashion_mnist):
    (_, y_train), _ = fashion_mnist.load_data(path=SYSTEM_DIRECTORY)
    np.testing.assert_array_equal(y_train, system_fashion_mnist[0][1])


# --- Fashion-MNIST from other directories ---


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_path_round_trip(tmp_path, compress):
    arrays = write_split_directory(tmp_path, compress=compress)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(path=tmp_path)
    for key, loaded in zip(("x_train", "y_train", "x_test", "y_test"), (x_train, y_train, x_test, y_test)):
        np.testing.assert_array_equal(loaded, arrays[key])


def test_fashion_mnist_environment_variable(tmp_path, monkeypatch):
    arrays = write_split_directory(tmp_path)
    monkeypatch.setenv(fashion_mnist.ENVIRONMENT_VARIABLE, str(tmp_path))
    (_, y_train), _ = fashion_mnist.load_data()
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_fashion_mnist_missing_directory_message(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        fashion_mnist.load_data(path=tmp_path / "nowhere")
    message = str(error.value)
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in message
    assert "path=" in message and "KCOMPILE_FASHION_MNIST_DIR" in message
    assert "train-images-idx3-ubyte" in message


def test_fashion_mnist_missing_one_file_names_it(tmp_path):
    write_split_directory(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="missing: t10k-labels-idx1-ubyte"):
        fashion_mnist.load_data(path=tmp_path)


def test_mismatched_counts_are_reported(tmp_path):
    write_split_directory(tmp_path)
    _idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="6 images but .* 5 labels"):
        fashion_mnist.load_data(path=tmp_path)


def test_images_and_labels_swapped_are_reported(tmp_path):
    write_split_directory(tmp_path)
    _idx.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="should hold uint8 images"):
        fashion_mnist.load_data(path=tmp_path)


def test_corrupt_file_in_dataset_is_reported(tmp_path):
    write_split_directory(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated") as error:
        fashion_mnist.load_data(path=tmp_path)
    assert str(path) in str(error.value)


# --- MNIST from user files ---


def test_mnist_without_location_says_to_pass_path(monkeypatch):
    monkeypatch.delenv(mnist.ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(FileNotFoundError, match="path="):
        mnist.load_data()


def test_mnist_from_path_and_environment_variable(tmp_path, monkeypatch):
    arrays = write_split_directory(tmp_path)
    (x_train, _), (_, y_test) = mnist.load_data(path=str(tmp_path))
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    monkeypatch.setenv(mnist.ENVIRONMENT_VARIABLE, str(tmp_path))
    (_, y_train), _ = mnist.load_data()
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_mnist_accepts_dotted_file_names(tmp_path):
    arrays = write_split_directory(tmp_path, compress=False)
    for names in _idx.SPLIT_FILES.values():
        os.rename(tmp_path / names[0], tmp_path / names[1])
    (_, y_train), _ = mnist.load_data(path=tmp_path)
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_mnist_from_keras_npz(tmp_path):
    arrays = write_split_directory(tmp_path)
    np.savez(tmp_path / "mnist.npz", **arrays)
    (x_train, _), (_, y_test) = mnist.load_data(path=tmp_path / "mnist.npz")
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="KCOMPILE_MNIST_DIR"):
        mnist.load_data(path=tmp_path)


def test_datasets_package_exposes_submodules():
    import kcompile.datasets

    assert kcompile.datasets.fashion_mnist is fashion_mnist
    assert kcompile.datasets.mnist is mnist
