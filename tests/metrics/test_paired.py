from __future__ import annotations

import math

import numpy as np
import pytest

from upseg.metrics import paired_difference


def scores(values) -> dict[str, float]:
    return {f"p{i}": float(v) for i, v in enumerate(values)}


def test_interval_is_deterministic_with_its_seed() -> None:
    rng = np.random.default_rng(1)
    ours, theirs = scores(rng.random(20)), scores(rng.random(20))
    first = paired_difference(ours, theirs, seed=7)
    assert first == paired_difference(ours, theirs, seed=7)
    assert (first.low, first.high) != (
        paired_difference(ours, theirs, seed=8).low,
        paired_difference(ours, theirs, seed=8).high,
    )
    assert first.low <= first.mean <= first.high


def test_verdicts() -> None:
    base = np.linspace(0.2, 0.8, 30)
    gain = np.linspace(0.03, 0.07, 30)
    ahead = paired_difference(scores(base + gain), scores(base))
    assert ahead.verdict == "ahead" and ahead.better == 30
    assert ahead.mean == pytest.approx(0.05) and 0.03 < ahead.low < ahead.high < 0.07
    assert paired_difference(scores(base), scores(base + gain)).verdict == "behind"
    noise = np.random.default_rng(0).normal(0, 0.1, 30)
    assert paired_difference(scores(base + noise), scores(base)).verdict == "level"
    # distances: lower is better, so a smaller HD95 is 'ahead'
    hd = paired_difference(scores(base), scores(base + gain), higher_is_better=False)
    assert hd.verdict == "ahead" and hd.better == 30


def test_patients_missing_or_undefined_on_either_side_are_left_out() -> None:
    ours = {"a": 0.5, "b": math.nan, "c": 0.7, "d": 0.9}
    theirs = {"a": 0.4, "b": 0.6, "c": 0.6}
    result = paired_difference(ours, theirs)
    assert result.n == 2 and result.mean == pytest.approx(0.1)
    single = paired_difference({"a": 1.0}, {"a": 0.0})
    assert single.verdict == "too few patients" and math.isnan(single.low)


def test_signed_rank_p_value() -> None:
    # 5 differences, all positive and distinct: the exact two-sided p is 2 / 2**5
    up = paired_difference(scores([0.6, 0.7, 0.8, 0.9, 1.0]), scores([0.5] * 5))
    assert up.p_wilcoxon == pytest.approx(2 / 32)
    # one negative difference of rank 2: P(W- <= 2) = 3 / 32 on each side
    mixed = paired_difference(scores([0.6, 0.3, 0.8, 0.9, 1.0]), scores([0.5] * 5))
    assert mixed.p_wilcoxon == pytest.approx(6 / 32)
    # a zero difference is dropped (Wilcoxon's rule): 6 left, 1 negative of rank 6, so
    # P(W- >= 6) = 14 / 64 on each side (keeping the zero, as Pratt does, gives 22 / 64)
    zero = paired_difference(scores([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, -0.1]), scores([0.5] * 7))
    assert zero.p_wilcoxon == pytest.approx(28 / 64)
    # differences tied in exact arithmetic but not in float are ranked as ties
    # (|differences| 0.6, 0.3, 0.4, 0.3, 0.5, 0.3; unrounded, the three 0.3s rank apart: 15/32)
    noisy = paired_difference(
        scores([0.2, 0.6, 0.7, 0.3, 0.4, 0.9]), scores([0.8, 0.9, 0.3, 0.6, 0.9, 0.6])
    )
    assert noisy.p_wilcoxon == pytest.approx(0.4375)
    assert paired_difference(scores([0.5] * 4), scores([0.5] * 4)).p_wilcoxon == 1.0
    assert math.isnan(paired_difference({"a": 1.0}, {"a": 0.0}).p_wilcoxon)
