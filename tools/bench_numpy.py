#!/usr/bin/env python3
"""Plain numpy baseline of kvsim's replay work, for `kvsim bench`.

The same computations as kvsim for one synthetic Llama-8B-shaped layer, written the way a
researcher's own script would (vectorised numpy, float32, the same OpenBLAS underneath):
- attention core (LayerCache): for every query head, causal attention of the last n_eval
  positions (logits = q K^T * scale, stable softmax over j <= t, head output = probs V);
- exact projected value norms nu^h_j = ||v_j W_o^h||_1 (on --nu-heads heads, row blocks of 4096);
- the metrics of one selection (measure_perturbation): retained mass F, delta = o - o_P / F,
  Delta^h = delta W_o^h with its L1/L2 norms, the layer sum over heads and its norms, CriticalKV's
  theta and the per-head Ada-KV bound, for the same 20% kept set kvsim bench uses.
Prints one JSON object on stdout.
"""
import argparse
import json
import time

import numpy as np


def blas_name():
    """The BLAS library numpy actually loaded (Debian resolves libblas.so.3 via alternatives)."""
    libs = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "blas" in path or "lapack" in path or "mkl" in path:
                libs.add(path)
    import os
    return ", ".join(sorted(os.path.realpath(p) for p in libs)) or "unknown"


def attention_core(q, k, v, pos, scale, group):
    heads, n_eval, d = q.shape
    out = np.empty((heads, n_eval, d), dtype=np.float32)
    seq = pos.max() + 1
    causal = np.arange(seq)[None, :] > pos[:, None]
    for h in range(heads):
        g = h // group
        s = (q[h] @ k[g, :seq].T) * np.float32(scale)
        s[causal] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        out[h] = s @ v[g, :seq]
    return out


def projected_l1_norms(v, w_head, block=4096):
    """nu_j = ||v_j W||_1 with W = w_head.T (d x D), in row blocks to bound the temporary."""
    out = np.empty(v.shape[0], dtype=np.float32)
    for r0 in range(0, v.shape[0], block):
        out[r0:r0 + block] = np.abs(v[r0:r0 + block] @ w_head.T).sum(axis=1)
    return out


def selection_metrics(probs, out, v, o_proj, nu, keep, pos, n_c, group):
    """Per-head and layer perturbation and bounds of one static kv-mode selection.

    float32 like kvsim, so the same well-conditioned forms as kvsim (the naive o - o_P / F and
    1 - F lose ~1e-3 relative when F ~ 1, as it is for most heads): the kept mass F and the
    evicted mass 1 - F are separate positive sums, delta = (o_ev - (1 - F) o) / F when F >= 1/2
    and o - o_P / F below, theta = sum_ev a nu + (1/F - 1) sum_P a nu. The kept and evicted
    sums use compacted columns, together one [n_eval x seq] by [seq x d] product per head, like
    kvsim."""
    heads, n_eval, d = out.shape
    seq = probs.shape[2]
    y = np.zeros((n_eval, o_proj.shape[0]), dtype=np.float32)
    res = {}
    for h in range(heads):
        g = h // group
        mask = np.ones(seq, dtype=bool)
        mask[:n_c] = keep[g]
        kept_cols, ev_cols = np.flatnonzero(mask), np.flatnonzero(~mask)
        a = probs[h]
        a_kept, a_ev = a.take(kept_cols, axis=1), a.take(ev_cols, axis=1)  # 4x faster than a[:, mask]
        kept_mass, ev_mass = a_kept.sum(axis=1), a_ev.sum(axis=1)
        Z = kept_mass + ev_mass  # 1 up to rounding
        F, miss = kept_mass / Z, ev_mass / Z
        o = out[h] / Z[:, None]
        o_kept = (a_kept @ v[g].take(kept_cols, axis=0)) / Z[:, None]
        o_ev = (a_ev @ v[g].take(ev_cols, axis=0)) / Z[:, None]
        delta = np.where((F >= 0.5)[:, None], (o_ev - miss[:, None] * o) / F[:, None], o - o_kept / F[:, None])
        Dh = delta @ o_proj[:, h * d:(h + 1) * d].T
        res["l1", h] = np.abs(Dh).sum(axis=1)
        res["l2", h] = np.sqrt((Dh * Dh).sum(axis=1))
        y += Dh
        nu_h = nu[h, :seq]
        res["theta", h] = ((a_ev @ nu_h[ev_cols]) + (miss / F) * (a_kept @ nu_h[kept_cols])) / Z
        res["ada", h] = 2 * miss * np.maximum.accumulate(nu_h)[pos]
    res["layer_l1"] = np.abs(y).sum(axis=1)
    res["layer_l2"] = np.sqrt((y * y).sum(axis=1))
    return res


def attention_probs(q, k, pos, scale, group):
    """Probabilities [heads, n_eval, seq] (the attention core keeps them for the metrics)."""
    heads, n_eval, _ = q.shape
    seq = pos.max() + 1
    causal = np.arange(seq)[None, :] > pos[:, None]
    probs = np.empty((heads, n_eval, seq), dtype=np.float32)
    for h in range(heads):
        s = (q[h] @ k[h // group, :seq].T) * np.float32(scale)
        s[causal] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        probs[h] = s
    return probs


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--nu-heads", type=int, default=0, help="heads to time exact nu on (0: skip)")
    ap.add_argument("--metrics", action="store_true", help="also time one selection's metrics")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((a.heads, a.n_eval, a.head_dim), dtype=np.float32)
    k = rng.standard_normal((a.kv_heads, a.seq_len, a.head_dim), dtype=np.float32)
    v = rng.standard_normal((a.kv_heads, a.seq_len, a.head_dim), dtype=np.float32)
    pos = np.arange(a.seq_len - a.n_eval, a.seq_len)
    best = float("inf")
    for _ in range(a.reps):
        t0 = time.perf_counter()
        attention_core(q, k, v, pos, 1.0 / np.sqrt(a.head_dim), a.heads // a.kv_heads)
        best = min(best, time.perf_counter() - t0)
    flops = 4.0 * a.heads * a.n_eval * a.seq_len * a.head_dim
    result = {"seconds": best, "gflops": flops / best / 1e9, "seq_len": a.seq_len,
              "numpy": np.__version__, "blas": blas_name()}
    if a.nu_heads or a.metrics:
        group = a.heads // a.kv_heads
        o_proj = rng.standard_normal((a.hidden, a.heads * a.head_dim), dtype=np.float32) / np.float32(64)
        t0 = time.perf_counter()
        nu_heads = max(a.nu_heads, 1)
        nu = np.empty((a.heads, a.seq_len), dtype=np.float32)
        for h in range(nu_heads):
            w_head = o_proj[:, h * a.head_dim:(h + 1) * a.head_dim]
            nu[h] = projected_l1_norms(v[h // group], w_head)
        result["nu_exact_seconds_per_head"] = (time.perf_counter() - t0) / nu_heads
        result["nu_heads_measured"] = nu_heads
        nu[nu_heads:] = nu[0]  # the metrics only need some nu: same values, same cost
        if a.metrics:
            n_c = a.seq_len - a.n_eval
            keep = (np.arange(n_c, dtype=np.int64) * 2654435761) % 5 == 0  # kvsim bench's 20% set
            keep = np.broadcast_to(keep, (a.kv_heads, n_c))
            probs = attention_probs(q, k, pos, 1.0 / np.sqrt(a.head_dim), group)
            out = probs @ np.repeat(v, group, axis=0)[:, :probs.shape[2]]
            best = float("inf")
            for _ in range(a.reps):
                t0 = time.perf_counter()
                selection_metrics(probs, out, v, o_proj, nu, keep, pos, n_c, group)
                best = min(best, time.perf_counter() - t0)
            result["metrics_seconds"] = best
    print(json.dumps(result))


if __name__ == "__main__":
    main()
