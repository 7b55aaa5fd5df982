import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from upseg.data.resize import stretch_logits
from upseg.models import (
    DEFAULT_HEAD_INIT,
    HEAD_INITS,
    UpscalingHead,
    UpscalingStage,
    method_name,
    plain_head_num_params,
    skip_head_num_params,
)
from upseg.models.profile import count_parameters
from upseg.models.subpixel import attached_windows, window_shuffle, window_view


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


def _bilinear_x2(x: Tensor, steps: int = 1) -> Tensor:
    for _ in range(steps):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return x


def _stretch(x: Tensor, scale: int) -> Tensor:
    """The baseline's one bilinear stretch of square logits by `scale`."""
    assert x.shape[-2] == x.shape[-1]
    return stretch_logits(x, x.shape[-1] * scale)


def _inside(x: Tensor, border: int) -> Tensor:
    """x without `border` pixels on each side of its last two dimensions."""
    height, width = x.shape[-2:]
    return x[..., border : height - border, border : width - border]


def _depth(differs: Tensor) -> int:
    """How far in from the nearest side (1 = the outermost ring) the deepest True pixel of a
    (..., H, W) mask lies; 0 when there is none."""
    height, width = differs.shape[-2:]
    rows = torch.arange(height).view(height, 1)
    cols = torch.arange(width).view(1, width)
    depth = torch.minimum(
        torch.minimum(rows, height - 1 - rows), torch.minimum(cols, width - 1 - cols)
    )
    depth = (depth + 1).expand_as(differs)
    return int(depth[differs].max()) if differs.any() else 0


def test_bilinear_is_an_init_name_but_not_the_default() -> None:
    assert "bilinear" in HEAD_INITS and DEFAULT_HEAD_INIT == "upsample"
    assert UpscalingHead(2, 2, init="bilinear").init == "bilinear"
    assert method_name("elunet", "plain", "bilinear") == "elunet+plain:bilinear"
    assert method_name("elunet", "skip", "upsample") == "elunet+skip"


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("num_classes", [1, 3, 5])
@pytest.mark.parametrize("size", [(2, 2), (5, 7), (16, 16)])
def test_bilinear_stage_is_interpolate_inside_a_one_pixel_border(
    num_classes: int, size: tuple[int, int], groups: int
) -> None:
    """One stage is F.interpolate(bilinear, align_corners=False) of the mean of its input
    groups but on the outermost ring, where zero padding makes it 3/4 (corners 9/16) of it."""
    stage = UpscalingStage(groups * num_classes, num_classes)
    stage.init_as_bilinear_upsampling()
    x = torch.randn(2, groups * num_classes, *size, dtype=torch.float64) + 3.0
    with torch.no_grad():
        got = stage.double()(x)
    expected = _bilinear_x2(x.view(2, groups, num_classes, *size).mean(1))
    torch.testing.assert_close(_inside(got, 1), _inside(expected, 1), rtol=0, atol=1e-12)
    # The ring: 3/4 of interpolate along each side, (3/4)^2 at the corners.
    height, width = expected.shape[-2:]
    row_factor, col_factor = torch.ones(height, dtype=x.dtype), torch.ones(width, dtype=x.dtype)
    row_factor[[0, -1]] = col_factor[[0, -1]] = 0.75
    ratio = got / expected  # the input is positive, far from 0
    factor = (row_factor[:, None] * col_factor).expand_as(ratio)
    torch.testing.assert_close(ratio, factor, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("size", [(2, 2), (5, 7), (9, 4)])
def test_bilinear_plain_head_is_repeated_bilinear_steps_inside_its_border_band(
    num_classes: int, num_stages: int, size: tuple[int, int]
) -> None:
    """Y_k equals k bilinear x2 steps except on a band of exactly 2^k - 1 pixels along each
    side: stage k's zero padding spoils its outer ring, and each x2 step widens what the
    previous stages spoilt from b to 2 b pixels (every output pixel reads the input pixels at
    half its distance, rounded up), so b_k = 2 b_(k-1) + 1."""
    head = UpscalingHead(num_classes, num_stages, init="bilinear").double().eval()
    x = torch.randn(2, num_classes, *size, dtype=torch.float64)
    with torch.no_grad():
        outputs = head(x)
    for k, output in enumerate(outputs):
        expected = _bilinear_x2(x, k)
        band = 2**k - 1
        torch.testing.assert_close(
            _inside(output, band), _inside(expected, band), rtol=0, atol=1e-12
        )
        # ... and not one pixel less: the innermost ring of the band is off.
        assert _depth((output - expected).abs() > 1e-9) == band


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_bilinear_head_agrees_with_one_direct_stretch_on_ramps(num_stages: int) -> None:
    """The baseline is scored after one bilinear stretch by S = 2^m (resize.stretch_logits);
    the head's m x2 steps sample the same positions and agree with it on affine logits inside
    the head's border band, so the two are aligned (no sub-pixel shift)."""
    scale, band = 2**num_stages, 2**num_stages - 1
    head = UpscalingHead(2, num_stages, init="bilinear").double().eval()
    rows = torch.arange(10, dtype=torch.float64).view(10, 1)
    cols = torch.arange(10, dtype=torch.float64).view(1, 10)
    ramps = torch.stack([0.3 * rows - 0.7 * cols + 1.5, -2.0 * rows + 0.1 * cols])[None]
    with torch.no_grad():
        got = head(ramps)[-1]
    expected = _stretch(ramps, scale)
    torch.testing.assert_close(_inside(got, band), _inside(expected, band), rtol=0, atol=1e-12)
    if num_stages == 1:  # one step is the stretch itself
        x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
        with torch.no_grad():
            got = head(x)[-1]
        torch.testing.assert_close(_inside(got, 1), _inside(_stretch(x, 2), 1), rtol=0, atol=1e-12)


def test_bilinear_head_versus_one_direct_stretch_on_random_logits() -> None:
    """What separates the bilinear start from the baseline's stretch at m = 4 (16 x): m x2
    steps smooth more than one x16 step (their kernel tends to a quadratic B-spline). Inside
    the border band, the difference is a fixed kernel per output sub-pixel applied to the
    logits: its L1 norm is at most 0.752, so |head - stretch| <= 0.752 max|logits|, and for
    i.i.d. N(0, 1) logits its mean absolute size is 0.112 (from the kernel's L2 norms; the
    nearest start, 'upsample', is 0.43 from the stretch on the same logits)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 32, 32, generator=generator, dtype=torch.float64)
    band = 15
    with torch.no_grad():
        bilinear = UpscalingHead(2, 4, init="bilinear").double().eval()(x)[-1]
        nearest = UpscalingHead(2, 4, init="upsample").double().eval()(x)[-1]
    direct = _stretch(x, 16)
    gap = _inside(bilinear - direct, band).abs()
    assert gap.max() <= 0.752 * x.abs().max()
    assert 0.10 <= gap.mean() <= 0.125
    assert _inside(nearest - direct, band).abs().mean() > 3 * gap.mean()


@pytest.mark.parametrize("num_stages", [3, 4, 5])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_bilinear_skip_head_starts_as_the_plain_bilinear_head(
    num_classes: int, num_stages: int
) -> None:
    """Stretch chains bilinear, concat stages on the mean of two equal inputs: the skip head
    starts equal to the plain bilinear head everywhere (so inside the band too)."""
    x = torch.randn(2, num_classes, 6, 5)
    with torch.no_grad():
        skip = UpscalingHead(num_classes, num_stages, skip=True, init="bilinear")(x)
        plain = UpscalingHead(num_classes, num_stages, init="bilinear")(x)
    assert len(skip) == len(plain) == num_stages + 1
    for got, expected in zip(skip, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


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
