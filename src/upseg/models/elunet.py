"""ELU-Net (Deng et al., IEEE Access 2022), the backbone the paper extends.

Five levels of widths n, 2n, 4n, 8n, 16n (n = 16 by default). Decoder level i (0 = finest)
concatenates: the decoder output one level down, up-sampled x2; and every encoder output
E_j for j = i .. 3 (its own level and all deeper ones but the bottleneck), each brought to
level i by an UpChain (2^(j-i) transposed convs, then a 3x3 conv to width w_i); then a
DoubleConv. Every path has its own weights (the public port shares two of them).
Input sides must be divisible by 16. About 0.045 GMac at 16x16 and 11.5 GMac at 256x256
(n = 16, 1 channel in, 1 class out). `upsample="nearest"` (not the paper's) replaces every
transposed-conv chain by nearest up-sampling before its 3x3 conv (blocks.UpChain): the form
whose every layer runs in int8 in onnxruntime.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from upseg.models.blocks import DoubleConv, Encoder, UpChain


class ELUDecoderLevel(nn.Module):
    """Fuses the coarser decoder output with the encoder outputs of this and deeper levels."""

    def __init__(self, level: int, widths: list[int], upsample: str = "transposed") -> None:
        super().__init__()
        deepest_lateral = len(widths) - 2  # the bottleneck reaches the decoder only via `up`
        width = widths[level]
        self.up = UpChain(widths[level + 1], width, 2, upsample)
        self.laterals = nn.ModuleList(
            UpChain(widths[j], width, 2 ** (j - level), upsample)
            for j in range(level, deepest_lateral + 1)
        )
        self.fuse = DoubleConv(width * (1 + len(self.laterals)), width)
        self.level = level

    def forward(self, coarser: Tensor, encoder_features: list[Tensor]) -> Tensor:
        parts = [self.up(coarser)]
        parts += [
            lateral(encoder_features[self.level + k]) for k, lateral in enumerate(self.laterals)
        ]
        return self.fuse(torch.cat(parts, dim=1))


class ELUNet(nn.Module):
    """(B, in_channels, H, W) -> (B, num_classes, H, W) logits."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 16,
        upsample: str = "transposed",
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.encoder = Encoder(in_channels, widths)
        self.decoder = nn.ModuleList(
            ELUDecoderLevel(i, widths, upsample) for i in reversed(range(4))
        )
        self.out_conv = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        y = features[-1]
        for level in self.decoder:
            y = level(y, features)
        return self.out_conv(y)
