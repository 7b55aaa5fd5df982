import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from upseg.losses import MultiScaleLoss, soft_dice_loss, softmax_cross_entropy, stage_weights
from upseg.models import UpscalingHead
from upseg.models.subpixel import (
    attached_windows,
    unshuffle_dense,
    unshuffle_labels,
    window_shuffle,
    window_view,
)


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


# --- the fast paths against straightforward references ------------------------------------


def reference_multiscale(
    outputs: list[torch.Tensor], mask: torch.Tensor, classes: int, resize: str, weights: str
) -> torch.Tensor:
    """The paper's sum written out with F.cross_entropy / log_softmax, one stage at a time."""
    size = mask.shape[-1]
    one_hot = F.one_hot(mask.long(), classes).permute(0, 3, 1, 2).double()
    total = torch.zeros((), dtype=torch.float64)
    for weight, output in zip(stage_weights(len(outputs), weights), outputs, strict=True):
        f = size // output.shape[-1]
        logits = output.double()
        if resize == "nearest" or f == 1:
            loss = F.cross_entropy(logits, mask[:, f // 2 :: f, f // 2 :: f].long())
        else:
            loss = -(F.avg_pool2d(one_hot, f) * F.log_softmax(logits, 1)).sum(1).mean()
        total = total + weight * loss
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 2, 4), (1, 4, 2, 3, 3)])
def test_softmax_cross_entropy_matches_torch_for_labels(dtype, shape) -> None:
    logits = (5 * torch.randn(shape, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), dtype=torch.uint8)
    ours = softmax_cross_entropy(logits, labels)
    theirs = F.cross_entropy(logits, labels.long())
    torch.testing.assert_close(ours, theirs)
    scale = torch.tensor(0.3, dtype=dtype)  # an upstream weight, as in the weighted stage sum
    torch.testing.assert_close(
        torch.autograd.grad(scale * ours, logits)[0], torch.autograd.grad(scale * theirs, logits)[0]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_cross_entropy_matches_the_soft_formula(dtype) -> None:
    logits = (3 * torch.randn(2, 4, 6, 6, dtype=dtype)).requires_grad_()
    target = torch.softmax(torch.randn(2, 4, 6, 6, dtype=dtype), 1)
    ours = softmax_cross_entropy(logits, target)
    theirs = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        torch.autograd.grad(ours, logits)[0], torch.autograd.grad(theirs, logits)[0]
    )


def test_softmax_cross_entropy_is_stable_for_large_logits() -> None:
    logits = torch.tensor([[[1000.0], [0.0]], [[-1000.0], [990.0]]]).requires_grad_()
    labels = torch.tensor([[1], [0]])
    loss = softmax_cross_entropy(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert torch.isfinite(torch.autograd.grad(loss, logits)[0]).all()


def test_softmax_cross_entropy_in_half_precision_falls_back_to_torch() -> None:
    logits, labels = torch.randn(2, 3, 4, 4).bfloat16(), torch.randint(0, 3, (2, 4, 4))
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels), F.cross_entropy(logits, labels)
    )


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_windowed_cross_entropy_equals_the_loss_of_the_shuffled_output(
    soft: bool, channels_last: bool
) -> None:
    windows = torch.randn(2, 12, 6, 8)  # Nc = 3, output 10 x 14
    if channels_last:
        windows = windows.contiguous(memory_format=torch.channels_last)
    windows.requires_grad_()
    output = window_shuffle(windows.detach(), fast=False).requires_grad_()
    if soft:
        target = torch.softmax(torch.randn(2, 3, 10, 14), 1)
        expected = -(target * F.log_softmax(output, 1)).sum(1).mean()
        ours = softmax_cross_entropy(windows, unshuffle_dense(target), windowed=True)
    else:
        labels = torch.randint(0, 3, (2, 10, 14))
        expected = F.cross_entropy(output, labels)
        ours = softmax_cross_entropy(windows, unshuffle_labels(labels), windowed=True)
    torch.testing.assert_close(ours, expected)
    (grad,) = torch.autograd.grad(ours, windows)
    (output_grad,) = torch.autograd.grad(expected, output)
    # the same numbers in the window layout; entries outside every window get exactly zero
    reference = torch.zeros_like(windows)
    window_view(reference).copy_(
        output_grad.unflatten(3, (7, 2)).unflatten(2, (5, 2)).permute(0, 1, 3, 5, 2, 4)
    )
    torch.testing.assert_close(grad, reference)


def head_outputs(skip: bool, classes: int = 3, stages: int = 3) -> tuple[UpscalingHead, list]:
    torch.manual_seed(1)
    head = UpscalingHead(classes, stages, skip=skip).train()
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return head, head(torch.randn(2, classes, 4, 4))


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("resize", ["nearest", "soft"])
@pytest.mark.parametrize("weights", ["equal", "halving"])
def test_head_loss_and_gradients_match_the_reference(skip: bool, resize: str, weights: str) -> None:
    head, outputs = head_outputs(skip)
    assert all(attached_windows(o) is not None for o in outputs[1:])  # the fast path is taken
    mask = torch.randint(0, 3, (2, 32, 32), dtype=torch.uint8)
    loss = MultiScaleLoss(3, target_resize=resize, weights=weights)(outputs, mask)
    expected = reference_multiscale(outputs, mask, 3, resize, weights)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    params = list(head.parameters())
    ours = torch.autograd.grad(loss, params, retain_graph=True)
    theirs = torch.autograd.grad(expected, params)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("base", ["dice", "dice_ce"])
def test_other_base_losses_on_head_outputs_use_the_outputs(base: str) -> None:
    _, outputs = head_outputs(skip=False)
    mask = torch.randint(0, 3, (2, 32, 32))
    loss = MultiScaleLoss(3, base=base)(outputs, mask)
    plain = [o.clone() for o in outputs]  # no window record
    torch.testing.assert_close(loss, MultiScaleLoss(3, base=base)(plain, mask))


def test_an_output_changed_in_place_is_scored_as_it_is_now() -> None:
    _, outputs = head_outputs(skip=False)
    mask = torch.randint(0, 3, (2, 32, 32))
    finest = outputs[-1]
    with torch.no_grad():
        finest.mul_(-2.0)  # the window tensor no longer holds these logits
    assert attached_windows(finest) is None
    loss = MultiScaleLoss(3)(outputs, mask)
    torch.testing.assert_close(
        loss.double(), reference_multiscale(outputs, mask, 3, "nearest", "equal")
    )


def test_softmax_cross_entropy_with_more_classes_than_uint8_labels_can_name() -> None:
    logits = torch.randn(2, 300, 3, 3, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 256, (2, 3, 3), dtype=torch.uint8)
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels), F.cross_entropy(logits, labels.long())
    )
