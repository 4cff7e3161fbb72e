"""MNIST handwritten digits, read from the user's own local files.

kcompile never downloads data and no system package provides MNIST here, so the files must be given:
either a directory with the four IDX files as published (``train-images-idx3-ubyte.gz`` ...), or the
``mnist.npz`` archive that ``keras.datasets.mnist.load_data()`` caches in ``~/.keras/datasets/``.
"""

import os

import numpy as np

from kcompile.datasets import _idx

ENVIRONMENT_VARIABLE = "KCOMPILE_MNIST_DIR"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(path):
    """Loads a Keras-style ``mnist.npz`` holding x_train, y_train, x_test and y_test."""
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks the arrays {', '.join(missing)}; a Keras-style mnist.npz holds "
                f"{', '.join(_NPZ_KEYS)}."
            )
        x_train, y_train, x_test, y_test = (archive[key] for key in _NPZ_KEYS)
    return (x_train, y_train), (x_test, y_test)


def load_data(path=None):
    """Loads MNIST from local files, returning arrays shaped like ``keras.datasets.mnist.load_data()``.

    Args:
        path: Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), or the path
            of a Keras ``mnist.npz`` file. Defaults to the ``KCOMPILE_MNIST_DIR`` environment variable.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: uint8 arrays of shapes ``(60000, 28, 28)``, ``(60000,)``,
        ``(10000, 28, 28)`` and ``(10000,)`` for the standard files.

    Raises:
        FileNotFoundError: If no location is given or files are missing.
        ValueError: If a file is truncated or corrupt.
    """
    if path is not None:
        location, source = os.fspath(path), "the path= argument"
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        location, source = os.environ[ENVIRONMENT_VARIABLE], f"the {ENVIRONMENT_VARIABLE} environment variable"
    else:
        raise FileNotFoundError(
            "kcompile has no copy of MNIST and never downloads datasets. Pass mnist.load_data(path=...) with a "
            "directory holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            f"t10k-labels-idx1-ubyte (optionally .gz) or a Keras mnist.npz file, or set {ENVIRONMENT_VARIABLE}. "
            "For a ready-made dataset of the same shapes, use kcompile.datasets.fashion_mnist."
        )
    if os.path.isfile(location) and location.endswith(".npz"):
        return _load_npz(location)
    missing = _idx.missing_split_files(location)
    if missing:
        raise FileNotFoundError(
            f"MNIST files not found in {location} (from {source}); missing: "
            f"{', '.join(name + '[.gz]' for name in missing)}. Pass mnist.load_data(path=...) or set "
            f"{ENVIRONMENT_VARIABLE} to a directory holding the four IDX files, or to a Keras mnist.npz file."
        )
    return _idx.load_split_directory(location)
