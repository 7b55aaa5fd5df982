"""The 2 x 2 convolution that makes an up-scaling stage's window tensor, with a CPU backward pass.

A stage's window tensor is conv2d(x, W, b, padding=1) with W (4 Nc, Cin, 2, 2) and few channels
(upseg.models.head). For such shapes oneDNN's weight gradient on the CPU reads the 33 MB
gradient of the finest stage far more slowly than a matrix product does: with the input padded
into rows of w + 1 values (one zero column, which also stands for the right-hand padding of
the row above), every tap (e, f) of the kernel is one offset e (w + 1) + f into the flattened
input, so dL/dW[:, :, e, f] is one batched product of the flattened gradient (B, 4 Nc, L)
with a shifted slice of that input (B, Cin, L), L = (h + 1)(w + 1). The input gradient is the
transposed convolution. docs/benchmarks.md has the timings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def window_weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """dL/dW (O, C, 2, 2) of conv2d(x, W, padding=1), from grad (B, O, h + 1, w + 1) and
    x (B, C, h, w)."""
    batch, channels, _, width = x.shape
    span = width + 1
    rows = F.pad(x, (1, 0, 1, 1)).reshape(batch, channels, -1)  # (B, C, (h + 2)(w + 1))
    flat = grad.reshape(batch, grad.shape[1], -1)  # (B, O, L)
    length = flat.shape[2]
    weight_grad = x.new_empty(grad.shape[1], channels, 2, 2)
    for e in range(2):
        for f in range(2):
            start = e * span + f
            # Only the last tap would run one entry past the end: the bottom-right padding.
            n = min(length, rows.shape[2] - start)
            product = torch.bmm(flat[:, :, :n], rows[:, :, start : start + n].transpose(1, 2))
            weight_grad[:, :, e, f] = product.sum(0)
    return weight_grad


class _WindowConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad_x = F.conv_transpose2d(grad, weight, padding=1) if need_x else None
        grad_weight = window_weight_grad(grad, x) if need_weight else None
        grad_bias = grad.sum((0, 2, 3)) if need_bias else None
        return grad_x, grad_weight, grad_bias


def window_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """conv2d(x, weight, bias, padding=1) for a 2 x 2 weight: (B, C, h, w) -> (B, O, h + 1, w + 1).

    On the CPU in float32/float64 outside autocast its backward pass is the one above; elsewhere
    it is F.conv2d."""
    custom = (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and not torch.is_autocast_enabled("cpu")
    )
    if custom:
        return _WindowConv.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)
