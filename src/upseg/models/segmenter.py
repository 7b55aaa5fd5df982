"""LowResSegmenter: a backbone plus an optional up-scaling head, and `build`, its factory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upseg.models.features import (
    DEFAULT_HEAD_INPUT,
    FEATURE_HEADS,
    resolve_head_input,
    split_logit_conv,
)
from upseg.models.folded_head import FoldedHead
from upseg.models.head import DEFAULT_HEAD_INIT, UpscalingHead
from upseg.models.methods import HEADS
from upseg.models.registry import get_backbone_spec, make_backbone


class LowResSegmenter(nn.Module):
    """Input (B, C, r, r), or (B, C, R, R) for a guided head (`feed_size`: the model averages
    it down to r for the backbone and the head reads it; upseg.models.guide). Training mode:
    list of logits at r, 2r, ..., R (one tensor at r for a baseline). Eval mode: only the
    finest logits tensor, so the model exports with one output.

    With `logit_conv` (head_input 'features') the backbone ends before its final 1x1 conv and
    returns its features (B, C_f, r, r); logit_conv makes the logits at r from them and the
    head's stage 1 reads the features. The logits at r are computed only where they are
    returned (training, forward_all): the eval-mode forward does not need them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: UpscalingHead | FoldedHead | None,
        input_size: int,
        output_size: int,
        divisor: int = 1,
        in_channels: int | None = None,
        logit_conv: nn.Conv2d | None = None,
    ) -> None:
        super().__init__()
        if logit_conv is not None and head is None:
            raise ValueError("a logit conv apart from the backbone needs a head to read features")
        self.in_channels = in_channels
        self.backbone = backbone
        self.logit_conv = logit_conv
        self.head = head
        self.input_size = input_size
        self.output_size = output_size
        self.divisor = divisor

    @property
    def num_stages(self) -> int:
        return 0 if self.head is None else self.head.num_stages

    @property
    def guided(self) -> bool:
        """True where the head reads the full-resolution image (the model's input is at R)."""
        return isinstance(self.head, UpscalingHead) and self.head.guided

    @property
    def feed_size(self) -> int:
        """Side of the image the model takes: R for a guided head, r otherwise."""
        return self.output_size if self.guided else self.input_size

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """(B, C, side, side) of the image the model takes (side: feed_size)."""
        return (batch, self.in_channels, self.feed_size, self.feed_size)

    @property
    def head_input(self) -> str:
        """'features' where the head reads the backbone's features, else 'logits'."""
        return DEFAULT_HEAD_INPUT if self.logit_conv is None else "features"

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.training or self.logit_conv is None or self.guided:  # guides read the logits
            outputs = self.forward_all(x)
            return outputs if self.training else outputs[-1]
        self._check_input(x)
        return self.head(self.backbone(x))[-1]

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Logits of every stage, coarse to fine, in either mode (for per-stage scoring)."""
        image = self._check_input(x)
        out = self.backbone(self._backbone_input(x))
        if self.head is None:
            return [out]
        guide = {} if image is None else {"image": image}  # a folded head takes no image
        if self.logit_conv is None:
            return self.head(out, **guide)
        return self.head(out, self.logit_conv(out), **guide)  # out: the features

    def _backbone_input(self, x: Tensor) -> Tensor:
        factor = self.output_size // self.input_size
        return F.avg_pool2d(x, factor) if self.guided and factor > 1 else x

    def _check_input(self, x: Tensor) -> Tensor | None:
        """The image a guided head reads (x itself), else None; a ValueError for a size the
        model cannot take."""
        height, width = x.shape[-2:]
        if self.guided:
            if (height, width) != (self.output_size, self.output_size):
                raise ValueError(
                    f"input of size {height}x{width}: a guided model takes the full-resolution "
                    f"image, {self.output_size}x{self.output_size} (it averages it down to "
                    f"{self.input_size} itself)"
                )
            return x
        if height % self.divisor or width % self.divisor:
            raise ValueError(
                f"input of size {height}x{width}: both sides must be multiples of "
                f"{self.divisor} for this backbone (the model was built for {self.input_size})"
            )
        return None


def _valid_sizes(divisor: int, near: int) -> str:
    lower = max(divisor, near // divisor * divisor)
    return ", ".join(str(s) for s in sorted({lower, lower + divisor}))


def _check_sizes(input_size: int, output_size: int, divisor: int, backbone: str) -> int:
    """Returns m = log2(R / r) after checking that r and R fit the backbone and each other."""
    if input_size < 1 or input_size % divisor:
        raise ValueError(
            f"input_size {input_size} does not fit backbone {backbone!r}: it must be a positive "
            f"multiple of {divisor}; nearby sizes that work: {_valid_sizes(divisor, input_size)}"
        )
    ratio, rest = divmod(output_size, input_size)
    if output_size < input_size or rest or ratio & (ratio - 1):
        options = ", ".join(str(input_size * 2**k) for k in range(1, 6))
        raise ValueError(
            f"output_size {output_size} is not input_size {input_size} times a power of two; "
            f"sizes that work: {input_size} (no head) or {options}"
        )
    return ratio.bit_length() - 1


def _check_custom_backbone(
    backbone: nn.Module, in_channels: int, num_classes: int, input_size: int
) -> None:
    """Runs one dummy forward: a custom backbone must map (1, C, r, r) to (1, Nc, r, r)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        backbone.train(was_training)
    expected = (1, num_classes, input_size, input_size)
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"custom backbone must map (1, {in_channels}, {input_size}, {input_size}) to "
            f"logits of shape {expected}, got {got}"
        )


def build(
    backbone: str | nn.Module,
    in_channels: int,
    num_classes: int,
    input_size: int,
    output_size: int | None = None,
    head: str | None = "auto",
    head_init: str = DEFAULT_HEAD_INIT,
    head_input: str | None = None,
    **backbone_kwargs,
) -> LowResSegmenter:
    """Build backbone + head. `backbone` is a registered name or any nn.Module that maps
    (B, in_channels, r, r) to (B, num_classes, r, r). `head=None` gives the baseline, which
    predicts at r; `output_size` (R) then only records the resolution it is scored at.
    `head="auto"` is the plain head when output_size > input_size, else the baseline.
    `head_input="features"`: the plain head reads the C_f channels that feed the backbone's
    final 1x1 logit conv instead of the logits (upseg.models.features finds that conv; a
    backbone without one is a ValueError); the backbone's logits at r are still returned.
    `head_input=None` is the recipe: features for the plain head, logits otherwise; pass
    "logits" for the paper's head (the method name `elunet+plain`).
    """
    if head == "auto":
        head = "plain" if output_size is not None and output_size > input_size else None
    if head is not None and head not in HEADS:
        choices = ", ".join(repr(h) for h in HEADS)
        raise ValueError(f"unknown head {head!r}; choose {choices} or None (baseline)")
    head_input = resolve_head_input(head, head_input)
    if head_input != DEFAULT_HEAD_INPUT and head not in FEATURE_HEADS:
        raise ValueError(
            f"head_input {head_input!r} needs the plain or guided head, not "
            f"{'a baseline' if head is None else repr(head)} (the inner-skip head reads the "
            "logits only)"
        )
    if in_channels < 1 or num_classes < 1:
        raise ValueError(
            f"in_channels and num_classes must be at least 1, got {in_channels} and {num_classes}"
        )
    if output_size is None:
        if head is not None:
            raise ValueError(
                f"head {head!r} needs output_size, the ground-truth resolution R "
                f"(e.g. {input_size * 16}); pass head=None for a baseline"
            )
        output_size = input_size
    if isinstance(backbone, nn.Module):
        if backbone_kwargs:
            raise ValueError("backbone keyword arguments only apply to registered backbone names")
        name, divisor, net = type(backbone).__name__, 1, backbone
    else:
        spec = get_backbone_spec(backbone)
        name, divisor = spec.name, spec.divisor
    num_stages = _check_sizes(input_size, output_size, divisor, name)
    if head is not None and num_stages == 0:
        raise ValueError(
            f"head {head!r} needs output_size > input_size ({input_size}); "
            f"try {input_size * 16}, or head=None for a baseline"
        )
    if isinstance(backbone, nn.Module):
        _check_custom_backbone(net, in_channels, num_classes, input_size)
    else:
        net = make_backbone(spec.name, in_channels, num_classes, **backbone_kwargs)
    logit_conv = None
    if head_input == "features":
        logit_conv = split_logit_conv(net, in_channels, num_classes, input_size, name)
    upscaler = (
        None
        if head is None
        else UpscalingHead(
            num_classes,
            num_stages,
            skip=head == "skip",
            init=head_init,
            logit_conv=logit_conv,
            guide_channels=in_channels if head == "guided" else 0,
        )
    )
    return LowResSegmenter(
        net, upscaler, input_size, output_size, divisor, in_channels, logit_conv=logit_conv
    )
