"""How large a trace will be, and the storage defaults that keep it within a size target.

Sizes follow the trace format (traces/README.md): per stored layer k and v [H_kv, S, d], q (and
o) [H, Nq, d], o_proj [D, H*d], at 4 bytes (float32) or 2 (float16, bfloat16) per value.

The three storage options that shrink a trace, in the order the defaults give them up:
  1. the model's own attention output `o` (--with-o / --no-o): only `kvsim validate --check-o`
     reads it;
  2. 32-bit storage (--dtype): float16 keeps 11 significant bits of q, k, v and o_proj (the
     replay is exact on the stored values; --check-o then shows the q/k rounding, a few percent);
  3. every prompt query (--queries all): the default rules, the bounds, analyze's distinctiveness
     statistics and both compression points need only the observation window before the end of
     the context and everything after it (--queries window:W); the rules that score with every
     prompt query (h2o, expected, chunk, the step-wise variants) and `kvsim prefill` need all.
An option the user gives is never changed; only options left at `auto` are chosen.
"""
from dataclasses import dataclass

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_TARGET_MB = 100.0
# Stored queries before the end of the context when the defaults give up `all`: covers every
# rule's observation window (kvpress's SnapKV window is 64) and analyze's query window.
DEFAULT_QUERY_WINDOW = 128


@dataclass
class Storage:
    dtype: str
    queries: str
    with_o: bool


def query_count(queries, context_end, seq_len):
    if queries == "all":
        return seq_len
    w = int(queries.split(":", 1)[1])
    return seq_len - max(0, context_end - w)


def trace_bytes(meta, num_layers, seq_len, n_queries, dtype, with_o, with_o_proj=True):
    """Bytes of the tensors a trace holds (metadata and token arrays are negligible)."""
    H, Hkv, d, D = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"], meta["hidden_size"]
    per_layer = 2 * Hkv * seq_len * d + H * n_queries * d * (2 if with_o else 1)
    if with_o_proj:
        per_layer += D * H * d
    return num_layers * per_layer * BYTES[dtype]


def choose_storage(meta, num_layers, context_end, seq_len, dtype="auto", queries="auto",
                   with_o=None, target_mb=DEFAULT_TARGET_MB):
    """(Storage, list of the choices made for options left at auto, with the reason)."""
    fixed_dtype, fixed_queries, fixed_o = dtype != "auto", queries != "auto", with_o is not None
    s = Storage(dtype if fixed_dtype else "float32", queries if fixed_queries else "all",
                with_o if fixed_o else True)
    made = []

    def size(st):
        return trace_bytes(meta, num_layers, seq_len, query_count(st.queries, context_end, seq_len),
                           st.dtype, st.with_o) / 1e6
    steps = []
    if not fixed_o:
        steps.append(("with_o", False, "no o (only --check-o reads it; --with-o keeps it)"))
    if not fixed_dtype:
        steps.append(("dtype", "float16", "float16 storage (--dtype float32 keeps 32 bits)"))
    if not fixed_queries:
        steps.append(("queries", f"window:{DEFAULT_QUERY_WINDOW}",
                      f"queries window:{DEFAULT_QUERY_WINDOW} (the last {DEFAULT_QUERY_WINDOW} context "
                      "positions and everything after; h2o, expected, chunk, the step-wise rules "
                      "and kvsim prefill need --queries all)"))
    for attr, value, why in steps:
        if size(s) <= target_mb:
            break
        setattr(s, attr, value)
        made.append(why)
    return s, made, size(s)
