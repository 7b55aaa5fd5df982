"""2-D image folders: image/mask pairs as PNG or TIFF.

Layouts: 'images-masks' (images/X.png + masks/X.png) or 'suffix' (X.tif + X_mask.tif, as
the Kaggle LGG set kaggle_3m ships them). Sub-folders are searched too (hidden ones, named
'.*', are skipped): images/P/X.png pairs with masks/P/X.png, P/X.tif with P/X_mask.tif.
Images may have several channels (RGB PNG, multi-page or channel-last TIFF); each is z-scored
per image and channel. Masks map their pixel values to classes through `values`
(default {0: 0, 1: 1, 255: 1}: binary masks stored as 0/1 or 0/255). Every slice is
stretched to R x R (bilinear images, nearest masks).

Patients, so that splits stay patient-level: with a regex on the file stem, its first group
(or whole match) names the patient, wherever the file lies. Without one, a file in a
sub-folder belongs to the patient named by that sub-folder (its path below the search
folder, 'P' or 'site/P'), and a file directly in the search folder is a patient of its own,
named by its stem. Slices of a patient follow their paths in natural order (numbers compared
as numbers, so X_2 comes before X_10), which per-patient (3-D) scores rely on; the store
records each slice's path below the search folder.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from upseg.data.case import Case
from upseg.data.errors import DataError
from upseg.data.volume import check_size, map_labels, stretch, zscore

EXTENSIONS = (".png", ".tif", ".tiff")
LAYOUTS = ("images-masks", "suffix")
DEFAULT_VALUES = {0: 0, 1: 1, 255: 1}


def read_image_file(path: Path, labels: bool = False) -> np.ndarray:
    """PNG or TIFF -> (H, W) or (H, W, C) / (C, H, W) array; DataError if unreadable.
    With `labels`, a palette PNG gives its palette indices (the class values), not colours."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as image:
            if labels and image.mode == "P":
                return np.asarray(image)
            if image.mode in ("P", "RGBA", "LA"):
                image = image.convert("RGB" if image.mode != "LA" else "L")
            return np.asarray(image)
    except Exception as error:
        raise DataError(path, f"cannot read the image ({error})") from None


def natural_key(parts: tuple[str, ...]) -> list[tuple[int, int | str]]:
    """Sort key of path parts with runs of digits compared as numbers ('s2' < 's10')."""
    key: list[tuple[int, int | str]] = []
    for part in parts:
        for chunk in re.findall(r"\d+|\D+", part):
            key.append((0, int(chunk)) if chunk.isdigit() else (1, chunk))
        key.append((2, ""))  # ends a part, so 'a/b' sorts beside 'a/c', not after 'a0'
    return key


def image_files(top: Path) -> list[Path]:
    """PNG/TIFF files in `top` and its sub-folders, in natural order of their path below `top`.
    Hidden sub-folders ('.*') are skipped; linked folders are followed, each real folder
    listed once (so a link loop ends). DataError naming a folder that cannot be listed."""
    found: list[Path] = []
    seen: set[Path] = set()

    def visit(folder: Path) -> None:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(folder.iterdir())
        except OSError as error:
            raise DataError(folder, f"cannot list the folder ({error})") from None
        for entry in entries:
            if entry.is_dir():
                if not entry.name.startswith("."):
                    visit(entry)
            elif entry.suffix.lower() in EXTENSIONS:
                found.append(entry)

    visit(top)
    return sorted(found, key=lambda path: natural_key(path.relative_to(top).parts))


def _channels_first(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        # channel axis: the short one (<= 8), first or last
        if array.shape[-1] <= 8 < array.shape[0]:
            return np.moveaxis(array, -1, 0)
        if array.shape[0] <= 8:
            return array
    raise DataError(path, f"image shape {array.shape} is not (H, W), (H, W, C) or (C, H, W)")


def load_image(path: Path) -> np.ndarray:
    """An image file -> (C, H, W) float32; DataError if unreadable or not finite."""
    image = _channels_first(read_image_file(path), path).astype(np.float32)
    if not np.isfinite(image).all():
        raise DataError(path, "holds NaN or infinite pixels")
    return image


def check_values(values: dict[int, int]) -> dict[int, int]:
    """The mask pixel value -> class map, checked: pixel values >= 0, classes 0..255 (masks
    are stored as uint8). ValueError naming --values otherwise."""
    values = dict(values)
    if not values:
        raise ValueError("--values maps no pixel value to a class")
    for pixel, index in values.items():
        if isinstance(pixel, bool) or not isinstance(pixel, (int, np.integer)) or pixel < 0:
            raise ValueError(f"--values: pixel value {pixel!r} must be a non-negative integer")
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"--values: class {index!r} (for pixel {pixel}) must be an integer")
        if not 0 <= index <= 255:
            raise ValueError(
                f"--values: class {index} (for pixel {pixel}) is outside 0..255; "
                "classes are indices 0, 1, 2, ... stored as uint8"
            )
    return values


def compile_patient_regex(pattern: str) -> re.Pattern[str]:
    """ValueError naming --patient-regex when `pattern` is not a valid regular expression."""
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"--patient-regex {pattern!r} is not a valid regular expression ({error})"
        ) from None


def frame_image(image: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (C, size, size): each channel z-scored, then stretched bilinearly."""
    image = np.stack([zscore(channel) for channel in image])
    return stretch(image[None], size, False)[0]


class FolderReader:
    """Reads 2-D image/mask pairs, grouped into patients."""

    format = "folder"

    def __init__(
        self,
        root: str | Path,
        size: int = 256,
        layout: str = "images-masks",
        values: dict[int, int] | None = None,
        class_names: tuple[str, ...] | list[str] | None = None,
        patient_regex: str | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
        self.root = Path(root)
        self.size = check_size(size)
        self.layout = layout
        self.values = check_values(DEFAULT_VALUES if values is None else values)
        num_classes = max(self.values.values()) + 1
        if class_names is None:
            class_names = (
                ("background", "foreground")
                if num_classes == 2
                else tuple(["background"] + [f"class{i}" for i in range(1, num_classes)])
            )
        if len(class_names) != num_classes:
            raise ValueError(
                f"--class-names gives {len(class_names)} names for the {num_classes} classes "
                f"of --values {','.join(f'{k}:{v}' for k, v in self.values.items())} "
                f"(classes 0..{num_classes - 1})"
            )
        self.class_names = tuple(class_names)
        self.patient_regex = compile_patient_regex(patient_regex) if patient_regex else None
        self.modalities: tuple[str, ...] = ()
        self.channels: int | None = None  # of the first image read; every image must agree
        self.options = {
            "layout": layout,
            "values": {str(k): v for k, v in self.values.items()},
            "patient_regex": patient_regex,
        }

    @property
    def search_root(self) -> Path:
        """The folder whose sub-folders name patients: images/ or the root itself."""
        return self.root / "images" if self.layout == "images-masks" else self.root

    def _pairs(self) -> list[tuple[Path, Path]]:
        if not self.root.is_dir():
            raise DataError(self.root, "image folder not found")
        pairs = []
        if self.layout == "images-masks":
            image_dir, mask_dir = self.root / "images", self.root / "masks"
            if not image_dir.is_dir():
                raise DataError(self.root, "no images/ sub-folder (layout images-masks)")
            for image in image_files(image_dir):
                folder = mask_dir / image.parent.relative_to(image_dir)
                candidates = [folder / f"{image.stem}{ext}" for ext in EXTENSIONS]
                mask = next((c for c in candidates if c.is_file()), None)
                if mask is None:
                    raise DataError(image, f"no mask for it in {folder}")
                pairs.append((image, mask))
        else:
            for image in image_files(self.root):
                if not image.stem.endswith("_mask"):
                    mask = image.with_name(f"{image.stem}_mask{image.suffix}")
                    if not mask.is_file():
                        raise DataError(image, f"no mask {mask.name} beside it")
                    pairs.append((image, mask))
        if not pairs:
            raise DataError(
                self.root,
                f"no image/mask pairs found ({', '.join(EXTENSIONS)} files, layout "
                f"{self.layout!r}, sub-folders included)",
            )
        return pairs

    def _subfolder(self, image: Path) -> str | None:
        """The sub-folder below search_root holding `image` ('P', 'site/P'); None at the top."""
        folder = image.parent.relative_to(self.search_root)
        return folder.as_posix() if folder.parts else None

    def _patient(self, image: Path) -> str:
        if self.patient_regex is None:
            return self._subfolder(image) or image.stem
        match = self.patient_regex.search(image.stem)
        if match is None:
            raise DataError(
                image, f"file name does not match --patient-regex {self.patient_regex.pattern!r}"
            )
        patient = match.group(1) if match.groups() else match.group(0)
        if not patient:
            raise DataError(
                image,
                f"--patient-regex {self.patient_regex.pattern!r} gives an empty patient id "
                "(its first group matched nothing)",
            )
        return patient

    def items(self) -> list[tuple[str, list[tuple[Path, Path]]]]:
        """(patient id, its (image, mask) pairs in path order), sorted by patient id."""
        groups: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
        top_level: dict[str, Path] = {}  # without a regex: patients named by a file's stem
        for image, mask in self._pairs():
            patient = self._patient(image)
            if self.patient_regex is None and self._subfolder(image) is None:
                top_level.setdefault(patient, image)
            groups[patient].append((image, mask))
        for patient, image in top_level.items():
            if any(self._subfolder(other) for other, _ in groups[patient]):
                raise DataError(
                    image,
                    f"its patient id {patient!r} (the file name) is also the sub-folder "
                    f"{patient}/ of another patient; move the file into a sub-folder or "
                    "pass --patient-regex",
                )
        return sorted(groups.items())

    def read(self, item: tuple[str, list[tuple[Path, Path]]]) -> Case:
        patient, pairs = item
        images, masks, shapes = [], [], []
        for image_path, mask_path in pairs:
            image = load_image(image_path)
            mask = read_image_file(mask_path, labels=True)
            if mask.ndim == 3 and (mask == mask[..., :1]).all():
                mask = mask[..., 0]
            if mask.ndim != 2:
                raise DataError(mask_path, f"mask shape {mask.shape} is not a 2-D label image")
            if mask.shape != image.shape[1:]:
                raise DataError(
                    mask_path, f"mask shape {mask.shape} differs from the image's {image.shape[1:]}"
                )
            if self.channels is None:
                self.channels = image.shape[0]
            elif image.shape[0] != self.channels:
                raise DataError(
                    image_path,
                    f"has {image.shape[0]} channels, other images have {self.channels}: "
                    "every image needs the same channels",
                )
            images.append(frame_image(image, self.size))
            shapes.append(list(mask.shape))
            classes = map_labels(mask, self.values, mask_path)
            masks.append(stretch(classes[None], self.size, True)[0])
        if not self.modalities:
            self.modalities = tuple(f"channel{i}" for i in range(self.channels or 0))
        return Case(
            patient_id=patient,
            images=np.stack(images).astype(np.float32),
            masks=np.stack(masks).astype(np.uint8),
            slice_indices=np.arange(len(pairs), dtype=np.int32),
            source=str(pairs[0][0].parent),
            geometry={
                "transform": "stretch",
                "files": [p.relative_to(self.search_root).as_posix() for p, _ in pairs],
                "shapes": shapes,
            },
        )
