"""`python -m kcompile ...`: the `kcompile` command line (see kcompile.cli)."""
import sys

from kcompile.cli import main

sys.exit(main())
