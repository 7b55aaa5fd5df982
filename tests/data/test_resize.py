"""The resolution conventions: labels take each block's centre pixel, images its mean."""

import pytest
import torch
import torch.nn.functional as F

from upseg.data.resize import (
    DOWNSAMPLE_MODES,
    downsample_image,
    downsample_labels,
    one_hot,
    stretch_logits,
)


def numbered(size: int) -> torch.Tensor:
    """(size, size) with pixel (i, j) = size * i + j."""
    return torch.arange(size * size).reshape(size, size)


def test_labels_take_the_centre_pixel_of_each_block() -> None:
    mask = numbered(8)  # blocks of 4 x 4 at size 2: centre pixel (2, 2) of each
    assert downsample_labels(mask, 2).tolist() == [[18, 22], [50, 54]]
    # blocks of 2 x 2 at size 4: pixel (1, 1) of each
    assert downsample_labels(mask, 4).tolist() == [
        [9, 11, 13, 15],
        [25, 27, 29, 31],
        [41, 43, 45, 47],
        [57, 59, 61, 63],
    ]


def test_labels_keep_leading_dimensions_and_their_size() -> None:
    masks = torch.stack([numbered(4), 100 + numbered(4)])  # (2, 4, 4)
    assert downsample_labels(masks, 2).tolist() == [[[5, 7], [13, 15]], [[105, 107], [113, 115]]]
    assert torch.equal(downsample_labels(masks, 4), masks)


@pytest.mark.parametrize(("size", "target"), [(10, 3), (8, 16)])
def test_sizes_that_are_not_a_whole_factor_are_refused(size: int, target: int) -> None:
    with pytest.raises(ValueError, match="not an integer factor"):
        downsample_labels(numbered(size), target)


def test_area_downsampling_is_the_block_mean() -> None:
    image = numbered(4).float()[None, None]  # (1, 1, 4, 4)
    expected = [
        [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4],
        [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4],
    ]
    assert downsample_image(image, 2, "area")[0, 0].tolist() == expected


def test_nearest_image_downsampling_matches_the_labels() -> None:
    image = torch.randn(2, 3, 16, 16)
    ours = downsample_image(image, 4, "nearest")
    assert torch.equal(ours, image[..., 2::4, 2::4])
    assert torch.equal(ours, downsample_labels(image, 4))


def test_bilinear_downsampling_has_no_antialiasing() -> None:
    image = torch.randn(1, 2, 8, 8)
    # factor 2, align_corners=False: output pixel i reads input 2 i + 0.5, the mean of two
    expected = (image[..., 0::2, :] + image[..., 1::2, :]) / 2
    expected = (expected[..., 0::2] + expected[..., 1::2]) / 2
    torch.testing.assert_close(downsample_image(image, 4, "bilinear"), expected)


def test_downsampling_to_the_same_size_returns_the_image_and_unknown_modes_fail() -> None:
    image = torch.randn(1, 1, 4, 4)
    for mode in DOWNSAMPLE_MODES:
        assert downsample_image(image, 4, mode) is image
    with pytest.raises(ValueError, match="unknown downsampling 'cubic'"):
        downsample_image(image, 2, "cubic")


def test_stretched_logits_are_bilinear_with_edges_repeated() -> None:
    logits = torch.tensor([[0.0, 4.0], [0.0, 4.0]])[None, None]
    # sample points (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped at the edges
    row = [0.0, 1.0, 3.0, 4.0]
    assert stretch_logits(logits, 4)[0, 0].tolist() == [row] * 4
    assert stretch_logits(logits, 2) is logits


def test_one_hot_gives_zeros_outside_the_classes_and_fills_out() -> None:
    labels = torch.tensor([[[0, 2], [1, 5]]], dtype=torch.uint8)
    result = one_hot(labels, 3)
    assert result.shape == (1, 3, 2, 2) and result.dtype == torch.float32
    assert result[0].tolist() == [
        [[1.0, 0.0], [0.0, 0.0]],
        [[0.0, 0.0], [1.0, 0.0]],
        [[0.0, 1.0], [0.0, 0.0]],
    ]
    out = torch.full((1, 3, 2, 2), 7.0).contiguous(memory_format=torch.channels_last)
    assert one_hot(labels, 3, out=out) is out
    assert torch.equal(out, result)


def test_one_hot_widens_labels_too_narrow_for_the_class_count() -> None:
    labels = torch.tensor([[True, False]])
    assert one_hot(labels, 2, dtype=torch.int64)[0].tolist() == [[0, 1], [1, 0]]
    many = torch.tensor([[300]], dtype=torch.int16)
    assert one_hot(many, 400)[0, 300, 0].item() == 1.0
    assert F.one_hot(torch.tensor([2]), 3).tolist() == one_hot(torch.tensor([2]), 3).long().tolist()
