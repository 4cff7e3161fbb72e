"""The library's global random state.

Everything random in kcompile (weight initializers, dropout seeds, shuffling) draws from one module-global
``numpy.random.Generator``, so ``set_random_seed(seed)`` makes a whole run reproducible. Until a seed is set
the generator starts from fresh OS entropy, as Keras does.
"""

import numbers
import random
import threading

import numpy as np

from kcompile.errors import ArgumentTypeError

_MAX_SEED = 2**32  # numpy.random.seed accepts [0, 2**32); use the same range everywhere.

_lock = threading.Lock()
_generator = None


def _validate_seed(seed):
    """Returns ``seed`` as a python int, or raises if it is not an integer in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        # (Keras 3 raises a ValueError here)
        raise ArgumentTypeError(f"Expected `seed` to be an integer; received seed={seed!r} of type "
                                f"{type(seed).__name__}.")
    seed = int(seed)
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"Expected `seed` to be an integer in [0, 2**32); received seed={seed}.")
    return seed


def set_random_seed(seed):
    """Seeds kcompile's global generator, python's ``random`` and ``numpy.random``, like Keras.

    Args:
        seed: Integer in [0, 2**32).

    Raises:
        TypeError: If ``seed`` is not an integer.
        ValueError: If ``seed`` is negative or not below 2**32.
    """
    global _generator
    seed = _validate_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    with _lock:
        _generator = np.random.default_rng(seed)


def get_generator():
    """Returns the global ``numpy.random.Generator``, creating it from fresh entropy if no seed was set."""
    global _generator
    with _lock:
        if _generator is None:
            _generator = np.random.default_rng()
        return _generator


def next_seed():
    """Returns a python int in [0, 2**32) drawn from the global generator, to seed one random operation."""
    return int(get_generator().integers(0, _MAX_SEED, dtype=np.uint64))
