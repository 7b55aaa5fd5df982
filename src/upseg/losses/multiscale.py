"""MultiScaleLoss: the paper's L_sum = sum_i w_i L(F_i(GT), Y_i) over all head stages.

Each stage output Y_i (B, Nc, s_i, s_i) is scored against the full-resolution mask (B, R, R)
resized to s_i, where R / s_i is an integer:
  - 'nearest': the centre pixel of every (R/s_i)^2 block (see upseg.data.resize);
  - 'soft': the area-averaged one-hot mask, i.e. per-pixel class fractions (the soft labels of
    the authors' code); exact at s_i = R.
Stage weights: 'equal' (the paper's plain sum) or 'halving' (w = 1/2^j for the j-th stage
counted from the finest, normalised to sum 1, as nnU-Net's deep supervision).
A baseline passes its single output at r and is scored against the mask resized to r.
With 'ce', a head output that carries its window tensor (upseg.models.subpixel) is scored through
that tensor: the same per-pixel terms, without the shuffle in the backward pass; with integer
targets on the CPU in float32, by the native kernel of upseg.losses.stage_ce, which also returns the
stage conv's gradients. 'dice' and 'dice_ce' take the kernel too (it returns the soft Dice's
class sums); where it cannot run they score the assembled output in PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from upseg.data.resize import downsample_labels, one_hot
from upseg.losses import stage_ce
from upseg.models.subpixel import (
    attached_terms,
    attached_windows,
    unshuffle_dense,
    unshuffle_labels,
    window_grad_buffer,
    window_view,
)

BASE_LOSSES = ("ce", "bce", "dice", "dice_ce")
TARGET_RESIZES = ("nearest", "soft")
STAGE_WEIGHTS = ("equal", "halving")


def stage_weights(num_stages: int, scheme: str) -> list[float]:
    """Weights ordered coarse -> fine, like the stage outputs."""
    if scheme == "equal":
        return [1.0] * num_stages
    if scheme == "halving":
        raw = [0.5 ** (num_stages - 1 - i) for i in range(num_stages)]
        return [w / sum(raw) for w in raw]
    raise ValueError(f"unknown stage weights {scheme!r}; choose one of {STAGE_WEIGHTS}")


def soft_dice_loss(probs: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """1 - mean over channels of the soft Dice, summed over the batch and pixels ('batch Dice').

    probs, target: (B, K, H, W) with values in [0, 1].
    """
    dims = (0, 2, 3)
    intersection = (probs * target).sum(dims)
    denominator = probs.sum(dims) + target.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (denominator + smooth)).mean()


def dice_from_sums(sums: Tensor, labels: Tensor, smooth: float = 1e-5) -> Tensor:
    """soft_dice_loss from the class sums of upseg.losses.stage_ce: sums (2, K) = [sum of
    probs; sum of probs where the label is the class], labels (B, H, W) integers."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=sums.shape[1]).to(sums.dtype)
    probs, intersection = sums
    return 1.0 - ((2.0 * intersection + smooth) / (probs + counts + smooth)).mean()


class MultiScaleLoss(nn.Module):
    """Loss over a list of stage outputs (coarse -> fine) against one mask at R."""

    def __init__(
        self,
        num_classes: int,
        base: Literal["ce", "bce", "dice", "dice_ce"] = "ce",
        target_resize: Literal["nearest", "soft"] = "nearest",
        weights: Literal["equal", "halving"] = "equal",
        dice_smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        if base not in BASE_LOSSES:
            raise ValueError(f"unknown base loss {base!r}; choose one of {BASE_LOSSES}")
        if target_resize not in TARGET_RESIZES:
            raise ValueError(
                f"unknown target_resize {target_resize!r}; choose one of {TARGET_RESIZES}"
            )
        stage_weights(1, weights)  # validates the name
        if num_classes == 1 and base == "ce":
            raise ValueError("base loss 'ce' needs at least 2 classes; use 'bce' for one channel")
        if num_classes > 1 and base == "bce":
            raise ValueError(
                f"base loss 'bce' is for one-channel binary outputs, not {num_classes} classes; "
                "use 'ce', 'dice' or 'dice_ce', or build the model with num_classes=1"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.base = base
        self.target_resize = target_resize
        self.weights = weights
        self.dice_smooth = dice_smooth

    @property
    def binary(self) -> bool:
        """One output channel: sigmoid probabilities of the foreground (mask values 0/1)."""
        return self.num_classes == 1

    def forward(self, outputs: Tensor | Sequence[Tensor], mask: Tensor) -> Tensor:
        outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        factors = self._check(outputs, mask)
        targets = self._targets(mask, factors)
        total = outputs[0].new_zeros(())
        last = len(outputs) - 1
        for i, (weight, output, target) in enumerate(
            zip(stage_weights(len(outputs), self.weights), outputs, targets, strict=True)
        ):
            total = total + weight * self._stage_loss(output, target, finest=i == last)
        return total

    def _check(self, outputs: list[Tensor], mask: Tensor) -> list[int]:
        if not outputs:
            raise ValueError("MultiScaleLoss got no outputs")
        if mask.dim() != 3 or mask.dtype.is_floating_point or mask.dtype == torch.bool:
            raise ValueError(
                f"mask must be an integer label map of shape (B, R, R), got "
                f"{tuple(mask.shape)} {mask.dtype}"
            )
        size = mask.shape[-2:]
        factors = []
        for i, output in enumerate(outputs):
            if output.dim() != 4 or output.shape[1] != self.num_classes:
                raise ValueError(
                    f"stage {i} output has shape {tuple(output.shape)}, expected "
                    f"(B, {self.num_classes}, s, s): the model and MultiScaleLoss must be built "
                    "with the same number of classes"
                )
            if output.shape[0] != mask.shape[0]:
                raise ValueError(
                    f"stage {i} output has batch {output.shape[0]} but the mask has {mask.shape[0]}"
                )
            factor, rest = divmod(size[0], output.shape[2])
            if rest or factor < 1 or size[1] != output.shape[3] * factor:
                raise ValueError(
                    f"stage {i} output size {tuple(output.shape[2:])} does not divide the mask "
                    f"size {tuple(size)} by an integer factor"
                )
            factors.append(factor)
        if factors != sorted(factors, reverse=True):
            raise ValueError("stage outputs must be ordered from the coarsest to the finest")
        low, high = int(mask.min()), int(mask.max())
        top = 1 if self.binary else self.num_classes - 1
        if low < 0 or high > top:
            raise ValueError(
                f"mask holds labels {low}..{high}, outside the classes 0..{top} that the loss "
                f"was built for (num_classes={self.num_classes})"
            )
        return factors

    def _targets(self, mask: Tensor, factors: list[int]) -> list[Tensor]:
        """Per stage: int labels (B, s, s) for 'nearest', class fractions (B, K, s, s) for 'soft'.

        Labels stay in the mask's integer type (strided views for 'nearest'); the full-resolution
        stage always gets the int labels. Soft targets are built as a pyramid, each from the
        previous one, so the one-hot mask is read once.
        """
        targets: dict[int, Tensor] = {}
        if self.target_resize == "nearest":
            for f in set(factors):
                targets[f] = downsample_labels(mask, mask.shape[-1] // f)
            return [targets[f] for f in factors]
        dense = self._dense(mask, torch.float32)
        level, level_factor = dense, 1
        for f in sorted(set(factors)):
            if f == 1:
                targets[1] = mask
                continue
            if f % level_factor:  # not on the pyramid: pool the full mask directly
                level, level_factor = dense, 1
            level = F.avg_pool2d(level, f // level_factor)
            level_factor = f
            targets[f] = level
        return [targets[f] for f in factors]

    def _dense(self, labels: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, *pixels) labels -> (B, K, *pixels) one-hot (K = Nc), or the 0/1 map for one
        channel."""
        if self.binary:
            return labels.unsqueeze(1).to(dtype)
        return one_hot(labels, self.num_classes, dtype)

    def _stage_loss(self, output: Tensor, target: Tensor, finest: bool = False) -> Tensor:
        """output (B, K, s, s); target: int labels (B, s, s) or class fractions (B, K, s, s).
        finest: the last output, which no later stage reads, so the native kernel can take the
        gradient through the stage's conv as well."""
        windows = attached_windows(output) if self.base != "bce" and not self.binary else None
        if windows is not None:
            terms = attached_terms(output)
            if terms is not None and stage_ce.usable(windows, terms, target):
                with_dice = self.base in ("dice", "dice_ce")
                ce, sums = stage_ce.stage_terms(windows, terms, target, finest, with_dice)
                loss = ce if self.base != "dice" else ce.new_zeros(())
                if with_dice:
                    loss = loss + dice_from_sums(sums, target, self.dice_smooth)
                return loss
            if self.base == "ce":
                # Cross entropy is a mean over pixels: score the head stage's window tensor,
                # whose view holds the same logits, against the target viewed the same way.
                unshuffle = unshuffle_dense if target.is_floating_point() else unshuffle_labels
                return softmax_cross_entropy(windows, unshuffle(target), windowed=True)
        soft = target.is_floating_point()
        loss = output.new_zeros(())
        if self.base in ("dice", "dice_ce"):
            probs = torch.sigmoid(output) if self.binary else torch.softmax(output, dim=1)
            dense = target if soft else self._dense(target, output.dtype)
            loss = loss + soft_dice_loss(probs, dense, self.dice_smooth)
        if self.base in ("ce", "bce", "dice_ce"):
            if self.binary:
                dense = target if soft else self._dense(target, output.dtype)
                loss = loss + F.binary_cross_entropy_with_logits(output, dense)
            else:
                loss = loss + softmax_cross_entropy(output, target)
        return loss


def softmax_cross_entropy(logits: Tensor, target: Tensor, windowed: bool = False) -> Tensor:
    """Mean over the batch and pixels of -sum_c p_c log softmax(logits)_c.

    logits (B, K, *pixels); target: int labels (B, *pixels) (p one-hot; then this equals
    F.cross_entropy) or class probabilities p (B, K, *pixels) that sum to 1 at every pixel.
    windowed: logits is a window tensor (B, 4 K, h + 1, w + 1) standing for its window view
    (B, K, 2, 2, h, w) (upseg.models.subpixel), and target is laid out like that view; the gradient
    comes back in the window tensor's layout.

    For float32/float64 it runs as one autograd function that keeps exp(logits - max) from
    the forward pass, so the backward pass is (softmax - p) / pixels in two passes over the
    logits instead of the log-softmax and NLL backward kernels.
    """
    if logits.dtype in (torch.float32, torch.float64):
        return _SoftmaxCrossEntropy.apply(logits, target, windowed)
    view = window_view(logits) if windowed else logits
    if not target.is_floating_point():
        return F.cross_entropy(view, target.long())
    return -(target * F.log_softmax(view, dim=1)).sum(1).mean()


def _sum_of_logs(sums: Tensor, classes: int) -> Tensor:
    """sum(log(sums)) for sums in [1, classes] (each S has its max term exp(0) = 1): the log of
    products of groups of g values, g as large as keeps classes^g far from overflow, which
    takes g times fewer logs, the costly part."""
    group = 1
    while group < 64 and (2 * group) * math.log2(max(classes, 2)) <= 100:
        group *= 2
    if sums.numel() % group:
        return sums.log().sum()
    return sums.reshape(-1, group).prod(1).log().sum()


def _flat(tensor: Tensor) -> Tensor:
    """All elements as a 1-D tensor in memory order: a view when the tensor is dense."""
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d), reverse=True)
    return tensor.permute(order).reshape(-1)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """With m = max_c x_c and S = sum_c exp(x_c - m) per pixel, and sum_c p_c = 1:
    loss = (sum over pixels of log S - <x - m, p>) / pixels,
    d loss / d x = (exp(x - m) / S - p) / pixels.
    Every big temporary follows the memory order of the logits (or their window view)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, windowed: bool) -> Tensor:  # type: ignore[override]
        view = window_view(logits) if windowed else logits
        shifted = view - view.amax(1, keepdim=True)  # dense, in the view's memory order
        dense = torch.empty_like(shifted)  # p, in the same memory order
        if target.is_floating_point():
            dense.copy_(target)
        else:
            one_hot(target, view.shape[1], out=dense)
        picked = torch.dot(_flat(shifted), _flat(dense))
        exps = shifted.exp_()
        sums = exps.sum(1, keepdim=True)
        pixels = sums.numel()
        ctx.save_for_backward(exps, sums, dense)
        ctx.pixels = pixels
        ctx.geometry = (
            (logits.shape, logits.stride(), logits.dtype, logits.device) if windowed else None
        )
        return (_sum_of_logs(sums, view.shape[1]) - picked) / pixels

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        exps, sums, dense = ctx.saved_tensors
        scale = grad / ctx.pixels
        if ctx.geometry is None:
            grad_logits = torch.mul(exps, scale / sums)
            grad_view = grad_logits
        else:
            grad_logits, grad_view = window_grad_buffer(*ctx.geometry)
            torch.mul(exps, scale / sums, out=grad_view)
        grad_view.addcmul_(dense, scale, value=-1.0)
        return grad_logits, None, None
