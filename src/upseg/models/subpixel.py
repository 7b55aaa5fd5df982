"""Window tensors: how an up-scaling stage computes its output, and how losses can read it.

A stage computes W (B, 4 Nc, h + 1, w + 1) at its input resolution h x w; channel 4 c + 2 a + b
holds class c at sub-pixel (a, b) of every input pixel, valid on rows a .. a + h - 1 and
columns b .. b + w - 1 (the block's 2 x 2 conv window starts there):

    Y[:, c, 2 i + a, 2 j + b] = W[:, 4 c + 2 a + b, i + a, j + b]

`window_view(W)` is that relation as one strided view (B, Nc, 2, 2, h, w) of W, entry
(c, a, b, i, j) = Y[c, 2 i + a, 2 j + b]: no copy. `window_shuffle(W)` makes Y (B, Nc, 2h, 2w)
with one strided copy each way. A stage output may carry its window tensor
(`attach_windows`), so a per-pixel loss can score the view directly against labels viewed the
same way (`unshuffle_labels`), without the copy from Y back to W in the backward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_ATTRIBUTE = "_upseg_windows"


class StageTerms(NamedTuple):
    """What a stage's window tensor is made of (upseg.models.head.UpscalingStage.forward)."""

    x: Tensor  # (B, Cin, h, w) stage input
    weight: Tensor  # (4 Nc, Cin, 2, 2) composed 2x2 conv
    bias: Tensor  # (4 Nc,)
    rows: Tensor  # (4 Nc, 2, w + 1): added to window rows 0 and h
    cols: Tensor  # (4 Nc, 2): added to window columns 0 and w of the rows between


def window_view(windows: Tensor) -> Tensor:
    """(B, 4 Nc, h + 1, w + 1) -> (B, Nc, 2, 2, h, w) view; any memory layout."""
    batch, channels, rows, cols = windows.shape
    s_b, s_c, s_h, s_w = windows.stride()
    return windows.as_strided(
        (batch, channels // 4, 2, 2, rows - 1, cols - 1),
        (s_b, 4 * s_c, 2 * s_c + s_h, s_c + s_w, s_h, s_w),
        windows.storage_offset(),
    )


def window_grad_buffer(
    shape: torch.Size, stride: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A window tensor of this geometry, zero wherever the window view does not reach (one row
    and one column per channel), and that view, which the caller fills.

    The whole buffer is zeroed: one dense pass costs less here than the four strided passes
    over the uncovered rows and columns (docs/benchmarks.md)."""
    grad = torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()
    return grad, window_view(grad)


class _WindowShuffle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, windows: Tensor) -> Tensor:  # type: ignore[override]
        view = window_view(windows)
        batch, classes, _, _, rows, cols = view.shape
        layout = (
            torch.channels_last
            if windows.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        output = torch.empty(
            (batch, classes, 2 * rows, 2 * cols),
            dtype=windows.dtype,
            device=windows.device,
            memory_format=layout,
        )
        output.view(batch, classes, rows, 2, cols, 2).copy_(view.permute(0, 1, 4, 2, 5, 3))
        ctx.geometry = (windows.shape, windows.stride(), windows.dtype, windows.device)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        grad, view = window_grad_buffer(*ctx.geometry)
        rows, cols = view.shape[-2:]
        blocks = grad_output.unflatten(3, (cols, 2)).unflatten(2, (rows, 2))
        view.copy_(blocks.permute(0, 1, 3, 5, 2, 4))
        return grad


def window_shuffle(windows: Tensor, fast: bool = True) -> Tensor:
    """(B, 4 Nc, h + 1, w + 1) window tensor -> stage output (B, Nc, 2h, 2w).

    fast: one strided copy each way (training, eager inference); otherwise slices and stacks,
    which export."""
    if fast:
        return _WindowShuffle.apply(windows)
    batch, channels, rows, cols = windows.shape
    blocks = windows.unflatten(1, (-1, 2, 2))
    h, w = rows - 1, cols - 1
    lines = [
        torch.stack([blocks[:, :, a, b, a : a + h, b : b + w] for b in range(2)], dim=-1)
        for a in range(2)
    ]
    return torch.stack(lines, dim=3).reshape(batch, channels // 4, 2 * h, 2 * w)


def attach_windows(output: Tensor, windows: Tensor, terms: StageTerms | None = None) -> None:
    """Record that output == window_shuffle(windows), and optionally what the windows were
    computed from; the record is void once any of them changes in place (its version counter
    moves)."""
    tensors = (output, windows, *(terms or ()))
    setattr(output, _ATTRIBUTE, (windows, terms, [t._version for t in tensors]))


def _record(output: Tensor) -> tuple[Tensor, StageTerms | None] | None:
    record = getattr(output, _ATTRIBUTE, None)
    if record is None:
        return None
    windows, terms, versions = record
    batch, classes, height, width = output.shape
    expected = (batch, 4 * classes, height // 2 + 1, width // 2 + 1)
    tensors = (output, windows, *(terms or ()))
    if (
        [t._version for t in tensors] != versions
        or windows.dtype != output.dtype
        or windows.shape != expected
    ):
        return None
    return windows, terms


def attached_windows(output: Tensor) -> Tensor | None:
    """The window tensor recorded for this stage output, if still valid, else None."""
    record = _record(output)
    return None if record is None else record[0]


def attached_terms(output: Tensor) -> StageTerms | None:
    """What the recorded window tensor was computed from, if recorded and still valid."""
    record = _record(output)
    return None if record is None else record[1]


def unshuffle_labels(labels: Tensor) -> Tensor:
    """(B, 2h, 2w) -> (B, 2, 2, h, w) view, entry (a, b, i, j) = labels[2 i + a, 2 j + b]."""
    height, width = labels.shape[-2:]
    grid = labels.unflatten(2, (width // 2, 2)).unflatten(1, (height // 2, 2))
    return grid.permute(0, 2, 4, 1, 3)


def unshuffle_dense(target: Tensor) -> Tensor:
    """(B, K, 2h, 2w) per-class maps -> (B, K, 2, 2, h, w) view, laid out like unshuffle_labels."""
    height, width = target.shape[-2:]
    grid = target.unflatten(3, (width // 2, 2)).unflatten(2, (height // 2, 2))
    return grid.permute(0, 1, 3, 5, 2, 4)
