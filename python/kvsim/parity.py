"""kvpress as a live peer: its own press code run on the tensors of a kvsim trace, next to
kvsim's rule for the same method, compared kept set by kept set.

A press needs, from a model, only an attention module: the shim here (TraceAttention) is one,
built from a trace layer. Its q_proj maps "hidden states" that are the trace's queries to
themselves, o_proj holds the trace's W_o, rotary_emb is transformers' own Llama RoPE with the
trace's parameters, and the keys, values (and, for ObservedAttention, the eager attention
matrix) come from the trace. Presses that rotate queries themselves (SnapKV-style windows) get
post-RoPE queries with an identity rotation; ExpectedAttention gets the de-rotated (pre-RoPE)
queries and the real rotation. Traces in llama2.c's interleaved RoPE are presented in
rotate_half order (each head's components permuted, which leaves every q.k unchanged).

Ties: torch.topk calls inside a press are recorded; a kept-set difference counts as explained
when the token sits exactly (float32 equality) at a cut that splits a tie. The parity holds when
every difference is explained.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from kvsim.dump.errors import DumpError

# (label, kvpress expression with {cr}, kvsim spec, shim mode)
PAIRS = [
    ("SnapKV", "SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5)",
     "snapkv(window=64,kernel=5,pool=avg)", "post"),
    ("TOVA", "TOVAPress(compression_ratio={cr})", "tova", "post"),
    ("Knorm", "KnormPress(compression_ratio={cr})", "knorm", "post"),
    ("KeyDiff", "KeyDiffPress(compression_ratio={cr})", "keydiff(block=0)", "post"),
    ("KeyDiff, BlockPress", "BlockPress(press=KeyDiffPress(compression_ratio={cr}), block_size=128)",
     "keydiff(block=128)", "post"),
    ("StreamingLLM", "StreamingLLMPress(compression_ratio={cr}, n_sink=4)", "streaming(sink=4)", "post"),
    ("ObservedAttention", "ObservedAttentionPress(compression_ratio={cr})", "h2o(variant=kvpress)", "post"),
    ("PyramidKV", "PyramidKVPress(compression_ratio={cr}, window_size=64, kernel_size=5)",
     "pyramid(snapkv(window=64,kernel=5,pool=avg),variant=float)", "post"),
    ("AdaKV", "AdaKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5))",
     "ada(snapkv(window=64,kernel=5,pool=avg),window_in_floor=true)", "post"),
    ("CriticalKV", "CriticalKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5))",
     "critical(snapkv(window=64,kernel=5,pool=avg))", "post"),
    ("CriticalAdaKV", "CriticalAdaKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5))",
     "critical(ada(snapkv(window=64,kernel=5,pool=avg),window_in_floor=true))", "post"),
    ("ChunkKV", "ChunkKVPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5), chunk_length=20)",
     "chunkkv(snapkv(window=64,kernel=5,pool=avg),len=20)", "post"),
    ("ChunkPress", "ChunkPress(press=SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5), chunk_length=1024)",
     "chunk(snapkv(window=64,kernel=5,pool=avg),len=1024)", "post"),
    ("ExpectedAttention", "ExpectedAttentionPress(compression_ratio={cr})", "expected(space=linear)", "pre"),
    ("ExpectedAttention, log space", "ExpectedAttentionPress(compression_ratio={cr})", "expected", "pre"),
    ("ThinK (SnapKV + ThinK)",
     "ComposedPress(presses=[SnapKVPress(compression_ratio={cr}, window_size=64, kernel_size=5), "
     "ThinKPress(key_channel_compression_ratio=0.5, window_size=32)])",
     "think(snapkv(window=64,kernel=5,pool=avg),ratio=0.5,window=32)", "post"),
]
RATIOS = (0.25, 0.5, 0.75)
# kvsim's deliberate departures from kvpress, shown for information, not held to parity.
INFORMATIONAL = {"ExpectedAttention, log space"}


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
    if mode == "pre":  # ExpectedAttention: pre-RoPE queries, the model's own rotation
        q_in = q * cos - rotate_half(q) * sin
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


def tied_tokens(calls, Hkv, n):
    """(head, token) positions that sit at a cut splitting an exact tie in any recorded topk."""
    tied = set()
    for x, vals, largest in calls:
        if vals.size == 0:
            continue
        rows = x.reshape(-1, x.shape[-1])
        vrows = vals.reshape(rows.shape[0], -1)
        for r in range(rows.shape[0]):
            cut = vrows[r].min() if largest else vrows[r].max()
            inside = int(np.sum(rows[r] == cut))
            if inside <= int(np.sum(vrows[r] == cut)):
                continue  # a clean cut
            idx = np.nonzero(rows[r] == cut)[0]
            if rows.shape[0] == Hkv and rows.shape[1] == n:  # per-head scores
                tied.update((r, int(j)) for j in idx)
            elif rows.shape[0] == 1 and rows.shape[1] == Hkv * n:  # flattened heads (Ada-KV)
                tied.update((int(j) // n, int(j) % n) for j in idx)
    return tied


def kvpress_selection(f, meta, expr, mode, n_c):
    """layer -> (kept [Hkv, n_c], key_channels or None, tied positions) of a press on the trace."""
    import torch

    from kvsim.dump.kvpress_bridge import leaves_of, needs_attention_weights, parse_press, recording
    press = parse_press(expr)
    out = {}
    need_attention = needs_attention_weights(press)
    for layer in range(meta["num_layers"]):
        module, hidden, k, v, attn, kwargs = layer_inputs(f, meta, layer, n_c, mode, need_attention)
        with torch.no_grad(), recording(press) as found, recorded_topk() as calls:
            keys, values = k, v
            for p in leaves_of(press):  # ComposedPress runs its presses on the same hidden states
                keys, values = p.compress(module, hidden, keys, values, attn, kwargs)
        got = found[layer]
        channels = got["key_channels"]
        if channels is not None:  # back to the trace's component order
            channels = channels.copy()
            channels[:, component_order(meta)] = got["key_channels"]
        out[layer] = (got["kept"], channels, tied_tokens(calls, meta["num_kv_heads"], n_c))
    return out


def kvsim_selections(kvsim, trace, specs, ratios):
    """(spec index, ratio index) -> layer -> (kept [units, n_c], key_channels or None), via
    `kvsim replay --save-selection` with kvpress's budgets cr=R."""
    import h5py
    with tempfile.TemporaryDirectory(prefix="kvsim_parity_") as tmp:
        cmd = [kvsim, "replay", trace, "--rules", ";".join(specs), "--budgets",
               ",".join(f"cr={r}" for r in ratios), "--save-selection", "--out", tmp, "--window", "64"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, KVSIM_PROGRESS="0"))
        if r.returncode != 0:
            raise DumpError("kvsim replay", r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed")
        out = {}
        with h5py.File(os.path.join(tmp, "selection.h5"), "r") as f:
            for si in range(len(specs)):
                for bi in range(len(ratios)):
                    g = f[f"{si}/{bi}/layers"]
                    out[si, bi] = {int(l): (g[l]["kept"][()], g[l]["key_channels"][()] if "key_channels" in g[l] else None)
                                   for l in g}
        with open(os.path.join(tmp, "summary.json")) as fh:
            n_c = json.load(fh)["protocol"]["n_c"]
    return out, n_c


def jaccard(a, b):
    inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(inter) / float(union)


def parity_table(kvsim, traces, pairs=PAIRS, ratios=RATIOS, progress=None):
    """Rows {trace, press, spec, ratio, jaccard_min, jaccard_mean, differing, explained_by_ties,
    channels_equal}."""
    import h5py
    rows = []
    specs = [p[2] for p in pairs]
    for trace in traces:
        sel, n_c = kvsim_selections(kvsim, trace, specs, ratios)
        with h5py.File(trace, "r") as f:
            meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            meta.update(path=trace, num_layers=int(meta["num_layers"]), num_heads=int(meta["num_heads"]),
                        num_kv_heads=int(meta["num_kv_heads"]), head_dim=int(meta["head_dim"]),
                        hidden_size=int(meta["hidden_size"]))
            for pi, (label, expr, spec, mode) in enumerate(pairs):
                for bi, cr in enumerate(ratios):
                    if progress:
                        progress(f"{os.path.basename(trace)}: {label} at cr={cr}")
                    ours = sel[pi, bi]
                    theirs = kvpress_selection(f, meta, expr.format(cr=cr), mode, n_c)
                    js, differing, explained, channels_equal = [], 0, 0, True
                    for layer, (kp, kp_ch, tied) in theirs.items():
                        ks, ks_ch = ours[layer]
                        if ks.shape != kp.shape:
                            raise DumpError(spec, f"kvsim kept {ks.shape} units x tokens, kvpress {kp.shape}")
                        for h in range(kp.shape[0]):
                            js.append(jaccard(kp[h], ks[h]))
                            diff = np.nonzero(kp[h] != ks[h])[0]
                            differing += len(diff)
                            explained += sum((h, int(j)) in tied for j in diff)
                        if kp_ch is not None or ks_ch is not None:
                            channels_equal = channels_equal and kp_ch is not None and ks_ch is not None and \
                                np.array_equal(kp_ch, ks_ch)
                    rows.append(dict(trace=os.path.basename(trace), press=label, kvpress=expr.format(cr=cr),
                                     reference=label not in INFORMATIONAL,
                                     spec=spec, ratio=cr, jaccard_min=min(js), jaccard_mean=float(np.mean(js)),
                                     differing=differing, explained_by_ties=explained,
                                     channels_equal=channels_equal if "ThinK" in label else None))
    return rows


def format_table(rows):
    lines = [f"{'trace':<26} {'kvpress press':<30} {'kvsim spec':<44} {'ratio':>5} {'J min':>7} {'J mean':>7} "
             f"{'diff':>6} {'ties':>6}  verdict"]
    for r in rows:
        ok = r["differing"] == r["explained_by_ties"] and r["channels_equal"] is not False
        verdict = "exact" if r["differing"] == 0 else ("ties only" if ok else "DIFFERS")
        if not r["reference"]:
            verdict = "(kvsim's own ranking) " + verdict.lower()
        if r["channels_equal"] is not None:
            verdict += ", channels " + ("equal" if r["channels_equal"] else "DIFFER")
        spec = r["spec"] if len(r["spec"]) <= 44 else r["spec"][:41] + "..."
        lines.append(f"{r['trace']:<26} {r['press']:<30} {spec:<44} {r['ratio']:>5} {r['jaccard_min']:>7.4f} "
                     f"{r['jaccard_mean']:>7.4f} {r['differing']:>6} {r['explained_by_ties']:>6}  {verdict}")
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
        mine = {r["ratio"]: r for r in rows if r["trace"] == trace and r["press"] == press}
        any_r = next(iter(mine.values()))
        cells = "".join(f" {mine[x]['jaccard_min']:>9.4f}/{mine[x]['jaccard_mean']:<9.4f}" if x in mine else " " * 20
                        for x in ratios)
        diff = sum(r["differing"] for r in mine.values())
        ties = sum(r["explained_by_ties"] for r in mine.values())
        ok = diff == ties and all(r["channels_equal"] is not False for r in mine.values())
        verdict = "exact" if diff == 0 else (f"ties only ({diff} tokens)" if ok else f"DIFFERS ({diff - ties} tokens)")
        if not any_r["reference"]:
            verdict = "kvsim's own ranking: " + verdict
        if any_r["channels_equal"] is not None:
            verdict += ", channels " + ("equal" if all(r["channels_equal"] for r in mine.values()) else "DIFFER")
        spec = any_r["spec"] if len(any_r["spec"]) <= 46 else any_r["spec"][:43] + "..."
        lines.append(f"{trace:<26} {press:<30} {spec:<46}{cells}  {verdict}")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="kvpress-parity", description="Run kvpress's own presses and kvsim's rules on "
                                "the same trace tensors and compare their kept sets (Jaccard per layer and KV head).")
    p.add_argument("traces", nargs="+", help="kvsim traces storing every context query, with o_proj")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="kvpress compression ratios")
    p.add_argument("--only", help="comma-separated press labels to run (default all)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--long", action="store_true", help="one line per ratio, with the differing and tied token counts")
    p.add_argument("--kvsim", default=os.environ.get("KVSIM_CLI") or os.path.join(
        os.path.dirname(__file__), "..", "..", "build", "tools", "kvsim"), help="the kvsim binary")
    args = p.parse_args(argv)
    pairs = PAIRS if not args.only else [x for x in PAIRS if x[0] in args.only.split(",")]
    try:
        ratios = [float(x) for x in args.ratios.split(",")]
        rows = parity_table(args.kvsim, args.traces, pairs, ratios,
                            progress=lambda m: print(f"kvpress-parity: {m}", file=sys.stderr))
    except DumpError as e:
        print(f"kvpress-parity: error: {e}", file=sys.stderr)
        return 1
    print(format_table(rows) if args.long else format_compact(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0 if parity_holds(rows) else 1


def parity_holds(rows):
    """Every reference pair keeps the same sets as kvpress outside exact ties, channels included."""
    return all(r["differing"] == r["explained_by_ties"] and r["channels_equal"] is not False
               for r in rows if r["reference"])


if __name__ == "__main__":
    sys.exit(main())
