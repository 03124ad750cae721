"""Routes what a backend observes in each attention layer into the trace file.

Backends call record(layer, start, q, k, v, o) for every block of new positions (the whole prompt
at prefill, then one position per generated token); the recorder keeps the rows of q and o whose
positions are stored (/q_pos), all rows of k and v, and maps model layer indices to trace layers
when only some layers are dumped.
"""
import numpy as np


class Recorder:
    def __init__(self, writer, layers, q_pos, with_o=True, on_layer=None):
        """layers: sorted model layer indices to dump; trace layer i is model layer layers[i].
        on_layer(slot, start, n): called after each recorded block (progress)."""
        self.writer = writer
        self.on_layer = on_layer
        self.layer_slot = {l: i for i, l in enumerate(layers)}
        self.q_pos = np.asarray(q_pos, dtype=np.int64)
        self.with_o = with_o

    def wants(self, layer):
        return layer in self.layer_slot

    def query_rows(self, start, n):
        """(first stored query index, row indices within the block) for positions start..start+n-1."""
        lo = int(np.searchsorted(self.q_pos, start))
        hi = int(np.searchsorted(self.q_pos, start + n))
        return lo, self.q_pos[lo:hi] - start

    def record(self, layer, start, q, k, v, o=None, preselected=False):
        """q, o [num_heads, n, head_dim]; k, v [num_kv_heads, n, head_dim]; float32 numpy arrays
        for positions start .. start+n-1. With preselected=True, q and o already hold only the
        stored rows (query_rows(start, n)), which lets a GPU backend copy less."""
        slot = self.layer_slot.get(layer)
        if slot is None:
            return
        n = k.shape[1]
        self.writer.write_kv(slot, start, k, v)
        first, rows = self.query_rows(start, n)
        if len(rows):
            qs = np.asarray(q) if preselected else np.asarray(q)[:, rows]
            os_ = None
            if self.with_o and o is not None:
                os_ = np.asarray(o) if preselected else np.asarray(o)[:, rows]
            self.writer.write_queries(slot, first, qs, os_)
        if self.on_layer is not None:
            self.on_layer(slot, start, n)

    def layer_attrs(self, layer, attrs):
        """Per-layer attributes of the model layer (trace format v2: attention_type,
        sliding_window, rope_theta, rope_scaling)."""
        slot = self.layer_slot.get(layer)
        if slot is not None and attrs:
            self.writer.set_layer_attrs(slot, attrs)

    def o_proj(self, layer, weight):
        slot = self.layer_slot.get(layer)
        if slot is not None:
            self.writer.write_o_proj(slot, weight)
