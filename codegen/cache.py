"""On-disk compile cache: the same IR on the same CPU is compiled once, later processes load the object file.

A full compile is the slow part.  Measured on a shared, noisy 2-core machine (so take the ranges, not a
figure): the module of examples/fashion_mnist_mlp.py's model (train, evaluate and predict compiled
together, batch 32) spent 1.0-1.4 s in LLVM's optimizer and code generator (`_compile`, timed around the
call in five runs with KCOMPILE_CACHE=0), and the first `train_on_batch` took 1.2-1.6 s in all (eleven
such runs); `kcompile bench --quick --peers none` gave 1.1-1.6 s for that model's compile + first step
with an empty cache directory, and 2.5-2.8 s for examples/fashion_mnist_cnn.py's CNN at batch 128.
Loading the same machine code from this cache took about 4 ms (1 ms to read the entry, 3 ms to link it),
and the whole first `train_on_batch` of a warm process 0.09-0.10 s (a program manifest spares it
tracing and the passes too).

The key is the sha256 of
  (format version, IR text, target.identity() = triple + CPU name + CPU features + llvmlite version, speed level),
so anything that could change the machine code changes the key; stale entries are never wrong, only unused.

Entry layout, one file `<key>.kco` per module:
    magic (8 bytes) | format version, object length, IR length (little-endian u32, u64, u64) |
    sha256 of everything after the header (32 bytes) | object files | optimized IR (UTF-8)
where "object files" is a u32 count and then a u64 length and the bytes of each object file (a module's
kernels and its GEMM library are two object files, linked when loaded).
NOTE: the optimized IR sits in the same file as the object rather than in a second file beside it, so one
atomic rename publishes both and one checksum covers both: an object can never be paired with the IR of
another writer, and a truncated or corrupt entry is detected (and recompiled) instead of reaching LLVM.

Program manifests, one JSON file `<key>.kcm` each, save a warm process the graph passes: keyed by the
graphs as traced (plus the compile options and the compiler's source), a manifest names the module entry
the passes led to and holds what a caller needs of them (entry signatures, workspace sizes), so a hit
goes from traced graphs straight to loaded machine code (`load_program`, `store_program`).

Concurrency: an entry is written to a temporary file in the cache directory and moved into place with
os.replace, which is atomic on POSIX; two processes compiling the same module both write complete entries
and the last rename wins.  Readers see either no entry or a complete one.  No fsync: after a power loss a
torn entry fails its checksum and is recompiled.

Where: `cache_dir` argument, else $KCOMPILE_CACHE_DIR, else $XDG_CACHE_HOME/kcompile, else
~/.cache/kcompile.  KCOMPILE_CACHE=0 turns the cache off.  A directory that cannot be written to gives one
warning and the process goes on compiling without storing (reading from it still works, so a read-only,
pre-filled cache is fine).  Nothing is ever evicted; delete the directory to reclaim the space.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import warnings
from pathlib import Path

from . import target
from . import jit
from .jit import JitModule

__all__ = ["compile_cached", "load_program", "store_program", "cache_directory", "cache_enabled",
           "cache_key", "FORMAT_VERSION"]

# Bump when the entry layout or the way code is generated for the JIT changes (target machine options,
# pass pipeline): old entries then simply stop matching.
FORMAT_VERSION = 2

_MAGIC = b"KCOBJ\x00\r\n"  # the \r\n catches text-mode mangling
_HEADER = struct.Struct("<8sIQQ32s")
_ENTRY_SUFFIX = ".kco"
_MANIFEST_SUFFIX = ".kcm"

_log = logging.getLogger(__name__)
_unwritable: set[str] = set()  # directories already warned about in this process


def cache_enabled() -> bool:
    """False when the environment says KCOMPILE_CACHE=0 (or false/no/off)."""
    return jit.env_flag("KCOMPILE_CACHE", default=True)


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory used: the argument, else $KCOMPILE_CACHE_DIR, else the XDG cache home's kcompile/."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("KCOMPILE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "kcompile"


def cache_key(ir_text: str, speed_level: int = 3) -> str:
    """sha256 hex digest naming the entry for this IR compiled for this machine at this speed level."""
    h = hashlib.sha256()
    # Length-prefixed fields, so no two different tuples hash the same byte string.
    for field in (f"kcompile-object-cache-v{FORMAT_VERSION}", target.identity(), str(speed_level),
                  f"unroll={jit.LOOP_UNROLLING}", ir_text):
        data = field.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def compile_cached(llvm_module=None, *, cache_dir: str | os.PathLike | None = None,
                   speed_level: int = 3, source_key: str | None = None, build=None) -> JitModule:
    """Compile `llvm_module` (an llvmlite.ir.Module or its IR text), or load it from the disk cache.

    With `source_key` (a string naming everything the module is made from) and `build` (a function
    returning the module), the entry is looked up before the module is even rendered: a hit costs
    neither lowering nor printing IR, which is what makes a warm process compile in milliseconds.

    Returns a JitModule: `.address(name)`, `.optimized_ir`, `.assembly()` and `.cache_hit`, which says
    whether the machine code was loaded from the cache.
    """
    if llvm_module is None and build is None:
        raise TypeError("compile_cached needs llvm_module, or source_key and build")
    if not cache_enabled():
        return _compile(llvm_module if llvm_module is not None else build(), speed_level)

    if source_key is not None:
        key = cache_key("source:" + source_key, speed_level)
        ir_text = None
    else:
        ir_text = str(llvm_module)
        key = cache_key(ir_text, speed_level)
    directory = cache_directory(cache_dir)
    path = directory / (key + _ENTRY_SUFFIX)

    entry = _read_entry(path)
    if entry is not None:
        objects, optimized_ir = entry
        module = JitModule.from_objects(objects, optimized_ir)
        module.cache_hit = True
        module.cache_key = key
        return module

    built = ir_text if ir_text is not None else llvm_module if llvm_module is not None else build()
    module = _compile(built, speed_level)
    _write_entry(directory, path, module.objects, module.optimized_ir)
    module.cache_key = key
    return module


def _compile(built, speed_level: int) -> JitModule:
    """Machine code of one module, or of a list of modules linked together (compiled side by side)."""
    if isinstance(built, (list, tuple)):
        results = jit.compile_objects(list(built), speed_level)
        return JitModule.from_objects([code for code, _ in results],
                                      jit.MODULE_SEPARATOR.join(text for _, text in results))
    return JitModule(built, speed_level=speed_level, keep_object=True)


def _read_entry(path: Path):
    """(object bytes, optimized IR) from a valid entry; None when it is missing, unreadable or corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:  # unreadable, or a path component is not a directory
        _log.debug("compile cache: cannot read %s: %s", path, error)
        return None
    if len(data) < _HEADER.size:
        return _corrupt(path, "shorter than its header")
    magic, version, object_length, ir_length, digest = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != FORMAT_VERSION:
        return _corrupt(path, "bad magic or format version")
    payload = memoryview(data)[_HEADER.size:]
    if len(payload) != object_length + ir_length:
        return _corrupt(path, f"{len(payload)} payload bytes, header says {object_length + ir_length}")
    if hashlib.sha256(payload).digest() != digest:
        return _corrupt(path, "checksum mismatch")
    try:
        optimized_ir = bytes(payload[object_length:]).decode("utf-8")
    except UnicodeDecodeError:
        return _corrupt(path, "IR is not UTF-8")
    objects = _unframe(bytes(payload[:object_length]))
    if objects is None:
        return _corrupt(path, "bad object framing")
    return objects, optimized_ir


def _frame(objects: list) -> bytes:
    """The object files of an entry as one field: count, then (length, bytes) each."""
    parts = [struct.pack("<I", len(objects))]
    for code in objects:
        parts += [struct.pack("<Q", len(code)), bytes(code)]
    return b"".join(parts)


def _unframe(data: bytes):
    try:
        (count,), offset, objects = struct.unpack_from("<I", data), 4, []
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            objects.append(data[offset:offset + length])
            offset += length
    except struct.error:
        return None
    if offset != len(data) or not objects or any(not o for o in objects):
        return None
    return objects


def _corrupt(path: Path, reason: str):
    # Not worth a user-facing warning: the entry is recompiled and overwritten right away.
    _log.warning("compile cache: ignoring corrupt entry %s (%s); recompiling", path, reason)
    return None


def _write_entry(directory: Path, path: Path, objects: list, optimized_ir: str) -> None:
    object_code = _frame(objects)
    ir_bytes = optimized_ir.encode("utf-8")
    digest = hashlib.sha256(object_code + ir_bytes).digest()
    header = _HEADER.pack(_MAGIC, FORMAT_VERSION, len(object_code), len(ir_bytes), digest)
    _publish(directory, path, (header, object_code, ir_bytes))


def _read_umask() -> int:
    mask = os.umask(0)     # (the only way to read it; done once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _publish(directory: Path, path: Path, chunks) -> None:
    """Write `chunks` (bytes) to a temporary file in `directory` and rename it to `path` (atomic)."""
    if str(directory) in _unwritable:
        return
    temporary = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=path.stem[:16] + ".", suffix=".tmp")
        # NOTE: mkstemp makes the file 0600; a cache filled by one user is read by others (a
        # read-only, pre-filled cache), so it gets the mode a plain open() would give
        os.chmod(temporary, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        _unwritable.add(str(directory))
        warnings.warn(
            f"kcompile: cannot write the compile cache in {directory} ({error}); compiling without caching. "
            "Set KCOMPILE_CACHE_DIR to a writable directory, or KCOMPILE_CACHE=0 to turn the cache off.",
            RuntimeWarning, stacklevel=4)
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------
# Program manifests: what the passes made of a set of graphs, so that a hit skips them
# ----------------------------------------------------------------------------------------------

def _manifest_path(description: str, cache_dir, speed_level: int) -> Path:
    return cache_directory(cache_dir) / (cache_key("program:" + description, speed_level) + _MANIFEST_SUFFIX)


def load_program(description: str, *, cache_dir: str | os.PathLike | None = None, speed_level: int = 3):
    """(JitModule, data) stored by `store_program` under the same description, or None.

    `description` names everything a program is made from (its graphs as traced, the compile
    options, the compiler's own source); `data` is the JSON value stored with it (what the passes
    computed that a caller needs: entry signatures, workspace sizes).  A missing, damaged or
    foreign manifest, or one whose module entry is gone, is a miss."""
    if not cache_enabled():
        return None
    path = _manifest_path(description, cache_dir, speed_level)
    try:
        manifest = json.loads(path.read_bytes())
        module_key, data = manifest["module"], manifest["data"]
        if manifest["format"] != FORMAT_VERSION or not isinstance(module_key, str) \
                or len(module_key) != 64 or any(c not in "0123456789abcdef" for c in module_key):
            raise ValueError("bad manifest fields")
        # NOTE: the data sizes buffers the native code writes: an edited or damaged manifest must
        # be a miss, not a crash
        if manifest.get("digest") != _manifest_digest(module_key, data):
            raise ValueError("checksum mismatch")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        _log.warning("compile cache: ignoring unreadable manifest %s (%s)", path, error)
        return None
    entry = _read_entry(path.parent / (module_key + _ENTRY_SUFFIX))
    if entry is None:
        return None
    module = JitModule.from_objects(*entry)
    module.cache_hit = True
    module.cache_key = module_key
    return module, data


def store_program(description: str, module: JitModule, data, *,
                  cache_dir: str | os.PathLike | None = None, speed_level: int = 3) -> None:
    """Remember `data` (a JSON value) and `module`'s cache entry under `description`."""
    module_key = getattr(module, "cache_key", None)
    if not cache_enabled() or module_key is None:
        return
    path = _manifest_path(description, cache_dir, speed_level)
    text = json.dumps({"format": FORMAT_VERSION, "module": module_key, "data": data,
                       "digest": _manifest_digest(module_key, data)})
    _publish(path.parent, path, (text.encode("utf-8"),))


def _manifest_digest(module_key: str, data) -> str:
    return hashlib.sha256(json.dumps([module_key, data], sort_keys=True).encode("utf-8")).hexdigest()
