"""`upseg demo`: the baseline against the up-scaling head, measured end to end.

On the built-in phantom (or a real dataset with --data), for each input size r: trains the
ELU-Net baseline and ELU-Net + plain head with TrainConfig's defaults (the recipe: features
input, `upsample` start, dice_ce, cosine schedule), scores both at R with their last
weights, counts parameters and GMac, times batch-1 inference on this machine, and writes a
table and figures. Re-running reuses finished runs and resumes unfinished ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from upseg.data import READERS, PhantomReader, SliceStore
from upseg.data import prepare as prepare_store
from upseg.deploy.latency import end_to_end_latency_ms
from upseg.engine import TrainConfig, load_run, method_label, run_dataset, score
from upseg.engine.trainer import train_or_resume
from upseg.errors import TrainingError
from upseg.experiments.evaluate import figure
from upseg.io import write_csv, write_json, write_text_atomic
from upseg.metrics import paired_difference
from upseg.models import BASELINE
from upseg.models.profile import count_macs, count_parameters
from upseg.plots import tradeoff_plot

COLUMNS = (
    "method",
    "input",
    "output",
    "foreground_dice",
    "paper_jaccard",
    "group",
    "patient_dice",
    "patient_hd95",
    "vs_baseline",
    "params",
    "gmac",
    "latency_ms",
)


def _store(out: Path, data: Path | None, fmt: str | None, phantom: dict, progress: bool) -> Path:
    path = out / ("store-phantom" if data is None else f"store-{fmt}")
    reader = PhantomReader(**phantom) if data is None else READERS[fmt](data)
    if (path / "manifest.json").is_file():  # reuse it only if it holds the data asked for
        provenance = SliceStore(path).manifest.get("provenance", {})
        wanted = {"source": str(getattr(reader, "root", None)), "reader_options": _options(reader)}
        found = {"source": provenance.get("source"), "reader_options": _options(provenance)}
        same_source = found["source"] == wanted["source"] or (
            data is not None and Path(found["source"]).resolve() == Path(data).resolve()
        )
        if not same_source or found["reader_options"] != wanted["reader_options"]:
            raise TrainingError(
                f"{out}: holds a demo of other data ({found['source']}, options "
                f"{found['reader_options']}); its runs belong to that data, so choose another "
                "--out for this one"
            )
        return path
    return prepare_store(reader, path, force=path.exists(), progress=progress, command="upseg demo")


def _options(source: object) -> dict:
    """A reader's (or a manifest provenance's) options as JSON stores them, without the
    folders that items() skipped (found only while reading)."""
    options = source.get("reader_options") if isinstance(source, dict) else source.options
    options = json.loads(json.dumps(options or {}))
    options.pop("skipped_folders", None)
    return options


def markdown(rows: list[dict]) -> str:
    header = (
        "| method | input | output | foreground Dice (pooled) | paper-style Jaccard | "
        "per-patient Dice | per-patient HD95 px | Dice vs baseline [95% CI] | params | "
        "GMac | latency ms (batch 1) |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['input']} | {r['output']} | {r['foreground_dice']:.4f} | "
            f"{r['paper_jaccard']:.4f} | {r['group']} {r['patient_dice']:.4f} | "
            f"{r['patient_hd95']:.1f} | {r['vs_baseline']} | {r['params']:,} | "
            f"{r['gmac']:.4f} | {r['latency_ms']:.1f} |"
        )
    return "\n".join(lines)


def primary_group(groups: list[str]) -> str:
    """The group a one-line summary shows: BraTS whole tumour, else the first class."""
    return "WT" if "WT" in groups else groups[0]


def versus(head: dict, baseline: dict, group: str) -> str:
    """Per-patient Dice of `group`, head - baseline, in points, with its interval."""
    result = paired_difference(
        {p: s[group]["dice"] for p, s in head.items()},
        {p: s[group]["dice"] for p, s in baseline.items()},
    )
    if result.verdict == "too few patients":
        return "too few patients"
    return (
        f"{100 * result.mean:+.1f} [{100 * result.low:+.1f}, {100 * result.high:+.1f}] "
        f"{result.verdict}"
    )


def _row(
    run: Path, store: SliceStore, batch_size: int, baseline: dict | None = None
) -> tuple[dict, dict]:
    """A run's line of the table (last weights, validation patients) and its per-patient
    scores; with the `baseline`'s per-patient scores, its Dice against the baseline's."""
    model, config, _ = load_run(run, "last")
    dataset = run_dataset(config, store)
    scores = score(model, dataset, store.class_names, batch_size, per_patient=True)
    group = primary_group(list(scores["patient_summary"]))
    r = config.input_size
    vs_baseline = ""
    if baseline is not None:
        vs_baseline = versus(scores["patients"], baseline, group)
    row = {
        "method": method_label(config),
        "input": r,
        "output": store.size,
        "foreground_dice": scores["foreground_dice"],
        "paper_jaccard": scores["paper_jaccard"],
        "group": group,
        "patient_dice": scores["patient_summary"][group]["dice"]["mean"],
        "patient_hd95": scores["patient_summary"][group]["hd95"]["mean"],
        "vs_baseline": vs_baseline,
        "params": count_parameters(model),
        "gmac": count_macs(model, model.input_shape()) / 1e9,
        "latency_ms": end_to_end_latency_ms(model, store.size)["median_ms"],
        "run": str(run),
    }
    return row, scores["patients"]


def run_demo(
    out: str | Path = "upseg-out/demo",
    data: str | Path | None = None,
    fmt: str | None = None,
    resolutions: tuple[int, ...] = (16, 32),
    epochs: int = 15,
    batch_size: int = 16,
    progress: bool = True,
    phantom: dict | None = None,
) -> dict:
    """`phantom`: PhantomReader options (patients, slices) when no `data` is given."""
    out, start = Path(out), time.perf_counter()
    store_path = _store(out, Path(data) if data else None, fmt, phantom or {}, progress)
    store = SliceStore(store_path)
    rows, figures = [], []
    for r in resolutions:
        runs = []
        for head in (BASELINE, "plain"):
            config = TrainConfig(
                store=str(store_path),
                out=str(out / "runs" / f"{head}_r{r}"),
                head=head,
                input_size=r,
                epochs=epochs,
                batch_size=batch_size,
            )
            if progress:
                print(f"== {method_label(config)} at input {r} -> {store.size}")
            train_or_resume(config, progress)
            runs.append(Path(config.out))
        baseline, patients = _row(runs[0], store, batch_size)
        rows += [baseline, _row(runs[1], store, batch_size, patients)[0]]
        figures.append(figure(runs[1], runs[0], "last", "val", 4, out / f"qualitative_r{r}.png"))
    figures.append(
        tradeoff_plot(
            rows,
            "gmac",
            "foreground_dice",
            out / "gmac_vs_dice.png",
            "GMac per image (log)",
            "foreground Dice (validation)",
            "Cost against quality",
            log_x=True,
        )
    )
    table = markdown(rows)
    write_text_atomic(out / "results.md", table + "\n")
    write_csv(out / "results.csv", rows)
    write_json(out / "results.json", rows)
    seconds = time.perf_counter() - start
    print(
        f"\nValidation at {store.size} x {store.size} ({len(store.patient_ids('val'))} held-out "
        f"patients), {epochs} epochs each, measured by this run in {seconds:.0f} s:\n"
    )
    print(table)
    print("\nfigures:")
    for path in figures:
        print(f"  {path}")
    print(f"tables: {out / 'results.md'}, {out / 'results.csv'}")
    return {"rows": rows, "figures": figures, "seconds": seconds}
