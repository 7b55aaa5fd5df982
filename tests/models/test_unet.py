from typing import ClassVar

import pytest

from tests.models.backbone_tester import BackboneTester
from upseg.models import build
from upseg.models.profile import count_macs, count_parameters


class TestUNet(BackboneTester):
    backbone = "unet"
    narrow_kwargs: ClassVar[dict | None] = {"base_width": 8}


def test_unet_counts_at_320() -> None:
    """31.0 M parameters and 75.1 GMac (paper Table IV prints 71.16; every counter we know
    gives 75.1 for this architecture, so the table must count a slightly different model)."""
    model = build("unet", 1, 1, 320)
    assert count_parameters(model) == pytest.approx(31.04e6, rel=0.001)
    assert count_macs(model, (1, 1, 320, 320)) / 1e9 == pytest.approx(75.1, rel=0.01)


def test_unet_base_width_is_configurable() -> None:
    small = build("unet", 1, 2, 16, base_width=8)
    assert count_parameters(small) < count_parameters(build("unet", 1, 2, 16)) / 50
