"""Saving and loading models: `model.save` / `load_model` and `model.save_weights` / `load_weights`.

A model file (`model.save('model.keras')`) is a zip archive, as Keras 3's `.keras` format, holding:

    metadata.json   {"format": "kcompile.model", "format_version": 1, "kcompile_version": ...,
                     "date_saved": ...}
    config.json     {"class_name": "Sequential", "config": model.get_config() (every layer as
                     {"class_name": ..., "config": ...}), "build_config": {"input_shape": ...},
                     "compile_config": {"optimizer": {"class_name": ..., "config": ...}, "loss": ...,
                                        "metrics": [...], "target": ...} or null}
    weights.npz     every model weight, keyed by its path 'layer/weight' (np.savez)
    optimizer.npz   'optimizer/iterations', 'optimizer/learning_rate', every slot
                    ('dense/kernel/m', ...) and an optimizer's own scalars ('optimizer/u_product'
                    of Nadam): what the train step reads, so training resumes exactly

A weights file (`model.save_weights('model.weights.npz')`) is the weights.npz member on its own.
Keras 3 programs name their weights files `model.weights.h5`; kcompile takes that name too (in
save_weights, load_weights and ModelCheckpoint(save_weights_only=True)) but writes the same .npz
file under it: it is kcompile's format, not HDF5, so only kcompile reads it, and kcompile cannot
read an HDF5 file that Keras wrote (loading one is an error that says so).

Design notes:

- No pickle anywhere: JSON and numeric .npz arrays, read with `allow_pickle=False`, so loading an
  untrusted file cannot run code.  Functions (a custom loss, a custom activation) are saved by name
  and found again in `custom_objects=`.
- Writes are atomic: the file is written under a temporary name in the same directory, fsynced, and
  moved over `filepath` with `os.replace`, so a failure mid-save leaves the previous file intact.
- Loads validate before they mutate: a bad file raises a ValueError naming the file and the problem,
  and `load_weights` checks every name and shape before it writes a single weight.
- The file holds no random state.  kcompile draws shuffling orders and Dropout seeds from its global
  generator (`kcompile.utils.set_random_seed`), and Keras does not save that generator either; to
  resume a run exactly, seed it the same way in both runs (e.g. at every epoch's start).
  `load_model` itself draws nothing from the generator: the initial weights it draws while
  rebuilding the layers are overwritten at once, so it puts the generator back as it found it.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import io
import json
import math
import os
import stat
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

import kcompile
from kcompile.errors import CompileConfigError
from kcompile import losses, metrics as metrics_module, optimizers, registry, schedules
from kcompile.registry import (CustomObjectScope, custom_object_scope, get_custom_objects,  # noqa: F401
                               get_registered_name, get_registered_object, register_keras_serializable)
from kcompile.layers.layer import format_shape
from kcompile.utils.random import get_generator

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "load_model", "load_weights", "save_model", "save_weights",
           "CustomObjectScope", "custom_object_scope", "get_custom_objects", "get_registered_name",
           "get_registered_object", "register_keras_serializable", "serialize_keras_object",
           "deserialize_keras_object"]

FORMAT_NAME = "kcompile.model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".keras"
WEIGHTS_SUFFIX = ".weights.npz"
# Keras 3's weights suffix, accepted as a name only: the file is kcompile's .npz (see above).
KERAS_WEIGHTS_SUFFIX = ".weights.h5"
WEIGHTS_SUFFIXES = (WEIGHTS_SUFFIX, KERAS_WEIGHTS_SUFFIX)
# The signature HDF5 files begin with (at offset 0, or 512, 1024, ... after a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

METADATA = "metadata.json"
CONFIG = "config.json"
WEIGHTS = "weights.npz"
OPTIMIZER = "optimizer.npz"

# What parsing a damaged zip or .npz raises.  Files are read into memory first, so an OSError here
# (a seek to a nonsense offset) is the file's fault, not the disk's; RuntimeError is zipfile's
# "encrypted member" and NotImplementedError its "unknown compression method".
_FORMAT_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, KeyError,
                  OSError, RuntimeError, NotImplementedError)


# ----------------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------------

def _path(filepath) -> str:
    if hasattr(filepath, "write") or hasattr(filepath, "read"):
        raise TypeError("kcompile saves to and loads from file paths; pass a path such as "
                        f"'model.keras', not a file object ({type(filepath).__name__})")
    return os.fsdecode(os.fspath(filepath))


def _check_model_suffix(filepath: str, action: str):
    if filepath.endswith(MODEL_SUFFIX):
        return
    if filepath.endswith(WEIGHTS_SUFFIXES):
        hint = (" This is a weights file name: use model.save_weights / model.load_weights for it."
                if action == "saving" else
                " This is a weights file: rebuild the model in code and call "
                "model.load_weights(filepath).")
    elif filepath.endswith((".h5", ".hdf5")):
        hint = (" The legacy HDF5 format is not supported: it needs h5py, which kcompile does not "
                "depend on.")
    else:
        hint = ""
    if action == "saving":
        raise ValueError("Invalid filepath extension for saving. Please add a `.keras` extension "
                         "(kcompile's model format: a zip of a JSON config and .npz arrays, like "
                         f"Keras 3's native format).{hint} Received: filepath={filepath}")
    raise ValueError(f"File format not supported: filepath={filepath}. kcompile loads `.keras` files "
                     f"written by model.save().{hint}")


def _check_weights_suffix(filepath: str, action: str, allow_model_file=False):
    if filepath.endswith(WEIGHTS_SUFFIXES) or (allow_model_file and filepath.endswith(MODEL_SUFFIX)):
        return
    if filepath.endswith((".h5", ".hdf5")):
        raise ValueError(f"kcompile cannot {action} HDF5 weight files: HDF5 needs h5py, which kcompile "
                         f"does not depend on. Use the `{WEIGHTS_SUFFIX}` suffix (or Keras 3's "
                         f"`{KERAS_WEIGHTS_SUFFIX}`, under which kcompile writes the same .npz "
                         f"file). Received: filepath={filepath}")
    also = " (or a `.keras` model file)" if allow_model_file else ""
    raise ValueError(f"The filename must end in `{WEIGHTS_SUFFIX}` or `{KERAS_WEIGHTS_SUFFIX}`{also}. "
                     f"Received: filepath={filepath}")


def _is_hdf5(data: bytes) -> bool:
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= len(data):
        if data[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------

def _atomic_write(filepath: str, write, overwrite: bool):
    """Call `write(binary_file)` on a temporary file next to `filepath`, fsync it, then move it over
    `filepath`; on any failure the temporary file is removed and an existing `filepath` is untouched.

    A symbolic link is saved through: its target is replaced, and the link stays.  A file replaced
    keeps its permissions (a private 0600 model stays private); a new one gets the umask's."""
    if os.path.isdir(filepath):
        raise IsADirectoryError(f"Cannot save to {filepath}: it is an existing directory; pass a file "
                                "path.")
    if not overwrite and os.path.lexists(filepath):
        # NOTE: Keras asks on the terminal; a library call that blocks on input() is worse.
        raise FileExistsError(f"{filepath} already exists and overwrite=False; pass overwrite=True to "
                              "replace it.")
    target = os.path.realpath(filepath)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        parent = directory
        while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise NotADirectoryError(f"Cannot save to {filepath}: {parent} is a file, not a directory; "
                                     "pass a path in a directory.")
        raise FileNotFoundError(f"Cannot save to {filepath}: the directory {directory} does not exist; "
                                "create it first (os.makedirs).")
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = None
    # (a short name: the final name may be as long as the file system allows)
    temporary = os.path.join(directory, f".kcompile-{uuid.uuid4().hex[:16]}.tmp")
    try:
        # os.open with 0o666 (not mkstemp's 0o600): the saved file gets the user's umask, as open()
        # gives.  Inside the try: an interrupt just after it must not leave the empty file behind.
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as error:
            raise type(error)(error.errno, f"Cannot save to {filepath}: cannot create a file in "
                              f"{directory} ({error.strerror}). A save writes a new file next to the "
                              "old one and renames it over it, so that an interrupted save loses "
                              "nothing: the directory must be writable") from None
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        try:
            os.replace(temporary, target)
        except OSError as error:
            # (the rename is what names the temporary file: "File name too long: '.kcompile-...tmp'
            # -> ..." would blame a file the user never named)
            raise type(error)(error.errno, f"Cannot save to {filepath}: {error.strerror}; nothing "
                                           "was written there (an existing file is unchanged)") \
                from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str):
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _json_bytes(value) -> bytes:
    def default(item):
        if isinstance(item, np.generic):
            return item.item()
        raise TypeError(f"a config value of type {type(item).__name__} ({item!r}) cannot be written to "
                        "JSON; get_config() must return plain numbers, strings, lists and dicts")
    return json.dumps(value, indent=2, default=default).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

def _weight_arrays(model) -> dict:
    arrays = {}
    for variable in model.weights:
        if variable.path in arrays:
            raise ValueError(f"Cannot save model {model.name!r}: two weights are named "
                             f"{variable.path!r}; give the layers distinct names.")
        arrays[variable.path] = variable.buffer
    return arrays


def _optimizer_arrays(optimizer) -> dict:
    # The train step's own input names (kcompile.optimizers), so the file reads like the graph.
    return dict(optimizer.state())


def _function_name(function, kind: str) -> str:
    name = getattr(function, "__name__", None)
    if not name or name == "<lambda>":
        raise ValueError(f"Cannot save the {kind} {function!r}: functions are saved by name (no pickle), "
                         "and it has none. Define it with `def` and pass it in "
                         "custom_objects={name: function} when loading.")
    return name


def _function_entry(function, kind: str, module):
    """A loss or metric function as a compile config names it: its name, or for a function of the
    user's own named like one of `module`'s (`def mse`), registry.own_function_config."""
    name = _function_name(function, kind)
    builtin = module._FUNCTIONS.get(name, module._CLASSES.get(name))
    if builtin is not None and builtin is not function:
        return registry.own_function_config(function, name)
    return name


def _serialize_loss(loss):
    if loss is None or isinstance(loss, str):
        return loss
    if isinstance(loss, losses.Loss):
        return {"class_name": type(loss).__name__, "config": loss.get_config()}
    return _function_entry(loss, "loss", losses)


def _serialize_metric(metric):
    if isinstance(metric, str):
        return metric
    if isinstance(metric, type) and issubclass(metric, metrics_module.Metric):
        metric = metric()
    if isinstance(metric, metrics_module.Metric):
        return {"class_name": type(metric).__name__, "config": metric.get_config()}
    return _function_entry(metric, "metric", metrics_module)


def _compile_config(model) -> dict | None:
    if not model.compiled:
        return None
    return {
        "optimizer": optimizers.serialize(model.optimizer),
        # (the name as given, as Keras saves it; otherwise what it resolved to: a class or a
        # per-output spelling of the one loss is saved as that loss)
        "loss": _serialize_loss(model.loss if isinstance(model.loss, str) else model._loss),
        # NOTE: the identifiers as compile() received them (Trainer keeps them), so a reloaded model
        # logs its metrics under the same names.
        "metrics": [_serialize_metric(m) for m in model._metric_identifiers],
        "weighted_metrics": [_serialize_metric(m) for m in model._weighted_metric_identifiers],
        "loss_weights": model.loss_weight,
        "target": model._compiled_target,
        "run_eagerly": model.run_eagerly,
        "steps_per_execution": model.steps_per_execution,
    }


def _model_config(model) -> dict:
    input_shape = model._known_input_shape() if model.built else None
    return {
        "class_name": type(model).__name__,
        "config": model.get_config(),
        "build_config": {"input_shape": list(input_shape)} if input_shape is not None else None,
        "compile_config": _compile_config(model),
    }


def _metadata() -> dict:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "kcompile_version": kcompile.__version__,
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def save_model(model, filepath, overwrite=True, zipped=None, include_optimizer=True, **kwargs):
    """Save `model` to a `.keras` file: its config, compile arguments, weights and optimizer state.

    Args:
        model: a kcompile model.
        filepath: path ending in `.keras`.
        overwrite: replace an existing file (False raises FileExistsError).
        zipped: accepted for Keras compatibility; only the zipped format exists.
        include_optimizer: also save the optimizer's state (slots, iterations), so that `fit`
            after `load_model` continues exactly where this model stopped.
    """
    if kwargs:
        raise ValueError(f"The following argument(s) are not supported: {sorted(kwargs)}")
    if zipped is False:
        raise NotImplementedError("model.save(zipped=False) (an unzipped directory) is not supported; "
                                  "kcompile writes one `.keras` zip file")
    filepath = _path(filepath)
    _check_model_suffix(filepath, "saving")
    # Everything that can fail on the model's side is gathered before the file is opened.
    config = _model_config(model)
    weights = _weight_arrays(model)
    optimizer = None
    if include_optimizer and model.compiled and model.optimizer is not None:
        optimizer = _optimizer_arrays(model.optimizer)

    def write(file):
        with zipfile.ZipFile(file, "w") as archive:
            archive.writestr(METADATA, _json_bytes(_metadata()), zipfile.ZIP_DEFLATED)
            archive.writestr(CONFIG, _json_bytes(config), zipfile.ZIP_DEFLATED)
            # NOTE: deflated, though float arrays barely compress: an .npz is itself a zip, and stored
            # verbatim its end record would let a truncated file pass for a zip of .npy members.
            # Level 1 is the cheap end of deflate.
            archive.writestr(WEIGHTS, _npz_bytes(weights), zipfile.ZIP_DEFLATED, 1)
            if optimizer is not None:
                archive.writestr(OPTIMIZER, _npz_bytes(optimizer), zipfile.ZIP_DEFLATED, 1)

    _atomic_write(filepath, write, overwrite)


#: The prefix of the optimizer's arrays in a weights file (save_weights): 'optimizer:' then the
#: names of a model file's optimizer.npz ('optimizer/iterations', 'dense/kernel/m', ...).
WEIGHTS_OPTIMIZER_PREFIX = "optimizer:"
#: The optimizer's class name (UTF-8 bytes) and whether its learning rate is a schedule (0 or 1).
WEIGHTS_OPTIMIZER_CLASS = "optimizer::class"
WEIGHTS_OPTIMIZER_SCHEDULE = "optimizer::schedule"


def _optimizer_entries(arrays: dict, class_name: str, schedule: bool) -> dict:
    """An optimizer's state `arrays` as a weights file holds it: under WEIGHTS_OPTIMIZER_PREFIX,
    with its class name and whether its rate is a schedule (numeric arrays, as the rest)."""
    entries = {WEIGHTS_OPTIMIZER_PREFIX + key: array for key, array in arrays.items()}
    entries[WEIGHTS_OPTIMIZER_CLASS] = np.frombuffer(class_name.encode(), np.uint8)
    entries[WEIGHTS_OPTIMIZER_SCHEDULE] = np.int8(schedule)
    return entries


def _ensure_built(model, verb: str) -> None:
    """Build `model` from its known input shape, or refuse: an unbuilt model has no weights to
    save or to load into."""
    if model.built:
        return
    shape = model._known_input_shape()
    if shape is None:
        what = "to save" if verb == "save" else "to load into"
        raise ValueError(f"Model {model.name!r} is not built yet, so it has no weights {what}. "
                         "Give it an input shape (Input(shape=...) or input_shape= on the first "
                         "layer) or call model.build(input_shape) first.")
    model.build(shape)


def save_weights(model, filepath, overwrite=True):
    """Save every weight of `model`, keyed by its path 'layer/weight', to a `.weights.npz` file (or
    one named `.weights.h5`, as Keras 3 names them: the same .npz file, not HDF5), and, as Keras 3
    does, the state of a compiled model's optimizer (its slots and iterations, under
    'optimizer:...'), so that `load_weights` resumes training exactly."""
    filepath = _path(filepath)
    _check_weights_suffix(filepath, "save")
    # (before the file is touched: an unbuilt model's empty file would replace a good one)
    _ensure_built(model, "save")
    arrays = _weight_arrays(model)
    optimizer = getattr(model, "optimizer", None) if getattr(model, "compiled", False) else None
    if optimizer is not None:
        arrays.update(_optimizer_entries(_optimizer_arrays(optimizer), type(optimizer).__name__,
                                         optimizer.learning_rate_schedule is not None))
    _atomic_write(filepath, lambda file: np.savez(file, **arrays), overwrite)


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------

def _bad_file(filepath, problem, kind=ValueError) -> ValueError:
    # NOTE: raised `from None` where the cause is the zip/npz/JSON parser (its traceback says nothing
    # the message does not), and `from error` where it may be a custom class's from_config.
    return kind(f"Cannot load {filepath}: {problem}")


class MissingFileError(FileNotFoundError, ValueError):
    """A file to load does not exist.  Keras 3's load_model raises a ValueError there and its
    load_weights a FileNotFoundError: this is both, for code written against either."""


class NotAFileError(IsADirectoryError, ValueError):
    """A path to load names a directory.  Keras 3's load_model raises a ValueError there (it
    finds no `.keras` zip file): this is both that and the IsADirectoryError open() raises."""


class UnreadableFileError(PermissionError, ValueError):
    """A file to load exists but may not be read.  Keras 3's load_model raises a ValueError there
    (it finds no accessible `.keras` zip file): this is both that and open()'s PermissionError."""


def _check_exists(filepath):
    if not os.path.exists(filepath):
        raise MissingFileError(errno.ENOENT, f"File not found: filepath={filepath}. Please ensure the "
                               "file exists and is accessible.")


def _read_bytes(filepath) -> bytes:
    """The contents of the file to load, or an error (a ValueError too, as Keras raises) that names
    the path and the problem: missing, a directory, or not readable."""
    _check_exists(filepath)
    if os.path.isdir(filepath):
        raise NotAFileError(errno.EISDIR, f"Cannot load {filepath}: it is a directory, not a file "
                                          "written by model.save() or model.save_weights(); pass "
                                          "the path of the file")
    try:
        with open(filepath, "rb") as file:
            return file.read()
    except PermissionError as error:
        raise UnreadableFileError(error.errno, f"Cannot load {filepath}: it may not be read "
                                               f"({error.strerror}); give yourself read permission "
                                               "(chmod u+r) or load a copy") from None
    except IsADirectoryError:       # (it became one since the check above)
        raise NotAFileError(errno.EISDIR, f"Cannot load {filepath}: it is a directory") from None


def _read_npz(data: bytes, filepath, member) -> dict:
    """The arrays of an .npz file's bytes, numeric only, or a ValueError that says what is wrong."""
    where = f"{member} in " if member else ""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive of named arrays")
        with npz:
            arrays = {key: npz[key] for key in npz.files}
    except _FORMAT_ERRORS as error:
        raise _bad_file(filepath, f"{where}the file is not a valid .npz archive of numeric arrays "
                                  f"({type(error).__name__}: {error})") from None
    for key, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise _bad_file(filepath, f"{where}the file's array {key!r} has dtype {array.dtype}; "
                                      "weights must be numeric")
    return arrays


class _Archive:
    """The members of a model file, read and checked: metadata, config, weights, optimizer state."""

    def __init__(self, filepath: str):
        self.filepath = filepath
        data = _read_bytes(filepath)
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
                members = {name: archive.read(name)
                           for name in (METADATA, CONFIG, WEIGHTS, OPTIMIZER) if name in names}
        except _FORMAT_ERRORS as error:
            raise _bad_file(filepath, "the file is not a valid `.keras` zip archive; it may be truncated "
                                      f"or corrupt ({type(error).__name__}: {error})") from None
        self._check_members(names, members)
        self.metadata = self._json(members[METADATA], METADATA)
        self._check_metadata(names)
        self.config = self._json(members[CONFIG], CONFIG)
        self._check_config()
        self.weights = _read_npz(members[WEIGHTS], filepath, WEIGHTS)
        self.optimizer = (_read_npz(members[OPTIMIZER], filepath, OPTIMIZER)
                          if OPTIMIZER in members else None)

    def _check_members(self, names, members):
        if WEIGHTS not in members and "model.weights.h5" in names:
            raise _bad_file(self.filepath, "it is a Keras 3 `.keras` file (weights in HDF5, "
                                           "model.weights.h5), not one written by kcompile's "
                                           "model.save(); kcompile cannot read HDF5.")
        missing = [name for name in (METADATA, CONFIG, WEIGHTS) if name not in members]
        if missing:
            raise _bad_file(self.filepath, f"it is not a kcompile model file: it has no "
                                           f"{' or '.join(missing)} (it holds "
                                           f"{sorted(names) or 'no members'}).")

    def _json(self, data: bytes, member: str):
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _bad_file(self.filepath, f"{member} is not valid JSON ({error})") from None
        except RecursionError:
            raise _bad_file(self.filepath, f"{member} is nested too deeply to be a model's "
                                           "configuration") from None

    def _check_metadata(self, names):
        metadata = self.metadata
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
            found = metadata.get("format") if isinstance(metadata, dict) else metadata
            raise _bad_file(self.filepath, f"{METADATA} does not name the format {FORMAT_NAME!r} "
                                           f"(found {found!r}); it was not written by kcompile's "
                                           "model.save().")
        version = metadata.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise _bad_file(self.filepath, f"{METADATA} has no valid format_version (found {version!r})")
        if version > FORMAT_VERSION:
            raise _bad_file(self.filepath, f"it was written in format version {version} by kcompile "
                                           f"{metadata.get('kcompile_version')}; this kcompile "
                                           f"({kcompile.__version__}) reads up to version "
                                           f"{FORMAT_VERSION}. Upgrade kcompile to load it.")

    def _check_config(self):
        config = self.config
        if not isinstance(config, dict) or not isinstance(config.get("class_name"), str) \
                or not isinstance(config.get("config"), dict):
            raise _bad_file(self.filepath, f"{CONFIG} must be an object with 'class_name' (a string) and "
                                           "'config' (an object)")
        for key in ("build_config", "compile_config"):
            if config.get(key) is not None and not isinstance(config[key], dict):
                raise _bad_file(self.filepath, f"{CONFIG}: {key!r} must be an object or null")


def _read_weights_file(filepath: str) -> dict:
    """The arrays of a weights file, or of a model file's weights and optimizer state, named as in
    a weights file (the optimizer's under WEIGHTS_OPTIMIZER_PREFIX, with its class and schedule
    markers), so that load_weights reads both alike."""
    _check_exists(filepath)
    if filepath.endswith(MODEL_SUFFIX):
        archive = _Archive(filepath)
        arrays = dict(archive.weights)
        optimizer = (archive.config.get("compile_config") or {}).get("optimizer")
        if archive.optimizer is not None and isinstance(optimizer, dict) \
                and isinstance(optimizer.get("class_name"), str):
            rate = (optimizer.get("config") or {}).get("learning_rate")
            arrays.update(_optimizer_entries(archive.optimizer, optimizer["class_name"],
                                             isinstance(rate, dict)))
        return arrays
    data = _read_bytes(filepath)
    if _is_hdf5(data):
        raise _bad_file(filepath, "it is an HDF5 file (as Keras writes `.weights.h5`), which kcompile "
                                  "cannot read: kcompile's `.weights.h5` files are its own format "
                                  "(numpy .npz under that name), not HDF5. Save the weights from "
                                  "kcompile, or move them over as arrays (Keras's get_weights() "
                                  "into kcompile's set_weights()).")
    return _read_npz(data, filepath, None)


# ----------------------------------------------------------------------------------------------
# Weights: match by path, validate everything, then assign
# ----------------------------------------------------------------------------------------------

def _match_weights(model, arrays: dict, filepath, skip_mismatch=False) -> list:
    """[(variable, array)] to assign, after checking every name and shape; raises listing all problems."""
    own = {}
    for variable in model.weights:
        own.setdefault(variable.path, variable)
    missing = [path for path in own if path not in arrays]
    unexpected = [path for path in arrays if path not in own]
    mismatched = [path for path in own if path in arrays and arrays[path].shape != own[path].shape]
    problems = []
    if missing:
        problems.append(f"missing from the file: {', '.join(missing)}")
    if unexpected:
        problems.append(f"in the file but not in the model: {', '.join(unexpected)}")
    for path in mismatched:
        problems.append(f"{path!r} has shape {format_shape(arrays[path].shape)} in the file but "
                        f"{format_shape(own[path].shape)} in the model")
    if problems and not skip_mismatch:
        raise _bad_file(filepath, f"its weights do not fit model {model.name!r} (weights are matched by "
                                  f"path 'layer/weight'; nothing was loaded):\n  - "
                                  + "\n  - ".join(problems))
    if problems:
        warnings.warn(f"Skipping weights of {filepath} that do not fit model {model.name!r}:\n  - "
                      + "\n  - ".join(problems), stacklevel=3)
    pairs = [(variable, arrays[path]) for path, variable in own.items()
             if path in arrays and path not in mismatched]
    return _converted(pairs, filepath)


def _convert(array: np.ndarray, dtype) -> tuple:
    """(`array` as `dtype`, None), or (that, what of it `dtype` cannot hold) when the conversion
    changes values into others: a finite float beyond float32's range into inf; NaN, fractions or
    values out of range into an integer."""
    target = np.dtype(dtype)
    with np.errstate(all="ignore"):
        value = array.astype(target)
        if target.kind == "f":
            bad = np.isfinite(array) & ~np.isfinite(value) if array.dtype.kind == "f" else \
                ~np.isfinite(value)
        elif target.kind in "iu" and array.dtype.kind in "fiub":
            info = np.iinfo(target)
            bad = (array < info.min) | (array > info.max)
            if array.dtype.kind == "f":
                bad |= ~np.isfinite(array) | (array != np.round(array))
        else:
            bad = np.zeros(array.shape, bool)
    if not np.any(bad):
        return value, None
    first = np.asarray(array)[np.unravel_index(int(np.argmax(bad)), array.shape)].item()
    return value, (f"{int(np.sum(bad))} value(s) that {target.name} cannot hold, such as {first!r} "
                   f"({array.dtype} in the file)")


def _converted(pairs, filepath) -> list:
    """`pairs` [(variable, array)] with each array converted to its variable's dtype, or a
    ValueError naming the weights whose values the conversion would change into others (a finite
    float64 beyond float32's range becomes inf; NaN, fractions or values out of range in an integer
    weight), before anything is assigned: such a file is corrupt or not a model's, and a model
    loaded from it would compute inf and NaN."""
    converted, problems = [], []
    for variable, array in pairs:
        value, problem = _convert(array, variable.dtype)
        if problem:
            problems.append(f"{variable.path!r} holds {problem}")
        converted.append((variable, value))
    if problems:
        raise _bad_file(filepath, "its weights hold values the model's weights cannot take "
                                  "(nothing was loaded; the file is corrupt or was not written by "
                                  "kcompile):\n  - " + "\n  - ".join(problems))
    return converted


def _renamed_by_position(model, arrays: dict) -> dict | None:
    """{path in the file: the model's path} when the file's weight paths are not the model's but
    its weights are the model's in all else: as many, in the same order, each of the same kind
    ('kernel', 'bias', ...) and shape; None otherwise.  Its layers were renamed: Keras 3's weights
    files key a layer by its class and position, not by its name, so such a file loads there."""
    own = [variable.path for variable in model.weights]
    saved = list(arrays)
    if set(saved) == set(own) or len(saved) != len(own) or len(set(own)) != len(own):
        return None
    for path, variable in zip(saved, model.weights):
        if path.rpartition("/")[2] != variable.path.rpartition("/")[2] \
                or arrays[path].shape != variable.shape:
            return None
    return dict(zip(saved, own))


def _renamed_slot(key: str, renamed: dict) -> str:
    """An optimizer slot's key ('dense/kernel/m') for the renamed weight it belongs to."""
    weight, _, slot = key.rpartition("/")
    return f"{renamed[weight]}/{slot}" if weight in renamed else key


def _assign(pairs):
    for variable, array in pairs:
        variable.assign(array)


def load_weights(model, filepath, skip_mismatch=False, **kwargs):
    """Load weights saved by `save_weights` (`.weights.npz`) or `save` (`.keras`) into `model`.

    Weights are matched by path ('dense/kernel'), or by position when the model's layers have other
    names but its weights are the file's in order, kind and shape (as Keras 3 matches them, by
    layer class and position); every name and shape is checked before any weight changes, so on
    error the model is left as it was.  With `skip_mismatch=True`, weights missing
    from the file or of another shape are skipped with a warning instead.
    """
    if kwargs:
        raise ValueError(f"The following argument(s) are not supported: {sorted(kwargs)}")
    filepath = _path(filepath)
    _check_weights_suffix(filepath, "load", allow_model_file=True)
    arrays = _read_weights_file(filepath)
    saved_class = arrays.pop(WEIGHTS_OPTIMIZER_CLASS, None)
    saved_schedule = arrays.pop(WEIGHTS_OPTIMIZER_SCHEDULE, None)
    _ensure_built(model, "load")
    # (a layer may be named 'optimizer:...' too: the model's own weight paths are weights)
    paths = {variable.path for variable in model.weights}
    saved_optimizer = {key[len(WEIGHTS_OPTIMIZER_PREFIX):]: arrays.pop(key) for key in list(arrays)
                       if key.startswith(WEIGHTS_OPTIMIZER_PREFIX) and key not in paths}
    renamed = _renamed_by_position(model, arrays)
    if renamed is not None:
        arrays = {renamed[path]: array for path, array in arrays.items()}
        saved_optimizer = {_renamed_slot(key, renamed): array
                           for key, array in saved_optimizer.items()}
    pairs = _match_weights(model, arrays, filepath, skip_mismatch)
    restore_optimizer = None
    if saved_optimizer and getattr(model, "compiled", False) and model.optimizer is not None:
        # As Keras 3: the optimizer's state comes back with the weights when it fits the model's
        # optimizer (a compiled model; the same kind of optimizer, slots for exactly the model's
        # trainable weights), and is skipped with a warning when it does not.
        try:
            _check_optimizer_kind(model, saved_class, saved_schedule, saved_optimizer, filepath)
            restore_optimizer = _optimizer_restorer(model, saved_optimizer, filepath,
                                                    "its optimizer state:", complete=True)
        except ValueError as error:
            warnings.warn(f"{error}; the optimizer's state is not loaded", stacklevel=3)
    _assign(pairs)
    if restore_optimizer is not None:
        restore_optimizer()


def _check_optimizer_kind(model, saved_class, saved_schedule, arrays, filepath) -> None:
    """Whether a weights file's optimizer state is of the model's kind of optimizer: its class
    (or one with the same slots, as Adam and AdamW), its use of a schedule, and slots for exactly
    the model's trainable weights (a ValueError saying what differs)."""
    optimizer = model.optimizer
    own = type(optimizer).__name__
    slot_names = optimizer.slot_names()
    scalars = {optimizers.ITERATIONS, optimizers.LEARNING_RATE}
    scalars.update(optimizer.state_path(name) for name in optimizer.state_names())
    slot_keys = [key for key in arrays if key not in scalars]
    if saved_class is not None:
        name = bytes(np.asarray(saved_class, np.uint8)).decode(errors="replace")
        same_slots = bool(slot_names) and {k.rpartition("/")[2] for k in slot_keys} == set(slot_names)
        if name != own and not same_slots:
            raise _bad_file(filepath, f"it holds the state of a {name} optimizer; this model's is {own}")
    has_schedule = optimizer.learning_rate_schedule is not None
    if saved_schedule is not None and bool(np.any(saved_schedule)) != has_schedule:
        raise _bad_file(filepath, "its optimizer's learning rate " + (
            "was a number; this model's is a schedule" if has_schedule
            else "was a schedule; this model's is a number"))
    slotted = {key.rpartition("/")[0] for key in slot_keys}
    trainable = {v.path for v in model.trainable_weights} if slot_names else set()
    # (no slots at step 0 is the state of an optimizer that has not trained yet: it fits)
    untrained = not slotted and not np.any(arrays.get(optimizers.ITERATIONS, 0))
    if slotted != trainable and not untrained:
        raise _bad_file(filepath, f"its optimizer state has slots for {sorted(slotted)}; this "
                                  f"model's {own} has them for its trainable weights "
                                  f"{sorted(trainable)}")


# ----------------------------------------------------------------------------------------------
# load_model
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _generator_untouched():
    # NOTE: rebuilding the layers draws initial weights that the saved ones replace at once; putting
    # the global generator back keeps a seeded run's shuffling and Dropout seeds what they would be
    # had the model never been reloaded.
    generator = get_generator()
    state = generator.bit_generator.state
    try:
        yield
    finally:
        generator.bit_generator.state = state


def _resolve_custom_functions(layer_config: dict, custom_objects: dict) -> dict:
    # Layer configs name their activation; a custom one is found by that name in custom_objects.
    # A custom initializer or regularizer is a {"class_name", "config"} entry whose class is there.
    config = dict(layer_config)
    inner = dict(config.get("config") or {})
    for key in ("activation", "recurrent_activation"):
        activation = inner.get(key)
        if isinstance(activation, str) and activation in custom_objects:
            inner[key] = custom_objects[activation]
        elif registry.is_own_function_config(activation):
            inner[key] = registry.resolve_own_function(activation, custom_objects, "activation")
    from kcompile.layers import Layer
    for key, value in inner.items():
        if isinstance(value, dict) and value.get("class_name") in custom_objects:
            cls = custom_objects[value["class_name"]]
            if isinstance(cls, type) and issubclass(cls, Layer):
                continue    # a wrapped layer (TimeDistributed's, Bidirectional's): the wrapper's
                            # from_config rebuilds it, custom objects and all
            arguments = dict(value.get("config") or {})
            inner[key] = cls.from_config(arguments) if hasattr(cls, "from_config") else cls(**arguments)
    config["config"] = inner
    return config


def _model_class(class_name, custom_objects):
    from kcompile import models
    cls = custom_objects.get(class_name)
    if cls is None and class_name == "Sequential":
        cls = models.Sequential
    if cls is None:
        raise ValueError(f"unknown model class {class_name!r}; kcompile rebuilds Sequential models, and "
                         "subclasses passed in custom_objects={name: class}")
    if not (isinstance(cls, type) and issubclass(cls, models.Sequential)):
        raise ValueError(f"model class {class_name!r} ({cls!r}) is not a Sequential model; only "
                         "Sequential models (and subclasses) can be rebuilt from their config")
    return cls


def _model_from_config(config: dict, custom_objects: dict):
    """A new model (fresh weights) from {"class_name", "config", "build_config"}."""
    cls = _model_class(config["class_name"], custom_objects)
    model_config = dict(config["config"])
    layer_configs = model_config.get("layers", [])
    if not isinstance(layer_configs, list) or not all(isinstance(c, dict) for c in layer_configs):
        raise ValueError("'layers' must be a list of {'class_name': ..., 'config': ...} objects")
    model_config["layers"] = [_resolve_custom_functions(c, custom_objects) for c in layer_configs]
    model = cls.from_config(model_config, custom_objects=custom_objects)
    build_config = config.get("build_config") or {}
    if build_config.get("input_shape") is not None and not model.built:
        model.build(tuple(build_config["input_shape"]))
    return model


def _rebuild(archive: _Archive, custom_objects: dict):
    try:
        with _generator_untouched():
            model = _model_from_config(archive.config, custom_objects)
    except Exception as error:  # the config is data from a file: any failure means it is unusable
        raise _bad_file(archive.filepath, f"the model cannot be rebuilt from {CONFIG}: "
                                          f"{type(error).__name__}: {error}") from error
    return model


def model_to_json(model, **kwargs) -> str:
    """`model.to_json()`: the architecture (no weights, no compile arguments) as JSON text, as Keras's;
    `kwargs` go to json.dumps."""
    config = _model_config(model)
    config.pop("compile_config")
    return json.dumps(config, **kwargs)


def _check_custom_objects(custom_objects, function: str) -> None:
    """custom_objects is None or a mapping of names (str) to classes or functions."""
    if custom_objects is None:
        return
    if not isinstance(custom_objects, Mapping):
        raise TypeError(f"{function}: `custom_objects` must be a dict of names to classes or "
                        f"functions, e.g. {{'MyLayer': MyLayer}}; got {custom_objects!r} (of type "
                        f"{type(custom_objects).__name__})")
    for name in custom_objects:
        if not isinstance(name, str):
            raise TypeError(f"{function}: the keys of `custom_objects` must be the names (str) "
                            f"the config uses, e.g. {{'MyLayer': MyLayer}}; got the key {name!r}")


def model_from_json(json_string, custom_objects=None):
    """A new, uncompiled model with fresh weights from `model.to_json()` text, as Keras's."""
    _check_custom_objects(custom_objects, "model_from_json")
    try:
        config = json.loads(json_string)
    except (TypeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"model_from_json needs the text of model.to_json(); this is not valid JSON "
                         f"({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str) \
            or not isinstance(config.get("config"), dict):
        raise ValueError("model_from_json needs the text of model.to_json(): a JSON object with "
                         "'class_name' and 'config'")
    try:
        # (as Keras's: safe, unless an open SafeModeScope or enable_unsafe_deserialization says not)
        with registry.SafeModeScope(registry.effective_safe_mode(True)):
            return _model_from_config(config, registry.custom_objects_for(custom_objects))
    except Exception as error:
        raise ValueError(f"the model cannot be rebuilt from this JSON: {type(error).__name__}: "
                         f"{error}") from error


def _custom_or(value, custom_objects, resolve, kind="function"):
    """A function or object named or configured in a compile config, custom_objects first."""
    if isinstance(value, str):
        return custom_objects.get(value, value)
    if registry.is_own_function_config(value):
        return registry.resolve_own_function(value, custom_objects, kind)
    if isinstance(value, dict):
        cls = custom_objects.get(value.get("class_name"))
        if cls is not None:
            return cls.from_config(value.get("config") or {})
        return resolve(value)
    raise ValueError(f"expected a name or a {{'class_name': ..., 'config': ...}} object; got {value!r}")


def _metric_from_config(value):
    cls = getattr(metrics_module, str(value.get("class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, metrics_module.Metric)):
        raise ValueError(f"Unknown metric class {value.get('class_name')!r}; pass custom metric classes "
                         "in custom_objects=")
    return cls.from_config(value.get("config") or {})


def compile_from_config(model, compile_config: dict, custom_objects=None) -> None:
    """model.compile() with the arguments of a compile config (`get_compile_config()`, or as a
    `.keras` file saves them), names resolved through `custom_objects` and the registry."""
    custom_objects = registry.custom_objects_for(custom_objects)
    optimizer = _custom_or(compile_config.get("optimizer", "rmsprop"), custom_objects,
                           lambda config: optimizers.deserialize(config, custom_objects))
    loss = compile_config.get("loss")
    if loss is not None:
        loss = _custom_or(loss, custom_objects, losses.deserialize, "loss")
    metrics, weighted = ([_custom_or(m, custom_objects, _metric_from_config, "metric")
                          for m in compile_config.get(key) or []]
                         for key in ("metrics", "weighted_metrics"))
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted,
                  loss_weights=compile_config.get("loss_weights"),
                  target=compile_config.get("target", "llvm"),
                  run_eagerly=bool(compile_config.get("run_eagerly", False)),
                  steps_per_execution=compile_config.get("steps_per_execution", 1))


def _compile(model, archive: _Archive, custom_objects: dict):
    try:
        compile_from_config(model, archive.config["compile_config"], custom_objects)
    except Exception as error:  # a config from a file: any failure means it is unusable
        raise _bad_file(archive.filepath, f"the model cannot be compiled with the arguments saved in "
                                          f"{CONFIG} ({type(error).__name__}: {error}). Pass custom "
                                          "losses, metrics and optimizers in custom_objects=, or load "
                                          "with compile=False.", CompileConfigError) from error


def _restore_optimizer(model, archive: _Archive):
    """Check every saved optimizer array against the model, then assign them all."""
    _optimizer_restorer(model, archive.optimizer, archive.filepath, f"{OPTIMIZER}:")()


def _optimizer_restorer(model, arrays: dict, filepath, where: str, complete: bool = False):
    """A function that assigns the saved optimizer state `arrays` to the model's optimizer, after
    every array was checked here (a ValueError saying what does not fit, nothing assigned).  With
    `complete`, slots the state has none for go back to their initial values (the saved optimizer
    had not trained those weights, or nothing yet)."""
    optimizer = model.optimizer
    for key, kind in ((optimizers.ITERATIONS, "iu"), (optimizers.LEARNING_RATE, "f")):
        if key not in arrays:
            raise _bad_file(filepath, f"{where} {key!r} is missing")
        if arrays[key].shape != () or arrays[key].dtype.kind not in kind:
            raise _bad_file(filepath, f"{where} {key!r} must be a scalar of kind {kind!r}; got "
                                      f"{arrays[key].dtype} of shape {arrays[key].shape}")
    weights = {v.path: v for v in model.weights}
    slot_names = optimizer.slot_names()
    state_paths = {optimizer.state_path(name): name for name in optimizer.state_names()}
    slots = {}  # weight path -> {slot name: array}
    for key, array in arrays.items():
        if key in (optimizers.ITERATIONS, optimizers.LEARNING_RATE) or key in state_paths:
            continue
        weight_path, _, slot = key.rpartition("/")
        if weight_path not in weights or slot not in slot_names:
            raise _bad_file(filepath, f"{where} {key!r} is not a slot of {type(optimizer).__name__} "
                                      f"(slots {list(slot_names)}) for a weight of the model")
        shape = weights[weight_path].shape
        if array.shape != shape:
            raise _bad_file(filepath, f"{where} slot {key!r} has shape {format_shape(array.shape)}, but "
                                      f"weight {weight_path!r} has {format_shape(shape)}")
        array, problem = _convert(array, np.float32)
        if problem:
            raise _bad_file(filepath, f"{where} slot {key!r} holds {problem}")
        slots.setdefault(weight_path, {})[slot] = array
    for weight_path, own in slots.items():
        if set(own) != set(slot_names):
            raise _bad_file(filepath, f"{where} weight {weight_path!r} has slots {sorted(own)}; "
                                      f"{type(optimizer).__name__} needs {list(slot_names)}")
    iterations = int(arrays[optimizers.ITERATIONS])
    if not 0 <= iterations < 2**31:
        raise _bad_file(filepath, f"{where} 'optimizer/iterations' is {iterations}, outside int32")
    # the optimizer's own scalars (Nadam's u_product): saved with the iteration count, or at their
    # initial values when nothing has trained yet
    state = {}
    for key, name in state_paths.items():
        if key not in arrays:
            if iterations:
                raise _bad_file(filepath, f"{where} {key!r} of {type(optimizer).__name__} is missing "
                                          f"(the state is at step {iterations})")
            state[name] = np.float32(optimizer.state_initial_value(name))
            continue
        array = arrays[key]
        with np.errstate(over="ignore", invalid="ignore"):
            usable = array.shape == () and array.dtype.kind == "f" and np.isfinite(np.float32(array))
        if not usable:
            raise _bad_file(filepath, f"{where} {key!r} must be a finite float scalar; got "
                                      f"{array.dtype} of shape {array.shape}: {array!r}")
        state[name] = np.float32(array)
    learning_rate = float(arrays[optimizers.LEARNING_RATE])
    with np.errstate(over="ignore"):
        finite = np.isfinite(np.float32(learning_rate))
    if not finite:
        raise _bad_file(filepath, f"{where} 'optimizer/learning_rate' is {learning_rate}, not a "
                                  "finite number (in float32)")
    schedule = optimizer.learning_rate_schedule
    if schedule is not None:
        # the schedule's own value at the saved step, or the state is another schedule's
        expected = schedules._eager_value(schedule, iterations)
        if not math.isclose(learning_rate, expected, rel_tol=1e-5, abs_tol=1e-12):
            raise _bad_file(filepath, f"{where} 'optimizer/learning_rate' is {learning_rate}, but "
                                      f"this optimizer's schedule gives {expected} at step "
                                      f"{iterations}")
    with_slots = [v for v in model.weights if v.path in slots]  # model order, as the train step builds
    fresh = [v for v in model.trainable_weights if v.path not in slots] if complete else []

    def assign():
        if with_slots or iterations:
            optimizer.build(with_slots)
        for variable in with_slots:
            for slot, array in slots[variable.path].items():
                optimizer.slot(variable, slot).assign(array)
        existing = optimizer.state()
        for variable in fresh:
            for slot in slot_names:
                if optimizer.slot_path(variable, slot) in existing:
                    optimizer.slot(variable, slot).assign(
                        np.full(variable.shape, optimizer.slot_initial_value(slot), np.float32))
        optimizer.iterations.assign(np.int32(iterations))
        for name, value in state.items():
            optimizer.state_variable(name).assign(value)
        if schedule is None:
            optimizer.learning_rate = learning_rate
    return assign


# -- Keras 3's generic (de)serialization ---------------------------------------------------------

def _serializable_kinds():
    """(module name, base class) of every kind of object serialize_keras_object takes, the more
    specific first (a model is a layer)."""
    from kcompile import initializers, layers, models, regularizers
    return (("kcompile.models", models.Model), ("kcompile.layers", layers.Layer),
            ("kcompile.optimizers", optimizers.Optimizer), ("kcompile.losses", losses.Loss),
            ("kcompile.metrics", metrics_module.Metric),
            ("kcompile.initializers", initializers.Initializer),
            ("kcompile.regularizers", regularizers.Regularizer),
            ("kcompile.optimizers.schedules", schedules.LearningRateSchedule))


def _known_classes(module) -> dict:
    """Class name -> class of every built-in class deserialize_keras_object can make, those of
    `module` (a name serialize_keras_object writes: a loss and a metric may share a class name)
    winning."""
    from kcompile import initializers, layers, models, regularizers
    tables = {"kcompile.initializers": dict(initializers._BY_NAME),
              "kcompile.regularizers": regularizers._CLASSES,
              "kcompile.optimizers.schedules": schedules._CLASSES,
              "kcompile.optimizers": {cls.__name__: cls for cls in optimizers._CLASSES.values()},
              "kcompile.losses": losses._CLASSES, "kcompile.metrics": metrics_module._CLASSES,
              "kcompile.layers": layers._CLASSES, "kcompile.models": {"Sequential": models.Sequential}}
    found = {}
    for name in sorted(tables, key=lambda name: name == module):
        found.update({key: cls for key, cls in tables[name].items() if isinstance(cls, type)})
    return found


def _known_functions() -> dict:
    from kcompile import activations
    return {**metrics_module._FUNCTIONS, **losses._FUNCTIONS, **activations._ACTIVATIONS}


def serialize_keras_object(obj):
    """A JSON-ready description of `obj`, as Keras 3's `keras.saving.serialize_keras_object`: for a
    layer, model, optimizer, loss, metric, initializer, regularizer or learning-rate schedule
    {"module", "class_name", "config", "registered_name"} (and "build_config" when a layer or model is
    built); for a named function {"module": "builtins", "class_name": "function", "config": its
    name, ...}; a numpy array as {"class_name": "__numpy__", ...}; plain data (None, numbers,
    strings, lists, dicts) as it is, its items serialized."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [serialize_keras_object(item) for item in obj]
    if isinstance(obj, dict):
        return {key: serialize_keras_object(value) for key, value in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"class_name": "__numpy__", "config": {"value": obj.tolist(), "dtype": str(obj.dtype)}}
    for module, base in _serializable_kinds():
        if isinstance(obj, base):
            config = {"module": module, "class_name": type(obj).__name__, "config": obj.get_config(),
                      "registered_name": registry.registered_name_of(type(obj))}
            build_config = obj.get_build_config() if hasattr(obj, "get_build_config") else None
            if build_config is not None:
                config["build_config"] = build_config
            return config
    if callable(obj) and not isinstance(obj, type):
        name = _function_name(obj, "function")
        return {"module": "builtins", "class_name": "function", "config": name,
                "registered_name": registry.registered_name_of(obj) or "function"}
    raise TypeError(f"serialize_keras_object: cannot serialize {obj!r} ({type(obj).__name__}): it is "
                    "not a kcompile layer, model, optimizer, loss, metric, initializer, regularizer, "
                    "schedule, named function, array or plain data")


def deserialize_keras_object(config, custom_objects=None, safe_mode=True, **kwargs):
    """The object `serialize_keras_object` described, as Keras 3's function: classes and functions
    are looked up in `custom_objects`, the registry and open custom_object_scopes first, then among
    kcompile's own; a layer or model is built as its "build_config" says.  A plain string is
    returned as it is unless a custom object has that name."""
    found = registry.custom_objects_for(custom_objects)
    if config is None or isinstance(config, (bool, int, float)):
        return config
    if isinstance(config, str):
        return found.get(config, config)
    if isinstance(config, (list, tuple)):
        return [deserialize_keras_object(item, custom_objects, safe_mode) for item in config]
    if not isinstance(config, dict):
        raise TypeError(f"deserialize_keras_object takes what serialize_keras_object gives (a dict, "
                        f"a string, a list or plain data); got {type(config).__name__}")
    if "class_name" not in config:
        return {key: deserialize_keras_object(value, custom_objects, safe_mode)
                for key, value in config.items()}
    class_name, inner = config["class_name"], config.get("config")
    if class_name == "__numpy__":
        return np.asarray(inner["value"], dtype=inner["dtype"])
    if class_name == "function":
        name = inner if isinstance(inner, str) else None
        function = found.get(config.get("registered_name")) or found.get(name) or \
            _known_functions().get(name)
        if function is None:
            raise TypeError(f"Could not locate function {name!r}. Pass it in custom_objects= or "
                            f"register it with @kcompile.saving.register_keras_serializable(). "
                            f"Full object config: {config}")
        return function
    registered = config.get("registered_name")
    cls = found.get(registered) or found.get(class_name) or \
        _known_classes(config.get("module")).get(class_name)
    if cls is None:
        raise TypeError(f"Could not locate class {class_name!r}. Pass custom classes in "
                        f"custom_objects= or register them with "
                        f"@kcompile.saving.register_keras_serializable(). Full object config: {config}")
    if not isinstance(inner, dict):
        raise TypeError(f"deserialize_keras_object: the config of {class_name!r} must be a dict; got "
                        f"{inner!r}")
    from kcompile.models import Model
    # as Keras 3: from_config runs where the custom objects and the safe mode are known
    with registry.custom_object_scope(found), \
            registry.SafeModeScope(registry.effective_safe_mode(safe_mode)):
        obj = cls.from_config(dict(inner), custom_objects=custom_objects) \
            if isinstance(cls, type) and issubclass(cls, Model) else cls.from_config(dict(inner))
    if config.get("build_config") and hasattr(obj, "build_from_config"):
        obj.build_from_config(config["build_config"])
    return obj


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """Load a model saved by `model.save(filepath)`.

    Rebuilds the model from its config, sets its weights bit-exactly, and (with `compile=True`)
    compiles it with the saved optimizer, loss, metrics and target and restores the optimizer's
    state, so `fit` continues where the saved model stopped.

    Args:
        filepath: a `.keras` file written by `model.save`.
        custom_objects: {name: class or function} for custom layers, activations, losses, metrics,
            optimizers and model classes, found by the names saved in the config (objects
            registered with `register_keras_serializable` or in a `custom_object_scope` need not
            be passed).
        compile: compile the model as it was when saved.
        safe_mode: whether to refuse the code a file holds: kcompile's format holds none (no
            pickle) but a `Lambda` layer's Python lambda (its bytecode), which is loaded only with
            `safe_mode=False` (or after `kcompile.config.enable_unsafe_deserialization()`): pass
            it only for files from a source you trust.

    Raises:
        ValueError: the file is not a kcompile model file, or is corrupt, truncated or inconsistent;
            the message names the file and the problem.
    """
    _check_custom_objects(custom_objects, "load_model")
    filepath = _path(filepath)
    _check_model_suffix(filepath, "loading")
    custom_objects = registry.custom_objects_for(custom_objects)
    archive = _Archive(filepath)
    with registry.SafeModeScope(registry.effective_safe_mode(safe_mode)):
        model = _rebuild(archive, custom_objects)
    _assign(_match_weights(model, archive.weights, filepath))
    if compile and archive.config.get("compile_config") is not None:
        _compile(model, archive, custom_objects)
        if archive.optimizer is not None:
            _restore_optimizer(model, archive)
    return model

