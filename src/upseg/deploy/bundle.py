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

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from upseg.data.errors import DataError
from upseg.data.store import SliceStore
from upseg.deploy.bundle_card import (
    DATA_LICENSES,
    LOGGING_CONF,
    metadata,
    readme,
    run_evaluation,
    store_facts,
)
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
)
from upseg.errors import TrainingError
from upseg.io import replacing_folder
from upseg.models import LowResSegmenter

BUNDLE_VERSION = "0.1.0"
# settings of where and how a run trained that do not describe the network
MACHINE_SETTINGS = (*LOCATION_SETTINGS, *EXECUTION_SETTINGS)


# -- what inference.json instantiates --------------------------------------------------------
def _train_config(config: dict) -> TrainConfig:
    """A TrainConfig from the bundle's settings (which leave out the run's paths)."""
    return TrainConfig.from_stored({**config, "store": "", "out": ""})


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


def _write_files(
    folder: Path,
    model: LowResSegmenter,
    info: dict,
    settings: dict,
    data: dict,
    onnx: bool,
    tolerance: float,
) -> list[Path]:
    """The bundle's files under `folder`; returns their paths relative to it."""
    names = {
        "metadata": Path("configs/metadata.json"),
        "inference": Path("configs/inference.json"),
        "logging": Path("configs/logging.conf"),
        "weights": Path("models/model.pt"),
        "onnx": Path("models/model.onnx"),
        "readme": Path("docs/README.md"),
        "license": Path("docs/data_license.txt"),
    }
    for sub in ("configs", "models", "docs"):
        (folder / sub).mkdir(parents=True)
    written = [names["weights"]]
    torch.save(model.state_dict(), folder / names["weights"])
    if onnx:
        result = export_onnx(model, folder / names["onnx"], tolerance=tolerance)
        info["onnx"] = {
            "file": str(names["onnx"]),
            "input": "image",
            "output": "logits",
            "max_abs_diff": result["max_abs_diff"],
        }
        written.append(names["onnx"])
    inference = folder / names["inference"]
    inference.write_text(json.dumps(_inference(settings, data), indent=4) + "\n")
    _check_round_trip(inference, settings, data)
    written.append(names["inference"])
    texts = {
        "metadata": json.dumps(metadata(info), indent=4) + "\n",
        "logging": LOGGING_CONF,
        "readme": readme(info),
    }
    if data["format"] in DATA_LICENSES:
        texts["license"] = DATA_LICENSES[data["format"]] + "\n"
    for key, text in texts.items():
        (folder / names[key]).write_text(text)
        written.append(names[key])
    return written


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
    out_shape = _output_shape(model, channels, model.feed_size)
    evaluation, note = run_evaluation(run, checkpoint, state.get("epoch"))
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
        "feed_size": model.feed_size,
        "downsample": config.downsample,
        "out_channels": out_shape[0],
        "out_size": out_shape[-1],
        "store": store_facts(config),
        "evaluation": evaluation,
        "evaluation_note": note,
        "version": version,
        "authors": authors,
        "copyright": copyright_notice,
        "onnx": None,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with replacing_folder(out_dir) as tmp:  # a failure leaves out_dir as it was
        written = _write_files(tmp, model, info, settings, data, onnx, tolerance)
    return [out_dir / name for name in written]


__all__ = ["BundleSegmenter", "network", "write_bundle"]
