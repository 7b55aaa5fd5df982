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
    # options for tests where the width does not matter (default: backbone_kwargs)
    narrow_kwargs: ClassVar[dict | None] = None

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

    @pytest.mark.parametrize("init", ["upsample", "bilinear"])
    def test_features_head_starts_as_the_logits_head(self, init: str) -> None:
        """The logit conv is found and split off, and stage 1 starts as that conv on every
        sub-pixel: with the same backbone weights both models give the same outputs."""
        size = 16
        kwargs = self.backbone_kwargs if self.narrow_kwargs is None else self.narrow_kwargs

        def seeded_build(**extra: str) -> nn.Module:
            torch.manual_seed(0)
            return build(
                self.backbone,
                IN_CHANNELS,
                NUM_CLASSES,
                size,
                8 * size,
                head_init=init,
                **kwargs,
                **extra,
            )

        logits_model = seeded_build(head_input="logits")
        model = seeded_build()  # the default: the plain head reads the features
        assert model.head_input == "features" and logits_model.head_input == "logits"
        conv = model.logit_conv
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert model.head.stages[0][0].in_channels == conv.in_channels == model.head.in_channels
        x = torch.randn(BATCH, IN_CHANNELS, size, size)
        with torch.no_grad():
            features = model.eval().backbone(x)
            assert features.shape == (BATCH, conv.in_channels, size, size)
            torch.testing.assert_close(conv(features), logits_model.eval().backbone(x))
            torch.testing.assert_close(model(x), logits_model(x), rtol=1e-5, atol=1e-5)
        outputs, expected = model.train()(x), logits_model.train()(x)
        assert len(outputs) == len(expected) == STAGES + 1
        for got, want in zip(outputs, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # Y0 (the logits at r) trains the logit conv, the finest output trains stage 1
        sum(o.square().mean() for o in outputs).backward()
        assert conv.weight.grad.abs().sum() > 0
        assert model.head.stages[0][0].weight.grad.abs().sum() > 0
        assert first_layer(model.backbone).weight.grad.abs().sum() > 0
