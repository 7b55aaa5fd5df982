"""What a MONAI bundle says about its run: docs/README.md (the model card),
configs/metadata.json, configs/logging.conf and the data's terms (upseg.deploy.bundle writes
them). The card and the metadata are long because they are mostly text and fields."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import torch

from upseg.data.errors import DataError
from upseg.data.store import SliceStore
from upseg.engine import TrainConfig, split_patients, store_fingerprint

METADATA_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
    "meta_schema_20240725.json"
)


RESEARCH_ONLY = (
    "Research use only: not validated clinically, not a medical device, not for diagnosis "
    "or treatment decisions."
)


DATA_SOURCES = {
    "brats": "BraTS (Brain Tumor Segmentation challenge) multi-modal MRI, NIfTI",
    "decathlon": "Medical Segmentation Decathlon task, NIfTI",
    "folder": "a folder of 2-D images with masks (PNG / TIFF)",
}


DATA_LICENSES = {
    "brats": "The training data are BraTS challenge data, distributed by the challenge "
    "organisers under their own terms of use (https://www.synapse.org/brats). Users of this "
    "model must follow those terms and cite the BraTS reference papers.",
    "decathlon": "The training data are Medical Segmentation Decathlon data "
    "(http://medicaldecathlon.com/), released under CC-BY-SA 4.0. Check the task's own "
    "terms before redistributing derived work.",
}


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def store_facts(config: TrainConfig) -> dict:
    """Patients of the run's store: {"name", "patients", "train", "val"}; only the name when
    the store is not here or is not the one the run used."""
    facts: dict = {"name": Path(config.store).name, "patients": None, "train": None, "val": None}
    try:
        store = SliceStore(config.store)
        if config.store_id and store_fingerprint(store) != config.store_id:
            return facts  # prepared again differently since: its counts would mislead
        train, val = split_patients(config, store)
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return facts
    facts.update(patients=len(store.patient_ids()), train=len(train), val=len(val))
    return facts


def run_evaluation(run: Path, checkpoint: str, epoch: int) -> tuple[dict | None, str]:
    """RUN/evaluation/<checkpoint>_val_summary.json when it scores these weights, and a
    sentence on why not otherwise."""
    folder = run / "evaluation"
    summary_path = folder / f"{checkpoint}_val_summary.json"
    advice = f"evaluate it with `upseg evaluate RUN --checkpoint {checkpoint}`"
    if not summary_path.is_file():
        return None, f"The run was not evaluated per patient; {advice}."
    try:
        summary = json.loads(summary_path.read_text())
        meta = folder / f"{checkpoint}_val.json"
        scored = json.loads(meta.read_text()).get("epoch") if meta.is_file() else epoch
    except (OSError, ValueError):
        return None, f"The run's evaluation files are unreadable; {advice}."
    if scored != epoch:
        return None, (
            f"The run's evaluation scores epoch {scored}, these weights are from epoch "
            f"{epoch}; {advice}."
        )
    if not isinstance(summary, dict) or not isinstance(summary.get("mean"), dict):
        return None, f"The run's evaluation summary has no means; {advice}."
    return summary, ""


def _score(metric: str, value: object) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "n/a"
    return f"{value:.2f} px" if metric == "hd95" else f"{value:.4f}"


def _scores_markdown(summary: dict) -> str:
    metrics = ("dice", "jaccard", "hd95", "nsd")
    lines = [
        "| group | statistic | " + " | ".join(metrics) + " | patients |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    counts = summary.get("patients_scored", {})
    for group in summary["mean"]:
        for statistic in ("mean", "median"):
            row = summary.get(statistic, {}).get(group, {})
            n = counts.get(group, {}).get("dice", "")
            cells = " | ".join(_score(m, row.get(m)) for m in metrics)
            lines.append(f"| {group} | {statistic} | {cells} | {n} |")
    return "\n".join(lines)


def readme(info: dict) -> str:
    """The model card."""
    c, r, big = info["in_channels"], info["input_size"], info["size"]
    classes, facts, state = info["class_names"], info["store"], info["state"]
    fmt = info["format"]

    def count(value: int | None) -> str:
        return "unknown (the run's store is not here)" if value is None else str(value)

    if fmt == "brats":
        inputs = (
            "a BraTS case folder (`<case>_flair/_t1/_t1ce/_t2.nii[.gz]`, the modalities "
            f"{', '.join(info['modalities'])}), or one 4-D NIfTI file with them in this order "
            "on the last axis"
        )
    elif fmt == "decathlon":
        inputs = f"a NIfTI volume of modality {info['modalities'][0]} (3-D, or the 4-D task file)"
    else:
        inputs = f"a {c}-channel image file (PNG / TIFF) or a folder of them"
    val_record = (state.get("record") or {}).get("val") or {}
    lines = [
        f"# {info['name']}: low-resolution-in, full-resolution-out segmentation",
        "",
        f"**{RESEARCH_ONLY}**",
        "",
        "## Model",
        f"- upseg {info['method']}: "
        + (
            f"input {c} x {big} x {big} (z-scored {', '.join(info['modalities'])}; the "
            f"backbone sees it averaged down to {r} x {r}, the guided head reads it whole)"
            if info.get("feed_size", r) != r
            else f"input {c} x {r} x {r} (z-scored {', '.join(info['modalities'])}, "
            f"down-sampled from {big} x {big} with `{info['downsample']}`)"
        )
        + f", output {info['out_channels']} x {info['out_size']} x "
        f"{info['out_size']} class logits"
        + (" (stretched bilinearly to R before the argmax)" if info["out_size"] != big else ""),
        f"- classes: {', '.join(f'{i} {n}' for i, n in enumerate(classes))}; masks are "
        f"written with the source's label values "
        f"({', '.join(f'{classes[int(k)]} -> {v}' for k, v in info['label_values'].items())})",
        f"- weights: the run's `{info['checkpoint']}` checkpoint, epoch {state.get('epoch')}; "
        "`models/model.pt` (state dict)"
        + (" and `models/model.onnx` (image -> logits)" if info["onnx"] else ""),
        "",
        "## Intended use",
        f"Segmentation of {', '.join(classes[1:]) or 'the foreground'} in 2-D axial slices "
        f"of {DATA_SOURCES.get(fmt, fmt)} data, for research on low-resolution inputs "
        f"(e.g. embedded devices). {RESEARCH_ONLY}",
        "",
        "## Use",
        "```",
        "# needs upseg (it runs upseg's own preprocessing) and fire installed",
        "python -m monai.bundle run --config_file configs/inference.json \\",
        "    --meta_file configs/metadata.json --bundle_root . \\",
        "    --input CASE_OR_FILE --output_dir masks",
        "```",
        f"`--input`: {inputs}; a list (`--input \"['a', 'b']\"`) segments several. Each input is "
        "preprocessed exactly as the training data were and its mask written in the input's "
        "own grid (NIfTI masks keep the input's affine and header), as `upseg predict` "
        "does. Also `--device cpu|cuda`, `--batch_size N`, `--force true` (replace masks).",
        "",
        "## Training data",
        f"- source: {DATA_SOURCES.get(fmt, fmt)} (format `{fmt}`); store `{facts['name']}`",
        f"- patients: {count(facts['patients'])} (training {count(facts['train'])}, "
        f"validation {count(facts['val'])})",
        f"- classes: {', '.join(classes)}; modalities: {', '.join(info['modalities'])}",
        f"- slices framed to R = {big}, model input r = {r}; reader options: "
        f"`{json.dumps(info['options'], sort_keys=True)}`",
        "",
        "## Scores",
    ]
    if val_record:
        lines.append(
            f"Validation during training at epoch {state.get('epoch')} (pooled over slices): "
            f"foreground Dice {_score('dice', val_record.get('foreground_dice'))}, "
            f"paper-style Jaccard {_score('jaccard', val_record.get('paper_jaccard'))}."
        )
        lines.append("")
    if info["evaluation"] is not None:
        lines += [
            "Per patient on the validation split (`upseg evaluate`; HD95 in pixels at R):",
            "",
            _scores_markdown(info["evaluation"]),
        ]
    else:
        lines.append(info["evaluation_note"])
    lines += [
        "",
        "## Limits",
        f"- The model sees a {r} x {r} low-resolution version of each slice: detail finer "
        f"than {big // r} pixels at R is guessed, not seen.",
        "- It segments 2-D slices one by one, with no context across slices.",
        f"- Trained on {count(facts['train'])} patient(s) of one source; other scanners, "
        "protocols or populations were not tested.",
        "- Not validated clinically: research use only.",
        "",
    ]
    return "\n".join(lines)


def metadata(info: dict) -> dict:
    c, r, fmt = info["in_channels"], info["input_size"], info["format"]
    side = info.get("feed_size", r)  # a guided model takes the image at R
    classes = info["class_names"]
    modality = "MR" if fmt == "brats" else ", ".join(info["modalities"])
    if info["out_channels"] == 1:  # a bce model: one logit, foreground where > 0
        out_format, channel_def = "classes", {"0": f"{classes[-1]} (logit > 0)"}
    else:
        out_format, channel_def = "labels", {str(i): n for i, n in enumerate(classes)}
    required = {
        name: version
        for name in ("upseg", "nibabel", "fire")
        if (version := _version(name)) is not None
    }
    foreground = ", ".join(classes[1:]) or "foreground"
    return {
        "schema": METADATA_SCHEMA,
        "version": info["version"],
        "changelog": {
            info["version"]: f"exported by upseg from run '{info['name']}', "
            f"{info['checkpoint']} checkpoint (epoch {info['state'].get('epoch')})"
        },
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": required,
        "name": f"upseg {info['name']}",
        "task": f"Segmentation of {foreground} from {c} x {r} x {r} low-resolution "
        f"{', '.join(info['modalities'])} slices at {info['size']} x {info['size']}",
        "description": f"upseg {info['method']}: a backbone at r = {r} and "
        + (
            f"an up-scaling head to R = {info['size']}. "
            if info["out_size"] == info["size"]
            else f"no head (logits at r, stretched bilinearly to R = {info['size']}). "
        )
        + f"configs/inference.json reads {'NIfTI' if fmt != 'folder' else 'image'} inputs "
        f"({fmt} layout), "
        "preprocesses them exactly as the training store was (upseg.deploy.predict: z-score, "
        "frame to R, float16, down-sample to r), runs the network slice by slice and writes "
        "masks in the input's grid with the source's label values.",
        "authors": info["authors"],
        "copyright": info["copyright"],
        "data_source": f"{DATA_SOURCES.get(fmt, fmt)} (store '{info['store']['name']}')",
        "data_type": "nibabel" if fmt in ("brats", "decathlon") else "image",
        "image_classes": (
            f"{c} channels ({', '.join(info['modalities'])}), z-scored, {side} x {side}"
        ),
        "label_classes": "one channel of label values: "
        + ", ".join(f"{v} {classes[int(k)]}" for k, v in info["label_values"].items()),
        "pred_classes": f"{info['out_channels']} channels of logits at "
        f"{info['out_size']} x {info['out_size']}",
        "intended_use": RESEARCH_ONLY,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": modality,
                    "num_channels": c,
                    "spatial_shape": [side, side],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): m for i, m in enumerate(info["modalities"])},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": out_format,
                    "num_channels": info["out_channels"],
                    "spatial_shape": [info["out_size"], info["out_size"]],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": channel_def,
                }
            },
        },
        "upseg": {
            "run": info["name"],
            "checkpoint": info["checkpoint"],
            "epoch": info["state"].get("epoch"),
            "method": info["method"],
            "format": fmt,
            "input_size": r,
            "output_size": info["size"],
            "downsample": info["downsample"],
            "label_values": info["label_values"],
            "onnx": info["onnx"],
        },
    }
