"""One op = one registry entry: every primitive must carry all of its rules (STYLE.md, "The IR").

The lowering is filled in by `codegen.lower` (the IR knows nothing of LLVM), so the walk happens after
importing it.
"""
from __future__ import annotations

import inspect

import pytest

import codegen.lower  # noqa: F401  (registers the lowerings)
from codegen.lower import Index, Kernel, Scalar
from ir import ops

def _missing(opdef) -> list:
    missing = []
    for name in ("infer", "reference", "grad"):
        if not callable(getattr(opdef, name, None)):
            missing.append(name)
    if getattr(opdef, "kind", None) not in ops.KIND_NAMES:
        missing.append(f"kind (got {getattr(opdef, 'kind', None)!r}, valid: {sorted(ops.KIND_NAMES)})")
    lowering = getattr(opdef, "lowering", None)
    if not isinstance(lowering, (Scalar, Index, Kernel)) or not callable(lowering.fn):
        missing.append(f"lowering (got {lowering!r})")
    return missing


def test_registry_is_not_empty():
    assert {"add", "matmul", "reduce_sum", "random_uniform", "arg", "const"} <= set(ops.REGISTRY)


@pytest.mark.parametrize("name", sorted(ops.REGISTRY))
def test_op_has_every_field(name):
    opdef = ops.REGISTRY[name]
    assert opdef.name == name
    missing = _missing(opdef)
    assert not missing, f"op {name!r} lacks {', '.join(missing)}"


def test_no_op_lacks_a_field():
    """The whole registry at once, so one failure lists every incomplete op."""
    problems = {name: _missing(opdef) for name, opdef in ops.REGISTRY.items()}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, "incomplete registry entries: " + "; ".join(
        f"{name}: {', '.join(v)}" for name, v in sorted(problems.items()))


def test_rule_signatures():
    """Rules are called positionally by the interpreter, autodiff and the shape checker."""
    for name, opdef in ops.REGISTRY.items():
        for rule, arity in (("infer", 2), ("grad", 2)):
            params = inspect.signature(getattr(opdef, rule)).parameters
            assert len(params) >= arity, f"{name}.{rule} takes {len(params)} arguments, needs {arity}"
        ref_params = inspect.signature(opdef.reference).parameters
        assert len(ref_params) >= 4 or any(p.kind is p.VAR_POSITIONAL for p in ref_params.values()), \
            f"{name}.reference must take (values, attrs, node, batch)"


def test_kinds_fit_the_lowering():
    """Reductions and matmul are kernel anchors; everything else is evaluated at an index."""
    for name, opdef in ops.REGISTRY.items():
        anchored = opdef.kind in (ops.REDUCE, ops.OUT_FUSABLE)
        assert anchored == isinstance(opdef.lowering, Kernel), \
            f"{name}: kind {ops.KIND_NAMES[opdef.kind]} but lowering {type(opdef.lowering).__name__}"


def test_registering_an_incomplete_op_is_caught():
    """The check itself works: an op registered without a lowering is reported."""
    opdef = ops.OpDef("fake", infer=lambda t, a: t[0], reference=lambda v, a, n, b=None: v[0],
                      grad=ops.no_grad, kind=99)
    assert any(m.startswith("kind") for m in _missing(opdef))
    assert any(m.startswith("lowering") for m in _missing(opdef))
