"""U-Net (Ronneberger et al., MICCAI 2015) with 'same' padding and BatchNorm.

Widths w, 2w, 4w, 8w, 16w (w = 64 by default), max-pool down, 2x2 transposed conv up,
1x1 conv to `num_classes` logits. Input sides must be divisible by 16.
At 320x320 with 1 channel in and 1 class out: 31.0 M parameters, about 75.1 GMac.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from upseg.models.blocks import DoubleConv, Encoder


class UNetUpBlock(nn.Module):
    """Transposed conv halves the width and doubles the size; concat the skip; DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.fuse = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """(B, in_channels, H, W) -> (B, num_classes, H, W) logits."""

    def __init__(self, in_channels: int, num_classes: int, base_width: int = 64) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.encoder = Encoder(in_channels, widths)
        self.decoder = nn.ModuleList(
            UNetUpBlock(widths[i + 1], widths[i]) for i in reversed(range(4))
        )
        self.out_conv = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            y = block(y, skip)
        return self.out_conv(y)
