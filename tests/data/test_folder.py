from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from upseg.data import DataError, FolderReader, prepare


def png_pairs(root: Path, names: list[str], rgb: bool = False, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        shape = (*size, 3) if rgb else size
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "images" / name)
        mask = np.zeros(size, np.uint8)
        mask[10:20, 5:15] = 255
        Image.fromarray(mask).save(root / "masks" / name)
    return root


def tiff_pairs(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        tifffile.imwrite(root / f"{name}.tif", rng.normal(size=(32, 32, 2)).astype(np.float32))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:8, 4:8] = 1
        mask[20:24, 20:24] = 2
        tifffile.imwrite(root / f"{name}_mask.tif", mask)
    return root


def test_png_images_and_masks(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["P01_a.png", "P01_b.png", "P02_a.png"], rgb=True)
    reader = FolderReader(tmp_path, size=64, patient_regex=r"^(P\d+)_")
    items = reader.items()
    assert [patient for patient, _ in items] == ["P01", "P02"]
    case = reader.read(items[0])
    assert case.images.shape == (2, 3, 64, 64)
    assert reader.modalities == ("channel0", "channel1", "channel2")
    assert reader.class_names == ("background", "foreground")
    assert set(np.unique(case.masks)) == {0, 1}
    assert case.images[0, 0].mean() == pytest.approx(0, abs=0.05)


def test_tiff_suffix_layout_multichannel(tmp_path: Path) -> None:
    tiff_pairs(tmp_path, ["s1", "s2"])
    reader = FolderReader(
        tmp_path,
        size=64,
        layout="suffix",
        values={0: 0, 1: 1, 2: 2},
        class_names=["background", "cyst", "lesion"],
    )
    items = reader.items()
    assert [patient for patient, _ in items] == ["s1", "s2"]  # each file its own patient
    case = reader.read(items[1])
    assert case.images.shape == (1, 2, 64, 64)
    assert set(np.unique(case.masks)) == {0, 1, 2}
    assert int((case.masks == 2).sum()) == 8 * 8  # 4x4 block at 32 -> 8x8 at 64


def error_of(reader: FolderReader) -> str:
    with pytest.raises(DataError) as info:
        for item in reader.items():
            reader.read(item)
    return str(info.value)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert "no image/mask pairs found" in error_of(FolderReader(tmp_path))
    assert "no images/ sub-folder" in error_of(FolderReader(tmp_path / "images"))


def test_mask_value_outside_the_map(tmp_path: Path) -> None:
    tiff_pairs(tmp_path, ["s1"])
    message = error_of(FolderReader(tmp_path, layout="suffix"))
    assert "s1_mask.tif: label values [2] are outside the declared set [0, 1, 255]" in message


def test_mask_shape_mismatch(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["a.png"])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "a.png")
    assert "a.png: mask shape (10, 10) differs" in error_of(FolderReader(tmp_path))


def test_missing_mask(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["a.png", "b.png"])
    (tmp_path / "masks" / "b.png").unlink()
    assert "b.png: no mask for it" in error_of(FolderReader(tmp_path))


def test_nan_in_tiff(tmp_path: Path) -> None:
    tiff_pairs(tmp_path, ["s1"])
    image = np.zeros((32, 32, 2), np.float32)
    image[0, 0, 1] = np.nan
    tifffile.imwrite(tmp_path / "s1.tif", image)
    assert "s1.tif: holds NaN" in error_of(FolderReader(tmp_path, layout="suffix"))


def test_unreadable_image(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["a.png"])
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG garbage")
    assert "a.png: cannot read the image" in error_of(FolderReader(tmp_path))


def test_patient_regex_must_match(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["P01_a.png", "other.png"])
    message = error_of(FolderReader(tmp_path, patient_regex=r"^(P\d+)_"))
    assert "other.png: file name does not match" in message


def test_channel_count_must_agree(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["P1_a.png"], rgb=True)
    png_pairs(tmp_path, ["P1_b.png"], rgb=False)
    message = error_of(FolderReader(tmp_path, patient_regex=r"^(P\d)_"))
    assert "P1_b.png: has 1 channels, other images have 3" in message


def test_palette_masks_give_their_indices(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["a.png"])
    mask = np.zeros((40, 30), np.uint8)
    mask[5:10, 5:10] = 2
    palette = Image.fromarray(mask, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "masks" / "a.png")
    reader = FolderReader(tmp_path, size=40, values={0: 0, 1: 1, 2: 2})
    case = reader.read(reader.items()[0])
    assert set(np.unique(case.masks)) == {0, 2}


def test_channel_mismatch_across_patients_names_the_file(tmp_path: Path) -> None:
    png_pairs(tmp_path / "src", ["P1_a.png"], rgb=False)
    png_pairs(tmp_path / "src", ["P2_a.png"], rgb=True)
    reader = FolderReader(tmp_path / "src", size=32, patient_regex=r"^(P\d)_")
    with pytest.raises(DataError) as info:
        prepare(reader, tmp_path / "s", progress=False)
    assert info.value.path == str(tmp_path / "src" / "images" / "P2_a.png")
    assert "has 3 channels, other images have 1" in info.value.problem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patient_regex": "("}, r"--patient-regex '\(' is not a valid regular expression"),
        ({"values": {0: 0, 255: -1}}, r"--values: class -1 \(for pixel 255\) is outside 0..255"),
        ({"values": {0: 0, 255: 300}}, r"--values: class 300 \(for pixel 255\)"),
        ({"values": {-1: 0, 255: 1}}, "--values: pixel value -1 must be a non-negative integer"),
        ({"values": {}}, "--values maps no pixel value"),
        ({"size": 0}, r"size \(--size\) must be between 1 and"),
        ({"size": 64.0}, r"size \(--size\) must be an integer"),
        ({"class_names": ["a", "b", "c"]}, "--class-names gives 3 names for the 2 classes"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        FolderReader(tmp_path, **options)
    assert not isinstance(info.value, DataError)  # a usage error (exit 2), not bad data


def test_patient_regex_with_an_empty_group(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["scan_a.png"])
    message = error_of(FolderReader(tmp_path, patient_regex=r"^(P\d*)?scan"))
    assert "scan_a.png: --patient-regex" in message and "empty patient id" in message
