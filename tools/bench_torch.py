#!/usr/bin/env python3
"""torch anchors for `kvsim bench`: the same work as kvsim on the same layer, in the same run.

`kvsim bench` writes one synthetic layer and a set of selections to a folder (layer.json plus
raw float32/uint8 arrays) together with its own metrics of those selections, and runs this
script with the same thread count. The script times, on that data:
- torch's `bmm` on the attention core's shapes (per KV group [G*n x d]x[d x S] and
  [G*n x S]x[S x d]), the GEMM part alone and the whole core (logits, causal mask, softmax);
- a competent torch replay: full attention once, then per selection `P * mask`, the kept and
  evicted masses as separate sums, delta = o - o_P/F (or (o_ev - (1-F) o)/F when F >= 1/2, the
  same well-conditioned forms as kvsim, plain float32 loses ~1e-3 when F ~ 1), Delta^h = delta
  W_o^h per head through one bmm, per-head L1 and the layer's L1;
and checks its per-head L1 and F against kvsim's (largest relative difference). Prints one JSON
object on stdout.
"""
import argparse
import json
import os
import re
import time

import numpy as np
import torch


def load(folder):
    with open(os.path.join(folder, "layer.json")) as f:
        m = json.load(f)
    H, Hkv, d, D, S, nq = m["heads"], m["kv_heads"], m["head_dim"], m["hidden"], m["seq_len"], m["num_q"]

    def arr(name, dtype, shape):
        return torch.from_numpy(np.fromfile(os.path.join(folder, name), dtype=dtype).reshape(shape))

    a = {"q": arr("q.f32", np.float32, (H, nq, d)), "k": arr("k.f32", np.float32, (Hkv, S, d)),
         "v": arr("v.f32", np.float32, (Hkv, S, d)), "o_proj": arr("o_proj.f32", np.float32, (D, H * d)),
         "masks": arr("masks.u8", np.uint8, (m["selections"], m["units"], m["n_c"])),
         "kvsim_l1": arr("kvsim_l1.f64", np.float64, (m["selections"], H, len(m["eval_rows"]))),
         "kvsim_F": arr("kvsim_F.f64", np.float64, (m["selections"], H, len(m["eval_rows"])))}
    return m, a


def blas_info():
    """The BLAS torch was built with (BLAS_INFO in its build configuration)."""
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def best_of(reps, fn):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m, t = load(a.folder)
    H, Hkv, d, S, n_c = m["heads"], m["kv_heads"], m["head_dim"], m["seq_len"], m["n_c"]
    G = H // Hkv
    rows = torch.tensor(m["eval_rows"])
    pos = torch.tensor(m["eval_pos"])
    n = len(rows)
    q = t["q"][:, rows].reshape(Hkv, G * n, d)  # heads of one KV group stacked
    k, v = t["k"], t["v"]
    causal = (torch.arange(S)[None, :] > pos[:, None]).repeat(G, 1)  # [G*n, S]
    scale = float(m["attn_scale"])

    def gemms():
        logits = torch.bmm(q, k.transpose(1, 2))
        return torch.bmm(logits, v)

    def core():
        logits = torch.bmm(q, k.transpose(1, 2)).mul_(scale).masked_fill_(causal, float("-inf"))
        p = torch.softmax(logits, dim=-1)
        return p, torch.bmm(p, v)

    with torch.inference_mode():
        bmm_s, _ = best_of(a.reps, gemms)
        core_s, _ = best_of(a.reps, core)
        # Per-head W_o^h as [H, d, D] for one bmm of all heads.
        Wh = t["o_proj"].reshape(-1, H, d).permute(1, 2, 0).contiguous()
        masks = t["masks"].bool()
        units = masks.shape[1]

        def replay():
            p, out = core()
            p4 = p.reshape(Hkv, G, n, S)
            o4 = out.reshape(H, n, d)
            l1s, Fs, layer = [], [], []
            for b in range(masks.shape[0]):
                keep = torch.ones(units, S, dtype=torch.bool)
                keep[:, :n_c] = masks[b]
                keep = keep.reshape(Hkv, units // Hkv, 1, S) if units == H else keep.reshape(Hkv, 1, 1, S)
                pk = p4 * keep
                pe = p4 - pk
                K, E = pk.sum(-1), pe.sum(-1)
                F = (K / (K + E)).reshape(H, n, 1)
                oP = torch.bmm(pk.reshape(Hkv, G * n, S), v).reshape(H, n, d)
                oE = torch.bmm(pe.reshape(Hkv, G * n, S), v).reshape(H, n, d)
                delta = torch.where(F >= 0.5, (oE - (1 - F) * o4) / F, o4 - oP / F)
                Dh = torch.bmm(delta, Wh)  # [H, n, D]
                l1s.append(Dh.abs().sum(-1))
                Fs.append(F.reshape(H, n))
                layer.append(Dh.sum(0).abs().sum(-1))
            return torch.stack(l1s), torch.stack(Fs), torch.stack(layer)

        replay_s, (l1, F, _) = best_of(a.reps, replay)

    def rel_diff(x, ref):
        ref = ref.to(torch.float64)
        scale_ = torch.clamp(ref.abs(), min=1e-6 * float(ref.abs().max()))
        return float(((x.to(torch.float64) - ref).abs() / scale_).max())

    flops = 4.0 * H * n * S * d
    print(json.dumps({
        "torch": torch.__version__, "threads": a.threads, "blas": blas_info(),
        "bmm_seconds": bmm_s, "bmm_gflops": flops / bmm_s * 1e-9, "core_seconds": core_s,
        "replay_seconds": replay_s, "selections": int(masks.shape[0]),
        "max_rel_diff_l1": rel_diff(l1, t["kvsim_l1"]), "max_rel_diff_F": rel_diff(F, t["kvsim_F"])}))


if __name__ == "__main__":
    main()
