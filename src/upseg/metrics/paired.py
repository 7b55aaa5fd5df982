"""Paired comparison of two methods over the same patients, with a bootstrap interval.

The difference of each patient's score (ours - theirs) is averaged; patients are resampled
with replacement `resamples` times (numpy's default_rng(seed), so the interval is the same on
every run) and the percentile interval of the resampled means is reported. Verdict: 'ahead'
when the whole interval lies on the better side of 0, 'behind' when it lies on the worse
side, else 'level'. Beside it, the two-sided p-value of the Wilcoxon signed-rank test on the
same differences (scipy >= 1.15, method 'auto': exact for up to 50 differences without ties
or zeros, a permutation for up to 13 with them, else the normal approximation; differences
rounded to 12 decimals so that float noise does not split ties; zero differences dropped as
in Wilcoxon's original test). The verdict does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import wilcoxon

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class PairedDifference:
    n: int  # patients scored by both (NaN on either side left out)
    mean: float  # mean of ours - theirs
    low: float  # bootstrap interval of the mean difference
    high: float
    better: int  # patients where ours is better
    verdict: str  # ahead | level | behind | too few patients
    p_wilcoxon: float = math.nan  # two-sided signed-rank p-value of the differences

    def as_dict(self) -> dict:
        return asdict(self)


def paired_difference(
    ours: Mapping[str, float],
    theirs: Mapping[str, float],
    higher_is_better: bool = True,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> PairedDifference:
    """Mean of ours[p] - theirs[p] over the patients p both score, with its interval."""
    shared = sorted(
        p for p in set(ours) & set(theirs) if not (math.isnan(ours[p]) or math.isnan(theirs[p]))
    )
    diff = np.array([ours[p] - theirs[p] for p in shared], dtype=np.float64)
    sign = 1.0 if higher_is_better else -1.0
    better = int((sign * diff > 0).sum())
    if diff.size < 2:
        mean = float(diff.mean()) if diff.size else math.nan
        return PairedDifference(
            int(diff.size), mean, math.nan, math.nan, better, "too few patients"
        )
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, (resamples, diff.size))].mean(1)
    tail = (1.0 - level) / 2
    low, high = (float(q) for q in np.quantile(means, [tail, 1.0 - tail]))
    if sign * low > 0 and sign * high > 0:
        verdict = "ahead"
    elif sign * low < 0 and sign * high < 0:
        verdict = "behind"
    else:
        verdict = "level"
    return PairedDifference(
        int(diff.size), float(diff.mean()), low, high, better, verdict, signed_rank_p(diff)
    )


def signed_rank_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; 1.0 when all are 0."""
    diff = np.round(diff, 12)
    if not np.any(diff != 0):
        return 1.0
    return float(wilcoxon(diff, zero_method="wilcox").pvalue)


def compare_patients(
    ours: Mapping[str, Mapping[str, Mapping[str, float]]],
    theirs: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Mapping[str, bool],
    seed: int = 0,
) -> list[dict]:
    """One row per group and metric (metric -> higher is better) for two per-patient score
    sets (patient -> group -> metric -> value): both means over the paired patients, the
    paired difference, its interval and the verdict."""
    shared = sorted(set(ours) & set(theirs))
    groups = [g for g in (ours[shared[0]] if shared else {}) if g in theirs[shared[0]]]
    rows = []
    for group in groups:
        for metric, higher in metrics.items():
            a = {p: float(ours[p][group][metric]) for p in shared}
            b = {p: float(theirs[p][group][metric]) for p in shared}
            result = paired_difference(a, b, higher_is_better=higher, seed=seed)
            kept = [p for p in shared if not (math.isnan(a[p]) or math.isnan(b[p]))]
            rows.append(
                {
                    "group": group,
                    "metric": metric,
                    "ours": float(np.mean([a[p] for p in kept])) if kept else math.nan,
                    "theirs": float(np.mean([b[p] for p in kept])) if kept else math.nan,
                    **result.as_dict(),
                }
            )
    return rows
