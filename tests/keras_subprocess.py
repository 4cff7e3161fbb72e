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
