"""Cross entropy (and a soft Dice's class sums) of a head stage with the stage's conv gradient
in the same pass (CPU kernel).

A stage output Y (B, Nc, 2h, 2w) is its window tensor W (B, 4 Nc, h + 1, w + 1) shuffled
(upseg.models.subpixel), and W = conv2d(x, weight, bias, padding=1) plus border terms (rows, cols;
upseg.models.head). Scoring W against the labels and back-propagating through the conv in
PyTorch makes about a dozen passes over 33 MB tensors at R = 256, batch 32. The native kernel
(upseg/losses/kernels/stage_ce.c) reads W once forward and once backward:
  - `stage_cross_entropy(..., through_conv=True)` returns the gradients of x, weight, bias,
    rows and cols directly and never stores the gradient of W: for a stage whose output
    nothing else reads (the finest);
  - `through_conv=False` writes the gradient of W once, for the conv's own backward pass to
    take together with the gradient from the next stage.
With `class_sums`, the forward pass also returns the sums a batch soft Dice needs, P_c (the
softmax of class c summed over the batch's pixels) and I_c (the same where the label is c),
and the backward pass takes their gradients: MultiScaleLoss computes the Dice from them, so
dice and dice_ce train on the kernel as ce does.
The stage input may have any number of channels: Nc, 2 Nc (the skip head's concat stages) or
C_f (stage 1 of a features head, the only and so the finest stage when m = 1).
The batch is split between torch's intra-op threads (OpenMP; one thread where the compiler
has none). Values match the PyTorch path to float32 rounding
(tests/losses/test_stage_ce.py); where the kernel cannot be built, callers keep the PyTorch
path.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from upseg.losses import native
from upseg.models.subpixel import StageTerms

KERNEL = "stage_ce"
_INT = ctypes.c_int64
_PTR = ctypes.c_void_p
_FLOAT = ctypes.c_float


def native_library() -> ctypes.CDLL | None:
    """The built kernel with its argument types set, or None (upseg.losses.native says why)."""
    library = native.load(KERNEL)
    if library is not None and not hasattr(library, "_upseg_typed"):
        library.stage_ce_forward.argtypes = [_PTR, _PTR, *[_INT] * 6, _PTR]
        library.stage_ce_forward.restype = None
        library.stage_ce_backward.argtypes = [
            *[_PTR] * 4, *[_INT] * 5, _FLOAT, _PTR, _INT, *[_PTR] * 5
        ]  # fmt: skip
        library.stage_ce_backward.restype = ctypes.c_int
        library.stage_ce_window_grad.argtypes = [_PTR, _PTR, *[_INT] * 4, _FLOAT, _PTR, _INT, _PTR]
        library.stage_ce_window_grad.restype = ctypes.c_int
        library._upseg_typed = True
    return library


def usable(windows: Tensor, terms: StageTerms, labels: Tensor) -> bool:
    """Whether the kernel can score this stage: float32 on the CPU, integer labels of the
    output's size, at most 256 classes, and the kernel built."""
    tensors = (windows, *terms)
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    batch, channels, rows, cols = windows.shape
    if channels % 4 or channels // 4 > 256 or labels.is_floating_point():
        return False
    if labels.shape != (batch, 2 * (rows - 1), 2 * (cols - 1)):
        return False
    if terms.x.shape[0] != batch or terms.x.shape[2:] != (rows - 1, cols - 1):
        return False
    return native_library() is not None


def _threads(batch: int) -> int:
    return max(1, min(torch.get_num_threads(), batch))


def _check(status: int) -> None:
    if status:
        raise MemoryError("stage cross entropy: the native kernel could not allocate its scratch")


def _forward(windows: Tensor, labels: Tensor, class_sums: bool) -> tuple[Tensor, Tensor]:
    """Mean cross entropy over the output pixels (NaN where a logit is not finite) and the
    (2, Nc) class sums [P_c; I_c] (empty without `class_sums`)."""
    batch, channels, height, width = windows.shape
    h, w, nc = height - 1, width - 1, channels // 4
    total = np.zeros(2 + 2 * nc)
    native_library().stage_ce_forward(
        windows.data_ptr(), labels.data_ptr(), batch, nc, h, w, int(class_sums),
        _threads(batch), total.ctypes.data,
    )  # fmt: skip
    _check(int(total[1] < 0))
    value = float("nan") if total[1] > 0 else total[0] / (batch * 4 * h * w)
    sums = torch.from_numpy(total[2:].reshape(2, nc).astype(np.float32))
    if total[1] > 0:
        sums.fill_(float("nan"))
    return torch.tensor(value, dtype=torch.float32), sums if class_sums else sums[:, :0]


def _scale(grad: Tensor, windows: Tensor) -> float:
    """d loss / d (one pixel's cross entropy)."""
    batch, _, height, width = windows.shape
    return float(grad) / (batch * 4 * (height - 1) * (width - 1))


def _dice_grad(grad_sums: Tensor, class_sums: bool) -> tuple[Tensor | None, int]:
    """The (2, Nc) gradient of the class sums as a float32 buffer and its address (0: none);
    the caller holds the buffer until the kernel has read it."""
    if not class_sums:
        return None, 0
    buffer = grad_sums.detach().to(torch.float32).contiguous()
    return buffer, buffer.data_ptr()


class _ThroughConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, rows, cols, windows, labels, class_sums):  # type: ignore[override]
        ctx.save_for_backward(x, weight, windows, labels)
        ctx.class_sums = class_sums
        return _forward(windows, labels, class_sums)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_sums):  # type: ignore[override]
        x, weight, windows, labels = ctx.saved_tensors
        batch, channels, height, width = windows.shape
        grads = (
            torch.empty_like(x),
            torch.empty_like(weight),
            torch.empty(channels, dtype=torch.float32),  # the kernel writes float32
            torch.empty(channels, 2, width, dtype=torch.float32),
            torch.empty(channels, 2, dtype=torch.float32),
        )
        _buffer, dice = _dice_grad(grad_sums, ctx.class_sums)  # held while the kernel reads it
        _check(
            native_library().stage_ce_backward(
                x.data_ptr(), weight.data_ptr(), windows.data_ptr(), labels.data_ptr(), batch,
                x.shape[1], channels // 4, height - 1, width - 1, _scale(grad, windows), dice,
                _threads(batch), *(t.data_ptr() for t in grads),
            )
        )  # fmt: skip
        return (*grads, None, None, None)


class _OnWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, windows, labels, class_sums):  # type: ignore[override]
        ctx.save_for_backward(windows, labels)
        ctx.class_sums = class_sums
        return _forward(windows, labels, class_sums)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_sums):  # type: ignore[override]
        windows, labels = ctx.saved_tensors
        batch, channels, height, width = windows.shape
        grad_windows = torch.empty_like(windows)
        _buffer, dice = _dice_grad(grad_sums, ctx.class_sums)  # held while the kernel reads it
        _check(
            native_library().stage_ce_window_grad(
                windows.data_ptr(), labels.data_ptr(), batch, channels // 4, height - 1,
                width - 1, _scale(grad, windows), dice, _threads(batch), grad_windows.data_ptr(),
            )
        )  # fmt: skip
        return grad_windows, None, None


def stage_terms(
    windows: Tensor, terms: StageTerms, labels: Tensor, through_conv: bool, class_sums: bool
) -> tuple[Tensor, Tensor]:
    """(mean cross entropy over the B * 2h * 2w output pixels, (2, Nc) class sums [P_c; I_c]
    or an empty (2, 0) tensor without `class_sums`), both differentiable. through_conv:
    differentiable in `terms` and not through `windows`, whose values it reads; otherwise
    differentiable in `windows`. Labels (B, 2h, 2w) must lie in 0 .. Nc - 1 (MultiScaleLoss
    checks them). Call only where `usable` is True."""
    labels = labels.to(torch.uint8).contiguous()
    if not through_conv:
        return _OnWindows.apply(windows.contiguous(), labels, class_sums)
    x, weight = terms.x.contiguous(), terms.weight.contiguous()
    return _ThroughConv.apply(
        x, weight, terms.bias, terms.rows, terms.cols, windows.detach().contiguous(), labels,
        class_sums,
    )  # fmt: skip


def stage_cross_entropy(
    windows: Tensor, terms: StageTerms, labels: Tensor, through_conv: bool
) -> Tensor:
    """The cross entropy of stage_terms alone."""
    return stage_terms(windows, terms, labels, through_conv, class_sums=False)[0]
