"""The study's figures (figures/NAME.png at 300 dpi for the page, NAME.pdf in vector form for a
paper): accuracy against budget per rule with its 95% band and the
full-cache line, offline perturbation against accuracy, and the CriticalKV head win rate per
setting against the paper's 92%."""
import os


def draw_figures(acc, claims, folder):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    written = []
    one = acc[acc["mode"] == "oneshot"].copy()
    if len(one):
        one["b"] = one["budget"].astype(float)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a colour per rule for up to 20 rules
        for label, g in one.groupby("label"):
            g = g.sort_values("b")
            line, = ax.plot(g["b"], g["accuracy"], "o-", label=label, lw=1.2, ms=3)
            ax.fill_between(g["b"], g["acc_ci_low"], g["acc_ci_high"], color=line.get_color(), alpha=0.12)
        full = acc[acc["mode"] == "full"]
        if len(full):
            f = full.iloc[0]
            ax.axhline(f["accuracy"], color="k", ls="--", lw=1, label=f"full cache ({f['accuracy']:.2f})")
        ax.set(xlabel="budget (fraction of the context kept per head)", ylabel="needle accuracy",
               title=f"closed-loop accuracy, {int(one['n_prompts'].max())} prompts, 95% Wilson bands", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        written.append(_save(fig, folder, "accuracy_vs_budget.png"))
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for b, g in one.groupby("b"):
            ax.errorbar(g["pert_l1_mean"], g["accuracy"], xerr=[g["pert_l1_mean"] - g["pert_ci_low"],
                        g["pert_ci_high"] - g["pert_l1_mean"]], fmt="o", ms=4, label=f"budget {b:g}", alpha=0.8)
        ax.set(xlabel="offline layer perturbation pert_l1 (mean over prompts)", ylabel="closed-loop accuracy",
               title="offline perturbation vs accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, folder, "perturbation_vs_accuracy.png"))
    from kvsim.study.claims import critical_settings
    crit = critical_settings(claims)
    if len(crit):
        bases = crit["base"].nunique()
        fig, axes = plt.subplots(1, bases, figsize=(5.5 * bases, 4), sharey=True, squeeze=False)
        axes = axes[0]
        for ax, (base, g) in zip(axes, crit.groupby("base")):
            for (point, ev, norm), h in g.groupby(["point", "eval", "norm"]):
                h = h.sort_values("b")
                ax.errorbar(h["b"], h["value"], yerr=[h["value"] - h["ci_low"], h["ci_high"] - h["value"]],
                            marker="o", ms=3, lw=1, capsize=2, label=f"{point}, {ev}, {norm}")
            ax.axhline(0.92, color="r", ls="--", lw=1, label="paper: > 0.92")
            ax.axhline(0.5, color="grey", ls=":", lw=1)
            ax.set(title=f"critical({base}) vs {base}", xlabel="budget", ylim=(0, 1))
        axes[0].set_ylabel("share of heads with lower perturbation")
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        written.append(_save(fig, folder, "critical_win_rate.png"))
    return written


def _save(fig, folder, name):
    """Writes NAME.png and NAME.pdf (each under a temporary name, then renamed); returns NAME.png."""
    import matplotlib.pyplot as plt
    stem = os.path.splitext(name)[0]
    for ext, options in ((".png", dict(dpi=300)), (".pdf", {})):
        path = os.path.join(folder, stem + ext)
        tmp = path + ".partial"
        fig.savefig(tmp, format=ext[1:], bbox_inches="tight", **options)
        os.replace(tmp, path)
    plt.close(fig)
    return stem + ".png"
