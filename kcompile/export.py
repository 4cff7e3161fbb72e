"""Exporting a trained model as a compiled predictor directory (see `kcompile.predictor`).

    DIR/libmodel.so   the predictor, weights embedded, depending only on libc
    DIR/model.o       the object file it was linked from
    DIR/model.h       the C interface (documented there)
    DIR/example.c     a C program that classifies rows read from a file; build command inside
    DIR/manifest.json shapes, dtypes, layer summary, version, target CPU, hashes, symbol prefix

Without a name the functions are `kcompile_predict` and so on.  With `name='mnist'` the files are
libmnist.so, mnist.o and mnist.h, the functions `mnist_predict`, ..., the macros `MNIST_OK`, ...
and the header guard KCOMPILE_mnist_H (the name as given: names that differ only in case
get distinct guards), so that models with different names link into one program.
A failed export leaves no directory behind that it created.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import numpy as np

import ir
from ir import build as B
from ir.graph import rebuild

from .predictor import ABI_VERSION, FORMAT, MANIFEST, PredictorError, _sha256, read_manifest

EXAMPLE_C = r"""/* example.c: classify rows with the exported kcompile predictor.
 *
 * Build and run (from this directory):
 *     {build}
 *     ./example input.f32 ROWS
 * input.f32 holds ROWS rows of float32 values (row-major, {row} values per row).
 * Prints, per row, the index of the largest output (the output itself when there is only one).
 */
#include <stdio.h>
#include <stdlib.h>
#include "{file}.h"

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s input.f32 ROWS\n", argv[0]); return 2; }
    long rows = atol(argv[2]);
    if (rows <= 0) { fprintf(stderr, "ROWS must be positive\n"); return 2; }
    float *x = malloc(sizeof(float) * (size_t)rows * {row});
    float *out = malloc(sizeof(float) * (size_t)rows * {classes});
    FILE *f = fopen(argv[1], "rb");
    if (!x || !out || !f) { fprintf(stderr, "cannot read %s\n", argv[1]); return 1; }
    if (fread(x, sizeof(float) * {row}, (size_t)rows, f) != (size_t)rows) {
        fprintf(stderr, "%s holds fewer than %ld rows\n", argv[1], rows); return 1;
    }
    fclose(f);
    int status = {prefix}_predict(x, rows, out);
    if (status != {macro}_OK) { fprintf(stderr, "{prefix}_predict failed: %d\n", status); return 1; }
    for (long r = 0; r < rows; r++) {
        if ({classes} == 1) { printf("%g\n", out[r]); continue; }
        int best = 0;
        for (int c = 1; c < {classes}; c++)
            if (out[r * {classes} + c] > out[r * {classes} + best]) best = c;
        printf("%d\n", best);
    }
    free(x); free(out);
    return 0;
}
"""


def freeze(graph: ir.Graph, params: dict) -> ir.Graph:
    """Replace the parameter inputs of `graph` by constants holding `params` (name -> array)."""
    def rewrite(node, operands):
        if node.op == "arg" and node.attr("name") in params:
            return B.const(np.asarray(params[node.attr("name")]), node.dtype)
        if operands == node.operands:
            return node
        return ir.ops.make(node.op, operands, **node.attr_dict)
    frozen = rebuild(graph, rewrite)
    inputs = [n for n in frozen.inputs if n.op == "arg"]
    return ir.Graph(graph.name, inputs, frozen.outputs)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_name(name) -> None:
    """ValueError unless `name` (an export's name= argument) can name C functions and files."""
    if name is None:
        return
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 64:
        hint = ""
        if isinstance(name, str) and name:
            fixed = re.sub(r"[^A-Za-z0-9_]", "_", name)[:64]
            hint = f" such as {('_' + fixed if fixed[0].isdigit() else fixed)!r}"
        raise ValueError(f"export name {name!r} must be a C identifier (letters, digits and "
                         "underscores, not starting with a digit, at most 64 characters): it "
                         f"prefixes the C functions and names the files; pass one{hint}")


def export_predictor(graph: ir.Graph, params: dict, directory: str, *, layers=(), version="0",
                     cpu: str | None = None, features: str | None = None,
                     fusion_level: int = 1, name: str | None = None,
                     ids_below: int | None = None) -> str:
    """Compile `graph` (input 'x' + params -> one output) with `params` frozen in, into `directory`.

    `ids_below` N: the input is ids into an Embedding of N rows; the predictor refuses values
    outside [0, N) (the manifest's "input_ids_below"), as model.predict does.

    `name`: None gives libmodel.so, model.h and functions `kcompile_predict`, ...; a C identifier N
    gives libN.so, N.h and functions `N_predict`, ... (see the module docstring)."""
    check_name(name)
    if not directory:
        raise ValueError("cannot export to an empty path: pass the directory to write the "
                         "predictor into")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"cannot export to {directory}: it is a file; exports are directories (pass a "
                         "new or existing directory path)")
    _check_nothing_of_the_users_is_overwritten(directory, name)
    created = _first_missing(directory)
    # the directory, or the parent the export creates it in, must take new files (a clear message
    # rather than the OSError of a temporary file deep in the linking)
    existing = directory if created is None else os.path.dirname(created)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot export to {directory}: {existing} is a file, not a directory; "
                         "pass a path whose parents are directories")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot export to {directory}: {existing} is not writable (a read-only "
                         "file system or directory); pass a directory you can write to")
    try:
        return _export(graph, params, directory, layers=layers, version=version, cpu=cpu,
                       features=features, fusion_level=fusion_level, name=name,
                       ids_below=ids_below)
    except BaseException as error:
        # (export_graph checks the target and generates the code before it creates the directory;
        # a later failure, linking, removes what this export created)
        if created is not None and os.path.isdir(created):
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(error, OSError) and error.errno is not None and \
                not str(error).startswith("cannot export"):
            # (a bare "[Errno 28] No space left on device: '.../.libmodel.so.tmp'" does not say
            # what failed)
            where = f" ({error.filename})" if error.filename else ""
            raise type(error)(error.errno, f"cannot export to {directory}: {error.strerror}"
                                           f"{where}") from error
        raise


def _check_nothing_of_the_users_is_overwritten(directory: str, name: str | None) -> None:
    """An export replaces its files in a directory that holds an earlier export (a kcompile
    manifest); in any other directory, a file of the user's with one of their names is refused."""
    if not os.path.isdir(directory):
        return
    file = "model" if name is None else name
    ours = [f"lib{file}.so", f"{file}.o", f"{file}.h", "example.c", MANIFEST]
    taken = [f for f in ours if os.path.lexists(os.path.join(directory, f))]
    if not taken:
        return
    try:
        read_manifest(directory)
        return          # an earlier export: re-exporting replaces it
    except PredictorError:
        pass
    raise ValueError(f"cannot export to {directory}: it already holds {', '.join(taken)}, and it is "
                     "not an earlier export (no kcompile manifest.json), so the export would "
                     "overwrite files of yours; export into a new or empty directory, or move those "
                     "files away")


def _first_missing(directory: str) -> str | None:
    """The outermost of `directory` and its parents that does not exist yet (what an export to
    it creates), or None."""
    path, missing = os.path.abspath(directory), None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _export(graph, params, directory, *, layers, version, cpu, features, fusion_level, name,
            ids_below):
    from codegen.export import DEFAULT_PREFIX, export_graph
    from codegen.compiler import CompileOptions, optimize_graph

    file, prefix = ("model", DEFAULT_PREFIX) if name is None else (name, name)
    frozen = optimize_graph(freeze(graph, params), CompileOptions())
    x, (_, y) = frozen.inputs[0], frozen.outputs[0]
    row = int(np.prod([d for d in x.shape[1:]], dtype=np.int64))
    classes = int(np.prod([d for d in y.shape[1:]], dtype=np.int64))
    build = f"cc -O2 -o example example.c -L. -l{file} -Wl,-rpath,'$ORIGIN'"
    example = EXAMPLE_C
    for key, value in (("{row}", str(row)), ("{classes}", str(classes)), ("{file}", file),
                       ("{prefix}", prefix), ("{macro}", prefix.upper()), ("{build}", build)):
        example = example.replace(key, value)
    digest = hashlib.sha256()
    for param in sorted(params):
        digest.update(param.encode())
        digest.update(np.ascontiguousarray(params[param]).tobytes())

    def example_and_manifest(paths, library):
        # written with the library, header and object, and moved into place after them (the
        # manifest last): a failed export leaves a directory's earlier export whole
        library_sha = _sha256(library)
        manifest = {
            "format": FORMAT,
            "abi_version": ABI_VERSION,
            "kcompile_version": version,
            "name": name,
            "symbol_prefix": prefix,
            "library": os.path.basename(paths["library"]),
            "object": os.path.basename(paths["object"]),
            "header": os.path.basename(paths["header"]),
            "library_sha256": library_sha,
            "input_shape": list(x.shape), "input_dtype": "float32",
            "input_ids_below": ids_below,
            "output_shape": list(y.shape), "output_dtype": "float32",
            "layers": list(layers),
            "target_cpu": paths["cpu"],
            "target_features": paths["features"],
            "weights_sha256": digest.hexdigest(),
            "workspace": paths["workspace"],
            "build_example": build,
        }
        return {"example.c": example.encode(), MANIFEST: json.dumps(manifest, indent=2).encode()}

    previous = _files_of_earlier_export(directory)
    paths = export_graph(frozen, directory, name=file, prefix=prefix, version=version, cpu=cpu,
                         features=features, extra_files=example_and_manifest, ids_below=ids_below)
    # an earlier export under another name leaves no library or header for a C program to pick up
    # by mistake (once the new export is whole)
    for stale in previous - {os.path.basename(paths[k]) for k in ("library", "object", "header")}:
        try:
            os.unlink(os.path.join(directory, stale))
        except FileNotFoundError:
            pass
    return directory


def _files_of_earlier_export(directory: str) -> set:
    """The library, object and header files the export already in `directory` wrote (its
    manifest's), or an empty set."""
    try:
        manifest = read_manifest(directory)
    except PredictorError:
        return set()
    return {f for f in (manifest.get(k) for k in ("library", "object", "header"))
            if isinstance(f, str) and f and os.path.basename(f) == f}
