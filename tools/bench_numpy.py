#!/usr/bin/python3
"""Plain numpy baseline of kvsim's replay attention core, for `kvsim bench`.

Same computation as LayerCache for one synthetic Llama-8B-shaped layer: for every query head,
causal attention of the last n_eval positions (logits = q K^T * scale, stable softmax over
j <= t, head output = probs V), float32. Prints one JSON object on stdout.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1)
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
    print(json.dumps({"seconds": best, "gflops": flops / best / 1e9, "seq_len": a.seq_len,
                      "numpy": np.__version__, "blas": blas_name()}))


if __name__ == "__main__":
    main()
