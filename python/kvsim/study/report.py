"""summary.md of a study: the claims beside the papers' numbers and the accuracy table, in
Markdown with intervals, next to the figures (the study's human-readable report)."""
import numpy as np

CLAIM_ORDER = ("critical_head_win_rate", "ada_bound_not_larger_share", "ada_bound_mean_reduction",
               "bound_tightness_median", "keydiff_premise_spearman", "keydiff_premise_share",
               "critiprefill_locality_J1", "critiprefill_locality_shuffled", "critiprefill_locality_lift",
               "critiprefill_block_recall",
               "offline_vs_closed_spearman")


def interval(v, lo, hi, digits=3):
    if not np.isfinite(v):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def critical_summary(claims):
    """Rows per (base, point, eval, norm): the win rate's range over budgets, and the best."""
    from kvsim.study.claims import critical_settings
    crit = critical_settings(claims)
    if not len(crit):
        return []
    lines = ["| base | compression point | evaluation queries | norm | win rate per budget (95% CI) |",
             "| --- | --- | --- | --- | --- |"]
    for (base, point, ev, norm), g in crit.groupby(["base", "point", "eval", "norm"]):
        g = g.sort_values("b")
        cells = "; ".join(f"{b:g}: {interval(v, lo, hi, 2)}" for b, v, lo, hi in
                          zip(g["b"], g["value"], g["ci_low"], g["ci_high"]))
        lines.append(f"| {base} | {point} | {ev} | {norm} | {cells} |")
    holds = int((crit["ci_low"] > crit["paper_value"]).sum())
    lines.append("")
    lines.append(f"Settings where the paper's > 92% holds (interval entirely above 0.92): {holds} of {len(crit)}; "
                 f"highest win rate {crit['value'].max():.2f}, lowest {crit['value'].min():.2f}.")
    return lines


def write_summary(acc, claims, meta, path):
    lines = [f"# Study: {meta['model']}, {meta['n_prompts']} prompts ({meta['n_answerable']} with an answer)", "",
             "Intervals are 95%: Wilson for accuracies, percentile bootstrap over prompts otherwise "
             "(docs/study.md).", "", "## The CriticalKV claim (paper: > 92% of heads)", ""]
    lines += critical_summary(claims)
    lines += ["", "## The other claims", "", "| claim | setting | value [95% CI] | n | paper |", "| --- | --- | --- | --- | --- |"]
    for name in CLAIM_ORDER[1:]:
        for _, r in claims[claims["claim"] == name].iterrows():
            paper = f"{r['paper_value']:g}" if np.isfinite(r["paper_value"]) else ""
            lines.append(f"| {name} | {r['setting']} | {interval(r['value'], r['ci_low'], r['ci_high'])} | {r['n']} | {paper} |")
    lines += ["", "## Closed-loop accuracy (oneshot) and offline perturbation", "",
              "| rule | budget | accuracy [95% CI] | KL [95% CI] | pert_l1 [95% CI] |", "| --- | --- | --- | --- | --- |"]
    view = acc[acc["mode"].isin(["full", "oneshot"])]
    for _, r in view.iterrows():
        lines.append(f"| {r['label']} | {r['budget']} | {interval(r['accuracy'], r['acc_ci_low'], r['acc_ci_high'], 2)} | "
                     f"{interval(r['kl_mean'], r['kl_ci_low'], r['kl_ci_high'])} | "
                     f"{interval(r['pert_l1_mean'], r['pert_ci_low'], r['pert_ci_high'], 1)} |")
    t = meta["time_s"]
    lines += ["", f"Time: dump {t['dump']:.0f} s, replay {t['replay']:.0f} s, closed loop {t['closed_loop']:.0f} s "
                  f"(summed over prompts); figures in figures/.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
