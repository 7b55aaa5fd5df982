"""`upseg sweep`: methods x input sizes (x folds x seeds) -> the paper's tables and figures.

A method is `backbone[+head[:init]]`: `elunet` (baseline), `elunet+plain`,
`elunet+plain:upsample`, `elunet+skip`, `unet`. Each run lives in OUT/runs/<name>; finished
runs are skipped and interrupted ones resumed, so a sweep can span several sittings. Every
run is scored with its last weights on its own validation patients (nothing is selected on
the data that is reported); with --folds k the patients are split k ways and each run
validates on one fold. Tables report mean and standard deviation over folds and seeds.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from upseg.data import SliceStore
from upseg.io import write_csv, write_json, write_text_atomic
from upseg.models import get_backbone_spec, method_name
from upseg.plots import tradeoff_plot
from upseg.profile import count_macs, count_parameters
from upseg.report import evaluate_run
from upseg.train import TrainConfig, build_model, train_or_resume


@dataclass(frozen=True)
class Method:
    backbone: str
    head: str = "none"
    init: str = "default"

    @property
    def name(self) -> str:
        return method_name(self.backbone, self.head, self.init)


def parse_method(text: str) -> Method:
    backbone, _, rest = text.partition("+")
    head, _, init = rest.partition(":")
    get_backbone_spec(backbone)  # raises with the list of names
    head = head or "none"
    init = init or "default"
    if head not in ("none", "plain", "skip") or init not in ("default", "upsample"):
        raise ValueError(
            f"method {text!r} is not backbone[+plain|+skip[:upsample]], e.g. elunet+plain:upsample"
        )
    return Method(backbone, head, init)


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
    folds: int = 0,
    seeds: tuple[int, ...] = (0,),
    epochs: int = 10,
    batch_size: int = 32,
    extra: dict | None = None,
    progress: bool = True,
) -> dict:
    parsed = [parse_method(m) for m in methods]  # refuse a bad method before any work
    out, store = Path(out), Path(store)
    slices = SliceStore(store)
    jobs = []
    for method in parsed:
        for r in resolutions:
            if method.head == "skip" and slices.size < 8 * r:
                print(f"skipped {method.name} at {r}: the skip head needs R >= 8 r")
                continue
            for fold in range(max(folds, 1)):
                for seed in seeds:
                    name = f"{method.name.replace(':', '-')}_r{r}_f{fold}_s{seed}"
                    config = TrainConfig(
                        store=str(store),
                        out=str(out / "runs" / name),
                        backbone=method.backbone,
                        head=method.head,
                        head_init=method.init,
                        input_size=r,
                        epochs=epochs,
                        batch_size=batch_size,
                        seed=seed,
                        folds=folds,
                        fold=fold,
                        **(extra or {}),
                    )
                    jobs.append((method, r, config))
    results = []
    for method, r, config in tqdm(jobs, desc="sweep", disable=not progress):
        run = Path(config.out)
        status = train_or_resume(config, progress=False)
        if progress:
            tqdm.write(f"{status}: {run.name}")
        evaluation = run / "evaluation" / "last_val.json"
        if not evaluation.is_file():
            evaluate_run(run, progress=False)
        scores = json.loads(evaluation.read_text())["scores"]
        seconds = sum(
            json.loads(line)["train_seconds"]
            for line in (run / "metrics.jsonl").read_text().splitlines()
        )
        results.append(
            {
                "method": method.name,
                "input": r,
                "fold": config.fold,
                "seed": config.seed,
                "scores": scores,
                "train_seconds": seconds,
                "config": dataclasses.asdict(config),
            }
        )
    return _report(results, parsed, resolutions, slices, out, epochs)


def _report(
    results: list[dict],
    methods: list[Method],
    resolutions: list[int],
    store: SliceStore,
    out: Path,
    epochs: int,
) -> dict:
    classes = store.class_names[1:]
    rows = []
    for method in methods:
        for r in resolutions:
            mine = [x for x in results if x["method"] == method.name and x["input"] == r]
            if not mine:
                continue
            model = build_model(TrainConfig.from_dict(mine[0]["config"]), store)
            row = {
                "method": method.name,
                "input": r,
                "output": store.size,
                "runs": len(mine),
                "params": count_parameters(model),
                "gmac": count_macs(model, (1, len(store.modalities), r, r)) / 1e9,
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
    if not rows:
        raise ValueError("the sweep has no runs to report: check --methods and --resolutions")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "sweep.csv", rows)
    write_json(out / "sweep_runs.json", results)
    tables = _markdown(rows, classes, epochs)
    write_text_atomic(out / "sweep.md", tables)
    figures = [
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
    ]
    return {"rows": rows, "tables": tables, "figures": figures}


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
