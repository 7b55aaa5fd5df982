from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upseg.data import Case, DataError, LowResPairs, PhantomReader, SliceStore, prepare
from upseg.data.resize import downsample_image, downsample_labels
from upseg.data.store import patient_split


def small_phantom(**kwargs) -> PhantomReader:
    return PhantomReader(
        size=64, num_patients=kwargs.pop("num_patients", 4), slices_per_patient=3, **kwargs
    )


def test_prepare_writes_a_store(tmp_path: Path) -> None:
    store = SliceStore(prepare(small_phantom(), tmp_path / "s", progress=False))
    assert len(store) == 12
    assert store.images.shape == (12, 4, 64, 64) and store.images.dtype == np.float16
    assert store.masks.dtype == np.uint8
    manifest = store.manifest
    assert manifest["class_names"] == ["background", "NCR", "ED", "ET"]
    assert manifest["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert [p["count"] for p in manifest["patients"]] == [3, 3, 3, 3]
    assert manifest["provenance"]["reader_options"]["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no partial folder left
    case = PhantomReader(size=64, num_patients=4, slices_per_patient=3).read(2)
    np.testing.assert_array_equal(store.masks[6:9], case.masks)
    np.testing.assert_allclose(store.images[6:9], case.images, atol=2e-3, rtol=1e-3)


def test_split_is_patient_level_and_deterministic() -> None:
    ids = [f"p{i:02d}" for i in range(20)]
    split = patient_split(ids, 0.15, seed=0)
    assert len(split["val"]) == 3 and not set(split["val"]) & set(split["train"])
    assert sorted(split["train"] + split["val"]) == ids
    assert patient_split(list(reversed(ids)), 0.15, seed=0) == split
    assert patient_split(ids, 0.15, seed=1) != split


def test_split_indices_are_disjoint(tmp_path: Path) -> None:
    store = SliceStore(prepare(small_phantom(), tmp_path / "s", progress=False))
    train, val = store.indices("train"), store.indices("val")
    assert len(train) + len(val) == len(store) and not set(train) & set(val)
    patients_of = {int(p) for p in store.slices[val, 0]}
    assert len(patients_of) == 1


class FailingReader(PhantomReader):
    """Interrupted half-way, as by Ctrl-C."""

    def read(self, patient: int) -> Case:
        if patient == 2:
            raise KeyboardInterrupt
        return super().read(patient)


def test_interrupted_prepare_leaves_nothing_and_rerun_works(tmp_path: Path) -> None:
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        prepare(FailingReader(size=64, num_patients=4, slices_per_patient=3), out, progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".s.partial-99999").mkdir()  # as a SIGKILLed run would leave it
    prepare(small_phantom(), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_existing_store_is_kept(tmp_path: Path) -> None:
    out = prepare(small_phantom(), tmp_path / "s", progress=False)
    before = (out / "manifest.json").read_text()
    with pytest.raises(DataError, match="already exists; pass --force"):
        prepare(small_phantom(seed=5), out, progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare(
            FailingReader(size=64, num_patients=4, slices_per_patient=3),
            out,
            force=True,
            progress=False,
        )
    assert (out / "manifest.json").read_text() == before
    prepare(small_phantom(seed=5), out, force=True, progress=False)
    assert (
        json.loads((out / "manifest.json").read_text())["provenance"]["reader_options"]["seed"] == 5
    )


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a slice store"):
        SliceStore(tmp_path)


@pytest.mark.parametrize("mode", ["area", "bilinear", "nearest"])
def test_lowres_inputs_are_cached_once(tmp_path: Path, mode: str) -> None:
    store = SliceStore(prepare(small_phantom(), tmp_path / "s", progress=False))
    first = store.lowres_images(16, mode)
    cache = tmp_path / "s" / "lowres" / f"images_r16_{mode}.npy"
    assert cache.is_file()
    expected = downsample_image(torch.from_numpy(store.images[:].astype(np.float32)), 16, mode)
    np.testing.assert_allclose(first, expected.numpy(), atol=1e-6)
    np.save(cache, np.full_like(first, 7.0))  # a second call must read the cache, not recompute
    assert (store.lowres_images(16, mode) == 7.0).all()


class OneHotReader(PhantomReader):
    """Images are the one-hot masks, so the input must always match the (flipped) mask."""

    def read(self, patient: int) -> Case:
        case = super().read(patient)
        case.images = F.one_hot(torch.from_numpy(case.masks).long(), 4).permute(0, 3, 1, 2)
        case.images = case.images.float().numpy()
        return case


def test_dataset_pairs_and_flips(tmp_path: Path) -> None:
    store = prepare(
        OneHotReader(size=64, num_patients=3, slices_per_patient=4), tmp_path / "s", progress=False
    )
    dataset = LowResPairs(store, 16, split="all", flips=True, lowres_mask=True)
    assert len(dataset) == 12
    flipped = 0
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["image"].shape == (4, 16, 16) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.uint8
        one_hot = F.one_hot(item["mask"].long(), 4).permute(2, 0, 1).float()[None]
        torch.testing.assert_close(item["image"], F.avg_pool2d(one_hot, 4)[0], atol=1e-3, rtol=0)
        assert torch.equal(item["mask_lowres"], downsample_labels(item["mask"], 16))
        original = torch.from_numpy(SliceStore(store).masks[item["index"]].copy())
        flipped += not torch.equal(item["mask"], original)
    assert flipped > 0


def test_dataset_split_and_bad_size(tmp_path: Path) -> None:
    store = SliceStore(prepare(small_phantom(), tmp_path / "s", progress=False))
    assert len(LowResPairs(store, 32, split="val")) == len(store.indices("val"))
    with pytest.raises(ValueError, match="does not divide"):
        LowResPairs(store, 24)
    with pytest.raises(ValueError, match="unknown split"):
        LowResPairs(store, 16, split="test")


def test_case_shapes_must_line_up() -> None:
    with pytest.raises(ValueError, match="do not line up"):
        Case(
            "p",
            np.zeros((5, 1, 8, 8), np.float32),
            np.zeros((4, 8, 8), np.uint8),
            np.arange(4),
            "src",
        )
    with pytest.raises(ValueError, match="do not line up"):
        Case(
            "p",
            np.zeros((4, 1, 8, 8), np.float32),
            np.zeros((4, 16, 16), np.uint8),
            np.arange(4),
            "src",
        )


class MixedChannels(PhantomReader):
    def read(self, patient: int) -> Case:
        case = super().read(patient)
        if patient == 1:
            case.images = case.images[:, :3]
            case.source = "second-patient-folder"
        return case


def test_channel_counts_must_agree_across_patients(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"second-patient-folder: slices of shape \(3, 64, 64\)"):
        prepare(
            MixedChannels(size=64, num_patients=3, slices_per_patient=2),
            tmp_path / "s",
            progress=False,
        )
    assert not (tmp_path / "s").exists()


def test_force_replaces_only_stores(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not a slice store"):
        prepare(small_phantom(), precious, force=True, progress=False)
    assert (precious / "thesis.txt").read_text() == "keep me"


class UnreadReader(PhantomReader):
    """Fails the test if prepare reads anything."""

    def items(self) -> list[int]:
        raise AssertionError("read before the options were checked")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_fraction": 1.0}, r"val_fraction \(--val-fraction\) must be in \[0, 1\), got 1.0"),
        ({"val_fraction": -0.1}, "--val-fraction"),
        ({"seed": -1}, r"seed \(--seed\) must be a non-negative integer, got -1"),
    ],
)
def test_split_options_are_checked_before_reading(
    tmp_path: Path, options: dict, message: str
) -> None:
    reader = UnreadReader(size=64, num_patients=4, slices_per_patient=3)
    with pytest.raises(ValueError, match=message):
        prepare(reader, tmp_path / "s", progress=False, **options)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return prepare(small_phantom(), tmp_path / "s", progress=False)


def edit_manifest(store: Path, change) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    change(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("split"), "key 'split' is missing"),
        (lambda m: m.pop("class_names"), "key 'class_names' is missing"),
        (lambda m: m.update(size="64"), "'size' should be a JSON int"),
        (lambda m: m["split"].pop("val"), "'split' lacks its 'val' list"),
        (lambda m: m["split"]["train"].append("ghost"), r"names unknown patients \['ghost'\]"),
        (lambda m: m.update(num_slices=11), "patients hold 12 slices, 'num_slices' says 11"),
        (lambda m: m["patients"][1].pop("id"), "patient entry 1 lacks a string 'id'"),
        (lambda m: m.update(class_names=[]), "'class_names' should be a non-empty list"),
    ],
)
def test_damaged_manifest_names_it(store_dir: Path, change, message: str) -> None:
    edit_manifest(store_dir, change)
    with pytest.raises(DataError, match=message) as info:
        SliceStore(store_dir)
    assert info.value.path == str(store_dir / "manifest.json")


def test_manifest_garbage_bytes(store_dir: Path) -> None:
    (store_dir / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=r"manifest\.json: not valid JSON"):
        SliceStore(store_dir)


def truncate_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def masks_of_another_store(store: Path) -> None:
    other = prepare(small_phantom(num_patients=3), store.parent / "other", progress=False)
    (store / "masks.npy").write_bytes((other / "masks.npy").read_bytes())


def label_outside_the_classes(store: Path) -> None:
    masks = np.load(store / "masks.npy")
    masks[7, 3, 3] = 9
    np.save(store / "masks.npy", masks)


@pytest.mark.parametrize(
    ("damage", "name", "message"),
    [
        (lambda s: truncate_file(s / "images.npy"), "images.npy", "truncated or corrupt"),
        (lambda s: (s / "images.npy").write_bytes(b"junk" * 500), "images.npy", "not a NumPy"),
        (lambda s: (s / "slices.npy").unlink(), "slices.npy", "missing from the slice store"),
        (lambda s: truncate_file(s / "slices.npy"), "slices.npy", "truncated or corrupt"),
        (masks_of_another_store, "masks.npy", r"holds uint8 \(9, 64, 64\), .* \(12, 64, 64\)"),
        (
            lambda s: np.save(s / "images.npy", np.zeros((12, 4, 64, 64), np.float32)),
            "images.npy",
            "holds float32 .* describes float16",
        ),
        (
            lambda s: np.save(s / "slices.npy", np.zeros((12, 2), np.int32)),
            "slices.npy",
            "patient numbers do not follow",
        ),
        (label_outside_the_classes, "masks.npy", r"slice 7 holds label values \[9\], outside"),
    ],
)
def test_damaged_arrays_name_the_file(store_dir: Path, damage, name: str, message: str) -> None:
    damage(store_dir)
    with pytest.raises(DataError, match=message) as info:
        SliceStore(store_dir)
    assert info.value.path == str(store_dir / name)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"junk" * 100, "not a NumPy .npy array file; delete it"),
        (np.zeros((3, 4, 16, 16), np.float32), r"holds float32 \(3, 4, 16, 16\)"),
    ],
)
def test_damaged_lowres_cache_names_it(store_dir: Path, content, message: str) -> None:
    cache = store_dir / "lowres" / "images_r16_area.npy"
    cache.parent.mkdir()
    if isinstance(content, bytes):
        cache.write_bytes(content)
    else:
        np.save(cache, content)
    with pytest.raises(DataError, match=message) as info:
        LowResPairs(store_dir, 16)
    assert info.value.path == str(cache)


def test_training_on_a_damaged_store_is_one_line_and_exit_1(store_dir: Path) -> None:
    from tests.helpers import run_cli

    edit_manifest(store_dir, lambda m: m.pop("split"))
    result = run_cli(
        "train", "--store", str(store_dir), "--out", str(store_dir.parent / "run"), "--quiet"
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {store_dir / 'manifest.json'}: key 'split' is missing; the store is damaged, "
        "prepare it again"
    )
    assert not (store_dir.parent / "run").exists()


class WithAnEmptyCase(PhantomReader):
    """The phantom plus a case none of whose slices is selected (say, no tumour under
    --slices tumour)."""

    def items(self) -> list:
        return [*super().items(), "empty"]

    def read(self, item) -> Case:
        if item != "empty":
            return super().read(item)
        case = super().read(super().items()[0])
        return Case(
            patient_id="empty",
            images=case.images[:0],
            masks=case.masks[:0],
            slice_indices=case.slice_indices[:0],
            source="empty",
            geometry=case.geometry,
        )


def test_a_case_without_selected_slices_still_opens(tmp_path: Path) -> None:
    store = SliceStore(prepare(WithAnEmptyCase(size=32, num_patients=3, slices_per_patient=2),
                               tmp_path / "s", progress=False))  # fmt: skip
    counts = {p["id"]: p["count"] for p in store.manifest["patients"]}
    assert counts["empty"] == 0 and sum(counts.values()) == len(store) == 6
