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

Features head (plain only, beyond the paper): stage 1 reads the C_f channels that feed the
backbone's final 1x1 logit conv (upseg.models.features) instead of the Nc logits, so its
ConvTranspose2d is (C_f, Nc, 2, 2): 4 Nc (C_f - Nc) more parameters than the plain head. Y0 is
still the backbone's logits. Its 'upsample' and 'bilinear' starts apply the logit conv on
every sub-pixel first, so the untrained features head equals the logits head.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from upseg.models.features import check_logit_conv
from upseg.models.guide import GUIDE_WIDTH, ImageGuide, image_pyramid
from upseg.models.subpixel import StageTerms, attach_windows, window_shuffle

HeadInit = Literal["upsample", "bilinear", "pytorch"]
HEAD_INITS: tuple[str, ...] = ("upsample", "bilinear", "pytorch")
DEFAULT_HEAD_INIT = "upsample"
# "default" named PyTorch's initialisation while that was the default; configs saved then keep
# their meaning.
_LEGACY_HEAD_INITS = {"default": "pytorch"}


def resolve_head_init(name: str) -> str:
    """The head initialisation `name` stands for: 'upsample' (every stage starts as exact
    nearest up-sampling), 'bilinear' (every stage starts as bilinear up-sampling, exact but
    for the border) or 'pytorch' (PyTorch's layer initialisation, as in the paper)."""
    name = _LEGACY_HEAD_INITS.get(name, name)
    if name not in HEAD_INITS:
        raise ValueError(f"unknown head init {name!r}; choose one of {HEAD_INITS}")
    return name


def _tap_selection() -> Tensor:
    """S[a, d, e, k] = 1 where output sub-pixel a (0, 1) under 3x3-conv tap d (offset d - 1)
    reads the transposed conv's tap k (0, 1) of the input pixel at offset a + e - 1: every
    sub-pixel depends on a 2 x 2 block of input pixels only (e = 0, 1)."""
    selection = torch.zeros(2, 3, 2, 2)
    for a in range(2):
        for d in range(3):
            position = a + d - 1
            selection[a, d, position // 2 + 1 - a, position % 2] = 1.0
    return selection


_TAPS = _tap_selection()
# The 3x3 taps (x, y) of the conv against (a, b, e, f, k, l): sub-pixel (a, b), window tap
# (e, f), transposed-conv tap (k, l); one matrix product then composes the two layers.
_TAP_PAIRS = torch.einsum("axek,byfl->xyabefkl", _TAPS, _TAPS).reshape(9, 64)
# Which taps e of a 2 x 2 window read the input rather than the zero padding, for the first
# window row (or column), the inner ones and the last: tap e of row i reads input row i + e - 1.
_EDGE_TAPS = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])


class _AddBorder(torch.autograd.Function):
    """windows (B, C, H, W) in place: += rows (C, 2, W) on rows 0 and H - 1, += cols (C, 2)
    on columns 0 and W - 1 of the rows between."""

    @staticmethod
    def forward(ctx, windows: Tensor, rows: Tensor, cols: Tensor) -> Tensor:  # type: ignore[override]
        _add_border(windows, rows, cols)
        ctx.mark_dirty(windows)
        return windows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        height, width = grad.shape[2] - 1, grad.shape[3] - 1
        grad_rows = grad[:, :, ::height, :].sum(0)
        grad_cols = grad[:, :, 1:height, ::width].sum((0, 2))
        return grad, grad_rows, grad_cols


def _add_border(windows: Tensor, rows: Tensor, cols: Tensor) -> None:
    height, width = windows.shape[2] - 1, windows.shape[3] - 1
    windows[:, :, ::height, :] += rows
    windows[:, :, 1:height, ::width] += cols[:, None, :]


def add_border(windows: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """windows (B, C, H, W) plus rows (C, 2, W) on its first and last row and cols (C, 2) on
    the first and last column in between; in place (an autograd function when needed)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (windows, rows, cols)):
        return _AddBorder.apply(windows, rows, cols)
    _add_border(windows, rows, cols)
    return windows


class UpscalingStage(nn.Sequential):
    """ConvTranspose2d(Cin, Nc, 2, stride 2) -> Conv2d(Nc, Nc, 3, padding 1); doubles H and W.

    The forward pass computes the same linear map at the input resolution: each output
    sub-pixel is a 2 x 2 conv of the input (weights composed from the two layers), so one
    Conv2d(Cin, 4 Nc, 2, padding 1) gives all four in a window tensor (upseg.models.subpixel),
    which one strided copy turns into the output. It moves less data than the two-layer form
    and does fewer multiply-adds, which makes training steps with the head cheaper (see
    docs/benchmarks.md); parameters and state_dict are unchanged. In training the output
    carries the window tensor, which MultiScaleLoss scores directly.
    """

    def __init__(self, in_channels: int, num_classes: int, extra_channels: int = 0) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels + extra_channels, num_classes, 2, stride=2),
            nn.Conv2d(num_classes, num_classes, 3, padding=1),
        )
        # The last extra_channels inputs (a guided head's guide) are not what the up-sampling
        # inits act on: those start with zero weights (zero_extra_inputs).
        self.main_channels = in_channels
        self.composed = True  # False: run the two layers one after the other

    def composed_weights(self) -> tuple[Tensor, Tensor]:
        """(4 Nc, Cin, 2, 2) weight applied to the input, (4 Nc, 1, 2, 2) weight applied to
        a map of ones (the transposed conv's bias); output channel 4 c + 2 a + b is class c
        at sub-pixel (a, b), its window starting at row a, column b (upseg.models.subpixel)."""
        transposed, conv = self[0], self[1]
        classes, in_channels = conv.out_channels, transposed.in_channels
        # (o, m, a, b, e, f, k, l): conv weight o <- m routed through the tap selections
        routed = (conv.weight.reshape(classes * classes, 9) @ _TAP_PAIRS.to(conv.weight)).view(
            classes, classes, 16, 4
        )
        routed = routed.permute(0, 2, 1, 3).reshape(16 * classes, 4 * classes)
        # transposed conv weight (c, m, k, l) and its bias as one more input channel
        sources = torch.cat(
            [
                transposed.weight.reshape(in_channels, 4 * classes),
                transposed.bias.repeat_interleave(4)[None],
            ]
        )
        composed = (routed @ sources.T).view(classes, 2, 2, 2, 2, in_channels + 1)
        composed = composed.permute(0, 1, 2, 5, 3, 4).reshape(4 * classes, in_channels + 1, 2, 2)
        return composed[:, :in_channels].contiguous(), composed[:, in_channels:]

    def forward(self, x: Tensor) -> Tensor:
        if not self.composed:
            return self.layerwise_forward(x)
        weight, bias_weight = self.composed_weights()
        # The transposed conv's bias reaches the output as bias_weight applied to a map of
        # ones with zero padding: a constant inside, other values on the border rows and
        # columns. The constant joins the conv's bias and the border is added on its own,
        # which costs far less than a ones input channel (or a bias map at the output size).
        edges = _EDGE_TAPS.to(bias_weight)
        levels = edges @ bias_weight[:, 0] @ edges.T  # (4 Nc, 3, 3): first / inner / last
        inner = levels[:, 1, 1]
        levels = levels - inner[:, None, None]
        width = x.shape[3]
        col_kind = torch.tensor([0] + [1] * (width - 1) + [2], device=x.device)
        bias = self[1].bias.repeat_interleave(4) + inner
        rows, cols = levels[:, 0::2][:, :, col_kind], levels[:, 1, 0::2]
        windows = add_border(F.conv2d(x, weight, bias, padding=1), rows, cols)
        # One strided copy, except while exporting (slices and stacks trace to plain ONNX ops).
        output = window_shuffle(windows, fast=not torch.compiler.is_exporting())
        if self.training and torch.is_grad_enabled():
            # MultiScaleLoss scores the windows: no shuffle backward, and with the native kernel
            # no conv backward either for the finest stage (upseg.losses.stage_ce).
            attach_windows(output, windows, StageTerms(x, weight, bias, rows, cols))
        return output

    def layerwise_forward(self, x: Tensor) -> Tensor:
        """The two layers one after the other; the reference the composed form must equal."""
        return self[1](self[0](x))

    @torch.no_grad()
    def zero_extra_inputs(self) -> None:
        """Zero the transposed conv's weights on the extra (guide) inputs."""
        self[0].weight[self.main_channels :] = 0.0

    @torch.no_grad()
    def init_as_nearest_upsampling(self, logit_conv: nn.Conv2d | None = None) -> None:
        """Make the stage exact 2x nearest up-sampling of its input.

        With Cin = g * Nc (g concatenated groups of Nc channels) it returns the mean of the g
        groups, up-sampled; for identical groups that is nearest up-sampling of any one.
        With `logit_conv` (a 1x1 Conv2d Cin -> Nc) it up-samples that conv's output instead.
        """
        identity = torch.zeros(3, 3)
        identity[1, 1] = 1.0
        self._init_as_upsampling(identity, logit_conv)

    @torch.no_grad()
    def init_as_bilinear_upsampling(self, logit_conv: nn.Conv2d | None = None) -> None:
        """Make the stage 2x bilinear up-sampling of its input (align_corners=False).

        The transposed conv is nearest up-sampling (as in `init_as_nearest_upsampling`, so a
        concat stage takes the mean of its groups) and the 3x3 conv smooths each class with
        [1, 2, 1] / 4 x [1, 2, 1] / 4: output pixel 2i gets (x[i-1] + 3 x[i]) / 4 and 2i + 1
        gets (3 x[i] + x[i+1]) / 4, which is F.interpolate(mode="bilinear",
        align_corners=False) everywhere but on the outermost ring of output pixels. There the
        conv reads its zero padding where interpolate repeats the edge pixel, so the ring is
        3/4 of interpolate's value (edge pixel 2i: 3/4 x[0] instead of x[0]), 9/16 at the four
        corners. With Cin = g * Nc it up-samples the mean of the g groups; with `logit_conv`
        (a 1x1 Conv2d Cin -> Nc) it up-samples that conv's output.
        """
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4
        self._init_as_upsampling(torch.outer(taps, taps), logit_conv)

    def _init_as_upsampling(self, kernel: Tensor, logit_conv: nn.Conv2d | None = None) -> None:
        """ConvTranspose: nearest up-sampling of the mean of the input groups, or of
        logit_conv's output (its weight and bias on each of the four sub-pixels); 3x3 conv:
        `kernel` (3, 3) on the channel diagonal, zero across classes; its bias 0."""
        transposed, conv = self[0], self[1]
        num_classes = conv.out_channels
        transposed.weight.zero_()  # (Cin, Nc, 2, 2)
        transposed.bias.zero_()
        if logit_conv is None:
            groups = self.main_channels // num_classes
            for g in range(groups):
                for c in range(num_classes):
                    transposed.weight[g * num_classes + c, c] = 1.0 / groups
        else:
            check_logit_conv(logit_conv, num_classes)
            if logit_conv.in_channels != self.main_channels:
                raise ValueError(
                    f"the logit conv reads {logit_conv.in_channels} channels, the stage "
                    f"{self.main_channels}"
                )
            weight = logit_conv.weight[:, :, 0, 0].T.to(transposed.weight)  # (Cin, Nc)
            main = transposed.weight[: self.main_channels]
            main.copy_(weight[:, :, None, None].expand_as(main))
            if logit_conv.bias is not None:
                transposed.bias.copy_(logit_conv.bias)
        conv.weight.zero_()  # (Nc, Nc, 3, 3)
        for c in range(num_classes):
            conv.weight[c, c] = kernel.to(conv.weight)
        conv.bias.zero_()


def plain_head_num_params(num_classes: int, num_stages: int, in_channels: int | None = None) -> int:
    """m (13 Nc^2 + 2 Nc): the paper's count for the plain head; a features head whose stage 1
    reads `in_channels` = C_f channels has 4 Nc (C_f - Nc) more."""
    extra = 0 if in_channels is None else 4 * num_classes * (in_channels - num_classes)
    return num_stages * (13 * num_classes**2 + 2 * num_classes) + extra


def skip_head_num_params(num_classes: int, num_stages: int) -> int:
    """Parameters of the inner-skip head with unshared weights (formula in the module doc)."""
    nc, m = num_classes, num_stages
    plain_stage = 13 * nc**2 + 2 * nc
    concat_stage = 17 * nc**2 + 2 * nc
    return (m * (m - 1) // 2 + 1) * plain_stage + (m - 2) * concat_stage


class UpscalingHead(nn.Module):
    """(B, Nc, r, r) logits -> list [Y0, Y1, ..., Ym] with Y_k of shape (B, Nc, r 2^k, r 2^k).

    With `logit_conv` (the backbone's final 1x1 conv, C_f -> Nc) it is a features head: stage 1
    reads that conv's input, (B, C_f, r, r), and forward(features, logits) returns
    [logits, Y1, ..., Ym]. The head does not keep the conv: it only sets stage 1's start
    ('upsample' and 'bilinear': the conv on every sub-pixel, then the up-sampling, so the head
    starts equal to the logits head; 'pytorch': PyTorch's initialisation).

    init 'upsample' (the default) starts every stage as exact nearest up-sampling, so the head
    begins as a stretch of the logits and learns from there; 'pytorch' keeps PyTorch's layer
    initialisation (the paper's). On the shared BraTS cases the 'pytorch' start lost to the
    baseline in 24 of 25 short runs (docs/results.md).

    With `guide_channels` = C > 0 it is a guided head (plain only; upseg.models.guide): every
    stage also reads `guide_width` channels computed from the image (B, C, R, R), which
    forward then needs. The stages' weights on those channels start at zero, so with any init
    the untrained guided head equals the plain head it extends.

    init 'bilinear' starts every stage as bilinear x2 up-sampling (align_corners=False; see
    UpscalingStage.init_as_bilinear_upsampling), concat stages of the skip head on the mean of
    their two inputs as with 'upsample', and the stretch chains bilinear too, so the skip head
    starts equal to the plain one. Where it differs from m repeated
    F.interpolate(scale_factor=2, mode="bilinear") steps: the zero padding of each stage's
    3x3 conv, which spreads inwards to a band of 2^m - 1 output pixels along each side of
    Y_m (less than one input pixel). Where it differs from the baseline's one bilinear
    stretch by 2^m (upseg.data.resize.stretch_logits): besides that band, m x2 steps are not one
    x2^m step. Both reproduce constant and linear ramps of the logits exactly inside the
    band, but repeated x2 steps smooth more (they tend to a quadratic B-spline, not a
    piecewise-linear interpolant), so the head starts close to the baseline's stretch, not
    equal to it (tests/models/test_head.py measures the gap).
    """

    def __init__(
        self,
        num_classes: int,
        num_stages: int,
        skip: bool = False,
        init: HeadInit = DEFAULT_HEAD_INIT,
        logit_conv: nn.Conv2d | None = None,
        guide_channels: int = 0,
        guide_width: int = GUIDE_WIDTH,
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
        if logit_conv is not None:
            if skip:
                raise ValueError(
                    "the inner-skip head reads the logits only (its stretches start from them); "
                    "head_input='features' needs the plain head"
                )
            check_logit_conv(logit_conv, num_classes)
        if guide_channels and skip:
            raise ValueError("the guided head extends the plain head, not the inner-skip head")
        if guide_channels < 0:
            raise ValueError(f"guide_channels must be at least 0, got {guide_channels}")
        init = resolve_head_init(init)
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.skip = skip
        self.init = init
        self.in_channels = num_classes if logit_conv is None else logit_conv.in_channels
        self.head_input = "logits" if logit_conv is None else "features"
        self.guide_channels = guide_channels
        extra = guide_width if guide_channels else 0
        first_skip = 3 if skip else num_stages + 1
        self.stages = nn.ModuleList(
            UpscalingStage(
                self.in_channels if k == 1 else num_classes * (2 if k >= first_skip else 1),
                num_classes,
                extra,
            )
            for k in range(1, num_stages + 1)
        )
        self.guides = nn.ModuleList(
            ImageGuide(guide_channels, num_classes, guide_width)
            for _ in range(num_stages if guide_channels else 0)
        )
        # stretches[i] serves stage first_skip + i: k - 1 plain stages, Y0 -> size of Y_{k-1}.
        self.stretches = nn.ModuleList(
            nn.Sequential(*(UpscalingStage(num_classes, num_classes) for _ in range(k - 1)))
            for k in range(first_skip, num_stages + 1)
        )
        self.first_skip = first_skip
        if init in ("upsample", "bilinear"):
            for module in self.modules():
                if isinstance(module, UpscalingStage):
                    conv = logit_conv if module is self.stages[0] else None
                    if init == "upsample":
                        module.init_as_nearest_upsampling(conv)
                    else:
                        module.init_as_bilinear_upsampling(conv)
        for stage in self.stages:
            stage.zero_extra_inputs()

    @property
    def guided(self) -> bool:
        return self.guide_channels > 0

    def forward(
        self, x: Tensor, logits: Tensor | None = None, image: Tensor | None = None
    ) -> list[Tensor]:
        """x: stage 1's input, the logits (B, Nc, r, r) or, for a features head, the features
        (B, C_f, r, r); logits: Y0 when x is not (default x); image: (B, C, R, R), what a
        guided head reads (and only it)."""
        if self.guided != (image is not None):
            raise ValueError(
                "a guided head needs the full-resolution image"
                if self.guided
                else "only a guided head reads the image"
            )
        levels = image_pyramid(image, self.num_stages) if image is not None else []
        outputs = [x if logits is None else logits]
        previous = x
        for k, stage in enumerate(self.stages, start=1):
            if k >= self.first_skip:
                stretched = self.stretches[k - self.first_skip](x)
                previous = torch.cat([stretched, previous], dim=1)
            if levels:
                guide = self.guides[k - 1](levels[k], outputs[-1])
                previous = torch.cat([previous, guide], dim=1)
            previous = stage(previous)
            outputs.append(previous)
        return outputs

    def extra_repr(self) -> str:
        features = f", in_channels={self.in_channels}" if self.head_input == "features" else ""
        guide = f", guide_channels={self.guide_channels}" if self.guided else ""
        return (
            f"num_classes={self.num_classes}, num_stages={self.num_stages}, "
            f"skip={self.skip}, init={self.init!r}{features}{guide}"
        )
