"""The features head: stage 1 reads the C_f channels that feed the backbone's logit conv."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from upseg.losses import MultiScaleLoss
from upseg.models import (
    HEAD_INITS,
    Method,
    UpscalingHead,
    build,
    list_backbones,
    method_name,
    parse_method,
    plain_head_num_params,
)
from upseg.models.features import split_logit_conv
from upseg.models.profile import count_macs, count_parameters

NARROW = {
    "unet": {"base_width": 4},
    "elunet": {"base_width": 4},
    "basicunet": {"features": (4, 4, 8, 8, 16, 6)},
    "basicunetpp": {"features": (4, 4, 8, 8, 16, 6)},
}
# where each registered backbone keeps its logit conv, and that conv's input width C_f
LOGIT_CONVS = {
    "unet": ("out_conv", 4),
    "elunet": ("out_conv", 4),
    "basicunet": ("final_conv", 6),
    "basicunetpp": ("net.final_conv_0_4", 6),
}


def test_every_registered_backbone_is_covered() -> None:
    assert sorted(LOGIT_CONVS) == sorted(NARROW) == list_backbones()


@pytest.mark.parametrize("backbone", sorted(LOGIT_CONVS))
def test_the_logit_conv_of_every_backbone_is_found_and_split_off(backbone: str) -> None:
    path, width = LOGIT_CONVS[backbone]
    model = build(backbone, 2, 3, 16, 64, head_input="features", **NARROW[backbone])
    intact = build(backbone, 2, 3, 16, None, **NARROW[backbone])
    assert isinstance(model.backbone.get_submodule(path), nn.Identity)
    assert isinstance(intact.get_submodule(f"backbone.{path}"), nn.Conv2d)
    assert model.logit_conv.in_channels == width and model.logit_conv.out_channels == 3
    assert model.head.in_channels == width and model.head.stages[0][0].in_channels == width
    # the same backbone weights: the features through the conv are the logits
    intact.backbone.get_submodule(path).load_state_dict(model.logit_conv.state_dict())
    model.backbone.load_state_dict(intact.backbone.state_dict(), strict=False)
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        features = model.eval().backbone(x)
        assert features.shape == (2, width, 16, 16)
        torch.testing.assert_close(model.logit_conv(features), intact.eval()(x))
        torch.testing.assert_close(model.forward_all(x)[0], intact(x))


class _Squashed(nn.Module):
    """Logits that pass through one more step after the last conv."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(2, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.out(self.body(x)))


class _Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(2, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Conv2d(3, 3, 1)
        self.stem = nn.Conv2d(2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.out(self.stem(x)))


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (_Squashed, r"cannot find the conv that makes its logits"),
        (_Wide, r"logit conv 'out' is Conv2d\(8, 3, kernel_size=\(3, 3\).*needs a 1x1 conv"),
        (_Shared, r"logit conv 'out' runs more than once"),
        (lambda: nn.Conv2d(2, 3, 1), r"is a single conv"),
    ],
)
def test_a_backbone_without_a_usable_logit_conv_is_refused(module, message: str) -> None:
    net = module()
    before = dict(net.named_modules())
    with pytest.raises(ValueError, match=message):
        build(net, 2, 3, 16, 64, head_input="features")
    assert dict(net.named_modules()) == before  # left as it was


def test_a_custom_module_with_a_final_1x1_conv_works() -> None:
    net = _Plain()
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        expected = net(x)
    model = build(net, 2, 3, 16, 32, head_input="features").eval()
    assert isinstance(model.backbone.layers[2], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_all(x)[0], expected)
        assert model(x).shape == (2, 3, 32, 32)


def test_the_split_runs_on_the_meta_device_and_leaves_the_global_rng_alone() -> None:
    with torch.device("meta"):
        model = build("elunet", 2, 3, 16, 64, head_input="features", base_width=4)
    assert model.logit_conv.weight.is_meta and model.head.in_channels == 4
    net = _Plain()
    state = torch.random.get_rng_state()
    split_logit_conv(net, 2, 3, 16, "plain")
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("init", ["upsample", "bilinear"])
@pytest.mark.parametrize(("classes", "stages", "width"), [(1, 1, 5), (3, 2, 8), (2, 4, 2)])
def test_features_head_starts_as_the_logit_conv_then_the_logits_head(
    init: str, classes: int, stages: int, width: int
) -> None:
    conv = nn.Conv2d(width, classes, 1)
    head = UpscalingHead(classes, stages, init=init, logit_conv=conv)
    reference = UpscalingHead(classes, stages, init=init)
    features = torch.randn(2, width, 6, 5)
    with torch.no_grad():
        logits = conv(features)
        got, expected = head(features, logits), reference(logits)
    assert got[0] is logits
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # only stage 1 differs from the logits head: it holds the conv on each of its sub-pixels
    transposed = head.stages[0][0]
    assert transposed.weight.shape == (width, classes, 2, 2)
    for k in range(2):
        for j in range(2):
            torch.testing.assert_close(transposed.weight[:, :, k, j], conv.weight[:, :, 0, 0].T)
    torch.testing.assert_close(transposed.bias, conv.bias)


def test_a_logit_conv_without_bias_starts_with_a_zero_bias() -> None:
    conv = nn.Conv2d(4, 2, 1, bias=False)
    head = UpscalingHead(2, 2, logit_conv=conv)
    assert (head.stages[0][0].bias == 0).all()
    features = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(head(features)[-1], UpscalingHead(2, 2)(conv(features))[-1])


def test_pytorch_init_keeps_pytorch_layers_on_the_wider_stage() -> None:
    conv = nn.Conv2d(6, 2, 1)
    torch.manual_seed(1)
    head = UpscalingHead(2, 2, init="pytorch", logit_conv=conv)
    weight = head.stages[0][0].weight
    assert weight.shape == (6, 2, 2, 2) and weight.std() > 0
    assert not torch.allclose(weight, conv.weight[:, :, 0, 0].T[:, :, None, None].expand_as(weight))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build("elunet", 1, 2, 16, 128, head="skip", head_input="features"), "plain"),
        (lambda: build("elunet", 1, 2, 16, None, head=None, head_input="features"), "baseline"),
        (lambda: build("elunet", 1, 2, 16, 64, head_input="pixels"), "unknown head input"),
        (
            lambda: UpscalingHead(2, 3, skip=True, logit_conv=nn.Conv2d(8, 2, 1)),
            "inner-skip head reads the logits only",
        ),
        (lambda: UpscalingHead(2, 3, logit_conv=nn.Conv2d(8, 3, 1)), "not the 2 classes"),
        (lambda: UpscalingHead(2, 3, logit_conv=nn.Conv2d(8, 2, 1, stride=2)), "1x1 conv"),
    ],
)
def test_what_a_features_head_refuses(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_parameters_and_macs_count_the_wider_first_stage() -> None:
    """ELU-Net (C_f = 4 here), 2 classes, 16 -> 256: the features head has 4 Nc (C_f - Nc)
    more parameters; in inference it skips the logit conv at r and its stage 1 reads C_f
    channels: 4 C_f Nc r^2 MACs instead of 4 Nc^2 r^2 + C_f Nc r^2."""
    nc, cf, r = 2, 4, 16
    torch.manual_seed(0)
    logits = build("elunet", 1, nc, r, 256, head_input="logits", base_width=4)
    torch.manual_seed(0)
    features = build("elunet", 1, nc, r, 256, head_input="features", base_width=4)
    assert count_parameters(features.head) == plain_head_num_params(nc, 4, cf)
    assert count_parameters(logits.head) == plain_head_num_params(nc, 4)
    assert count_parameters(features) - count_parameters(logits) == 4 * nc * (cf - nc)
    shape = (1, 1, r, r)
    extra = 4 * cf * nc * r * r - (4 * nc * nc * r * r + cf * nc * r * r)
    assert count_macs(features, shape) - count_macs(logits, shape) == extra


def test_training_scores_the_logits_at_r_and_every_stage() -> None:
    torch.manual_seed(0)
    model = build("elunet", 2, 3, 16, 64, head_input="features", base_width=4).train()
    outputs = model(torch.randn(2, 2, 16, 16))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, s, s) for s in (16, 32, 64)]
    mask = torch.randint(0, 3, (2, 64, 64))
    MultiScaleLoss(3)(outputs, mask).backward()
    for name, p in model.named_parameters():
        if not name.startswith("backbone.") or "bias" not in name:
            assert p.grad is not None, name
    # a checkpoint of this model loads into a model built the same way
    again = build("elunet", 2, 3, 16, 64, head_input="features", base_width=4)
    again.load_state_dict(model.state_dict())


LEGACY = {
    "elunet": Method("elunet"),
    "elunet+plain": Method("elunet", "plain"),
    "elunet+skip": Method("elunet", "skip"),
    "elunet+plain:pytorch": Method("elunet", "plain", "pytorch"),
    "elunet+plain:bilinear": Method("elunet", "plain", "bilinear"),
    "unet+skip:bilinear": Method("unet", "skip", "bilinear"),
}


def test_existing_method_names_keep_their_meaning() -> None:
    for name, method in LEGACY.items():
        assert parse_method(name) == method and method.name == name
        assert method.input == "logits"


@pytest.mark.parametrize("init", HEAD_INITS)
def test_features_names_round_trip_with_every_init(init: str) -> None:
    name = method_name("elunet", "plain", init, "features")
    suffix = "" if init == "upsample" else f":{init}"
    assert name == f"elunet+plain@features{suffix}"
    method = parse_method(name)
    assert method == Method("elunet", "plain", init, "features") and method.name == name
    # the part before ':' names the architecture, as upseg.deploy.plan reads it
    assert name.split(":", 1)[0] == "elunet+plain@features"


def test_method_name_variants_parse_to_their_canonical_names() -> None:
    assert parse_method("elunet+plain@logits").name == "elunet+plain"
    assert parse_method("elunet+plain@features:upsample").name == "elunet+plain@features"
    assert parse_method("elunet+plain@features:default").name == "elunet+plain@features:pytorch"
    assert method_name("elunet", None, "pytorch", "logits") == "elunet"


@pytest.mark.parametrize(
    "text",
    [
        "elunet+skip@features",
        "elunet@features",
        "elunet+plain@",
        "elunet+plain@pixels",
        "elunet+plain:features",
        "elunet+plain:bilinear@features",
        "elunet+plain@features@features",
    ],
)
def test_malformed_features_names_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_method(text)
