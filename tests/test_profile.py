import pytest
import torch
from torch import nn

from upseg.models import build
from upseg.profile import count_macs, count_parameters, profile_row


def test_conv_macs_by_hand() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    assert count_macs(conv, (2, 3, 10, 10)) == 2 * 5 * 3 * 9 * 10 * 10


def test_head_adds_under_a_hundredth_of_a_gmac() -> None:
    base = count_macs(build("elunet", 1, 1, 16), (1, 1, 16, 16))
    with_head = count_macs(build("elunet", 1, 1, 16, 256), (1, 1, 16, 16))
    # a stage with output side s, Nc = 1: ConvTranspose 4 (s/2)^2 + 3x3 conv 9 s^2 = 10 s^2 MACs
    assert with_head - base == sum(10 * s * s for s in (32, 64, 128, 256))
    assert 0 < (with_head - base) / 1e9 < 0.01


def test_counting_leaves_the_model_untouched() -> None:
    model = build("elunet", 1, 2, 16, 64, base_width=4).train()
    before = [p.clone() for p in model.parameters()]
    count_macs(model, (1, 1, 16, 16))
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_profile_row() -> None:
    row = profile_row("elunet", "plain", 16, 256, 1, 1)
    assert row["head_params"] == 60
    assert row["params"] == count_parameters(build("elunet", 1, 1, 16)) + 60
    assert row["gmac"] == pytest.approx(0.0457, rel=0.01)
