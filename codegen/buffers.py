"""Host buffers for compiled code: numpy arrays whose data starts on a 64-byte boundary.

numpy only (the reference target uses it without llvmlite).  64 bytes is a cache line and an AVX-512
vector: the kernels read and write whole vectors, and a vector of a misaligned buffer straddles two
lines.  numpy itself only promises 16-byte alignment (a 784x512 float32 weight started 48 bytes past
a line in one measured process).
"""
from __future__ import annotations

import numpy as np

ALIGN = 64

# Writes to persistent buffers (weights, optimizer slots) so far: runs of compiled graphs that update
# their state in place (codegen.runtime) and writes noted with note_write (a variable's assign).  A
# property of the weights computed at some count (kcompile's check that they are finite) holds while
# the count stays the same.
_writes = [0]


def note_write() -> None:
    _writes[0] += 1


def writes() -> int:
    return _writes[0]


def aligned_empty(nbytes: int) -> np.ndarray:
    """A uint8 buffer of at least `nbytes` whose data pointer is ALIGN-byte aligned."""
    raw = np.empty(max(nbytes, 1) + ALIGN, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGN
    return raw[offset:offset + max(nbytes, 1)]


def aligned_copy(value, dtype) -> np.ndarray:
    """A C-contiguous copy of `value` as `dtype`, its data ALIGN-byte aligned."""
    source = np.asarray(value, dtype=dtype)
    out = aligned_empty(source.nbytes)[:source.nbytes].view(source.dtype).reshape(source.shape)
    out[...] = source
    return out
