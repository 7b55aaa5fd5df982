from __future__ import annotations

import itertools
import math

import pytest

from upseg.engine.schedule import learning_rate


def test_constant_is_the_base_rate() -> None:
    assert [learning_rate(0.1, "constant", s, 10) for s in range(10)] == [0.1] * 10


def test_warmup_rises_linearly_to_the_base_rate() -> None:
    rates = [learning_rate(1.0, "constant", s, 10, warmup=4) for s in range(6)]
    assert rates == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_halves_midway_and_ends_near_zero() -> None:
    total, warmup = 110, 10
    assert learning_rate(2.0, "cosine", warmup, total, warmup) == pytest.approx(2.0)
    assert learning_rate(2.0, "cosine", warmup + 50, total, warmup) == pytest.approx(1.0)
    last = learning_rate(2.0, "cosine", total - 1, total, warmup)
    assert last == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert 0 < last < 0.01


def test_poly_follows_nnunet_decay() -> None:
    rates = [learning_rate(1.0, "poly", s, 100) for s in range(100)]
    assert rates[0] == 1.0
    assert rates[50] == pytest.approx(0.5**0.9)
    assert all(a > b for a, b in itertools.pairwise(rates))


@pytest.mark.parametrize(
    ("schedule", "step", "total"), [("step", 0, 10), ("cosine", 10, 10), ("poly", -1, 10)]
)
def test_bad_arguments_are_refused(schedule: str, step: int, total: int) -> None:
    with pytest.raises(ValueError):
        learning_rate(1.0, schedule, step, total)
