import math

import pytest
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric, MeanIoU

from upseg.data.brats import BRATS_CLASSES, BRATS_REGIONS
from upseg.metrics import ConfusionMatrix, labels_from_logits, paper_dice, paper_jaccard

# target 0 0 0 1 1 2 / prediction 0 0 1 1 2 2  ->  rows: truth, columns: prediction
TARGET = torch.tensor([[[0, 0, 0, 1, 1, 2]]])
PREDICTION = torch.tensor([[[0, 0, 1, 1, 2, 2]]])


@pytest.fixture
def matrix() -> ConfusionMatrix:
    cm = ConfusionMatrix(3)
    cm.update(PREDICTION, TARGET)
    return cm


def test_counts(matrix: ConfusionMatrix) -> None:
    assert matrix.counts.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_paper_equations(matrix: ConfusionMatrix) -> None:
    # per class Dice 4/5, 2/4, 2/3; Jaccard 2/3, 1/3, 1/2
    assert paper_dice(matrix.counts) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert paper_jaccard(matrix.counts) == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)


def test_summary_by_hand(matrix: ConfusionMatrix) -> None:
    s = matrix.summary()
    assert s["foreground_dice"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["foreground_jaccard"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    one = s["per_class"]["class1"]
    assert one["dice"] == pytest.approx(0.5)
    assert one["jaccard"] == pytest.approx(1 / 3)
    # class 1 against the rest: rest has TP 3, 4 labelled, 4 predicted -> Dice 3/4, Jaccard 3/5
    assert one["paper_dice"] == pytest.approx((0.5 + 0.75) / 2)
    assert one["paper_jaccard"] == pytest.approx((1 / 3 + 0.6) / 2)


def test_streaming_equals_one_update() -> None:
    prediction, target = torch.randint(0, 4, (6, 16, 16)), torch.randint(0, 4, (6, 16, 16))
    whole, parts = ConfusionMatrix(4), ConfusionMatrix(4)
    whole.update(prediction, target)
    for p, t in zip(prediction.split(2), target.split(2), strict=True):
        parts.update(p, t)
    assert torch.equal(whole.counts, parts.counts)
    merged = ConfusionMatrix(4)
    merged.merge(parts)
    assert torch.equal(merged.counts, whole.counts)


def test_logits_are_argmaxed_and_one_channel_thresholded() -> None:
    target = torch.randint(0, 3, (2, 8, 8))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    cm = ConfusionMatrix(3)
    cm.update(logits, target)
    assert cm.summary()["paper_dice"] == 1.0
    binary = ConfusionMatrix(2)
    binary.update(torch.tensor([[[[-1.0, 2.0]]]]), torch.tensor([[[0, 1]]]))
    assert binary.counts.tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("classes", [2, 3, 4, 5])
def test_labels_from_logits_is_torch_argmax(classes: int) -> None:
    generator = torch.Generator().manual_seed(classes)
    # small integers make ties common: the first maximum must win, as in torch.argmax
    logits = torch.randint(-2, 3, (3, classes, 9, 7), generator=generator).float()
    assert torch.equal(labels_from_logits(logits), logits.argmax(1))
    logits[1, classes - 1, 4, 4] = float("nan")
    assert torch.equal(labels_from_logits(logits), logits.argmax(1))
    assert labels_from_logits(logits).dtype == torch.int64


def test_absent_class_is_nan_and_left_out_of_means() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, 1]]]))
    s = cm.summary()
    assert math.isnan(s["per_class"]["class2"]["dice"])
    assert s["foreground_dice"] == 1.0
    assert s["paper_dice"] == 1.0


def test_brats_regions() -> None:
    # truth: NCR ED ET bg ; prediction: ET ED bg bg
    target = torch.tensor([[[1, 2, 3, 0]]])
    prediction = torch.tensor([[[3, 2, 0, 0]]])
    cm = ConfusionMatrix(4, BRATS_CLASSES)
    cm.update(prediction, target)
    regions = cm.summary(BRATS_REGIONS)["regions"]
    assert regions["WT"]["dice"] == pytest.approx(2 * 2 / (2 + 3))  # WT: 2 of 3 found
    assert regions["TC"]["dice"] == pytest.approx(2 * 1 / (1 + 2))  # TC: pixel 0 is TC in both
    assert regions["ET"]["dice"] == pytest.approx(0.0)
    assert cm.summary()["per_class"]["ED"]["dice"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_monai_dice_and_iou(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (1, 32, 32), generator=generator)
    prediction = torch.randint(0, 4, (1, 32, 32), generator=generator)
    prediction[0, :16] = target[0, :16]  # make the overlap non-trivial
    cm = ConfusionMatrix(4)
    cm.update(prediction, target)
    ours = cm.summary()["per_class"]

    def one_hot(x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x, 4).permute(0, 3, 1, 2).float()

    dice = DiceMetric(include_background=True, reduction="none")(
        one_hot(prediction), one_hot(target)
    )
    iou = MeanIoU(include_background=True, reduction="none")(one_hot(prediction), one_hot(target))
    for c in range(4):
        assert ours[f"class{c}"]["dice"] == pytest.approx(float(dice[0, c]), abs=1e-6)
        assert ours[f"class{c}"]["jaccard"] == pytest.approx(float(iou[0, c]), abs=1e-6)


def test_bad_inputs() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target holds labels 0..4, outside 0..2"):
        cm.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match="class names"):
        ConfusionMatrix(3, ["a", "b"])
