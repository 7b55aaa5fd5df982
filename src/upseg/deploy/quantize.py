"""Static int8 quantisation of a run's ONNX export, judged by its validation Dice at R.

Files for `--out model.onnx`: model.onnx (fp32, from `export_onnx`), model.int8.onnx
(onnxruntime's QOperator format: QLinearConv with int8 weights, by default per output channel
in a 7-bit range, and uint8 activations) and model.int8.json (the report: fp32 against int8 on
the validation split, both timed on this CPU, the calibration slices).

Why that form: on x86 onnxruntime's fast int8 kernels multiply uint8 activations by int8
weights; int8 activations kept int8 at fp32 speed, and QOperator ran 1.1x faster than the same
model in QDQ form (docs/benchmarks.md, "int8: which onnxruntime form pays").

Calibration feeds the quantiser's MinMax calibrator inputs at r (at R for a guided head)
made exactly as in training (`run_dataset`, the store's per-r cache) from the run's TRAINING
patients only, so that the validation patients that judge the int8 model never set its
ranges. Both ONNX models are scored with `upseg.engine.score` (logits stretched bilinearly
to R for a baseline, confusion matrix at R, and per patient); an int8 model whose mean
per-patient Dice, in any class or region, is more than `max_dice_drop` below the fp32
model's is not written unless forced.

The three files are written together or not at all: every file is made under a temporary
name first, and only an accepted (or forced) int8 model renames them into place. A refusal
or a failure leaves whatever was at those paths before untouched (so an older int8 model
and its report stay consistent with each other); the comparison is then only printed.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from upseg.data import LowResPairs, SliceStore
from upseg.deploy.export import ExportError, export_onnx
from upseg.deploy.outputs import check_output_file
from upseg.deploy.runtimes import ort_session
from upseg.engine import TrainConfig, load_run, method_label, open_run_store, run_dataset, score
from upseg.errors import DataError, TrainingError
from upseg.io import write_json, written_together

CALIBRATION_BATCH = 8  # slices per calibration batch; MinMax ranges do not depend on it
INT8_FORMATS = ("qoperator", "qdq")  # onnxruntime's two layouts of a quantised graph
PAYS = 1.5  # int8 is worth deploying when it runs at least this much faster than fp32


class CalibrationReader(Protocol):
    """What onnxruntime's quantiser reads: {"image": batch} dicts, then None."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


class Int8RefusedError(TrainingError):
    """The int8 model lost more foreground Dice than allowed; `report` holds the numbers."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def int8_paths(out: str | Path) -> tuple[Path, Path]:
    """(int8 model, JSON report) beside the fp32 file `out`: model.onnx -> model.int8.onnx,
    model.int8.json."""
    out = Path(out)
    return out.with_suffix(".int8.onnx"), out.with_suffix(".int8.json")


def check_int8_settings(
    destinations: list[Path], max_dice_drop: float, calibration_slices: int
) -> None:
    """Bad settings, or files that cannot be written, fail (ValueError) before anything is
    computed."""
    if not max_dice_drop >= 0:  # NaN too
        raise ValueError(f"--max-dice-drop must be 0 or more, got {max_dice_drop:g}")
    calibration_positions(1, calibration_slices)
    for path in destinations:
        check_output_file(path, "--out")


def calibration_positions(num_items: int, count: int) -> np.ndarray:
    """`count` positions spread evenly over 0..num_items-1 (all of them if count >= num_items):
    deterministic, and they reach every patient of a split stored patient by patient."""
    if count < 1:
        raise ValueError(f"--calibration-slices must be at least 1, got {count}")
    if num_items < 1:
        raise ValueError("there are no training slices to calibrate on")
    if count >= num_items:
        return np.arange(num_items)
    return np.unique(np.linspace(0, num_items - 1, count).round().astype(np.int64))


class SliceCalibration:
    """onnxruntime CalibrationDataReader over chosen items of a LowResPairs dataset: yields
    {"image": (b, C, r, r) float32} batches, then None."""

    def __init__(
        self, dataset: LowResPairs, positions: np.ndarray, batch: int = CALIBRATION_BATCH
    ) -> None:
        self.dataset = dataset
        self.positions = np.asarray(positions, dtype=np.int64)
        self.batch = batch
        self.indices = self.dataset.indices[self.positions]  # slice numbers in the store
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        chosen = self.positions[self._next : self._next + self.batch]
        if len(chosen) == 0:
            return None
        self._next += self.batch
        return {"image": np.stack([self.dataset[int(k)]["image"].numpy() for k in chosen])}

    def patients(self) -> list[str]:
        """Patient ids of the calibration slices, in store order."""
        return _patients(self.dataset.store, self.indices)


class OnnxModel(nn.Module):
    """An onnxruntime session behind the nn.Module interface that `score` expects: (B, C, r, r)
    -> logits as a float32 tensor."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.session = ort_session(path, threads or torch.get_num_threads())

    def forward(self, x: Tensor) -> Tensor:
        image = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"image": image})[0])


def prepare_for_quantization(fp32: Path, prepared: Path) -> None:
    """onnxruntime's pre-processing (shape inference, graph clean-up) of `fp32` into
    `prepared`. Its symbolic shape inference gives up on a Resize whose scales are an
    initializer (nearest up-sampling, e.g. ELU-Net with upsample="nearest") and then dumps its
    partial model into the working directory; for graphs with a Resize that step is skipped
    (ONNX's own shape inference suffices there)."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    has_resize = any(node.op_type == "Resize" for node in onnx.load(str(fp32)).graph.node)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=has_resize)


def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    reader: CalibrationReader,
    per_channel: bool = True,
    reduce_range: bool | None = None,
    form: str = "qoperator",
) -> None:
    """fp32 ONNX -> int8 ONNX at `out` (written in place: callers write a temporary name
    and rename it), uint8 activations and int8 weights, in `form` (one of INT8_FORMATS).
    The model is first prepared as onnxruntime recommends (shape inference, constant
    folding, BatchNorm folded into the convolutions).

    Per-channel weights are kept to 7 bits (onnxruntime's reduce_range): x86 CPUs without
    VNNI (AVX2 only) add pairs of uint8 x int8 products in int16, which saturates when the
    weights span the whole int8 range, as every channel does with per-channel scales; on
    such a CPU 8-bit per-channel weights were further from fp32 than per-tensor ones (see
    docs/benchmarks.md). Per-tensor weights keep all 8 bits. `reduce_range` overrides this
    (None: 7 bits exactly when per channel)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if form not in INT8_FORMATS:
        raise ValueError(f"int8 form must be one of {', '.join(INT8_FORMATS)}, got {form!r}")
    quant_log = logging.getLogger()  # the quantiser logs through the root logger
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="upseg-int8-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            prepare_for_quantization(fp32, prepared)
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QOperator if form == "qoperator" else QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=per_channel if reduce_range is None else reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        quant_log.setLevel(level)


def _scores(summary: dict) -> dict[str, float]:
    """Pooled scores, then the mean per-patient Dice of every class and region
    ("patient_dice_<group>")."""
    keys = ("foreground_dice", "foreground_jaccard", "paper_dice", "paper_jaccard")
    scores = {key: float(summary[key]) for key in keys}
    for group, metrics in summary["patient_summary"].items():
        scores[f"patient_dice_{group}"] = float(metrics["dice"]["mean"])
    return scores


def worst_patient_drop(before: dict[str, float], after: dict[str, float]) -> tuple[str, float]:
    """(group, drop) of the per-patient Dice that fell most from fp32 to int8; NaN drop when
    a group's Dice is undefined (no group at all counts as undefined too)."""
    drops = {
        key.removeprefix("patient_dice_"): before[key] - after[key]
        for key in before
        if key.startswith("patient_dice_")
    }
    if not drops or any(math.isnan(d) for d in drops.values()):
        undefined = [g for g, d in drops.items() if math.isnan(d)]
        return (undefined[0] if undefined else "foreground", math.nan)
    group = max(drops, key=drops.__getitem__)
    return group, drops[group]


def time_models(
    sessions: dict[str, object], image: np.ndarray, calls: int = 60, rounds: int = 10
) -> dict[str, float]:
    """Median ms per forward of each onnxruntime session on `image`: `calls` timed calls each,
    in `rounds` interleaved rounds (each model's share of a round in one block after an
    untimed call), so that a drifting CPU slows both alike. Twenty calls alternating one by
    one moved the int8 speed-up at 128 by 0.2x between runs (docs/benchmarks.md)."""
    for session in sessions.values():
        for _ in range(3):
            session.run(None, {"image": image})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    per_round = max(1, calls // rounds)
    for _ in range(rounds):
        for name, session in sessions.items():
            session.run(None, {"image": image})
            for _ in range(per_round):
                start = time.perf_counter()
                session.run(None, {"image": image})
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def _patients(store: SliceStore, indices: np.ndarray) -> list[str]:
    """Patient ids owning the store slices `indices`, in store order."""
    ids = [p["id"] for p in store.manifest["patients"]]
    return [ids[k] for k in sorted(set(store.slices[indices, 0].tolist()))]


def quantize_export(
    run: str | Path,
    fp32: str | Path,
    checkpoint: str = "last",
    calibration_slices: int = 64,
    max_dice_drop: float = 0.01,
    force: bool = False,
    per_channel: bool = True,
    form: str = "qoperator",
    batch_size: int | None = None,
    progress: bool = False,
    export_record: dict | None = None,
    staged_fp32: str | Path | None = None,
) -> dict:
    """Quantise `fp32` (the ONNX export of `run`'s `checkpoint`) to int8 beside it, score
    both on the run's validation split and write the report (see `int8_paths`).
    `staged_fp32`: a temporary file holding the fp32 model, renamed to `fp32` only together
    with the int8 model (`fp32` itself is then not read).

    Returns the report; its "speed" part times both models at batch 1 on this CPU and says
    whether int8 pays (at least PAYS x fp32). Raises Int8RefusedError, writing nothing (the
    files already at the three paths stay as they were), when the mean per-patient Dice of
    any class or region is more than `max_dice_drop` (0.01 = one point) below fp32's, or
    undefined, unless `force`.
    """
    import onnxruntime as ort

    run, fp32 = Path(run), Path(fp32)
    source = fp32 if staged_fp32 is None else Path(staged_fp32)
    int8_path, report_path = int8_paths(fp32)
    written = [int8_path, report_path] + ([] if source == fp32 else [fp32])
    check_int8_settings(written, max_dice_drop, calibration_slices)
    _, config, state = load_run(run, checkpoint)
    store = _run_store(config, state, run)
    train_data = run_dataset(config, store, "train")
    val_data = run_dataset(config, store, "val")
    positions = calibration_positions(len(train_data), calibration_slices)
    reader = SliceCalibration(train_data, positions)
    with written_together(written) as staged:  # all renamed into place at the end, or none
        tmp, report_tmp = staged[0], staged[1]
        quantize_onnx(source, tmp, reader, per_channel, form=form)
        batch = batch_size or config.batch_size
        models = {"fp32": OnnxModel(source), "int8": OnnxModel(tmp)}
        results = {}
        for name, onnx_model in models.items():
            results[name] = score(
                onnx_model,
                val_data,
                store.class_names,
                batch,
                progress=progress,
                per_patient=True,
            )
        before, after = _scores(results["fp32"]), _scores(results["int8"])
        group, drop = worst_patient_drop(before, after)
        accepted = drop <= max_dice_drop  # False for NaN: an undefined Dice cannot pass
        sessions = {name: onnx_model.session for name, onnx_model in models.items()}
        speed = time_models(sessions, val_data[0]["image"][None].numpy())
        speedup = speed["fp32"] / speed["int8"]
        report = {
            "run": str(run),
            "checkpoint": checkpoint,
            "epoch": state["epoch"],
            "method": method_label(config),
            "input_size": config.input_size,
            "output_size": store.size,
            "onnxruntime": ort.__version__,
            "fp32": {"path": str(fp32), "bytes": source.stat().st_size, **before},
            "int8": {
                "path": str(int8_path),
                "bytes": tmp.stat().st_size,
                **after,
                "written": bool(accepted or force),
                "forced": bool(force and not accepted),
            },
            "change": {key: after[key] - before[key] for key in before},
            "max_dice_drop": max_dice_drop,
            "judged": {"score": "mean per-patient Dice", "group": group, "drop": drop},
            "speed": {
                "batch": 1,
                "fp32_ms": speed["fp32"],
                "int8_ms": speed["int8"],
                "speedup": speedup,
                "pays": bool(speedup >= PAYS),
                "advice": "deploy int8"
                if speedup >= PAYS
                else f"deploy fp32: int8 runs {speedup:.2f}x fp32 here, under {PAYS}x",
                "threads": torch.get_num_threads(),  # what OnnxModel's sessions use
            },
            "quantization": {
                "format": {"qoperator": "QOperator", "qdq": "QDQ"}[form],
                "weights": "int8 per output channel, 7-bit range"
                if per_channel
                else "int8 per tensor",
                "activations": "uint8 per tensor",
                "calibration_method": "MinMax",
            },
            "calibration": {
                "split": "train",
                "slices": len(reader.indices),
                "store_slices": reader.indices.tolist(),
                "patients": reader.patients(),
            },
            "validation": {
                "split": "val",
                "slices": len(val_data),
                "patients": _patients(store, val_data.indices),
            },
            "scores": results,
        }
        if export_record is not None:
            report["export"] = export_record
        if not accepted and not force:
            key = f"patient_dice_{group}"
            reason = (
                f"per-patient Dice of {group} is undefined on the validation split"
                if math.isnan(drop)
                else f"per-patient Dice of {group} fell by {drop:.4f} > {max_dice_drop:g} "
                f"({before[key]:.4f} -> {after[key]:.4f})"
            )
            report["int8"]["refused"] = reason
            raise Int8RefusedError(
                f"{int8_path}: int8 {reason}; nothing written, files already there are "
                "untouched (--force-int8 writes it anyway)",
                report,
            )
        write_json(report_tmp, report)
        if source != fp32:
            os.replace(source, staged[2])
    return report


def _run_store(config: TrainConfig, state: dict, run: Path) -> SliceStore:
    """The run's store, checked to be the data it was trained on (upseg.engine.open_run_store)."""
    if not (Path(config.store) / "manifest.json").is_file():
        raise DataError(
            config.store,
            "int8 calibration and scoring need the slice store this run was trained on, "
            "and it is not there",
        )
    return open_run_store(config, state, run)


def export_int8(
    run: str | Path,
    out: str | Path,
    checkpoint: str = "last",
    tolerance: float = 1e-4,
    calibration_slices: int = 64,
    **options,
) -> dict:
    """Export `run` to `out` (fp32, checked against PyTorch), then `quantize_export` it
    (`options`: its keyword arguments). The report gets "export": the fp32 export's record
    (max |ONNX - PyTorch|, shapes). The fp32 model is exported under a temporary name and
    lands at `out` only with an accepted int8 model: on a refusal nothing is written."""
    out = Path(out)
    destinations = [out, *int8_paths(out)]
    check_int8_settings(destinations, options.get("max_dice_drop", 0.01), calibration_slices)
    if not tolerance > 0:
        raise ValueError(f"--tolerance must be a positive number, got {tolerance:g}")
    model, config, state = load_run(run, checkpoint)
    _run_store(config, state, Path(run))
    staged = out.with_name(f".{out.name}.{os.getpid()}.fp32.onnx")
    try:
        try:
            exported = export_onnx(model, staged, tolerance=tolerance)
        except ExportError as error:  # name the file the user asked for
            raise ExportError(str(error).replace(str(staged), str(out))) from None
        exported["path"] = str(out)
        return quantize_export(
            run,
            out,
            checkpoint,
            calibration_slices,
            export_record=exported,
            staged_fp32=staged,
            **options,
        )
    finally:
        staged.unlink(missing_ok=True)
