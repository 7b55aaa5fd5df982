"""Medical Segmentation Decathlon tasks, driven by their dataset.json.

Images are imagesTr/*.nii.gz, 3-D or 4-D with the modality on the last axis; labels
labelsTr/*.nii.gz. One modality is chosen by name (default: the first, T2 for Task05), z-scored
per volume, and every axial slice is stretched to R x R (bilinear for images, nearest for
labels), as the paper prepared Task05. A merge map joins labels into classes; Task05
defaults to one 'prostate' class (PZ + TZ).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from upseg.data.case import Case
from upseg.data.errors import DataError
from upseg.data.volume import check_size, load_nifti, map_labels, stretch, zscore

# dataset.json "name" (lower case) -> default merge of label values into named classes
DEFAULT_MERGES: dict[str, dict[str, list[int]]] = {"prostate": {"prostate": [1, 2]}}
SLICE_MODES = ("all", "foreground")
EXAMPLES = {"modality": '{"0": "T2"}', "labels": '{"0": "background", "1": "tumour"}'}


def _parse_merge(
    labels: dict[int, str], merge: dict[str, list[int]] | None, path: Path
) -> tuple[dict[int, int], tuple[str, ...]]:
    """Label value -> class index, and the class names (background first)."""
    if not merge:
        values = sorted(labels)
        return {v: i for i, v in enumerate(values)}, tuple(labels[v] for v in values)
    names = ["background"]
    mapping = {0: 0}
    for name, members in merge.items():
        if name != "background" and name not in names:
            names.append(name)
        for value in members:
            if value not in labels:
                raise DataError(path, f"merge group {name!r} names label {value}, not declared")
            mapping[value] = names.index(name) if name != "background" else 0
    missing = sorted(v for v in labels if v not in mapping)
    if missing:
        raise DataError(
            path,
            f"labels {missing} are in no merge group; add them to one (or to 'background')",
        )
    return mapping, tuple(names)


def select_modality(image: np.ndarray, index: int, name: str, path: Path) -> np.ndarray:
    """A 4-D image (X, Y, Z, modalities) -> modality `index` (X, Y, Z); a 3-D image is taken
    as modality 0. DataError when the modality is not there."""
    if image.ndim == 4:
        if index >= image.shape[3]:
            raise DataError(
                path, f"has {image.shape[3]} modalities, modality {index} ({name}) is missing"
            )
        return image[..., index]
    if image.ndim != 3 or index != 0:
        raise DataError(path, f"shape {image.shape} holds no modality {index} ({name})")
    return image


def image_slices(image: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    """(X, Y, Z) volume -> axial slices `keep` as (N, 1, size, size): z-scored over the whole
    volume, then stretched bilinearly."""
    normalised = zscore(image)
    return stretch(np.moveaxis(normalised[..., keep], -1, 0)[:, None], size, False)


class DecathlonReader:
    """Reads a Decathlon task folder (dataset.json, imagesTr/, labelsTr/)."""

    format = "decathlon"

    def __init__(
        self,
        root: str | Path,
        size: int = 320,
        modality: str | None = None,
        merge: dict[str, list[int]] | None = None,
        slices: str = "all",
    ) -> None:
        self.root = Path(root)
        self.size = check_size(size)
        if slices not in SLICE_MODES:
            raise ValueError(f"unknown slice selection {slices!r}; choose one of {SLICE_MODES}")
        self.slices = slices
        self.json_path = self.root / "dataset.json"
        meta = self._load_json()
        self.modality_names = {int(k): str(v) for k, v in meta["modality"].items()}
        if modality is None:
            self.modality_index = min(self.modality_names)
        else:
            by_name = {v.lower(): k for k, v in self.modality_names.items()}
            if modality.lower() not in by_name:
                raise DataError(
                    self.json_path,
                    f"modality {modality!r} not declared; it has "
                    f"{sorted(self.modality_names.values())}",
                )
            self.modality_index = by_name[modality.lower()]
        self.modalities = (self.modality_names[self.modality_index],)
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
        if merge is None:
            merge = DEFAULT_MERGES.get(str(meta.get("name", "")).lower())
        self.label_map, self.class_names = _parse_merge(labels, merge, self.json_path)
        self.entries = meta["training"]
        self.options = {
            "modality": self.modalities[0],
            "modality_index": self.modality_index,  # its position on a 4-D image's last axis
            "merge": merge,
            "slices": slices,
            "task": meta.get("name"),
        }

    def _load_json(self) -> dict:
        if not self.json_path.is_file():
            raise DataError(self.root, "no dataset.json here: is this a Decathlon task folder?")
        try:
            meta = json.loads(self.json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(self.json_path, f"not valid JSON ({error})") from None
        if not isinstance(meta, dict):
            raise DataError(self.json_path, "expected a JSON object at the top level")
        for key in ("training", "modality", "labels"):
            if key not in meta:
                raise DataError(self.json_path, f"key {key!r} is missing")
        entries = meta["training"]
        if not isinstance(entries, list) or not entries:
            raise DataError(self.json_path, "'training' lists no cases")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or any(
                not isinstance(entry.get(key), str) for key in ("image", "label")
            ):
                raise DataError(
                    self.json_path, f"training entry {i} lacks an 'image' or 'label' path"
                )
        for key in ("modality", "labels"):
            table = meta[key]
            try:
                valid = isinstance(table, dict) and bool(table) and all(int(k) >= 0 for k in table)
            except ValueError:
                valid = False
            if not valid:
                raise DataError(
                    self.json_path,
                    f"{key!r} must map non-negative integer keys to names, like "
                    f"{EXAMPLES[key]}; got {json.dumps(table)[:60]}",
                )
        if "0" not in {str(int(k)) for k in meta["labels"]}:
            raise DataError(self.json_path, "'labels' must declare 0, the background")
        if len(meta["labels"]) > 256:
            raise DataError(self.json_path, "more than 256 labels do not fit the uint8 masks")
        return meta

    def items(self) -> list[dict]:
        return self.entries

    def read(self, entry: dict) -> Case:
        image_path = self.root / entry["image"]
        label_path = self.root / entry["label"]
        image, affine, spacing = load_nifti(image_path)
        labels = load_nifti(label_path)[0]
        image = select_modality(image, self.modality_index, self.modalities[0], image_path)
        if not image.any():
            raise DataError(image_path, f"modality {self.modalities[0]} is zero everywhere")
        if labels.shape != image.shape:
            raise DataError(
                label_path, f"shape {labels.shape} differs from the image's {image.shape}"
            )
        classes = map_labels(labels, self.label_map, label_path)
        if self.slices == "foreground":
            keep = np.flatnonzero(classes.any(axis=(0, 1)))
        else:
            keep = np.arange(image.shape[2])
        images = image_slices(image, keep, self.size)
        masks = stretch(np.moveaxis(classes[..., keep], -1, 0), self.size, True)
        name = Path(entry["image"]).name
        for extension in (".nii.gz", ".nii"):
            name = name.removesuffix(extension)
        return Case(
            patient_id=name,
            images=np.ascontiguousarray(images, dtype=np.float32),
            masks=np.ascontiguousarray(masks, dtype=np.uint8),
            slice_indices=keep.astype(np.int32),
            source=str(image_path),
            geometry={
                "shape": list(labels.shape),
                "affine": affine.tolist(),
                "spacing": list(spacing[:3]),
                "transform": "stretch",
                # class -> the source label value it is written back as (a merge's smallest)
                "label_values": {
                    str(c): min(v for v, k in self.label_map.items() if k == c)
                    for c in range(len(self.class_names))
                },
            },
        )
