"""Parse the text form printed by `ir.printer` back into a graph (and kernel groups, if any)."""
from __future__ import annotations

import json
import re

from . import ops
from .graph import ConstValue, Graph, TensorType

_DEF = re.compile(r"^(%\d+):(\w+)\[([^\]]*)\]\s*=\s*([A-Za-z_][A-Za-z0-9_]*)(.*)$")


class ParseError(ValueError):
    pass


def _scan_name(text: str, i: int):
    if text[i] == '"':
        decoder = json.JSONDecoder()
        value, end = decoder.raw_decode(text, i)
        return value, end
    m = re.compile(r"[A-Za-z_][A-Za-z0-9_./:\-]*").match(text, i)
    if not m:
        raise ParseError(f"expected a name at {text[i:]!r}")
    return m.group(0), m.end()


def _parse_value(token: str, constants):
    if token == "true":
        return True
    if token == "false":
        return False
    if token.startswith("("):
        inner = token[1:-1]
        if not inner:
            return ()
        return tuple(None if t == "?" else _parse_value(t, constants) for t in inner.split(","))
    if token.startswith("@"):
        digest = token[1:]
        array = None if constants is None else constants.get(digest)
        return ConstValue(array, digest=digest)
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    try:
        return float(token)
    except ValueError:
        return token


def _split_attrs(text: str) -> list:
    """Split ' k=v k2="a b" k3=(1,2)' into [(k, v-token)]."""
    out = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=").match(text, i)
        if not m:
            raise ParseError(f"expected key=value at {text[i:]!r}")
        key, i = m.group(1), m.end()
        if i == len(text) or text[i].isspace():
            raise ParseError(f"attribute {key} has no value (write {key}=VALUE)")
        if text[i] == '"':
            _, end = json.JSONDecoder().raw_decode(text, i)
        elif text[i] == "(":
            end = text.find(")", i) + 1
            if not end:
                raise ParseError(f"attribute {key}: '(' is not closed with ')'")
        else:
            end = i
            while end < len(text) and not text[end].isspace():
                end += 1
        out.append((key, text[i:end]))
        i = end
    return out


def _parse_type(dtype: str, dims: str) -> TensorType:
    entries = dims.split(",") if dims else []
    for d in entries:
        if d.strip() != "?" and not re.fullmatch(r"\s*\d+\s*", d):
            raise ParseError(f"bad dimension {d.strip()!r} in {dtype}[{dims}]: dimensions are "
                             "sizes (0, 1, ...) or ? for the batch")
    return TensorType(dtype, tuple(None if d.strip() == "?" else int(d) for d in entries))


def parse(text: str, constants: dict | None = None, *, with_groups: bool = False):
    """Graph from text.  `constants` maps digests to arrays for `@digest` constants (without it,
    such constants keep only their digest and cannot be evaluated).  Malformed text is a ParseError
    naming the line."""
    where = [1]
    try:
        return _parse(text, constants, with_groups, where)
    except ParseError as error:
        if str(error).startswith("line ") or str(error).startswith("IR text"):
            raise
        raise ParseError(f"line {where[0]}: {error}") from None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise ParseError(f"line {where[0]}: malformed IR ({type(error).__name__}: {error})") from None


def _parse(text: str, constants, with_groups: bool, where: list):
    # (line number, line), numbered as the text is: blank and comment lines count
    lines = [(number, ln.rstrip()) for number, ln in enumerate(text.splitlines(), start=1)
             if ln.strip() and not ln.strip().startswith("#")]
    if not lines or not lines[0][1].startswith("graph "):
        raise ParseError("IR text must start with 'graph NAME'")
    where[0] = lines[0][0]
    name, _ = _scan_name(lines[0][1], len("graph "))
    values: dict = {}
    inputs, outputs, groups = [], None, []
    current = None
    opened = 0            # the line of the open kernel block
    names = set()         # the args' names
    for lineno, raw in lines[1:]:
        where[0] = lineno
        line = raw.strip()
        if outputs is not None:
            raise ParseError(f"line {lineno}: nothing may follow the 'return' line, got {line!r}")
        if line.startswith("kernel "):
            if current is not None:
                raise ParseError(f"line {lineno}: kernel {current[0]} (line {opened}) is not "
                                 "closed with '}' before the next one")
            gname, i = _scan_name(line, len("kernel "))
            kind, i = _scan_name(line, i + 1)
            if line[i:].strip() != "{":
                raise ParseError(f"line {lineno}: expected 'kernel NAME KIND {{', got {line!r}")
            current, opened = (gname, kind, []), lineno
            continue
        if line == "}":
            if current is None:
                raise ParseError(f"line {lineno}: '}}' outside a kernel")
            groups.append(current)
            current = None
            continue
        if line.startswith("return"):
            if current is not None:
                raise ParseError(f"line {lineno}: kernel {current[0]} (line {opened}) is not "
                                 "closed with '}' before 'return'")
            outputs = []
            rest = line[len("return"):].strip()
            i = 0
            while i < len(rest):
                key, i = _scan_name(rest, i)
                if i == len(rest) or rest[i] != "=":
                    raise ParseError(f"line {lineno}: expected NAME=%N in return, got "
                                     f"{key!r} without '='")
                m = re.compile(r"%\d+").match(rest, i + 1)
                if not m or m.group(0) not in values:
                    raise ParseError(f"line {lineno}: unknown value in return (output {key!r}: "
                                     "expected %N, a value defined above)")
                outputs.append((key, values[m.group(0)]))
                i = m.end()
                while i < len(rest) and rest[i] in ", ":
                    i += 1
            continue
        m = _DEF.match(line)
        if not m:
            raise ParseError(f"line {lineno}: cannot parse {line!r}")
        ref, dtype, dims, op, rest = m.groups()
        if ref in values:
            raise ParseError(f"line {lineno}: {ref} defined twice")
        result_type = _parse_type(dtype, dims)
        rest = rest.strip()
        operands = []
        while rest.startswith("%"):
            om = re.compile(r"(%\d+)\s*,?\s*").match(rest)
            if om is None:
                raise ParseError(f"line {lineno}: bad value reference {rest.split()[0].rstrip(',')!r}"
                                 " (values are %0, %1, ...)")
            if om.group(1) not in values:
                raise ParseError(f"line {lineno}: {om.group(1)} used before it is defined")
            operands.append(values[om.group(1)])
            rest = rest[om.end():]
        attrs = {}
        for key, token in _split_attrs(rest):
            if key in attrs:
                raise ParseError(f"line {lineno}: attribute {key} given twice")
            attrs[key] = _parse_value(token, constants)
        try:
            opdef = ops.get(op)
        except KeyError as e:
            raise ParseError(f"line {lineno}: {e.args[0]}") from None
        if opdef.source:
            attrs["shape"], attrs["dtype"] = result_type.shape, result_type.dtype
        try:
            node = ops.make(op, operands, **attrs)
        except (ValueError, TypeError) as e:
            raise ParseError(f"line {lineno}: {e}") from None
        if node.type != result_type:
            raise ParseError(f"line {lineno}: {ref} is declared {result_type} but {op} gives "
                             f"{node.type}")
        values[ref] = node
        if op == "arg":
            if node.attr("name") in names:
                raise ParseError(f"line {lineno}: two args are named {node.attr('name')!r}")
            names.add(node.attr("name"))
            inputs.append(node)
        if current is not None:
            current[2].append(node)
    if outputs is None:
        raise ParseError("IR text has no 'return' line")
    graph = Graph(name, inputs, outputs)
    return (graph, groups) if with_groups else graph
