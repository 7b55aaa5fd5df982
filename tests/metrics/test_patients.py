from __future__ import annotations

import math

import numpy as np
import pytest

from upseg.data.brats import BRATS_CLASSES
from upseg.metrics import patient_rows, patient_scores, score_groups, summarise


def cubes(inner: int, outer: int, size: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """truth: a centred cube of side `inner`; prediction: a centred cube of side `outer`."""
    truth, prediction = np.zeros((size,) * 3, np.uint8), np.zeros((size,) * 3, np.uint8)
    for volume, side in ((truth, inner), (prediction, outer)):
        a = (size - side) // 2
        volume[a : a + side, a : a + side, a : a + side] = 1
    return prediction, truth


def test_overlap_by_hand() -> None:
    truth = np.zeros((2, 4, 4), np.uint8)
    truth[0, :2, :2] = 1  # 4 voxels of class 1
    truth[1, 0, :3] = 2  # 3 voxels of class 2
    prediction = np.zeros_like(truth)
    prediction[0, :2, :3] = 1  # 6 voxels, 4 right
    prediction[1, 0, :1] = 2  # 1 voxel, right
    scores = patient_scores(prediction, truth, {"a": (1,), "b": (2,), "ab": (1, 2)})
    assert scores["a"]["dice"] == pytest.approx(2 * 4 / (4 + 6))
    assert scores["a"]["jaccard"] == pytest.approx(4 / 6)
    assert scores["b"]["dice"] == pytest.approx(2 * 1 / (3 + 1))
    assert scores["b"]["jaccard"] == pytest.approx(1 / 3)
    assert scores["ab"]["dice"] == pytest.approx(2 * 5 / (7 + 7))
    assert (scores["a"]["n_ref"], scores["a"]["n_pred"]) == (4, 6)


def test_boundary_distances_by_hand() -> None:
    """A 3-cube inside a 5-cube (both centred). Truth's 26 surface voxels lie 1 from the
    prediction's surface. Of the prediction's 98 surface voxels, those with one coordinate
    on the outer layer lie 1 from truth (54), two coordinates sqrt 2 (36), three sqrt 3 (8):
    the 95th percentile of the 98 is sqrt 3, and 26 + 54 of 124 lie within 1."""
    prediction, truth = cubes(3, 5)
    tight = patient_scores(prediction, truth, {"fg": (1,)}, tolerance=1.0)["fg"]
    assert tight["hd95"] == pytest.approx(math.sqrt(3), rel=1e-6)
    assert tight["nsd"] == pytest.approx(80 / 124, rel=1e-6)
    assert tight["dice"] == pytest.approx(2 * 27 / (27 + 125))
    loose = patient_scores(prediction, truth, {"fg": (1,)}, tolerance=1.5)["fg"]
    assert loose["nsd"] == pytest.approx((26 + 54 + 36) / 124, rel=1e-6)
    same = patient_scores(truth, truth, {"fg": (1,)})["fg"]
    assert (same["dice"], same["hd95"], same["nsd"]) == (1.0, 0.0, 1.0)


def test_empty_reference_or_prediction() -> None:
    _, truth = cubes(3, 5)
    empty = np.zeros_like(truth)
    diagonal = math.sqrt(3 * 9**2)
    for prediction, reference in ((empty, truth), (truth, empty)):
        scores = patient_scores(prediction, reference, {"fg": (1,)})["fg"]
        assert (scores["dice"], scores["jaccard"], scores["nsd"]) == (0.0, 0.0, 0.0)
        assert scores["hd95"] == pytest.approx(diagonal)
    both = patient_scores(empty, empty, {"fg": (1,)})["fg"]
    assert all(math.isnan(both[k]) for k in ("dice", "jaccard", "hd95", "nsd"))
    assert (both["n_ref"], both["n_pred"]) == (0, 0)


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="one volume"):
        patient_scores(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), {"fg": (1,)})


def test_groups() -> None:
    assert score_groups(["background", "tumour"]) == {"tumour": (1,)}
    brats = score_groups(BRATS_CLASSES)
    assert list(brats) == ["NCR", "ED", "ET", "WT", "TC"]
    assert brats["WT"] == (1, 2, 3) and brats["TC"] == (1, 3) and brats["ET"] == (3,)


def test_summary_leaves_undefined_patients_out() -> None:
    nan = math.nan
    patients = {
        "p1": {"fg": {"dice": 0.5, "jaccard": 1 / 3, "hd95": 4.0, "nsd": 0.5}},
        "p2": {"fg": {"dice": 0.9, "jaccard": 0.9 / 1.1, "hd95": 1.0, "nsd": 0.9}},
        "p3": {"fg": {"dice": 0.7, "jaccard": 0.7 / 1.3, "hd95": 2.0, "nsd": 1.0}},
        "p4": {"fg": {"dice": nan, "jaccard": nan, "hd95": nan, "nsd": nan}},
    }
    summary = summarise(patients)["fg"]
    assert summary["dice"] == {"mean": pytest.approx(0.7), "median": 0.7, "n": 3}
    assert summary["hd95"]["mean"] == pytest.approx(7 / 3)
    assert summary["hd95"]["median"] == 2.0
    rows = patient_rows(patients)
    assert len(rows) == 4 and rows[0] == {"patient": "p1", "group": "fg", **patients["p1"]["fg"]}
