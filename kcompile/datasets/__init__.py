"""Small datasets read from local files; kcompile never downloads anything."""

from kcompile.datasets import fashion_mnist
from kcompile.datasets import mnist

__all__ = ["fashion_mnist", "mnist"]


# Keras datasets kcompile has no loader for (they would be downloads): `from kcompile.datasets
# import cifar10` works, and its load_data() says so.
_KERAS_ONLY = ("boston_housing", "california_housing", "cifar10", "cifar100", "imdb", "reuters")


class _Unavailable:
    """A Keras dataset module kcompile has no loader for."""

    def __init__(self, name: str):
        self.__name__ = f"kcompile.datasets.{name}"
        self._name = name

    def load_data(self, *args, **kwargs):
        raise NotImplementedError(
            f"kcompile.datasets.{self._name}.load_data: kcompile reads datasets from local files "
            "only (it never downloads) and has loaders for fashion_mnist and mnist; load the "
            f"{self._name} data with numpy and pass the arrays to fit")

    def __repr__(self):
        return f"<unavailable dataset {self.__name__}>"


def __getattr__(name):
    if name in _KERAS_ONLY:
        return _Unavailable(name)
    raise AttributeError(f"module 'kcompile.datasets' has no attribute {name!r}")
