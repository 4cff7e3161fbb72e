"""codegen.cache: miss then hit, corrupt entries, concurrent writers, the off switch, unwritable directories."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from codegen import cache, mathlib, target
from codegen.cache import compile_cached
from codegen.jit import JitModule

# these tests are about the cache: on, whatever the environment says (conftest.cache_on)
pytestmark = pytest.mark.usefixtures("cache_on")

REPO = Path(__file__).resolve().parent.parent
F64 = ir.DoubleType()
I64 = ir.IntType(64)
PTR = ir.PointerType()
UNARY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
LOOKUP = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_double)
COUNTER = ctypes.CFUNCTYPE(ctypes.c_int64)
TABLE = [1.5, -2.0, 3.25, 0.5, 7.0, -1.0, 2.0, 4.0]


def build_module(n_loops: int = 8, name: str = "cache_test") -> ir.Module:
    """A module exercising what relocations must get right when the object is loaded again elsewhere:
    a constant table, a mutable global, an internal call, external calls (libm's cos, and exp through
    `llvm.exp`), constant pools of vectorized loops.  Plus `n_loops` vectorized loops for bulk."""
    module = ir.Module(name=name)
    table_type = ir.ArrayType(F64, len(TABLE))
    table = ir.GlobalVariable(module, table_type, name="table")
    table.global_constant = True
    table.linkage = "internal"
    table.initializer = ir.Constant(table_type, TABLE)
    counter = ir.GlobalVariable(module, I64, name="counter")
    counter.initializer = ir.Constant(I64, 0)

    cos = ir.Function(module, ir.FunctionType(F64, [F64]), name="cos")
    exp = module.declare_intrinsic("llvm.exp", [F64])
    helper = ir.Function(module, ir.FunctionType(F64, [F64]), name="helper")
    helper.linkage = "internal"
    helper.attributes.add("noinline")
    b = ir.IRBuilder(helper.append_basic_block())
    x = helper.args[0]
    b.ret(b.fadd(b.call(exp, [x]), b.call(cos, [x])))

    lookup = ir.Function(module, ir.FunctionType(F64, [I64, F64]), name="lookup")
    b = ir.IRBuilder(lookup.append_basic_block())
    i, x = lookup.args
    entry = b.load(b.gep(table, [ir.Constant(I64, 0), i], source_etype=table_type), typ=F64)
    b.store(b.add(b.load(counter, typ=I64), ir.Constant(I64, 1)), counter)
    b.ret(b.fmul(entry, b.call(helper, [x])))

    get_counter = ir.Function(module, ir.FunctionType(I64, []), name="get_counter")
    b = ir.IRBuilder(get_counter.append_basic_block())
    b.ret(b.load(counter, typ=I64))

    for k in range(n_loops):
        _build_loop(module, f"loop{k}", k)
    return module


def _build_loop(module, name, k):
    """void name(float* in, float* out, i64 n): out[i] = tanh(in[i] * c1) + exp(-in[i]^2) * c2 (c depends on k)."""
    f32 = ir.FloatType()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64]), name=name)
    src, dst, n = fn.args
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(ir.Constant(I64, 0), entry)
    x = b.load(b.gep(src, [i], source_etype=f32), typ=f32)
    t = mathlib.emit_tanh(b, b.fmul(x, ir.Constant(f32, 0.5 + k)))
    g = mathlib.emit_exp(b, b.fneg(b.fmul(x, x)))
    y = mathlib.emit_fma(b, g, ir.Constant(f32, 1.0 + 0.25 * k), t)
    b.store(y, b.gep(dst, [i], source_etype=f32))
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()


def run_all(code, n_loops: int = 8):
    """Every function's results on fixed inputs, as one list to compare between compiles."""
    results = [LOOKUP(code.address("lookup"))(i, 0.3 * i - 1.0) for i in range(len(TABLE))]
    results.append(COUNTER(code.address("get_counter"))())
    x = np.linspace(-4, 4, 1003, dtype=np.float32)
    for k in range(n_loops):
        out = np.empty_like(x)
        UNARY(code.address(f"loop{k}"))(x.ctypes.data, out.ctypes.data, x.size)
        results.append(out)
    return results


def assert_same_results(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def expected_lookups():
    return [TABLE[i] * (np.exp(0.3 * i - 1.0) + np.cos(0.3 * i - 1.0)) for i in range(len(TABLE))]


def entries(directory: Path):
    return sorted(directory.glob("*.kco"))


def test_miss_then_hit(tmp_path):
    module = build_module()
    t0 = time.perf_counter()
    miss = compile_cached(module, cache_dir=tmp_path)
    t1 = time.perf_counter()
    hit = compile_cached(module, cache_dir=tmp_path)
    t2 = time.perf_counter()
    defined = sum(not f.is_declaration for f in module.functions)
    print(f"\ncompile cache, {defined} functions: miss {1e3 * (t1 - t0):.1f} ms, "
          f"hit {1e3 * (t2 - t1):.2f} ms")
    assert miss.cache_hit is False and hit.cache_hit is True
    assert len(entries(tmp_path)) == 1

    miss_results, hit_results = run_all(miss), run_all(hit)
    assert_same_results(miss_results, hit_results)
    np.testing.assert_allclose(hit_results[:len(TABLE)], expected_lookups(), rtol=1e-15)
    assert hit_results[len(TABLE)] == len(TABLE)  # each engine has its own copy of @counter

    assert hit.optimized_ir == miss.optimized_ir
    assert "define" in hit.optimized_ir and "@loop7" in hit.optimized_ir
    assert hit.module_ref is None and miss.module_ref is not None
    assembly = hit.assembly()
    assert "loop3:" in assembly and assembly == miss.assembly()
    assert hit.assembly() is assembly  # computed once


def test_text_input_shares_the_entry(tmp_path):
    module = build_module(n_loops=1)
    assert not compile_cached(module, cache_dir=tmp_path).cache_hit
    assert compile_cached(str(module), cache_dir=tmp_path).cache_hit


def test_key_depends_on_ir_and_speed_level(tmp_path):
    text = str(build_module(n_loops=1))
    assert cache.cache_key(text, 3) == cache.cache_key(text, 3)
    assert cache.cache_key(text, 3) != cache.cache_key(text, 2)
    assert cache.cache_key(text, 3) != cache.cache_key(text + "\n", 3)
    compile_cached(text, cache_dir=tmp_path, speed_level=3)
    assert not compile_cached(text, cache_dir=tmp_path, speed_level=2).cache_hit
    assert len(entries(tmp_path)) == 2


def test_emit_object_of_jit_target_machine_reloads(tmp_path):
    """The object MCJIT hands over is what emit_object gives for a JIT target machine, and loading it
    into a fresh engine (other addresses) resolves all relocations."""
    module = build_module(n_loops=2)
    compiled = JitModule(module, keep_object=True)
    tm = target.target_machine()
    ref = llvm.parse_assembly(compiled.optimized_ir)
    ref.triple, ref.data_layout = tm.triple, str(tm.target_data)
    emitted = tm.emit_object(ref)
    reloaded = JitModule.from_object(emitted, compiled.optimized_ir)
    assert_same_results(run_all(compiled, 2), run_all(reloaded, 2))
    assert_same_results(run_all(JitModule.from_object(compiled.object_code, compiled.optimized_ir), 2),
                        run_all(JitModule(module), 2))


def _corrupt_truncate(data):
    return data[: len(data) // 2]


def _corrupt_flip_payload_byte(data):
    data = bytearray(data)
    data[len(data) // 3] ^= 0x40
    return bytes(data)


def _corrupt_bad_header(data):
    return b"\0" * 60 + data[60:]


def _corrupt_empty(data):
    return b""


def _corrupt_extra_bytes(data):
    return data + b"junk"


@pytest.mark.parametrize("damage", [_corrupt_truncate, _corrupt_flip_payload_byte, _corrupt_bad_header,
                                    _corrupt_empty, _corrupt_extra_bytes])
def test_corrupt_entry_recompiles(tmp_path, damage):
    module = build_module(n_loops=1)
    good = run_all(compile_cached(module, cache_dir=tmp_path), 1)
    (entry,) = entries(tmp_path)
    entry.write_bytes(damage(entry.read_bytes()))

    again = compile_cached(module, cache_dir=tmp_path)
    assert again.cache_hit is False
    assert_same_results(run_all(again, 1), good)
    # ... and the entry was rewritten, so the next compile hits.
    third = compile_cached(module, cache_dir=tmp_path)
    assert third.cache_hit is True
    assert_same_results(run_all(third, 1), good)


def test_concurrent_compiles_from_two_processes(tmp_path):
    cache_dir = tmp_path / "cache"
    ir_path = tmp_path / "module.ll"
    ir_path.write_text(str(build_module(n_loops=4)))
    script = textwrap.dedent(f"""
        import ctypes, sys
        sys.path.insert(0, {str(REPO)!r})
        from codegen.cache import compile_cached
        text = open({str(ir_path)!r}).read()
        for _ in range(3):
            code = compile_cached(text, cache_dir={str(cache_dir)!r})
            fn = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_double)(code.address("lookup"))
            print(code.cache_hit, repr(fn(2, 0.5)), flush=True)
    """)
    env = dict(os.environ)
    env.pop("KCOMPILE_CACHE", None)
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err
        lines = out.split()
        assert len(lines) == 6
        # The last two compiles of each process find the entry the first one wrote (theirs or the other's).
        assert lines[2::2] == ["True", "True"]
        assert float(lines[1]) == TABLE[2] * (np.exp(0.5) + np.cos(0.5))
    assert len(entries(cache_dir)) == 1
    assert not list(cache_dir.glob("*.tmp"))
    assert compile_cached(ir_path.read_text(), cache_dir=cache_dir).cache_hit


def test_disabled_cache_compiles_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE", "0")
    assert not cache.cache_enabled()
    module = build_module(n_loops=1)
    first = compile_cached(module, cache_dir=tmp_path)
    second = compile_cached(module, cache_dir=tmp_path)
    assert first.cache_hit is False and second.cache_hit is False
    assert_same_results(run_all(first, 1), run_all(second, 1))
    assert not list(tmp_path.iterdir())


def _assert_warns_once_and_works(directory):
    module = build_module(n_loops=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = compile_cached(module, cache_dir=directory)
        second = compile_cached(module, cache_dir=directory)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "cannot write the compile cache" in messages[0] and "KCOMPILE_CACHE_DIR" in messages[0]
    assert first.cache_hit is False and second.cache_hit is False
    assert_same_results(run_all(first, 1), run_all(second, 1))


def test_unwritable_cache_dir_warns_once(tmp_path):
    # A path below a regular file can never be created, even by root.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    _assert_warns_once_and_works(blocker / "cache")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_cache_dir_warns_once(tmp_path):
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        _assert_warns_once_and_works(directory)
    finally:
        directory.chmod(0o700)


def test_cache_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("KCOMPILE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.cache_directory() == Path.home() / ".cache" / "kcompile"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_directory() == tmp_path / "xdg" / "kcompile"
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path / "env"))
    assert cache.cache_directory() == tmp_path / "env"
    assert cache.cache_directory(tmp_path / "arg") == tmp_path / "arg"
    # Without a cache_dir argument the environment's directory is used.
    compile_cached(build_module(n_loops=1))
    assert len(entries(tmp_path / "env")) == 1


def test_prefilled_cache_in_a_directory_that_refuses_writes(tmp_path, monkeypatch):
    """Reading needs no write access: hits still work; a miss warns once and compiles."""
    filled = build_module(n_loops=1, name="filled")
    compile_cached(filled, cache_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)
    assert compile_cached(filled, cache_dir=tmp_path).cache_hit
    _assert_warns_once_and_works(tmp_path)
    assert len(entries(tmp_path)) == 1
