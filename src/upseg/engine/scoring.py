"""Scoring at full resolution R, the way the paper does and the way clinicians read it.

Every prediction is scored against the authentic mask at R: a baseline's logits at r are
stretched bilinearly to R first (the paper's protocol), a head model's finest output is
already at R. For a head model every stage can be scored too (each stretched to R), which
shows whether a gain comes from the learned up-sampler or from the multi-scale supervision
improving the backbone itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from upseg.data.brats import BRATS_CLASSES, BRATS_REGIONS
from upseg.data.resize import stretch_logits
from upseg.metrics import (
    DEFAULT_TOLERANCE,
    ConfusionMatrix,
    labels_from_logits,
    patient_scores,
    score_groups,
    summarise,
)
from upseg.models import LowResSegmenter


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
    per_patient: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """Confusion-matrix scores at R over `dataset` (items: image at r, mask at R).

    Returns ConfusionMatrix.summary() of the final output, plus "stages": one summary per
    stage output (resolution -> summary) when `per_stage`, and with `per_patient` (the
    dataset a LowResPairs, read in order) "patients" (id -> group -> scores, see
    upseg.metrics.patients) and "patient_summary" (group -> metric -> mean, median, n).
    """
    was_training = model.training
    model.eval()
    names = list(class_names)  # a one-channel (sigmoid) model still scores 2 classes
    finest = ConfusionMatrix(len(names), names)
    stages: dict[int, ConfusionMatrix] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    predicted: list[np.ndarray] = []
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
            if per_patient:
                predicted.append(labels_from_logits(logits).to(torch.uint8).cpu().numpy())
    finally:
        model.train(was_training)
    regions = regions_for(class_names)
    result = finest.summary(regions)
    result["counts"] = finest.counts.tolist()
    if per_stage:
        result["stages"] = {
            str(resolution): cm.summary(regions) for resolution, cm in sorted(stages.items())
        }
    if per_patient:
        labels = np.concatenate(predicted) if predicted else np.zeros((0, 1, 1), np.uint8)
        result["patients"] = score_patients(dataset, labels, names, tolerance, progress)
        result["patient_summary"] = summarise(result["patients"])
    return result


def score_patients(
    dataset: Dataset,
    labels: np.ndarray,
    class_names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
    progress: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """labels: (N, R, R) predicted class indices of a LowResPairs' items, in its order.
    Each patient's slices, in source order, are scored as one volume."""
    store, indices = dataset.store, np.asarray(dataset.indices)
    owner = store.slices[indices, 0]
    ids = store.patient_ids()
    groups = score_groups(class_names)
    result = {}
    for number in tqdm(np.unique(owner), desc="patients", disable=not progress, leave=False):
        rows = np.flatnonzero(owner == number)
        rows = rows[np.argsort(store.slices[indices[rows], 1], kind="stable")]
        truth = np.asarray(store.masks[indices[rows]])
        result[ids[int(number)]] = patient_scores(labels[rows], truth, groups, tolerance)
    return result
