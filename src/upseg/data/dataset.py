"""LowResPairs: the torch Dataset of (input at r, mask at R) pairs over a slice store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from upseg.data.resize import downsample_labels
from upseg.data.store import SliceStore


class LowResPairs(Dataset):
    """Items: {"image": (C, r, r) float32 (r = input_size, which is R for a guided head's
    run), "mask": (R, R) uint8, "index": int} and, with
    `lowres_mask`, "mask_lowres": (r, r) uint8 (block centres, what baselines train on).
    Masks stay uint8 (8x less to copy and collate); the loss and metrics take any integer type.

    Inputs at r come from the store's per-r cache, so nothing is resized per epoch. With
    `flips`, each item is flipped left-right and/or up-down at random (image and masks alike;
    exact for 'area' and 'bilinear' inputs, within one pixel of R for 'nearest').
    """

    def __init__(
        self,
        store: SliceStore | str | Path,
        input_size: int,
        split: str = "train",
        downsample: str = "area",
        flips: bool = False,
        lowres_mask: bool = False,
        patients: list[str] | None = None,
    ) -> None:
        self.store = store if isinstance(store, SliceStore) else SliceStore(store)
        self.input_size = input_size
        self.indices = self.store.indices(split, patients)
        self.inputs = self.store.lowres_images(input_size, downsample)
        self.flips = flips
        self.lowres_mask = lowres_mask

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | int]:
        index = int(self.indices[item])
        image = torch.from_numpy(np.array(self.inputs[index], dtype=np.float32))
        mask = torch.from_numpy(np.array(self.store.masks[index]))
        if self.flips:
            dims = [d for d, flip in zip((-1, -2), torch.rand(2) < 0.5, strict=True) if flip]
            if dims:
                image, mask = image.flip(dims), mask.flip(dims)
        sample: dict[str, torch.Tensor | int] = {"image": image, "mask": mask, "index": index}
        if self.lowres_mask:
            sample["mask_lowres"] = downsample_labels(mask, self.input_size).contiguous()
        return sample
