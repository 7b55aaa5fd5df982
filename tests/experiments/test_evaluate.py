"""`upseg evaluate`'s tables from hand-made scores: the CSV rows, nnU-Net's summary shape and
the paired comparison in markdown."""

import math

from upseg.experiments.evaluate import comparison_markdown, nnunet_summary, score_rows


def scores() -> dict:
    per_class = {
        "NCR": {"paper_dice": 0.9, "paper_jaccard": 0.8, "dice": 0.7, "jaccard": 0.6},
        "ET": {"paper_dice": 0.5, "paper_jaccard": 0.4, "dice": math.nan, "jaccard": math.nan},
    }
    regions = {"WT": {"paper_dice": 0.95, "paper_jaccard": 0.9, "dice": 0.85, "jaccard": 0.75}}
    return {
        "paper_dice": 0.8,
        "paper_jaccard": 0.7,
        "foreground_dice": 0.65,
        "foreground_jaccard": 0.55,
        "per_class": per_class,
        "regions": regions,
        "patients": {
            "p1": {"WT": {"dice": 0.9, "hd95": 2.0}},
            "p2": {"WT": {"dice": 0.7, "hd95": 6.0}},
        },
        "patient_summary": {
            "WT": {
                "dice": {"mean": 0.8, "median": 0.8, "n": 2},
                "hd95": {"mean": 4.0, "median": 4.0, "n": 2},
            }
        },
    }


def test_score_rows_put_the_means_first_then_classes_then_regions() -> None:
    rows = score_rows(scores())
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("mean", "all classes (paper eq. 1/2)"),
        ("class", "NCR"),
        ("class", "ET"),
        ("regions", "WT"),
    ]
    assert rows[0] == {
        "kind": "mean",
        "name": "all classes (paper eq. 1/2)",
        "paper_dice": 0.8,
        "paper_jaccard": 0.7,
        "dice": 0.65,  # the mean row's Dice and Jaccard are the foreground ones
        "jaccard": 0.55,
    }
    assert rows[1]["dice"] == 0.7 and math.isnan(rows[2]["dice"]) and rows[3]["jaccard"] == 0.75


def test_score_rows_without_classes_or_regions_hold_the_means_only() -> None:
    only = {k: v for k, v in scores().items() if k not in ("per_class", "regions")}
    assert [r["kind"] for r in score_rows(only)] == ["mean"]


def test_nnunet_summary_lists_cases_then_means_medians_and_counts() -> None:
    summary = nnunet_summary(scores(), tolerance=2.0)
    assert summary["metric_per_case"] == [
        {"patient": "p1", "metrics": {"WT": {"dice": 0.9, "hd95": 2.0}}},
        {"patient": "p2", "metrics": {"WT": {"dice": 0.7, "hd95": 6.0}}},
    ]
    assert summary["mean"] == {"WT": {"dice": 0.8, "hd95": 4.0}}
    assert summary["median"] == {"WT": {"dice": 0.8, "hd95": 4.0}}
    assert summary["patients_scored"] == {"WT": {"dice": 2, "hd95": 2}}
    assert summary["nsd_tolerance_px"] == 2.0


def test_comparison_markdown_writes_points_of_100_and_pixels() -> None:
    rows = [
        {
            "group": "WT",
            "metric": "dice",
            "n": 12,
            "ours": 0.8512,
            "theirs": 0.8,
            "mean": 0.0512,
            "low": 0.01,
            "high": 0.09,
            "better": 9,
            "verdict": "ahead",
            "p_wilcoxon": 0.0123,
        },
        {
            "group": "WT",
            "metric": "hd95",
            "n": 12,
            "ours": 3.456,
            "theirs": 4.0,
            "mean": -0.544,
            "low": -1.0,
            "high": math.nan,
            "better": 7,
            "verdict": "level",
            "p_wilcoxon": 0.00042,
        },
    ]
    lines = comparison_markdown(rows, "elunet+plain @ 16", "elunet @ 16").splitlines()
    assert lines[0].startswith("Per-patient paired comparison: elunet+plain @ 16 against elunet")
    assert lines[2] == (
        "| group | metric | patients | elunet+plain @ 16 | elunet @ 16 | difference [95% CI] | "
        "better in | p (signed rank) | verdict |"
    )
    assert lines[4] == "| WT | dice | 12 | 85.1 | 80.0 | 5.1 [1.0, 9.0] | 9/12 | 0.012 | ahead |"
    assert lines[5] == (
        "| WT | hd95 | 12 | 3.46 | 4.00 | -0.54 [-1.00, –] | 7/12 | < 0.001 | level |"
    )
    assert len(lines) == 6
