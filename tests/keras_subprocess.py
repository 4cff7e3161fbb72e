"""Keras 3 on JAX for the parity tests, run in a subprocess (the library never imports Keras, and
the tests' own process does not either)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys


def keras_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("keras", "jax"))


def run_keras(script: str, args) -> None:
    """Run `script` (python -c) with `args` under Keras's JAX backend on the CPU."""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script, *args], env=env, check=True, capture_output=True)


def run_keras_models(script: str, models: dict, data, directory, extra_args=(), fields=None) -> dict:
    """Run `script` on several models at once and load what it wrote for each.

    For each `name -> spec` of `models`, `data(name)` (x, y) is saved as `directory/name.npz`, and
    the script gets `extra_args`, then one `repr(spec[:fields] + (npz path,))` per model; it adds
    its results to each npz, which are returned loaded, by name."""
    import numpy as np
    specs = []
    for name, spec in models.items():
        x, y = data(name)
        path = directory / f"{name}.npz"
        np.savez(path, x=x, y=y)
        specs.append(repr(tuple(spec)[:fields] + (str(path),)))
    run_keras(script, [*extra_args, *specs])
    return {name: np.load(directory / f"{name}.npz") for name in models}
