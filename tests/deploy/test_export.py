from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.helpers import SMALL_BACKBONES as SMALL
from tests.helpers import run_cli
from upseg.deploy.export import ExportError, export_onnx
from upseg.models import build, list_backbones

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


class _OffSession:
    """An onnxruntime session whose outputs are 1 off: a mismatch."""

    def __init__(self, *args, **kwargs) -> None:
        self.session = ORT_SESSION(*args, **kwargs)

    def run(self, *args, **kwargs) -> list:
        return [out + 1.0 for out in self.session.run(*args, **kwargs)]


ORT_SESSION = ort.InferenceSession


def test_mismatch_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ort, "InferenceSession", _OffSession)
    model = build("elunet", 1, 2, 16, 32, base_width=4)
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tolerance", ["-1", "0", "nan"])
def test_tolerance_must_be_positive(tolerance: str, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    args = ["export", "--backbone", "elunet", "--input-size", "16", "--out", str(out)]
    result = run_cli(*args, "--tolerance", tolerance)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --tolerance must be a positive number, got {tolerance}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_destination_that_cannot_be_a_file_fails_before_the_export(tmp_path: Path) -> None:
    folder, afile = tmp_path / "d", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("keep")
    fresh = ["export", "--backbone", "elunet", "--input-size", "16", "--output-size", "32"]
    result = run_cli(*fresh, "--out", str(folder))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: --out {folder}: is a folder; give a file name inside it or elsewhere"
    )
    result = run_cli(*fresh, "--out", str(afile / "m.onnx"))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: --out {afile / 'm.onnx'}: {afile} is a file, not a folder"
    )
    # nothing written, no temporary file left behind, the file untouched
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "d"]
    assert afile.read_text() == "keep"


def test_failed_rename_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def refuse(src, dst) -> None:
        raise OSError(f"cannot rename {src} to {dst}")

    monkeypatch.setattr("upseg.io.os.replace", refuse)
    model = build("elunet", 1, 2, 16, 32, base_width=4)
    with pytest.raises(OSError, match="cannot rename"):
        export_onnx(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_model_flags_beside_a_run_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"  # refused before the run is even read
    args = ["export", str(run), "--out", str(tmp_path / "m.onnx")]
    result = run_cli(*args, "--backbone", "unet", "--input-size", "32", "--classes", "4")
    assert result.returncode == 2
    assert "a RUN directory brings its own model; drop --backbone --input-size --classes" in (
        result.stderr
    )
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


@pytest.mark.parametrize("fold", [True, False])
def test_export_of_a_features_head(fold: bool, tmp_path: Path) -> None:
    """The head reads ELU-Net's last decoder features (C_f = 4 at base width 4): folded, one
    conv per region reads those 4 channels; the label graph on top needs nothing else."""
    import onnx

    from upseg.deploy.labels import add_label_output

    model = build("elunet", 3, 2, 16, 64, head_input="features", base_width=4)
    with torch.no_grad():
        for p in model.head.parameters():  # away from the start, which equals the logits head
            p.add_(0.1 * torch.randn_like(p))
    result = export_onnx(model, tmp_path / "m.onnx", fold=fold)
    assert result["max_abs_diff"] < 1e-4 and result["output"] == [None, 2, 64, 64]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    regions = [i for i in graph.initializer if i.name.startswith("head.weight_")]
    assert [tuple(i.dims) for i in regions] == ([(2 * 16, 4, 3, 3)] * 9 if fold else [])
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval()(x)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-4)
    labels = add_label_output(tmp_path / "m.onnx", tmp_path / "labels.onnx", 64)
    session = ort.InferenceSession(str(labels), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    margin = expected.topk(2, dim=1).values.diff(dim=1).abs().squeeze(1)
    sure = margin > 1e-3  # pixels whose two best classes are not within rounding
    assert np.array_equal(got[sure.numpy()], expected.argmax(1)[sure].numpy())


def test_bundle_flags_are_checked_before_any_work(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cases = [
        (["export", "--bundle", str(tmp_path / "b"), "--backbone", "elunet"], "needs a RUN"),
        (["export", str(run)], "give --out FILE (or --bundle DIR)"),
        (["export", str(run), "--out", str(tmp_path / "m.onnx"), "--force"], "only applies"),
        (
            ["export", str(run), "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "m")],
            "drop --out",
        ),
    ]
    for argv, message in cases:
        result = run_cli(*argv)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)
    assert not (tmp_path / "b").exists()


def test_export_of_a_guided_head_takes_the_full_image(tmp_path: Path) -> None:
    """A guided model's graph takes the image at R (it averages it down to r itself) and keeps
    its stages: the guides are not affine, so nothing folds."""
    import onnx

    model = build("elunet", 2, 3, 16, 64, head="guided", base_width=4)
    with torch.no_grad():
        for p in model.head.parameters():  # the guide weights of the stages start at zero
            p.add_(0.1 * torch.randn_like(p))
    result = export_onnx(model, tmp_path / "g.onnx")
    assert result["input"] == [None, 2, 64, 64] and result["output"] == [None, 3, 64, 64]
    assert result["max_abs_diff"] < 1e-4
    graph = onnx.load(str(tmp_path / "g.onnx")).graph
    assert not [i for i in graph.initializer if i.name.startswith("head.weight_")]
