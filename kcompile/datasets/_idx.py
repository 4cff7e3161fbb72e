"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <number of dims>``, then one big-endian ``uint32``
per dimension, then the array payload in big-endian C order. Files may be gzip-compressed (``.gz``).

Every problem with a file (bad gzip stream, wrong magic, unknown dtype code, truncated header or payload,
trailing bytes) raises ``ValueError`` naming the file, so a half-downloaded or corrupt copy is reported as
such instead of surfacing later as a strange array shape.
"""

import gzip
import os
import struct
import zlib

import numpy as np

# IDX type codes and the big-endian numpy dtype each one stores.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}


def _read_bytes(path):
    """Returns the (decompressed, if the name ends in ``.gz``) contents of ``path``."""
    path = os.fspath(path)
    if not path.endswith(".gz"):
        with open(path, "rb") as file:
            return file.read()
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError, zlib.error) as error:
        # NOTE: gzip reports a truncated stream as EOFError and a damaged one as BadGzipFile (an OSError) or
        # zlib.error; all mean the same thing to the user.
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(
            f"{path} is not a valid gzip file ({error}). The file is probably truncated or corrupt: delete it "
            f"and reinstall or re-copy it."
        ) from error


def parse_idx(data, name="<bytes>"):
    """Parses the bytes of an uncompressed IDX file into a native-endian numpy array.

    Args:
        data: The file contents.
        name: How to refer to the data in error messages (usually the file path).

    Returns:
        A numpy array with the dimensions and dtype recorded in the header.

    Raises:
        ValueError: If the header or the payload length is invalid.
    """
    if len(data) < 4:
        raise ValueError(f"{name} is not an IDX file: it holds only {len(data)} bytes, fewer than the 4-byte header.")
    zero_0, zero_1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero_0 != 0 or zero_1 != 0:
        raise ValueError(
            f"{name} is not an IDX file: its magic number starts with bytes {zero_0:#04x} {zero_1:#04x} instead of "
            f"0x00 0x00. If it is compressed, give it a '.gz' name so it is decompressed."
        )
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"{code:#04x}" for code in IDX_DTYPES)
        raise ValueError(f"{name} has unknown IDX data type code {type_code:#04x}; known codes are {known}.")
    if ndim == 0:
        raise ValueError(f"{name} declares 0 dimensions in its IDX header; an IDX array needs at least one.")
    header_length = 4 + 4 * ndim
    if len(data) < header_length:
        raise ValueError(
            f"{name} is truncated: its header declares {ndim} dimensions, which needs {header_length} header bytes, "
            f"but the file holds only {len(data)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_length])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_length
    if found < expected:
        raise ValueError(
            f"{name} is truncated: shape {shape} of {dtype.newbyteorder('=').name} needs {expected} bytes of data "
            f"but the file holds {found}. Delete it and reinstall or re-copy it."
        )
    if found > expected:
        raise ValueError(
            f"{name} is corrupt: shape {shape} of {dtype.newbyteorder('=').name} needs {expected} bytes of data "
            f"but the file holds {found} ({found - expected} extra bytes)."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_length).reshape(shape)
    # Native byte order and a writable copy, so callers get an ordinary array.
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path):
    """Reads an IDX file, gzip-compressed if its name ends in ``.gz``.

    Args:
        path: Path of the file.

    Returns:
        A native-endian numpy array.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a valid IDX file (the message names the file and the problem).
    """
    path = os.fspath(path)
    return parse_idx(_read_bytes(path), name=path)


def write_idx(path, array):
    """Writes ``array`` as an IDX file, gzip-compressed if ``path`` ends in ``.gz``.

    Args:
        path: Destination path.
        array: Array of dtype uint8, int8, int16, int32, float32 or float64 with 1 to 255 dimensions.
    """
    path = os.fspath(path)
    array = np.asarray(array)
    code = _DTYPE_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"IDX files cannot store dtype {array.dtype}; convert the array to one of "
            f"{', '.join(dtype.newbyteorder('=').name for dtype in IDX_DTYPES.values())} first."
        )
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX files store 1 to 255 dimensions; got an array of shape {array.shape}.")
    if max(array.shape) >= 2 ** 32:
        raise ValueError(f"IDX files store dimensions below 2**32 (a 4-byte header field each); got an "
                         f"array of shape {array.shape}.")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(header + payload)


def find_idx_file(directory, base_names):
    """Returns the first existing file among ``base_names`` (each tried plain and with ``.gz``), or None."""
    for base_name in base_names:
        for file_name in (base_name + ".gz", base_name):
            candidate = os.path.join(directory, file_name)
            if os.path.isfile(candidate):
                return candidate
    return None


# The four files of an MNIST-style dataset, each with the spellings found in the wild.
SPLIT_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def missing_split_files(directory):
    """Returns the canonical names of the MNIST-style files not found in ``directory``."""
    return [names[0] for names in SPLIT_FILES.values() if find_idx_file(directory, names) is None]


def load_split_directory(directory):
    """Loads ``(x_train, y_train), (x_test, y_test)`` from the four IDX files in ``directory``.

    The caller checks beforehand that the files exist (see ``missing_split_files``), so it can word the
    FileNotFoundError for its dataset.

    Raises:
        ValueError: If a file is invalid, images are not 3-D uint8, labels are not 1-D uint8, or the image and
            label counts of a split differ.
    """
    arrays = {key: read_idx(find_idx_file(directory, names)) for key, names in SPLIT_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        image_file = find_idx_file(directory, SPLIT_FILES[f"x_{split}"])
        label_file = find_idx_file(directory, SPLIT_FILES[f"y_{split}"])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{image_file} should hold uint8 images of shape (count, rows, columns) but holds "
                f"{images.dtype} of shape {images.shape}; check that the file is an images file."
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(
                f"{label_file} should hold uint8 labels of shape (count,) but holds {labels.dtype} of shape "
                f"{labels.shape}; check that the file is a labels file."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels; the two "
                f"files come from different datasets or one is damaged."
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
