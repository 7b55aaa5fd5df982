import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upseg.data import PhantomReader
from upseg.data.resize import downsample_labels


def test_deterministic_from_the_seed() -> None:
    a = PhantomReader(size=64, slices_per_patient=4, seed=3).read(1)
    b = PhantomReader(size=64, slices_per_patient=4, seed=3).read(1)
    c = PhantomReader(size=64, slices_per_patient=4, seed=4).read(1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.masks, c.masks)


def test_anatomy_and_classes() -> None:
    reader = PhantomReader(size=256, num_patients=3, slices_per_patient=8)
    cases = [reader.read(i) for i in reader.items()]
    case = cases[0]
    assert case.images.shape == (8, 4, 256, 256) and case.images.dtype == np.float32
    assert reader.class_names == ("background", "NCR", "ED", "ET")
    masks = np.concatenate([c.masks for c in cases])
    assert set(np.unique(masks)) == {0, 1, 2, 3}
    brain = (case.images != 0).any(axis=1)
    for channel in case.images.transpose(1, 0, 2, 3):  # z-scored over the head
        assert abs(channel[brain].mean()) < 1e-3 and abs(channel[brain].std() - 1) < 1e-3
    # the contrasts differ: ET is bright on t1ce relative to t1
    et = case.masks == 3
    if et.any():
        assert case.images[:, 2][et].mean() > case.images[:, 1][et].mean()


def test_boundaries_carry_detail_beyond_16() -> None:
    """Nearest up-sampling of the 16x16 mask misses a good share of the tumour pixels at R."""
    case = PhantomReader(size=256, num_patients=2, slices_per_patient=6).read(0)
    mask = torch.from_numpy(case.masks.astype(np.int64))
    coarse = downsample_labels(mask, 16)
    back = F.interpolate(coarse[:, None].float(), scale_factor=16, mode="nearest")[:, 0].long()
    tumour = (mask > 0) | (back > 0)
    disagreement = float((back != mask)[tumour].float().mean())
    assert disagreement > 0.15


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, r"size \(--size\) must be between 1 and"),
        ({"size": -8}, r"size \(--size\) must be between 1 and"),
        ({"num_patients": 0}, r"num_patients \(--patients\) must be an integer >= 2, got 0"),
        ({"num_patients": 1}, r"\(--patients\) must be an integer >= 2, got 1"),
        ({"slices_per_patient": 0}, r"\(--slices-per-patient\) must be an integer >= 1, got 0"),
        ({"seed": -1}, r"seed \(--seed\) must be an integer >= 0, got -1"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PhantomReader(**options)
