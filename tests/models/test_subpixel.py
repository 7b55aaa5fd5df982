"""Window tensors against a direct computation of Y[c, 2i+a, 2j+b] = W[4c+2a+b, i+a, j+b]."""

import pytest
import torch

from upseg.models.subpixel import (
    StageTerms,
    attach_windows,
    attached_terms,
    attached_windows,
    unshuffle_dense,
    unshuffle_labels,
    window_shuffle,
    window_view,
)

BATCH, CLASSES, ROWS, COLS = 2, 3, 4, 5  # h x w input pixels, windows (h + 1) x (w + 1)


def direct_shuffle(windows: torch.Tensor) -> torch.Tensor:
    """The stage output, one pixel at a time."""
    batch, channels, rows, cols = windows.shape
    h, w = rows - 1, cols - 1
    output = torch.empty(batch, channels // 4, 2 * h, 2 * w, dtype=windows.dtype)
    for c in range(channels // 4):
        for a in range(2):
            for b in range(2):
                for i in range(h):
                    for j in range(w):
                        output[:, c, 2 * i + a, 2 * j + b] = windows[
                            :, 4 * c + 2 * a + b, i + a, j + b
                        ]
    return output


def random_windows(channels_last: bool = False) -> torch.Tensor:
    windows = torch.randn(BATCH, 4 * CLASSES, ROWS + 1, COLS + 1, dtype=torch.float64)
    return windows.contiguous(memory_format=torch.channels_last) if channels_last else windows


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("fast", [True, False])
def test_shuffle_places_every_window_entry(fast: bool, channels_last: bool) -> None:
    windows = random_windows(channels_last)
    output = window_shuffle(windows, fast=fast)
    assert output.shape == (BATCH, CLASSES, 2 * ROWS, 2 * COLS)
    assert torch.equal(output, direct_shuffle(windows))
    if fast:  # the output keeps the windows' memory layout
        assert output.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_view_reads_the_windows_without_a_copy() -> None:
    windows = random_windows(channels_last=True)
    view = window_view(windows)
    assert view.shape == (BATCH, CLASSES, 2, 2, ROWS, COLS)
    assert view.data_ptr() == windows.data_ptr()
    output = direct_shuffle(windows)
    for a in range(2):
        for b in range(2):
            assert torch.equal(view[:, :, a, b], output[:, :, a::2, b::2])


def test_shuffle_gradient_lands_on_the_windows_and_zero_elsewhere() -> None:
    windows = random_windows().requires_grad_()
    upstream = torch.randn(BATCH, CLASSES, 2 * ROWS, 2 * COLS, dtype=torch.float64)
    (window_shuffle(windows) * upstream).sum().backward()
    expected = torch.zeros_like(windows)
    for c in range(CLASSES):
        for a in range(2):
            for b in range(2):
                expected[:, 4 * c + 2 * a + b, a : a + ROWS, b : b + COLS] = upstream[
                    :, c, a::2, b::2
                ]
    assert torch.equal(windows.grad, expected)


def test_labels_and_maps_are_viewed_like_the_windows() -> None:
    labels = torch.randint(0, CLASSES, (BATCH, 2 * ROWS, 2 * COLS))
    maps = torch.randn(BATCH, CLASSES, 2 * ROWS, 2 * COLS)
    viewed_labels, viewed_maps = unshuffle_labels(labels), unshuffle_dense(maps)
    assert viewed_labels.shape == (BATCH, 2, 2, ROWS, COLS)
    assert viewed_maps.shape == (BATCH, CLASSES, 2, 2, ROWS, COLS)
    for a in range(2):
        for b in range(2):
            for i in range(ROWS):
                for j in range(COLS):
                    pixel = (2 * i + a, 2 * j + b)
                    assert torch.equal(viewed_labels[:, a, b, i, j], labels[:, pixel[0], pixel[1]])
                    assert torch.equal(
                        viewed_maps[:, :, a, b, i, j], maps[:, :, pixel[0], pixel[1]]
                    )


def test_an_attached_record_is_void_once_a_tensor_changes_in_place() -> None:
    windows = random_windows()
    output = window_shuffle(windows)
    terms = StageTerms(*(torch.zeros(1) for _ in StageTerms._fields))
    attach_windows(output, windows, terms)
    assert attached_windows(output) is windows and attached_terms(output) is terms
    terms.bias.add_(1)
    assert attached_windows(output) is None and attached_terms(output) is None


def test_a_record_of_other_windows_is_ignored() -> None:
    windows = random_windows()
    output = window_shuffle(windows)
    attach_windows(output, windows[:, :4])  # one class's windows, not this output's
    assert attached_windows(output) is None
    assert attached_windows(torch.zeros(1, 1, 2, 2)) is None  # nothing attached
