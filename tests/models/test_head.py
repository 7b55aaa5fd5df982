import pytest
import torch
import torch.nn.functional as F

from upseg.models import (
    UpscalingHead,
    UpscalingStage,
    plain_head_num_params,
    skip_head_num_params,
)
from upseg.profile import count_parameters
from upseg.subpixel import attached_windows, window_shuffle, window_view


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_plain_head_parameters(num_classes: int, num_stages: int) -> None:
    head = UpscalingHead(num_classes, num_stages)
    expected = num_stages * (13 * num_classes**2 + 2 * num_classes)
    assert count_parameters(head) == expected == plain_head_num_params(num_classes, num_stages)


def test_plain_head_sixty_parameters_for_one_class_16_to_256() -> None:
    assert count_parameters(UpscalingHead(1, 4)) == 60


@pytest.mark.parametrize("num_stages", [3, 4, 5])
@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_skip_head_parameters(num_classes: int, num_stages: int) -> None:
    head = UpscalingHead(num_classes, num_stages, skip=True)
    assert count_parameters(head) == skip_head_num_params(num_classes, num_stages)


def test_skip_head_parameters_by_hand() -> None:
    # m = 4, Nc = 1: two plain stages (2 x 15), two concat stages (2 x (9 + 10)),
    # stretch chains of 2 and 3 plain stages (5 x 15).
    assert count_parameters(UpscalingHead(1, 4, skip=True)) == 30 + 38 + 75 == 143


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_output_shapes(num_classes: int, skip: bool) -> None:
    outputs = UpscalingHead(num_classes, 4, skip=skip)(torch.randn(2, num_classes, 16, 16))
    assert [tuple(o.shape) for o in outputs] == [
        (2, num_classes, 16 * 2**k, 16 * 2**k) for k in range(5)
    ]


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("num_classes", [1, 4])
def test_upsample_init_reproduces_nearest_upsampling(num_classes: int, skip: bool) -> None:
    logits = torch.randn(3, num_classes, 16, 16)
    head = UpscalingHead(num_classes, 4, skip=skip, init="upsample")
    for k, output in enumerate(head(logits)):
        expected = F.interpolate(logits, scale_factor=2**k, mode="nearest")
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)


def test_pytorch_init_is_not_nearest_upsampling() -> None:
    logits = torch.randn(1, 2, 8, 8)
    finest = UpscalingHead(2, 2, init="pytorch")(logits)[-1]
    assert not torch.allclose(finest, F.interpolate(logits, scale_factor=4, mode="nearest"))


def test_default_init_is_upsample_and_the_former_default_name_means_pytorch() -> None:
    assert UpscalingHead(2, 2).init == "upsample"
    logits = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(
        UpscalingHead(2, 2)(logits)[-1], F.interpolate(logits, scale_factor=4, mode="nearest")
    )
    assert UpscalingHead(2, 2, init="default").init == "pytorch"


def test_upsample_init_trains_away_from_identity() -> None:
    head = UpscalingHead(2, 2, init="upsample")
    head(torch.randn(1, 2, 8, 8))[-1].sum().backward()
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1, "num_stages": 2, "skip": True}, "at least 3 stages"),
        ({"num_classes": 1, "num_stages": 0}, "at least 1"),
        ({"num_classes": 0, "num_stages": 2}, "num_classes"),
        ({"num_classes": 1, "num_stages": 2, "init": "xavier"}, "unknown head init"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UpscalingHead(**kwargs)


@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 1), (4, 4), (8, 4), (6, 3)])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (16, 16)])
def test_composed_stage_equals_the_two_layers(in_channels, num_classes, size) -> None:
    stage = UpscalingStage(in_channels, num_classes)
    torch.nn.init.normal_(stage[0].bias)
    x = torch.randn(3, in_channels, *size, requires_grad=True)
    fast, reference = stage(x), stage.layerwise_forward(x)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(reference)
    fast_grads = torch.autograd.grad(fast, [x, *stage.parameters()], grad)
    reference_grads = torch.autograd.grad(reference, [x, *stage.parameters()], grad)
    for a, b in zip(fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_channels", [4, 8])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (6, 5)])
def test_composed_stage_in_eval_mode_equals_the_two_layers(in_channels, size) -> None:
    stage = UpscalingStage(in_channels, 4).eval()
    for p in stage.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(2, in_channels, *size)
    with torch.no_grad():
        fast, reference = stage(x), stage.layerwise_forward(x)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    assert attached_windows(fast) is None
    torch.testing.assert_close(stage(x), reference, rtol=1e-5, atol=1e-5)  # eval, grad on


def test_window_view_and_shuffle_follow_the_documented_layout() -> None:
    windows = torch.randn(2, 8, 4, 5)  # Nc = 2, h = 3, w = 4
    output = window_shuffle(windows, fast=False)
    for c, a, b, i, j in [(0, 0, 0, 0, 0), (1, 1, 0, 2, 3), (0, 1, 1, 1, 2), (1, 0, 1, 2, 0)]:
        expected = windows[:, 4 * c + 2 * a + b, i + a, j + b]
        torch.testing.assert_close(output[:, c, 2 * i + a, 2 * j + b], expected)
        torch.testing.assert_close(window_view(windows)[:, c, a, b, i, j], expected)
    torch.testing.assert_close(window_shuffle(windows.requires_grad_(), fast=True), output)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_window_shuffle_backward_puts_zeros_outside_the_windows(channels_last) -> None:
    windows = torch.randn(2, 8, 4, 5)
    if channels_last:
        windows = windows.contiguous(memory_format=torch.channels_last)
    windows.requires_grad_()
    grad = torch.randn(2, 2, 6, 8)
    (fast,) = torch.autograd.grad(window_shuffle(windows, fast=True), windows, grad)
    (slow,) = torch.autograd.grad(window_shuffle(windows, fast=False), windows, grad)
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)


def test_training_outputs_carry_their_window_tensors() -> None:
    head = UpscalingHead(3, 2).train()
    outputs = head(torch.randn(1, 3, 4, 4))
    assert attached_windows(outputs[0]) is None  # the backbone's logits
    assert all(attached_windows(o) is not None for o in outputs[1:])
    with torch.no_grad():
        assert all(attached_windows(o) is None for o in head(torch.randn(1, 3, 4, 4)))
