"""Convolution blocks shared by the backbones (all 2-D, 'same' padding)."""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DownBlock(nn.Sequential):
    """2x2 max-pool then DoubleConv: (B, Cin, H, W) -> (B, Cout, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Encoder(nn.Module):
    """Input DoubleConv plus len(widths)-1 DownBlocks; returns every level, finest first."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(DownBlock(cin, cout) for cin, cout in pairwise(widths))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


UPSAMPLINGS: tuple[str, ...] = ("transposed", "nearest")


class UpChain(nn.Sequential):
    """`log2(factor)` ConvTranspose2d(2, stride 2) layers at the input width, then one 3x3 conv
    (`upsample="transposed"`, ELU-Net's); or, with `upsample="nearest"`, one nearest
    up-sampling by `factor` then the 3x3 conv. The nearest form is the transposed chain with
    the four taps of every kernel tied, its 1x1 part folded into the 3x3 conv (no activation
    lies between them): fewer weights and MACs, and every layer has an int8 kernel in
    onnxruntime, which has no int8 transposed convolution.

    (B, Cin, H, W) -> (B, Cout, H*factor, W*factor). With factor 1 it is a plain 3x3 conv.
    """

    def __init__(
        self, in_channels: int, out_channels: int, factor: int, upsample: str = "transposed"
    ) -> None:
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"UpChain factor must be a power of two, got {factor}")
        if upsample not in UPSAMPLINGS:
            raise ValueError(f"unknown upsample {upsample!r}; choose one of {UPSAMPLINGS}")
        layers: list[nn.Module] = []
        if upsample == "nearest" and factor > 1:
            layers.append(nn.Upsample(scale_factor=factor, mode="nearest"))
        elif upsample == "transposed":
            layers += [
                nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
                for _ in range(factor.bit_length() - 1)
            ]
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        super().__init__(*layers)
