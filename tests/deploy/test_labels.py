"""The labels graph (image at r in, labels at R out) that `predict` and `bench` run: its
labels are PyTorch's on every backbone and head, folded and factored or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.helpers import SMALL_BACKBONES
from upseg.data.resize import stretch_logits
from upseg.deploy.labels import export_labels
from upseg.models import build, list_backbones
from upseg.models.folded_head import fold_model

HEADS = {"none": {}, "logits": {"head": "plain", "head_input": "logits"}}
HEADS |= {"features": {"head": "plain"}, "skip": {"head": "skip"}}
QUICK = {("elunet", "features"), ("basicunet", "skip")}  # run under -m "not slow" too


def _cases() -> list:
    return [
        pytest.param(b, h, id=f"{b}-{h}", marks=() if (b, h) in QUICK else (pytest.mark.slow,))
        for b in list_backbones()
        for h in HEADS
    ]


def _torch_labels(model: torch.nn.Module, x: torch.Tensor, size: int) -> np.ndarray:
    with torch.no_grad():
        scores = stretch_logits(model(x), size)  # a head model's output is at R already
    return scores.argmax(1).numpy()


def _onnx_labels(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def _randomise_head(model: torch.nn.Module, scale: float) -> None:
    head = getattr(model, "head", None)
    if head is not None:
        with torch.no_grad():
            for p in head.parameters():
                p.add_(scale * torch.randn_like(p))  # away from the stretch it starts as


@pytest.mark.parametrize(("backbone", "head"), _cases())
def test_labels_graph_gives_pytorchs_labels(backbone: str, head: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = 128 if head == "skip" else 64  # the skip head needs R >= 8 r
    model = build(
        backbone,
        2,
        3,
        16,
        None if head == "none" else size,
        **HEADS[head],
        **SMALL_BACKBONES.get(backbone, {}),
    ).eval()
    _randomise_head(model, 0.1)
    x = torch.randn(3, 2, 16, 16)  # a batch size the export never saw
    got = _onnx_labels(export_labels(model, tmp_path / "labels.onnx", size), x)
    expected = _torch_labels(model, x, size)
    assert got.shape == expected.shape == (3, size, size) and got.dtype == np.int64
    assert np.mean(got != expected) < 1e-3  # near-ties may go either way


@pytest.mark.parametrize("classes", [4, 2])
def test_factored_features_head_gives_pytorchs_labels(classes: int, tmp_path: Path) -> None:
    """ELU-Net's own width (C_f = 16) at 16 -> 256: the labels matrices are applied as two."""
    torch.manual_seed(0)
    model = build("elunet", 1, classes, 16, 256, head="plain").eval()
    _randomise_head(model, 0.05)
    assert "11" in fold_model(model).head.factored
    x = torch.randn(2, 1, 16, 16)
    got = _onnx_labels(export_labels(model, tmp_path / "labels.onnx", 256), x)
    expected = _torch_labels(model, x, 256)
    assert got.shape == expected.shape == (2, 256, 256)
    assert np.mean(got != expected) < 1e-3
