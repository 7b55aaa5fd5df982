"""NIfTI loading with clear errors, and the slice operations the readers share."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from upseg.data.errors import DataError


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Returns (data, affine 4x4, voxel spacing). Raises DataError naming the file when it is
    missing, unreadable (truncated .nii.gz, not NIfTI) or holds NaN / infinite voxels."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise DataError(
            path, f"cannot read the NIfTI data, the file may be truncated or corrupt ({error})"
        ) from None
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(path, f"{bad} voxels are NaN or infinite")
    spacing = tuple(float(z) for z in image.header.get_zooms())
    return data, np.asarray(image.affine, dtype=np.float64), spacing


MAX_SIZE = 8192  # a larger frame is a typo: one 4-channel float16 slice would take 512 MB


def check_size(size: object) -> int:
    """The frame size R, checked: an integer in 1..MAX_SIZE. ValueError naming --size."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size (--size) must be an integer, got {size!r}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size (--size) must be between 1 and {MAX_SIZE} pixels, got {size}")
    return int(size)


def zscore_stats(volume: np.ndarray, where: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, divisor) of `zscore`: the float32 mean and std over the voxels in `where` (all
    if None); the divisor is 1 where the std is 0, and (0, 1) when there are no voxels."""
    values = volume.astype(np.float32, copy=False)
    if where is not None:
        values = volume[where].astype(np.float32, copy=False)
    if values.size == 0:
        return 0.0, 1.0
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0


def zscore(volume: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """(volume - mean) / std over the voxels in `where` (all if None); 0 outside `where`."""
    mean, divisor = zscore_stats(volume, where)
    out = (volume.astype(np.float32, copy=False) - mean) / divisor
    if where is not None:
        out[~where] = 0.0
    return out


def pad_or_crop(slices: np.ndarray, size: int) -> tuple[np.ndarray, list[int]]:
    """Centre the last two axes in a size x size frame (zero padding or cropping).

    Returns the array and the offsets [top, left] of the source inside the frame (negative:
    cropped)."""
    offsets = []
    for axis in (-2, -1):
        extent = slices.shape[axis]
        before = (size - extent) // 2
        offsets.append(before)
        if before >= 0:
            pad = [(0, 0)] * slices.ndim
            pad[axis] = (before, size - extent - before)
            slices = np.pad(slices, pad)
        else:
            start = -before
            slices = np.take(slices, np.arange(start, start + size), axis=axis)
    return slices, offsets


def undo_pad_or_crop(slices: np.ndarray, offsets: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of pad_or_crop: (..., R, R) frames -> (..., H, W) = `shape`, the source's own
    grid. Where the source was cropped away (negative offsets) the result is 0."""
    frame = slices.shape[-2:]
    out = np.zeros((*slices.shape[:-2], *shape), dtype=slices.dtype)
    source, target = [], []
    for offset, extent, size in zip(offsets, shape, frame, strict=True):
        start = max(offset, 0)  # first frame row that holds the source
        skip = max(-offset, 0)  # source rows cropped off before the frame
        count = min(extent - skip, size - start)
        source.append(slice(start, start + count))
        target.append(slice(skip, skip + count))
    out[..., target[0], target[1]] = slices[..., source[0], source[1]]
    return out


def stretch(slices: np.ndarray, size: int | tuple[int, int], labels: bool) -> np.ndarray:
    """(N, [C,] H, W) -> (N, [C,] size, size), or to (h, w) when `size` is a pair: bilinear
    for images, nearest for labels."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if slices.shape[-2:] == shape:
        return slices
    tensor = torch.from_numpy(np.ascontiguousarray(slices))
    squeeze = tensor.dim() == 3
    if squeeze:
        tensor = tensor.unsqueeze(1)
    if labels:
        out = F.interpolate(tensor.float(), size=shape, mode="nearest-exact")
        out = out.to(tensor.dtype)
    else:
        out = F.interpolate(tensor.float(), size=shape, mode="bilinear", align_corners=False)
    if squeeze:
        out = out.squeeze(1)
    return out.numpy()


def map_labels(labels: np.ndarray, mapping: dict[int, int], path: Path) -> np.ndarray:
    """Source label values -> class indices (uint8); a value outside `mapping` or a fractional
    value (a label map resampled with interpolation) is a DataError."""
    if any(value < 0 or not 0 <= index <= 255 for value, index in mapping.items()):
        raise ValueError(f"label values must be >= 0 and classes 0..255 (uint8), got {mapping}")
    values = np.unique(labels)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        fractional = values[values != np.round(values)][:5].tolist()
        raise DataError(path, f"label values must be whole numbers, found {fractional}")
    unknown = sorted(int(v) for v in values if int(v) not in mapping)
    if unknown:
        raise DataError(
            path,
            f"label values {unknown} are outside the declared set {sorted(mapping)}",
        )
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for value, index in mapping.items():
        if value < len(lut):
            lut[value] = index
    return lut[labels.astype(np.int64)]
