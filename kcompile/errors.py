"""Exceptions kcompile raises for bad user input.

Most problems raise the builtin exception Keras raises for them (ValueError for shapes and values,
TypeError for wrong argument types), so code written against Keras catches them unchanged.
"""


class CompileConfigError(ValueError):
    """A saved model whose compile arguments (loss, metrics, optimizer) cannot be rebuilt, most
    often custom objects the loading code was not given; loading with compile=False still works."""


class DataTypeError(TypeError, ValueError):
    """Training or prediction data whose dtype is not numeric (strings, Python objects, complex).

    NOTE: both a TypeError (what the problem is) and a ValueError (what Keras and TensorFlow raise when
    they fail to convert such an array), as numpy's AxisError is both a ValueError and an IndexError, so
    either `except` clause catches it.
    """


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type where Keras 3 raises a ValueError (set_random_seed('1')):
    both, so that code written against Keras (`except ValueError`) and code that expects the
    builtin meaning (`except TypeError`) catch it."""
