"""The closed loop's output files (closed_loop.py): closed_loop.csv (long format), closed_loop.json
(per-run aggregates, rank correlations, the KeyDiff simulated-vs-true gap), offline_vs_closed.csv
(one row per rule, budget and mode: offline replay metrics beside closed-loop ones) and
closed_loop.png. Every file is written to a temporary name and renamed, so a file that exists is
complete."""
import datetime
import json
import math
import os
import sys

import numpy as np

from kvsim import _kvsim
from kvsim.dump import VERSION
from kvsim.closed_loop.metrics import spearman

# The tables' columns are declared once in the engine (lib/report/closed_loop_columns.cpp, `kvsim columns`).
_TABLES = _kvsim.output_tables()
CSV_COLUMNS = [c[0] for c in _TABLES["closed_loop.csv"]]
TABLE_COLUMNS = [c[0] for c in _TABLES["offline_vs_closed.csv"]]
OFFLINE = [c[len("offline_"):] for c in TABLE_COLUMNS if c.startswith("offline_")]
# (offline metric, closed-loop metric) pairs whose rank correlation across rules and budgets is reported.
PAIRS = [("offline_pert_l1", "kl_mean"), ("offline_pert_l1", "hidden_drift_last"), ("offline_rel_pert_l1", "kl_mean"),
         ("offline_bound_critical", "kl_mean"), ("offline_bound_ada", "kl_mean"), ("offline_retained_mass", "kl_mean"),
         ("offline_pert_l1", "delta_logprob"), ("offline_pert_l1", "free_agreement")]


def _atomic(path, write):
    tmp = path + ".partial"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _clean(x):
    """JSON without NaN/Inf (null instead), numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def offline_by_run(metrics):
    """{(rule, budget): mean over layers of the layer rows (head -1) of metrics.csv}."""
    m = metrics[metrics["head"] == -1]
    if "eval" in m and (m["eval"] == "queries").any():
        m = m[m["eval"] == "queries"]
    out = {}
    for (rule, budget), g in m.groupby(["rule", "budget"], sort=False):
        out[(rule, str(budget))] = {f"offline_{c}": float(g[c].mean()) for c in OFFLINE}
    return out


def run_aggregates(df):
    """Per (rule, budget, mode): the closed-loop numbers of offline_vs_closed.csv."""
    out = {}
    for key, g in df.groupby(["rule", "budget", "mode"], sort=False):
        tf = g[g["decoding"] == "teacher_forced"]
        tok, lay = tf[tf["layer"] == -1], tf[tf["layer"] >= 0]
        last = lay[lay["layer"] == lay["layer"].max()]
        fr = g[(g["decoding"] == "free") & (g["layer"] == -1)]
        dl = (tok["logprob_full"] - tok["logprob"]).dropna()
        out[key] = dict(kl_mean=tok["kl_next_token"].mean(), kl_first=tok["kl_next_token"].iloc[0],
                        kl_max=tok["kl_next_token"].max(), token_agreement=tok["token_agreement"].mean(),
                        delta_logprob=dl.mean() if len(dl) else float("nan"),
                        hidden_drift_last=last["hidden_drift"].mean(), hidden_drift_mean=lay["hidden_drift"].mean(),
                        attn_out_l1=lay["attn_out_l1"].mean(),
                        attn_out_l1_layer0=lay[lay["layer"] == 0]["attn_out_l1"].mean(),
                        free_agreement=fr["token_agreement"].mean() if len(fr) else float("nan"),
                        free_kl_mean=fr["kl_next_token"].mean() if len(fr) else float("nan"))
    return out


def correlations(table):
    """Spearman across every one-shot and decode run (the replay protocol's setting), and per budget
    across rules."""
    t = table[table["mode"] != "blockwise"]
    out = []
    for x, y in PAIRS:
        row = dict(offline=x, closed=y, n=int(len(t)), spearman_all=spearman(t[x], t[y]), per_budget={})
        for b, g in t.groupby("budget", sort=False):
            row["per_budget"][str(b)] = spearman(g[x], g[y])
        vals = [v for v in row["per_budget"].values() if np.isfinite(v)]
        row["spearman_within_budget_mean"] = float(np.mean(vals)) if vals else float("nan")
        out.append(row)
    return out


def keydiff_gap(table, runs):
    """Simulated (one-shot replay of the block-wise selection) against the true block-wise prefill."""
    extra = {(r["rule"], r["budget"], r["mode"]): r for r in runs}
    out = []
    for _, row in table[table["mode"] == "blockwise"].iterrows():
        sim = table[(table["rule"] == row["rule"]) & (table["budget"] == row["budget"]) & (table["mode"] == "oneshot")]
        if not len(sim):
            continue
        s = sim.iloc[0]
        j = extra[(row["rule"], row["budget"], "blockwise")].get("jaccard_true_vs_simulated", [])
        out.append(dict(rule=row["rule"], budget=row["budget"], kl_simulated=s["kl_mean"], kl_true=row["kl_mean"],
                        drift_simulated=s["hidden_drift_last"], drift_true=row["hidden_drift_last"],
                        free_agreement_simulated=s["free_agreement"], free_agreement_true=row["free_agreement"],
                        jaccard_mean=float(np.mean(j)) if j else float("nan"), jaccard_by_layer=j))
    return out


def question_kl(df, spans):
    """A trace with several questions (kvsim-dump --questions: /spans/question_K, /spans/answer_K):
    per (rule, budget, mode) the teacher-forced next-token KL averaged over each question's
    positions (its tokens and its answer's), question 1 first; {} without such spans."""
    ks = sorted(int(n[9:]) for n in spans if n.startswith("question_") and n[9:].isdigit())
    if not ks:
        return {}
    ranges = [(spans[f"question_{k}"][0], spans.get(f"answer_{k}", spans[f"question_{k}"])[1]) for k in ks]
    tok = df[(df["decoding"] == "teacher_forced") & (df["layer"] == -1)]
    out = {}
    for key, g in tok.groupby(["rule", "budget", "mode"], sort=False):
        out[key] = [_clean(g[(g["position"] >= a) & (g["position"] < b)]["kl_next_token"].mean()) for a, b in ranges]
    return out


def write_outputs(out, rows, runs, offline, reference, info, args, elapsed):
    import pandas as pd
    df = pd.DataFrame(rows, columns=CSV_COLUMNS)
    _atomic(os.path.join(out, "closed_loop.csv"),
            lambda p: df.to_csv(p, index=False, float_format="%.9g", na_rep="nan"))
    agg = run_aggregates(df)
    qkl = question_kl(df, info.spans)
    off = offline_by_run(offline.metrics)
    runs_by_key = {(r["rule"], r["budget"], r["mode"]): r for r in runs}
    table = []
    for (rule, budget, mode), a in agg.items():
        r = runs_by_key[(rule, budget, mode)]
        table.append(dict(rule=rule, budget=budget, mode=mode, kept_tokens=r["kept_tokens"],
                          kept_tokens_total=r["kept_tokens_total"], **off[(rule, budget)], **a,
                          free_first_divergence=r.get("free_first_divergence", float("nan")),
                          needle_recall=r.get("needle_recall", float("nan"))))
    table = pd.DataFrame(table) if table else pd.DataFrame(columns=TABLE_COLUMNS)
    if set(table.columns) != set(TABLE_COLUMNS):  # a column computed here must be declared there
        raise RuntimeError(f"offline_vs_closed.csv: columns {sorted(set(table.columns) ^ set(TABLE_COLUMNS))} "
                           "differ from the declaration (lib/report/closed_loop_columns.cpp)")
    table = table[TABLE_COLUMNS]
    _atomic(os.path.join(out, "offline_vs_closed.csv"),
            lambda p: table.to_csv(p, index=False, float_format="%.9g", na_rep="nan"))
    corr = correlations(table)
    gap = keydiff_gap(table, runs)
    doc = dict(kvsim_dump_version=VERSION, command=" ".join(sys.argv), created=datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), trace=os.path.join(out, "trace.h5"),
        model=args.model, compression_point=args.compression_point, evict_every=args.evict_every,
        protocol=dict(name=args.protocol, every=args.every, decode_start=args.decode_start, admission=args.admission)
        if args.protocol == "decode" else dict(name="oneshot"),
        seq_len=info.S, prefill_len=info.P, context_end=info.context_end, reference=reference,
        runs=[dict(r, **{k: v for k, v in agg[(r["rule"], r["budget"], r["mode"])].items()},
                   **({"question_kl": qkl[(r["rule"], r["budget"], r["mode"])]} if qkl else {})) for r in runs],
        correlations=corr, keydiff_gap=gap, elapsed_s=elapsed,
        files=["closed_loop.csv", "offline_vs_closed.csv", "closed_loop.png", "closed_loop.pdf", "replay/", "trace.h5"])
    # The figure for the page (PNG) and for a paper (PDF, vector), drawn from the same table.
    _atomic(os.path.join(out, "closed_loop.png"), lambda p: plot(table, gap, p, "png"))
    _atomic(os.path.join(out, "closed_loop.pdf"), lambda p: plot(table, gap, p, "pdf"))
    _atomic(os.path.join(out, "closed_loop.json"),
            lambda p: open(p, "w").write(json.dumps(_clean(doc), indent=1) + "\n"))
    print_table(table, corr, gap)


def _short(rule):
    return rule.split("(", 1)[0] + ("(" + rule.split("(", 1)[1][:18] + "…" if "(" in rule and len(rule) > 30 else
                                    ("(" + rule.split("(", 1)[1] if "(" in rule else ""))


def print_table(table, corr, gap):
    print(f"{'rule':34} {'budget':>7} {'mode':>9} {'pert_l1':>9} {'KL':>9} {'agree':>6} {'free':>6} {'drift':>8}")
    for _, r in table.iterrows():
        print(f"{_short(r['rule'])[:34]:34} {r['budget']:>7} {r['mode']:>9} {r['offline_pert_l1']:9.4g} "
              f"{r['kl_mean']:9.4g} {r['token_agreement']:6.2f} {r['free_agreement']:6.2f} {r['hidden_drift_last']:8.4g}")
    c = corr[0]
    print(f"Spearman(offline pert_l1, closed-loop KL): {c['spearman_all']:.3f} over {c['n']} runs, "
          f"{c['spearman_within_budget_mean']:.3f} within a budget (mean)")
    for g in gap:
        print(f"KeyDiff {g['budget']}: KL simulated {g['kl_simulated']:.4g} vs true block-wise {g['kl_true']:.4g}, "
              f"kept-set Jaccard {g['jaccard_mean']:.3f}")


def plot(table, gap, path, fmt="png"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    t = table[table["mode"] != "blockwise"]
    markers = "osD^v<>pP*X"
    budgets = list(dict.fromkeys(t["budget"]))
    labels = _kvsim.short_rule_labels(list(dict.fromkeys(table["rule"])))  # the engine's short labels
    for ax, y, label in ((axes[0], "kl_mean", "closed loop: mean next-token KL(full || evicted)"),
                         (axes[1], "hidden_drift_last", "closed loop: last-layer hidden-state relative drift")):
        for i, (rule, g) in enumerate(t.groupby("rule", sort=False)):
            for b, gb in g.groupby("budget", sort=False):
                # Past ten rules the colours repeat: hollow markers tell the second ten apart.
                ax.scatter(gb["offline_pert_l1"], np.maximum(gb[y], 1e-12), edgecolors=f"C{i % 10}",
                           facecolors=f"C{i % 10}" if i < 10 else "none",
                           marker=markers[budgets.index(b) % len(markers)],
                           label=labels.get(rule, rule) if b == budgets[0] else None)
        bw = table[table["mode"] == "blockwise"]
        if len(bw):
            ax.scatter(bw["offline_pert_l1"], np.maximum(bw[y], 1e-12), facecolors="none", edgecolors="k", s=90,
                       label="keydiff, true block-wise")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # labelled ticks at 1, 2, 5 x 10^k only: no colliding labels
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offline replay: mean layer perturbation ||Δo W_o||₁")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    # The legend beside the plots, every label whole.
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Offline perturbation vs the model after a real eviction (markers: budgets " +
                 ", ".join(map(str, budgets)) + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=150, format=fmt, bbox_inches="tight")
    plt.close(fig)