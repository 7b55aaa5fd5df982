"""ONNX export of a LowResSegmenter: one self-contained file, dynamic batch, one output.

The exported graph is the eval-mode model: image (B, C, r, r) -> logits (B, Nc, R, R) for a
head model, (B, Nc, r, r) for a baseline. A head is exported folded into one convolution and a
depth-to-space step (upseg.models.folded_head; `fold=False` keeps its stages). Every export is
checked against the PyTorch model as trained, stages and all, with onnxruntime on random
inputs at two batch sizes; a file whose outputs differ by more than `tolerance` is not
written. The file is written under a temporary name and renamed at the end: a failure
leaves whatever was at the path before untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from upseg.deploy.outputs import check_output_file
from upseg.errors import TrainingError
from upseg.io import atomic_path
from upseg.models import LowResSegmenter
from upseg.models.folded_head import fold_model


class ExportError(TrainingError):
    """The exported model does not reproduce PyTorch."""


def write_onnx(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path, output: str, opset: int = 18
) -> None:
    """torch.onnx.export of `module` (forward(x), x batch-first) to `path` with a dynamic
    batch, input "image" and one output named `output`, the exporter kept quiet."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # the exporter narrates each step otherwise
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                path,
                input_names=["image"],
                output_names=[output],
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                external_data=False,
                opset_version=opset,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)


def export_onnx(
    model: LowResSegmenter,
    path: str | Path,
    tolerance: float = 1e-4,
    opset: int = 18,
    fold: bool = True,
) -> dict:
    """Write `path` and return {"path", "max_abs_diff", "batches", "input", "output"}.
    `tolerance`: the largest allowed |ONNX - PyTorch| (> 0)."""
    import onnxruntime as ort

    if not tolerance > 0:  # NaN too
        raise ValueError(f"--tolerance must be a positive number, got {tolerance:g}")
    path = check_output_file(path, "--out")
    model = model.eval()
    in_channels = model.in_channels
    if in_channels is None:
        raise ValueError("the model does not record its input channels; build it with build()")
    size = model.feed_size
    example = torch.randn(2, in_channels, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # any failure (or Ctrl-C) removes the temporary file
        write_onnx(fold_model(model) if fold else model, example, tmp, "logits", opset)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        worst, generator = 0.0, torch.Generator().manual_seed(0)
        for b in (1, 3):
            x = torch.randn(b, in_channels, size, size, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            got = session.run(None, {"image": x.numpy()})[0]
            if got.shape != expected.shape:
                raise ExportError(f"{path}: ONNX output {got.shape} != PyTorch {expected.shape}")
            worst = max(worst, float(np.abs(got - expected).max()))
        if not worst <= tolerance:
            raise ExportError(
                f"{path}: ONNX and PyTorch outputs differ by {worst:.3g} > {tolerance:g}; "
                "nothing was written"
            )
    return {
        "path": str(path),
        "max_abs_diff": worst,
        "batches": [1, 3],
        "input": [None, in_channels, size, size],
        "output": [None, *expected.shape[1:]],
    }
