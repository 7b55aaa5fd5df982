"""Measured latency of what a user gets: input at r in, label mask at R out."""

from __future__ import annotations

import statistics
import time

import torch

from upseg.data.resize import stretch_logits
from upseg.models import LowResSegmenter


@torch.no_grad()
def end_to_end_latency_ms(
    model: LowResSegmenter,
    output_size: int,
    batch: int = 1,
    warmup: int = 5,
    repeats: int = 30,
) -> dict[str, float]:
    """Median and p90 milliseconds of model (+ bilinear stretch to R for a baseline) + argmax,
    PyTorch eager on the CPU with the current thread count."""
    model = model.eval()
    x = torch.randn(model.input_shape(batch))

    def run() -> torch.Tensor:
        return stretch_logits(model(x), output_size).argmax(1)

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}
