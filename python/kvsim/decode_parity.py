"""kvpress's DecodingPress against kvsim's decode protocol (rules doc 1.9), cache by cache.

kvpress side: its own `DecodingPress.compress` (the target ratio search, then the base press's
`compress`) driven as its forward hook drives it during generation, on a trace layer: the cache
starts full at n_0, every generated position appends its key and value and its hidden state to the
buffer (the trace's post-RoPE query, through the parity shim of kvsim.parity), and after every
`compression_interval` steps the cache is compressed and the buffer cleared. Values are replaced
by position tags, so the positions each KV head keeps are read back from what kvpress gathered
(the presses compared here never read values).

kvsim side: kvsim.decode_masks, the same rule at the same target size (tokens per head; cr=R for
kvpress's CompressionRatioDecodingPress, max(1, int(L (1 - R))) of the L tokens seen), start full. Every evaluation query's cache is compared: the positions kvpress held when that query was
processed (its own token included, before the compression that step may trigger) against
kvsim's mask. Exact agreement is expected; a differing token is explained as in kvsim.parity when
kvpress's score for it sat at a compression's cut (an exact tie, or within NEAR_TIE of it).
"""
import sys

import numpy as np

# (label, base press with {w} the window, kvsim spec with {w}); every one a ScorerPress whose
# score reads no values.
DECODE_PAIRS = [
    ("Knorm", "KnormPress()", "knorm"),
    ("StreamingLLM", "StreamingLLMPress(n_sink=4)", "streaming(sink=4)"),
    ("SnapKV", "SnapKVPress(window_size={w}, kernel_size=5)", "snapkv(window={w},kernel=5,pool=avg)"),
    ("TOVA", "TOVAPress()", "tova"),
    ("KeyDiff", "KeyDiffPress()", "keydiff(block=0)"),
]


def kvpress_decode_caches(f, meta, layer, n0, press_expr, every, target, buffer_size, eval_pos, position_order=False):
    """({eval position: [Hkv] sorted kept positions}, {(head, position)} at or within NEAR_TIE of a
    compression's cut) of kvpress's DecodingPress on one layer.
    kvpress's compressed cache is in its top-k's order (scores descending), and the next
    compression's position-dependent steps (StreamingLLM's sinks and recent tokens, SnapKV's
    pooling) read that order; position_order=True re-sorts each head's cache by position after
    every compression, as kvsim keeps it."""
    import torch

    from kvsim.dump.kvpress_bridge import parse_press
    from kvsim.parity import layer_inputs, recorded_topk, tie_positions
    from kvpress import CompressionRatioDecodingPress, DecodingPress

    T = int(eval_pos[-1]) + 1
    module, hidden, k, _, _, kwargs = layer_inputs(f, meta, layer, T, "post", False)
    Hkv, d = k.shape[1], k.shape[3]
    tags = torch.arange(T, dtype=torch.float32)[None, None, :, None].expand(1, Hkv, T, d).contiguous()
    if str(target).startswith("cr="):  # a share of the tokens seen so far: kvpress's CompressionRatioDecodingPress
        press = CompressionRatioDecodingPress(base_press=parse_press(press_expr), compression_interval=every,
                                              target_compression_ratio=float(str(target)[3:]),
                                              hidden_states_buffer_size=buffer_size)
    else:
        press = DecodingPress(base_press=parse_press(press_expr), compression_interval=every, target_size=int(target),
                              hidden_states_buffer_size=buffer_size)
    keys, values = k[:, :, :n0], tags[:, :, :n0]
    buffer, steps, out, tied = [], 0, {}, set()
    wanted = set(int(t) for t in eval_pos)
    with torch.no_grad():
        for t in range(n0, T):
            keys = torch.cat([keys, k[:, :, t:t + 1]], dim=2)
            values = torch.cat([values, tags[:, :, t:t + 1]], dim=2)
            buffer.append(hidden[:, t:t + 1])
            steps += 1
            if t in wanted:
                out[t] = [np.sort(values[0, g, :, 0].numpy().astype(np.int64)) for g in range(Hkv)]
            if steps >= every:
                buffered = torch.cat(buffer, dim=1)
                kw = dict(kwargs, hidden_states=buffered, position_ids=torch.tensor([[t]]),  # logical: tokens seen
                          position_embeddings=tuple(x[:, :buffered.shape[1]] for x in kwargs["position_embeddings"]))
                held = values[0, :, :, 0].numpy().astype(np.int64)  # [Hkv, n] positions
                with recorded_topk() as calls:
                    keys, values = press.compress(module, buffered, keys, values, None, kw)
                exact, near = tie_positions(calls, Hkv, held.shape[1])
                tied.update((g, int(held[g, j])) for g, j in exact | near)
                if position_order:
                    order = values[..., 0].argsort(dim=-1)[..., None].expand(-1, -1, -1, d)
                    keys, values = keys.gather(2, order), values.gather(2, order)
                steps, buffer = 0, []
            buffer = buffer[-buffer_size:] if buffer_size > 0 else []
    return out, tied


def decode_parity(trace, every=16, targets=(128, 256), window=8, pairs=DECODE_PAIRS, layers=None, progress=None,
                  position_order=False):
    """Rows {trace, label, target, every, cache_order, layers, queries, differing_masks, differing_tokens,
    error}; cache_order "kvpress" (its top-k order) or "position" (re-sorted, position_order)."""
    import h5py

    import kvsim
    from kvsim.parity import trace_meta
    with h5py.File(trace, "r") as f:
        num_layers = int(f.attrs["num_layers"])
    layers = list(layers) if layers is not None else list(range(num_layers))
    ours = {}  # first, while h5py has the file closed: kvsim's engine reads it with its own HDF5
    for label, _, spec in pairs:
        for target in targets:
            try:
                ours[label, target] = [kvsim.decode_masks(trace, spec.format(w=window), str(target), layer=layer,
                                                          every=every, window=window) for layer in layers]
            except kvsim.KvsimError as e:
                ours[label, target] = f"kvsim: {e}"
    rows = []
    with h5py.File(trace, "r") as f:
        meta = trace_meta(f, trace)
        for label, expr, _ in pairs:
            for target in targets:
                row = dict(trace=trace, label=label, target=str(target), every=int(every),
                           cache_order="position" if position_order else "kvpress", layers=0, queries=0,
                           differing_masks=0, differing_tokens=0, explained_by_ties=0, error="")
                mine_all = ours[label, target]
                try:
                    if isinstance(mine_all, str):
                        raise RuntimeError(mine_all)
                    for layer, mine in zip(layers, mine_all):
                        pos = mine["positions"]
                        theirs, tied = kvpress_decode_caches(f, meta, layer, int(pos[0]), expr.format(w=window), every,
                                                       target, every, pos, position_order)
                        for qi, t in enumerate(pos):
                            for g in range(mine["masks"].shape[0]):
                                diff = np.setxor1d(np.flatnonzero(mine["masks"][g, qi, :t + 1]), theirs[int(t)][g])
                                row["differing_masks"] += len(diff) > 0
                                row["differing_tokens"] += len(diff)
                                row["explained_by_ties"] += sum((g, int(p)) in tied for p in diff)
                            row["queries"] += 1
                        row["layers"] += 1
                except Exception as e:  # a row with its error; the others still run
                    row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                if progress:
                    progress(f"{trace} {label} target {target}: {row['differing_masks']} differing caches"
                             + (f" ({row['error']})" if row["error"] else ""))
    return rows


def format_rows(rows):
    lines = [f"{'press':<14} {'target':>6} {'every':>5} {'kvpress cache':>13} {'layers':>6} {'queries':>7} "
             f"{'differing':>9} verdict"]
    for r in rows:
        verdict = "error: " + r["error"] if r["error"] else (
            "exact" if r["differing_masks"] == 0 else
            f"{r['differing_tokens']} tokens differ, {r['explained_by_ties']} at a cut's (near-)tie")
        lines.append(f"{r['label']:<14} {r['target']:>6} {r['every']:>5} {r['cache_order']:>13} {r['layers']:>6} {r['queries']:>7} "
                     f"{r['differing_masks']:>9} {verdict}")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="kvpress-parity --decode",
                                description="kvpress's DecodingPress against kvsim's --protocol decode, query by query")
    p.add_argument("traces", nargs="+")
    p.add_argument("--every", type=int, default=16, help="compression_interval (kvsim --every)")
    p.add_argument("--targets", default="128,256,cr=0.75",
                   help="target_size values (tokens per KV head), or cr=R: CompressionRatioDecodingPress (kvsim's cr=R)")
    p.add_argument("--window", type=int, default=8, help="SnapKV's window_size (< every: kvpress asserts it)")
    args = p.parse_args(argv)
    rows = []
    for t in args.traces:
        for order in (False, True):
            rows += decode_parity(t, args.every, args.targets.split(","), args.window,
                                  progress=lambda m: print(f"kvpress-parity: {m}", file=sys.stderr),
                                  position_order=order)
    print(format_rows(rows))
    print("kvpress cache: 'kvpress' as kvpress keeps it (in its top-k's order after a compression); 'position' "
          "re-sorted by position after each compression, as kvsim keeps it. Parity: equal up to ties at a cut with the "
          "position order for every press, and with kvpress's order for the presses that do not read it.")
    return 0 if decode_parity_holds(rows) else 1


# The presses whose next compression reads the cache order (positions: sinks/recent, pooling).
ORDER_DEPENDENT = {"StreamingLLM", "SnapKV"}


def decode_parity_holds(rows):
    return all(not r["error"] and (r["differing_tokens"] == r["explained_by_ties"] or
                                   (r["cache_order"] == "kvpress" and r["label"] in ORDER_DEPENDENT)) for r in rows)


if __name__ == "__main__":
    sys.exit(main())
