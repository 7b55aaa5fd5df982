"""Shared tester: every registered backbone's test module subclasses BackboneTester."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from upseg.models import build

IN_CHANNELS = 2
NUM_CLASSES = 3
BATCH = 2
STAGES = 3  # R = 8 r, the smallest ratio the inner-skip head accepts


def first_layer(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))


class BackboneTester:
    backbone: ClassVar[str]
    backbone_kwargs: ClassVar[dict] = {}

    def make(self, input_size: int, head: str | None) -> nn.Module:
        output_size = input_size * 2**STAGES if head else None
        return build(
            self.backbone,
            IN_CHANNELS,
            NUM_CLASSES,
            input_size,
            output_size,
            head=head,
            **self.backbone_kwargs,
        )

    @pytest.mark.parametrize("head", [None, "plain", "skip"])
    @pytest.mark.parametrize("input_size", [16, 32, 64])
    def test_training_outputs_and_gradients(self, input_size: int, head: str | None) -> None:
        model = self.make(input_size, head).train()
        outputs = model(torch.randn(BATCH, IN_CHANNELS, input_size, input_size))
        stages = STAGES if head else 0
        assert isinstance(outputs, list)
        assert [tuple(o.shape) for o in outputs] == [
            (BATCH, NUM_CLASSES, input_size * 2**k, input_size * 2**k) for k in range(stages + 1)
        ]
        # Only the finest output carries a loss: its gradient must cross the whole head.
        outputs[-1].square().mean().backward()
        grad = first_layer(model.backbone).weight.grad
        assert grad is not None and grad.abs().sum() > 0

    @pytest.mark.parametrize("head", [None, "plain", "skip"])
    @pytest.mark.parametrize("input_size", [16, 32, 64])
    def test_eval_returns_one_finest_tensor(self, input_size: int, head: str | None) -> None:
        model = self.make(input_size, head).eval()
        with torch.no_grad():
            out = model(torch.randn(BATCH, IN_CHANNELS, input_size, input_size))
        side = input_size * 2**STAGES if head else input_size
        assert isinstance(out, torch.Tensor)
        assert out.shape == (BATCH, NUM_CLASSES, side, side)
        assert torch.isfinite(out).all()
