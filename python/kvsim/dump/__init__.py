"""kvsim-dump: records attention traces (trace format v2) from a language model.

Console script kvsim-dump, or python -m kvsim.dump; see traces/README.md for the format.
"""
VERSION = "1.0"
