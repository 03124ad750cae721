"""kvpress as a live peer: its own press code run on the tensors of a kvsim trace, next to
kvsim's rule for the same method, compared kept set by kept set.

A press needs, from a model, only an attention module: the shim here (TraceAttention) is one,
built from a trace layer. Its q_proj maps "hidden states" that are the trace's queries to
themselves, o_proj holds the trace's W_o, rotary_emb is transformers' own Llama RoPE with the
trace's parameters, and the keys, values (and, for ObservedAttention, the eager attention
matrix) come from the trace. Presses that rotate queries themselves (SnapKV-style windows) get
post-RoPE queries with an identity rotation; ExpectedAttention gets the de-rotated (pre-RoPE)
queries and the real rotation (so does CapPress). Traces in llama2.c's interleaved RoPE are presented in
rotate_half order (each head's components permuted, which leaves every q.k unchanged).

Ties: torch.topk calls inside a press are recorded; a kept-set difference counts as explained
when the token sits exactly (float32 equality) at a cut that splits a tie, or within NEAR_TIE
(relative) of the cut's score: two float32 implementations of one score (kvpress's torch ops,
kvsim's kernels) round differently by a few ulps, which decides near-ties either way. The two
kinds are counted apart. The parity holds when every difference is explained and no press
failed; a press that fails (kvpress or kvsim side) is a row with its error, the others still run.
"""
import contextlib
import json
import os
import sys

import numpy as np

from kvsim.dump.errors import DumpError

# (label, kvpress expression with {cr}, kvsim spec, shim mode; "-aware": the question-aware
# protocol, the compressed span ending with the question). NAME@kvpress are kvsim's presets
# (lib/rules/presets.cpp, `kvsim rules`): this table is what checks them against kvpress.
PAIRS = [
    ("SnapKV", "SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5)",
     "snapkv@kvpress", "post"),
    ("TOVA", "TOVAPress(compression_ratio={cr})", "tova@kvpress", "post"),
    ("Knorm", "KnormPress(compression_ratio={cr})", "knorm@kvpress", "post"),
    ("KeyDiff", "KeyDiffPress(compression_ratio={cr})", "keydiff@kvpress", "post"),
    ("KeyDiff, BlockPress", "BlockPress(press=KeyDiffPress(compression_ratio={cr}), block_size=128)",
     "keydiff(block=128)", "post"),
    ("StreamingLLM", "StreamingLLMPress(compression_ratio={cr}, n_sink=4)", "streaming@kvpress", "post"),
    ("ObservedAttention", "ObservedAttentionPress(compression_ratio={cr})", "h2o@kvpress", "post"),
    ("PyramidKV", "PyramidKVPress(compression_ratio={cr}, window_size=64, kernel_size=5)",
     "pyramid@kvpress", "post"),
    ("AdaKV", "AdaKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5))",
     "ada@kvpress", "post"),
    ("CriticalKV", "CriticalKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5))",
     "critical@kvpress", "post"),
    ("CriticalAdaKV", "CriticalAdaKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5))",
     "criticalada@kvpress", "post"),
    ("ChunkKV", "ChunkKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5), chunk_length=20)",
     "chunkkv@kvpress", "post"),
    ("ChunkPress", "ChunkPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5), chunk_length=1024)",
     "chunk(snapkv@kvpress,len=1024)", "post"),
    ("LagKV", "LagKVPress(compression_ratio={cr}, n_sink=4, lag_size=128)", "lagkv(sink=4,lag=128)", "post"),
    ("CUR", "CURPress(compression_ratio={cr})", "cur", "post"),
    ("NonCausalAttn", "NonCausalAttnPress(compression_ratio={cr}, chunk_size=256)", "noncausal(chunk=256)", "post"),
    ("PerLayerCompression", "PerLayerCompressionPress(press=SnapKVPress(window_size=64, kernel_size=5), "
     "compression_ratios={layer_crs})", "snapkv@kvpress", "post"),
    ("DMS (LagKV ranks)", "DMSPress(press=LagKVPress(n_sink=4, lag_size=128), threshold={cr}, "
     "sliding_window_size=128)", "dms(lagkv(sink=4,lag=128),window=128)", "post"),
    ("SimLayerKV (threshold = ratio)", "SimLayerKVPress(lazy_threshold={cr}, n_last=1, n_recent=1024, n_initial=4)",
     "simlayerkv(threshold={cr},last=1,recent=1024,initial=4)", "post"),
    ("Finch", "FinchPress(compression_ratio={cr}, rerotate_keys=False)", "finch", "post-aware"),
    ("Finch, chunked", "FinchPress(compression_ratio={cr}, rerotate_keys=False, chunk_length=512)", "finch(chunk=512)",
     "post-aware"),
    ("LeverageScore (informational)", "LeverageScorePress(compression_ratio={cr}, sketch_dimension=256)",
     "leverage", "post"),
    ("Compactor (informational)", "CompactorPress(compression_ratio={cr}, blending=0.35, sketch_dimension=256)",
     "compactor(blend=0.35)", "post"),
    ("Cap", "CapPress(compression_ratio={cr})", "cap", "pre"),
    ("KVCompose", "KVComposePress(compression_ratio={cr})", "kvcompose", "post"),
    ("KVCompose, unstructured", "KVComposePress(compression_ratio={cr}, structured=False)",
     "kvcompose(structured=false)", "post"),
    ("DuoAttention", "DuoAttentionPress(head_compression_ratio={cr}, on_the_fly_scoring=True)",
     "duo(ratio={cr})", "post"),
    ("ExpectedAttention", "ExpectedAttentionPress(compression_ratio={cr})", "expected@kvpress", "pre"),
    ("ExpectedAttention, log space", "ExpectedAttentionPress(compression_ratio={cr})", "expected", "pre"),
    ("ThinK (SnapKV + ThinK)",
     "ComposedPress(presses=[SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5), "
     "ThinKPress(key_channel_compression_ratio=0.5, window_size=32)])",
     "think(snapkv@kvpress,ratio=0.5,window=32)", "post"),
]
RATIOS = (0.25, 0.5, 0.75)
# A differing token whose kvpress score is within this relative distance of the cut's score is a
# float32 near-tie (a few ulps of 1.2e-7), not a rule difference.
NEAR_TIE = 1e-6
# A pair whose expression names {layer_crs} runs at per-layer ratios around each cr (alternately
# 0.2 below and above it, within [0, 0.9]); kvsim replays them as the budget layers=cr:R0/R1/...


def layer_ratios(cr, num_layers):
    return [round(min(0.9, max(0.0, cr + (0.2 if layer % 2 else -0.2))), 6) for layer in range(num_layers)]


def pair_budget(expr, cr, num_layers):
    """(kvpress expression, kvsim budget) of a pair at ratio cr. A DMS pair's threshold is cr
    itself (LagKV's scores are ranks / lag in [0, 1): thr = cr keeps about 1 - cr of each
    partition), replayed as the budget thr=cr."""
    if expr.startswith("DMSPress("):
        return expr.format(cr=cr), f"thr={cr}"
    if "{layer_crs}" not in expr:
        return expr.format(cr=cr), f"cr={cr}"
    crs = layer_ratios(cr, num_layers)
    return expr.format(cr=cr, layer_crs=crs), "layers=cr:" + "/".join(map(str, crs))


# kvsim's deliberate departures from kvpress, shown for information, not held to parity.
INFORMATIONAL = {"ExpectedAttention, log space", "LeverageScore (informational)", "Compactor (informational)"}


def read_tensor(ds):
    x = ds[()]
    if ds.attrs.get("dtype") == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


class TraceAttention:
    """What kvpress presses read from an attention module, for one trace layer."""

    def __init__(self, meta, layer, o_proj):
        import torch
        from types import SimpleNamespace
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        H, Hkv, d, D = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"], meta["hidden_size"]
        self.config = SimpleNamespace(num_attention_heads=H, num_key_value_heads=Hkv, head_dim=d, hidden_size=D,
                                      num_hidden_layers=meta["num_layers"], _attn_implementation="sdpa")
        self.head_dim, self.layer_idx, self.num_key_value_groups = d, layer, H // Hkv
        self.q_proj = torch.nn.Identity()
        self.o_proj = torch.nn.Linear(H * d, D, bias=False)
        with torch.no_grad():
            self.o_proj.weight.copy_(torch.from_numpy(o_proj))
        rope_cfg = LlamaConfig(hidden_size=H * d, num_attention_heads=H, head_dim=d, rope_theta=meta["rope_theta"],
                               max_position_embeddings=1 << 20)
        self.rotary_emb = LlamaRotaryEmbedding(rope_cfg)


def rotate_half(x):
    import torch
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-b, a), dim=-1)


def rotated(x, cos, sin, inverse=False):
    """RoPE in rotate_half order (x [..., n, d], cos/sin [1, n, d] broadcast): R x, or R^T x."""
    return x * cos - rotate_half(x) * sin if inverse else x * cos + rotate_half(x) * sin


def component_order(meta):
    """Each head's components in rotate_half order: identity for half traces, (0, 2, .., 1, 3, ..)
    for llama2.c's interleaved pairs."""
    d = meta["head_dim"]
    return np.arange(d) if meta["rope_style"] == "half" else np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])


def layer_inputs(f, meta, layer, n_c, mode, need_attention):
    """(module, hidden_states, keys, values, attentions, kwargs) of trace layer `layer` over [0, n_c)."""
    import torch
    q_pos = f["q_pos"][()]
    if len(q_pos) < n_c or not np.array_equal(q_pos[:n_c], np.arange(n_c)):
        raise DumpError(meta["path"], "/q_pos: the kvpress parity needs every query of the context stored")
    g = f[f"layers/{layer}"]
    perm = component_order(meta)
    q = torch.from_numpy(read_tensor(g["q"])[:, :n_c][..., perm].copy())       # [H, n, d]
    k = torch.from_numpy(read_tensor(g["k"])[:, :n_c][..., perm].copy())[None]  # [1, Hkv, n, d]
    v = torch.from_numpy(read_tensor(g["v"])[:, :n_c].copy())[None]
    module = TraceAttention(meta, layer, read_tensor(g["o_proj"]))
    pos = torch.arange(n_c)[None]
    cos, sin = module.rotary_emb(q[None], pos)
    mode = mode.split("-")[0]
    if mode == "pre":  # ExpectedAttention: pre-RoPE queries, the model's own rotation
        q_in = rotated(q, cos, sin, inverse=True)
        pe = (cos, sin)
    else:  # everyone else: post-RoPE queries, identity rotation
        q_in = q
        pe = (torch.ones_like(cos), torch.zeros_like(sin))
    hidden = q_in.transpose(0, 1).reshape(1, n_c, -1).contiguous()
    attentions = None
    if need_attention:  # the eager attention matrix, float32 softmax over the causal prefix
        G = meta["num_heads"] // meta["num_kv_heads"]
        logits = (q @ k[0].repeat_interleave(G, dim=0).transpose(1, 2)) * float(meta["attn_scale"])
        logits = logits.masked_fill(torch.triu(torch.ones(n_c, n_c, dtype=torch.bool), 1), float("-inf"))
        attentions = torch.softmax(logits, dim=-1, dtype=torch.float32)[None]
    kwargs = {"position_embeddings": pe, "hidden_states": hidden, "cache_position": torch.arange(n_c)}
    return module, hidden, k, v, attentions, kwargs


@contextlib.contextmanager
def recorded_topk():
    """Records every torch.topk inside the block: [(input values [..., n], k, largest)]."""
    import torch
    calls = []
    fn, method = torch.topk, torch.Tensor.topk

    def topk(x, k, *args, **kwargs):
        out = fn(x, k, *args, **kwargs)
        largest = kwargs.get("largest", args[1] if len(args) > 1 else True)
        dim = kwargs.get("dim", args[0] if args else -1)
        if dim in (-1, x.dim() - 1):
            calls.append((x.detach().float().cpu().numpy(), out.values.detach().float().cpu().numpy(), bool(largest)))
        return out

    torch.topk = topk
    torch.Tensor.topk = lambda self, k, *a, **kw: topk(self, k, *a, **kw)
    try:
        yield calls
    finally:
        torch.topk, torch.Tensor.topk = fn, method


def tie_positions(calls, Hkv, n, tolerance=NEAR_TIE, chunk=None):
    """(exact, near): the (head, token) positions of every recorded topk row whose score equals
    the cut's (when the cut splits a tie), and those within `tolerance` (relative) of it. chunk:
    the calls are one per chunk of that many tokens, in order (FinchPress chunk_length)."""
    exact, near = set(), set()
    offset = 0

    def add(target, r, idx, rows):
        if rows.shape[0] == Hkv and (rows.shape[1] == n or chunk):  # per-head scores (of a chunk)
            target.update((r, offset + int(j)) for j in idx)
        elif rows.shape[0] == 1 and rows.shape[1] == Hkv * n:  # flattened heads (Ada-KV)
            target.update((int(j) // n, int(j) % n) for j in idx)

    for ci, (x, vals, largest) in enumerate(calls):
        offset = ci * chunk if chunk else 0
        if vals.size == 0:
            continue
        rows = x.reshape(-1, x.shape[-1])
        vrows = vals.reshape(rows.shape[0], -1)
        for r in range(rows.shape[0]):
            cut = vrows[r].min() if largest else vrows[r].max()
            if int(np.sum(rows[r] == cut)) > int(np.sum(vrows[r] == cut)):  # the cut splits a tie
                add(exact, r, np.nonzero(rows[r] == cut)[0], rows)
            if np.isfinite(cut):
                # A near-tie at the cut: the scores within `tolerance` of it, when the cut keeps
                # some of them and evicts others (the cut's own token included: swapped for an
                # evicted near one, it is as much a near-tie as that one).
                scale = tolerance * max(abs(float(cut)), 1e-30)
                close = np.abs(rows[r].astype(np.float64) - float(cut)) <= scale
                kept_close = int(np.sum(np.abs(vrows[r].astype(np.float64) - float(cut)) <= scale))
                if int(np.sum(close)) > kept_close:
                    add(near, r, np.nonzero(close)[0], rows)
    return exact, near


@contextlib.contextmanager
def trace_prerope_keys(press, module, k, n_c):
    """Presses that project pre-RoPE keys from the hidden states (LeverageScore, Compactor's
    leverage part) get the trace's keys de-rotated instead (RoPE is orthogonal per position),
    sliced as the press slices its hidden states; their random sketches are seeded. Other presses
    run untouched."""
    import torch
    name = type(press).__name__
    if name not in ("LeverageScorePress", "CompactorPress"):
        yield
        return
    import kvpress.presses.leverage_press as leverage_module
    cos, sin = module.rotary_emb(k, torch.arange(n_c)[None])
    pre_keys = rotated(k, cos, sin, inverse=True)
    offset = press.sink_size_start if name == "CompactorPress" else 0  # it scores a slice
    original = leverage_module.get_prerope_key_states
    leverage_module.get_prerope_key_states = lambda _module, hidden: pre_keys[:, :, offset:offset + hidden.shape[1]]
    torch.manual_seed(0)
    try:
        yield
    finally:
        leverage_module.get_prerope_key_states = original


def kvcompose_selection(f, meta, press, n_c):
    """KVComposePress's own statistics and allocation on a trace: its forward hook is fed each
    layer's eager attention of the question's queries (stored positions >= n_c in the question
    segment, float32 softmax over their causal prefix), as kvpress's question pass feeds it, then
    its masks. layer -> (kept [Hkv, n_c], None, exact-tie and near-tie positions of
    the per-head rankings)."""
    import torch
    from types import SimpleNamespace
    L, H, Hkv = meta["num_layers"], meta["num_heads"], meta["num_kv_heads"]
    config = SimpleNamespace(num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=Hkv)
    press._register_model(SimpleNamespace(config=config, parameters=lambda: iter([torch.zeros(1)])))
    press.register_context_ids(torch.zeros((1, n_c), dtype=torch.long))
    q_pos = f["q_pos"][()]
    segment = f["tokens/segment"][()]
    rows = np.flatnonzero((q_pos >= n_c) & (segment[q_pos] == 1))  # the question (kvsim's rule too)
    if len(rows) == 0:
        rows = np.flatnonzero(q_pos >= n_c)
    end = int(q_pos[rows].max()) + 1
    causal = torch.from_numpy(np.arange(end)[None, :] > q_pos[rows][:, None])
    for layer in range(L):
        g = f[f"layers/{layer}"]
        q = torch.from_numpy(read_tensor(g["q"])[:, rows].copy())
        k = torch.from_numpy(read_tensor(g["k"])[:, :end].copy()).repeat_interleave(H // Hkv, dim=0)
        logits = (q @ k.transpose(1, 2)) * float(meta["attn_scale"])
        attn = torch.softmax(logits.masked_fill(causal, float("-inf")), dim=-1, dtype=torch.float32)[None]
        press.forward_hook(SimpleNamespace(layer_idx=layer), None, {}, (None, attn))
    with recorded_topk() as calls:
        press.prepare_important_masks()
    ties = tie_positions(calls, Hkv, n_c)
    return {layer: (torch.stack(press.important_mask_per_kv_head[layer]).numpy().astype(np.uint8), None) + ties
            for layer in range(L)}


def trace_duo_head_scores(f, meta, n_c, q_len=500):
    """[layers, Hkv] DuoAttention on-the-fly head scores as kvpress computes them, with the trace's
    own prompt in place of the 50 BookSum chapters it downloads (kvsim's `duo` does the same):
    the mean pre-RoPE query and key over [0, n_c), repeated at positions 0..q_len-1 and rotated,
    the last query's softmax over them, the mean of its cumulative sum, the group's mean."""
    import torch
    H, Hkv, d = meta["num_heads"], meta["num_kv_heads"], meta["head_dim"]
    scores = torch.zeros((meta["num_layers"], Hkv))
    for layer in range(meta["num_layers"]):
        module, hidden, k, _, _, _ = layer_inputs(f, meta, layer, n_c, "pre", False)
        cos, sin = module.rotary_emb(k, torch.arange(n_c)[None])
        k_pre = rotated(k[0], cos, sin, inverse=True)                   # [Hkv, n, d]
        q_mean = hidden[0].view(n_c, H, d).mean(dim=0)[:, None]         # [H, 1, d]
        k_mean = k_pre.mean(dim=1, keepdim=True)                        # [Hkv, 1, d]
        cos, sin = module.rotary_emb(k, torch.arange(q_len)[None])
        q_rot = rotated(q_mean, cos[:, -1:], sin[:, -1:])
        k_rot = rotated(k_mean, cos, sin).repeat_interleave(H // Hkv, dim=0)
        attn = torch.softmax((q_rot @ k_rot.transpose(1, 2)) / d ** 0.5, dim=-1, dtype=torch.float32)[:, 0]
        scores[layer] = torch.cumsum(attn, dim=-1).mean(dim=-1).view(Hkv, -1).mean(dim=1)
    return scores.numpy()


def duo_selection(f, meta, press, n_c):
    """DuoAttentionPress's own head choice and masking, its on-the-fly scores taken from the
    trace (trace_duo_head_scores) instead of BookSum: layer -> (kept [Hkv, n_c], None, ties)."""
    import torch
    from types import SimpleNamespace
    import kvpress.presses.duo_attention_press as duo_module
    original = duo_module.duo_attention_on_the_fly
    duo_module.duo_attention_on_the_fly = lambda model: trace_duo_head_scores(f, meta, n_c)
    try:
        press.post_init_from_model(SimpleNamespace(device="cpu", config=SimpleNamespace(name_or_path=meta["path"])))
    finally:
        duo_module.duo_attention_on_the_fly = original
    out = {}
    for layer in range(meta["num_layers"]):
        module, hidden, k, v, attn, kwargs = layer_inputs(f, meta, layer, n_c, "post", False)
        with torch.no_grad():
            press.compress(module, hidden, k, v, attn, kwargs)
        kept = np.ones((meta["num_kv_heads"], n_c), dtype=np.uint8)
        if hasattr(module, "masked_key_indices"):
            _, head, seq = (x.numpy() for x in module.masked_key_indices)
            kept[head, seq] = 0
        out[layer] = (kept, None, set(), set())
    return out


def kvpress_selection(f, meta, expr, mode, n_c):
    """layer -> (kept [Hkv, n_c], key_channels or None, exact-tie and near-tie positions) of a press."""
    import torch

    from kvsim.dump.kvpress_bridge import leaves_of, needs_attention_weights, parse_press, recording
    press = parse_press(expr)
    if type(press).__name__ == "FinchPress":  # its delimiter hook's window: the question before n_c
        segment = f["tokens/segment"][()][:n_c]
        press.window_size = int(len(segment) - np.flatnonzero(segment != 1)[-1] - 1)
    if type(press).__name__ == "KVComposePress":  # allocates across layers: its own driver
        return kvcompose_selection(f, meta, press, n_c)
    if type(press).__name__ == "DuoAttentionPress":
        return duo_selection(f, meta, press, n_c)
    out = {}
    need_attention = needs_attention_weights(press)
    for layer in range(meta["num_layers"]):
        module, hidden, k, v, attn, kwargs = layer_inputs(f, meta, layer, n_c, mode, need_attention)
        if type(press).__name__ == "DMSPress":  # what its prefill hook does: the window stays, the rest by threshold
            with torch.no_grad():
                scores = press.press.score(module, hidden, k, v, attn, kwargs)[0]
            kept = np.ones(scores.shape, dtype=np.uint8)
            n_evict = scores.shape[-1] - press.sliding_window_size
            if n_evict > 0:
                kept[:, :n_evict] = (scores[:, :n_evict] >= press.threshold).cpu().numpy()
            out[layer] = (kept, None, set(), set())
            continue
        target = press
        if type(press).__name__ == "PerLayerCompressionPress":  # what its forward hook does, per layer
            target = press.press
            target.compression_ratio = press.compression_ratios[layer]
        with torch.no_grad(), recording(target) as found, recorded_topk() as calls, \
                trace_prerope_keys(press, module, k, n_c):
            keys, values = k, v
            for p in leaves_of(target):  # ComposedPress runs its presses on the same hidden states
                keys, values = p.compress(module, hidden, keys, values, attn, kwargs)
        got = found[layer]
        channels = got["key_channels"]
        if channels is not None:  # back to the trace's component order
            channels = channels.copy()
            channels[:, component_order(meta)] = got["key_channels"]
        chunk = getattr(target, "chunk_length", None) if type(target).__name__ == "FinchPress" else None
        out[layer] = (got["kept"], channels) + tie_positions(calls, meta["num_kv_heads"], n_c, chunk=chunk)
    return out


def kvsim_selection(trace, spec, budgets, compression_point="agnostic"):
    """budget index -> layer -> (kept [units, n_c], key_channels or None) of one kvsim rule at
    kvpress's budgets (cr=R, or layers=cr:...; kvsim.replay in-process, the selections
    returned), and n_c."""
    import kvsim
    res = kvsim.replay(trace, rules=spec, budgets=budgets, window=64, return_selection=True,
                       compression_point=compression_point)
    rule = res.summary["rules"][0]["spec"]
    out = {bi: {l: (kept, res.selection.get((rule, b, l, "key_channels")))
                for (r, bb, l, *extra), kept in res.selection.items() if r == rule and bb == b and not extra}
           for bi, b in enumerate(budgets)}
    return out, res.summary["protocol"]["n_c"]


def jaccard(a, b):
    inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(inter) / float(union)


def compare_layers(ours, theirs, spec):
    """Jaccard per (layer, KV head), differing tokens, those at exact ties and near-ties, and
    whether ThinK's key channels agree (None when the pair prunes none)."""
    js, differing, exact, near, channels_equal, has_channels = [], 0, 0, 0, True, False
    for layer, (kp, kp_ch, tied, close) in theirs.items():
        ks, ks_ch = ours[layer]
        if ks.shape != kp.shape:
            raise DumpError(spec, f"kvsim kept {ks.shape} units x tokens, kvpress {kp.shape}")
        for h in range(kp.shape[0]):
            js.append(jaccard(kp[h], ks[h]))
            diff = np.nonzero(kp[h].astype(bool) != ks[h].astype(bool))[0]
            differing += len(diff)
            exact += sum((h, int(j)) in tied for j in diff)
            near += sum((h, int(j)) in close and (h, int(j)) not in tied for j in diff)
        if kp_ch is not None or ks_ch is not None:
            has_channels = True
            channels_equal = channels_equal and kp_ch is not None and ks_ch is not None and \
                np.array_equal(np.asarray(kp_ch, bool), np.asarray(ks_ch, bool))
    return dict(jaccard_min=min(js), jaccard_mean=float(np.mean(js)), differing=differing,
                explained_by_ties=exact, explained_by_tolerance=near,
                channels_equal=channels_equal if has_channels else None)


def trace_meta(f, path):
    """The root attributes of an open trace (h5py) as the shim reads them, shape fields as ints."""
    meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    meta.update(path=path, num_layers=int(meta["num_layers"]), num_heads=int(meta["num_heads"]),
                num_kv_heads=int(meta["num_kv_heads"]), head_dim=int(meta["head_dim"]),
                hidden_size=int(meta["hidden_size"]))
    return meta


def parity_table(traces, pairs=PAIRS, ratios=RATIOS, progress=None):
    """Rows {trace, press, kvpress, spec, ratio, reference, error, jaccard_min, jaccard_mean,
    differing, explained_by_ties, explained_by_tolerance, channels_equal}. A pair that fails on
    either side is a row with `error` (its one-line message); the other pairs still run."""
    import h5py
    import kvsim
    rows = []
    for trace in traces:
        with h5py.File(trace, "r") as f:
            num_layers = int(f.attrs["num_layers"])
        kvsim_side = {}  # while h5py has the file closed: kvsim's engine reads it with its own HDF5
        for label, expr, spec, mode in pairs:
            try:
                budgets = [pair_budget(expr, cr, num_layers)[1] for cr in ratios]
                point = "aware" if mode.endswith("-aware") else "agnostic"
                if "{cr}" in spec:  # the ratio is a parameter of the rule (a threshold), one replay each
                    each = [kvsim_selection(trace, spec.format(cr=cr), [b], point) for cr, b in zip(ratios, budgets)]
                    kvsim_side[label] = ({bi: e[0][0] for bi, e in enumerate(each)}, each[0][1])
                else:
                    kvsim_side[label] = kvsim_selection(trace, spec, budgets, point)
            except (kvsim.KvsimError, DumpError) as e:
                kvsim_side[label] = f"kvsim: {e}"
        with h5py.File(trace, "r") as f:
            meta = trace_meta(f, trace)
            for label, expr, spec, mode in pairs:
                base = dict(trace=os.path.basename(trace), press=label, spec=spec, reference=label not in INFORMATIONAL)
                if isinstance(kvsim_side[label], str):
                    rows += [dict(base, kvpress=pair_budget(expr, cr, num_layers)[0], ratio=cr, error=kvsim_side[label])
                             for cr in ratios]
                    continue
                ours, n_c = kvsim_side[label]
                for bi, cr in enumerate(ratios):
                    if progress:
                        progress(f"{os.path.basename(trace)}: {label} at cr={cr}")
                    row = dict(base, kvpress=pair_budget(expr, cr, num_layers)[0], ratio=cr, error=None)
                    try:
                        row.update(compare_layers(ours[bi], kvpress_selection(f, meta, row["kvpress"], mode, n_c), spec))
                    except Exception as e:  # kvpress's own code: any failure is this row's, not the run's
                        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                    rows.append(row)
    return rows


def verdict(rows):
    """One verdict for rows of one pair: failed, exact, explained (ties / near-ties), or DIFFERS."""
    failed = [r for r in rows if r["error"]]
    if failed:
        return f"FAILED: {failed[0]['error']}"
    diff = sum(r["differing"] for r in rows)
    ties = sum(r["explained_by_ties"] for r in rows)
    near = sum(r["explained_by_tolerance"] for r in rows)
    if diff == 0:
        v = "exact"
    elif diff == ties + near:
        v = f"explained ({diff} tokens: {ties} at exact ties, {near} within {NEAR_TIE:g} of the cut)"
    else:
        v = f"DIFFERS ({diff - ties - near} of {diff} tokens unexplained)"
    channels = [r["channels_equal"] for r in rows]
    if any(c is not None for c in channels):
        v += ", channels " + ("equal" if all(channels) else "DIFFER")
    return v if rows[0]["reference"] else "kvsim's own ranking: " + v


def format_table(rows):
    lines = [f"{'trace':<26} {'kvpress press':<30} {'kvsim spec':<44} {'ratio':>5} {'J min':>7} {'J mean':>7} "
             f"{'diff':>6} {'ties':>6} {'near':>6}  verdict"]
    for r in rows:
        spec = r["spec"] if len(r["spec"]) <= 44 else r["spec"][:41] + "..."
        if r["error"]:
            lines.append(f"{r['trace']:<26} {r['press']:<30} {spec:<44} {r['ratio']:>5} {'':>36}  {verdict([r])}")
            continue
        lines.append(f"{r['trace']:<26} {r['press']:<30} {spec:<44} {r['ratio']:>5} {r['jaccard_min']:>7.4f} "
                     f"{r['jaccard_mean']:>7.4f} {r['differing']:>6} {r['explained_by_ties']:>6} "
                     f"{r['explained_by_tolerance']:>6}  {verdict([r])}")
    return "\n".join(lines)


def format_compact(rows):
    """One line per (trace, press): Jaccard min/mean at each ratio and one verdict."""
    ratios = sorted({r["ratio"] for r in rows})
    head = f"{'trace':<26} {'kvpress press':<30} {'kvsim spec':<46}" + "".join(
        f" {'J min/mean @' + str(x):>19}" for x in ratios) + "  verdict"
    lines, seen = [head], []
    for r in rows:
        if (r["trace"], r["press"]) not in seen:
            seen.append((r["trace"], r["press"]))
    for trace, press in seen:
        mine = [r for r in rows if r["trace"] == trace and r["press"] == press]
        by_ratio = {r["ratio"]: r for r in mine if not r["error"]}
        cells = "".join(f" {by_ratio[x]['jaccard_min']:>9.4f}/{by_ratio[x]['jaccard_mean']:<9.4f}" if x in by_ratio
                        else " " * 20 for x in ratios)
        spec = mine[0]["spec"] if len(mine[0]["spec"]) <= 46 else mine[0]["spec"][:43] + "..."
        lines.append(f"{trace:<26} {press:<30} {spec:<46}{cells}  {verdict(mine)}")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--decode" in argv:  # kvpress's DecodingPress against kvsim's --protocol decode (kvsim.decode_parity)
        from kvsim.decode_parity import main as decode_main
        return decode_main([a for a in argv if a != "--decode"])
    p = argparse.ArgumentParser(prog="kvpress-parity", description="Run kvpress's own presses and kvsim's rules on "
                                "the same trace tensors and compare their kept sets (Jaccard per layer and KV head).")
    p.add_argument("traces", nargs="+", help="kvsim traces storing every context query, with o_proj")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="kvpress compression ratios")
    p.add_argument("--only", help="comma-separated press labels to run (default all)")
    p.add_argument("--press", action="append", default=[],
                   help="one press label to run, as printed (repeatable; for labels with a comma)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--long", action="store_true",
                   help="one line per ratio, with the differing tokens and those at exact ties and near-ties")
    args = p.parse_args(argv)
    wanted = (args.only.split(",") if args.only else []) + args.press
    unknown = [w for w in wanted if w not in {x[0] for x in PAIRS}]
    if unknown:
        print(f"kvpress-parity: error: --only/--press: unknown press label '{unknown[0]}' (labels: "
              f"{'; '.join(x[0] for x in PAIRS)})", file=sys.stderr)
        return 2
    pairs = PAIRS if not wanted else [x for x in PAIRS if x[0] in wanted]
    try:
        ratios = [float(x) for x in args.ratios.split(",")]
    except ValueError:
        print(f"kvpress-parity: error: --ratios: not a list of numbers: {args.ratios}", file=sys.stderr)
        return 2
    for t in args.traces:
        if not os.path.isfile(t):
            print(f"kvpress-parity: error: {t}: no such file", file=sys.stderr)
            return 1
    rows = parity_table(args.traces, pairs, ratios, progress=lambda m: print(f"kvpress-parity: {m}", file=sys.stderr))
    print(format_table(rows) if args.long else format_compact(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0 if parity_holds(rows) else 1


def parity_holds(rows):
    """No pair failed, and every reference pair keeps the same sets as kvpress outside exact ties
    and float32 near-ties of the cut, channels included."""
    return all(not r["error"] for r in rows) and all(
        r["differing"] == r["explained_by_ties"] + r["explained_by_tolerance"] and r["channels_equal"] is not False
        for r in rows if r["reference"])


if __name__ == "__main__":
    sys.exit(main())
