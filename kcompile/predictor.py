"""Loading an exported predictor: numpy and ctypes only (no llvmlite, no compiler, no kcompile IR).

    p = kcompile.load_predictor('fashion_predictor')
    probs = p.predict(x_test)

The directory holds `manifest.json`, the shared library and its C header (see `kcompile.export`).
The library's SHA-256 is checked against the manifest before it is loaded, so a corrupt or truncated
file is reported as such instead of being handed to the dynamic loader.

The dynamic loader keeps one copy of a library per path (and per file), so loading a directory that
was exported to again would give the library loaded first.  Each distinct library (by SHA-256) is
therefore loaded from a private copy, a temporary file that is removed as soon as it is mapped; a
predictor keeps running the library it loaded after the directory is overwritten, and loading an
unchanged directory again reuses the library already loaded.  The shapes in the manifest are checked
against those the library reports, and the output buffer is sized from the library.  A load that
meets an export to the same directory half done (an export puts the new library in place, then the
new manifest) waits for the new manifest and loads again.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import numbers
import os
import tempfile
import threading
import time

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "kcompile-predictor"
# the C ABI of the exported functions (model.h); a manifest without the field is from before it
ABI_VERSION = 1
# the functions' prefix of an export without a name (and of every export from before names)
DEFAULT_PREFIX = "kcompile"
_ERRORS = {1: "a null pointer was passed", 2: "the number of rows must be positive",
           3: "the predictor could not allocate its workspace",
           4: "an input value is outside what the model takes"}
ERR_INPUT = 4


def first_id_outside(ids: np.ndarray, below) -> tuple | None:
    """(position, value, shown, count) of the first of `ids` outside [0, below) (NaN included):
    its index tuple, the value, how a message shows it (2.0 as the id 2) and how many are outside;
    None when all are inside.  Shared with kcompile.layers.Embedding.check_ids."""
    bad = ~((ids >= 0) & (ids < below))
    if not bad.any():
        return None
    position = tuple(int(i) for i in np.argwhere(bad)[0])
    value = ids[position]
    shown = value.item()
    if isinstance(shown, float):  # (2.0 reads as the id 2; float32 1e30 as 1e+30)
        shown = int(shown) if shown.is_integer() and abs(shown) < 2 ** 53 else str(value)
    return position, value, shown, int(bad.sum())


class PredictorError(ValueError):
    """An exported predictor directory is missing, corrupt, or was called with bad input."""


def read_manifest(directory: str) -> dict:
    """The manifest of the export in `directory`, or a PredictorError saying why there is none."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise PredictorError(f"{directory!r} is not an exported predictor: no {MANIFEST} "
                             "(create one with model.export(directory))")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        # (RecursionError: JSON nested too deeply for the parser)
        raise PredictorError(f"{path} is corrupt: {type(e).__name__}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PredictorError(f"{path} is not a kcompile predictor manifest")
    return manifest


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# SHA-256 of a library -> its loaded handle.  The same bytes are the same code, so predictors of
# identical libraries share one mapping (the loader never unloads a ctypes library anyway).
_LOADED: dict = {}
_LOADED_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # NOTE: a child forked while another thread loaded a library (holding the lock for the copy)
    # would wait for that lock forever at its own first load: the thread holding it is not there.
    global _LOADED_LOCK
    _LOADED_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_TEMP_PREFIX = "kcompile-predictor-"


def _load_private_copy(library: str, digest: str, where: str) -> ctypes.CDLL:
    """dlopen a copy of `library` made in `where`, checked against `digest`; the copy is removed
    once mapped (the mapping stays valid), so the loader cannot hand back an older library that
    was loaded from the same path."""
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".so", dir=where)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as dst, open(library, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != digest:
            raise _ExportChanged(library)
        return ctypes.CDLL(tmp, mode=ctypes.RTLD_LOCAL)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _load_library(library: str, digest: str) -> ctypes.CDLL:
    with _LOADED_LOCK:
        lib = _LOADED.get(digest)
        if lib is not None:
            return lib
        # the temporary directory first; the export directory if that one cannot hold loadable
        # code (mounted noexec, full, not writable)
        errors = []
        for where in (tempfile.gettempdir(), os.path.dirname(os.path.abspath(library))):
            try:
                lib = _load_private_copy(library, digest, where)
                break
            except OSError as e:
                errors.append(f"{where}: {e}")
        else:
            raise PredictorError(f"cannot load {library}: " + "; ".join(errors))
        _LOADED[digest] = lib
        return lib


# LLVM's names of the x86 instruction-set features an export may be built with -> the flags Linux
# lists for them in /proc/cpuinfo.  A library that uses one the CPU lacks dies of SIGILL.
_X86_FLAGS = {"sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx",
              "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2",
              "popcnt": "popcnt", "lzcnt": "abm", "movbe": "movbe", "fma4": "fma4", "xop": "xop",
              "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw",
              "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni",
              "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16"}


def _host_cpu_flags():
    """The CPU flags Linux reports for this machine (a set), or None where it cannot tell (not
    Linux, not x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _missing_cpu_features(features) -> list:
    """The features of an export's `target_features` that this CPU lacks (those that can be
    checked: `_X86_FLAGS`)."""
    flags = _host_cpu_flags()
    if flags is None or not isinstance(features, str):
        return []
    wanted = [item.strip()[1:] for item in features.split(",") if item.strip().startswith("+")]
    return [name for name in wanted if name in _X86_FLAGS and _X86_FLAGS[name] not in flags]


def _shape(lib, library: str, which: str, prefix: str = DEFAULT_PREFIX) -> tuple:
    """The shape the library reports for its input or output (batch dimension None)."""
    try:
        rank_fn = getattr(lib, f"{prefix}_{which}_rank")
        shape_fn = getattr(lib, f"{prefix}_{which}_shape")
    except AttributeError:
        raise PredictorError(f"{library} does not report its {which} shape (not a kcompile "
                             "predictor, or from an older kcompile); export the model "
                             "again") from None
    rank_fn.argtypes, rank_fn.restype = [], ctypes.c_int
    shape_fn.argtypes, shape_fn.restype = [ctypes.c_void_p], None
    rank = rank_fn()
    if not 1 <= rank <= 64:
        raise PredictorError(f"{library} reports an {which} rank of {rank}")
    dims = (ctypes.c_int64 * rank)()
    shape_fn(ctypes.addressof(dims))
    shape = tuple(None if d < 0 else int(d) for d in dims)
    if shape[0] is not None or any(d is None or d <= 0 for d in shape[1:]):
        raise PredictorError(f"{library} reports an {which} shape {shape}: expected a batch "
                             "dimension followed by positive sizes")
    return shape


class _ExportChanged(PredictorError):
    """The library and the manifest read are from two exports: one to the same directory ran while
    the load read them (an export puts the new library in place, then the new manifest)."""

    def __init__(self, library: str):
        super().__init__(f"{library} changed while it was being loaded (an export to the same "
                         "directory is running?); load it again")


# How long a load whose library does not match its manifest waits for the manifest of an export
# that is putting both in place (seconds, polled), and how often a load starts over on finding one.
_EXPORT_WAIT = 1.0
_LOAD_ATTEMPTS = 5


def _export_in_progress(directory: str, manifest: dict) -> bool:
    """Does the manifest change within _EXPORT_WAIT (an export replacing the library and then the
    manifest), rather than stay as read (a library truly corrupt, or the export died between)?"""
    deadline = time.monotonic() + _EXPORT_WAIT
    while True:
        try:
            if read_manifest(directory) != manifest:
                return True
        except PredictorError:
            return True          # (the manifest is being replaced right now)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


class Predictor:
    """A compiled model loaded from an export directory; `predict` is thread-safe."""

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        for attempt in range(_LOAD_ATTEMPTS):
            try:
                self._load()
                return
            except _ExportChanged:
                # an export to the directory ran during the load: read it again, once it is whole
                if attempt == _LOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.02 * (attempt + 1))

    def _load(self) -> None:
        manifest = read_manifest(self.directory)
        path = os.path.join(self.directory, MANIFEST)
        try:
            self.input_shape = tuple(None if d is None else int(d) for d in manifest["input_shape"])
            self.output_shape = tuple(None if d is None else int(d) for d in manifest["output_shape"])
            abi = manifest.get("abi_version", ABI_VERSION)
            if abi != ABI_VERSION:
                raise ValueError(f"abi_version {abi!r}: this kcompile loads version {ABI_VERSION} "
                                 "(export the model again with this kcompile)")
            name = manifest["library"]
            if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"library {name!r} is not a file name in the export directory")
            library = os.path.join(self.directory, name)
            digest = manifest["library_sha256"]
            prefix = manifest.get("symbol_prefix", DEFAULT_PREFIX)
            self.ids_below = manifest.get("input_ids_below")
            if self.ids_below is not None and (isinstance(self.ids_below, bool) or not isinstance(
                    self.ids_below, int) or self.ids_below < 1):
                raise ValueError(f"input_ids_below {self.ids_below!r} is not a positive integer")
            if not isinstance(prefix, str) or not prefix.isidentifier() or not prefix.isascii():
                raise ValueError(f"symbol_prefix {prefix!r} is not a C identifier")
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            # (OverflowError: a size of 1e400, which JSON reads as infinity)
            raise PredictorError(f"{path} is missing or has a bad field: {e}") from None
        self.manifest = manifest
        if not os.path.isfile(library):
            raise PredictorError(f"the library {library} named by {path} is missing")
        if _sha256(library) != digest:
            if _export_in_progress(self.directory, manifest):
                raise _ExportChanged(library)
            raise PredictorError(f"{library} is corrupt or truncated: its SHA-256 does not match the "
                                 "manifest; export the model again")
        missing = _missing_cpu_features(manifest.get("target_features"))
        if missing:
            # before the loader maps it: its code would die of SIGILL at the first predict
            raise PredictorError(
                f"{library} was built for cpu {manifest.get('target_cpu')!r} and uses "
                f"{', '.join(missing)}, which this CPU does not have; export the model on this "
                "machine, or for a CPU every machine has (model.export(directory, cpu='x86-64') "
                "or cpu='haswell' for AVX2)")
        lib = _load_library(library, digest)
        try:
            self._predict = getattr(lib, f"{prefix}_predict")
            version = getattr(lib, f"{prefix}_version")
        except AttributeError as e:
            raise PredictorError(f"cannot load {library}: {e}") from None
        self._predict.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
        self._predict.restype = ctypes.c_int
        version.argtypes, version.restype = [], ctypes.c_char_p
        self.version = version().decode()
        self._lib = lib
        # the library's own shapes are the truth (the output buffer is sized from them); a
        # manifest that disagrees belongs to another export
        for which, claimed in (("input", self.input_shape), ("output", self.output_shape)):
            native = _shape(lib, library, which, prefix)
            if native != claimed:
                raise PredictorError(
                    f"{path} says {which}s {claimed} but the library {library} "
                    f"{'takes' if which == 'input' else 'computes'} {native}: the directory was "
                    "edited or mixed from two exports; export again")
            setattr(self, f"{which}_shape", native)
        for which in ("input", "output"):
            dtype = manifest.get(f"{which}_dtype", "float32")
            if dtype != "float32":
                raise PredictorError(f"{path} says {which}s are {dtype} but the library "
                                     f"{library} {'takes' if which == 'input' else 'computes'} "
                                     "float32: the directory was edited; export again")

    def predict(self, x, batch_size=None) -> np.ndarray:
        """Outputs for every row of `x` (shape (rows, *input_shape[1:])); with `batch_size`, the
        library is called on that many rows at a time (the same values: rows are independent)."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
                batch_size, numbers.Integral) or batch_size <= 0):
            raise PredictorError(f"batch_size must be a positive integer or None (all rows in one "
                                 f"call); got batch_size={batch_size!r}")
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as error:    # (a ragged list)
            raise PredictorError(f"predictor input must be an array of shape (rows, "
                                 f"{', '.join(map(str, self.input_shape[1:]))}); numpy could not "
                                 f"make one of it: {error}") from None
        if x.dtype.kind not in "fiub":
            raise PredictorError(f"predictor input must be numeric, got dtype {x.dtype}")
        expected = self.input_shape[1:]
        if x.shape[1:] != expected or x.ndim != len(self.input_shape):
            raise PredictorError(f"predictor input must have shape (rows, "
                                 f"{', '.join(map(str, expected))}), got {x.shape}")
        given, x = x, np.ascontiguousarray(x, dtype=np.float32)
        if self.ids_below is not None and x is not given and given.size:
            # ids are checked as given, as model.predict checks them: float32 would round
            # 9.99999999 up to a table of 10 rows' 10 and -1e-50 to -0.0
            found = first_id_outside(given, self.ids_below)
            if found is not None:
                raise PredictorError(self._id_message(found, given))
            # (an id the rounding lifted to the table's size is its last row, as in the model)
            np.minimum(x, np.nextafter(np.float32(self.ids_below), np.float32(0)), out=x)
        rows = x.shape[0]
        out = np.empty((rows,) + self.output_shape[1:], dtype=np.float32)
        if rows == 0:
            return out
        step = rows if batch_size is None else int(batch_size)
        x_row, out_row = x[0].nbytes, out[0].nbytes
        for start in range(0, rows, step):
            count = min(step, rows - start)
            status = self._predict(x.ctypes.data + start * x_row, count,
                                   out.ctypes.data + start * out_row)
            if status == ERR_INPUT and self.ids_below is not None:
                raise PredictorError(self._bad_id(x, given))
            if status != 0:
                raise PredictorError(f"the predictor failed: {_ERRORS.get(status, f'code {status}')}")
        return out

    def _bad_id(self, x: np.ndarray, given: np.ndarray) -> str:
        """What the library refused (ERR_INPUT): the first value of `x` (the float32 copy of the
        input `given`) outside [0, ids_below), shown as given (2**24 + 1, not its float32 2**24)."""
        # (the library compares in float32: an id table past 2**24 rows rounds its bound)
        found = first_id_outside(x, np.float32(self.ids_below))
        if found is None:
            return f"the predictor takes ids in [0, {self.ids_below}); the input holds another"
        return self._id_message(found, given)

    def _id_message(self, found: tuple, given: np.ndarray) -> str:
        """The message for an id outside the table (first_id_outside's `found`), shown as given."""
        position, _, shown, count = found
        if given.dtype.kind in "iu":
            shown = int(given[position])
        more = count - 1
        return (f"the predictor takes ids in [0, {self.ids_below}) (its Embedding's table), but the "
                f"input holds the id {shown} at position [{', '.join(map(str, position))}] (sample "
                f"{position[0]}){f' (and {more} more)' if more else ''}: map the ids into range")

    __call__ = predict

    def __reduce__(self):
        """pickle and copy: as the export's directory (absolute) and its library's SHA-256, so that
        a process pool's worker (multiprocessing, Ray, Dask) loads the export itself, and refuses
        it if the directory now holds another."""
        return _reload, (os.path.abspath(self.directory), self.manifest["library_sha256"])

    def __repr__(self) -> str:
        return (f"Predictor({self.directory!r}, input {self.input_shape}, "
                f"output {self.output_shape}, kcompile {self.version})")


def load_predictor(directory) -> Predictor:
    return Predictor(directory)


def _reload(directory: str, digest: str) -> Predictor:
    """A pickled Predictor: its export loaded again, if it is still the same library."""
    predictor = Predictor(directory)
    if predictor.manifest["library_sha256"] != digest:
        raise PredictorError(f"the export in {directory} has changed since this predictor was "
                             "pickled (its library's SHA-256 differs): load_predictor it again "
                             "where it is used")
    return predictor
