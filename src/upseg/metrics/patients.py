"""Per-patient scores, the way nnU-Net and MONAI report them.

All slices of one patient, in source order, form one volume (S, R, R) of class indices; it
is scored once per group (a foreground class, or a union of classes such as the BraTS
regions WT, TC, ET):
  - overlap: Dice 2TP / (2TP + FP + FN) and Jaccard TP / (TP + FP + FN);
  - boundary: the 95th-percentile Hausdorff distance (HD95) and the normalised surface Dice
    (NSD: the fraction of both boundaries within `tolerance` of the other), both from MONAI's
    metric functions, in pixels at R, slices one pixel apart (exact for BraTS at 1 mm; for
    stretched 2-D sets a pixel of R is the unit).
Empty reference or prediction, as the two projects do:
  - both empty: every score NaN (nnU-Net, MONAI), left out of means and of paired tests;
  - one empty: Dice, Jaccard and NSD 0; MONAI's HD95 is then infinite, and upseg writes the
    volume's diagonal instead (the largest distance it can hold, as BraTS writes 373.13 mm),
    so a missed or invented lesion counts as the worst boundary and means stay finite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from upseg.data.brats import BRATS_CLASSES, BRATS_REGIONS

DEFAULT_TOLERANCE = 2.0  # NSD tolerance, pixels at R
PATIENT_METRICS = ("dice", "jaccard", "hd95", "nsd")
HIGHER_IS_BETTER = {"dice": True, "jaccard": True, "hd95": False, "nsd": True}


def score_groups(class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Each foreground class on its own, then the BraTS regions when the classes are BraTS's."""
    groups = {name: (i,) for i, name in enumerate(class_names) if i > 0}
    if tuple(class_names) == BRATS_CLASSES:
        groups.update(BRATS_REGIONS)
    return groups


def _diagonal(shape: Sequence[int]) -> float:
    return math.sqrt(sum(n * n for n in shape))


def patient_scores(
    prediction: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    groups: Mapping[str, Sequence[int]],
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, dict[str, float]]:
    """prediction, truth: (S, R, R) class indices of one patient. Returns, per group,
    dice, jaccard, hd95, nsd and the voxel counts n_ref and n_pred (as nnU-Net's summary)."""
    # imported here: MONAI takes seconds to import, and predict or export never need it
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    prediction, truth = torch.as_tensor(np.asarray(prediction)), torch.as_tensor(np.asarray(truth))
    if prediction.shape != truth.shape or prediction.dim() != 3:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} must be one "
            "volume (S, R, R) each"
        )
    names = list(groups)
    members = [torch.tensor(list(groups[n]), dtype=truth.dtype) for n in names]
    ours = torch.stack([torch.isin(prediction, m) for m in members])[None]  # (1, K, S, R, R)
    ref = torch.stack([torch.isin(truth, m) for m in members])[None]
    with warnings.catch_warnings():  # MONAI warns about every empty mask; handled below
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(ours, ref, include_background=True, percentile=95)[0]
        nsd = compute_surface_dice(
            ours, ref, [float(tolerance)] * len(names), include_background=True
        )[0]
    worst = _diagonal(truth.shape)
    result = {}
    for k, name in enumerate(names):
        n_ref, n_pred = int(ref[0, k].sum()), int(ours[0, k].sum())
        tp = int((ref[0, k] & ours[0, k]).sum())
        scores = {"n_ref": n_ref, "n_pred": n_pred}
        if n_ref == 0 and n_pred == 0:
            scores.update(dict.fromkeys(PATIENT_METRICS, math.nan))
        else:
            scores["dice"] = 2 * tp / (n_ref + n_pred)
            scores["jaccard"] = tp / (n_ref + n_pred - tp)
            one_empty = n_ref == 0 or n_pred == 0
            scores["hd95"] = worst if one_empty else float(hd95[k])
            scores["nsd"] = 0.0 if one_empty else float(nsd[k])
        result[name] = scores
    return result


def summarise(
    patients: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Per group and metric over patients: mean, median and n (patients with a defined score)."""
    groups = next(iter(patients.values())).keys() if patients else []
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for group in groups:
        summary[group] = {}
        for metric in PATIENT_METRICS:
            values = np.array([p[group][metric] for p in patients.values()], dtype=np.float64)
            values = values[~np.isnan(values)]
            summary[group][metric] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "median": float(np.median(values)) if values.size else math.nan,
                "n": int(values.size),
            }
    return summary


def patient_rows(patients: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict]:
    """One CSV row per patient and group."""
    return [
        {"patient": pid, "group": group, **scores}
        for pid, groups in patients.items()
        for group, scores in groups.items()
    ]
