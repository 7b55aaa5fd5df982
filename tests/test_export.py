from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.helpers import run_cli
from upseg.deploy.export import ExportError, export_onnx
from upseg.models import build


@pytest.mark.parametrize(
    ("backbone", "head", "size"), [("elunet", "skip", 16), ("basicunetpp", None, 32)]
)
def test_export_round_trip(backbone: str, head: str | None, size: int, tmp_path: Path) -> None:
    kwargs = {"base_width": 4} if backbone == "elunet" else {"features": (4, 4, 8, 8, 16, 4)}
    model = build(backbone, 3, 2, size, size * 8 if head else None, head=head, **kwargs)
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, size, size)  # a batch size the export never saw
    out = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert (
        out.shape == expected.shape == (5, 2, size * (8 if head else 1), size * (8 if head else 1))
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_mismatch_writes_nothing(tmp_path: Path) -> None:
    model = build("elunet", 1, 2, 16, 32, base_width=4)
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(model, tmp_path / "m.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_export_cli(tmp_path: Path) -> None:
    result = run_cli(
        "export",
        "--backbone",
        "elunet",
        "--head",
        "plain",
        "--input-size",
        "16",
        "--output-size",
        "64",
        "--in-channels",
        "2",
        "--classes",
        "3",
        "--out",
        str(tmp_path / "fresh.onnx"),
    )
    assert result.returncode == 0, result.stderr
    assert "image [None, 2, 16, 16] -> logits [None, 3, 64, 64]" in result.stdout
    missing = run_cli("export", "--out", str(tmp_path / "x.onnx"))
    assert missing.returncode == 2 and "give a RUN directory" in missing.stderr
