"""kvsim.write_trace: Q/K/V captured by any tool (vLLM hooks, TransformerLens, your own code) as a
kvsim trace (format v2, traces/README.md), so every rule and metric can replay them.

The file is written as a partial file, validated by kvsim's own validator (the checks of `kvsim
validate`) and only then renamed into place: a tensor of the wrong shape, a NaN or an attribute
the format refuses raises kvsim.KvsimError naming the field, and leaves no file.
"""
import contextlib
import math
import os
import sys
import warnings

import numpy as np

from kvsim import _kvsim

SEGMENTS = {"context": 0, "question": 1, "generated": 2}


@contextlib.contextmanager
def _stderr_quiet():
    """File descriptor 2 to /dev/null: the engine's commands write their last line there."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _per_layer(name, x, num_layers=None):
    """A [L, ...] array or a list of per-layer arrays, as float32 arrays."""
    if x is None:
        return None
    layers = [np.asarray(a, dtype=np.float32) for a in x]
    if num_layers is not None and len(layers) != num_layers:
        raise _kvsim.KvsimError(f"write_trace: {name}: {len(layers)} layers, q has {num_layers}")
    return layers


def write_trace(path, *, q, k, v, q_positions, segment, rope_theta, rope_style="half", o_proj=None, o=None,
                attn_scale=None, input_ids=None, model="external", source=None, spans=None, text=None,
                dtype="float32", meta=None, o_tolerance=0.0):
    """Writes a kvsim trace.

    q: [L, H, Nq, d] post-RoPE queries of the positions q_positions (sorted, unique); k, v:
    [L, H_kv, S, d] post-RoPE keys and values of every position (not repeated for GQA); o_proj:
    optional [L, D, H*d] (out x in, Hugging Face layout), o: optional [L, H, Nq, d] the model's own
    attention outputs (a free check of any replay). Lists of per-layer arrays work too.
    segment: [S] per position 0 context, 1 question, 2 generated (or those names), non-decreasing.
    rope_theta, rope_style ("half": rotate_half pairs (i, i + d/2); "interleaved"): the model's
    RoPE (rules that undo it read them). attn_scale: the logit scale (default 1/sqrt(d)).
    input_ids: [S] token ids (default zeros: unknown). spans: {"needle": (a, b), ...}.
    meta: further root attributes of the format (e.g. attn_logit_softcap, rotary_dim).
    Validation is `kvsim validate --window 0` (which queries to store is the caller's choice) and,
    when o is given, `--check-o`: kvsim's full attention of every stored query must reproduce o
    within o_tolerance (0: by storage dtype, 1e-4 relative for float32), which catches a wrong
    RoPE, scale or layout before any replay. Returns path."""
    from kvsim.dump.errors import DumpError  # h5py only when a trace is written
    from kvsim.dump.trace_file import TraceFileWriter

    path = os.fspath(path)
    q = _per_layer("q", q)
    L = len(q)
    k, v = _per_layer("k", k, L), _per_layer("v", v, L)
    o_proj, o = _per_layer("o_proj", o_proj, L), _per_layer("o", o, L)
    if L == 0:
        raise _kvsim.KvsimError("write_trace: q: no layers")
    for name, x in (("q", q[0]), ("k", k[0]), ("v", v[0])):
        if x.ndim != 3:
            raise _kvsim.KvsimError(f"write_trace: {name}: expected [layers, heads, positions, head_dim], "
                                    f"got a layer of shape {x.shape}")
    H, _, d = q[0].shape
    Hkv, S, _ = k[0].shape
    seg = np.asarray([SEGMENTS.get(s, s) if isinstance(s, str) else s for s in segment], dtype=np.int64)
    if seg.shape != (S,):
        raise _kvsim.KvsimError(f"write_trace: segment: {seg.size} entries, k has {S} positions")
    attrs = dict(meta or {})
    attrs.update(model=model, source=source or f"kvsim.write_trace (kvsim {_kvsim.__version__})",
                 num_layers=L, num_heads=H, num_kv_heads=Hkv, head_dim=d,
                 hidden_size=o_proj[0].shape[0] if o_proj else H * d, rope_style=rope_style,
                 rope_theta=float(rope_theta),
                 attn_scale=float(attn_scale) if attn_scale is not None else 1.0 / math.sqrt(d),
                 prefill_len=int(np.sum(seg < 2)))

    def validate(partial):
        argv = ["validate", partial, "--window", "0"]
        if o is not None:
            argv += ["--check-o", "--o-tolerance", str(o_tolerance)]
        with _stderr_quiet():  # the command's closing count line names the partial file
            code, out, err = _kvsim.run_command(argv)
        if code == 0:
            return
        lines = out.strip().splitlines()
        exceeded = [ln for ln in lines if ln.endswith("EXCEEDS tolerance")]
        if exceeded:  # "o layer L: N queries, max rel err X, ... EXCEEDS tolerance"
            layer = exceeded[0].split(":")[0].split()[-1]
            first = f"/layers/{layer}/o: not reproduced by kvsim's full attention ({exceeded[0]}); check RoPE, scale and layout"
        else:
            first = (lines or err.strip().splitlines() or ["invalid trace"])[0].replace(partial + ": ", "")
        raise DumpError(path, first)

    try:
        w = TraceFileWriter(path, attrs, S, q_positions, dtype=dtype,
                            warn=lambda msg: warnings.warn(f"kvsim.write_trace: {msg}", stacklevel=3))
        try:
            for l in range(L):
                w.write_kv(l, 0, k[l], v[l])
                w.write_queries(l, 0, q[l], None if o is None else o[l])
                if o_proj is not None:
                    w.write_o_proj(l, o_proj[l])
            ids = np.zeros(S, np.int32) if input_ids is None else np.asarray(input_ids)
            w.finish(ids, seg.astype(np.uint8), spans=spans, text=text, check=validate)
        except BaseException:
            w.abort()
            raise
    except DumpError as e:
        raise _kvsim.KvsimError(f"write_trace: {e}") from None
    return path
