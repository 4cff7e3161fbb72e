"""A complete description of what a model's traced graphs are made from, without tracing them.

A warm process looks its compiled train/evaluate/predict module up under this description
(`Trainer._program`), so it neither traces nor runs a pass.  A description must therefore determine
the traced graphs exactly; where that cannot be vouched for, there is none and the process traces
(and still finds the machine code by the traced graphs' text, codegen.compiler.program_description).

`describe(value)` gives a JSON value for plain data (numbers, strings, containers, numpy arrays by
digest) and for objects and functions of kcompile's own code (their class or qualified name plus
their attributes, closures and defaults, recursively; kcompile's source is in the key through
`source_fingerprint`).  A weight `Variable` is described by its path, shape, dtype and trainable flag,
not its value: weights are graph inputs.  Anything else (a user's function, layer or loss class,
an object of another library) raises `Undescribable`: its code is not part of the key, so a change to
it could not be seen.
"""
from __future__ import annotations

import hashlib
import pathlib
import types

import numpy as np

from kcompile.layers.layer import Variable

__all__ = ["describe", "Undescribable", "source_fingerprint"]

# Attributes that point back at the model (a layer's owner) or hold results, not inputs, of tracing.
_SKIPPED = frozenset({"_models", "_programs", "history", "stop_training", "_owner", "_call_lock",
                      "_state_lock"})


class Undescribable(Exception):
    """The value involves code outside kcompile (or a structure this module does not know)."""


def _own(module: str | None) -> bool:
    return bool(module) and (module == "kcompile" or module.startswith("kcompile."))


def describe(value, _path: tuple = ()):
    """A JSON value that is equal for two values exactly when they trace alike (see the module)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if type(value) in (int, float):
        return [type(value).__name__, repr(value)]
    if isinstance(value, np.generic):
        return ["np", value.dtype.str, repr(value.item())]
    if isinstance(value, np.ndarray):
        h = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ["array", value.dtype.str, list(value.shape), h]
    if id(value) in _path:
        raise Undescribable("a cycle")
    path = _path + (id(value),)
    if isinstance(value, (list, tuple)):
        return [type(value).__name__] + [describe(v, path) for v in value]
    if isinstance(value, (set, frozenset)):
        return ["set"] + sorted((describe(v, path) for v in value), key=repr)
    if isinstance(value, dict):
        items = [[describe(k, path), describe(v, path)] for k, v in value.items()]
        return ["dict"] + sorted(items, key=repr)
    if isinstance(value, Variable):
        return ["variable", value.path, list(value.shape), value.dtype, value.trainable]
    if isinstance(value, type):
        if not _own(value.__module__):
            raise Undescribable(f"class {value.__module__}.{value.__qualname__}")
        return ["class", value.__module__, value.__qualname__]
    if isinstance(value, types.FunctionType):
        if not _own(value.__module__):
            raise Undescribable(f"function {value.__module__}.{value.__qualname__}")
        cells = [describe(c.cell_contents, path) for c in (value.__closure__ or ())]
        return ["function", value.__module__, value.__qualname__, cells,
                describe(value.__defaults__, path), describe(value.__kwdefaults__, path)]
    if isinstance(value, types.MethodType):
        return ["method", describe(value.__func__, path), describe(value.__self__, path)]
    cls = type(value)
    if not _own(cls.__module__):
        raise Undescribable(f"object of {cls.__module__}.{cls.__qualname__}")
    try:
        attributes = vars(value)
    except TypeError:
        attributes = {name: getattr(value, name) for name in getattr(cls, "__slots__", ())
                      if hasattr(value, name)}
    return ["object", cls.__module__, cls.__qualname__,
            sorted(([name, describe(v, path)] for name, v in attributes.items() if name not in _SKIPPED),
                   key=lambda item: item[0])]


def source_fingerprint() -> str:
    """A hash of kcompile's own Python source (every module under kcompile/)."""
    from codegen.compiler import source_fingerprint as fingerprint
    return fingerprint(pathlib.Path(__file__).resolve().parent)
