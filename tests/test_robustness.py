"""A user's program around kcompile's own machinery: the compile cache shared between users and
damaged on disk, environment switches, an interrupt during the first compile, and fork while another
thread holds a model's lock.  Each must work, or fail with a clear Python exception."""
import json
import os
import re
import select
import signal
import subprocess
import sys

import numpy as np
import pytest

from threads import lock_held_elsewhere

from codegen import compiler, jit

SCRIPT = r"""
import json, numpy as np, kcompile
kcompile.utils.set_random_seed(0)
m = kcompile.Sequential([kcompile.Input((6,)), kcompile.layers.Dense(5, activation='relu'),
                         kcompile.layers.Dense(2)])
m.compile(optimizer='sgd', loss='mse')
x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)
print(json.dumps(m.predict(x, verbose=0).tolist()))
"""


def run(cache_dir):
    env = dict(os.environ, KCOMPILE_CACHE_DIR=str(cache_dir))
    env.pop("KCOMPILE_CACHE", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cache_files_take_the_umask_and_a_damaged_manifest_is_a_miss(tmp_path):
    first = run(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    files = [tmp_path / name for name in os.listdir(tmp_path)]
    assert files and all((f.stat().st_mode & 0o777) == (0o666 & ~umask) for f in files)
    # one number of each manifest changed (it sizes buffers the native code writes): ignored, not a
    # crash; and a manifest nested past the recursion limit too
    manifests = [f for f in files if f.suffix == ".kcm"]
    assert manifests
    for manifest in manifests:
        text = manifest.read_text()
        edited = re.sub(r'"batch_bytes": \d+', '"batch_bytes": 4', text)
        assert edited != text
        manifest.write_text(edited)
    assert run(tmp_path) == first
    for manifest in manifests:
        manifest.write_text("[" * 100000 + "]" * 100000)
    assert run(tmp_path) == first


def test_on_off_environment_switches(monkeypatch):
    from codegen import cache
    for value, on in (("", False), ("0", False), ("false", False), ("No", False), ("off", False),
                      ("1", True), ("yes", True)):
        monkeypatch.setenv("KCOMPILE_PROFILE", value)
        monkeypatch.setenv("KCOMPILE_VERIFY", value)
        options = compiler.CompileOptions()
        assert options.profile is on and options.verify_each_pass is on, value
        monkeypatch.setenv("KCOMPILE_CACHE", value)     # on unless switched off
        assert cache.cache_enabled() is (on or value == ""), value


def test_an_unusable_dump_directory_names_kcompile_dump(tmp_path, monkeypatch):
    import kcompile
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KCOMPILE_DUMP", str(blocker / "dumps"))
    model = kcompile.Sequential([kcompile.Input((3,)), kcompile.layers.Dense(7)])
    with pytest.raises(OSError, match="KCOMPILE_DUMP="):
        model.predict(np.ones((2, 3), np.float32), verbose=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_an_interrupt_during_the_first_compile_reaps_the_compiling_children(monkeypatch):
    """KeyboardInterrupt in this process's share of a compile: the forked compilers are killed and
    reaped (they used to stay blocked on a pipe nobody read, one per interrupt)."""
    from codegen.lower import lower  # noqa: F401  (modules to compile)
    from llvmlite import ir as llir
    modules = []
    for index in range(2):
        module = llir.Module(name=f"m{index}")
        fn = llir.Function(module, llir.FunctionType(llir.VoidType(), []), f"f{index}")
        llir.IRBuilder(fn.append_basic_block()).ret_void()
        modules.append(module)
    parent = os.getpid()
    real = jit.compile_object

    def interrupted(module, speed_level=3):
        if os.getpid() == parent:
            raise KeyboardInterrupt
        return real(module, speed_level)

    monkeypatch.setattr(jit, "compile_object", interrupted)
    monkeypatch.setattr(jit, "_can_fork", lambda: True)
    with pytest.raises(KeyboardInterrupt):
        jit.compile_objects(modules, jobs=2)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)       # no child left, running or zombie


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_holds_the_models_lock_can_predict():
    import kcompile
    model = kcompile.Sequential([kcompile.Input((3,)), kcompile.layers.Dense(2)])
    x = np.ones((4, 3), np.float32)
    want = model.predict(x, verbose=0)
    with lock_held_elsewhere(model):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                ok = bool(np.array_equal(model.predict(x, verbose=0), want))
            finally:
                os.write(write_fd, b"1" if ok else b"0")
                os._exit(0)
        os.close(write_fd)
        ready = []
        try:
            ready = select.select([read_fd], [], [], 60)[0]
            answer = os.read(read_fd, 1) if ready else b""
        finally:
            if not ready:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
    assert answer == b"1", "the child hung or predicted wrongly"


@pytest.mark.parametrize("how", ["pickle", "get_weights", "fit"])
def test_a_copy_taken_while_another_thread_trains_falls_between_two_steps(how):
    """pickle (a whole save) and get_weights from the main thread while another thread trains the
    model, with train_on_batch or fit: every copy equals the weights after one step of a serial
    run, every array from the same step, and (pickle) the optimizer's iteration count is that
    step's.  The steps write weights and optimizer slots in place; each holds the model's state
    lock, which reading them takes too."""
    import pickle
    import threading

    import kcompile
    from kcompile import layers

    def build():
        kcompile.utils.set_random_seed(1)
        model = kcompile.Sequential([kcompile.Input((64,)), layers.Dense(256, activation="relu"),
                                     layers.Dense(256, activation="relu"), layers.Dense(3)])
        model.compile(optimizer=kcompile.optimizers.SGD(0.01, momentum=0.9), loss="mse")
        return model

    rng = np.random.default_rng(2)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    y = rng.standard_normal((32, 3)).astype(np.float32)
    steps = 150
    serial = build()
    serial.fit(x, y, batch_size=32, verbose=0)      # (compiled before the copies start)
    table = [serial.get_weights()]
    for _ in range(steps):
        serial.train_on_batch(x, y)
        table.append(serial.get_weights())
    model = build()
    model.fit(x, y, batch_size=32, verbose=0)
    if how == "fit":
        work = lambda: model.fit(np.tile(x, (steps, 1)), np.tile(y, (steps, 1)), batch_size=32,
                                 shuffle=False, verbose=0)
    else:
        work = lambda: [model.train_on_batch(x, y) for _ in range(steps)]
    trainer = threading.Thread(target=work)
    copies = []
    trainer.start()
    while trainer.is_alive() and len(copies) < 200:
        if how == "pickle":
            copy = pickle.loads(pickle.dumps(model))
            copies.append((copy.get_weights(), int(copy.optimizer.iterations)))
        else:
            copies.append((model.get_weights(), None))
    trainer.join()
    assert copies
    for weights, iterations in copies:
        matches = [k for k, row in enumerate(table)
                   if all(np.array_equal(a, b) for a, b in zip(weights, row))]
        assert len(matches) == 1, "a copy mixes the weights of different steps"
        if iterations is not None:
            assert iterations == matches[0] + 1     # (the first fit's step)
