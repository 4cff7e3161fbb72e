"""Loading an exported predictor: numpy and ctypes only (no llvmlite, no compiler, no kcompile IR).

    p = kcompile.load_predictor('fashion_predictor')
    probs = p.predict(x_test)

The directory holds `manifest.json`, the shared library and its C header (see `kcompile.export`).
The library's SHA-256 is checked against the manifest before it is loaded, so a corrupt or truncated
file is reported as such instead of being handed to the dynamic loader.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "kcompile-predictor"
_ERRORS = {1: "a null pointer was passed", 2: "the number of rows must be positive",
           3: "the predictor could not allocate its workspace"}


class PredictorError(ValueError):
    """An exported predictor directory is missing, corrupt, or was called with bad input."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """A compiled model loaded from an export directory; `predict` is thread-safe."""

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        path = os.path.join(self.directory, MANIFEST)
        if not os.path.isfile(path):
            raise PredictorError(f"{self.directory!r} is not an exported predictor: no {MANIFEST} "
                                 "(create one with model.export(directory))")
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise PredictorError(f"{path} is corrupt: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise PredictorError(f"{path} is not a kcompile predictor manifest")
        try:
            self.input_shape = tuple(None if d is None else int(d) for d in manifest["input_shape"])
            self.output_shape = tuple(None if d is None else int(d) for d in manifest["output_shape"])
            library = os.path.join(self.directory, manifest["library"])
            digest = manifest["library_sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise PredictorError(f"{path} is missing or has a bad field: {e}") from None
        self.manifest = manifest
        if not os.path.isfile(library):
            raise PredictorError(f"the library {library} named by {path} is missing")
        if _sha256(library) != digest:
            raise PredictorError(f"{library} is corrupt or truncated: its SHA-256 does not match the "
                                 "manifest; export the model again")
        try:
            lib = ctypes.CDLL(os.path.abspath(library))
            self._predict = lib.kcompile_predict
        except (OSError, AttributeError) as e:
            raise PredictorError(f"cannot load {library}: {e}") from None
        self._predict.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self._predict.restype = ctypes.c_int
        lib.kcompile_version.restype = ctypes.c_char_p
        self.version = lib.kcompile_version().decode()
        self._lib = lib
        rank = lib.kcompile_input_rank()
        dims = (ctypes.c_int64 * rank)()
        lib.kcompile_input_shape(dims)
        native = tuple(None if d < 0 else d for d in dims)
        if native != self.input_shape:
            raise PredictorError(f"{library} takes inputs of shape {native} but the manifest says "
                                 f"{self.input_shape}")

    def predict(self, x, batch_size=None) -> np.ndarray:
        """Outputs for every row of `x` (shape (rows, *input_shape[1:]))."""
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise PredictorError(f"predictor input must be numeric, got dtype {x.dtype}")
        expected = self.input_shape[1:]
        if x.shape[1:] != expected or x.ndim != len(self.input_shape):
            raise PredictorError(f"predictor input must have shape (rows, "
                                 f"{', '.join(map(str, expected))}), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows = x.shape[0]
        out = np.empty((rows,) + self.output_shape[1:], dtype=np.float32)
        if rows == 0:
            return out
        status = self._predict(x.ctypes.data, rows, out.ctypes.data)
        if status != 0:
            raise PredictorError(f"the predictor failed: {_ERRORS.get(status, f'code {status}')}")
        return out

    __call__ = predict

    def __repr__(self) -> str:
        return (f"Predictor({self.directory!r}, input {self.input_shape}, "
                f"output {self.output_shape}, kcompile {self.version})")


def load_predictor(directory) -> Predictor:
    return Predictor(directory)
