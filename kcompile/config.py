"""Global settings, as ``keras.config`` (kcompile.backend's settings, and the registry's
enable_unsafe_deserialization)."""
from kcompile.backend import (backend, epsilon, floatx, image_data_format, set_epsilon,  # noqa: F401
                              set_floatx, set_image_data_format)
from kcompile.registry import enable_unsafe_deserialization  # noqa: F401

__all__ = ["backend", "enable_unsafe_deserialization", "epsilon", "floatx", "image_data_format",
           "set_epsilon", "set_floatx", "set_image_data_format"]
