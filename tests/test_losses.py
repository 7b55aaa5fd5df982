import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from upseg.losses import MultiScaleLoss, soft_dice_loss, stage_weights


def pyramid(batch: int, classes: int, sizes: list[int]) -> list[torch.Tensor]:
    return [torch.randn(batch, classes, s, s, requires_grad=True) for s in sizes]


def test_single_stage_ce_is_cross_entropy() -> None:
    logits, mask = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    loss = MultiScaleLoss(3)(logits, mask)
    torch.testing.assert_close(loss, F.cross_entropy(logits, mask))


def test_nearest_targets_take_the_block_centre() -> None:
    mask = torch.randint(0, 3, (2, 16, 16))
    coarse = torch.randn(2, 3, 4, 4)
    expected = F.cross_entropy(coarse, mask[:, 2::4, 2::4])
    torch.testing.assert_close(MultiScaleLoss(3)([coarse], mask), expected)


def test_equal_weights_are_the_plain_sum() -> None:
    outputs, mask = pyramid(2, 3, [4, 8, 16]), torch.randint(0, 3, (2, 16, 16))
    expected = sum(
        F.cross_entropy(o, mask[:, f // 2 :: f, f // 2 :: f])
        for o, f in zip(outputs, [4, 2, 1], strict=True)
    )
    torch.testing.assert_close(MultiScaleLoss(3)(outputs, mask), expected)


def test_halving_weights() -> None:
    assert stage_weights(3, "halving") == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert stage_weights(1, "halving") == [1.0]
    outputs, mask = pyramid(2, 3, [4, 8, 16]), torch.randint(0, 3, (2, 16, 16))
    parts = [MultiScaleLoss(3)([o], mask) for o in outputs]
    expected = sum(w * p for w, p in zip([1 / 7, 2 / 7, 4 / 7], parts, strict=True))
    torch.testing.assert_close(MultiScaleLoss(3, weights="halving")(outputs, mask), expected)


def test_soft_targets_are_area_averaged_one_hot() -> None:
    mask = torch.randint(0, 4, (2, 16, 16))
    outputs = pyramid(2, 4, [2, 4, 8, 16])
    one_hot = F.one_hot(mask, 4).permute(0, 3, 1, 2).float()
    expected = F.cross_entropy(outputs[-1], mask)
    for output, factor in zip(outputs[:-1], [8, 4, 2], strict=True):
        target = F.avg_pool2d(one_hot, factor)
        assert torch.allclose(target.sum(1), torch.ones(()))
        expected = expected - (target * F.log_softmax(output, 1)).sum(1).mean()
    loss = MultiScaleLoss(4, target_resize="soft")(outputs, mask)
    torch.testing.assert_close(loss, expected)


def test_soft_equals_nearest_on_uniform_blocks() -> None:
    mask = torch.randint(0, 3, (2, 4, 4)).repeat_interleave(4, 1).repeat_interleave(4, 2)
    outputs = pyramid(2, 3, [4, 8, 16])
    soft = MultiScaleLoss(3, target_resize="soft")(outputs, mask)
    torch.testing.assert_close(soft, MultiScaleLoss(3)(outputs, mask))


def test_bce_binary() -> None:
    logits, mask = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    expected = F.binary_cross_entropy_with_logits(logits, mask[:, None].float())
    torch.testing.assert_close(MultiScaleLoss(1, base="bce")(logits, mask), expected)
    coarse = torch.randn(2, 1, 4, 4)
    soft_target = F.avg_pool2d(mask[:, None].float(), 2)
    expected_soft = F.binary_cross_entropy_with_logits(coarse, soft_target)
    loss = MultiScaleLoss(1, base="bce", target_resize="soft")([coarse], mask)
    torch.testing.assert_close(loss, expected_soft)


def test_dice_agrees_with_monai_batch_dice() -> None:
    logits, mask = torch.randn(3, 4, 8, 8), torch.randint(0, 4, (3, 8, 8))
    monai = DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    expected = monai(logits, mask[:, None])
    torch.testing.assert_close(MultiScaleLoss(4, base="dice")(logits, mask), expected)


def test_dice_of_a_perfect_prediction_is_near_zero() -> None:
    mask = torch.randint(0, 3, (2, 8, 8))
    logits = 50.0 * F.one_hot(mask, 3).permute(0, 3, 1, 2).float()
    assert MultiScaleLoss(3, base="dice")(logits, mask) < 1e-4
    assert soft_dice_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4)) > 0.1


def test_dice_ce_is_the_sum() -> None:
    logits, mask = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    both = MultiScaleLoss(3, base="dice_ce")(logits, mask)
    parts = MultiScaleLoss(3, base="dice")(logits, mask) + MultiScaleLoss(3)(logits, mask)
    torch.testing.assert_close(both, parts)


def test_gradient_reaches_every_stage() -> None:
    outputs, mask = pyramid(2, 3, [4, 8, 16]), torch.randint(0, 3, (2, 16, 16))
    MultiScaleLoss(3, base="dice_ce", target_resize="soft")(outputs, mask).backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


@pytest.mark.parametrize(
    ("kwargs", "outputs", "mask", "message"),
    [
        ({"num_classes": 2}, [(2, 4, 8, 8)], (2, 8, 8), "same number of classes"),
        ({"num_classes": 3}, [(2, 3, 8, 8)], (2, 8, 8), "outside the classes 0..2"),
        ({"num_classes": 3}, [(2, 3, 6, 6)], (2, 16, 16), "integer factor"),
        ({"num_classes": 3}, [(2, 3, 8, 8), (2, 3, 4, 4)], (2, 8, 8), "coarsest to the finest"),
        ({"num_classes": 3}, [(3, 3, 8, 8)], (2, 8, 8), "batch"),
        ({"num_classes": 3}, [], (2, 8, 8), "no outputs"),
    ],
)
def test_bad_inputs(kwargs: dict, outputs: list, mask: tuple, message: str) -> None:
    labels = torch.randint(0, 3, mask)
    if "outside" in message:
        labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=message):
        MultiScaleLoss(**kwargs)([torch.randn(s) for s in outputs], labels)


def test_float_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="integer label map"):
        MultiScaleLoss(2)(torch.randn(1, 2, 4, 4), torch.rand(1, 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1, "base": "ce"}, "use 'bce'"),
        ({"num_classes": 3, "base": "bce"}, "one-channel"),
        ({"num_classes": 3, "base": "focal"}, "unknown base loss"),
        ({"num_classes": 3, "target_resize": "bicubic"}, "unknown target_resize"),
        ({"num_classes": 3, "weights": "linear"}, "unknown stage weights"),
    ],
)
def test_bad_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiScaleLoss(**kwargs)


def test_uint8_masks_are_accepted() -> None:
    logits, mask = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    expected = MultiScaleLoss(3, target_resize="soft")(logits, mask)
    torch.testing.assert_close(
        MultiScaleLoss(3, target_resize="soft")(logits, mask.to(torch.uint8)), expected
    )
