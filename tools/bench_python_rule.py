#!/usr/bin/env python3
"""Speed of a rule written in Python against the same rule in C++, in one run (interleaved, so
machine noise hits both): knorm as kvsim.ScoreRule (numpy) vs kvsim's knorm, full replays of a
synthetic Llama-3.1-8B-shaped layer (default 32K positions). Prints the table and a JSON line.

    .venv/bin/python tools/bench_python_rule.py [--seq-len 32768] [--repeats 3] [--json FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import kvsim


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the result here too")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvsim_pybench_") as d:
        trace = os.path.join(d, "layer.h5")
        kvsim.run("synth", "--out", trace, "--layers", "1", "--seq-len", args.seq_len)
        rule = kvsim.ScoreRule("numpy_knorm", lambda L: -np.linalg.norm(L.k, axis=-1), attention=False)
        common = dict(budgets=[0.05, 0.1, 0.2], nu="upper", nu_cache="off")
        times = {"knorm": [], "numpy_knorm": []}
        for _ in range(args.repeats):
            for name, r in (("knorm", "knorm"), ("numpy_knorm", rule)):
                t0 = time.perf_counter()
                df = kvsim.replay(trace, rules=r, **common)
                times[name].append(time.perf_counter() - t0)
        sel = {n: kvsim.replay(trace, rules=r, **common).attrs["summary"]["rules"][0]["budgets"][0]["select_seconds"]
               for n, r in (("knorm", "knorm"), ("numpy_knorm", rule))}
        best = {k: min(v) for k, v in times.items()}
        ratio = best["numpy_knorm"] / best["knorm"]
        print(f"replay of one {args.seq_len}-position layer (32 heads, 8 KV heads, d 128), 3 budgets, best of "
              f"{args.repeats} interleaved runs:")
        print(f"  C++ knorm          {best['knorm']:8.3f} s   (selection {sel['knorm'] * 3:.4f} s)")
        print(f"  Python ScoreRule   {best['numpy_knorm']:8.3f} s   (selection {sel['numpy_knorm'] * 3:.4f} s)")
        print(f"  ratio              {ratio:8.3f}x")
        out = {"seq_len": args.seq_len, "cpp_seconds": best["knorm"], "python_seconds": best["numpy_knorm"],
               "ratio": ratio, "runs": times}
        print(json.dumps(out))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
