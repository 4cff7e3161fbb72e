"""Fashion-MNIST: 70,000 28x28 grayscale images of 10 kinds of clothing, read from local IDX files.

Labels: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag,
9 Ankle boot.

kcompile never downloads data. The files come from the Debian package ``dataset-fashion-mnist`` (installed
in ``/usr/share/datasets/fashion-mnist/``) or from any directory holding the four IDX files.
"""

import os

from kcompile.datasets import _idx

ENVIRONMENT_VARIABLE = "KCOMPILE_FASHION_MNIST_DIR"
DEFAULT_DIRECTORY = "/usr/share/datasets/fashion-mnist/"
DEBIAN_PACKAGE = "dataset-fashion-mnist"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _resolve_directory(path):
    """Returns the directory to read and a description of where that choice came from."""
    if path is not None:
        return os.fspath(path), "the path= argument"
    from_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    if from_environment:
        return from_environment, f"the {ENVIRONMENT_VARIABLE} environment variable"
    return DEFAULT_DIRECTORY, "the default system directory"


def load_data(path=None):
    """Loads the Fashion-MNIST dataset, like ``keras.datasets.fashion_mnist.load_data()``.

    Args:
        path: Directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally gzip-compressed with a
            ``.gz`` suffix). Defaults to the ``KCOMPILE_FASHION_MNIST_DIR`` environment variable, then to
            ``/usr/share/datasets/fashion-mnist/``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: uint8 arrays of shapes ``(60000, 28, 28)``, ``(60000,)``,
        ``(10000, 28, 28)`` and ``(10000,)``.

    Raises:
        FileNotFoundError: If any of the four files is missing; the message says how to install them.
        ValueError: If a file is truncated or corrupt.
    """
    directory, source = _resolve_directory(path)
    missing = _idx.missing_split_files(directory)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {directory} (from {source}); missing: "
            f"{', '.join(name + '[.gz]' for name in missing)}. Install them with "
            f"`apt-get update && apt-get install -y {DEBIAN_PACKAGE}` (files go to {DEFAULT_DIRECTORY}), or pass "
            f"load_data(path=...) or set {ENVIRONMENT_VARIABLE} to a directory holding the four IDX files. "
            f"kcompile never downloads datasets."
        )
    return _idx.load_split_directory(directory)
