"""BraTS 2018-2021 training layouts: <case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz].

Labels 0, 1 (NCR/NET), 2 (ED), 4 (ET) become classes 0..3 (background, NCR, ED, ET).
Each modality is z-scored per volume over the brain (voxels where any loaded modality is
non-zero; 0 outside). Axial slices (last axis) are centred in an R x R frame by zero padding
(240 -> 256 adds 8 pixels on each side). Larger slices are cropped with a warning naming the
case, and refused (DataError) when cropping would cut away labelled voxels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from upseg.data.case import Case
from upseg.data.errors import DataError
from upseg.data.volume import check_size, load_nifti, map_labels, pad_or_crop, zscore_stats

MODALITIES = ("flair", "t1", "t1ce", "t2")
# Class indices of upseg's BraTS reader: 0 background, 1 NCR/NET, 2 ED, 3 ET.
BRATS_CLASSES = ("background", "NCR", "ED", "ET")
# the challenge's evaluation regions (whole tumour, tumour core, enhancing) as sets of classes
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
LABEL_TO_CLASS = {0: 0, 1: 1, 2: 2, 4: 3}
SLICE_MODES = ("brain", "tumour", "all")


def modality_file(case_dir: Path, suffix: str) -> Path | None:
    for extension in (".nii.gz", ".nii"):
        matches = sorted(case_dir.glob(f"*_{suffix}{extension}"))
        if matches:
            return matches[0]
    return None


def brain_mask(volumes: list[np.ndarray]) -> np.ndarray:
    """(X, Y, Z) voxels where any of the modality volumes is non-zero."""
    brain = volumes[0] != 0
    for volume in volumes[1:]:
        brain |= volume != 0
    return brain


def framed_slices(
    volumes: list[np.ndarray], brain: np.ndarray, keep: np.ndarray, size: int
) -> tuple[np.ndarray, list[int]]:
    """Axial slices `keep` of each modality, z-scored over the brain (statistics over the
    whole volume, 0 outside the brain) and centred in a size x size frame: (N, C, size, size)
    float32 and the [top, left] offsets of pad_or_crop. Only the kept slices are normalised,
    each modality straight into its place in the frame."""
    frames = np.zeros((len(keep), len(volumes), size, size), dtype=np.float32)
    inside = brain[..., keep]
    offsets: list[int] = []
    for channel, volume in enumerate(volumes):
        mean, divisor = zscore_stats(volume, brain)
        part = (volume[..., keep].astype(np.float32) - mean) / divisor
        part[~inside] = 0.0
        frames[:, channel], offsets = pad_or_crop(np.moveaxis(part, -1, 0), size)
    return frames, offsets


def check_volumes(
    volumes: list[np.ndarray], seg: np.ndarray, paths: list[Path], seg_path: Path
) -> None:
    """DataError naming the odd file out: a modality or the segmentation whose shape differs
    from the one most files of the case share (the segmentation's on a tie), or a modality
    that is zero everywhere (an empty export)."""
    shapes = [volume.shape for volume in volumes] + [seg.shape]
    common = max(set(shapes), key=lambda shape: (shapes.count(shape), shape == seg.shape))
    for volume, path in zip(volumes, paths, strict=True):
        if volume.shape != common:
            whose = "the segmentation's" if common == seg.shape else "the other modalities'"
            raise DataError(path, f"shape {volume.shape} differs from {whose} {common}")
    if seg.shape != common:
        raise DataError(seg_path, f"shape {seg.shape} differs from the images' {common}")
    for volume, path in zip(volumes, paths, strict=True):
        if not volume.any():
            raise DataError(path, "every voxel is zero: an empty image")


def outside_frame(volume: np.ndarray, size: int) -> int:
    """How many non-zero voxels of (X, Y, Z) `volume` fall outside the centred size x size
    frame of pad_or_crop."""
    inside = volume
    for axis in (0, 1):
        extent = volume.shape[axis]
        if extent > size:
            start = (extent - size) // 2
            inside = np.take(inside, np.arange(start, start + size), axis=axis)
    return int(np.count_nonzero(volume)) - int(np.count_nonzero(inside))


def check_crop(
    classes: np.ndarray, brain: np.ndarray, size: int, seg_path: Path, case: Path
) -> None:
    """Slices larger than the frame are cropped. A DataError naming the segmentation if that
    would cut away labelled (tumour) voxels; otherwise a warning naming the case."""
    height, width = classes.shape[:2]
    if height <= size and width <= size:
        return
    larger = -(-max(height, width) // 32) * 32
    lost = outside_frame(classes, size)
    if lost:
        raise DataError(
            seg_path,
            f"slices of {height} x {width} do not fit the {size} x {size} frame and cropping "
            f"would cut {lost} labelled voxels; pass --size {larger} (or any size >= "
            f"{max(height, width)}) to keep them",
        )
    dropped = outside_frame(brain, size)
    what = (
        f"{dropped} brain voxels outside the frame are dropped (no labelled ones)"
        if dropped
        else "only empty background lies outside the frame"
    )
    print(
        f"warning: {case}: slices of {height} x {width} are cropped to {size} x {size}; "
        f"{what}; pass --size {larger} to keep everything",
        file=sys.stderr,
    )


class BratsReader:
    """Reads one BraTS case folder per patient."""

    format = "brats"

    def __init__(
        self,
        root: str | Path,
        size: int = 256,
        modalities: tuple[str, ...] | list[str] = MODALITIES,
        slices: str = "brain",
    ) -> None:
        self.root = Path(root)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"unknown modalities {unknown}; choose from {MODALITIES}")
        if slices not in SLICE_MODES:
            raise ValueError(f"unknown slice selection {slices!r}; choose one of {SLICE_MODES}")
        size = check_size(size)
        if size < 240:
            raise ValueError(
                f"size {size} is below the 240 x 240 BraTS slices; use 256 (the slices are "
                "padded, never resampled) and let the input resolution r do the shrinking"
            )
        self.size = size
        self.modalities = tuple(modalities)
        self.slices = slices
        self.class_names = BRATS_CLASSES
        self.options = {"modalities": list(self.modalities), "slices": slices}

    def items(self) -> list[Path]:
        if not self.root.is_dir():
            raise DataError(self.root, "BraTS folder not found")
        if modality_file(self.root, "seg") is not None:
            return [self.root]
        folders = sorted(d for d in self.root.iterdir() if d.is_dir())
        cases = [d for d in folders if modality_file(d, "seg") is not None]
        skipped = [d.name for d in folders if d not in cases]
        if skipped:  # e.g. a misnamed segmentation file: say so instead of losing a patient
            print(
                f"warning: {self.root}: skipped {len(skipped)} folders without *_seg.nii[.gz]: "
                f"{', '.join(skipped[:10])}",
                file=sys.stderr,
            )
            self.options["skipped_folders"] = skipped
        if not cases:
            raise DataError(
                self.root,
                "no BraTS cases found (expected sub-folders <case>/ holding "
                "<case>_seg.nii.gz and <case>_{flair,t1,t1ce,t2}.nii.gz)",
            )
        return cases

    def read(self, case_dir: Path) -> Case:
        paths = {}
        for name in (*self.modalities, "seg"):
            path = modality_file(case_dir, name)
            if path is None:
                raise DataError(case_dir, f"modality {name!r} is missing (no *_{name}.nii.gz)")
            paths[name] = path
        seg, affine, spacing = load_nifti(paths["seg"])
        if seg.ndim != 3:
            raise DataError(paths["seg"], f"expected a 3-D volume, got shape {seg.shape}")
        volumes = [load_nifti(paths[name])[0] for name in self.modalities]
        check_volumes(volumes, seg, [paths[name] for name in self.modalities], paths["seg"])
        classes = map_labels(seg, LABEL_TO_CLASS, paths["seg"])
        brain = brain_mask(volumes)
        check_crop(classes, brain, self.size, paths["seg"], case_dir)
        if self.slices == "brain":
            keep = np.flatnonzero(brain.any(axis=(0, 1)))
        elif self.slices == "tumour":
            keep = np.flatnonzero(classes.any(axis=(0, 1)))
        else:
            keep = np.arange(seg.shape[2])
        images, offsets = framed_slices(volumes, brain, keep, self.size)
        masks, _ = pad_or_crop(np.moveaxis(classes[..., keep], -1, 0), self.size)
        return Case(
            patient_id=case_dir.name,
            images=np.ascontiguousarray(images, dtype=np.float32),
            masks=np.ascontiguousarray(masks, dtype=np.uint8),
            slice_indices=keep.astype(np.int32),
            source=str(case_dir),
            geometry={
                "shape": list(seg.shape),
                "affine": affine.tolist(),
                "spacing": list(spacing),
                "transform": "pad",
                "offsets": offsets,
                "label_values": {str(c): v for v, c in LABEL_TO_CLASS.items()},
            },
        )
