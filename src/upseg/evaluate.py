"""Scoring at full resolution R, the way the paper does and the way clinicians read it.

Every prediction is scored against the authentic mask at R: a baseline's logits at r are
stretched bilinearly to R first (the paper's protocol), a head model's finest output is
already at R. For a head model every stage can be scored too (each stretched to R), which
shows whether a gain comes from the learned up-sampler or from the multi-scale supervision
improving the backbone itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from upseg.metrics import BRATS_CLASSES, BRATS_REGIONS, ConfusionMatrix
from upseg.models import LowResSegmenter
from upseg.resize import stretch_logits


def regions_for(class_names: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    """BraTS regions (WT, TC, ET) when the classes are BraTS's, else none."""
    return BRATS_REGIONS if tuple(class_names) == BRATS_CLASSES else None


@torch.no_grad()
def score(
    model: LowResSegmenter,
    dataset: Dataset,
    class_names: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    per_stage: bool = False,
    progress: bool = False,
) -> dict:
    """Confusion-matrix scores at R over `dataset` (items: image at r, mask at R).

    Returns ConfusionMatrix.summary() of the final output, plus "stages": one summary per
    stage output (resolution -> summary) when `per_stage`.
    """
    was_training = model.training
    model.eval()
    names = list(class_names)  # a one-channel (sigmoid) model still scores 2 classes
    finest = ConfusionMatrix(len(names), names)
    stages: dict[int, ConfusionMatrix] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        for batch in tqdm(loader, desc="score", disable=not progress, leave=False):
            image = batch["image"].to(device)
            mask = batch["mask"].to(device)
            size = mask.shape[-1]
            outputs = model.forward_all(image) if per_stage else [model(image)]
            for output in outputs:
                logits = stretch_logits(output.float(), size)
                if per_stage:
                    stages.setdefault(output.shape[-1], ConfusionMatrix(len(names), names))
                    stages[output.shape[-1]].update(logits, mask)
            finest.update(logits, mask)
    finally:
        model.train(was_training)
    regions = regions_for(class_names)
    result = finest.summary(regions)
    result["counts"] = finest.counts.tolist()
    if per_stage:
        result["stages"] = {
            str(resolution): cm.summary(regions) for resolution, cm in sorted(stages.items())
        }
    return result
