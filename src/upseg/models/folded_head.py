"""A trained head folded into one 3 x 3 convolution and a depth-to-space step, for inference.

Every stage of the plain and the inner-skip head is affine (no activation), and its linear part
is a transposed convolution (kernel 4, stride 2, padding 1). So output pixel S i + u of Y_m
(S = 2^m) depends on Y0 rows i - 1 .. i + 1 only, and the same holds for columns: block (i, j)
of the output (its S x S pixels, Nc S^2 values) is a 3 x 3 convolution of Y0 around (i, j)
plus a constant. Inside the image that convolution is the same everywhere. In the first and
last row and column of blocks it differs, because every stage crops what its 3 x 3 conv
spills over the border before the next stage reads it. Hence, exactly:

    Y_m = pixel_shuffle(conv2d(Y0, W[kind(i), kind(j)], b[kind(i), kind(j)], padding=1), S)

with kind one of first / inner / last (or single, for a side of one pixel). Nine convolutions
over the nine regions (corners, edges, interior) and one depth-to-space copy replace m stages
of few channels at growing sizes: a few large operations, which run far closer to the
machine's peak than the stages (docs/benchmarks.md). W and b are read off the head itself by
probing it in float64 with impulses on 3 x 3 (and 1-pixel) inputs. Like folding BatchNorm into
a convolution, this is for inference only: the weights are buffers derived from the trained
head, and training keeps the stages.

A features head (upseg.models.head, stage 1 reads the C_f channels of the backbone's last
decoder features) folds the same way: the folded convolution then reads those C_f channels,
(Nc S^2, C_f, 3, 3) per region.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upseg.deploy.runtimes import torch_threads
from upseg.models.head import UpscalingHead

FIRST, INNER, LAST, SINGLE = range(4)
# Largest Nc S^2 (channels of the folded convolution) for which `fold_model` folds a head;
# beyond it the weights (Nc S^2 x Cin x 9, nine regions) grow too large to be worth it.
MAX_FOLDED_CHANNELS = 4096


def _segments(length: int) -> list[tuple[int, int, int]]:
    """(start, stop, kind) of the block regions along one side."""
    if length == 1:
        return [(0, 1, SINGLE)]
    middle = [(1, length - 1, INNER)] if length > 2 else []
    return [(0, 1, FIRST), *middle, (length - 1, length, LAST)]


class FoldedHead(nn.Module):
    """(B, Cin, h, w) head input -> [Y0, Y_m]; the stages in between are not computed. Cin is
    Nc (logits) or, for a features head, C_f; Y0 is `logits` where given, else the input.

    weight (4, 4, Nc S^2, Cin, 3, 3) and bias (4, 4, Nc S^2), indexed by the row and column
    kinds (FIRST, INNER, LAST, SINGLE); output channel c S^2 + u S + v is class c at
    sub-pixel (u, v) of its block, the order pixel_shuffle reads."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        num_classes: int,
        num_stages: int,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        channels = num_classes * 4**num_stages
        in_channels = num_classes if in_channels is None else in_channels
        if tuple(weight.shape) != (4, 4, channels, in_channels, 3, 3):
            raise ValueError(f"weight of shape {tuple(weight.shape)} for {channels} channels")
        if tuple(bias.shape) != (4, 4, channels):
            raise ValueError(f"bias of shape {tuple(bias.shape)} for {channels} channels")
        # One buffer per region kind: an export keeps only those its input size uses.
        for row_kind in range(4):
            for col_kind in range(4):
                key = f"{row_kind}{col_kind}"
                self.register_buffer(f"weight_{key}", weight[row_kind, col_kind].clone())
                self.register_buffer(f"bias_{key}", bias[row_kind, col_kind].clone())
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.in_channels = in_channels
        # Low-rank factors of the labels matrices where they save MACs (see `labels`): derived
        # from the weights, so not part of the state dict; only from float64 weights (fold_head
        # passes its exact probe), where the numerical rank is the structural one.
        self.factored: set[str] = set()
        if weight.dtype != torch.float64:
            return
        with torch_threads(1):  # as fast for these SVDs, and 200x faster on a busy CPU
            for key in (f"{r}{c}" for r in range(4) for c in range(4)):
                factors = _low_rank(self._label_matrix(key))
                if factors is not None:
                    self.register_buffer(f"factor_in_{key}", factors[0], persistent=False)
                    self.register_buffer(f"factor_out_{key}", factors[1], persistent=False)
                    self.factored.add(key)

    def forward(self, x: Tensor, logits: Tensor | None = None) -> list[Tensor]:
        if self.training:
            raise RuntimeError(
                "a folded head is for inference only (it returns no intermediate stages); "
                "train the UpscalingHead it was folded from"
            )
        padded = F.pad(x, (1, 1, 1, 1))
        rows = []
        for top, bottom, row_kind in _segments(x.shape[2]):
            pieces = [
                F.conv2d(
                    padded[:, :, top : bottom + 2, left : right + 2],
                    getattr(self, f"weight_{row_kind}{col_kind}"),
                    getattr(self, f"bias_{row_kind}{col_kind}"),
                )
                for left, right, col_kind in _segments(x.shape[3])
            ]
            rows.append(torch.cat(pieces, 3))
        finest = F.pixel_shuffle(torch.cat(rows, 2), 2**self.num_stages)
        return [x if logits is None else logits, finest]

    def labels(self, x: Tensor) -> Tensor:
        """(B, Cin, h, w) head input -> (B, h S, w S) int64 class indices of Y_m: argmax over
        the classes (logit > 0 for one channel), as from `forward`, up to float rounding.

        The same nine region convolutions, computed channels-last: each block's 9 Cin input
        values (im2col) and a 1, times a (9 Cin + 1, S^2 Nc') matrix whose last row is the
        bias (no pass of its own over the output) and whose columns run over (u, v, class),
        so the regions join along rows and columns of whole vectors, the argmax reads the
        classes side by side, and only the labels are moved to their (h S, w S) places.
        onnxruntime runs this far faster than the convolutions plus a depth-to-space of the
        logits (docs/benchmarks.md).

        Nc' = Nc, except with two classes: then the matrix holds the one difference class 1 -
        class 0 (label 1 where it is > 0; a tie gives 0, as argmax does), half the MACs. With
        more classes the same trick costs more in max/argmax passes than it saves. A matrix of
        low rank k is applied as two, (9 Cin + 1, k) then (k, S^2 Nc'): a features head's
        inner blocks see Y1 through 4 x 4 of its pixels, so k <= 16 Nc + 1 against 9 C_f + 1
        rows (2x fewer MACs at C_f = 16, 4 classes, S = 16); border blocks, whose taps beyond
        the image are zero, are often factored too."""
        batch, _, height, width = x.shape
        scale, classes = 2**self.num_stages, self.num_classes
        padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, h + 2, w + 2, Cin)
        views = [padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        ones = torch.ones_like(views[0][..., :1])  # carries the bias through the matrix
        patches = torch.cat([*views, ones], dim=3)  # (B, h, w, 9 Cin + 1): (dy, dx, channel), 1
        rows = []
        for top, bottom, row_kind in _segments(height):
            pieces = []
            for left, right, col_kind in _segments(width):
                key = f"{row_kind}{col_kind}"
                part = patches[:, top:bottom, left:right]
                if key in self.factored:
                    part = part @ getattr(self, f"factor_in_{key}")
                    pieces.append(part @ getattr(self, f"factor_out_{key}"))
                else:
                    pieces.append(part @ self._label_matrix(key))
            rows.append(torch.cat(pieces, 2))
        blocks = torch.cat(rows, 1).view(batch, height, width, scale, scale, -1)
        labels = blocks.argmax(-1) if classes > 2 else (blocks[..., 0] > 0).long()
        return labels.permute(0, 1, 3, 2, 4).reshape(batch, height * scale, width * scale)

    def _label_matrix(self, key: str) -> Tensor:
        """The labels form of region `key`: (9 Cin + 1, S^2 Nc'), rows ordered (dy, dx,
        channel) then the bias, columns (u, v, class); Nc' = 1 (class 1 - class 0) for two
        classes, else Nc."""
        classes, scale, channels = self.num_classes, 2**self.num_stages, self.in_channels
        weight = getattr(self, f"weight_{key}").view(classes, scale, scale, channels, 3, 3)
        bias = getattr(self, f"bias_{key}").view(classes, scale, scale)
        if classes == 2:  # argmax of two = (class 1 - class 0 > 0): half the MACs
            weight, bias = weight[1:] - weight[:1], bias[1:] - bias[:1]
        matrix = weight.permute(4, 5, 3, 1, 2, 0).reshape(9 * channels, -1)
        return torch.cat([matrix, bias.permute(1, 2, 0).reshape(1, -1)])

    @property
    def weight(self) -> Tensor:
        """(4, 4, Nc S^2, Cin, 3, 3), indexed by row and column kind."""
        return self._stacked("weight")

    @property
    def bias(self) -> Tensor:
        """(4, 4, Nc S^2), indexed by row and column kind."""
        return self._stacked("bias")

    def _stacked(self, name: str) -> Tensor:
        rows = [torch.stack([getattr(self, f"{name}_{r}{c}") for c in range(4)]) for r in range(4)]
        return torch.stack(rows)

    def extra_repr(self) -> str:
        wide = self.in_channels != self.num_classes
        features = f", in_channels={self.in_channels}" if wide else ""
        return f"num_classes={self.num_classes}, num_stages={self.num_stages}{features}"


def _low_rank(matrix: Tensor, saving: float = 0.75) -> tuple[Tensor, Tensor] | None:
    """A float64 (K, N) matrix -> float64 factors (K, k) and (k, N) whose product is `matrix`
    up to float64 rounding, when its numerical rank k (singular values above max(K, N) eps
    s_max, as torch.linalg.matrix_rank) makes k (K + N) at most `saving` K N MACs; else None
    (also for any other dtype, whose rounding would pass for rank)."""
    if matrix.dtype != torch.float64:
        return None
    rows, cols = matrix.shape
    u, s, vh = torch.linalg.svd(matrix.detach(), full_matrices=False)
    rank = int((s > s[0] * max(rows, cols) * torch.finfo(torch.float64).eps).sum())
    if rank == 0 or rank * (rows + cols) > saving * rows * cols:
        return None
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _probe(
    head: nn.Module, rows: int, cols: int, channels: int, classes: int, scale: int
) -> tuple[Tensor, ...]:
    """Weights (rows, cols, Nc S^2, Cin, 3, 3) and biases (rows, cols, Nc S^2) of every block
    of a rows x cols input of `channels` = Cin channels, read from the head's responses to a
    zero input and to impulses."""
    inputs = torch.zeros(1 + channels * rows * cols, channels, rows, cols, dtype=torch.float64)
    for c in range(channels):
        for y in range(rows):
            for x in range(cols):
                inputs[1 + (c * rows + y) * cols + x, c, y, x] = 1.0
    output = head(inputs)[-1]  # (N, Nc, rows S, cols S)
    blocks = output.view(-1, classes, rows, scale, cols, scale).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(-1, rows, cols, classes * scale * scale)
    bias = blocks[0]
    response = (blocks[1:] - bias).view(channels, rows, cols, rows, cols, -1)
    weight = torch.zeros(rows, cols, blocks.shape[-1], channels, 3, 3, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            for y in range(max(0, i - 1), min(rows, i + 2)):
                for x in range(max(0, j - 1), min(cols, j + 2)):
                    weight[i, j, :, :, y - i + 1, x - j + 1] = response[:, y, x, i, j].T
    return weight, bias


def fold_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a LowResSegmenter whose head, if any, is folded (the model itself is
    left as it is). Guided heads, and heads whose folded convolution would exceed
    MAX_FOLDED_CHANNELS output channels, keep their stages."""
    folded = copy.deepcopy(model).eval()
    head = getattr(folded, "head", None)
    foldable = isinstance(head, UpscalingHead) and not head.guided  # guides are not affine
    if foldable and head.num_classes * 4**head.num_stages <= MAX_FOLDED_CHANNELS:
        folded.head = fold_head(head)
    return folded


@torch.no_grad()
def fold_head(head: UpscalingHead) -> FoldedHead:
    """The folded form of `head` with its weights as they are now, on its device and in its
    dtype (probed in float64 on the CPU)."""
    classes, scale, inputs = head.num_classes, 2**head.num_stages, head.in_channels
    probe = copy.deepcopy(head).cpu().double().eval()
    channels = classes * scale * scale
    weight = torch.zeros(4, 4, channels, inputs, 3, 3, dtype=torch.float64)
    bias = torch.zeros(4, 4, channels, dtype=torch.float64)
    # Along a side of 3 blocks the kinds are first, inner, last; along a side of 1, single.
    for rows, row_kinds in ((3, (FIRST, INNER, LAST)), (1, (SINGLE,))):
        for cols, col_kinds in ((3, (FIRST, INNER, LAST)), (1, (SINGLE,))):
            w, b = _probe(probe, rows, cols, inputs, classes, scale)
            for i, row_kind in enumerate(row_kinds):
                for j, col_kind in enumerate(col_kinds):
                    weight[row_kind, col_kind] = w[i, j]
                    bias[row_kind, col_kind] = b[i, j]
    like = next(head.parameters())
    folded = FoldedHead(weight, bias, classes, head.num_stages, inputs)
    return folded.to(device=like.device, dtype=like.dtype).eval()
