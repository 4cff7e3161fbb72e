"""Global settings, as ``keras.config`` (the same functions as kcompile.backend's)."""
from kcompile.backend import (backend, epsilon, floatx, image_data_format, set_epsilon,  # noqa: F401
                              set_floatx, set_image_data_format)

__all__ = ["backend", "epsilon", "floatx", "image_data_format", "set_epsilon", "set_floatx",
           "set_image_data_format"]
