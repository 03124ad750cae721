#!/usr/bin/env python3
"""Benchmark of kvsim-dump on a real model: the model's own forward pass over a prompt against
recording the same prompt, measured in one run on the same loaded model (not a timed test).

For each prompt length (needle-in-a-haystack prompts in the model's chat template):
  forward   the model's prefill alone (transformers, sdpa, use_cache, last logits only);
  dump      the same prefill with kvsim's capture on, every layer's q/k/v (and o) written to the
            trace, and the file finished (what kvsim-dump adds over a forward pass);
  whole     `tools/kvsim-dump` as a user runs it (process start, imports, model load from the
            conversion cache, tokenization, dump), wall and CPU.
Each in-process phase is run `--repeat` times and the fastest kept. Ratios are dump/forward.

    .venv/bin/python tools/bench_dump.py --lengths 2048,8192 --json bench_dump.json

Run on the project's .venv (tools/install-deps.sh); the model defaults to the SmolLM2 GGUF that
tools/fetch-model.sh installs.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

from kvsim.dump import cli  # noqa: E402
from kvsim.dump.prompts import apply_chat, build_niah  # noqa: E402
from kvsim.dump.recorder import Recorder  # noqa: E402
from kvsim.dump.trace_file import TraceFileWriter  # noqa: E402
from kvsim.dump.trace_size import choose_storage  # noqa: E402

DEFAULT_MODEL = os.path.join(HERE, "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_ESSAYS = os.path.join(HERE, "..", "..", "shared", "corpora", "paul_graham_essays")


def timed(fn, repeat):
    """(fastest wall seconds, CPU seconds of that run, result)."""
    best = None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        if best is None or t < best[0]:
            best = (t, c, out)
    return best


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--niah-dir", default=DEFAULT_ESSAYS)
    p.add_argument("--lengths", default="2048,8192", help="prompt lengths in tokens")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--storage", default="auto", choices=("auto", "full"),
                   help="auto: kvsim-dump's defaults; full: float32, every query, o")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    import torch

    from kvsim.dump.hf_backend import HFSource
    source = HFSource(a.model)
    tok = source.tokenizer
    head, tail, head_text, tail_text = tok.chat_frame()
    backend = source.load("float32", a.device)
    rows = []
    tmp = tempfile.mkdtemp(prefix="kvsim-bench-dump-")
    storage_args = ([] if a.storage == "auto" else ["--dtype", "float32", "--queries", "all", "--with-o"])
    for length in [int(x) for x in a.lengths.split(",")]:
        prompt = build_niah(tok, a.niah_dir, length - len(head) - len(tail), 0.5)
        prompt = apply_chat(prompt, head, tail, head_text, tail_text, tok.bos_id)
        ids, P = prompt.ids, len(prompt.ids)
        device = backend.device

        def forward():
            with torch.no_grad():
                backend._forward(torch.tensor([ids], device=device), None, 0)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        forward()  # warm-up (allocator, kernels)
        t_fwd, c_fwd, _ = timed(forward, a.repeat)
        storage, _, mb_est = choose_storage(
            backend.meta, backend.meta["num_layers"], prompt.context_end, P,
            "auto" if a.storage == "auto" else "float32", "auto" if a.storage == "auto" else "all",
            None if a.storage == "auto" else True)
        out = os.path.join(tmp, f"t{length}.h5")

        def dump():
            q_pos = cli.query_positions(storage.queries, prompt.context_end, P)
            meta = dict(backend.meta, prefill_len=P)
            writer = TraceFileWriter(out, meta, P, q_pos, storage.dtype)
            rec = Recorder(writer, list(range(meta["num_layers"])), q_pos, with_o=storage.with_o)
            backend.run(ids, 0, rec)
            writer.finish(ids, prompt.segment, prompt.spans)
            return os.path.getsize(out)
        t_dump, c_dump, size = timed(dump, a.repeat)
        # The whole command, as a user runs it.
        cmd = [sys.executable, os.path.join(HERE, "kvsim-dump"), "--model", a.model, "--chat", "--niah",
               "--niah-dir", a.niah_dir, "--niah-length", str(length), "--generate", "0",
               "--device", a.device, *storage_args, "--out", out]
        c0, t0 = children_cpu(), time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        t_whole, c_whole = time.perf_counter() - t0, children_cpu() - c0
        if r.returncode != 0:
            sys.exit(f"bench_dump: kvsim-dump failed: {r.stderr.strip().splitlines()[-1]}")
        row = {"positions": P, "storage": f"{storage.dtype}, queries {storage.queries}"
                                         f"{', o' if storage.with_o else ''}",
               "forward_s": t_fwd, "forward_cpu_s": c_fwd, "dump_s": t_dump, "dump_cpu_s": c_dump,
               "dump_over_forward": t_dump / t_fwd, "dump_cpu_over_forward_cpu": c_dump / c_fwd,
               "forward_tokens_per_s": P / t_fwd, "dump_tokens_per_s": P / t_dump,
               "whole_command_s": t_whole, "whole_command_cpu_s": c_whole,
               "trace_mb": size / 1e6, "trace_mb_estimate": mb_est}
        rows.append(row)
        print(f"bench_dump: {P} positions done", file=sys.stderr)
    result = {"model": os.path.basename(a.model), "device": a.device, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    print(f"{'positions':>9} {'forward s':>9} {'dump s':>7} {'ratio':>5} {'cpu ratio':>9} "
          f"{'fwd tok/s':>9} {'dump tok/s':>10} {'whole s':>7} {'trace MB':>8}  storage")
    for r in rows:
        print(f"{r['positions']:>9} {r['forward_s']:>9.2f} {r['dump_s']:>7.2f} "
              f"{r['dump_over_forward']:>5.2f} {r['dump_cpu_over_forward_cpu']:>9.2f} "
              f"{r['forward_tokens_per_s']:>9.0f} {r['dump_tokens_per_s']:>10.0f} "
              f"{r['whole_command_s']:>7.1f} {r['trace_mb']:>8.1f}  {r['storage']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
