"""BraTS reader: the real shared cases where present, and small files written here."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data.files import BRATS_SHAPE, brats_case, truncate, write_nifti
from upseg.data import BratsReader, DataError


def brain_statistics(images: np.ndarray) -> list[tuple[float, float]]:
    brain = (images != 0).any(axis=1)
    return [(float(c[brain].mean()), float(c[brain].std())) for c in images.transpose(1, 0, 2, 3)]


def test_real_cases(shared_data: Path) -> None:
    reader = BratsReader(shared_data / "brats2018")
    cases = reader.items()
    assert len(cases) == 20
    case = reader.read(cases[0])
    assert case.images.shape[1:] == (4, 256, 256)
    assert case.masks.shape == (len(case.slice_indices), 256, 256)
    assert reader.class_names == ("background", "NCR", "ED", "ET")
    assert set(np.unique(case.masks)) <= {0, 1, 2, 3}
    for mean, std in brain_statistics(case.images):
        assert mean == pytest.approx(0, abs=1e-3)
        assert std == pytest.approx(1, abs=1e-3)
    seg = np.asanyarray(nib.load(next(cases[0].glob("*_seg.nii.gz"))).dataobj)
    for label, cls in {1: 1, 2: 2, 4: 3}.items():  # every tumour voxel kept, label 4 -> class 3
        assert int((case.masks == cls).sum()) == int((seg == label).sum())
    assert case.masks[:, :8].max() == 0 and case.images[:, :, :, :8].max() == 0  # padding
    assert case.geometry["offsets"] == [8, 8]


def test_real_tumour_slices(shared_data: Path) -> None:
    reader = BratsReader(shared_data / "brats2018", slices="tumour", modalities=["flair"])
    case = reader.read(reader.items()[1])
    assert case.images.shape[1] == 1
    assert all(m.any() for m in case.masks)


def test_layouts_2021_naming_and_plain_nii(tmp_path: Path) -> None:
    brats_case(tmp_path, "BraTS2021_00001", extension=".nii")
    brats_case(tmp_path, "BraTS2021_00002")
    reader = BratsReader(tmp_path)
    assert [p.name for p in reader.items()] == ["BraTS2021_00001", "BraTS2021_00002"]
    case = reader.read(reader.items()[0])
    assert case.patient_id == "BraTS2021_00001"
    assert list(case.slice_indices) == list(range(1, BRATS_SHAPE[2]))  # slice 0 has no brain
    assert set(np.unique(case.masks)) == {0, 1, 2, 3}
    assert BratsReader(tmp_path / "BraTS2021_00002").items() == [tmp_path / "BraTS2021_00002"]


@pytest.fixture
def case(tmp_path: Path) -> Path:
    return brats_case(tmp_path, "Brats18_X_1")


def read_error(case: Path) -> str:
    with pytest.raises(DataError) as info:
        BratsReader(case.parent).read(case)
    return str(info.value)


def test_truncated_file(case: Path) -> None:
    truncate(case / "Brats18_X_1_t1ce.nii.gz")
    message = read_error(case)
    assert "Brats18_X_1_t1ce.nii.gz" in message and "truncated" in message


def test_missing_modality(case: Path) -> None:
    (case / "Brats18_X_1_t2.nii.gz").unlink()
    message = read_error(case)
    assert "Brats18_X_1" in message and "'t2' is missing" in message


def test_shape_mismatch(case: Path) -> None:
    write_nifti(case / "Brats18_X_1_flair.nii.gz", np.ones((240, 240, 5), dtype=np.int16))
    assert "Brats18_X_1_flair.nii.gz: shape (240, 240, 5) differs" in read_error(case)


def test_label_outside_the_set(case: Path) -> None:
    seg = np.zeros(BRATS_SHAPE, dtype=np.int16)
    seg[100, 100, 2] = 3
    write_nifti(case / "Brats18_X_1_seg.nii.gz", seg)
    assert "Brats18_X_1_seg.nii.gz: label values [3] are outside" in read_error(case)


def test_nan_voxels(case: Path) -> None:
    volume = np.ones(BRATS_SHAPE, dtype=np.float32)
    volume[5, 5, 1] = np.nan
    volume[6, 5, 1] = np.inf
    write_nifti(case / "Brats18_X_1_t1.nii.gz", volume)
    assert "Brats18_X_1_t1.nii.gz: 2 voxels are NaN or infinite" in read_error(case)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no BraTS cases found"):
        BratsReader(tmp_path).items()
    with pytest.raises(DataError, match="not found"):
        BratsReader(tmp_path / "nowhere").items()


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown modalities"):
        BratsReader(tmp_path, modalities=["dwi"])
    with pytest.raises(ValueError, match="below the 240"):
        BratsReader(tmp_path, size=128)
    with pytest.raises(ValueError, match="slice selection"):
        BratsReader(tmp_path, slices="some")


def test_real_case_copy_with_2021_name(shared_data: Path, tmp_path: Path) -> None:
    source = sorted((shared_data / "brats2018").iterdir())[0]
    target = tmp_path / "BraTS2021_00007"
    target.mkdir()
    for path in source.iterdir():
        suffix = path.name.removeprefix(source.name)
        shutil.copy(path, target / f"BraTS2021_00007{suffix}")
    case = BratsReader(tmp_path).read(target)
    assert case.images.shape[1:] == (4, 256, 256)


class FirstCases(BratsReader):
    def items(self) -> list[Path]:
        return super().items()[:4]


def test_real_store_split_is_patient_disjoint_and_stable(shared_data: Path, tmp_path: Path) -> None:
    from upseg.data import SliceStore, prepare

    reader = FirstCases(shared_data / "brats2018", slices="tumour")
    first = SliceStore(prepare(reader, tmp_path / "a", val_fraction=0.25, progress=False))
    second = SliceStore(prepare(reader, tmp_path / "b", val_fraction=0.25, progress=False))
    assert first.manifest["split"] == second.manifest["split"]
    train, val = first.manifest["split"]["train"], first.manifest["split"]["val"]
    assert len(val) == 1 and len(train) == 3 and not set(train) & set(val)
    assert first.images.shape[1:] == (4, 256, 256)
    assert first.class_names == ["background", "NCR", "ED", "ET"]
    patients_in_val = {int(k) for k in first.slices[first.indices("val"), 0]}
    assert [first.manifest["patients"][k]["id"] for k in patients_in_val] == val


def test_4d_segmentation_is_blamed_on_the_seg_file(case: Path) -> None:
    seg = nib.load(case / "Brats18_X_1_seg.nii.gz")
    write_nifti(case / "Brats18_X_1_seg.nii.gz", np.asarray(seg.dataobj)[..., None])
    message = read_error(case)
    assert message.startswith(str(case / "Brats18_X_1_seg.nii.gz"))
    assert "expected a 3-D volume, got shape (240, 240, 6, 1)" in message


def big_case(root: Path, tumour_at: tuple[int, int]) -> Path:
    """A case with 300 x 300 slices: brain in the middle, a small tumour at `tumour_at`."""
    shape = (300, 300, 4)
    brain = np.zeros(shape, np.int16)
    brain[10:290, 10:290] = 1  # reaches beyond the 256 x 256 frame
    seg = np.zeros(shape, np.int16)
    y, x = tumour_at
    seg[y - 3 : y + 3, x - 3 : x + 3, 1:3] = 2
    case = root / "Brats18_Big_1"
    rng = np.random.default_rng(0)
    for k, modality in enumerate(("flair", "t1", "t1ce", "t2")):
        volume = (rng.normal(300 + 100 * k, 40, shape) * (brain | (seg > 0))).astype(np.int16)
        write_nifti(case / f"Brats18_Big_1_{modality}.nii.gz", volume)
    write_nifti(case / "Brats18_Big_1_seg.nii.gz", seg)
    return case


def test_slices_larger_than_the_frame_are_cropped_with_a_warning(tmp_path: Path, capsys) -> None:
    case = big_case(tmp_path, tumour_at=(150, 150))
    read = BratsReader(tmp_path, size=256).read(case)
    warning = capsys.readouterr().err
    assert f"warning: {case}: slices of 300 x 300 are cropped to 256 x 256" in warning
    assert "brain voxels outside the frame are dropped (no labelled ones)" in warning
    assert "--size 320" in warning
    assert read.geometry["offsets"] == [-22, -22] and read.images.shape[-2:] == (256, 256)
    assert int((read.masks > 0).sum()) == 6 * 6 * 2  # the whole tumour is kept
    BratsReader(tmp_path, size=320).read(case)  # a frame that fits: no word
    assert capsys.readouterr().err == ""


def test_cropping_that_would_cut_tumour_is_refused(tmp_path: Path) -> None:
    case = big_case(tmp_path, tumour_at=(150, 12))  # within the 22 columns cropped on the left
    with pytest.raises(DataError) as info:
        BratsReader(tmp_path, size=256).read(case)
    assert info.value.path == str(case / "Brats18_Big_1_seg.nii.gz")
    assert "cropping would cut 72 labelled voxels; pass --size 320" in info.value.problem


def test_segmentation_of_another_shape_is_blamed_on_the_seg_file(case: Path) -> None:
    write_nifti(case / "Brats18_X_1_seg.nii.gz", np.zeros((240, 240, 5), np.int16))
    message = read_error(case)
    assert message.startswith(str(case / "Brats18_X_1_seg.nii.gz"))
    assert "shape (240, 240, 5) differs from the images' (240, 240, 6)" in message


def test_empty_modality(case: Path) -> None:
    write_nifti(case / "Brats18_X_1_t1ce.nii.gz", np.zeros(BRATS_SHAPE, np.int16))
    message = read_error(case)
    assert "Brats18_X_1_t1ce.nii.gz: every voxel is zero" in message


@pytest.mark.parametrize("size", [16, 8])  # padded, and cropped
def test_framed_slices_equal_the_whole_volume_z_scored_then_framed(size: int) -> None:
    from upseg.data.brats import brain_mask, framed_slices
    from upseg.data.volume import pad_or_crop, zscore

    rng = np.random.default_rng(0)
    volumes = [rng.integers(0, 3000, (12, 12, 7)).astype(np.int16) for _ in range(3)]
    for k, volume in enumerate(volumes):
        volume[:2] = 0  # outside the brain in every modality...
        volume[5, 5, :] = 0 if k else 17  # ...or in some only
    volumes.append(np.full((12, 12, 7), 5, dtype=np.int16))  # constant: std 0
    brain = brain_mask(volumes)
    np.testing.assert_array_equal(brain, np.logical_or.reduce([v != 0 for v in volumes]))
    keep = np.array([1, 4, 6])
    frames, offsets = framed_slices(volumes, brain, keep, size)
    whole = np.stack([zscore(v, brain) for v in volumes])  # (C, X, Y, Z), every slice
    expected, expected_offsets = pad_or_crop(np.moveaxis(whole[..., keep], -1, 0), size)
    assert frames.dtype == np.float32 and frames.shape == (3, 4, size, size)
    assert offsets == expected_offsets
    np.testing.assert_array_equal(frames, expected)  # bit for bit: stores stay as they were
    assert not frames[:, 3].any()  # (5 - 5) / 1 inside the brain, 0 outside
