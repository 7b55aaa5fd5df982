from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime as ort
import pytest
import torch
from monai.bundle import ConfigParser

from tests.data.files import brats_case, decathlon_task, write_nifti
from upseg.data import BratsReader, DecathlonReader, prepare
from upseg.data.errors import DataError
from upseg.deploy import bundle as bundle_module
from upseg.deploy.bundle import _literal, network, write_bundle
from upseg.deploy.predict import predict
from upseg.engine import TrainConfig, load_run
from upseg.engine.runs import load_checkpoint
from upseg.engine.trainer import train

TINY = {"backbone_kwargs": {"base_width": 4}, "input_size": 16, "batch_size": 2, "epochs": 1}
MODALITIES = ("flair", "t1", "t1ce", "t2")
HEADER_KEYS = ("qform_code", "sform_code", "pixdim", "xyzt_units", "intent_code", "srow_x")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread here and in the bundle runner: the same kernels on both sides, and no
    fight for the cores with whatever else runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def brats_run(tmp_path_factory) -> Path:
    """A tiny run on three small synthetic BraTS cases (240 x 240 x 6, R = 256, r = 16)."""
    root = tmp_path_factory.mktemp("brats")
    for i in range(3):
        brats_case(root / "raw", f"case{i}", extension=".nii", seed=i)
    store = prepare(BratsReader(root / "raw"), root / "store", progress=False)
    config = TrainConfig(store=str(store), out=str(root / "run"), max_steps_per_epoch=1, **TINY)
    train(config, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def bundle(brats_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "upseg_brats"
    files = write_bundle(brats_run, out)
    names = {str(p.relative_to(out)) for p in files}
    assert names == {
        "configs/metadata.json",
        "configs/inference.json",
        "configs/logging.conf",
        "models/model.pt",
        "models/model.onnx",
        "docs/README.md",
        "docs/data_license.txt",
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["upseg_brats"]  # no temporary left
    return out


@pytest.fixture(scope="module")
def new_inputs(tmp_path_factory) -> list[Path]:
    """A case the run never saw, as a case folder and as one 4-D NIfTI file."""
    root = tmp_path_factory.mktemp("inputs")
    case = brats_case(root, "new", seed=7)
    volumes = [nib.load(case / f"new_{m}.nii.gz") for m in MODALITIES]
    stacked = np.stack([np.asarray(v.dataobj) for v in volumes], axis=-1)
    four_d = root / "files" / "new4d.nii.gz"
    write_nifti(four_d, stacked)
    return [case, four_d]


def test_metadata_describes_the_network(bundle: Path) -> None:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in (
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "task",
        "description",
        "authors",
        "copyright",
        "data_source",
        "data_type",
        "intended_use",
    ):
        assert isinstance(meta[key], str) and meta[key], key
    assert meta["required_packages_version"]["upseg"]
    assert "research use only" in meta["intended_use"].lower()
    image = meta["network_data_format"]["inputs"]["image"]
    assert image == {
        "type": "image",
        "format": "magnitude",
        "modality": "MR",
        "num_channels": 4,
        "spatial_shape": [16, 16],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": False,
        "channel_def": {"0": "flair", "1": "t1", "2": "t1ce", "3": "t2"},
    }
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "image" and pred["format"] == "labels"
    assert pred["num_channels"] == 4 and pred["spatial_shape"] == [256, 256]
    assert pred["channel_def"] == {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}
    assert meta["upseg"]["label_values"] == {"0": 0, "1": 1, "2": 2, "3": 4}


def test_model_files_rebuild_the_run_model(brats_run: Path, bundle: Path) -> None:
    model = load_run(brats_run, "last")[0]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    settings, data = parser.get_parsed_content("train_config"), parser.get_parsed_content("data")
    assert not {"store", "out", "store_id", "device", "workers"} & set(settings)  # no paths
    rebuilt = network(settings, data["class_names"], data["modalities"], data["size"])
    rebuilt.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(rebuilt.eval()(x), expected)
    session = ort.InferenceSession(str(bundle / "models" / "model.onnx"))
    assert session.get_inputs()[0].shape[1:] == [4, 16, 16]
    got = session.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


def test_monai_runner_writes_the_masks_predict_writes(
    brats_run: Path, bundle: Path, new_inputs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "bundle_masks"
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle),
        "--input", repr([str(p) for p in new_inputs]),
        "--output_dir", str(out),
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = predict(brats_run, new_inputs, tmp_path / "predict_masks", progress=False)
    assert expected["skipped"] == [] and len(expected["written"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["new.nii.gz", "new4d.nii.gz"]
    for path in map(Path, expected["written"]):
        ours, theirs = nib.load(out / path.name), nib.load(path)
        labels = np.asarray(ours.dataobj)
        assert labels.shape == (240, 240, 6) and labels.dtype == np.uint8
        assert len(np.unique(labels)) > 1  # a mask with something in it, not a vacuous match
        assert labels.tobytes() == np.asarray(theirs.dataobj).tobytes()
        np.testing.assert_array_equal(ours.affine, theirs.affine)
        for key in HEADER_KEYS:
            np.testing.assert_array_equal(ours.header[key], theirs.header[key], err_msg=key)


def test_segmenter_reports_bad_inputs_and_keeps_masks(
    bundle: Path, new_inputs: list[Path], tmp_path: Path
) -> None:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    segmenter = parser.get_parsed_content("segmenter")
    with pytest.raises(ValueError, match="no input"):
        segmenter(None, tmp_path / "out")
    out = tmp_path / "out"
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"not found \(1 input\(s\) skipped\)"):
        segmenter([missing, new_inputs[0]], out)
    assert sorted(p.name for p in out.iterdir()) == ["new.nii.gz"]  # the good one is written
    mask = out / "new.nii.gz"
    before = mask.read_bytes()
    with pytest.raises(DataError, match="exists"):
        segmenter(new_inputs[0], out, force="false")
    assert mask.read_bytes() == before
    assert segmenter(str(new_inputs[0]), out, force="true") == [str(mask)]


def test_existing_folders_are_refused_without_force(brats_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty; pass --force"):
        write_bundle(brats_run, out, onnx=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="would replace the run"):
        write_bundle(brats_run, brats_run.parent, force=True, onnx=False)
    write_bundle(brats_run, out, force=True, onnx=False)
    assert not (out / "keep.txt").exists() and (out / "configs" / "metadata.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_failure_leaves_nothing_half_written(
    brats_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs) -> dict:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(bundle_module, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        write_bundle(brats_run, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="exporter crashed"):
        write_bundle(brats_run, old, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in old.iterdir()] == ["keep.txt"]


def test_readme_reports_evaluation_when_it_scores_these_weights(
    brats_run: Path, bundle: Path, tmp_path: Path
) -> None:
    card = (bundle / "docs" / "README.md").read_text()
    assert "research use only" in card.lower()
    assert "not evaluated" in card and "upseg evaluate" in card
    assert "patients: 3 (training 2, validation 1)" in card
    assert "4 x 16 x 16" in card and "256" in card
    run = tmp_path / "run"
    shutil.copytree(brats_run, run)
    evaluation = run / "evaluation"
    evaluation.mkdir()
    scores = {"dice": 0.8125, "jaccard": 0.7, "hd95": 3.5, "nsd": float("nan")}
    summary = {
        "metric_per_case": [],
        "mean": {"WT": scores},
        "median": {"WT": {**scores, "dice": 0.9}},
        "patients_scored": {"WT": {"dice": 1, "jaccard": 1, "hd95": 1, "nsd": 0}},
    }
    (evaluation / "last_val_summary.json").write_text(json.dumps(summary))
    (evaluation / "last_val.json").write_text(json.dumps({"epoch": 1}))
    write_bundle(run, tmp_path / "scored", onnx=False)
    card = (tmp_path / "scored" / "docs" / "README.md").read_text()
    assert "| WT | mean | 0.8125 | 0.7000 | 3.50 px | n/a | 1 |" in card
    assert "| WT | median | 0.9000 |" in card and "not evaluated" not in card
    (evaluation / "last_val.json").write_text(json.dumps({"epoch": 5}))
    write_bundle(run, tmp_path / "stale", onnx=False)
    card = (tmp_path / "stale" / "docs" / "README.md").read_text()
    assert "scores epoch 5, these weights are from epoch 1" in card and "| WT |" not in card


def test_runs_without_files_to_segment_are_refused(brats_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(brats_run, run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["data"].update(format="phantom", label_values=None)
    torch.save(state, run / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="'phantom' data, which has no files"):
        write_bundle(run, tmp_path / "b", onnx=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_decathlon_baseline_bundle_segments_volumes(tmp_path: Path) -> None:
    """A baseline (no head: logits at r) on 4-D Decathlon volumes, run through the bundle's
    own config in-process."""
    task = decathlon_task(tmp_path / "task", cases=3)
    store = prepare(DecathlonReader(task, size=32), tmp_path / "store", progress=False)
    run = tmp_path / "run"
    config = TrainConfig(store=str(store), out=str(run), head="none", **TINY)
    train(config, progress=False)
    out = tmp_path / "bundle"
    write_bundle(run, out, onnx=False)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == [16, 16]
    assert image["modality"] == "T2"
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 2 and pred["spatial_shape"] == [16, 16]  # r: no head
    assert pred["channel_def"] == {"0": "background", "1": "prostate"}
    assert not (out / "models" / "model.onnx").exists()
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    parser.update({"bundle_root": str(out), "input": str(task / "imagesTr"), "device": "cpu"})
    parser["output_dir"] = str(tmp_path / "ours")
    written = parser.get_parsed_content("run")
    expected = predict(run, [task / "imagesTr"], tmp_path / "theirs", progress=False)
    assert [Path(p).name for p in written[0]] == [Path(p).name for p in expected["written"]]
    for path in map(Path, expected["written"]):
        ours = np.asarray(nib.load(tmp_path / "ours" / path.name).dataobj)
        assert ours.shape == (24, 20, 5)
        assert ours.tobytes() == np.asarray(nib.load(path).dataobj).tobytes()


def test_literal_strings_survive_monai_parsing(tmp_path: Path) -> None:
    values = {
        "names": ["@ref", "a#b", "$x", "%macro", "it's \\ 50% @ #1", "plain"],
        "nested": {"k": "@data#size", "n": [1, None, 2.5, True]},
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": _literal(values)}))
    parser = ConfigParser()
    parser.read_config(str(path))
    assert parser.get_parsed_content("data") == values


def test_a_guided_bundle_takes_the_full_image(
    brats_run: Path, new_inputs: list[Path], tmp_path: Path
) -> None:
    """The guided head's network takes the frames at R (256), so the bundle says so, its ONNX
    model takes them, and the MONAI runner still writes predict's masks."""
    store = brats_run.parent / "store"
    run = tmp_path / "guided"
    config = TrainConfig(
        store=str(store), out=str(run), head="guided", max_steps_per_epoch=1, **TINY
    )
    train(config, progress=False)
    out = tmp_path / "upseg_guided"
    write_bundle(run, out)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [256, 256]
    assert "averaged down to 16 x 16" in (out / "docs" / "README.md").read_text()
    session = ort.InferenceSession(str(out / "models" / "model.onnx"))
    assert session.get_inputs()[0].shape[1:] == [4, 256, 256]
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(out / "configs" / "inference.json"),
        "--meta_file", str(out / "configs" / "metadata.json"),
        "--bundle_root", str(out),
        "--input", repr([str(new_inputs[0])]),
        "--output_dir", str(tmp_path / "masks"),
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = predict(run, new_inputs[:1], tmp_path / "predict_masks", progress=False)
    path = Path(expected["written"][0])
    ours = np.asarray(nib.load(tmp_path / "masks" / path.name).dataobj)
    assert ours.tobytes() == np.asarray(nib.load(path).dataobj).tobytes()
