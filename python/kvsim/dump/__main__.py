"""python -m kvsim.dump: the same as the console script (pyproject.toml)."""
import sys

from kvsim.dump.cli import main

sys.exit(main())
