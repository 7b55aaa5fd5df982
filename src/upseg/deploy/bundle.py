"""upseg export RUN --bundle DIR: a trained run as a MONAI bundle.

DIR/configs/metadata.json    MONAI metadata: versions, task, network_data_format (the network
                             takes C x r x r frames and gives class logits at R x R)
DIR/configs/inference.json   what `python -m monai.bundle run` executes: NIfTI files (or images,
                             for image-folder runs) in, masks out, through upseg's predict
DIR/configs/logging.conf     the bundle runner's logging (to stdout)
DIR/models/model.pt          the network's state dict; inference.json's `network_def` rebuilds
                             the network with upseg's own builder and the run's settings
DIR/models/model.onnx        the same network as one ONNX file (upseg.deploy.export)
DIR/docs/README.md           model card: use, training data, scores, limits
DIR/docs/data_license.txt    where the training data's terms are (BraTS, Decathlon runs)

The preprocessing is not re-expressed as MONAI transforms: inference.json instantiates
BundleSegmenter, which hands every input to upseg.deploy.predict.Predictor, so a bundle
writes the masks `upseg predict` writes, to the bit. The bundle is written into a hidden
sibling folder and renamed into place at the end: a failure leaves no half-written DIR and
leaves an existing DIR as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from upseg.data.errors import DataError
from upseg.data.store import SliceStore
from upseg.deploy.export import export_onnx
from upseg.deploy.predict import (
    Predictor,
    segment,
)
from upseg.engine import (
    EXECUTION_SETTINGS,
    LOCATION_SETTINGS,
    TrainConfig,
    load_run,
    method_label,
    model_for,
    resolve_device,
    split_patients,
    store_fingerprint,
)
from upseg.errors import TrainingError
from upseg.io import temporary_sibling
from upseg.models import LowResSegmenter

BUNDLE_VERSION = "0.1.0"
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
# settings of where and how a run trained that do not describe the network
MACHINE_SETTINGS = (*LOCATION_SETTINGS, *EXECUTION_SETTINGS)


# -- what inference.json instantiates --------------------------------------------------------
def _train_config(config: dict) -> TrainConfig:
    """A TrainConfig from the bundle's settings (which leave out the run's paths)."""
    return TrainConfig.from_dict({**config, "store": "", "out": ""})


def network(
    config: dict, class_names: Sequence[str], modalities: Sequence[str], size: int
) -> LowResSegmenter:
    """The untrained network of a run: `config` is its training configuration without paths,
    built as upseg.engine.load_run builds it."""
    return model_for(_train_config(config), list(class_names), list(modalities), int(size))


class BundleSegmenter:
    """Segments files with the bundle's network and upseg's predict machinery: each input is
    read and preprocessed as the run's store was, and its mask written in the input's grid
    with the source's label values (see upseg.deploy.predict)."""

    def __init__(
        self,
        network: LowResSegmenter,
        weights: str | Path,
        config: dict,
        data: dict,
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        try:
            target = resolve_device(str(device))
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available here")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise TrainingError(
                f"{weights}: the weights do not fit the network ({first})"
            ) from None
        self.predictor = Predictor(network, _train_config(config), dict(data), target)
        self.batch_size = int(batch_size)

    def __call__(
        self,
        inputs: str | Path | Sequence[str | Path] | None,
        output_dir: str | Path,
        force: bool | str = False,
    ) -> list[str]:
        """Write one mask per input into `output_dir` (names as `upseg predict` gives them);
        returns the masks written. Bad inputs and existing masks (without `force`) are
        reported on stderr and skipped; a DataError then names the first one."""
        if inputs is None or inputs == "" or inputs == []:
            raise ValueError("no input: run the bundle with --input CASE_OR_FILE")
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        result = segment(
            self.predictor,
            list(inputs),
            output_dir,
            self.batch_size,
            _flag(force, "force"),
            progress=False,
            force_hint="run with --force true to replace it",
        )
        for path in result["written"]:
            print(f"wrote {path}")
        skipped = result["skipped"]
        for item in skipped:
            print(f"error: {item['path']}: {item['problem']}", file=sys.stderr)
        if skipped:
            first = skipped[0]
            raise DataError(first["path"], f"{first['problem']} ({len(skipped)} input(s) skipped)")
        return result["written"]


def _flag(value: bool | str, name: str) -> bool:
    """A yes/no setting as the bundle runner's command line may pass it (true, False, 1)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ValueError(f"--{name} must be true or false, not {value!r}")


# -- writing the bundle ---------------------------------------------------------------------
def _literal(value: object) -> object:
    """`value` as MONAI's config parser reads it back unchanged: strings it would take for
    an expression, reference, macro or id path (containing $ @ % #) become Python string
    literals ("$'...'") with @ and # escaped, which evaluate to the string itself."""
    if isinstance(value, dict):
        return {str(k): _literal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    if isinstance(value, str) and any(c in value for c in "$@%#"):
        return "$" + repr(value).replace("@", "\\x40").replace("#", "\\x23")
    return value


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _store_facts(config: TrainConfig) -> dict:
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


def _evaluation(run: Path, checkpoint: str, epoch: int) -> tuple[dict | None, str]:
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


def _readme(info: dict) -> str:
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
        f"- upseg {info['method']}: input {c} x {r} x {r} (z-scored "
        f"{', '.join(info['modalities'])}, down-sampled from {big} x {big} with "
        f"`{info['downsample']}`), output {info['out_channels']} x {info['out_size']} x "
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


def _metadata(info: dict) -> dict:
    c, r, fmt = info["in_channels"], info["input_size"], info["format"]
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
        "image_classes": f"{c} channels ({', '.join(info['modalities'])}), z-scored, {r} x {r}",
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
                    "spatial_shape": [r, r],
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


def _inference(config: dict, data: dict) -> dict:
    return {
        "bundle_root": ".",
        "device": "auto",
        "input": None,
        "output_dir": "$@bundle_root + '/eval'",
        "force": False,
        "batch_size": 32,
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "train_config": _literal(config),
        "data": _literal(data),
        "network_def": {
            "_target_": "upseg.deploy.bundle.network",
            "config": "@train_config",
            "class_names": "@data#class_names",
            "modalities": "@data#modalities",
            "size": "@data#size",
        },
        "segmenter": {
            "_target_": "upseg.deploy.bundle.BundleSegmenter",
            "network": "@network_def",
            "weights": "@ckpt_path",
            "config": "@train_config",
            "data": "@data",
            "device": "@device",
            "batch_size": "@batch_size",
        },
        "run": ["$@segmenter(@input, @output_dir, force=@force)"],
    }


def _check_round_trip(path: Path, config: dict, data: dict) -> None:
    """MONAI's parser must read back the run's settings unchanged."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(path))
    for key, expected in (("train_config", config), ("data", data)):
        if parser.get_parsed_content(key) != json.loads(json.dumps(expected)):
            raise ValueError(f"{path}: MONAI's parser reads {key} differently from the run's")


def _output_shape(model: LowResSegmenter, channels: int, size: int) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(model.eval()(torch.zeros(1, channels, size, size)).shape[1:])


def _check_target(run: Path, out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--bundle {out_dir}: is a file, not a folder")
    resolved, run_resolved = out_dir.resolve(), run.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents:
        raise ValueError(f"--bundle {out_dir}: would replace the run {run}; choose another folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"--bundle {out_dir}: exists and is not empty; pass --force to replace it")
    for parent in out_dir.parents:  # the nearest existing folder takes the temporary one
        if parent.exists():
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"--bundle {out_dir}: cannot write in {parent}")
            break


def write_bundle(
    run: str | Path,
    out_dir: str | Path,
    checkpoint: str = "last",
    force: bool = False,
    onnx: bool = True,
    tolerance: float = 1e-4,
    version: str = BUNDLE_VERSION,
    authors: str = "upseg user",
    copyright_notice: str = "Copyright (c) the model's authors",
) -> list[Path]:
    """Write RUN's `checkpoint` as a MONAI bundle at `out_dir`; returns the files written.
    An existing non-empty `out_dir` is refused (ValueError) unless `force`; `onnx=False`
    leaves models/model.onnx out; `tolerance`: export_onnx's largest |ONNX - PyTorch|."""
    run, out_dir = Path(run), Path(out_dir)
    if onnx and not tolerance > 0:  # NaN too
        raise ValueError(f"--tolerance must be a positive number, got {tolerance:g}")
    _check_target(run, out_dir, force)
    model, config, state = load_run(run, checkpoint)
    data = state.get("data") or SliceStore(config.store).preprocessing()
    Predictor(model, config, data)  # a ValueError for runs predict cannot serve (phantom)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in MACHINE_SETTINGS}
    channels, r = len(data["modalities"]), config.input_size
    out_shape = _output_shape(model, channels, r)
    evaluation, note = _evaluation(run, checkpoint, state.get("epoch"))
    info = {
        "name": run.resolve().name,
        "checkpoint": checkpoint,
        "state": state,
        "method": method_label(config),
        "format": data["format"],
        "modalities": list(data["modalities"]),
        "class_names": list(data["class_names"]),
        "label_values": dict(data["label_values"]),
        "options": data.get("options") or {},
        "size": int(data["size"]),
        "in_channels": channels,
        "input_size": r,
        "downsample": config.downsample,
        "out_channels": out_shape[0],
        "out_size": out_shape[-1],
        "store": _store_facts(config),
        "evaluation": evaluation,
        "evaluation_note": note,
        "version": version,
        "authors": authors,
        "copyright": copyright_notice,
        "onnx": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    names = {
        "metadata": Path("configs/metadata.json"),
        "inference": Path("configs/inference.json"),
        "logging": Path("configs/logging.conf"),
        "weights": Path("models/model.pt"),
        "onnx": Path("models/model.onnx"),
        "readme": Path("docs/README.md"),
        "license": Path("docs/data_license.txt"),
    }
    written: list[Path] = []
    try:  # from here on a failure removes the temporary folder and leaves out_dir as it was
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir(parents=True)
        torch.save(model.state_dict(), tmp / names["weights"])
        written.append(names["weights"])
        if onnx:
            result = export_onnx(model, tmp / names["onnx"], tolerance=tolerance)
            info["onnx"] = {
                "file": str(names["onnx"]),
                "input": "image",
                "output": "logits",
                "max_abs_diff": result["max_abs_diff"],
            }
            written.append(names["onnx"])
        inference = tmp / names["inference"]
        inference.write_text(json.dumps(_inference(settings, data), indent=4) + "\n")
        _check_round_trip(inference, settings, data)
        written.append(names["inference"])
        (tmp / names["metadata"]).write_text(json.dumps(_metadata(info), indent=4) + "\n")
        written.append(names["metadata"])
        (tmp / names["logging"]).write_text(LOGGING_CONF)
        written.append(names["logging"])
        (tmp / names["readme"]).write_text(_readme(info))
        written.append(names["readme"])
        if data["format"] in DATA_LICENSES:
            (tmp / names["license"]).write_text(DATA_LICENSES[data["format"]] + "\n")
            written.append(names["license"])
        if out_dir.exists():
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if old.exists():
                os.rename(old, out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
    return [out_dir / name for name in written]


__all__ = ["BundleSegmenter", "network", "write_bundle"]
