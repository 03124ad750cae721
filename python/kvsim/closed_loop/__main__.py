"""python -m kvsim.closed_loop: the same as the console script (pyproject.toml)."""
import sys

from kvsim.closed_loop.loop import main

sys.exit(main())
