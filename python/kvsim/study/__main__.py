"""python -m kvsim.study: the same as the console script (pyproject.toml)."""
import sys

from kvsim.study.cli import main

sys.exit(main())
