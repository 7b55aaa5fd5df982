"""`upseg evaluate`: score a run directory and write JSON, CSV and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from upseg.data import SliceStore
from upseg.data.resize import downsample_labels, stretch_logits
from upseg.engine import (
    TrainConfig,
    check_run_store,
    load_run,
    method_label,
    open_run_store,
    read_run_config,
    run_dataset,
    run_patients,
    score,
)
from upseg.errors import TrainingError
from upseg.experiments.patient_report import score_text, verdict_cells
from upseg.io import write_csv, write_json, write_text_atomic
from upseg.metrics import (
    DEFAULT_TOLERANCE,
    HIGHER_IS_BETTER,
    compare_patients,
    labels_from_logits,
    patient_rows,
)
from upseg.plots import qualitative_grid

SCORE_KEYS = ("paper_dice", "paper_jaccard", "dice", "jaccard")


def score_rows(scores: dict) -> list[dict]:
    """Flat rows for CSV: overall means, each class, each region."""
    rows = [
        {
            "kind": "mean",
            "name": "all classes (paper eq. 1/2)",
            "paper_dice": scores["paper_dice"],
            "paper_jaccard": scores["paper_jaccard"],
            "dice": scores["foreground_dice"],
            "jaccard": scores["foreground_jaccard"],
        }
    ]
    for kind in ("per_class", "regions"):
        for name, values in scores.get(kind, {}).items():
            rows.append(
                {
                    "kind": kind.removeprefix("per_"),
                    "name": name,
                    **{k: values[k] for k in SCORE_KEYS},
                }
            )
    return rows


@torch.no_grad()
def _predict_labels(model, images: torch.Tensor, size: int) -> np.ndarray:
    return labels_from_logits(stretch_logits(model(images).float(), size)).numpy()


def figure(
    run: Path,
    against: Path | None,
    checkpoint: str,
    split: str,
    num_slices: int,
    path: Path,
    store: SliceStore | None = None,
) -> Path:
    """The qualitative grid of paper Fig. 7/8: for up to `num_slices` patients, the slice
    with the most foreground. `store`: the run's (checked) store; by default the one its
    checkpoint records."""
    runs = [run] if against is None else [against, run]
    loaded = [load_run(r, checkpoint) for r in runs]
    config = loaded[-1][1]
    if store is None:
        store = SliceStore(config.store)
    for r, (_, cfg, state) in zip(runs, loaded, strict=True):  # both read this store
        check_run_store(cfg, state, r, store)
    patients = run_patients(config, store, split)
    indices = store.indices(patients=patients)
    foreground = (np.asarray(store.masks[indices]) > 0).sum((1, 2))
    owner = store.slices[indices, 0]
    best = [  # position (in `indices`) of each patient's slice with the most foreground
        np.flatnonzero(owner == p)[np.argmax(foreground[owner == p])] for p in np.unique(owner)
    ]
    best.sort(key=lambda k: -foreground[k])
    chosen = indices[np.array(best[:num_slices], dtype=np.int64)]
    columns = ["image at R", "mask at R"]
    rows = [
        {
            "image at R": np.asarray(store.images[i, 0], np.float32),
            "mask at R": np.asarray(store.masks[i]),
        }
        for i in chosen
    ]
    for model, cfg, _ in loaded:
        inputs = np.asarray(
            store.lowres_images(cfg.input_size, cfg.downsample)[chosen], dtype=np.float32
        )
        label = f"{method_label(cfg)} @ {cfg.input_size}"
        image_key, mask_key = f"image at {cfg.input_size}", f"mask at {cfg.input_size}"
        if image_key not in columns:
            columns += [image_key, mask_key]
            for row, x, i in zip(rows, inputs, chosen, strict=True):
                row[image_key] = x[0]
                row[mask_key] = downsample_labels(
                    torch.from_numpy(np.array(store.masks[i])), cfg.input_size
                ).numpy()
        if model.guided:  # it takes the frames at R and averages them down itself
            inputs = np.asarray(store.images[chosen], dtype=np.float32)
        predictions = _predict_labels(model, torch.from_numpy(inputs), store.size)
        columns.append(label)
        for row, prediction in zip(rows, predictions, strict=True):
            row[label] = prediction
    return qualitative_grid(
        rows,
        columns,
        store.class_names,
        path,
        title=f"{split} patients: the slice with the most foreground each ({checkpoint} weights)",
    )


def _score_run(
    run: Path,
    checkpoint: str,
    split: str,
    store: str | Path | None,
    device: torch.device | str,
    tolerance: float,
    progress: bool,
) -> tuple[TrainConfig, dict, SliceStore, int, dict]:
    """A run's config, checkpoint state, (checked) store, slice count and scores, with
    per-stage (head runs) and per-patient scores."""
    model, config, state = load_run(run, checkpoint)
    if store is not None:
        config.store = str(store)
    elif (run / "config.yaml").is_file():
        config.store = read_run_config(run).store
    opened = open_run_store(config, state, run)
    dataset = run_dataset(config, opened, split)
    scores = score(
        model.to(device),
        dataset,
        opened.class_names,
        config.batch_size,
        device,
        per_stage=model.head is not None,
        progress=progress,
        per_patient=True,
        tolerance=tolerance,
    )
    return config, state, opened, len(dataset), scores


def nnunet_summary(scores: dict, tolerance: float) -> dict:
    """nnU-Net's summary.json shape: every case, then the means (and medians) over cases."""
    summary = scores["patient_summary"]
    return {
        "metric_per_case": [
            {"patient": pid, "metrics": groups} for pid, groups in scores["patients"].items()
        ],
        "mean": {g: {m: v["mean"] for m, v in ms.items()} for g, ms in summary.items()},
        "median": {g: {m: v["median"] for m, v in ms.items()} for g, ms in summary.items()},
        "patients_scored": {g: {m: v["n"] for m, v in ms.items()} for g, ms in summary.items()},
        "nsd_tolerance_px": tolerance,
    }


def comparison_markdown(rows: list[dict], ours: str, theirs: str) -> str:
    """The paired comparison as a markdown table (Dice, Jaccard, NSD in points of 100)."""
    lines = [
        f"Per-patient paired comparison: {ours} against {theirs} (difference = ours - theirs, "
        "95% bootstrap interval over patients; HD95 in pixels at R, lower is better; "
        "two-sided Wilcoxon signed-rank p)",
        "",
        f"| group | metric | patients | {ours} | {theirs} | difference [95% CI] | "
        "better in | p (signed rank) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["metric"]
        lines.append(
            f"| {row['group']} | {m} | {row['n']} | {score_text(m, row['ours'])} | "
            f"{score_text(m, row['theirs'])} | {verdict_cells(row)}"
        )
    return "\n".join(lines) + "\n"


def evaluate_run(
    run: str | Path,
    checkpoint: str = "last",
    split: str = "val",
    figures: bool = False,
    against: str | Path | None = None,
    num_slices: int = 4,
    progress: bool = True,
    device: torch.device | str = "cpu",
    store: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> list[Path]:
    """Score RUN and write RUN/evaluation/<checkpoint>_<split>{.json,.csv,_stages.csv,
    _patients.csv,_summary.json}; with `against`, also the paired per-patient comparison
    (_vs_<name>.csv / .md; bootstrap `seed`). `store`: where the run's store is now; by
    default the one in RUN/config.yaml (which a user may edit after moving the store), else
    the one the checkpoint records."""
    run = Path(run)
    config, state, opened, slices, scores = _score_run(
        run, checkpoint, split, store, device, tolerance, progress
    )
    other = None
    if against is not None:  # scored before any writing: a run that does not fit stops here
        other = _score_run(Path(against), checkpoint, split, store, device, tolerance, progress)
        missing = sorted(set(scores["patients"]) - set(other[4]["patients"]))
        if missing:
            raise TrainingError(
                f"{against}: its {split} patients differ from {run}'s ({len(missing)} of "
                f"{len(scores['patients'])} missing, e.g. {missing[0]}); compare runs of the "
                "same store and fold"
            )
    out = run / "evaluation"
    out.mkdir(exist_ok=True)
    stem = out / f"{checkpoint}_{split}"
    figure_path = None
    if figures:
        path = stem.with_name(f"{stem.name}_figure.png")
        other_run = Path(against) if against else None
        figure_path = figure(run, other_run, checkpoint, split, num_slices, path, opened)
    meta = {
        "run": str(run),
        "method": method_label(config),
        "input_size": config.input_size,
        "output_size": opened.size,
        "checkpoint": checkpoint,
        "epoch": state["epoch"],
        "split": split,
        "slices": slices,
        "patients": len(scores["patients"]),
        "nsd_tolerance_px": tolerance,
    }
    written = _write_scores(stem, meta, scores)
    if progress:
        _print_scores(meta, scores)
    if other is not None:
        rows = compare_patients(scores["patients"], other[4]["patients"], HIGHER_IS_BETTER, seed)
        table = comparison_markdown(
            rows,
            f"{meta['method']} @ {meta['input_size']}",
            f"{method_label(other[0])} @ {other[0].input_size}",
        )
        versus = stem.with_name(f"{stem.name}_vs_{Path(against).resolve().name}")
        written.append(write_csv(versus.with_name(versus.name + ".csv"), rows))
        written.append(write_text_atomic(versus.with_name(versus.name + ".md"), table))
        if progress:
            print(table)
    if figure_path is not None:
        written.append(figure_path)
    return written


def _write_scores(stem: Path, meta: dict, scores: dict) -> list[Path]:
    """STEM.json (everything), STEM.csv (pooled), STEM_stages.csv (head runs),
    STEM_patients.csv and STEM_summary.json (nnU-Net's shape)."""

    def path(suffix: str) -> Path:
        return stem.with_name(stem.name + suffix)

    written = [write_json(path(".json"), {**meta, "scores": scores})]
    written.append(write_csv(path(".csv"), score_rows(scores)))
    if "stages" in scores:
        keys = ("paper_dice", "paper_jaccard", "foreground_dice", "foreground_jaccard")
        rows = [
            {"stage_resolution": res, **{k: s[k] for k in keys}}
            for res, s in scores["stages"].items()
        ]
        written.append(write_csv(path("_stages.csv"), rows))
    written.append(write_csv(path("_patients.csv"), patient_rows(scores["patients"])))
    summary = nnunet_summary(scores, meta["nsd_tolerance_px"])
    written.append(write_json(path("_summary.json"), summary))
    return written


def _print_scores(meta: dict, scores: dict) -> None:
    """One line of pooled scores, one per patient group."""
    tolerance = meta["nsd_tolerance_px"]
    print(
        f"{meta['method']} @ {meta['input_size']} -> {meta['output_size']}, "
        f"{meta['checkpoint']} weights (epoch {meta['epoch']}), {meta['split']}: foreground "
        f"Dice {scores['foreground_dice']:.4f}, paper-style Jaccard "
        f"{scores['paper_jaccard']:.4f} (pooled over {meta['slices']} slices)"
    )
    for group, values in scores["patient_summary"].items():
        print(
            f"  per patient, {group}: Dice mean {values['dice']['mean']:.4f} median "
            f"{values['dice']['median']:.4f}, HD95 mean {values['hd95']['mean']:.2f} px, "
            f"NSD@{tolerance:g}px mean {values['nsd']['mean']:.4f} "
            f"({values['dice']['n']} patients)"
        )
