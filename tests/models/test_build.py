import importlib
import pkgutil

import pytest
import torch
from torch import nn

import tests.models
from tests.models.backbone_tester import BackboneTester
from upseg.models import LowResSegmenter, build, list_backbones, register_backbone


def test_every_registered_backbone_has_a_tester() -> None:
    for info in pkgutil.iter_modules(tests.models.__path__):
        importlib.import_module(f"tests.models.{info.name}")
    tested = {cls.backbone for cls in BackboneTester.__subclasses__()}
    assert set(list_backbones()) <= tested


def test_registry_lists_the_four_backbones() -> None:
    assert {"unet", "elunet", "basicunet", "basicunetpp"} <= set(list_backbones())


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("unet", nn.Identity, 1, "again")


def test_auto_head() -> None:
    assert build("elunet", 1, 2, 16, base_width=4).head is None
    assert build("elunet", 1, 2, 16, 64, base_width=4).head.num_stages == 2
    assert build("elunet", 1, 2, 16, 256, head="skip", base_width=4).head.skip


def test_default_head_input_is_the_recipe() -> None:
    """The plain head reads the backbone's features unless told otherwise (the recipe chosen
    in docs/results.md); the skip head and a baseline read or are the logits."""
    assert build("elunet", 1, 2, 16, 64, base_width=4).head_input == "features"
    assert build("elunet", 1, 2, 16, 64, head="plain", base_width=4).head_input == "features"
    paper = build("elunet", 1, 2, 16, 64, head_input="logits", base_width=4)
    assert paper.head_input == "logits" and paper.logit_conv is None
    assert build("elunet", 1, 2, 16, 256, head="skip", base_width=4).head_input == "logits"
    assert build("elunet", 1, 2, 16, base_width=4).head_input == "logits"
    with pytest.raises(ValueError, match="needs the plain or guided head"):
        build("elunet", 1, 2, 16, 256, head="skip", head_input="features", base_width=4)


def test_baseline_records_output_size_and_predicts_at_input_size() -> None:
    model = build("elunet", 1, 2, 16, 256, head=None, base_width=4).eval()
    assert model.output_size == 256
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet"}, r"unknown backbone 'resnet'; registered backbones: .*elunet"),
        ({"input_size": 20}, r"multiple of 16; nearby sizes that work: 16, 32"),
        ({"input_size": 16, "output_size": 250}, r"sizes that work: 16 \(no head\) or 32, 64"),
        ({"input_size": 32, "output_size": 16}, r"not input_size 32 times a power of two"),
        ({"output_size": None, "head": "plain"}, r"needs output_size"),
        ({"output_size": 16, "head": "plain"}, r"needs output_size > input_size"),
        ({"output_size": 64, "head": "skip"}, r"at least 3 stages"),
        ({"head": "fancy"}, r"unknown head 'fancy'"),
        ({"num_classes": 0}, r"at least 1"),
        ({"head_init": "zeros"}, r"unknown head init"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs: dict, message: str) -> None:
    args = {
        "backbone": "elunet",
        "in_channels": 1,
        "num_classes": 2,
        "input_size": 16,
        "output_size": 256,
        "base_width": 4,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build(**args)


@pytest.mark.parametrize(
    ("backbone", "options", "message"),
    [
        ("unet", {"nope": 1}, r"backbone 'unet' has no option 'nope' \(its options: base_width\)"),
        ("elunet", {"base_width": "x"}, r"backbone 'elunet' cannot be built with options"),
        ("basicunet", {"nope": 1}, r"backbone 'basicunet' cannot be built.*'nope'"),
    ],
)
def test_bad_backbone_options_name_the_backbone_and_the_option(
    backbone: str, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build(backbone, 1, 2, 16, **options)


def test_input_that_does_not_fit_the_backbone() -> None:
    model = build("elunet", 1, 2, 16, 64, base_width=4)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 1, 24, 24))


class TinyNet(nn.Module):
    """Any module mapping (B, C, r, r) to (B, Nc, r, r) can carry the head."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_custom_module_carries_the_head() -> None:
    model = build(TinyNet(3, 2), 3, 2, 8, 64, head="skip")
    assert isinstance(model, LowResSegmenter)
    outputs = model.train()(torch.randn(2, 3, 8, 8))
    assert [o.shape[-1] for o in outputs] == [8, 16, 32, 64]


def test_custom_module_with_wrong_class_count() -> None:
    with pytest.raises(ValueError, match=r"logits of shape \(1, 4, 8, 8\), got \(1, 2, 8, 8\)"):
        build(TinyNet(3, 2), 3, 4, 8, 64)
