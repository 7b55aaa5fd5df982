"""The guided head: the plain head whose stages also read the full-resolution image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from upseg.engine import TrainConfig
from upseg.losses import MultiScaleLoss
from upseg.models.folded_head import fold_model
from upseg.models.guide import ImageGuide, guide_num_params, image_pyramid
from upseg.models.head import UpscalingHead
from upseg.models.methods import parse_method
from upseg.models.profile import count_parameters
from upseg.models.segmenter import build

TINY = {"base_width": 4}


def _plain_twin(guided: torch.nn.Module, head_input: str) -> torch.nn.Module:
    """The plain model with the guided model's weights (its stages without the guide inputs)."""
    plain = build("elunet", 2, 3, 16, 128, head="plain", head_input=head_input, **TINY)
    state = {}
    for name, value in guided.state_dict().items():
        if name.startswith("head.guides."):
            continue
        target = plain.state_dict()[name]
        state[name] = value[: target.shape[0]] if value.shape != target.shape else value
    plain.load_state_dict(state)
    return plain


@pytest.mark.parametrize("head_input", ["logits", "features"])
@pytest.mark.parametrize("init", ["upsample", "bilinear", "pytorch"])
def test_untrained_guided_model_is_the_plain_model_on_the_averaged_image(
    head_input: str, init: str
) -> None:
    guided = build(
        "elunet", 2, 3, 16, 128, head="guided", head_init=init, head_input=head_input, **TINY
    ).eval()
    plain = _plain_twin(guided, head_input).eval()
    image = torch.randn(2, 2, 128, 128)
    with torch.no_grad():
        out = guided(image)
        expected = plain(F.avg_pool2d(image, 8))
    assert out.shape == (2, 3, 128, 128)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_trained_guides_change_the_output_and_use_the_image() -> None:
    model = build("elunet", 1, 2, 16, 64, head="guided", **TINY)
    image = torch.randn(4, 1, 64, 64)
    target = (image[:, 0] > 0).long()  # detail the 16 x 16 input cannot hold
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(image)[-1], target)
        loss.backward()
        optimizer.step()
    assert model.head.guides[0].conv.weight.grad.abs().sum() > 0
    assert model.head.stages[-1][0].weight[model.head.stages[-1].main_channels :].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        # Same averaged image, different detail: only the guides can tell them apart.
        detail = torch.randn(1, 1, 64, 64)
        detail = detail - F.interpolate(F.avg_pool2d(detail, 4), scale_factor=4)
        base = image[:1]
        assert not torch.allclose(model(base), model(base + detail))


def test_image_pyramid_levels_are_area_averages() -> None:
    image = torch.randn(1, 2, 32, 32)
    levels = image_pyramid(image, 3)
    assert [t.shape[-1] for t in levels] == [4, 8, 16, 32]
    torch.testing.assert_close(levels[0], F.avg_pool2d(image, 8))
    assert levels[-1] is image


def test_guide_reads_every_image_pixel_of_the_blocks_around_it() -> None:
    guide = ImageGuide(1, 2, width=3)
    with torch.no_grad():
        guide.conv.bias.fill_(100.0)  # keep the ReLU open: every input shows in the gradient
    image = torch.zeros(1, 1, 8, 8, requires_grad=True)
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    out = guide(image, logits)
    assert out.shape == (1, 3, 4, 4)
    out[0, :, 1, 1].sum().backward()
    # position (1, 1) at s = 4 sees the 3 x 3 blocks around it: image pixels 0..5 at 2s = 8
    # in both directions (each its own channel), and logits 0..2
    touched = image.grad[0, 0] != 0
    assert touched[:6, :6].all() and not touched[6:].any() and not touched[:, 6:].any()
    assert (logits.grad[0, :, :3, :3] != 0).all() and not logits.grad[0, :, 3:].any()
    # the packing keeps each pixel apart: the gradient differs across a 2 x 2 block
    assert len(set(image.grad[0, 0, 2:4, 2:4].flatten().tolist())) == 4


@pytest.mark.parametrize(
    "image_channels, num_classes, num_stages", [(1, 2, 4), (4, 4, 4), (3, 2, 2)]
)
def test_guided_head_parameters(image_channels: int, num_classes: int, num_stages: int) -> None:
    plain = UpscalingHead(num_classes, num_stages)
    guided = UpscalingHead(num_classes, num_stages, guide_channels=image_channels)
    extra = guide_num_params(image_channels, num_classes, num_stages, 8)
    assert count_parameters(guided) == count_parameters(plain) + extra
    # by hand for LGG (1 channel, 2 classes, 4 stages): (4 + 2) 8 9 + 8 + 4 2 8 = 504 per stage
    assert guide_num_params(1, 2, 4, 8) == 4 * 504


def test_guided_model_takes_the_full_resolution_image_only() -> None:
    model = build("elunet", 1, 2, 16, 64, head="guided", **TINY).eval()
    assert model.guided and model.feed_size == 64 and model.input_size == 16
    with pytest.raises(ValueError, match="full-resolution image, 64x64"):
        model(torch.zeros(1, 1, 16, 16))
    plain = build("elunet", 1, 2, 16, 64, head="plain", **TINY)
    assert not plain.guided and plain.feed_size == 16
    assert (model.input_shape(3), plain.input_shape()) == ((3, 1, 64, 64), (1, 1, 16, 16))
    with pytest.raises(ValueError, match="needs the full-resolution image"):
        model.head(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="only a guided head"):
        plain.head(torch.zeros(1, 16, 16, 16), image=torch.zeros(1, 1, 64, 64))


def test_guided_names_and_settings() -> None:
    method = parse_method("elunet+guided@features")
    assert (method.head, method.input) == ("guided", "features")
    assert method.name == "elunet+guided@features"
    assert parse_method("elunet+guided").input == "logits"
    with pytest.raises(ValueError, match="guided head extends the plain head"):
        UpscalingHead(2, 3, skip=True, guide_channels=1)
    assert TrainConfig(store="s", out="o", head="guided").head_input == "features"
    with pytest.raises(ValueError, match="averages the full image down"):
        TrainConfig(store="s", out="o", head="guided", downsample="bilinear")


def test_fold_model_keeps_the_guided_stages() -> None:
    """The plain head of the same size folds; the guided one, not affine, keeps its stages."""
    plain = build("elunet", 1, 2, 16, 64, head="plain", **TINY)
    assert not isinstance(fold_model(plain).head, UpscalingHead)
    model = build("elunet", 1, 2, 16, 64, head="guided", **TINY)
    assert isinstance(fold_model(model).head, UpscalingHead)


def test_every_guide_learns_through_the_multiscale_loss() -> None:
    """Through the training path (composed stages, MultiScaleLoss) every stage's guide gets a
    gradient once the stages' guide weights have left zero."""
    model = build("elunet", 1, 2, 16, 64, head="guided", **TINY).train()
    with torch.no_grad():
        for stage in model.head.stages:
            stage[0].weight.add_(0.05 * torch.randn_like(stage[0].weight))
    mask = torch.randint(0, 2, (2, 64, 64), dtype=torch.uint8)
    MultiScaleLoss(2, base="dice_ce")(model(torch.randn(2, 1, 64, 64)), mask).backward()
    for guide in model.head.guides:
        assert guide.conv.weight.grad.abs().sum() > 0


def test_a_guided_model_runs_under_bf16_autocast() -> None:
    model = build("elunet", 1, 2, 16, 64, head="guided", **TINY)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    image = torch.randn(2, 1, 64, 64)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(image)
    assert [o.dtype for o in outputs][-1] == torch.bfloat16
    sum(o.float().mean() for o in outputs).backward()
    assert model.head.guides[-1].conv.weight.grad is not None
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(image).float()
    with torch.no_grad():
        torch.testing.assert_close(low, model(image), rtol=0.05, atol=0.05)
