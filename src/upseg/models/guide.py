"""Image guidance for the up-scaling head: each stage also looks at the full-resolution image.

The plain head only sees what the backbone computed from the r x r input, so it can sharpen a
boundary the backbone found but cannot restore what shrinking the image removed. The guided
head (method `backbone+guided`) gives every stage a few channels computed from the image
itself: stage k, from Y_{k-1} (B, Nc, s, s) to Y_k (B, Nc, 2s, 2s), also reads

    G_k = ReLU(conv3x3(cat[space_to_depth_2(I_2s), Y_{k-1}]))      (B, h, s, s)

where I_2s is the image averaged down to the stage's output size 2s (the full image at the
last stage) and space_to_depth_2 packs each 2 x 2 block into 4 C channels, so every output
sub-pixel of the stage can see its own pixel of the image. The guided model therefore takes the
full-resolution image (B, C, R, R) and averages it down to r for the backbone itself ('area'
downsampling, the store's default). Cost per stage: (4 C + Nc) h 9 + h parameters for the
guide conv, 4 Nc h more for the stage's transposed conv; multiply-adds grow with s^2 (largest
at the last stage, whose input is R / 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GUIDE_WIDTH = 8  # h: guide channels per stage


class ImageGuide(nn.Module):
    """(B, C, 2s, 2s) image and (B, Nc, s, s) logits -> (B, h, s, s) guide features."""

    def __init__(self, image_channels: int, num_classes: int, width: int = GUIDE_WIDTH) -> None:
        super().__init__()
        if image_channels < 1 or width < 1:
            raise ValueError(
                f"image_channels and width must be at least 1, got {image_channels} and {width}"
            )
        self.conv = nn.Conv2d(4 * image_channels + num_classes, width, 3, padding=1)

    def forward(self, image: Tensor, logits: Tensor) -> Tensor:
        packed = F.pixel_unshuffle(image, 2).to(logits.dtype)
        return F.relu(self.conv(torch.cat([packed, logits], 1)))


def guide_num_params(image_channels: int, num_classes: int, num_stages: int, width: int) -> int:
    """Parameters the guidance adds to a plain head: per stage the guide conv and the stage's
    transposed-conv weights on the guide channels."""
    per_stage = (4 * image_channels + num_classes) * width * 9 + width + 4 * num_classes * width
    return num_stages * per_stage


def image_pyramid(image: Tensor, num_stages: int) -> list[Tensor]:
    """[I_r, I_2r, ..., I_R] for an image (B, C, R, R) with R = r 2^m: each level the 2 x 2
    average of the next (the area downsampling of the store, up to float rounding)."""
    levels = [image]
    for _ in range(num_stages):
        levels.append(F.avg_pool2d(levels[-1], 2))
    return levels[::-1]
