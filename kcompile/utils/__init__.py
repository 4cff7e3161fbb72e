"""User-facing utilities, as in ``keras.utils``."""

import itertools
import numbers

import numpy as np

from kcompile.backend import clear_session
from kcompile.progbar import Progbar
from kcompile.registry import (CustomObjectScope, custom_object_scope, get_custom_objects,
                               get_registered_name, get_registered_object, register_keras_serializable)
from kcompile.utils.random import set_random_seed

__all__ = ["CustomObjectScope", "Progbar", "PyDataset", "Sequence", "clear_session", "custom_object_scope",
           "get_custom_objects",
           "get_registered_name", "get_registered_object", "normalize", "pad_sequences",
           "register_keras_serializable", "serialize_keras_object", "deserialize_keras_object",
           "set_random_seed", "to_categorical"]


def serialize_keras_object(obj):
    """kcompile.saving.serialize_keras_object (Keras 3 has it in keras.utils too)."""
    from kcompile.saving import serialize_keras_object as serialize
    return serialize(obj)


def deserialize_keras_object(config, custom_objects=None, safe_mode=True, **kwargs):
    """kcompile.saving.deserialize_keras_object (Keras 3 has it in keras.utils too)."""
    from kcompile.saving import deserialize_keras_object as deserialize
    return deserialize(config, custom_objects, safe_mode, **kwargs)


class PyDataset:
    """Base class of a batch source for `fit`, `evaluate` and `predict`, as ``keras.utils.PyDataset``.

    Subclass it with ``__len__`` (batches per epoch; or a ``num_batches`` property) and
    ``__getitem__(index)`` returning ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` for batch `index`.
    ``on_epoch_begin()`` and ``on_epoch_end()`` are called around every epoch.  `workers`,
    `use_multiprocessing` and `max_queue_size` are kept for Keras code that passes them; batches are
    read in the calling thread, in index order (shuffled when fit's ``shuffle`` is True).
    """

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index), the batch at "
                                  "position index")

    def __iter__(self):
        count = self.num_batches
        for index in (itertools.count() if count is None else range(count)):  # None: endless
            yield self[index]

    @property
    def num_batches(self) -> int:
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(f"{type(self).__name__} must define __len__ (or a num_batches "
                                  "property): the batches per epoch")

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass



#: Keras 2's name, which Keras 3 keeps as an alias of PyDataset.
Sequence = PyDataset

def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0):
    """Sequences of different lengths as one array (samples, maxlen, ...), as
    ``keras.utils.pad_sequences``: sequences longer than `maxlen` (default: the longest) lose their
    start ('pre') or end ('post'); shorter ones are filled with `value` before ('pre') or after
    ('post')."""
    for argument, given in (("padding", padding), ("truncating", truncating)):
        if given not in ("pre", "post"):
            raise ValueError(f"pad_sequences: `{argument}` must be 'pre' or 'post'; got "
                             f"{argument}={given!r}")
    if not hasattr(sequences, "__len__"):
        raise ValueError(f"`sequences` must be iterable; got {type(sequences).__name__}")
    lengths = []
    sample_shape = ()
    found_shape = False
    for position, sequence in enumerate(sequences):
        try:
            lengths.append(len(sequence))
        except TypeError:
            raise ValueError("`sequences` must be a list of iterables. Found non-iterable: "
                             f"{sequence!r} at position {position}") from None
        if not found_shape and len(sequence):
            sample_shape = np.asarray(sequence).shape[1:]
            found_shape = True
    if maxlen is None:
        maxlen = max(lengths, default=0)
    elif isinstance(maxlen, bool) or not isinstance(maxlen, numbers.Integral) or maxlen < 0:
        raise ValueError(f"pad_sequences: `maxlen` must be None or an integer >= 0; got maxlen={maxlen!r}")
    out = np.full((len(lengths), int(maxlen)) + sample_shape, value, dtype=dtype)
    for position, sequence in enumerate(sequences):
        if not len(sequence) or not maxlen:
            continue
        kept = sequence[-maxlen:] if truncating == "pre" else sequence[:maxlen]
        kept = np.asarray(kept, dtype=dtype)
        if kept.shape[1:] != sample_shape:
            raise ValueError(f"Shape of sample {kept.shape[1:]} of sequence at position {position} is "
                             f"different from expected shape {sample_shape}")
        if padding == "post":
            out[position, :len(kept)] = kept
        else:
            out[position, -len(kept):] = kept
    return out


def to_categorical(y, num_classes=None, dtype="float32"):
    """Converts a class vector (integers) to a one-hot class matrix, like ``keras.utils.to_categorical``.

    Args:
        y: Array-like of class indices in [0, num_classes), of any shape. A trailing axis of size 1 is
            dropped, so labels of shape ``(n, 1)`` give ``(n, num_classes)``, as in Keras.
        num_classes: Total number of classes. Defaults to ``max(y) + 1``.
        dtype: Data type of the result.

    Returns:
        An array of shape ``y.shape + (num_classes,)`` (after dropping a trailing size-1 axis) with a 1 at
        each label's index and 0 elsewhere.

    Raises:
        ValueError: If labels are negative, not integers, or not below ``num_classes``.
    """
    labels = np.asarray(y)
    if labels.dtype == object or not (
        np.issubdtype(labels.dtype, np.integer)
        or np.issubdtype(labels.dtype, np.floating)
        or labels.dtype == np.bool_
    ):
        raise ValueError(f"to_categorical expects integer class labels; got an array of dtype {labels.dtype}.")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(
                "to_categorical expects integer class labels; got non-integer values. Convert predictions to "
                "labels first, e.g. with argmax."
            )
    if labels.size and labels.dtype.kind in "fu" and labels.max() >= 2.0 ** 63:
        raise ValueError(f"to_categorical got label {labels.max()}, too large for a class label; "
                         "class labels are integers in [0, num_classes).")
    labels = labels.astype(np.int64)
    input_shape = labels.shape
    if len(input_shape) > 1 and input_shape[-1] == 1:
        input_shape = input_shape[:-1]
    labels = labels.reshape(-1)
    if labels.size and labels.min() < 0:
        raise ValueError(f"to_categorical got negative label {labels.min()}; class labels must be >= 0.")
    if num_classes is None:
        if labels.size == 0:
            raise ValueError("to_categorical cannot infer num_classes from empty labels; pass num_classes=.")
        num_classes = int(labels.max()) + 1
    else:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer; got num_classes={num_classes!r}.")
        num_classes = int(num_classes)
        if labels.size and labels.max() >= num_classes:
            raise ValueError(
                f"to_categorical got label {labels.max()} but num_classes={num_classes}; labels must lie in "
                f"[0, {num_classes}). Pass a larger num_classes or check the labels."
            )
    categorical = np.zeros((labels.size, num_classes), dtype=dtype)
    categorical[np.arange(labels.size), labels] = 1
    return categorical.reshape(input_shape + (num_classes,))


def normalize(x, axis=-1, order=2):
    """x divided by its `order`-norm along `axis` (zero vectors stay zero), as
    `keras.utils.normalize` on a numpy array."""
    array = np.asarray(x)
    if array.dtype.kind not in "fiub":
        raise ValueError(f"normalize takes a numeric array; got dtype {array.dtype}")
    array = array.astype(np.float32) if array.dtype.kind != "f" else array
    norm = np.atleast_1d(np.linalg.norm(array, order, axis))
    norm[norm == 0] = 1
    # (axis=None: the norm of the whole array, shaped as Keras's `axis or -1` shapes it)
    return array / np.expand_dims(norm, -1 if axis is None else axis)


# Keras utilities kcompile does not have: asking for one says so, instead of a bare AttributeError.
_KERAS_ONLY = {
    "get_file": "kcompile never downloads anything; fetch the file yourself and pass its path",
    "plot_model": "model.plot(path) draws the model's compiled graph (Graphviz), and model.summary() "
                  "lists its layers",
    "split_dataset": "slice the arrays (x[:n], x[n:]) or pass validation_split to fit",
    "timeseries_dataset_from_array": "build the windows with numpy (sliding_window_view)",
    "image_dataset_from_directory": "read the images into numpy arrays and pass them to fit",
    "text_dataset_from_directory": "read the texts and map them to id arrays with numpy",
    "audio_dataset_from_directory": "read the audio into numpy arrays and pass them to fit",
    "load_img": "read images with an image library (e.g. Pillow) into numpy arrays",
    "img_to_array": "np.asarray(image, dtype=np.float32) gives the array",
    "array_to_img": "write arrays as images with an image library (e.g. Pillow)",
    "save_img": "write arrays as images with an image library (e.g. Pillow)",
}


def __getattr__(name):
    if name in _KERAS_ONLY:
        raise AttributeError(f"kcompile.utils has no {name!r} (Keras's is not implemented): "
                             f"{_KERAS_ONLY[name]}")
    raise AttributeError(f"module 'kcompile.utils' has no attribute {name!r}")
