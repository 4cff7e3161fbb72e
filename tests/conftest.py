"""Test-wide settings: the IR verifier runs after every pass of every compiled graph."""
import os

os.environ.setdefault("KCOMPILE_VERIFY", "1")
