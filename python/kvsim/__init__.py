"""kvsim: replay KV-cache selection rules on attention traces, from Python.

The engine is kvsim's C++ library (the _kvsim extension module); every call below runs the same
code as the `kvsim` command line, with the GIL released, and returns pandas DataFrames:

    import kvsim
    t = kvsim.open_trace("traces/niah_stories260k.h5")      # metadata + numpy views of layers
    df = kvsim.replay(t, rules="snapkv;critical(snapkv)", budgets=[0.1, 0.2])   # = metrics.csv
    kvsim.rules()                                            # the catalogue (DataFrame)

A rule written in numpy is one function of a layer returning per-token scores; kvsim does the
budget, top-k, protected window, GQA reduction, the Ada-KV / CriticalKV wrappers and every metric:

    knorm = kvsim.ScoreRule("my_knorm", lambda L: -np.linalg.norm(L.k, axis=-1))
    kvsim.replay(t, rules=[knorm, kvsim.wrap("ada", knorm)], budgets=[0.2])
"""
import atexit
import os

from . import _blas

_BLAS_CHOICE = _blas.choose_before_import()  # before the engine (and OpenBLAS) loads
from . import _kvsim  # noqa: E402
_blas.after_import(_BLAS_CHOICE)
if _BLAS_CHOICE[0]:
    _kvsim._note_blas_choice(_BLAS_CHOICE[0])

from ._kvsim import KvsimError, Layer, LayerView, RuleError, Trace, decode_masks, quantize, scores  # noqa: F401
from .python_rules import MaskRule, ScoreRule, select, wrap  # noqa: F401
from .runs import analyze, calibrate_threshold, prefill, read_table, replay, rules, run  # noqa: F401
from .selections import write_selection  # noqa: F401
from .external_trace import write_trace  # noqa: F401

__version__ = _kvsim.__version__


def blas():
    """The engine's BLAS: library, build config, the kernels running (core), threading and who
    chose them (OpenBLAS itself, OPENBLAS_CORETYPE, KVSIM_BLAS_CORETYPE or kvsim)."""
    return _kvsim.blas_info()


def open_trace(path):
    """Opens a trace (kvsim trace format v1/v2): .meta, .q_pos, .segments, .input_ids and
    .layer(l) with read-only numpy views (no copy). Errors name the file and the field."""
    return _kvsim.open_trace(os.fspath(path))
__all__ = ["blas", "open_trace", "scores", "select", "quantize", "decode_masks", "replay", "calibrate_threshold", "read_table", "analyze", "prefill", "rules", "run", "ScoreRule", "MaskRule", "wrap",
           "write_selection", "write_trace", "KvsimError", "RuleError", "Trace", "Layer", "LayerView"]

# Python rules hold Python callables inside the C++ registry: release them while Python runs.
atexit.register(_kvsim._unregister_all_rules)
