from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.helpers import run_cli
from upseg.data import PhantomReader, SliceStore, prepare
from upseg.deploy import quantize
from upseg.deploy.quantize import (
    SliceCalibration,
    calibration_positions,
    int8_paths,
    quantize_export,
    worst_patient_drop,
)
from upseg.engine import TrainConfig, load_run, run_dataset
from upseg.engine.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run: phantom store at R = 64 (4 training, 1 validation patient), r = 16."""
    root = tmp_path_factory.mktemp("int8")
    store = prepare(
        PhantomReader(size=64, num_patients=5, slices_per_patient=8),
        root / "store",
        progress=False,
    )
    config = TrainConfig(
        store=str(store),
        out=str(root / "run"),
        backbone_kwargs={"base_width": 4},
        input_size=16,
        batch_size=4,
        epochs=1,
        max_steps_per_epoch=4,
        lr=3e-3,
    )
    train(config, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory) -> tuple[Path, object]:
    """`upseg export RUN --out m.onnx --int8` once for the tests that read its files."""
    out = tmp_path_factory.mktemp("exported") / "m.onnx"
    result = run_cli("export", str(run), "--out", str(out), "--int8", "--calibration-slices", "8")
    return out, result


def _store(run: Path) -> SliceStore:
    return SliceStore(load_run(run, "last")[1].store)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_int8_model_is_written_runnable_and_close_to_fp32(run: Path, exported) -> None:
    out, result = exported
    assert result.returncode == 0, result.stderr
    int8, report_path = int8_paths(out)
    assert int8.name == "m.int8.onnx" and report_path.name == "m.int8.json"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.int8.json", "m.int8.onnx", "m.onnx"]
    report = json.loads(report_path.read_text())

    graph = onnx.load(str(int8)).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QLinearConv"] >= 20 and ops["QuantizeLinear"] > 0  # QOperator form
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # the convolutions' weights are stored as int8
    initializers = {t.name: t for t in graph.initializer}
    activation_zero_points = [
        initializers[node.input[2]] for node in graph.node if node.op_type == "QuantizeLinear"
    ]
    assert all(t.data_type == onnx.TensorProto.UINT8 for t in activation_zero_points)

    store = _store(run)
    images = np.asarray(
        store.lowres_images(16)[report["calibration"]["store_slices"]], dtype=np.float32
    )
    expected = _session(out).run(None, {"image": images})[0]
    got = _session(int8).run(None, {"image": images})[0]
    assert got.shape == expected.shape == (8, 4, 64, 64)
    spread = float(expected.max() - expected.min())
    assert np.abs(got - expected).max() <= 0.1 * spread  # 8-bit activations: loose bound
    assert not np.array_equal(got, expected)  # it really is a different (quantised) model

    assert report["fp32"]["bytes"] == out.stat().st_size
    assert report["int8"]["bytes"] == int8.stat().st_size < 0.6 * out.stat().st_size
    for key in ("foreground_dice", "paper_jaccard"):
        assert 0 <= report["fp32"][key] <= 1 and 0 <= report["int8"][key] <= 1
        assert report["change"][key] == pytest.approx(report["int8"][key] - report["fp32"][key])
    assert report["int8"]["written"] and not report["int8"]["forced"]
    groups = [k for k in report["change"] if k.startswith("patient_dice_")]
    assert groups and report["judged"]["score"] == "mean per-patient Dice"
    drops = {k: report["fp32"][k] - report["int8"][k] for k in groups}
    judged = "patient_dice_" + report["judged"]["group"]
    assert report["judged"]["drop"] == pytest.approx(max(drops.values())) == drops[judged]
    speed = report["speed"]
    assert speed["fp32_ms"] > 0 and speed["int8_ms"] > 0
    assert speed["speedup"] == pytest.approx(speed["fp32_ms"] / speed["int8_ms"])
    assert speed["pays"] == (speed["speedup"] >= 1.5)
    assert speed["advice"].startswith("deploy int8" if speed["pays"] else "deploy fp32")
    assert report["quantization"]["format"] == "QOperator"
    assert report["validation"] == {"split": "val", "slices": 8, "patients": ["phantom_0_002"]}
    assert report["export"]["max_abs_diff"] < 1e-4
    labels = ("foreground Dice", "Jaccard (paper eq. 1)", "file size (KiB)", "patient Dice")
    labels += ("ms per image (batch 1)", f"on this CPU: {speed['advice']}")
    for label in labels:
        assert label in result.stdout
    assert f"wrote {int8}" in result.stdout


def test_calibration_uses_only_training_patients(run: Path, exported) -> None:
    report = json.loads(int8_paths(exported[0])[1].read_text())
    store = _store(run)
    train_ids, val_ids = store.patient_ids("train"), store.patient_ids("val")
    calibration = report["calibration"]
    assert calibration["split"] == "train" and calibration["slices"] == 8
    assert calibration["patients"] == train_ids  # 8 slices spread over all 4
    owners = {
        store.manifest["patients"][k]["id"] for k in store.slices[calibration["store_slices"], 0]
    }
    assert owners == set(train_ids) and not owners & set(val_ids)

    # what the reader feeds the calibrator: the training inputs at r, as in training
    config = load_run(run, "last")[1]
    dataset = run_dataset(config, store, "train")
    reader = SliceCalibration(dataset, calibration_positions(len(dataset), 8), batch=3)
    fed = []
    while (batch := reader.get_next()) is not None:
        fed.append(batch["image"])
    assert [len(b) for b in fed] == [3, 3, 2]
    cache = store.lowres_images(16)
    np.testing.assert_array_equal(np.concatenate(fed), cache[calibration["store_slices"]])
    assert reader.patients() == train_ids


def test_worst_patient_drop_names_the_group_that_fell_most() -> None:
    before = {"foreground_dice": 0.8, "patient_dice_WT": 0.90, "patient_dice_ET": 0.70}
    after = {"foreground_dice": 0.5, "patient_dice_WT": 0.89, "patient_dice_ET": 0.68}
    group, drop = worst_patient_drop(before, after)  # pooled Dice is not what is judged
    assert group == "ET" and drop == pytest.approx(0.02)
    nan_tc = {"patient_dice_TC": math.nan}
    group, drop = worst_patient_drop({**before, **nan_tc}, {**after, **nan_tc})
    assert group == "TC" and math.isnan(drop)
    assert math.isnan(worst_patient_drop({"foreground_dice": 0.8}, {"foreground_dice": 0.8})[1])


def test_calibration_positions_are_deterministic_and_spread() -> None:
    positions = calibration_positions(32, 8)
    np.testing.assert_array_equal(positions, calibration_positions(32, 8))
    assert positions[0] == 0 and positions[-1] == 31 and len(np.unique(positions)) == 8
    np.testing.assert_array_equal(calibration_positions(5, 64), np.arange(5))
    with pytest.raises(ValueError, match="at least 1"):
        calibration_positions(32, 0)


@pytest.fixture
def worse_int8(monkeypatch) -> None:
    """The int8 model (scored second) loses 0.5 of foreground Dice, pooled and per patient in
    every class: refused."""
    real, calls = quantize.score, []

    def score(*args, **kwargs) -> dict:
        summary = real(*args, **kwargs)
        calls.append(1)
        if len(calls) % 2 == 0:
            patients = {
                group: {**scores, "dice": {**scores["dice"], "mean": scores["dice"]["mean"] - 0.5}}
                for group, scores in summary["patient_summary"].items()
            }
            summary = {
                **summary,
                "foreground_dice": summary["foreground_dice"] - 0.5,
                "patient_summary": patients,
            }
        return summary

    monkeypatch.setattr(quantize, "score", score)


def test_refused_int8_writes_nothing(run: Path, tmp_path: Path, worse_int8) -> None:
    out = tmp_path / "m.onnx"
    args = ["export", str(run), "--out", str(out), "--int8", "--calibration-slices", "4"]
    result = run_cli(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing written" in lines[0]
    assert "per-patient Dice of" in lines[0] and "fell by 0.5" in lines[0]
    assert "--force-int8" in lines[0]
    assert "foreground Dice" in result.stdout  # the table is still printed
    assert f"exported (not written) {out}" in result.stdout
    # no fp32 model, no int8 model, no report, no temporary file
    assert list(tmp_path.iterdir()) == []


def test_refused_int8_leaves_an_earlier_export_untouched(
    run: Path, tmp_path: Path, worse_int8
) -> None:
    earlier = {"m.onnx": b"fp32 before", "m.int8.onnx": b"int8 before", "m.int8.json": b"{}"}
    for name, content in earlier.items():
        (tmp_path / name).write_bytes(content)
    out = tmp_path / "m.onnx"
    args = ["export", str(run), "--out", str(out), "--int8", "--calibration-slices", "4"]
    result = run_cli(*args)
    assert result.returncode == 1 and "nothing written" in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier


def test_force_writes_int8_past_the_threshold(
    run: Path, exported, tmp_path: Path, worse_int8
) -> None:
    fp32 = tmp_path / "m.onnx"
    shutil.copy(exported[0], fp32)
    report = quantize_export(run, fp32, calibration_slices=4, force=True)
    assert report["int8"]["written"] and report["int8"]["forced"]
    assert report["change"]["foreground_dice"] < -0.4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.json", "m.int8.onnx", "m.onnx"]
    out = _session(tmp_path / "m.int8.onnx").run(None, {"image": np.zeros((2, 4, 16, 16), "f4")})
    assert out[0].shape == (2, 4, 64, 64)


def test_int8_usage_errors(run: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "m.onnx")
    fresh = run_cli("export", "--backbone", "elunet", "--input-size", "16", "--out", out, "--int8")
    assert fresh.returncode == 2 and "--int8 needs a trained RUN" in fresh.stderr
    lone = run_cli("export", str(run), "--out", out, "--max-dice-drop", "0.02", "--per-tensor")
    assert lone.returncode == 2 and not (tmp_path / "m.onnx").exists()
    assert "--max-dice-drop --per-tensor only apply with --int8" in lone.stderr
    zero = run_cli("export", str(run), "--out", out, "--int8", "--calibration-slices", "0")
    assert zero.returncode == 2 and "--calibration-slices must be at least 1" in zero.stderr
    for drop in ("-0.5", "nan"):
        negative = run_cli("export", str(run), "--out", out, "--int8", "--max-dice-drop", drop)
        assert negative.returncode == 2
        assert negative.stderr.strip() == f"error: --max-dice-drop must be 0 or more, got {drop}"
    (tmp_path / "m.int8.json").mkdir()  # the report cannot be written: refused up front
    folder = run_cli("export", str(run), "--out", out, "--int8")
    assert folder.returncode == 2 and f"{tmp_path / 'm.int8.json'}: is a folder" in folder.stderr
    (tmp_path / "m.int8.json").rmdir()
    # a run whose store has gone: one line naming the store, before anything is exported
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    state = torch.load(moved / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["store"] = str(tmp_path / "gone")
    torch.save(state, moved / "checkpoints" / "last.pt")
    gone = run_cli("export", str(moved), "--out", out, "--int8")
    assert gone.returncode == 1 and str(tmp_path / "gone") in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved"]


def test_nearest_elunet_quantizes_every_layer(tmp_path: Path, monkeypatch) -> None:
    """ELU-Net with nearest up-sampling: onnxruntime's symbolic shape inference gives up on its
    Resize nodes (the pre-processing skips it, so nothing lands in the working directory),
    and no float Conv/ConvTranspose remains."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    from upseg.deploy.export import export_onnx
    from upseg.deploy.quantize import quantize_onnx
    from upseg.models import build

    torch.manual_seed(0)
    model = build("elunet", 2, 3, 32, base_width=4, upsample="nearest").eval()
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(model, fp32)
    images = [np.random.default_rng(i).standard_normal((2, 2, 32, 32), np.float32) for i in (0, 1)]

    class Reader:
        def get_next(self) -> dict | None:
            return {"image": images.pop()} if images else None

    quantize_onnx(fp32, int8, Reader())
    ops = Counter(node.op_type for node in onnx.load(str(int8)).graph.node)
    assert ops["QLinearConv"] > 0 and ops["Resize"] > 0
    assert ops["Conv"] == 0 and ops["ConvTranspose"] == 0
    x = np.random.default_rng(5).standard_normal((1, 2, 32, 32), np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    got = _session(int8).run(None, {"image": x})[0]
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert list(work.iterdir()) == []
