"""MONAI's 2-D BasicUNet and BasicUNetPlusPlus as upseg backbones.

Both default to BatchNorm here instead of MONAI's instance norm: at a 16x16 input the
bottleneck is 1x1, where instance norm is undefined. Pass norm="instance" for inputs >= 32.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

DEFAULT_FEATURES = (32, 32, 64, 128, 256, 32)
DEFAULT_NORM = "batch"


def basic_unet(
    in_channels: int,
    num_classes: int,
    features: Sequence[int] = DEFAULT_FEATURES,
    norm: str | tuple = DEFAULT_NORM,
    **kwargs,
) -> nn.Module:
    """MONAI BasicUNet, 2-D: (B, in_channels, H, W) -> (B, num_classes, H, W)."""
    from monai.networks.nets import BasicUNet  # MONAI is imported only when used (~1 s)

    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        features=tuple(features),
        norm=norm,
        **kwargs,
    )


class FinestOutput(nn.Module):
    """Wraps a network that returns a list of outputs and keeps the first (full-size) one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[0]


def basic_unet_plusplus(
    in_channels: int,
    num_classes: int,
    features: Sequence[int] = DEFAULT_FEATURES,
    norm: str | tuple = DEFAULT_NORM,
    **kwargs,
) -> nn.Module:
    """MONAI BasicUNetPlusPlus, 2-D, without deep supervision outputs."""
    from monai.networks.nets import BasicUNetPlusPlus

    net = BasicUNetPlusPlus(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        features=tuple(features),
        norm=norm,
        deep_supervision=False,
        **kwargs,
    )
    return FinestOutput(net)
