"""The targets a model can compile for in this environment: 'reference' always, 'llvm' when the
LLVM backend (llvmlite) imports."""


def available_targets() -> list:
    try:
        import codegen.runtime  # noqa: F401
    except ImportError:
        return ["reference"]
    return ["reference", "llvm"]


TARGETS = available_targets()
