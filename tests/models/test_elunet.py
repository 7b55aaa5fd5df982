from typing import ClassVar

import pytest
import torch
from torch import nn

from tests.models.backbone_tester import BackboneTester
from upseg.models import build
from upseg.models.blocks import UpChain
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


class TestELUNetNearest(BackboneTester):
    """The int8-friendly form: every up-sampling chain is nearest up-sampling + 3x3 conv."""

    backbone = "elunet"
    backbone_kwargs: ClassVar[dict] = {"upsample": "nearest"}
    narrow_kwargs: ClassVar[dict | None] = {"base_width": 8, "upsample": "nearest"}


def test_nearest_elunet_has_no_transposed_conv_and_costs_less() -> None:
    nearest = build("elunet", 1, 2, 64, upsample="nearest")
    transposed = build("elunet", 1, 2, 64)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in nearest.modules())
    assert count_parameters(nearest) < count_parameters(transposed)
    assert count_macs(nearest, (1, 1, 64, 64)) < count_macs(transposed, (1, 1, 64, 64))
    with pytest.raises(ValueError, match="unknown upsample 'bicubic'"):
        build("elunet", 1, 2, 64, upsample="bicubic")


@pytest.mark.parametrize("factor", [2, 4])
def test_nearest_chain_is_the_transposed_chain_with_tied_taps(factor: int) -> None:
    """A transposed chain whose kernels have four equal taps, followed by the 3x3 conv, equals
    nearest up-sampling + one 3x3 conv with the chain's linear map folded into its weights,
    away from the border (there the zero padding meets the chain's bias)."""
    torch.manual_seed(factor)
    cin, cout = 3, 5
    transposed = UpChain(cin, cout, factor)
    nearest = UpChain(cin, cout, factor, upsample="nearest")
    matrix, offset = torch.eye(cin), torch.zeros(cin)  # the chain as y = matrix @ x + offset
    with torch.no_grad():
        for layer in list(transposed)[:-1]:
            tap = torch.randn(cin, cin) * 0.5  # (in, out), the same at all four taps
            layer.weight.copy_(tap[:, :, None, None].expand(cin, cin, 2, 2))
            layer.bias.normal_()
            matrix, offset = tap.T @ matrix, tap.T @ offset + layer.bias
        conv, folded = transposed[-1], nearest[-1]
        folded.weight.copy_(torch.einsum("oikl,ij->ojkl", conv.weight, matrix))
        folded.bias.copy_(conv.bias + torch.einsum("oikl,i->o", conv.weight, offset))
    x = torch.randn(2, cin, 6, 6)
    a, b = transposed(x), nearest(x)
    assert a.shape == b.shape == (2, cout, 6 * factor, 6 * factor)
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[..., 0, :], b[..., 0, :], atol=1e-3)  # the border differs
