from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.helpers import run_cli
from upseg.deploy.export import ExportError, export_onnx
from upseg.models import build, list_backbones

# Small widths: export time hardly depends on width, but the check runs the model twice.
SMALL = {
    "unet": {"base_width": 4},
    "elunet": {"base_width": 4},
    "basicunet": {"features": (4, 4, 8, 8, 16, 4)},
    "basicunetpp": {"features": (4, 4, 8, 8, 16, 4)},
}
QUICK = {("elunet", "skip", 16), ("basicunetpp", None, 32)}  # run under -m "not slow" too


def _matrix() -> list:
    """Every registered backbone x every head x r in (16, 32); heads go to R = 8 r (the skip
    head needs R >= 8 r). One dynamo export each takes seconds, so all but two are `slow`."""
    cases = []
    for backbone in list_backbones():
        for head in (None, "plain", "skip"):
            for size in (16, 32):
                marks = () if (backbone, head, size) in QUICK else (pytest.mark.slow,)
                name = f"{backbone}-{head or 'none'}-r{size}"
                cases.append(pytest.param(backbone, head, size, marks=marks, id=name))
    return cases


@pytest.mark.parametrize(("backbone", "head", "size"), _matrix())
def test_export_round_trip(backbone: str, head: str | None, size: int, tmp_path: Path) -> None:
    factor = 8 if head else 1
    model = build(
        backbone, 3, 2, size, size * factor if head else None, head=head, **SMALL.get(backbone, {})
    )
    result = export_onnx(model, tmp_path / "m.onnx")
    assert result["max_abs_diff"] < 1e-4
    assert result["output"] == [None, 2, size * factor, size * factor]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, size, size)  # a batch size the export never saw
    out = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert out.shape == expected.shape == (5, 2, size * factor, size * factor)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_mismatch_writes_nothing(tmp_path: Path) -> None:
    model = build("elunet", 1, 2, 16, 32, base_width=4)
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(model, tmp_path / "m.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def half_written(model, args, f, **kwargs) -> None:
        Path(f).write_bytes(b"\x08\x01")  # the start of a file, then the exporter fails
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    model = build("elunet", 1, 2, 16, 32, base_width=4)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, tmp_path / "m.onnx")
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
