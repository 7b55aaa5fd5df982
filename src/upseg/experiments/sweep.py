"""`upseg sweep`: methods x input sizes (x folds x seeds) -> the paper's tables and figures.

A method is `backbone[+head[@input][:init]]`: `elunet` (baseline), `elunet+plain`,
`elunet+skip` (heads start as nearest up-sampling), `elunet+plain:pytorch` (PyTorch's
initialisation, as in the paper), `elunet+plain@features` (the head reads the backbone's
features, not its logits; with an init: `elunet+plain@features:bilinear`), `unet`. Each run
lives in OUT/runs/<name>; finished runs are skipped and interrupted ones resumed, so a sweep
can span several sittings. Every run is scored with its last weights on its own validation
patients (nothing is selected on the data that is reported); with --folds k the patients are
split k ways and each run validates on one fold.
Tables report mean and standard deviation over folds and seeds.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from upseg.data import SliceStore
from upseg.engine import (
    TrainConfig,
    build_model,
    read_metrics,
    resolve_device,
    run_state,
    store_fingerprint,
)
from upseg.engine.config import default
from upseg.engine.trainer import train_or_resume
from upseg.errors import DataError, TrainingError
from upseg.experiments.evaluate import evaluate_run
from upseg.experiments.patient_report import markdown as patient_markdown
from upseg.experiments.patient_report import (
    paired_rows,
    patient_score_rows,
    read_patient_scores,
    results_from_score_rows,
    seed_rows,
    size_rows,
    summary_rows,
)
from upseg.io import write_csv, write_json, write_text_atomic
from upseg.models import Method, parse_method
from upseg.models.profile import count_macs, count_parameters
from upseg.plots import curves_plot, paired_plot, tradeoff_plot


def _spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(mean: float, std: float, n: int) -> str:
    if mean != mean:
        return "-"
    return f"{100 * mean:.1f}" if n < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def run_sweep(
    store: str | Path,
    out: str | Path,
    methods: list[str],
    resolutions: list[int],
    folds: int = default("folds"),
    seeds: tuple[int, ...] = (0,),
    epochs: int = default("epochs"),
    batch_size: int = default("batch_size"),
    extra: dict | None = None,
    progress: bool = True,
    workers: int = 1,
    time_limit: float | None = None,
    pair_with: Sequence[str | Path] = (),
) -> dict:
    """Train, score and tabulate every run. Runs go in rounds (seed, then fold, then method
    and input size), so a sweep cut short by `time_limit` (seconds after which no new run
    starts; runs in flight finish) still holds whole rounds first. `workers` > 1 trains that
    many runs at once in separate processes (several small runs can share one GPU).
    A run that fails (say, its loss turns NaN) is reported and left out; the others go on.
    `pair_with`: earlier sweeps' sweep_patient_scores.csv, whose runs join the per-patient
    tables and paired comparisons (not the pooled ones), e.g. a baseline trained elsewhere;
    only their patient ids are checked against the store, so they must come from the same
    store, folds and recipe (docs say which)."""
    parsed = list(dict.fromkeys(parse_method(m) for m in methods))  # bad ones fail here
    resolutions, seeds = list(dict.fromkeys(resolutions)), tuple(dict.fromkeys(seeds))
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if time_limit is not None and not time_limit >= 0:
        raise ValueError(f"the time limit must be zero or more, not {time_limit / 60:g} minutes")
    out, store = Path(out), Path(store)
    slices = SliceStore(store)
    store_id = store_fingerprint(slices)
    for method in parsed:  # a size the model cannot take stops the sweep before any training
        for r in resolutions:
            if not (method.head == "skip" and slices.size < 8 * r):
                build_model(_config(store, out, method, r, folds, 0, 0, epochs, 1, extra), slices)
    for method in parsed:
        if method.head == "skip":
            for r in resolutions:
                if slices.size < 8 * r:
                    print(f"skipped {method.name} at {r}: the skip head needs R >= 8 r")
    jobs = [
        (
            method,
            r,
            _config(store, out, method, r, folds, fold, seed, epochs, batch_size, extra, store_id),
        )
        for seed in seeds
        for fold in range(max(folds, 1))
        for method in parsed
        for r in resolutions
        if not (method.head == "skip" and slices.size < 8 * r)
    ]
    for _, _, config in jobs:
        run_state(config)  # a folder holding a run with other settings stops the sweep here
    borrowed = _borrowed(pair_with, jobs, slices)
    deadline = None if time_limit is None else time.time() + time_limit
    outcomes = _run_jobs([config for _, _, config in jobs], deadline, workers, progress)

    results, failed, pending = [], [], []
    for k, (method, r, config) in enumerate(jobs):
        outcome = outcomes[k]
        if outcome is None:
            pending.append(Path(config.out).name)
        elif isinstance(outcome, str):
            failed.append(f"{Path(config.out).name}: {outcome}")
        else:
            results.append({"method": method.name, "input": r, **outcome})
    report = _report(results, parsed, resolutions, slices, out, epochs, len(jobs), failed, borrowed)
    return {**report, "failed": failed, "pending": pending}


def _borrowed(
    paths: Sequence[str | Path], jobs: list[tuple[Method, int, TrainConfig]], store: SliceStore
) -> list[dict]:
    """The runs of earlier sweeps' per-patient score files, each record naming its "source".
    A run this sweep trains itself (or another file holds), or a patient the store lacks,
    stops the sweep before any training."""
    seen = {(m.name, r, c.fold, c.seed): "this sweep" for m, r, c in jobs}
    patients = set(store.patient_ids())
    borrowed = []
    for path in paths:
        rows = read_patient_scores(path)
        unknown = sorted({row["patient"] for row in rows} - patients)
        if unknown:
            raise DataError(
                path,
                f"{len(unknown)} patient(s) are not in the store {store.path} "
                f"(first: {unknown[0]!r}); were these scores made on another data set?",
            )
        for record in results_from_score_rows(rows):
            key = (record["method"], record["input"], record["fold"], record["seed"])
            if key in seen:
                raise DataError(
                    path,
                    f"{key[0]} at input {key[1]}, fold {key[2]}, seed {key[3]} is also in "
                    f"{seen[key]}: a run may be counted once",
                )
            seen[key] = str(path)
            borrowed.append({**record, "source": str(path)})
    return borrowed


def _run_jobs(
    configs: list[TrainConfig], deadline: float | None, workers: int, progress: bool
) -> dict[int, dict | str | None]:
    """Each run's outcome by its position (see _run_job), `workers` at a time."""
    outcomes: dict[int, dict | str | None] = {}
    bar = tqdm(total=len(configs), desc="sweep", disable=not progress)

    def record(k: int, outcome: dict | str | None) -> None:
        outcomes[k] = outcome
        bar.update()
        if progress and outcome is not None:
            status = outcome if isinstance(outcome, str) else outcome["status"]
            tqdm.write(f"{status}: {Path(configs[k].out).name}")

    if workers == 1:
        for k, config in enumerate(configs):
            record(k, _run_job(config, deadline, None))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {
                pool.submit(_run_job, config, deadline, threads): k
                for k, config in enumerate(configs)
            }
            for future in as_completed(futures):
                record(futures[future], future.result())
    bar.close()
    return outcomes


def _config(
    store: Path,
    out: Path,
    method: Method,
    r: int,
    folds: int,
    fold: int,
    seed: int,
    epochs: int,
    batch_size: int,
    extra: dict | None,
    store_id: str | None = None,
) -> TrainConfig:
    name = f"{method.name.replace(':', '-')}_r{r}_f{fold}_s{seed}"
    return TrainConfig(
        store=str(store),
        out=str(out / "runs" / name),
        backbone=method.backbone,
        head=method.head,
        head_init=method.init,
        head_input=method.input,
        input_size=r,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        folds=folds,
        fold=fold,
        store_id=store_id,
        **(extra or {}),
    )


def _run_job(config: TrainConfig, deadline: float | None, threads: int | None) -> dict | str | None:
    """Train (or resume, or skip) and score one run: its result row, the error message of a
    failed run, or None when the deadline passed before it could start."""
    if threads:
        torch.set_num_threads(threads)
    run = Path(config.out)
    try:
        finished = run_state(config) == "finished"
        if not finished and deadline is not None and time.time() > deadline:
            return None
        status = train_or_resume(config, progress=False)
        evaluation = run / "evaluation" / "last_val.json"
        if not (evaluation.is_file() and (run / "evaluation" / "last_val_summary.json").is_file()):
            evaluate_run(  # also re-scores runs evaluated before per-patient scores existed
                run, progress=False, device=resolve_device(config.device), store=config.store
            )
        log = read_metrics(run / "metrics.jsonl")
        try:
            scores = json.loads(evaluation.read_text())["scores"]
        except (ValueError, KeyError, TypeError):
            raise TrainingError(
                f"{evaluation}: damaged; remove it and run the sweep again to re-score the run"
            ) from None
        try:
            seconds = sum(x["train_seconds"] for x in log)
            curve = [x["val"]["foreground_dice"] for x in log]
        except (KeyError, TypeError):
            raise TrainingError(
                f"{run / 'metrics.jsonl'}: an epoch record lacks its time or scores"
            ) from None
    except (TrainingError, DataError) as error:
        return str(error)
    return {
        "fold": config.fold,
        "seed": config.seed,
        "status": status,
        "scores": scores,
        "train_seconds": seconds,
        "curve": curve,
        "config": dataclasses.asdict(config),
    }


def _report(
    results: list[dict],
    methods: list[Method],
    resolutions: list[int],
    store: SliceStore,
    out: Path,
    epochs: int,
    planned: int,
    failed: list[str],
    borrowed: Sequence[dict] = (),
) -> dict:
    classes = store.class_names[1:]
    rows = []
    for method in methods:
        for r in resolutions:
            mine = [x for x in results if x["method"] == method.name and x["input"] == r]
            if not mine:
                continue
            model = build_model(TrainConfig.from_stored(mine[0]["config"]), store)
            curves = [x["curve"] for x in mine if len(x["curve"]) == epochs]
            row = {
                "method": method.name,
                "input": r,
                "output": store.size,
                "runs": len(mine),
                "curve": [statistics.fmean(c) for c in zip(*curves, strict=True)],
                "curves": curves,
                "params": count_parameters(model),
                "gmac": count_macs(model, model.input_shape()) / 1e9,
                "train_minutes": sum(x["train_seconds"] for x in mine) / 60,
            }
            metrics = {
                "paper_dice": [x["scores"]["paper_dice"] for x in mine],
                "paper_jaccard": [x["scores"]["paper_jaccard"] for x in mine],
                "foreground_dice": [x["scores"]["foreground_dice"] for x in mine],
            }
            for c in classes:
                for key in ("paper_dice", "paper_jaccard", "dice"):
                    metrics[f"{c}_{key}"] = [x["scores"]["per_class"][c][key] for x in mine]
            for key, values in metrics.items():
                row[key], row[f"{key}_std"] = _spread(values)
            rows.append(row)
    if not rows and failed:
        raise TrainingError("every run of the sweep failed:\n  " + "\n  ".join(failed))
    if not rows:
        raise ValueError("the sweep has no runs to report: check --methods and --resolutions")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(
        out / "sweep.csv",
        [{k: v for k, v in row.items() if k not in ("curve", "curves")} for row in rows],
    )
    write_json(out / "sweep_runs.json", results)
    tables = _markdown(rows, classes, epochs)
    scored = [*results, *borrowed]
    patient_summary, paired = summary_rows(scored), paired_rows(scored)
    per_seed, by_size = seed_rows(scored), size_rows(scored)
    if patient_summary:
        write_csv(out / "sweep_patients.csv", patient_summary)
        write_csv(out / "sweep_patient_scores.csv", patient_score_rows(results))
        tables += "\n" + patient_markdown(patient_summary, paired, seeds=per_seed, sizes=by_size)
        tables += _borrowed_note(borrowed)
    if paired:
        write_csv(out / "sweep_paired.csv", paired)
    if per_seed:
        write_csv(out / "sweep_paired_seeds.csv", per_seed)
    if by_size:
        write_csv(out / "sweep_paired_sizes.csv", by_size)
    if len(results) < planned or failed:
        tables += f"\n{len(results)} of {planned} planned runs are in these tables"
        tables += "; run the same command again to finish the others.\n" if not failed else ".\n"
        tables += "".join(f"\n- failed: {line}" for line in failed) + ("\n" if failed else "")
    write_text_atomic(out / "sweep.md", tables)
    figures = _figures(rows, out)
    if paired:
        figures.append(
            paired_plot(
                paired,
                out / "paired_differences.png",
                "Paired per-patient differences, 95% bootstrap intervals",
            )
        )
    return {"rows": rows, "tables": tables, "figures": figures}


def _borrowed_note(borrowed: Sequence[dict]) -> str:
    """Which per-patient rows came from other sweeps (markdown lines; none: empty)."""
    runs = Counter((record["source"], record["method"], record["input"]) for record in borrowed)
    if not runs:
        return ""
    lines = [f"- {method} at {r}: {n} runs from {src}" for (src, method, r), n in runs.items()]
    head = "\nPer-patient rows read from other sweeps (--pair-with; not in the pooled tables):\n"
    return head + "\n".join(lines) + "\n"


def _figures(rows: list[dict], out: Path) -> list[Path]:
    """Fig. 1 (GMac against Jaccard), Fig. 5 (input size against Jaccard), the curves."""
    return [
        tradeoff_plot(
            rows,
            "gmac",
            "paper_jaccard",
            out / "fig1_gmac_vs_jaccard.png",
            "GMac per image (log)",
            "paper-style Jaccard (all classes)",
            "Complexity against quality (paper Fig. 1)",
            log_x=True,
        ),
        tradeoff_plot(
            rows,
            "input",
            "paper_jaccard",
            out / "fig5_resolution_vs_jaccard.png",
            "input resolution r (log)",
            "paper-style Jaccard (all classes)",
            "Resolution against quality (paper Fig. 5)",
            log_x=True,
        ),
        curves_plot(
            rows,
            out / "curves_val_foreground_dice.png",
            "validation foreground Dice at R",
            "Validation after every epoch (mean over each row's runs)",
        ),
    ]


def _markdown(rows: list[dict], classes: list[str], epochs: int) -> str:
    def cell(row: dict, key: str) -> str:
        return _cell(row[key], row[f"{key}_std"], row["runs"])

    lines = [
        f"Scores in %, mean ± standard deviation over runs (folds x seeds), last weights after "
        f"{epochs} epochs, validation patients only, at the full resolution.",
        "",
        "### Paper Table II layout (paper-style mean over all classes, eq. 1/2)",
        "",
        "| method | input | runs | Dice | Jaccard | foreground Dice | params | GMac |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['input']} | {row['runs']} | {cell(row, 'paper_dice')} | "
            f"{cell(row, 'paper_jaccard')} | {cell(row, 'foreground_dice')} | "
            f"{row['params']:,} | {row['gmac']:.3f} |"
        )
    header = " | ".join(f"{c} Dice | {c} Jaccard" for c in classes)
    lines += [
        "",
        "### Paper Table III layout (per class, paper-style: class against the rest)",
        "",
        f"| method | input | {header} |",
        "|---|---|" + "---|---|" * len(classes),
    ]
    for row in rows:
        cells = " | ".join(
            f"{cell(row, f'{c}_paper_dice')} | {cell(row, f'{c}_paper_jaccard')}" for c in classes
        )
        lines.append(f"| {row['method']} | {row['input']} | {cells} |")
    header = " | ".join(classes)
    lines += [
        "",
        "### Standard foreground Dice per class (no background term)",
        "",
        f"| method | input | {header} | training minutes (all runs) |",
        "|---|---|" + "---|" * len(classes) + "---|",
    ]
    for row in rows:
        cells = " | ".join(cell(row, f"{c}_dice") for c in classes)
        lines.append(f"| {row['method']} | {row['input']} | {cells} | {row['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n"
