"""Per-patient tables of a sweep: each row's patient scores, and each method against the
baseline of the same backbone at the same input size, patient by patient.

Patients are the unit. With k folds every patient is validated once per seed; its score for
a row is the mean over that row's seeds, and the paired bootstrap (upseg.metrics.paired)
resamples patients. Results are the records of `upseg.experiments.sweep` (method, input,
fold, seed and the run's evaluation scores, whose "patients" entry upseg.engine.score makes).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from upseg.metrics import HIGHER_IS_BETTER, compare_patients, summarise
from upseg.models.methods import baseline_of

REPORTED = ("dice", "hd95", "nsd")  # per-patient metrics in the tables (Jaccard stays in CSV)


def row_patients(results: Iterable[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """patient -> group -> metric: the mean over the given runs (seeds) that score it."""
    values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for result in results:
        for pid, groups in result["scores"].get("patients", {}).items():
            for group, scores in groups.items():
                for metric in HIGHER_IS_BETTER:
                    values[pid][group][metric].append(float(scores[metric]))
    return {
        pid: {
            group: {m: _nanmean(v) for m, v in metrics.items()} for group, metrics in groups.items()
        }
        for pid, groups in values.items()
    }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _rows(results: list[dict]) -> dict[tuple[str, int], list[dict]]:
    grouped: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for result in results:
        grouped[(result["method"], result["input"])].append(result)
    return grouped


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per (method, input) and group: patients, mean and median of each metric."""
    rows = []
    for (method, r), mine in _rows(results).items():
        patients = row_patients(mine)
        if not patients:
            continue
        for group, metrics in summarise(patients).items():
            row = {"method": method, "input": r, "runs": len(mine), "group": group}
            row["patients"] = max(v["n"] for v in metrics.values())
            for metric, values in metrics.items():
                row[f"{metric}_mean"], row[f"{metric}_median"] = values["mean"], values["median"]
            rows.append(row)
    return rows


def paired_rows(results: list[dict], seed: int = 0) -> list[dict]:
    """Every head row against its backbone's baseline at the same input size, on the
    patients both score (mean over seeds per patient first)."""
    grouped = _rows(results)
    rows = []
    for (method, r), mine in grouped.items():
        base = grouped.get((baseline_of(method), r))
        if base is None or baseline_of(method) == method:
            continue
        compared = compare_patients(
            row_patients(mine),
            row_patients(base),
            {m: HIGHER_IS_BETTER[m] for m in REPORTED},
            seed=seed,
        )
        for row in compared:
            rows.append({"method": method, "against": baseline_of(method), "input": r, **row})
    return rows


def score_text(metric: str, value: float) -> str:
    """A per-patient score for a table: HD95 in pixels, the others in points of 100."""
    if math.isnan(value):
        return "–"
    return f"{value:.2f}" if metric == "hd95" else f"{100 * value:.1f}"


def interval_text(row: dict) -> str:
    """A paired row's mean difference and its interval."""
    m = row["metric"]
    return (
        f"{score_text(m, row['mean'])} [{score_text(m, row['low'])}, {score_text(m, row['high'])}]"
    )


def markdown(summary: list[dict], paired: list[dict], tolerance: float | None = None) -> str:
    """Both tables: Dice and NSD in points of 100, HD95 in pixels at R."""
    nsd = f"NSD@{tolerance:g}px" if tolerance is not None else "NSD"
    lines = [
        "### Per patient (all slices of a patient as one volume; mean over seeds per patient)",
        "",
        f"| method | input | runs | group | patients | Dice mean | Dice median | HD95 mean | "
        f"HD95 median | {nsd} mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['method']} | {row['input']} | {row['runs']} | {row['group']} | "
            f"{row['patients']} | {score_text('dice', row['dice_mean'])} | "
            f"{score_text('dice', row['dice_median'])} | {score_text('hd95', row['hd95_mean'])} | "
            f"{score_text('hd95', row['hd95_median'])} | {score_text('nsd', row['nsd_mean'])} |"
        )
    if paired:
        lines += [
            "",
            "### Paired against the same-size baseline (difference = method - baseline, 95% "
            "bootstrap interval over patients; lower HD95 is better)",
            "",
            "| method | input | group | metric | patients | difference [95% CI] | better in | "
            "verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in paired:
            m = row["metric"]
            lines.append(
                f"| {row['method']} | {row['input']} | {row['group']} | {m} | {row['n']} | "
                f"{interval_text(row)} | "
                f"{row['better']}/{row['n']} | {row['verdict']} |"
            )
    return "\n".join(lines) + "\n"
