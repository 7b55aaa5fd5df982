"""Losses: the multi-scale loss over every head stage, and the native kernel that scores the
finest stage on the CPU."""

from upseg.losses.multiscale import (
    BASE_LOSSES,
    STAGE_WEIGHTS,
    TARGET_RESIZES,
    MultiScaleLoss,
    soft_dice_loss,
    softmax_cross_entropy,
    stage_weights,
)

__all__ = [
    "BASE_LOSSES",
    "STAGE_WEIGHTS",
    "TARGET_RESIZES",
    "MultiScaleLoss",
    "soft_dice_loss",
    "softmax_cross_entropy",
    "stage_weights",
]
