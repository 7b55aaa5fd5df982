"""The slice store: a prepared dataset on disk, written once, memory-mapped for training.

DIR/manifest.json   class names, modalities, size R, patients (id, slice range, source,
                    geometry), the patient-level split, provenance
DIR/images.npy      (N, C, R, R) float16, z-scored intensities
DIR/masks.npy       (N, R, R) uint8 class indices
DIR/slices.npy      (N, 2) int32: patient number, slice position in the source
DIR/lowres/         images at input size r, computed once per (r, downsampling)

`prepare` writes everything into a hidden sibling folder and renames it into place at the
end: an interrupted run leaves no folder that looks complete, and a re-run starts afresh.
Opening a store checks manifest.json and every array against it (readable, shape, dtype,
mask values within the classes): damage is a DataError naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from upseg.data.case import Case
from upseg.data.errors import DataError
from upseg.data.resize import DOWNSAMPLE_MODES, downsample_image
from upseg.io import replacing_folder, temporary_sibling, write_json

STORE_VERSION = 1
DEFAULT_VAL_FRACTION = {"brats": 0.15, "decathlon": 1 / 3, "folder": 0.2, "phantom": 0.25}


class Reader(Protocol):
    format: str
    size: int
    class_names: tuple[str, ...]
    modalities: tuple[str, ...]
    options: dict

    def items(self) -> list: ...

    def read(self, item) -> Case: ...


def check_split_options(val_fraction: float, seed: int) -> None:
    """ValueError unless 0 <= val_fraction < 1 and seed is a non-negative integer."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction (--val-fraction) must be in [0, 1), got {val_fraction}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed (--seed) must be a non-negative integer, got {seed!r}")


def patient_split(patient_ids: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Deterministic patient-level split: a seeded shuffle of the sorted ids, the first
    round(val_fraction * n) (at least 1 when n >= 2) go to validation."""
    check_split_options(val_fraction, seed)
    ids = sorted(patient_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = sorted(ids[i] for i in order[:n_val])
    return {"train": [i for i in ids if i not in set(val)], "val": val}


def prepare(
    reader: Reader,
    out_dir: str | Path,
    val_fraction: float | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Read every item of `reader` into a slice store at `out_dir`; returns its path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise DataError(out_dir, "already exists; pass --force to replace it")
    if out_dir.exists() and not (out_dir / "manifest.json").is_file() and any(out_dir.iterdir()):
        raise DataError(out_dir, "exists and is not a slice store; --force replaces only stores")
    if val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION.get(reader.format, 0.2)
    check_split_options(val_fraction, seed)  # before reading anything
    items = reader.items()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    with replacing_folder(out_dir, partial) as work:
        patients, total, channels = _read_cases(reader, items, work / "cases", progress)
        if total == 0:
            raise DataError(getattr(reader, "root", out_dir), "no slices selected in any case")
        _join_cases(work, patients, total, channels, reader.size)
        split = patient_split([p["id"] for p in patients], val_fraction, seed)
        manifest = {
            "version": STORE_VERSION,
            "format": reader.format,
            "size": reader.size,
            "num_slices": total,
            "class_names": list(reader.class_names),
            "modalities": list(reader.modalities) or [f"channel{i}" for i in range(channels)],
            "patients": patients,
            "split": split,
            "split_rule": {"val_fraction": val_fraction, "seed": seed, "level": "patient"},
            "provenance": {
                "source": str(getattr(reader, "root", None)),
                "reader_options": reader.options,
                "command": command,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "upseg_version": _version(),
            },
        }
        write_json(work / "manifest.json", manifest)
    return out_dir


def _read_cases(
    reader: Reader, items: list, folder: Path, progress: bool
) -> tuple[list[dict], int, int]:
    """Each case's images and masks saved under `folder` (k_images.npy, k_masks.npy); returns
    the patients' manifest entries (with their slice indices), the slice count and the
    channel count."""
    folder.mkdir()
    patients, total, seen, first_shape = [], 0, set(), (0,)
    for k, item in enumerate(tqdm(items, desc=f"prepare {reader.format}", disable=not progress)):
        case = reader.read(item)
        shape = case.images.shape[1:]
        if k == 0:
            first_shape = shape
        elif shape != first_shape:
            raise DataError(
                case.source,
                f"slices of shape {shape} (channels, R, R) differ from the first case's "
                f"{first_shape}: every image needs the same channels",
            )
        if case.patient_id in seen:
            raise DataError(case.source, f"patient id {case.patient_id!r} occurs twice")
        seen.add(case.patient_id)
        np.save(folder / f"{k}_images.npy", case.images.astype(np.float16))
        np.save(folder / f"{k}_masks.npy", case.masks)
        patients.append(
            {
                "id": case.patient_id,
                "start": total,
                "count": len(case.slice_indices),
                "source": case.source,
                "slice_indices": case.slice_indices.tolist(),
                "geometry": case.geometry,
            }
        )
        total += len(case.slice_indices)
    return patients, total, first_shape[0]


def _join_cases(work: Path, patients: list[dict], total: int, channels: int, size: int) -> None:
    """The cases under work/cases joined into images.npy, masks.npy and slices.npy; the slice
    indices move from the patients' entries into slices.npy."""
    images = np.lib.format.open_memmap(
        work / "images.npy", "w+", np.float16, (total, channels, size, size)
    )
    masks = np.lib.format.open_memmap(work / "masks.npy", "w+", np.uint8, (total, size, size))
    slices = np.zeros((total, 2), dtype=np.int32)
    for k, patient in enumerate(patients):
        span = slice(patient["start"], patient["start"] + patient["count"])
        images[span] = np.load(work / "cases" / f"{k}_images.npy")
        masks[span] = np.load(work / "cases" / f"{k}_masks.npy")
        slices[span, 0] = k
        slices[span, 1] = patient.pop("slice_indices")
    images.flush()
    masks.flush()
    del images, masks
    np.save(work / "slices.npy", slices)
    shutil.rmtree(work / "cases")


def _version() -> str:
    from upseg import __version__

    return __version__


# manifest.json: key -> the JSON type it must hold
MANIFEST_KEYS = {
    "version": int,
    "format": str,
    "size": int,
    "num_slices": int,
    "class_names": list,
    "modalities": list,
    "patients": list,
    "split": dict,
    "provenance": dict,
}


def check_manifest(manifest: object, path: Path) -> None:
    """DataError naming manifest.json unless it holds every key a store needs, with
    consistent patients (contiguous slice ranges adding up to num_slices) and split."""
    if not isinstance(manifest, dict):
        raise DataError(path, "expected a JSON object at the top level")
    if manifest.get("version") != STORE_VERSION:
        raise DataError(
            path,
            f"store version {manifest.get('version')} is not {STORE_VERSION}; prepare it again",
        )
    for key, kind in MANIFEST_KEYS.items():
        if key not in manifest:
            raise DataError(path, f"key {key!r} is missing; the store is damaged, prepare it again")
        value = manifest[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(path, f"{key!r} should be a JSON {kind.__name__}, got {value!r:.60}")
    if manifest["size"] < 1 or manifest["num_slices"] < 1:
        raise DataError(path, "'size' and 'num_slices' must be positive")
    for key in ("class_names", "modalities"):
        names = manifest[key]
        if not names or not all(isinstance(name, str) for name in names):
            raise DataError(path, f"{key!r} should be a non-empty list of names")
    if len(manifest["class_names"]) > 256:
        raise DataError(path, "more than 256 classes do not fit the uint8 masks")
    total = 0
    for k, patient in enumerate(manifest["patients"]):
        if (
            not isinstance(patient, dict)
            or not isinstance(patient.get("id"), str)
            or any(
                not isinstance(patient.get(key), int) or isinstance(patient.get(key), bool)
                for key in ("start", "count")
            )
        ):
            raise DataError(
                path, f"patient entry {k} lacks a string 'id' or integer 'start'/'count'"
            )
        if patient["start"] != total or patient["count"] < 0:  # 0: no slice was selected
            raise DataError(path, f"patient {patient['id']!r}: slice range does not follow on")
        total += patient["count"]
    if not manifest["patients"] or total != manifest["num_slices"]:
        raise DataError(
            path, f"patients hold {total} slices, 'num_slices' says {manifest['num_slices']}"
        )
    ids = {p["id"] for p in manifest["patients"]}
    for part in ("train", "val"):
        members = manifest["split"].get(part)
        if not isinstance(members, list):
            raise DataError(path, f"'split' lacks its {part!r} list of patient ids")
        unknown = [m for m in members if m not in ids]
        if unknown:
            raise DataError(path, f"'split' {part!r} names unknown patients {unknown[:5]}")


def load_array(
    path: Path,
    shape: tuple[int, ...],
    dtype: type,
    mmap: bool = True,
    remedy: str = "prepare the store again",
) -> np.ndarray:
    """np.load (memory-mapped unless `mmap` is False) of a store array, checked against the
    shape and dtype the manifest implies; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(path, f"missing from the slice store; {remedy}")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        with path.open("rb") as file:
            magic = file.read(6)
        if magic != b"\x93NUMPY":
            problem = "not a NumPy .npy array file"
        else:
            problem = f"cannot be read, the file may be truncated or corrupt ({error})"
        raise DataError(path, f"{problem}; {remedy}") from None
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise DataError(
            path,
            f"holds {np.dtype(array.dtype).name} {array.shape}, the store's manifest.json "
            f"describes {np.dtype(dtype).name} {tuple(shape)} (a file from another store?); "
            f"{remedy}",
        )
    return array


class SliceStore:
    """Read access to a prepared store; arrays are memory-mapped, nothing is loaded eagerly."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise DataError(self.path, "not a slice store (no manifest.json); run upseg prepare")
        try:
            self.manifest = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(manifest, f"not valid JSON ({error})") from None
        check_manifest(self.manifest, manifest)
        n, size = self.manifest["num_slices"], self.manifest["size"]
        channels = len(self.manifest["modalities"])
        self.images = load_array(self.path / "images.npy", (n, channels, size, size), np.float16)
        self.masks = load_array(self.path / "masks.npy", (n, size, size), np.uint8)
        self.slices = load_array(self.path / "slices.npy", (n, 2), np.int32, mmap=False)
        self._check_slices()
        self._check_mask_labels()

    def _check_slices(self) -> None:
        """slices.npy's patient numbers must follow the manifest's patient ranges."""
        counts = [p["count"] for p in self.manifest["patients"]]
        expected = np.repeat(np.arange(len(counts)), counts)
        if not np.array_equal(self.slices[:, 0], expected):
            raise DataError(
                self.path / "slices.npy",
                "its patient numbers do not follow the manifest's patients; "
                "the store is damaged, prepare it again",
            )

    def _check_mask_labels(self) -> None:
        """Every mask value must be a class index; scanned in blocks of slices."""
        num_classes = len(self.manifest["class_names"])
        block = max(1, (64 << 20) // max(1, self.masks[0].size))  # about 64 MB at a time
        for start in range(0, len(self.masks), block):
            chunk = np.asarray(self.masks[start : start + block])
            if chunk.size and int(chunk.max()) >= num_classes:
                bad = np.flatnonzero((chunk >= num_classes).any(axis=(1, 2)))[0] + start
                values = np.unique(np.asarray(self.masks[bad]))
                raise DataError(
                    self.path / "masks.npy",
                    f"slice {bad} holds label values {values[values >= num_classes].tolist()}, "
                    f"outside the {num_classes} classes of manifest.json (0..{num_classes - 1})",
                )

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def modalities(self) -> list[str]:
        return list(self.manifest["modalities"])

    def __len__(self) -> int:
        return len(self.masks)

    def preprocessing(self) -> dict:
        """What a model trained on this store needs to segment new files and write their
        masks back: format, size R, modalities, class names, the reader's options, the slice
        transform ('pad', 'stretch' or 'none') and label_values, class index (str) -> the
        value written for it (None for the phantom, which has no files). Image folders write
        the largest pixel value that maps to a class (255 for 0/255 binary masks)."""
        geometry = self.manifest["patients"][0].get("geometry", {})
        options = dict(self.manifest["provenance"].get("reader_options") or {})
        options.pop("skipped_folders", None)
        label_values = geometry.get("label_values")
        if self.manifest["format"] == "folder" and "values" in options:
            label_values = {}
            for value, index in sorted((int(v), c) for v, c in options["values"].items()):
                label_values[str(index)] = value  # ascending: the largest value wins
        return {
            "format": self.manifest["format"],
            "size": self.size,
            "modalities": self.modalities,
            "class_names": self.class_names,
            "options": options,
            "transform": geometry.get("transform"),
            "label_values": label_values,
        }

    def patient_ids(self, split: str = "all") -> list[str]:
        if split == "all":
            return [p["id"] for p in self.manifest["patients"]]
        if split not in self.manifest["split"]:
            raise ValueError(f"unknown split {split!r}; choose train, val or all")
        return list(self.manifest["split"][split])

    def indices(self, split: str = "all", patients: list[str] | None = None) -> np.ndarray:
        """Slice numbers of a split (or of the given patients), in store order."""
        wanted = set(self.patient_ids(split) if patients is None else patients)
        numbers = [k for k, p in enumerate(self.manifest["patients"]) if p["id"] in wanted]
        return np.flatnonzero(np.isin(self.slices[:, 0], numbers))

    def lowres_images(self, size: int, mode: str = "area", progress: bool = False) -> np.ndarray:
        """(N, C, size, size) inputs, memory-mapped: computed once per (size, mode) and cached
        under lowres/ as float32 (in memory only when the store is read-only). At size R
        this is the store's own float16 images."""
        if mode not in DOWNSAMPLE_MODES:
            raise ValueError(f"unknown downsampling {mode!r}; choose one of {DOWNSAMPLE_MODES}")
        if size < 1 or self.size % size:
            raise ValueError(f"input size {size} does not divide the store's size {self.size}")
        if size == self.size:
            return self.images
        cache = self.path / "lowres" / f"images_r{size}_{mode}.npy"
        shape = (len(self), self.images.shape[1], size, size)
        if cache.is_file():
            return load_array(cache, shape, np.float32, remedy="delete it to have it rebuilt")
        tmp = temporary_sibling(cache)
        try:
            cache.parent.mkdir(exist_ok=True)
            out = np.lib.format.open_memmap(tmp, "w+", np.float32, shape)
        except OSError:  # a read-only store still works, without the cache
            tmp, out = None, np.empty(shape, dtype=np.float32)
        chunk = 64
        for start in tqdm(
            range(0, len(self), chunk), desc=f"inputs at {size} ({mode})", disable=not progress
        ):
            block = torch.from_numpy(np.asarray(self.images[start : start + chunk], np.float32))
            out[start : start + chunk] = downsample_image(block, size, mode).numpy()
        if tmp is None:
            return out
        out.flush()
        del out
        tmp.replace(cache)
        return np.load(cache, mmap_mode="r")
