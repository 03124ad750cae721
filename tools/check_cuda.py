#!/usr/bin/env python3
"""Checks kvsim-dump's and the closed loop's `--device cuda` against the CPU, on a machine with an
NVIDIA GPU (nothing else in kvsim needs one; CI does not run this).

  1. The same chat prompt dumped on the CPU (float32), on CUDA in float32 and on CUDA in bfloat16
     (all stored as float32 with every query and o): the three traces must have the same layout
     (datasets, shapes, dtypes, root attributes apart from `source`), CUDA float32 must equal the
     CPU to float32 precision (and generate the same tokens), bfloat16 to bfloat16 precision.
  2. Each trace's own attention output o is reproduced from its q, k, v in float64 (the check
     `kvsim validate --check-o` runs; the C++ engine is not needed here).
  3. The closed loop's model (loop_models.HFLoop: the model with evicted keys masked in its KV
     cache) on CUDA against the CPU: the same one-shot eviction at the end of the context, then the
     recorded continuation teacher-forced; logits compared.

    python3 tools/check_cuda.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out DIR

Writes DIR/check_cuda.json and the traces; prints a short table; exits 1 if a check fails.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# Largest relative differences accepted (max |a-b| / max |a| per tensor and layer).
TOL = {"float32": 1e-3, "bfloat16": 0.1}
# o recomputed from the stored q, k, v: float32 kernels agree to ~1e-6; bfloat16 kernels round
# their output to bfloat16 (2^-8 relative).
CHECK_O_TOL = {"float32": 1e-5, "bfloat16": 2e-2}


def layout(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, (obj.shape, str(obj.dtype)))
                     if hasattr(obj, "shape") else None)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()
                 if k != "source"}
    return out, attrs


def tensors(path):
    import h5py
    with h5py.File(path, "r") as f:
        L = int(f.attrs["num_layers"])
        return ({name: [f[f"layers/{l}/{name}"][()] for l in range(L)] for name in ("q", "k", "v", "o")},
                f["tokens/input_ids"][()], f["tokens/segment"][()], f["q_pos"][()], float(f.attrs["attn_scale"]))


def rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(a).max(), 1e-30))


def check_o(path):
    """Largest relative error of o recomputed in float64 from q, k, v (causal softmax)."""
    t, ids, seg, q_pos, scale = tensors(path)
    worst = 0.0
    for q, k, v, o in zip(t["q"], t["k"], t["v"], t["o"]):
        G = q.shape[0] // k.shape[0]
        kk = np.repeat(k, G, axis=0).astype(np.float64)
        vv = np.repeat(v, G, axis=0).astype(np.float64)
        logits = np.einsum("hqd,hkd->hqk", q.astype(np.float64), kk) * scale
        logits[:, np.arange(k.shape[1])[None, :] > q_pos[:, None]] = -np.inf
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        worst = max(worst, rel(o, np.einsum("hqk,hkd->hqd", p, vv)))
    return worst


def closed_loop_model(model_path, trace, gpu):
    """Next-token logits of the evicted cache, CPU vs CUDA (float32)."""
    from kvsim.dump.hf_backend import HFBackend
    from kvsim.closed_loop.models import HFLoop
    from kvsim.closed_loop.runs import Snapshot, apply_kept, teacher_forced
    _, ids, seg, _, _ = tensors(trace)
    n_c = int(np.argmax(seg != 0))
    P = int(np.argmax(seg == 2))
    logits = {}
    for device in ("cpu", gpu):
        loop = HFLoop(HFBackend.load(model_path, "float32", device))
        snap = Snapshot(loop, [int(i) for i in ids[:n_c]])
        rng = np.random.default_rng(0)
        kept = {l: (rng.random((loop.num_kv_heads, n_c)) < 0.3) for l in range(loop.num_layers)}
        for m in kept.values():
            m[:, :4] = True
            m[:, -16:] = True
        apply_kept(loop, snap.state, kept, n_c, "check")
        logits[device] = teacher_forced(loop, snap.state, ids[n_c:]).logits
    a, b = logits["cpu"], logits[gpu]
    return {"positions": int(len(ids) - n_c), "max_abs_logit_diff": float(np.abs(a - b).max()),
            "max_abs_logit": float(np.abs(a).max()),
            "argmax_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
            "prompt_end_index": P - n_c}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", default=os.path.join(HERE, "..", "README.md"),
                   help="a text file for the prompt (default: the README)")
    p.add_argument("--max-tokens", type=int, default=600)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda", help="the device checked against the CPU (cpu: a "
                                                     "dry run of this script)")
    a = p.parse_args()
    import torch
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("check_cuda: torch sees no CUDA device")
    os.makedirs(a.out, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0) if a.device != "cpu" else "cpu", "torch": torch.__version__, "runs": {}}
    import transformers
    result["transformers"] = transformers.__version__
    # The CPU in float32 first: the reference of the others.
    runs = [("cpu", "float32"), (a.device, "float32"), (a.device, "bfloat16")]
    paths = {}  # run name -> (dtype, trace)
    for i, (device, dtype) in enumerate(runs):
        name = f"{i}-{device}-{dtype}"
        path = os.path.join(a.out, f"trace-{name}.h5")
        cmd = [sys.executable, os.path.join(HERE, "kvsim-dump"), "--model", a.model, "--chat",
               "--prompt", a.prompt, "--question", "What is this text about?", "--max-tokens",
               str(a.max_tokens), "--generate", "16", "--device", device, "--torch-dtype", dtype,
               "--dtype", "float32", "--queries", "all", "--with-o", "--out", path]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"check_cuda: {device} {dtype} dump failed: {r.stderr.strip()[-2000:]}")
        result["runs"][name] = {"stdout": r.stdout.strip().splitlines()[-1], "check_o": check_o(path)}
        paths[name] = (dtype, path)
    ok = True
    cpu_trace = paths["0-cpu-float32"][1]
    base_layout = layout(cpu_trace)
    base, ids0, _, _, _ = tensors(cpu_trace)
    for name, (dtype, path) in paths.items():
        run = result["runs"][name]
        run["same_layout"] = layout(path) == base_layout
        t, ids, _, _, _ = tensors(path)
        run["same_tokens"] = bool(np.array_equal(ids, ids0))
        run["max_rel_diff_vs_cpu"] = {name: max(rel(x, y) for x, y in zip(base[name], t[name]))
                                      for name in ("q", "k", "v", "o")}
        good = (run["same_layout"] and run["check_o"] <= CHECK_O_TOL[dtype]
                and (dtype != "float32" or run["same_tokens"])
                and max(run["max_rel_diff_vs_cpu"].values()) <= TOL[dtype])
        run["ok"] = bool(good)
        ok &= good
    result["closed_loop_model"] = cl = closed_loop_model(a.model, cpu_trace, a.device)
    cl["ok"] = cl["argmax_agreement"] == 1.0 and cl["max_abs_logit_diff"] <= 1e-3 * cl["max_abs_logit"]
    ok &= cl["ok"]
    result["ok"] = bool(ok)
    with open(os.path.join(a.out, "check_cuda.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{result['device']}, torch {result['torch']}, transformers {result['transformers']}")
    for name, run in result["runs"].items():
        d = run["max_rel_diff_vs_cpu"]
        print(f"{name:15} layout {'same' if run['same_layout'] else 'DIFFERS'}, tokens "
              f"{'same' if run['same_tokens'] else 'differ'}, vs cpu q {d['q']:.1e} k {d['k']:.1e} "
              f"v {d['v']:.1e} o {d['o']:.1e}, check-o {run['check_o']:.1e}: {'OK' if run['ok'] else 'FAIL'}")
    print(f"closed-loop model cuda vs cpu: max |logit diff| {cl['max_abs_logit_diff']:.2e} "
          f"(max |logit| {cl['max_abs_logit']:.1f}), argmax agreement {cl['argmax_agreement']:.3f} over "
          f"{cl['positions']} positions: {'OK' if cl['ok'] else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
