"""Tabulate a recipe screen: run folders evaluated with `upseg evaluate` -> one markdown table.

    python scripts/screen_table.py --baseline RUNS/base16 --reference RUNS/ref RUNS/*

Per run: per-patient Dice, HD95 and surface Dice of the first foreground group (mean and
median over the validation patients), pooled foreground Dice, GMac, training minutes, and the
paired per-patient Dice difference (bootstrap 95% interval) against the baseline and against
the reference recipe.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from upseg.engine import load_run, method_label, read_metrics
from upseg.metrics import paired_difference
from upseg.models.profile import count_macs


def _evaluation(run: Path) -> dict:
    return json.loads((run / "evaluation" / "last_val.json").read_text())


def _dice(run: Path, group: str) -> dict[str, float]:
    patients = _evaluation(run)["scores"]["patients"]
    return {p: s[group]["dice"] for p, s in patients.items()}


def _pair(ours: Path, theirs: Path | None, group: str) -> str:
    if theirs is None or ours.resolve() == theirs.resolve():
        return "–"
    d = paired_difference(_dice(ours, group), _dice(theirs, group))
    return f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] {d.verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--reference", type=Path)
    args = parser.parse_args()
    print(
        "| run | method | settings | patients | Dice mean | Dice median | HD95 mean px | "
        "NSD mean | pooled Dice | GMac | train min | Dice vs baseline | Dice vs reference |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        if not (run / "evaluation" / "last_val.json").is_file():
            continue
        evaluation = _evaluation(run)
        summary = evaluation["scores"]["patient_summary"]
        group = next(iter(summary))
        model, config, _ = load_run(run, "last")
        shape = (1, model.in_channels, config.input_size, config.input_size)
        gmac = count_macs(model, shape) / 1e9
        minutes = sum(x["train_seconds"] for x in read_metrics(run / "metrics.jsonl")) / 60
        settings = f"{config.loss}, {config.stage_weights}, {config.schedule}"
        s = summary[group]
        nsd = s["nsd"]["mean"]
        print(
            f"| {run.name} | {method_label(config)} | {settings} | {s['dice']['n']} | "
            f"{100 * s['dice']['mean']:.1f} | {100 * s['dice']['median']:.1f} | "
            f"{s['hd95']['mean']:.1f} | {100 * nsd if not math.isnan(nsd) else nsd:.1f} | "
            f"{100 * evaluation['scores']['foreground_dice']:.1f} | {gmac:.4f} | "
            f"{minutes:.1f} | {_pair(run, args.baseline, group)} | "
            f"{_pair(run, args.reference, group)} |"
        )


if __name__ == "__main__":
    main()
