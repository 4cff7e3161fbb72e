"""Small datasets read from local files; kcompile never downloads anything."""

from kcompile.datasets import fashion_mnist
from kcompile.datasets import mnist

__all__ = ["fashion_mnist", "mnist"]
