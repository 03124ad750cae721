"""kvsim-dump: records attention traces (trace format v2) from a language model.

The package is imported by the tools/kvsim-dump script; see traces/README.md for the format.
"""
VERSION = "1.0"
