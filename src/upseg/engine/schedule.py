"""Learning-rate schedules, as a pure function of the optimiser step.

The rate depends only on (step, total steps), never on state, so a resumed run replays the
same rates as an uninterrupted one. Warm-up rises linearly from base/W to base over the first
W steps; after it, with p the fraction of the remaining steps done (0 at the first, < 1 at the
last):
  constant  base
  cosine    base * (1 + cos(pi p)) / 2          (timm's cosine without restarts, to 0)
  poly      base * (1 - p) ** 0.9               (nnU-Net's polynomial decay)
"""

from __future__ import annotations

import math

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "poly")
POLY_EXPONENT = 0.9


def learning_rate(base: float, schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The rate for optimiser step `step` (0-based) of `total`; `warmup` steps first."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if total < 1 or not 0 <= step < total:
        raise ValueError(f"step {step} is outside 0..{total - 1}")
    warmup = min(max(warmup, 0), total)
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base * (1.0 - progress) ** POLY_EXPONENT
