"""Stored selections (trace format v2 /selections, traces/README.md) written from Python, so a
method computed anywhere is measured by `external(name=...)` like kvsim's own rules."""
import numpy as np


def write_selection(path, name, n_c, kept=None, scores=None, protect=None, key_channels=None, mode="kv",
                    source="python"):
    """Adds /selections/<name> to the HDF5 file at path (a trace, or any file: then replay with
    external(name=<name>,file=<path>)).

    kept: {budget text: {layer: mask [units, n_c]}} -> kind "kept" (replayed at those budgets);
    scores: {layer: array [units, n_c]} (+ protect {layer: mask [n_c]}) -> kind "scores" (ranked by
    kvsim at any budget; external(name=...,kind=scores)). key_channels: {budget: {layer: [Hkv, d]}}.
    units = num_kv_heads (mode "kv") or num_heads (mode "query")."""
    import h5py
    if (kept is None) == (scores is None):
        raise ValueError("write_selection: give exactly one of kept= or scores=")
    with h5py.File(path, "a") as f:
        g = f.require_group("selections").require_group(name)
        g.attrs["kind"] = "kept" if kept is not None else "scores"
        g.attrs["mode"] = mode
        g.attrs["n_c"] = np.int64(n_c)
        g.attrs["source"] = source
        if kept is not None:
            for budget, layers in kept.items():
                for layer, mask in layers.items():
                    lg = g.require_group(f"{budget}/layers/{int(layer)}")
                    lg.create_dataset("kept", data=np.asarray(mask, dtype=np.uint8))
                    ch = (key_channels or {}).get(budget, {}).get(layer)
                    if ch is not None:
                        lg.create_dataset("key_channels", data=np.asarray(ch, dtype=np.uint8))
        else:
            for layer, s in scores.items():
                lg = g.require_group(f"layers/{int(layer)}")
                lg.create_dataset("scores", data=np.asarray(s, dtype=np.float32))
                if protect is not None and layer in protect:
                    lg.create_dataset("protect", data=np.asarray(protect[layer], dtype=np.uint8))
