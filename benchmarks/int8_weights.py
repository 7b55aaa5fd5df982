"""How close int8 models with different weight settings stay to fp32 on a run's validation.

Exports RUN's model to fp32 ONNX once, quantises it as `upseg export --int8` does (QDQ, int8
activations, MinMax calibration on the same training slices) with three weight settings,
and prints for each, on the validation inputs: mean and max |int8 - fp32| of the logits
(before stretching), the share of pixels at R whose label agrees with fp32, and foreground
Dice at R as `upseg evaluate` scores it. Accuracy only; the numbers depend on the CPU's int8
kernels (see the docstring of upseg.deploy.quantize.quantize_onnx).

usage: python benchmarks/int8_weights.py RUN [--calibration-slices 64] [--checkpoint last]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from upseg.data import SliceStore
from upseg.data.resize import stretch_logits
from upseg.deploy.export import export_onnx
from upseg.deploy.quantize import (
    OnnxModel,
    SliceCalibration,
    calibration_positions,
    quantize_onnx,
)
from upseg.engine import load_run, run_dataset, score
from upseg.metrics import labels_from_logits

SETTINGS = {  # name -> (per_channel, reduce_range)
    "per-channel, 8-bit weights": (True, False),
    "per-channel, 7-bit weights (default)": (True, True),
    "per-tensor, 8-bit weights (--per-tensor)": (False, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--calibration-slices", type=int, default=64)
    parser.add_argument("--checkpoint", default="last")
    args = parser.parse_args()

    model, config, state = load_run(args.run, args.checkpoint)
    store = SliceStore(config.store)
    train, val = run_dataset(config, store, "train"), run_dataset(config, store, "val")
    images = torch.stack([val[k]["image"] for k in range(len(val))])
    positions = calibration_positions(len(train), args.calibration_slices)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32)
        reference = OnnxModel(fp32)(images)
        labels = labels_from_logits(stretch_logits(reference, store.size))
        dice = score(OnnxModel(fp32), val, store.class_names, config.batch_size)
        print(
            f"{args.run} ({config.backbone}, head {config.head}, r {config.input_size} -> "
            f"R {store.size}, epoch {state['epoch']}): {len(val)} validation slices, "
            f"{len(positions)} calibration slices; torch threads {torch.get_num_threads()}"
        )
        print(f"{'weights':42}{'mean|d|':>9}{'max|d|':>9}{'agree':>9}{'Dice':>8}")
        print(f"{'fp32':42}{'':>9}{'':>9}{'':>9}{dice['foreground_dice']:8.4f}")
        for name, (per_channel, reduce_range) in SETTINGS.items():
            out = Path(tmp) / "int8.onnx"
            reader = SliceCalibration(train, positions)
            quantize_onnx(fp32, out, reader, per_channel, reduce_range)
            logits = OnnxModel(out)(images)
            diff = (logits - reference).abs()
            agree = (labels_from_logits(stretch_logits(logits, store.size)) == labels).double()
            dice = score(OnnxModel(out), val, store.class_names, config.batch_size)
            print(
                f"{name:42}{float(diff.mean()):9.4f}{float(diff.max()):9.3f}"
                f"{float(agree.mean()):9.5f}{dice['foreground_dice']:8.4f}"
            )


if __name__ == "__main__":
    main()
