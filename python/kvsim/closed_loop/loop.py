"""kvsim-closed-loop: the model re-run with each rule's eviction in place, next to the offline replay.

One command: dump the trace (kvsim-dump's options), replay it offline (kvsim.replay, with
per-query metrics and the kept sets), then for every rule and budget run the model itself with the
rule's kept set applied to its KV cache, and measure what changes against the full cache:
next-token KL, top-1 agreement, teacher-forced log-likelihood, per-layer hidden-state drift and
attention output change, greedy free-running agreement, needle recall. Outputs in --out DIR:
trace.h5, replay/ (the offline replay), closed_loop.csv, closed_loop.json, offline_vs_closed.csv
and closed_loop.png (closed_loop.pdf for a paper). `kvsim report DIR` renders the comparison.
"""
import contextlib
import copy
import os
import re
import shutil
import sys
import time

import numpy as np

from kvsim.dump import cli
from kvsim.dump.errors import DumpError
from kvsim.closed_loop.metrics import free_rows, teacher_forced_rows
from kvsim.closed_loop.runs import (Snapshot, apply_kept, blockwise_prefill, concat, decode_protocol, decode_reselection,
                        free_running, free_running_batch, kv_kept, prune_channels, quantize_kept, query_pages,
                        teacher_forced)
from kvsim.closed_loop.summary import write_outputs
from kvsim.dump.progress import Progress

DEFAULT_RULES = ("snapkv;ada(snapkv);critical(snapkv);critical(ada(snapkv));keydiff(block=64);tova;"
                 "tova(variant=stepwise);streaming;knorm;random")
# Rules that pick each query's keys inside its attention (nothing evicted): state["step_mask"].
QUERY_AWARE = ("quest",)
# Rules that read the queries after each cut: the closed loop gives them the full-cache run's.
ORACLES = ("oracle", "oracle_greedy")


def evicts_per_step(canon):
    """Step-wise rules whose per-query caches evict (TOVA, H2O step-wise, or a rule over them)."""
    return re.search(r"\b(tova|h2o)\(variant=stepwise", canon) is not None


def build_parser():
    p = cli.build_parser()
    p.prog = "kvsim-closed-loop"
    p.description = ("Dump a trace, replay it offline, then re-run the model with each rule's eviction in "
                     "its KV cache and compare (closed_loop.csv, closed_loop.json, offline_vs_closed.csv, "
                     "closed_loop.png and .pdf in --out DIR; kvsim report DIR shows them). Prompt and model options "
                     "are kvsim-dump's.")
    for action in p._actions:
        if action.dest == "out":
            action.help = "output folder (created; trace.h5, replay/ and the closed-loop files go there)"
            action.metavar = "DIR"
    # Every query in 32 bits: the step-wise rules score with all of them, and the offline replay
    # should see the tensors the closed loop's model computes (no size-driven defaults here).
    p.set_defaults(generate=32, queries="all", dtype="float32")
    g = p.add_argument_group("closed loop")
    g.add_argument("--rules", default=DEFAULT_RULES,
                   help="kvsim rule specs separated by ';' (default: %(default)s). keydiff(block=B) also runs "
                        "the true block-wise prefill; variant=stepwise rules re-select during decoding")
    g.add_argument("--budgets", default="0.1,0.2,0.3,0.5", help="kvsim budgets (fractions, cr=R, token counts)")
    g.add_argument("--compression-point", choices=("agnostic", "aware"), default="agnostic",
                   help="where the cache is compressed: end of the context (default, the replay's) or end "
                        "of the prompt")
    g.add_argument("--evict-every", type=int, default=1, metavar="E",
                   help="decode-time eviction: re-select every E fed tokens (variant=stepwise rules)")
    g.add_argument("--protocol", choices=("oneshot", "decode"), default="oneshot",
                   help="decode: every rule also cuts the cache every --every fed tokens while the model generates "
                        "(rules doc 1.9), offline and in the model alike")
    g.add_argument("--every", type=int, default=64, metavar="N", help="--protocol decode: tokens between compressions")
    g.add_argument("--decode-start", choices=("full", "compressed"), default="full",
                   help="--protocol decode: the cache at the compression point is full, or cut as one-shot")
    g.add_argument("--admission", choices=("evict", "append-only"), default="evict",
                   help="--protocol decode: a cut may drop any cached token, or only refuses new ones (append-only)")
    g.add_argument("--no-free-run", action="store_true", help="skip the free-running (greedy) continuations")
    add_batch_option(g)
    g.add_argument("--threads", type=int, help="threads of the offline replay")
    g.add_argument("--force", action="store_true", help="replace the closed-loop files of an existing --out DIR")
    g.add_argument("--from-trace", metavar="FILE",
                   help="use this trace (recorded from the same --model, with every layer and query) instead of "
                        "dumping one: the prompt options are then not used")
    return p


def prepare_out(out, force):
    if os.path.lexists(out) and not os.path.isdir(out):
        raise DumpError(out, "--out: exists and is not a folder")
    if os.path.exists(os.path.join(out, "closed_loop.json")) and not force:
        raise DumpError(out, "--out: already holds a closed loop (closed_loop.json); pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise DumpError(out, "--out: the parent folder does not exist")
    os.makedirs(out, exist_ok=True)
    for name in ("closed_loop.json", "closed_loop.csv", "offline_vs_closed.csv", "closed_loop.png", "closed_loop.pdf",
                 "trace.h5"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))


def add_batch_option(group):
    group.add_argument("--batch", type=int, default=16, metavar="B",
                       help="one-shot runs that go through the model together (one pass over the weights per "
                            "step for all; default %(default)s; 1 runs them one by one, batches change results "
                            "only by float rounding)")


def offline_kept(offline, canon, budget, num_layers):
    """The offline replay's kept masks of one rule and budget, by layer (the closed loop's input)."""
    return {l: offline.selection[(canon, budget, l)] for l in range(num_layers)}


def offline_channels(offline, canon, budget, num_layers):
    """ThinK's key channel masks [Hkv, d] of one rule and budget, by layer."""
    return {l: offline.selection.get((canon, budget, l, "key_channels")) for l in range(num_layers)}


def compress_start(m, state, kept, selections, plan, budget, n_c):
    """A one-shot compression at n_c in the model's cache: the kept sets (by layer), then ThinK's
    pruned channels (from the replay `selections`) or quant(...)'s codes."""
    apply_kept(m, state, kept, n_c, plan.canon)
    if plan.name == "think":
        if selections is None:
            raise DumpError("--rules", f"'{plan.canon}': no offline replay to take its key channels from")
        prune_channels(m, state, offline_channels(selections, plan.canon, budget, m.num_layers), n_c, plan.canon)
    if plan.name == "quant":
        quantize_kept(m, state, kept, n_c, plan.canon)


def split_rules(text, protocol="oneshot"):
    import kvsim
    specs = [s.strip() for s in text.split(";") if s.strip()]
    if not specs:
        raise DumpError("--rules", "no rule given")
    out = []
    for s in specs:
        try:
            canon = kvsim._kvsim.canonical_spec(s)
        except ValueError as e:
            raise DumpError("--rules", str(e))
        name = canon.split("(", 1)[0]
        if name == "think" and "quant(" in canon:
            raise DumpError("--rules", f"'{s}': think over a quantized cache: the closed loop writes either pruned "
                                       "keys or codes into the model's cache, not both")
        if name == "h2o" and "variant=stepwise" in canon and protocol != "decode":
            raise DumpError("--rules", f"'{s}': decode-time H2O needs the attention of every decoded query, which "
                                       "the one-shot closed loop does not accumulate; use --protocol decode or h2o")
        out.append(canon)
    return out


def param(canon, key, default):
    m = re.search(r"[(,]" + key + r"=([^,()]+)", canon)
    return m.group(1) if m else default


class Plan:
    """What runs for one rule: the modes, and the one-shot spec the real processes re-select with.
    Under --protocol decode every rule runs one mode, "decode", cut by the decode protocol."""

    def __init__(self, canon, protocol="oneshot"):
        self.canon, self.name = canon, canon.split("(", 1)[0]
        self.protocol = protocol
        if protocol == "decode":
            self.block, self.stepwise, self.modes = 0, False, ["decode"]
            return
        self.block = int(param(canon, "block", "0")) if self.name == "keydiff" else 0
        self.stepwise = self.name == "tova" and param(canon, "variant", "oneshot") == "stepwise"
        self.modes = ["decode"] if self.stepwise else ["oneshot"] + (["blockwise"] if self.block > 0 else [])
        if self.block > 0:
            self.recent = float(param(canon, "recent", "0"))
            self.one_shot = re.sub(r"block=\d+", "block=0", canon).replace(f",recent={param(canon, 'recent', '0')}",
                                                                          ",recent=0")
        if self.stepwise:
            self.one_shot = "tova(variant=oneshot)"


class TraceInfo:
    def __init__(self, path, point):
        import kvsim
        t = kvsim.open_trace(path)
        m = t.meta
        self.ids = [int(x) for x in t.input_ids]
        self.S, self.P, self.context_end = m["seq_len"], m["prefill_len"], m["context_end"]
        self.n_c = self.context_end if point == "agnostic" else self.P
        self.spans = m.get("spans", {})
        self.rope = {k: m[k] for k in ("rope_theta", "rope_style", "rope_scaling", "rotary_dim") if k in m}
        self.num_layers = m["num_layers"]
        if "model_layers" in m and m["model_layers"]:
            raise DumpError("--layers", "the closed loop evicts in every layer: record them all")


def bigrams(tokens):
    return {(a, b) for a, b in zip(tokens[:-1], tokens[1:])}


def needle_answer(info):
    """The needle's token bigrams that the question does not contain: what a retrieval of the
    needle produces and a parroted question does not."""
    if "needle" not in info.spans:
        return None
    a, b = info.spans["needle"]
    return sorted(bigrams(info.ids[a:b]) - bigrams(info.ids[info.context_end:info.P]))


def recall(tokens, answer):
    """Share of the needle's answer bigrams that the generated tokens contain."""
    return float(np.mean([g in bigrams(tokens) for g in answer])) if answer else float("nan")


def progress(msg):
    print(f"kvsim-closed-loop: {msg}", file=sys.stderr, flush=True)


def run(args):
    import kvsim
    t0 = time.monotonic()
    if args.evict_every < 1:
        raise DumpError("--evict-every", "must be >= 1")
    if args.protocol == "decode" and args.every < 1:
        raise DumpError("--every", "must be >= 1 (tokens between compressions)")
    if args.questions:  # the answers' lengths come from --answer-tokens (kvsim-dump --questions)
        args.generate = None
    elif args.generate < 1:
        raise DumpError("--generate", "the closed loop needs a recorded continuation: --generate N with N >= 1")
    if args.layers:
        raise DumpError("--layers", "the closed loop evicts in every layer: record them all")
    rules = split_rules(args.rules, args.protocol)
    prepare_out(args.out, args.force)
    trace = os.path.join(args.out, "trace.h5")
    if args.from_trace:
        if not os.path.isfile(args.from_trace):
            raise DumpError(args.from_trace, "--from-trace: no such file")
        shutil.copyfile(args.from_trace, trace)
    else:
        dump_args = copy.copy(args)
        dump_args.out = trace
        with contextlib.redirect_stdout(sys.stderr):
            cli.run(dump_args)
    info = TraceInfo(trace, args.compression_point)
    progress(f"offline replay of {len(rules)} rules at budgets {args.budgets}")
    decode = (dict(protocol="decode", every=args.every, decode_start=args.decode_start, admission=args.admission)
              if args.protocol == "decode" else {})
    try:
        offline = kvsim.replay(trace, rules, args.budgets, per_query=True, return_selection=True,
                               out=os.path.join(args.out, "replay"), compression_point=args.compression_point,
                               threads=args.threads, **decode)
        # The decode protocol's start: the one-shot kept sets (compressed) or nothing cut (full).
        start = offline if not decode else (
            kvsim.replay(trace, rules, args.budgets, return_selection=True, compression_point=args.compression_point,
                         threads=args.threads) if args.decode_start == "compressed" else None)
    except kvsim.KvsimError as e:
        raise DumpError("kvsim replay", str(e).replace("kvsim replay: error: ", "", 1))
    budgets = list(dict.fromkeys(offline.metrics["budget"].astype(str)))
    model = load_model(args, info)
    rows, runs = [], []
    loop = ClosedLoop(model, info, kvsim.select, not args.no_free_run, args.evict_every)
    loop.offline = offline
    if decode:
        def layer_plan(canon, budget):  # a cross-layer rule's allocation at n_c, from the trace
            return kvsim._kvsim._decode_plan(trace, canon, budget, args.compression_point)
        loop.decode = dict(every=args.every, window=32, cut=kvsim._kvsim._decode_cut, start=start,
                           append_only=args.admission == "append-only", plan=layer_plan)
        loop.trace_path = trace
    jobs = [(plan, b, mode, offline_kept(offline, plan.canon, b, info.num_layers))
            for plan in (Plan(r, args.protocol) for r in rules) for b in budgets for mode in plan.modes]
    bar = Progress("kvsim-closed-loop", "runs", len(jobs))
    for r, summary in loop.run_many(jobs, args.batch, bar.update):
        rows += r
        runs.append(summary)
    write_outputs(args.out, rows, runs, offline, loop.reference_summary(), info, args, time.monotonic() - t0)
    return 0


def load_model(args, info):
    from kvsim.closed_loop.models import make_loop_model
    model = make_loop_model(args, info.S)
    if model.num_layers != info.num_layers:
        raise DumpError("trace", f"{info.num_layers} layers stored, the model has {model.num_layers}")
    return model


class ClosedLoop:
    """The full-cache references (computed once) and one run per rule, budget and mode."""

    def __init__(self, model, info, select, free, every):
        self.m, self.info, self.select, self.free, self.every = model, info, select, free, every
        self.decode = None  # --protocol decode: {every, window, cut}
        self.offline = None  # the offline replay (its selections: kept sets, ThinK's channels)
        self.trace_path, self._trace_rows = None, {}
        n_c = info.n_c
        self.snapshot = Snapshot(model, info.ids[:n_c])
        self.continuation = info.ids[n_c:]
        self.targets = info.ids[n_c + 1:] + [-1]
        self.o_projs = [model.o_proj(l) for l in range(model.num_layers)]
        self.answer = needle_answer(info)
        self.n_gen = info.S - info.P
        self.forced = info.ids[n_c:info.P]
        self.full, self.full_free = self.continue_from(model.copy_state(self.snapshot.state),
                                                       self.snapshot.last_logits, None)

    def snapshot_kv(self, layer):
        """The full-cache prefill's keys and values of a layer [Hkv, n_c, d] (before any rule)."""
        return tuple(np.array(x[:, :self.info.n_c], dtype=np.float32) for x in self.m.kv(self.snapshot.state, layer))

    def trace_rows(self, layer):
        """The trace's keys, values and queries of a layer at every position (the full-cache run:
        what the oracles read after each cut), read once."""
        if layer not in self._trace_rows:
            import kvsim
            t = kvsim.open_trace(self.trace_path).layer(layer)
            if t.q.shape[1] != t.k.shape[1]:
                raise DumpError(self.trace_path, "q: the oracles read every position's query (record --queries all)")
            self._trace_rows[layer] = (np.array(t.k), np.array(t.v), np.array(t.q))
        return self._trace_rows[layer]

    def reference_summary(self):
        out = {"n_c": self.info.n_c, "continuation": len(self.continuation), "generated": self.n_gen,
               "needle_answer_bigrams": self.answer}
        if self.free:
            out["free_tokens_full"] = self.full_free[0]
            out["free_text_full"] = self.m.tokenizer.decode(self.full_free[0])
            out["needle_recall_full"] = recall(self.full_free[0], self.answer)
        return out

    def start(self, plan, mode, kept, budget=None):
        """The state at the compression point, the last prompt logits and the after_step policy."""
        m, n_c = self.m, self.info.n_c
        if plan.protocol == "decode":  # the whole cache stays, eviction by `alive`, cut every N fed tokens
            state, d = m.copy_state(self.snapshot.state), self.decode
            if d["start"] is not None:  # --decode-start compressed: the one-shot compression first
                compress_start(m, state, offline_kept(d["start"], plan.canon, budget, m.num_layers), d["start"], plan,
                               budget, n_c)
            steps_evict = evicts_per_step(plan.canon)
            policy = decode_protocol(m, plan.canon, budget, d["every"], d["window"], self.snapshot.queries, n_c,
                                     d["cut"], self.info.rope, self.o_projs, d["append_only"],
                                     plan=d["plan"](plan.canon, budget),
                                     future=self.trace_rows if plan.name in ORACLES else None,
                                     steps_evict=steps_evict)
            if plan.name in QUERY_AWARE:  # dense until a cut (full start), then its pages per query
                state["step_mask"] = query_pages(m, plan.canon, budget)
                if d["start"] is not None:
                    state["step_mask_nc"] = n_c
            if steps_evict:  # its own cache per step, from each cut on
                state["step_mask"] = policy.step_mask
                if d["start"] is not None:  # the one-shot start is a cut of the full cache at n_c
                    state["step_view"] = {l: ([np.arange(n_c)], None, n_c, *self.snapshot_kv(l)) for l in range(m.num_layers)}
            return state, self.snapshot.last_logits, policy
        if mode == "blockwise":
            n_keep = int(kept[0][0].sum())
            recent = int(plan.recent * n_keep + 1e-9)
            state, last = blockwise_prefill(m, self.info.ids[:n_c], n_keep, recent, plan.block, plan.one_shot,
                                            self.select)
            return state, last, None
        state = m.copy_state(self.snapshot.state)
        compress_start(m, state, kept, self.offline, plan, budget, n_c)
        if plan.name in QUERY_AWARE:
            state["step_mask"], state["step_mask_nc"] = query_pages(m, plan.canon, budget), n_c
        policy = None
        if mode == "decode":  # re-selection reads `alive` by position: the cache stays whole
            policy = decode_reselection(m, plan.one_shot, int(kept[0][0].sum()), self.every, self.select)
        else:
            m.drop_evicted(state)
        return state, self.snapshot.last_logits, policy

    def run(self, plan, budget, mode, kept):
        return self._run_started(plan, budget, mode, kept, *self.start(plan, mode, kept, budget))

    def _run_started(self, plan, budget, mode, kept, state, last, policy):
        true_kept = kv_kept(self.m, state, self.info.n_c) if mode == "blockwise" else None
        ev, free = self.continue_from(state, last, policy)
        return self.measure(plan, budget, mode, kept, ev, free, last, true_kept)

    def continue_from(self, state, last, policy):
        """The continuation after the compression point: the question, then the recorded answer
        teacher-forced (the BlockOut compared with the full cache's) and, from the state after the
        question, the free-running answer ((tokens, logits), or None). The question is fed once
        for both. A batched state (stack_states) takes one `last` per run and gives lists, one
        entry per run."""
        m, q, B = self.m, len(self.forced), state.get("batch")
        rest = self.continuation[q:]
        head = teacher_forced(m, state, self.forced, policy) if q else None
        free_state = m.copy_state(state) if self.free else None
        tail = teacher_forced(m, state, rest, policy, first_step=q) if len(rest) else None
        runs = range(B or 1)
        pick = (lambda out, b: out) if B is None else (lambda out, b: out[b])  # noqa: E731
        ev = [concat([pick(p, b) for p in (head, tail) if p is not None]) for b in runs]
        lasts = [pick(head, b).logits[-1] if q else pick(last, b) for b in runs]
        if not self.free:
            free = [None for _ in runs]
        elif B is None:
            free = [free_running(m, free_state, lasts[0], self.n_gen, policy, first_step=q)]
        else:
            free = free_running_batch(m, free_state, lasts, self.n_gen)
        return (ev, free) if B is not None else (ev[0], free[0])

    def run_many(self, jobs, batch, done=None):
        """(rows, summary) per (plan, budget, mode, kept) job, in order. One-shot runs whose cache
        was compacted go through the model up to `batch` at a time: every step is one pass over
        the weights for all of them (a one-token step of a small model is bound by reading its
        weights). Other runs, and every run with batch 1, go one by one (run). done(n) is told how
        many runs have finished."""
        if batch < 1:
            raise DumpError("--batch", "must be >= 1")
        m = self.m
        results, group = [None] * len(jobs), []
        count = iter(range(1, len(jobs) + 1))

        def finished(i, out):
            results[i] = out
            if done:
                done(next(count))

        def flush():
            if group:
                for i, out in zip([i for i, _ in group], self._run_batch([j for _, j in group])):
                    finished(i, out)
                group.clear()
        for i, (plan, budget, mode, kept) in enumerate(jobs):
            started = self.start(plan, mode, kept, budget)
            state, last, _ = started
            if batch > 1 and mode == "oneshot" and hasattr(m, "stack_states") and state.get("slot_pos") is not None:
                group.append((i, (plan, budget, kept, state, last)))  # evicted: a compacted cache
                if len(group) == batch:
                    flush()
            else:
                finished(i, self._run_started(plan, budget, mode, kept, *started))
        flush()
        return results

    def _run_batch(self, group):
        state = self.m.stack_states([st for _, _, _, st, _ in group])
        evs, frees = self.continue_from(state, [last for *_, last in group], None)
        return [self.measure(plan, budget, "oneshot", kept, ev, free, last, None)
                for (plan, budget, kept, _, last), ev, free in zip(group, evs, frees)]

    def measure(self, plan, budget, mode, kept, ev, free, last, true_kept):
        """The rows and summary of one run: its teacher-forced BlockOut `ev`, its free-running
        (tokens, logits) `free` and, block-wise, the kept sets the process really held."""
        n_c = self.info.n_c
        base = dict(rule=plan.canon, budget=budget, mode=mode)
        rows = teacher_forced_rows(dict(base, decoding="teacher_forced"), self.full, ev, self.targets, self.o_projs,
                                   n_c)
        # Per selection unit (KV head), as the replay's kept_tokens; the sum over layers and units apart.
        total, units = sum(int(k.sum()) for k in kept.values()), sum(k.shape[0] for k in kept.values())
        summary = dict(base, kept_tokens=total / max(units, 1), kept_tokens_total=total)
        if true_kept is not None:
            summary["jaccard_true_vs_simulated"] = jaccard_by_layer(true_kept, kept)
            summary["prompt_last_logits_kl"] = float(kl_logits(self.snapshot.last_logits, last))
        if free is not None:
            ft, fl = self.full_free
            toks, logits = free
            rows += free_rows(dict(base, decoding="free"), ft, fl, toks, logits, self.info.P)
            agree = np.array(toks) == np.array(ft)
            summary.update(free_tokens=toks, free_text=self.m.tokenizer.decode(toks),
                           free_first_divergence=int(np.argmin(agree)) if not agree.all() else len(toks),
                           needle_recall=recall(toks, self.answer))
        return rows, summary


def jaccard_by_layer(true_kept, sim_kept):
    """Per layer, mean over KV heads of |true & simulated| / |true | simulated|."""
    out = []
    for l in sorted(true_kept):
        t, s = true_kept[l].astype(bool), sim_kept[l].astype(bool)
        if s.shape != t.shape:
            s = s.reshape(t.shape[0], -1, s.shape[-1]).any(axis=1) if s.shape[0] > t.shape[0] else s
        inter, union = (t & s).sum(axis=-1), (t | s).sum(axis=-1)
        out.append(float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0))))
    return out


def kl_logits(a, b):
    from kvsim.closed_loop.metrics import kl_rows, log_softmax
    return kl_rows(log_softmax(a[None]), log_softmax(b[None]))[0]


def main(argv=None):
    return cli.run_command("kvsim-closed-loop", run, build_parser().parse_args(argv),
                           "the closed-loop files were not written")


if __name__ == "__main__":
    sys.exit(main())
