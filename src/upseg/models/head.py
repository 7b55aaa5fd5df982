"""The learned up-scaling head: m stages that take logits from r to R = r * 2^m.

Plain head (paper, Sec. III): stage k maps Y_{k-1} (B, Nc, s, s) to Y_k (B, Nc, 2s, 2s) with
ConvTranspose2d(Nc, Nc, 2, stride 2) then Conv2d(Nc, Nc, 3, padding 1) and no activation.
Parameters: 13 Nc^2 + 2 Nc per stage.

Inner-skip head (paper, Fig. 4), m >= 3: stages 1 and 2 are plain; every later stage k takes
cat[stretch_k(Y0), Y_{k-1}] (2 Nc channels), where stretch_k is a chain of k-1 plain stages
that brings the input-resolution logits Y0 to the size of Y_{k-1}. All weights are unshared
(the authors' code reuses one concat stage). Parameters, with P = 13 Nc^2 + 2 Nc:
    (m(m-1)/2 + 1) * P  +  (m - 2) * (17 Nc^2 + 2 Nc)
(143 for Nc = 1, m = 4; the paper quotes 159 for its variant, which its own code does not
reproduce either).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HeadInit = Literal["default", "upsample"]
HEAD_INITS: tuple[str, ...] = ("default", "upsample")


def _tap_selection() -> Tensor:
    """S[a, d, u, k] = 1 where output sub-pixel a (0, 1) under 3x3-conv tap d (offset d - 1)
    reads the transposed conv's tap k (0, 1) of the input pixel at offset u - 1."""
    selection = torch.zeros(2, 3, 3, 2)
    for a in range(2):
        for d in range(3):
            position = a + d - 1
            selection[a, d, position // 2 + 1, position % 2] = 1.0
    return selection


_TAPS = _tap_selection()


class UpscalingStage(nn.Sequential):
    """ConvTranspose2d(Cin, Nc, 2, stride 2) -> Conv2d(Nc, Nc, 3, padding 1); doubles H and W.

    The forward pass computes the same linear map in one step at the input resolution: a
    3x3 conv from Cin to 4 Nc channels (weights composed from the two layers) followed by
    pixel_shuffle(2). It moves less data than the two-layer form (no 4-channel tensor at 2x
    the size between the layers), which makes training steps with the head cheaper (see
    docs/benchmarks.md); parameters and state_dict are unchanged.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, num_classes, 2, stride=2),
            nn.Conv2d(num_classes, num_classes, 3, padding=1),
        )
        self.composed = True  # False: run the two layers one after the other

    def composed_weights(self) -> tuple[Tensor, Tensor]:
        """(4 Nc, Cin, 3, 3) weight applied to the input, (4 Nc, 1, 3, 3) weight applied to
        a map of ones (the transposed conv's bias); output channel 4 c + 2 a + b is class c
        at sub-pixel (a, b), the order pixel_shuffle expects."""
        transposed, conv = self[0], self[1]
        taps = _TAPS.to(conv.weight)
        out_channels = 4 * conv.out_channels
        weight = torch.einsum(
            "omxy,axuk,byvl,cmkl->oabcuv", conv.weight, taps, taps, transposed.weight
        )
        bias_taps = transposed.bias[:, None, None].expand(-1, 2, 2)
        bias_weight = torch.einsum("omxy,axuk,byvl,mkl->oabuv", conv.weight, taps, taps, bias_taps)
        return (
            weight.reshape(out_channels, transposed.in_channels, 3, 3),
            bias_weight.reshape(out_channels, 1, 3, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.composed:
            return self.layerwise_forward(x)
        weight, bias_weight = self.composed_weights()
        # A ones channel carries the transposed conv's bias; the zero padding then removes it
        # exactly where the 3x3 conv pads. Cheaper than adding a bias map at 4x the size.
        ones = x.new_ones(1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        out = F.conv2d(
            torch.cat([x, ones], dim=1),
            torch.cat([weight, bias_weight], dim=1),
            self[1].bias.repeat_interleave(4),
            padding=1,
        )
        return F.pixel_shuffle(out, 2)

    def layerwise_forward(self, x: Tensor) -> Tensor:
        """The two layers one after the other; the reference the composed form must equal."""
        return self[1](self[0](x))

    @torch.no_grad()
    def init_as_nearest_upsampling(self) -> None:
        """Make the stage exact 2x nearest up-sampling of its input.

        With Cin = g * Nc (g concatenated groups of Nc channels) it returns the mean of the g
        groups, up-sampled; for identical groups that is nearest up-sampling of any one.
        """
        transposed, conv = self[0], self[1]
        num_classes = conv.out_channels
        groups = transposed.in_channels // num_classes
        transposed.weight.zero_()  # (Cin, Nc, 2, 2)
        for g in range(groups):
            for c in range(num_classes):
                transposed.weight[g * num_classes + c, c] = 1.0 / groups
        conv.weight.zero_()  # (Nc, Nc, 3, 3)
        for c in range(num_classes):
            conv.weight[c, c, 1, 1] = 1.0
        transposed.bias.zero_()
        conv.bias.zero_()


def plain_head_num_params(num_classes: int, num_stages: int) -> int:
    """m (13 Nc^2 + 2 Nc): the paper's count for the plain head."""
    return num_stages * (13 * num_classes**2 + 2 * num_classes)


def skip_head_num_params(num_classes: int, num_stages: int) -> int:
    """Parameters of the inner-skip head with unshared weights (formula in the module doc)."""
    nc, m = num_classes, num_stages
    plain_stage = 13 * nc**2 + 2 * nc
    concat_stage = 17 * nc**2 + 2 * nc
    return (m * (m - 1) // 2 + 1) * plain_stage + (m - 2) * concat_stage


class UpscalingHead(nn.Module):
    """(B, Nc, r, r) logits -> list [Y0, Y1, ..., Ym] with Y_k of shape (B, Nc, r 2^k, r 2^k)."""

    def __init__(
        self, num_classes: int, num_stages: int, skip: bool = False, init: HeadInit = "default"
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if num_stages < 1:
            raise ValueError(
                f"num_stages must be at least 1, got {num_stages}: the head needs an output "
                "resolution above the input resolution (R = r * 2^m)"
            )
        if skip and num_stages < 3:
            raise ValueError(
                f"the inner-skip head needs at least 3 stages (R >= 8 r), got {num_stages}; "
                "use the plain head or a larger output size"
            )
        if init not in HEAD_INITS:
            raise ValueError(f"unknown head init {init!r}; choose one of {HEAD_INITS}")
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.skip = skip
        self.init = init
        first_skip = 3 if skip else num_stages + 1
        self.stages = nn.ModuleList(
            UpscalingStage(num_classes * (2 if k >= first_skip else 1), num_classes)
            for k in range(1, num_stages + 1)
        )
        # stretches[i] serves stage first_skip + i: k - 1 plain stages, Y0 -> size of Y_{k-1}.
        self.stretches = nn.ModuleList(
            nn.Sequential(*(UpscalingStage(num_classes, num_classes) for _ in range(k - 1)))
            for k in range(first_skip, num_stages + 1)
        )
        self.first_skip = first_skip
        if init == "upsample":
            for module in self.modules():
                if isinstance(module, UpscalingStage):
                    module.init_as_nearest_upsampling()

    def forward(self, logits: Tensor) -> list[Tensor]:
        outputs = [logits]
        for k, stage in enumerate(self.stages, start=1):
            previous = outputs[-1]
            if k >= self.first_skip:
                stretched = self.stretches[k - self.first_skip](logits)
                previous = torch.cat([stretched, previous], dim=1)
            outputs.append(stage(previous))
        return outputs

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_stages={self.num_stages}, "
            f"skip={self.skip}, init={self.init!r}"
        )
