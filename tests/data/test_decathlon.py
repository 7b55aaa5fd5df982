from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.files import decathlon_task, truncate, write_nifti
from upseg.data import DataError, DecathlonReader, prepare
from upseg.data.store import SliceStore


@pytest.fixture
def task(tmp_path: Path) -> Path:
    return decathlon_task(tmp_path / "Task05_Prostate")


def test_task05_defaults(task: Path) -> None:
    reader = DecathlonReader(task, size=32)
    assert reader.modalities == ("T2",)
    assert reader.class_names == ("background", "prostate")  # PZ + TZ merged
    case = reader.read(reader.items()[0])
    assert case.images.shape == (5, 1, 32, 32)
    assert case.masks.shape == (5, 32, 32)
    assert set(np.unique(case.masks)) == {0, 1}
    # T2 is a ramp along the first axis: rows must increase after z-scoring and stretching
    assert np.all(np.diff(case.images[2, 0].mean(axis=1)) > 0)
    assert case.images.mean() == pytest.approx(0, abs=0.05)
    assert case.geometry["label_values"] == {"0": 0, "1": 1}


def test_modality_by_name_and_no_merge(task: Path) -> None:
    reader = DecathlonReader(task, size=32, modality="adc", merge={"PZ": [1], "TZ": [2]})
    assert reader.modalities == ("ADC",)
    assert reader.class_names == ("background", "PZ", "TZ")
    case = reader.read(reader.items()[0])
    assert abs(np.diff(case.images[2, 0].mean(axis=1)).mean()) < 0.1  # flat, not the ramp
    assert set(np.unique(case.masks)) == {0, 1, 2}


def test_other_task_keeps_its_labels(tmp_path: Path) -> None:
    task = decathlon_task(tmp_path / "Task02", name="Heart")
    reader = DecathlonReader(task, size=32)
    assert reader.class_names == ("background", "PZ", "TZ")


def test_foreground_slices(task: Path) -> None:
    reader = DecathlonReader(task, size=32, slices="foreground")
    case = reader.read(reader.items()[0])
    assert list(case.slice_indices) == [1, 2, 3]


def test_split_two_thirds(task: Path, tmp_path: Path) -> None:
    store = SliceStore(prepare(DecathlonReader(task, size=32), tmp_path / "s", progress=False))
    assert (len(store.manifest["split"]["train"]), len(store.manifest["split"]["val"])) == (2, 1)


def error_of(task: Path, **options) -> str:
    with pytest.raises(DataError) as info:
        reader = DecathlonReader(task, size=32, **options)
        for item in reader.items():
            reader.read(item)
    return str(info.value)


def test_broken_json(task: Path) -> None:
    (task / "dataset.json").write_text("{not json")
    assert "dataset.json: not valid JSON" in error_of(task)


def test_json_missing_key(task: Path) -> None:
    meta = json.loads((task / "dataset.json").read_text())
    del meta["labels"]
    (task / "dataset.json").write_text(json.dumps(meta))
    assert "dataset.json: key 'labels' is missing" in error_of(task)


def test_no_dataset_json(tmp_path: Path) -> None:
    assert "no dataset.json" in error_of(tmp_path)


def test_unknown_modality(task: Path) -> None:
    assert "modality 'DWI' not declared" in error_of(task, modality="DWI")


def test_truncated_image(task: Path) -> None:
    truncate(task / "imagesTr" / "prostate_01.nii.gz")
    assert "prostate_01.nii.gz: cannot read" in error_of(task)


def test_missing_label_file(task: Path) -> None:
    (task / "labelsTr" / "prostate_02.nii.gz").unlink()
    assert "labelsTr/prostate_02.nii.gz: file not found" in error_of(task)


def test_shape_mismatch(task: Path) -> None:
    write_nifti(task / "labelsTr" / "prostate_00.nii.gz", np.zeros((24, 20, 4), np.uint8))
    assert "prostate_00.nii.gz: shape (24, 20, 4) differs" in error_of(task)


def test_label_outside(task: Path) -> None:
    label = np.zeros((24, 20, 5), np.uint8)
    label[0, 0, 0] = 3
    write_nifti(task / "labelsTr" / "prostate_00.nii.gz", label)
    assert "prostate_00.nii.gz: label values [3] are outside" in error_of(task)


def test_nan_image(task: Path) -> None:
    image = np.ones((24, 20, 5, 2), np.float32)
    image[1, 1, 1, 0] = np.nan
    write_nifti(task / "imagesTr" / "prostate_00.nii.gz", image)
    assert "prostate_00.nii.gz: 1 voxels are NaN or infinite" in error_of(task)


def test_missing_modality_in_volume(task: Path) -> None:
    write_nifti(task / "imagesTr" / "prostate_00.nii.gz", np.ones((24, 20, 5, 1), np.float32))
    assert "modality 1 (ADC) is missing" in error_of(task, modality="ADC")


def test_merge_must_cover_every_label(task: Path) -> None:
    assert "labels [2] are in no merge group" in error_of(task, merge={"PZ": [1]})


def test_fractional_labels(task: Path) -> None:
    label = np.zeros((24, 20, 5), np.float32)
    label[3, 3, 2] = 1.5  # a label map resampled with interpolation
    write_nifti(task / "labelsTr" / "prostate_00.nii.gz", label)
    assert "label values must be whole numbers, found [1.5]" in error_of(task)


def edit_json(task: Path, **changes) -> None:
    meta = json.loads((task / "dataset.json").read_text())
    meta.update(changes)
    (task / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"modality": [0]}, "'modality' must map non-negative integer keys to names"),
        ({"modality": {}}, "'modality' must map"),
        ({"modality": {"T2": "0"}}, "'modality' must map"),
        ({"labels": ["background", "x"]}, "'labels' must map"),
        ({"labels": {"-1": "x", "0": "background"}}, "'labels' must map non-negative"),
        ({"labels": {"1": "PZ", "2": "TZ"}}, "'labels' must declare 0, the background"),
        ({"training": [{"image": 3, "label": "x.nii.gz"}]}, "training entry 0 lacks an 'image'"),
    ],
)
def test_malformed_dataset_json(task: Path, changes: dict, message: str) -> None:
    edit_json(task, **changes)
    with pytest.raises(DataError, match=message) as info:
        DecathlonReader(task, size=32)
    assert info.value.path == str(task / "dataset.json")


def test_bad_size(task: Path) -> None:
    with pytest.raises(ValueError, match=r"size \(--size\) must be between 1 and"):
        DecathlonReader(task, size=0)


def test_empty_image(task: Path) -> None:
    image = np.zeros((24, 20, 5, 2), np.float32)
    image[..., 1] = 1  # ADC present, T2 blank
    write_nifti(task / "imagesTr" / "prostate_01.nii.gz", image)
    assert "prostate_01.nii.gz: modality T2 is zero everywhere" in error_of(task)
    DecathlonReader(task, size=32, modality="ADC").read(DecathlonReader(task).items()[1])
