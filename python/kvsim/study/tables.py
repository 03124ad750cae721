"""accuracy.csv of a study: one row per rule, budget and closed-loop mode over the answerable
prompts, with 95% intervals (Wilson for the accuracy, bootstrap over prompts for the means), and a
`full` row per budget (the full cache: its own accuracy, KL 0, perturbation 0)."""
import os
import re

import numpy as np
import pandas as pd

from kvsim.study.stats import bootstrap, mean_of_means, wilson

ACCURACY_COLUMNS = ["rule", "label", "budget", "mode", "n_prompts", "accuracy", "acc_ci_low", "acc_ci_high",
                    "kl_mean", "kl_ci_low", "kl_ci_high", "pert_l1_mean", "pert_ci_low", "pert_ci_high"]
LABEL_KEYS = ("variant", "norm")  # parameters a short label keeps (they change what a rule is)


def split_args(text):
    """'a(b,c),d=1' -> ['a(b,c)', 'd=1'] at depth 0."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    return out + ([cur] if cur else [])


def short_label(spec):
    """critical(snapkv(window=32,...),alpha=0.5,norm=l2) -> critical(snapkv,norm=l2)."""
    m = re.match(r"^([A-Za-z_0-9]+)\((.*)\)$", spec.strip())
    if not m:
        return spec.strip()
    name, inner = m.groups()
    keep = []
    for a in split_args(inner):
        key = a.split("=", 1)[0]
        if "=" not in a or "(" in key:
            keep.append(short_label(a))
        elif key in LABEL_KEYS and not (name == "tova" and a == "variant=oneshot") \
                and not (key == "norm" and a.endswith("=l1")) and not (name == "ada" and a == "variant=B") \
                and not (name == "h2o" and a == "variant=kvpress"):
            keep.append(a)
    return f"{name}({','.join(keep)})" if keep else name


def layer_perturbation(folder):
    """{(rule, budget): mean over layers of the layer pert_l1 on the held-out queries}."""
    m = pd.read_csv(os.path.join(folder, "replay", "metrics.csv"), dtype={"budget": str})
    m = m[(m["head"] == -1) & (m["eval"] == "queries")]
    return m.groupby(["rule", "budget"])["pert_l1"].mean().to_dict()


def closed_loop_records(records):
    """The prompts whose closed loop ran (those with an answer)."""
    return [r for r in records if r.get("answerable") and "closed_loop" in r]


def accuracy_table(records, pert):
    """pert: prompt id -> layer_perturbation() of its main replay."""
    loops = closed_loop_records(records)
    if not loops:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    keys = list(dict.fromkeys((x["rule"], x["budget"], x["mode"]) for r in loops for x in r["closed_loop"]["runs"]))
    budgets = list(dict.fromkeys(k[1] for k in keys))
    rows = []
    full_ok = [bool(r["closed_loop"]["full"]["answered"]) for r in loops]
    for b in budgets:
        lo, hi = wilson(sum(full_ok), len(full_ok))
        rows.append(dict(rule="full", label="full", budget=b, mode="full", n_prompts=len(loops),
                         accuracy=float(np.mean(full_ok)), acc_ci_low=lo, acc_ci_high=hi, kl_mean=0.0,
                         kl_ci_low=0.0, kl_ci_high=0.0, pert_l1_mean=0.0, pert_ci_low=0.0, pert_ci_high=0.0))
    for rule, budget, mode in keys:
        ok, kl, pl = [], [], []
        for r in loops:
            run = next((x for x in r["closed_loop"]["runs"]
                        if (x["rule"], x["budget"], x["mode"]) == (rule, budget, mode)), None)
            if run is None:
                continue
            ok.append(bool(run["answered"]))
            kl.append(run["kl_mean"] if run["kl_mean"] is not None and np.isfinite(run["kl_mean"]) else None)
            pl.append(pert[r["id"]].get((rule, budget)))
        lo, hi = wilson(sum(ok), len(ok))
        k = bootstrap(kl, mean_of_means)
        p = bootstrap(pl, mean_of_means)
        rows.append(dict(rule=rule, label=short_label(rule), budget=budget, mode=mode, n_prompts=len(ok),
                         accuracy=float(np.mean(ok)) if ok else float("nan"), acc_ci_low=lo, acc_ci_high=hi,
                         kl_mean=k[0], kl_ci_low=k[1], kl_ci_high=k[2],
                         pert_l1_mean=p[0], pert_ci_low=p[1], pert_ci_high=p[2]))
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
