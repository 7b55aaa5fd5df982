from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.data.files import lgg_subfolder_tree
from upseg.data import DataError, FolderReader, SliceStore, prepare


def png_pairs(root: Path, names: list[str], rgb: bool = False, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for name in names:  # a name may hold a sub-folder: P1/a.png
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).parent.mkdir(parents=True, exist_ok=True)
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


CS, DU, HT = "TCGA_CS_4941_19960909", "TCGA_DU_5849_19950405", "TCGA_HT_7692_19960724"


def expected_image(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (C, H, W), each channel z-scored: what the reader makes at size H."""
    channels = np.moveaxis(image, -1, 0).astype(np.float64)
    mean = channels.mean(axis=(1, 2), keepdims=True)
    return ((channels - mean) / channels.std(axis=(1, 2), keepdims=True)).astype(np.float32)


def check_store(
    store: SliceStore, written: dict[str, tuple[np.ndarray, np.ndarray]], counts: dict[str, int]
) -> None:
    """Patients, their slice counts, and every slice's image and mask against the files."""
    patients = store.manifest["patients"]
    assert {p["id"]: p["count"] for p in patients} == counts
    assert store.modalities == ["channel0", "channel1", "channel2"]
    for patient in patients:
        files = patient["geometry"]["files"]
        assert all(name.startswith(patient["id"] + "/") for name in files)
        for k, name in enumerate(files):
            image, mask = written[name]
            index = patient["start"] + k
            assert np.array_equal(store.masks[index], (mask == 255).astype(np.uint8))
            np.testing.assert_allclose(store.images[index], expected_image(image), atol=2e-2)
    assert sorted(n for p in patients for n in p["geometry"]["files"]) == sorted(written)


def test_lgg_per_patient_subfolders(tmp_path: Path) -> None:
    written = lgg_subfolder_tree(tmp_path / "kaggle_3m", {DU: 2, CS: 3, HT: 11})
    (tmp_path / "kaggle_3m" / "data.csv").write_text("Patient,RNASeqCluster\n")  # not an image
    reader = FolderReader(tmp_path / "kaggle_3m", size=32, layout="suffix")
    items = reader.items()
    assert [patient for patient, _ in items] == [CS, DU, HT]  # the sub-folders, sorted
    assert [len(pairs) for _, pairs in items] == [3, 2, 11]
    # natural order: the volume's slices in their place, as per-patient 3-D scores need
    assert [image.name for image, _ in items[2][1]] == [f"{HT}_{k}.tif" for k in range(1, 12)]
    store = prepare(reader, tmp_path / "s", progress=False)
    check_store(SliceStore(store), written, {CS: 3, DU: 2, HT: 11})


def test_lgg_subfolders_with_patient_regex(tmp_path: Path) -> None:
    """The regex decides, not the sub-folder: here one patient per institution."""
    lgg_subfolder_tree(tmp_path, {CS: 1, DU: 2, "TCGA_DU_6400_19830518": 3})
    reader = FolderReader(tmp_path, size=32, layout="suffix", patient_regex=r"^TCGA_([A-Z]+)_")
    items = reader.items()
    assert [(patient, len(pairs)) for patient, pairs in items] == [("CS", 1), ("DU", 5)]
    case = reader.read(items[1])
    assert case.geometry["files"] == [
        f"{DU}/{DU}_1.tif",
        f"{DU}/{DU}_2.tif",
        "TCGA_DU_6400_19830518/TCGA_DU_6400_19830518_1.tif",
        "TCGA_DU_6400_19830518/TCGA_DU_6400_19830518_2.tif",
        "TCGA_DU_6400_19830518/TCGA_DU_6400_19830518_3.tif",
    ]
    (tmp_path / "stray").mkdir()
    tiff_pairs(tmp_path / "stray", ["s1"])
    message = error_of(FolderReader(tmp_path, layout="suffix", patient_regex=r"^TCGA_([A-Z]+)_"))
    assert message == (
        f"{tmp_path / 'stray' / 's1.tif'}: file name does not match --patient-regex "
        "'^TCGA_([A-Z]+)_'"
    )


def test_same_stems_in_two_subfolders(tmp_path: Path) -> None:
    tiff_pairs(tmp_path / "a", ["s1", "s2"])
    tiff_pairs(tmp_path / "b", ["s1"])
    options = {"size": 32, "layout": "suffix", "values": {0: 0, 1: 1, 2: 2}}
    reader = FolderReader(tmp_path, **options)
    assert [(p, len(pairs)) for p, pairs in reader.items()] == [("a", 2), ("b", 1)]
    store = SliceStore(prepare(reader, tmp_path / "out" / "s", progress=False))
    files = [p["geometry"]["files"] for p in store.manifest["patients"]]
    assert files == [["a/s1.tif", "a/s2.tif"], ["b/s1.tif"]]
    # a regex that puts both s1 files into one patient keeps their names apart
    reader = FolderReader(tmp_path, patient_regex=r"^(s)\d", **options)
    case = reader.read(reader.items()[0])
    assert case.geometry["files"] == ["a/s1.tif", "a/s2.tif", "b/s1.tif"]  # in path order
    assert len(case.images) == 3


def test_same_stems_in_images_masks_subfolders(tmp_path: Path) -> None:
    png_pairs(tmp_path, ["P1/x.png", "P2/x.png", "top.png"])
    reader = FolderReader(tmp_path, size=32)
    items = reader.items()
    assert [(p, [i.relative_to(tmp_path).as_posix() for i, _ in pairs]) for p, pairs in items] == [
        ("P1", ["images/P1/x.png"]),
        ("P2", ["images/P2/x.png"]),
        ("top", ["images/top.png"]),  # a file directly in images/: its own patient, as before
    ]
    assert reader.read(items[1]).geometry["files"] == ["P2/x.png"]
    assert [m.relative_to(tmp_path).as_posix() for _, m in items[0][1]] == ["masks/P1/x.png"]


def test_top_level_files_beside_patient_subfolders(tmp_path: Path) -> None:
    tiff_pairs(tmp_path / "P1", ["s1"])
    tiff_pairs(tmp_path, ["s9"])
    reader = FolderReader(tmp_path, layout="suffix", values={0: 0, 1: 1, 2: 2})
    assert [(p, len(pairs)) for p, pairs in reader.items()] == [("P1", 1), ("s9", 1)]
    tiff_pairs(tmp_path, ["P1"])  # its stem names the patient of sub-folder P1/ as well
    with pytest.raises(DataError) as info:
        reader.items()
    assert info.value.path == str(tmp_path / "P1.tif")
    assert "patient id 'P1' (the file name) is also the sub-folder P1/" in info.value.problem


def test_nested_subfolders_and_hidden_ones(tmp_path: Path) -> None:
    tiff_pairs(tmp_path / "site1" / "P1", ["s1"])
    tiff_pairs(tmp_path / "site2" / "P1", ["s1"])
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "s1.tif").write_bytes(b"not a tiff")  # skipped
    reader = FolderReader(tmp_path, layout="suffix", values={0: 0, 1: 1, 2: 2})
    assert [p for p, _ in reader.items()] == ["site1/P1", "site2/P1"]


def test_empty_folder_tree(tmp_path: Path) -> None:
    (tmp_path / "P1" / "deeper").mkdir(parents=True)
    (tmp_path / "P2").mkdir()
    for layout in ("suffix", "images-masks"):
        (tmp_path / "images" / "P1").mkdir(parents=True, exist_ok=True)
        with pytest.raises(DataError) as info:
            FolderReader(tmp_path, layout=layout).items()
        assert info.value.path == str(tmp_path)
        assert "no image/mask pairs found" in info.value.problem


def test_missing_mask_in_a_subfolder(tmp_path: Path) -> None:
    lgg_subfolder_tree(tmp_path, {CS: 2})
    (tmp_path / CS / f"{CS}_2_mask.tif").unlink()
    message = error_of(FolderReader(tmp_path, layout="suffix"))
    assert message == f"{tmp_path / CS / f'{CS}_2.tif'}: no mask {CS}_2_mask.tif beside it"
    png_pairs(tmp_path / "pm", ["P1/a.png"])
    (tmp_path / "pm" / "masks" / "P1" / "a.png").unlink()
    message = error_of(FolderReader(tmp_path / "pm"))
    assert message.endswith(f"a.png: no mask for it in {tmp_path / 'pm' / 'masks' / 'P1'}")


def test_bad_image_in_a_subfolder_names_it(tmp_path: Path) -> None:
    lgg_subfolder_tree(tmp_path, {CS: 1, DU: 2})
    (tmp_path / DU / f"{DU}_2.tif").write_bytes(b"not a TIFF file")
    with pytest.raises(DataError) as info:
        prepare(FolderReader(tmp_path, layout="suffix"), tmp_path / "s", progress=False)
    assert info.value.path == str(tmp_path / DU / f"{DU}_2.tif")
    assert "cannot read the image" in info.value.problem


def test_flat_slices_come_in_natural_order(tmp_path: Path) -> None:
    names = [f"P1_{k}.png" for k in (10, 2, 1, 11, 3)]
    reader = FolderReader(png_pairs(tmp_path, names), size=32, patient_regex=r"^(P\d+)_\d+$")
    [(patient, pairs)] = reader.items()
    assert patient == "P1"
    assert [image.name for image, _ in pairs] == [f"P1_{k}.png" for k in (1, 2, 3, 10, 11)]
