from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from upseg.plots import VERDICT_COLOURS, curves_plot, paired_plot


def _has_colour(image: np.ndarray, hex_colour: str) -> bool:
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool((np.abs(image[..., :3] - rgb).max(-1) < 0.02).sum() > 20)


def row(metric: str, mean: float, verdict: str, against_input: int = 16) -> dict:
    return {
        "method": "elunet+plain",
        "input": 16,
        "against": "elunet",
        "against_input": against_input,
        "group": "tumour",
        "metric": metric,
        "mean": mean,
        "low": mean - 0.01,
        "high": mean + 0.01,
        "verdict": verdict,
    }


def test_paired_plot_colours_each_interval_by_its_verdict(tmp_path: Path) -> None:
    rows = [
        row("dice", 0.05, "ahead"),
        row("dice", -0.04, "behind", against_input=32),
        row("hd95", math.nan, "too few patients"),  # drawn as nothing, not an error
    ]
    path = paired_plot(rows, tmp_path / "paired.png", "title")
    image = mpimg.imread(path)
    assert _has_colour(image, VERDICT_COLOURS["ahead"])
    assert _has_colour(image, VERDICT_COLOURS["behind"])
    level = paired_plot([row("dice", 0.0, "level")], tmp_path / "level.png")
    assert not _has_colour(mpimg.imread(level), VERDICT_COLOURS["ahead"])


def test_curves_plot_draws_each_run_behind_the_mean(tmp_path: Path) -> None:
    mean_only = {"method": "elunet", "input": 16, "curve": [0.2, 0.4, 0.5]}
    with_runs = {**mean_only, "curves": [[0.1, 0.3, 0.4], [0.3, 0.5, 0.6]]}
    a = mpimg.imread(curves_plot([mean_only], tmp_path / "a.png", "Dice"))
    b = mpimg.imread(curves_plot([with_runs], tmp_path / "b.png", "Dice"))
    assert a.shape == b.shape and not np.array_equal(a, b)
