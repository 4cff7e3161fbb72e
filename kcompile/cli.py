"""The `kcompile` command.

    kcompile stages MODEL_FILE [--graph train|eval|predict]
    kcompile inspect MODEL_FILE [--stage optimized] [--graph ...] [-o FILE]
    kcompile dot MODEL_FILE [--graph ...] [-o FILE.dot]
    kcompile export MODEL_FILE -o DIR [--cpu NAME] [--features +avx2,...] [--name NAME]
    kcompile bench [...]            (see `kcompile bench --help`)

MODEL_FILE is what `model.save()` writes.  Errors print one line to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys


def _load(path, graph="train"):
    """The saved model; compiled (its loss and metrics rebuilt) only when `graph` needs them: an
    export and the predict graph do not (a custom loss need not be importable for them)."""
    from kcompile.errors import CompileConfigError
    from kcompile.models import load_model
    try:
        if graph == "predict":
            return load_model(path, compile=False)
        return load_model(path)
    except CompileConfigError as error:
        raise ValueError(f"{error} (Here: --graph predict needs no loss or metrics; the train and "
                         "eval graphs of a model compiled with custom objects are inspected from "
                         "Python, loading it with custom_objects=.)") from None
    except ValueError as error:
        if "cannot be rebuilt from" not in str(error):
            raise
        # (a custom layer, or a Lambda refused in safe mode: nothing on the command line gives
        # either, so say where they are given)
        raise ValueError(f"{error} (Here: the kcompile command loads models with no custom "
                         "objects and in safe mode; load this one in Python, "
                         "kcompile.models.load_model(path, custom_objects={...}) or safe_mode=False "
                         "for a Lambda layer you trust, and call model.export(directory), "
                         "model.dump_ir() or model.to_dot() on it.)") from None


def _write(text: str, output) -> None:
    if output:
        # as model.save writes: a new file renamed over the old one, so that a failed write (a
        # full disk) keeps what was there, and errors that name the path and the problem
        from kcompile.saving import _atomic_write
        _atomic_write(output, lambda f: f.write(text.encode("utf-8")), overwrite=True)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _check_output_is_not_the_model(args) -> None:
    """-o naming the model file itself would replace the saved model by a text dump."""
    output = getattr(args, "output", None)
    if not output or args.command == "export":
        return          # (export refuses a file as its directory)
    try:
        same = os.path.samefile(output, args.model)
    except OSError:
        return          # (one of them does not exist: nothing of the user's is replaced)
    if same:
        raise ValueError(f"-o {output} is the model file itself: writing the {args.command} output "
                         "there would replace the saved model; pass another file name")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcompile", description="Inspect, export and benchmark "
                                     "kcompile models.")
    from kcompile import __version__
    parser.add_argument("--version", action="version", version=f"kcompile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stages", help="list the compiler stages of a saved model")
    p.add_argument("model")
    p.add_argument("--graph", choices=["train", "eval", "predict"], default=None)

    p = sub.add_parser("inspect", help="print one compiler stage of a saved model")
    p.add_argument("model")
    p.add_argument("--stage", default="optimized")
    p.add_argument("--graph", choices=["train", "eval", "predict"], default=None)
    p.add_argument("-o", "--output", default=None)

    p = sub.add_parser("dot", help="Graphviz DOT of the fused graph")
    p.add_argument("model")
    p.add_argument("--graph", choices=["train", "eval", "predict"], default=None)
    p.add_argument("-o", "--output", default=None)

    p = sub.add_parser("export", help="export a saved model as a compiled predictor directory")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="the directory to write")
    p.add_argument("--cpu", default=None,
                   help="target CPU name as LLVM knows it, e.g. x86-64 or haswell (default: this "
                        "machine's)")
    p.add_argument("--features", default=None,
                   help="LLVM feature string, e.g. +avx2,+fma (default: this machine's; with --cpu, "
                        "only what that CPU implies)")
    p.add_argument("--name", default=None,
                   help="a C identifier naming the files (libNAME.so, NAME.h) and prefixing the C "
                        "functions (NAME_predict), so that several models link into one program "
                        "(default: libmodel.so, model.h, kcompile_predict)")

    sub.add_parser("bench", help="benchmark against the peers", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from kcompile import bench
        return bench.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        _check_output_is_not_the_model(args)
        if args.command == "stages":
            _write("\n".join(_load(args.model, args.graph).compiler_stages(args.graph)), None)
        elif args.command == "inspect":
            _write(_load(args.model, args.graph).dump_ir(args.stage, graph=args.graph),
                   args.output)
        elif args.command == "dot":
            _write(_load(args.model, args.graph).to_dot(graph=args.graph), args.output)
        elif args.command == "export":
            from kcompile.export import check_name
            check_name(args.name)          # before the model is loaded, let alone traced
            model = _load(args.model, "predict")
            directory = model.export(args.output, cpu=args.cpu, features=args.features,
                                     name=args.name)
            print(f"exported {args.model} to {directory}")
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        print(f"kcompile {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
