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
from torch import Tensor, nn

HeadInit = Literal["default", "upsample"]
HEAD_INITS: tuple[str, ...] = ("default", "upsample")


class UpscalingStage(nn.Sequential):
    """ConvTranspose2d(Cin, Nc, 2, stride 2) -> Conv2d(Nc, Nc, 3, padding 1); doubles H and W."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, num_classes, 2, stride=2),
            nn.Conv2d(num_classes, num_classes, 3, padding=1),
        )

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
