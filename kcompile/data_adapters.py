"""Where `fit`, `evaluate` and `predict` get batches when they are not given arrays, and the sample
weights Keras derives from `class_weight`.

A batch source is a Python generator or iterator, an iterable that is not array-like (re-iterated
every epoch, e.g. a torch DataLoader), or a sequence with `__len__` (or `num_batches`) and
`__getitem__(index)` (Keras's `PyDataset`, here `kcompile.utils.PyDataset`; its `on_epoch_begin()`
and `on_epoch_end()` are called around each epoch).  Each batch is `x`, `(x,)`, `(x, y)` or
`(x, y, sample_weight)`.

Steps per epoch follow Keras 3's `EpochIterator`: without `steps_per_epoch` an epoch runs until the
source is exhausted (a generator is then empty for the next epoch: training stops with a warning);
with it, an epoch takes that many batches and the next epoch continues where it stopped.  A
sequence's epoch ends early, with a warning, at the end of a pass (never reading a batch twice in
one epoch), and the next epoch starts a new pass; a re-iterable starts over when exhausted; a
generator cannot, and training stops with a warning.  A PyDataset whose `num_batches` is None is
endless: its batches are read by index 0, 1, 2, ... across epochs (give `steps_per_epoch`).
Validation data that can start over (a sequence, a re-iterable) does so for every evaluation, so
that `validation_steps` evaluates the same batches every epoch; a generator (without
`validation_steps`) is read once, and its batches are kept and evaluated again after every epoch,
so that each epoch has its `val_` logs as in Keras.
"""
from __future__ import annotations

import itertools
import math
import numbers
import warnings

import numpy as np

from kcompile.schedules import FLOAT32_MAX
from kcompile.utils.random import get_generator


def is_batch_source(data) -> bool:
    """Whether `data` yields batches (a generator, iterator, iterable or sequence), rather than being
    an array of samples."""
    if data is None or isinstance(data, (np.ndarray, list, tuple, dict, str, bytes, numbers.Number)):
        return False
    if hasattr(data, "__array__") or hasattr(data, "shape"):
        return False  # array-likes (torch and jax arrays, pandas frames) are samples
    return hasattr(data, "__next__") or hasattr(data, "__iter__") or (
        hasattr(data, "__getitem__") and hasattr(data, "__len__"))


def unpack_dataset(x, y, sample_weight):
    """fit's and evaluate's (x, y, sample_weight), where `x` may be the whole dataset as an
    (x, y) or (x, y, sample_weight) tuple of arrays, with `y` and `sample_weight` not given (the
    seed document writes `model.fit(train_data)`; a tuple of batches is read the same way).  Only
    a tuple of arrays of one length and of different shapes, which could not be one array of
    samples, is read so."""
    if y is not None or sample_weight is not None or not isinstance(x, tuple) or len(x) not in (2, 3):
        return x, y, sample_weight
    shapes = [getattr(v, "shape", None) for v in x]
    if any(shape is None or len(shape) == 0 for shape in shapes) \
            or len({shape[0] for shape in shapes}) != 1 or len({tuple(shape) for shape in shapes}) == 1:
        return x, y, sample_weight
    return (x[0], x[1], None) if len(x) == 2 else tuple(x)


def unpack_batch(batch, argument: str):
    """(x, y, sample_weight) of one batch, Keras's `unpack_x_y_sample_weight`."""
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple):
        return batch, None, None
    if len(batch) == 1:
        return batch[0], None, None
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 3:
        return batch
    raise ValueError(f"Each batch of `{argument}` must be x, (x,), (x, y) or (x, y, sample_weight); got "
                     f"a tuple of {len(batch)} elements")


def check_sample_weight(sample_weight, samples: int, argument: str = "sample_weight") -> np.ndarray:
    """One float32 weight per sample (shape (samples,) or (samples, 1)), C-contiguous, finite.
    Per-time-step weights (samples, timesteps), which Keras takes for a sequence output, are not
    supported yet: they are refused with a message saying so."""
    try:
        weights = np.asarray(sample_weight, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"`{argument}` must be an array of numbers, one per sample; got "
                         f"{type(sample_weight).__name__}") from None
    if weights.ndim == 2 and weights.shape[1] == 1:
        weights = weights[:, 0]
    if weights.ndim >= 2 and len(weights) == samples:
        raise ValueError(f"`{argument}` has shape {weights.shape}: one weight per sample and time "
                         "step (or per output element), which kcompile does not support yet; "
                         f"give one weight per sample, shape ({samples},), or weight the time "
                         "steps in a custom loss")
    if weights.ndim != 1 or len(weights) != samples:
        raise ValueError(f"`{argument}` must hold one weight per sample ({samples} of them, shape "
                         f"({samples},)); got shape {weights.shape}")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"`{argument}` holds NaN or infinite weights")
    return np.ascontiguousarray(weights)


def check_class_weight(class_weight):
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict):
        raise ValueError("`class_weight` must be a dict mapping class indices (integers) to weights, "
                         f"e.g. {{0: 1.0, 1: 5.0}}; got {type(class_weight).__name__}")
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise ValueError(f"`class_weight` keys must be integer class indices; got {key!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"`class_weight` values must be numbers; got {value!r} for class {key}")
        if not abs(float(value)) <= FLOAT32_MAX:   # (float32 in the step)
            raise ValueError(f"`class_weight` holds a NaN or infinite weight (or one beyond float32's "
                             f"range, {value!r}) for class {key}; give every class a finite weight")
    return {int(k): float(v) for k, v in class_weight.items()}


def class_weight_to_sample_weights(y, class_weight: dict) -> np.ndarray:
    """Keras 3's rule: the class of a sample is argmax(y) for one-hot targets, else the (rounded)
    label; samples of classes missing from the dict weigh 1."""
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else np.squeeze(y, axis=-1)
    if y.ndim != 1:
        raise ValueError("`class_weight` needs one class per sample: integer labels, one-hot rows or "
                         f"one 0/1 column; got targets of shape {np.shape(y)}")
    labels = np.round(y).astype(np.int64)
    weights = np.ones(len(labels), np.float32)
    for label, weight in class_weight.items():
        weights[labels == label] = weight
    return weights


def _has_num_batches(source) -> bool:
    try:
        return isinstance(getattr(source, "num_batches", None), numbers.Integral)
    except NotImplementedError:
        return False


def _num_batches_is_none(source) -> bool:
    try:
        return getattr(source, "num_batches", 0) is None
    except NotImplementedError:
        return False


def _batches(source) -> int:
    """Batches per epoch of a sequence: len(), or a PyDataset's num_batches."""
    return len(source) if hasattr(source, "__len__") else int(source.num_batches)


def _copied(batch):
    if isinstance(batch, np.ndarray):
        return batch.copy()
    if isinstance(batch, (tuple, list)):
        return type(batch)(_copied(part) for part in batch)
    if isinstance(batch, dict):
        return {key: _copied(value) for key, value in batch.items()}
    return batch


class BatchStream:
    """Batches of a batch source, epoch after epoch (see the module docstring)."""

    def __init__(self, source, steps_per_epoch=None, shuffle=False, argument="x", replay=False):
        self.source = source
        self.steps_per_epoch = steps_per_epoch
        self.shuffle = shuffle
        self.argument = argument
        # `replay`: a one-shot iterator gives the batches of its first epoch again in later
        # epochs, kept from the first (validation data evaluated every epoch, on the same
        # batches as in Keras: all of them, or the first `validation_steps` of an endless one)
        self._recorded = [] if replay else None
        self._replaying = False
        self.is_sequence = (not hasattr(source, "__next__") and hasattr(source, "__getitem__")
                            and (hasattr(source, "__len__") or _has_num_batches(source)))
        # a PyDataset with num_batches None: endless, read by index as a one-way iterator
        self.is_endless = (not self.is_sequence and not hasattr(source, "__next__")
                           and hasattr(source, "__getitem__") and _num_batches_is_none(source))
        self.is_iterator = hasattr(source, "__next__") or self.is_endless
        self._iterator = source if hasattr(source, "__next__") else (
            (source[index] for index in itertools.count()) if self.is_endless else None)
        self._pending = []
        self._order = None
        self._position = 0
        self.ran_out = False

    @property
    def steps(self) -> int | None:
        """Batches per epoch, if known."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if self.is_sequence:
            return _batches(self.source)
        if not self.is_iterator and hasattr(self.source, "__len__"):
            try:
                return len(self.source)
            except TypeError:
                return None
        return None

    def peek(self):
        """The first batch, without consuming it from the next epoch."""
        if self.is_sequence:
            if _batches(self.source) == 0:
                raise ValueError(f"`{self.argument}` has no batches (len 0)")
            return self.source[0]
        if self._iterator is None:
            self._iterator = iter(self.source)
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise ValueError(f"`{self.argument}` yielded no batches") from None
        self._pending.append(batch)
        return batch

    def rewind(self):
        """Start the next epoch from the source's first batch, when the source can start over (a
        sequence, a re-iterable): how every evaluation of validation data reads the same batches."""
        if self._replaying or self.is_iterator:
            return
        self._order, self._position = None, 0
        if not self.is_sequence:
            self._iterator, self._pending = None, []

    def _next_from_iterator(self, restart: bool):
        if self._pending:
            return self._pending.pop(0)
        if self._iterator is None:
            self._iterator = iter(self.source)
        try:
            return next(self._iterator)
        except StopIteration:
            if not restart or self.is_iterator:
                raise
        self._iterator = iter(self.source)
        return next(self._iterator)  # an empty re-iterable raises StopIteration again

    def _next_from_sequence(self):
        if self._order is None or self._position >= len(self._order):
            count = _batches(self.source)
            self._order = (get_generator().permutation(count) if self.shuffle else np.arange(count))
            self._position = 0
            if count == 0:
                raise StopIteration
        index = int(self._order[self._position])
        self._position += 1
        return self.source[index]

    def epoch(self):
        """Yield one epoch's batches; sets `ran_out` when the source could not fill the epoch."""
        if self._replaying:
            yield from self._recorded
            return
        replay = self._recorded is not None and self.is_iterator
        steps = self.steps_per_epoch
        yielded = 0
        if not self.is_sequence and steps is None and not self.is_iterator and not self._pending:
            self._iterator = iter(self.source)  # a re-iterable: a fresh pass every epoch
        if self.is_sequence and steps is None:
            self._order = None  # a full pass, reshuffled
        pyd_hooks = self.is_sequence or self.is_endless
        if pyd_hooks and hasattr(self.source, "on_epoch_begin"):
            self.source.on_epoch_begin()
        pass_ended = False
        while steps is None or yielded < steps:
            try:
                if self.is_sequence:
                    if self._order is not None and self._position >= len(self._order) \
                            and (steps is None or yielded):
                        # the end of a pass ends the epoch (early, with steps_per_epoch)
                        pass_ended = steps is not None
                        break
                    batch = self._next_from_sequence()
                else:
                    batch = self._next_from_iterator(restart=steps is not None)
            except StopIteration:
                break
            yielded += 1
            if replay:   # copies: a generator may refill one buffer batch after batch
                self._recorded.append(_copied(batch))
            yield batch
        if replay and yielded:
            self._replaying = True
            return
        if pass_ended:
            self._order = None   # the next epoch: a new pass
            warnings.warn(f"Your input ran out of data: the pass over the {_batches(self.source)} "
                          f"batches of `{self.argument}` ended after {yielded} of this epoch's "
                          f"{steps} steps; the epoch ends there, and the next one starts a new "
                          "pass.", stacklevel=2)
        elif (steps is not None and yielded < steps) or yielded == 0:
            self.ran_out = True
            warnings.warn("Your input ran out of data; interrupting training. Make sure that your "
                          "dataset or generator can generate at least `steps_per_epoch * epochs` "
                          "batches.", stacklevel=2)
        if pyd_hooks and hasattr(self.source, "on_epoch_end"):
            self.source.on_epoch_end()
