"""TrainConfig's defaults (the recipe chosen in docs/results.md) and how stored runs read."""

from __future__ import annotations

import dataclasses

import pytest

from upseg.engine.config import FORMER_DEFAULTS, TrainConfig


def test_the_recipe_is_the_default() -> None:
    config = TrainConfig(store="s", out="o")
    assert (config.loss, config.schedule, config.warmup_epochs) == ("dice_ce", "cosine", 1)
    assert (config.head, config.head_input, config.stage_weights) == ("plain", "features", "equal")


@pytest.mark.parametrize(
    ("head", "expected"),
    [("plain", "features"), ("guided", "features"), ("skip", "logits"), ("none", "logits")],
)
def test_the_head_input_default_depends_on_the_head(head: str, expected: str) -> None:
    assert TrainConfig(store="s", out="o", head=head).head_input == expected


def test_features_still_need_the_plain_head_when_asked_for() -> None:
    with pytest.raises(ValueError, match="needs the plain or guided head"):
        TrainConfig(store="s", out="o", head="skip", head_input="features")
    assert TrainConfig(store="s", out="o", head_input="logits").head_input == "logits"


def test_one_epoch_runs_have_no_warm_up_and_longer_warm_ups_are_refused() -> None:
    assert TrainConfig(store="s", out="o", epochs=1).warmup_epochs == 1  # used as 0
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(store="s", out="o", epochs=2, warmup_epochs=2)


def test_a_stored_run_without_a_setting_means_what_it_trained_with() -> None:
    current = dataclasses.asdict(TrainConfig(store="s", out="o"))
    old = {k: v for k, v in current.items() if k not in FORMER_DEFAULTS}  # predates them all
    stored = TrainConfig.from_stored(old)
    assert (stored.loss, stored.schedule, stored.warmup_epochs) == ("ce", "constant", 0)
    assert stored.head_input == "logits"
    # a setting the run did write wins over the former default
    assert TrainConfig.from_stored(current) == TrainConfig.from_dict(current)
    # a user's own config file without them gets today's defaults
    assert TrainConfig.from_dict(old).loss == "dice_ce"
