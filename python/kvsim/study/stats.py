"""Interval estimates for the study tables (kvsim-study): 95% Wilson intervals for proportions of
independent trials, and percentile bootstrap intervals over prompts for everything else (heads,
layers and steps of one prompt are not independent, so prompts are resampled whole)."""
import math

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 2000
SEED = 20261204


def wilson(successes, n, z=Z95):
    """(low, high) of the Wilson score interval; (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(groups, statistic, samples=BOOTSTRAP_SAMPLES, seed=SEED):
    """(point, low, high): statistic(list of groups) on the data and the 2.5/97.5 percentiles of
    it over resamples of the groups (prompts) with replacement. groups: a list, one entry per
    prompt, of whatever statistic() combines."""
    groups = [g for g in groups if g is not None]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = float(statistic(groups))
    if len(groups) == 1:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        pick = rng.integers(0, len(groups), len(groups))
        v = statistic([groups[i] for i in pick])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return point, float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return point, float(low), float(high)


def mean_of_means(groups):
    """The mean over prompts of each prompt's value (a scalar per group)."""
    return float(np.mean(groups))


def pooled_share(groups):
    """Share of successes over all trials of the groups; a group is (successes, trials)."""
    s = sum(g[0] for g in groups)
    n = sum(g[1] for g in groups)
    return s / n if n else float("nan")
