"""Case: the slices of one patient at full resolution, as every reader returns them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    """images (N, C, R, R) float32, masks (N, R, R) uint8 class indices, slice_indices (N,)
    positions in the source (the volume's last axis, or the file order of a 2-D folder)."""

    patient_id: str
    images: np.ndarray
    masks: np.ndarray
    slice_indices: np.ndarray
    source: str
    geometry: dict = field(default_factory=dict)  # what predict needs to map back

    def __post_init__(self) -> None:
        n = len(self.slice_indices)
        if (
            self.images.ndim != 4
            or self.masks.ndim != 3
            or not len(self.images) == len(self.masks) == n
            or self.images.shape[-2:] != self.masks.shape[-2:]
        ):
            raise ValueError(
                f"case {self.patient_id}: images {self.images.shape}, masks {self.masks.shape} "
                f"and {n} slice indices do not line up"
            )
