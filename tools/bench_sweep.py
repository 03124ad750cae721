#!/usr/bin/env python3
"""Rank scaling of `kvsim-mpi sweep` on this machine, measured in one run: the same study (synthetic
Llama-3.1-8B-shaped traces) on 1 rank x 1 thread, 2 ranks x 1 thread, and 1 rank x 2 threads,
interleaved, best of --repeats. Prints a table and per-unit costs (the numbers a cluster estimate
starts from: docs/sweep-at-scale.md); --json writes them.

    .venv/bin/python tools/bench_sweep.py [--traces 4] [--seq-len 8192] [--layers 4] [--repeats 2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "..", "build", "tools")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rules", default="snapkv;ada(snapkv);critical(snapkv);keydiff;streaming")
    p.add_argument("--budgets", default="0.1,0.2")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    kvsim, mpi = os.path.join(BUILD, "kvsim"), os.path.join(BUILD, "kvsim-mpi")
    env = dict(os.environ, KVSIM_PROGRESS="0")
    with tempfile.TemporaryDirectory(prefix="kvsim_sweepbench_") as d:
        traces = []
        for i in range(args.traces):
            t = os.path.join(d, f"synth{i}.h5")
            subprocess.run([kvsim, "synth", "--out", t, "--layers", str(args.layers), "--seq-len", str(args.seq_len),
                            "--seed", str(i)], check=True, capture_output=True, env=env)
            traces.append(t)
        configs = [("1 rank x 1 thread", 1, 1), ("2 ranks x 1 thread", 2, 1), ("1 rank x 2 threads", 1, 2)]
        best, units = {}, None
        for rep in range(args.repeats):
            for name, n, threads in configs:
                out = os.path.join(d, f"out_{n}_{threads}")
                shutil.rmtree(out, ignore_errors=True)
                cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(n), mpi, "sweep", "--traces",
                       ",".join(traces), "--rules", args.rules, "--budgets", args.budgets, "--out", out,
                       "--layers-per-unit", "1", "--threads", str(threads), "--nu", "upper", "--nu-cache", "off"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, env=env)
                wall = time.perf_counter() - t0
                best[name] = min(best.get(name, wall), wall)
                if n == 1 and threads == 1:
                    with open(os.path.join(out, "sweep.json")) as fh:
                        units = json.load(fh)["units"]
        base = best["1 rank x 1 thread"]
        print(f"{args.traces} traces x {args.layers} layers x {args.seq_len} positions (32 heads, 8 KV, d 128), "
              f"rules {args.rules}, budgets {args.budgets}; best of {args.repeats}, wall incl. mpirun start")
        for name, _, _ in configs:
            print(f"  {name:<20} {best[name]:8.2f} s   speed-up {base / best[name]:5.2f}x")
        secs = sorted(u["seconds"] for u in units)
        per_unit = sum(secs) / len(secs)
        print(f"  per unit (1 layer, 1 thread): mean {per_unit:.3f} s, min {secs[0]:.3f} s, max {secs[-1]:.3f} s")
        out = {"traces": args.traces, "layers": args.layers, "seq_len": args.seq_len, "rules": args.rules,
               "budgets": args.budgets, "wall_seconds": best, "speedup_2_ranks": base / best["2 ranks x 1 thread"],
               "speedup_2_threads": base / best["1 rank x 2 threads"], "unit_seconds_mean": per_unit}
        print(json.dumps(out))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
