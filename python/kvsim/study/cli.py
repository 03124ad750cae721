"""kvsim-study: a model and a prompt set in; every trace, the offline replays, the closed-loop runs
and two tables with 95% intervals out (accuracy.csv, claims.csv; study.json, figures/, summary.md and
report.html, one self-contained page of both).

Per prompt (prompts/<id>/): the trace (kvsim-dump, in the chat template), the main replay of the
study's rules at its budgets (the closed loop's kept sets), the claim replays (CriticalKV and
Ada-KV at 5-50% budgets, both compression points, in-sample and held-out queries), kvsim analyze
(KeyDiff premise) and kvsim prefill (CritiPrefill), then the closed loop: the prompt is prefilled
once, and each rule's kept set is applied to a copy of that full cache (closed_loop.ClosedLoop).
A prompt's outputs are kept when it finishes (done.json), so a study that was stopped resumes.
Tables and the definitions of every column: docs/study.md.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

from kvsim.dump import cli
from kvsim.dump.errors import DumpError
from kvsim.dump.progress import Progress, format_seconds
from kvsim.study.claims import claims_table
from kvsim.study.prompts import default_prompts, read_prompt_file
from kvsim.study.tables import accuracy_table, closed_loop_records, layer_perturbation

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(HERE, "..", "..", "..", "shared"))
DEFAULT_MODEL = os.path.abspath(os.path.join(HERE, "..", "..", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
DEFAULT_RULES = "default"
DEFAULT_BUDGETS = "0.1,0.2,0.3"
CLAIM_BUDGETS = "0.05,0.1,0.2,0.3,0.5"
# The CriticalKV claim: each base against critical(base) under either norm (rules doc 4.1). The
# third base is the SnapKV of the CriticalKV authors' code (kvpress's: kernel 5, average pooling).
CLAIM_BASES = ("snapkv", "ada(snapkv)", "snapkv(window=32,kernel=5,pool=avg)")
CLAIM_RULES = [r for b in CLAIM_BASES for r in (b, f"critical({b})", f"critical({b},norm=l2)")]
PREFILL_OPTIONS = dict(segment=128, block=16, budget=256, threshold=256)


def build_parser():
    p = argparse.ArgumentParser(prog="kvsim-study", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="GGUF file, Hugging Face folder or llama2.c "
                                                          "checkpoint (default: SmolLM2-135M-Instruct)")
    p.add_argument("--out", required=True, help="study folder (created; resumed when it holds a study)")
    p.add_argument("--prompts", help="JSONL prompt file (format: docs/study.md); default: NIAH at "
                                     "1K, 2K, 3K, 4K tokens x 5 depths + 4 LongBench multi_news records")
    p.add_argument("--niah-dir", default=os.path.join(SHARED, "corpora", "paul_graham_essays"))
    p.add_argument("--longbench", default=os.path.join(SHARED, "corpora", "longbench", "multi_news.jsonl"),
                   help="LongBench jsonl for the default set ('' for none)")
    p.add_argument("--niah-lengths", default="1024,2048,3072,4096")
    p.add_argument("--niah-depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--longbench-records", default="0,1,2,3")
    p.add_argument("--longbench-tokens", type=int, default=2048)
    p.add_argument("--rules", default=DEFAULT_RULES, help="rules of the accuracy table (kvsim spec "
                                                          "strings with ';', or default)")
    p.add_argument("--budgets", default=DEFAULT_BUDGETS)
    p.add_argument("--claim-budgets", default=CLAIM_BUDGETS)
    p.add_argument("--modes", default="oneshot", help="closed-loop modes: oneshot, plus blockwise "
                                                      "(keydiff block=B) and decode (stepwise tova)")
    p.add_argument("--generate", type=int, default=24, help="greedy answer tokens per prompt")
    p.add_argument("--no-closed-loop", action="store_true", help="offline tables only")
    p.add_argument("--no-chat", action="store_true", help="prompts without the chat template")
    p.add_argument("--device", help="model device for the dumps and the closed loop")
    p.add_argument("--threads", type=int, help="replay threads")
    from kvsim.closed_loop.loop import add_batch_option
    add_batch_option(p)
    return p


def progress(msg):
    print(f"kvsim-study: {msg}", file=sys.stderr, flush=True)


def dump_args(args, prompt, trace):
    argv = ["--model", args.model, *prompt.dump_args, "--generate", str(args.generate),
            "--queries", "all", "--dtype", "float32", "--no-o", "--out", trace]
    if not args.no_chat:
        argv.append("--chat")
    if args.device:
        argv += ["--device", args.device]
    return cli.build_parser().parse_args(argv)


def run_prompt(args, prompt, folder, rules, loop_model):
    """Everything for one prompt; returns the per-prompt record written to done.json (with its
    time split, so that a resumed study still reports the whole)."""
    import kvsim
    os.makedirs(folder, exist_ok=True)
    trace = os.path.join(folder, "trace.h5")
    timings = {"dump": 0.0, "replay": 0.0, "closed_loop": 0.0}
    t = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):
        cli.run(dump_args(args, prompt, trace))
    timings["dump"] += time.monotonic() - t
    t = time.monotonic()
    opts = dict(threads=args.threads, progress=False)
    try:
        main = kvsim.replay(trace, rules, args.budgets, return_selection=not args.no_closed_loop,
                            out=os.path.join(folder, "replay"), eval="both", **opts)
        for point in ("agnostic", "aware"):
            kvsim.replay(trace, CLAIM_RULES, args.claim_budgets, out=os.path.join(folder, f"claims-{point}"),
                         eval="both", compression_point=point, **opts)
        kvsim.analyze(trace, out=os.path.join(folder, "analyze"), progress=False)
        kvsim.prefill(trace, out=os.path.join(folder, "prefill"), progress=False, **PREFILL_OPTIONS)
    except kvsim.KvsimError as e:
        raise DumpError(f"prompt {prompt.id}", str(e))
    timings["replay"] += time.monotonic() - t
    record = {"id": prompt.id, "kind": prompt.kind, "answerable": prompt.answerable, "time_s": timings}
    if args.no_closed_loop or not prompt.answerable:  # the closed loop's table is about answers
        return record
    t = time.monotonic()
    record["closed_loop"] = closed_loop_runs(args, prompt, trace, main, loop_model)
    timings["closed_loop"] += time.monotonic() - t
    return record


def closed_loop_runs(args, prompt, trace, offline, model):
    """The full cache's answer, and per (rule, budget, mode) the answer and the teacher-forced KL."""
    import kvsim

    from kvsim.closed_loop.loop import ClosedLoop, Plan, TraceInfo, offline_kept
    info = TraceInfo(trace, "agnostic")
    loop = ClosedLoop(model, info, kvsim.select, True, 1)
    loop.offline = offline  # ThinK's key channels
    ref = loop.reference_summary()
    full_text = ref.get("free_text_full", "")
    out = {"full": {"text": full_text, "answered": answered(prompt, ref.get("needle_recall_full"), full_text)},
           "runs": []}
    modes = set(args.modes.split(","))
    budgets = list(dict.fromkeys(offline.metrics["budget"].astype(str)))
    jobs = [(Plan(canon), budget, mode) for canon in dict.fromkeys(offline.metrics["rule"])
            if canon.split("(", 1)[0] != "full" for budget in budgets for mode in Plan(canon).modes
            if mode in modes]
    bar = Progress("kvsim-study", f"{prompt.id}: closed-loop run", len(jobs))
    jobs = [(plan, budget, mode, offline_kept(offline, plan.canon, budget, info.num_layers))
            for plan, budget, mode in jobs]
    for (plan, budget, mode, _), (rows, summary) in zip(jobs, loop.run_many(jobs, args.batch, bar.update)):
        kl = [r["kl_next_token"] for r in rows
              if r["layer"] == -1 and r["decoding"] == "teacher_forced" and np.isfinite(r["kl_next_token"])]
        out["runs"].append({"rule": plan.canon, "budget": budget, "mode": mode,
                            "kl_mean": float(np.mean(kl)) if kl else float("nan"),
                            "answered": answered(prompt, summary.get("needle_recall"), summary.get("free_text", "")),
                            "text": summary.get("free_text", "")})
    return out


def answered(prompt, needle_recall, text):
    """docs/study.md: NIAH: at least half of the needle's answer bigrams (token bigrams of the
    needle that the question does not contain) appear in the greedy answer; text prompts: the
    answer string appears in it (case-insensitive); others: None."""
    if prompt.kind == "niah":
        return bool(needle_recall is not None and np.isfinite(needle_recall) and needle_recall >= 0.5)
    if prompt.answer is not None:
        return prompt.answer.lower() in (text or "").lower()
    return None


def study_rules(spec):
    """The rule list of the study: kvsim's canonical specs (every one runs in the closed loop: ThinK
    zeroes its pruned channels in the model's cache, Quest attends to its pages per query)."""
    import kvsim

    try:
        return kvsim._kvsim.expand_rules(spec)
    except (ValueError, kvsim.KvsimError) as e:
        raise DumpError("--rules", str(e))


def run(args):
    t0 = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    if args.prompts:
        prompts = read_prompt_file(args.prompts, args.niah_dir, os.path.join(args.out, "prompt-texts"))
    else:
        prompts = default_prompts(args.niah_dir, args.longbench or None,
                                  [int(x) for x in args.niah_lengths.split(",") if x],
                                  [float(x) for x in args.niah_depths.split(",") if x],
                                  [int(x) for x in args.longbench_records.split(",") if x],
                                  args.longbench_tokens)
    rules = study_rules(args.rules)
    if "full" not in [r.split("(", 1)[0] for r in rules]:
        rules = ["full"] + rules
    loop_model = None
    if not args.no_closed_loop:
        from kvsim.closed_loop.models import make_loop_model
        margs = cli.build_parser().parse_args(["--model", args.model, "--token-ids", "1", "--out", "x"] +
                                              (["--device", args.device] if args.device else []))
        loop_model = make_loop_model(margs, max(p.length for p in prompts) + args.generate + 64)
    records = []
    finished = {p.id for p in prompts if os.path.isfile(os.path.join(args.out, "prompts", p.id, "done.json"))}
    if finished:
        progress(f"resuming: {len(finished)} of {len(prompts)} prompts already done")
    bar = Progress("kvsim-study", "prompts", len(prompts) - len(finished))
    for i, prompt in enumerate(prompts):
        folder = os.path.join(args.out, "prompts", prompt.id)
        done = os.path.join(folder, "done.json")
        if prompt.id in finished:
            with open(done) as f:
                records.append(json.load(f))
            continue
        progress(f"[{i + 1}/{len(prompts)}] {prompt.id}")
        record = run_prompt(args, prompt, folder, rules, loop_model)
        with open(done + ".partial", "w") as f:
            json.dump(record, f)
        os.replace(done + ".partial", done)
        records.append(record)
        bar.update(len(records) - len(finished))
    folders = {r["id"]: os.path.join(args.out, "prompts", r["id"]) for r in records}
    # Read once, used by the accuracy table and the offline-vs-closed-loop claim.
    pert = {r["id"]: layer_perturbation(folders[r["id"]]) for r in closed_loop_records(records)}
    acc = accuracy_table(records, pert)
    acc.to_csv(os.path.join(args.out, "accuracy.csv"), index=False)
    claims = claims_table(records, folders, pert, PREFILL_OPTIONS)
    claims.to_csv(os.path.join(args.out, "claims.csv"), index=False)
    from kvsim.study.figures import draw_figures
    figures = draw_figures(acc, claims, os.path.join(args.out, "figures"))
    timings = {k: sum(r.get("time_s", {}).get(k, 0.0) for r in records) for k in ("dump", "replay", "closed_loop")}
    total = time.monotonic() - t0
    summary = {"model": os.path.basename(args.model), "n_prompts": len(records),
               "n_answerable": sum(1 for r in records if r["answerable"]),
               "rules": rules, "budgets": args.budgets, "claim_budgets": args.claim_budgets,
               "modes": args.modes, "chat": not args.no_chat, "generate": args.generate,
               # Per-prompt work summed over every run of the study (a resumed one included); total
               # is this invocation's wall time.
               "time_s": {**{k: round(v, 1) for k, v in timings.items()}, "total": round(total, 1)},
               "prompts_without_timing": sum(1 for r in records if "time_s" not in r),
               "figures": figures, "command": " ".join(sys.argv)}
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump(summary, f, indent=1)
    from kvsim.study.html import write_report_html
    from kvsim.study.report import write_summary
    write_summary(acc, claims, summary, os.path.join(args.out, "summary.md"))
    write_report_html(os.path.join(args.out, "summary.md"), os.path.join(args.out, "figures"), figures,
                      os.path.join(args.out, "report.html"))
    print_tables(acc, claims)
    print(f"study      {args.out}: {len(records)} prompts in {format_seconds(total)} "
          f"(dump {format_seconds(timings['dump'])}, replay {format_seconds(timings['replay'])}, "
          f"closed loop {format_seconds(timings['closed_loop'])})")
    return 0


def print_tables(acc, claims):
    if len(acc):
        view = acc[acc["mode"].isin(["full", "oneshot"])]
        print(f"{'rule':34} {'budget':>6} {'acc':>5} {'95% CI':>13} {'KL':>7} {'pert_l1':>8}")
        for _, r in view.iterrows():
            print(f"{r['label'][:34]:34} {str(r['budget']):>6} {r['accuracy']:5.2f} "
                  f"[{r['acc_ci_low']:.2f}, {r['acc_ci_high']:.2f}] {r['kl_mean']:7.3f} {r['pert_l1_mean']:8.2f}")
    head = claims[claims["claim"] == "critical_head_win_rate"]
    if len(head):
        best = head.sort_values("value").iloc[-1]
        print(f"CriticalKV head win rate: {head['value'].min():.2f}-{head['value'].max():.2f} over "
              f"{len(head)} settings (best {best['value']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}] "
              f"at {best['setting']}; paper > 0.92)")


def main(argv=None):
    return cli.run_command("kvsim-study", run, build_parser().parse_args(argv),
                           "finished prompts are kept in --out; run the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
