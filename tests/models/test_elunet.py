from typing import ClassVar

import pytest

from tests.models.backbone_tester import BackboneTester
from upseg.models import build
from upseg.models.profile import count_macs, count_parameters


class TestELUNet(BackboneTester):
    backbone = "elunet"
    narrow_kwargs: ClassVar[dict | None] = {"base_width": 8}


@pytest.mark.parametrize(("size", "gmac"), [(16, 0.045), (32, 0.18), (256, 11.5)])
def test_elunet_macs_match_the_published_figures(size: int, gmac: float) -> None:
    model = build("elunet", 1, 1, size)
    assert count_macs(model, (1, 1, size, size)) / 1e9 == pytest.approx(gmac, rel=0.10)


def test_elunet_parameters_unshared() -> None:
    """3.19 M with the public port's two shared up-sampling paths; unshared adds ~0.15 M."""
    assert count_parameters(build("elunet", 1, 1, 16)) == pytest.approx(3.38e6, rel=0.01)
    assert count_parameters(build("elunet", 1, 1, 16, base_width=8)) == pytest.approx(
        0.845e6, rel=0.01
    )
