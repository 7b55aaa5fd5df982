"""Resolution changes shared by the data pipeline, the loss and scoring.

Conventions (R = full resolution, factor f = R / r, an integer):
  - labels are downsampled by taking the centre pixel of every f x f block, which lines up
    with area-averaged images and with bilinear stretching (top-left sampling, as in
    cv2/torch 'nearest', would shift labels by (f - 1) / 2 pixels of R);
  - images are downsampled by 'area' (block mean, the default), 'bilinear' (no antialiasing,
    like cv2 INTER_LINEAR) or 'nearest' (block centre, like the labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DOWNSAMPLE_MODES = ("area", "bilinear", "nearest")


def _factor(size: int, target: int) -> int:
    factor, rest = divmod(size, target)
    if rest or factor < 1:
        raise ValueError(f"cannot downsample {size} to {target}: not an integer factor")
    return factor


def downsample_labels(mask: Tensor, size: int) -> Tensor:
    """(..., R, R) integer labels -> (..., size, size), the centre pixel of every block."""
    f = _factor(mask.shape[-1], size)
    _factor(mask.shape[-2], size)
    return mask[..., f // 2 :: f, f // 2 :: f]


def downsample_image(image: Tensor, size: int, mode: str = "area") -> Tensor:
    """(B, C, R, R) float -> (B, C, size, size)."""
    if mode not in DOWNSAMPLE_MODES:
        raise ValueError(f"unknown downsampling {mode!r}; choose one of {DOWNSAMPLE_MODES}")
    f = _factor(image.shape[-1], size)
    if f == 1:
        return image
    if mode == "area":
        return F.avg_pool2d(image, f)
    if mode == "bilinear":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    return downsample_labels(image, size)


def stretch_logits(logits: Tensor, size: int) -> Tensor:
    """Baseline logits (B, Nc, r, r) -> (B, Nc, size, size), bilinear as the paper scores them."""
    if logits.shape[-1] == size:
        return logits
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def one_hot(
    labels: Tensor,
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    out: Tensor | None = None,
) -> Tensor:
    """(B, *pixels) integer labels -> (B, Nc, *pixels); a label outside 0..Nc-1 gives zeros.
    `out`, if given, receives the result (any memory layout)."""
    if labels.dtype == torch.bool or num_classes - 1 > torch.iinfo(labels.dtype).max:
        labels = labels.long()
    shape = (1, num_classes) + (1,) * (labels.dim() - 1)
    classes = torch.arange(num_classes, dtype=labels.dtype, device=labels.device).view(shape)
    if out is None:
        out = labels.new_empty((labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype)
    return torch.eq(labels.unsqueeze(1), classes, out=out)
