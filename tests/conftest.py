"""Test-wide settings: the IR verifier runs after every pass of every compiled graph; `cache_on` for
the tests about the compile cache."""
import os

import pytest

os.environ.setdefault("KCOMPILE_VERIFY", "1")


@pytest.fixture
def cache_on(monkeypatch):
    """The compile cache on, whatever the environment says (a test may still turn it off)."""
    monkeypatch.setenv("KCOMPILE_CACHE", "1")
