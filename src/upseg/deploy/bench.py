"""Inference benchmark: latency and throughput of models x input sizes x runtimes x batches.

Two modes, measured side by side for every case:
  - "forward": the network only, image at r in, logits out (backbone for a baseline,
    backbone + head for a head model);
  - "e2e" (end to end): image at r in, label mask at R out, what a user gets: a baseline adds
    the bilinear stretch to R and argmax, a head model adds argmax.
Runtimes are in upseg.deploy.bench_runtimes. Inputs are random and made once per case
outside the timed region; outputs are what the runtime returns. On CUDA every timed call
ends with torch.cuda.synchronize().

Groups. Cases run in groups of one batch size and one input size (every method x runtime x
mode at that size): a group's cases are prepared, warmed up and timed interleaved in
`rounds` rounds (each round: one untimed call, so a thread pool left spinning by the
previous case does not count, then its share of `repeats` timed calls), which spreads the
drift of a shared machine over the cases that are compared; then the group's sessions are
released, so memory holds one group at a time.

Memory. Before a group, each case's need is estimated (weights twice, batch x the model's
activation bytes, input, and end to end the logits at R and the labels) and cases are
admitted while the group's sum fits the budget (`max_memory` bytes, by default 80% of the
memory available when the bench starts); the others are skipped with the reason. Each case
records the process's peak resident set over its set-up and warm-up (Linux VmHWM, reset
before the case), which includes the earlier cases of its group still held.

Achieved GFLOP/s = 2 x MACs per image (upseg.models.profile.count_macs: the published layers, also
for a folded head; resize and argmax count nothing) x batch / median time, shown against the
machine's measured ceiling (upseg.deploy.machine.compute_ceiling: the best of a large conv in
PyTorch and in onnxruntime and a large GEMM, with the same threads). Rows also keep the
fastest call (min_ms), a hint of what an unshared machine would show.
"""

from __future__ import annotations

import gc
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from upseg.deploy.bench_runtimes import (
    DEFAULT_RUNTIMES,
    MODES,
    RUNTIMES,
    BenchContext,
    BenchModel,
    Runner,
    Runtime,
    register_runtime,
)
from upseg.deploy.machine import (
    available_memory,
    compute_ceiling,
    load_average,
    machine_info,
    peak_rss,
    reset_peak_rss,
    synchronizer,
    timed_ms,
)
from upseg.deploy.runtimes import available_cores
from upseg.models import LowResSegmenter

MODE_TITLES = {"forward": "forward", "e2e": "end-to-end"}
MEMORY_SHARE = 0.8  # of the memory available at the start, the default budget
__all__ = [
    "DEFAULT_RUNTIMES",
    "MODES",
    "RUNTIMES",
    "BenchModel",
    "Runtime",
    "case_memory",
    "load_bench_models",
    "register_runtime",
    "run_bench",
]


def load_bench_models(
    methods: Sequence[str | Path],
    resolutions: Sequence[int],
    output_size: int,
    in_channels: int,
    num_classes: int,
    backbone_kwargs: dict | None = None,
    checkpoint: str = "last",
) -> tuple[list[BenchModel], list[dict[str, object]]]:
    """Models from methods (`upseg sweep` syntax, fresh random weights, one per resolution)
    or run directories (their own weights and sizes; `resolutions` do not apply to them).
    Returns the models and the skipped (method, input, reason) combinations."""
    from upseg.models import BASELINE, build, method_name, parse_method
    from upseg.models.profile import activation_mb, count_macs
    from upseg.models.registry import make_backbone

    def entry(name: str, model: LowResSegmenter, output: int) -> BenchModel:
        shape = model.input_shape()
        activations = int(activation_mb(model, shape) * 1e6)
        with torch.inference_mode():
            classes = int(model(torch.zeros(shape)).shape[1])
        return BenchModel(name, model, output, count_macs(model, shape), activations, classes)

    entries, skipped = [], []
    for spec in methods:
        if Path(spec).is_dir():
            from upseg.engine import load_run

            model, config, _ = load_run(spec, checkpoint)
            label = method_name(config.backbone, config.head, config.head_init, config.head_input)
            entries.append(entry(f"{Path(spec).name} ({label})", model, model.output_size))
            continue
        method = parse_method(str(spec))
        head = None if method.head == BASELINE else method.head
        if backbone_kwargs:  # bad options are bad usage, not a skipped size: fail here
            with torch.device("meta"):
                make_backbone(method.backbone, in_channels, num_classes, **backbone_kwargs)
        for size in resolutions:
            try:
                model = build(
                    method.backbone,
                    in_channels,
                    num_classes,
                    size,
                    output_size if head else None,
                    head=head,
                    head_init=method.init,
                    head_input=method.input,
                    **(backbone_kwargs or {}),
                ).eval()
            except ValueError as error:
                skipped.append(
                    {"method": str(spec), "input": size, "runtime": "all", "reason": str(error)}
                )
                continue
            entries.append(entry(str(spec), model, output_size))
    return entries, skipped


def case_memory(entry: BenchModel, mode: str, batch: int) -> int:
    """Bytes one case may hold at once (see the module docstring)."""
    weights = 2 * 4 * sum(p.numel() for p in entry.model.parameters())
    image = batch * 4 * entry.in_channels * entry.feed_size**2
    out = 0
    if mode == "e2e":  # logits stretched to R (float32) and labels (int64)
        out = batch * entry.output_size**2 * (4 * entry.classes + 8)
    return weights + batch * entry.activation_bytes + image + out


def _summary(times: list[float], batch: int) -> dict[str, float]:
    median = float(np.percentile(times, 50))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": min(times),
        "images_per_s": batch / (median / 1000),
    }


def _check_settings(runtimes, device, batches, repeats, rounds, warmup, threads, sizes) -> None:
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; choose from {sorted(RUNTIMES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; choose cpu or cuda")
    if min(batches) < 1 or repeats < 1 or rounds < 1 or warmup < 0:
        raise ValueError("batches, repeats and rounds must be at least 1, warmup at least 0")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if min(sizes["output_size"], sizes["in_channels"], sizes["num_classes"]) < 1:
        raise ValueError("--output-size, --in-channels and --classes must be at least 1")
    if min(sizes["resolutions"], default=1) < 1:
        raise ValueError(f"--resolutions must be at least 1, got {min(sizes['resolutions'])}")
    if min(sizes["peak_shape"]) < 1:
        raise ValueError(f"--peak-shape values must be at least 1, got {list(sizes['peak_shape'])}")
    if sizes["max_memory"] is not None and not sizes["max_memory"] > 0:
        raise ValueError(f"--max-memory must be above 0, got {sizes['max_memory']}")


def run_bench(
    methods: Sequence[str | Path],
    resolutions: Sequence[int] = (16, 32, 64),
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    batches: Sequence[int] = (1, 8),
    *,
    output_size: int = 256,
    in_channels: int = 4,
    num_classes: int = 4,
    threads: int | None = None,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 20,
    rounds: int = 4,
    peak_shape: tuple[int, int, int] = (16, 64, 128),
    backbone_kwargs: dict | None = None,
    checkpoint: str = "last",
    max_memory: int | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Time every model x resolution x runtime x batch in both modes.

    Returns {"machine", "settings", "conv_peak", "rows", "skipped"}: one row per measured
    (method, runtime, mode, input, batch) with median_ms, p90_ms, images_per_s, gflops,
    pct_peak, memory_estimate_mb and rss_peak_mb; `skipped` lists {method, input, runtime,
    reason} for what could not run (or did not fit `max_memory` bytes).
    """
    sizes = {
        "output_size": output_size,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "resolutions": resolutions,
        "peak_shape": peak_shape,
        "max_memory": max_memory,
    }
    _check_settings(runtimes, device, batches, repeats, rounds, warmup, threads, sizes)
    threads = threads or available_cores()
    budget = max_memory or int(MEMORY_SHARE * available_memory())
    entries, skipped = load_bench_models(
        methods, resolutions, output_size, in_channels, num_classes, backbone_kwargs, checkpoint
    )
    load_before = load_average()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak_before = compute_ceiling(device, threads, peak_shape)
        usable = []
        for name in runtimes:
            reason = RUNTIMES[name].unavailable(device)
            if reason:
                skipped.append({"method": "all", "input": "all", "runtime": name, "reason": reason})
            else:
                usable.append(RUNTIMES[name])
        steps = len(entries) * len(batches) * len(usable) * len(MODES) * (rounds + 1)
        bar = tqdm(total=steps, desc="bench", unit="step", disable=not progress)
        timing = Timing(warmup, repeats, rounds, budget, bar)
        rows = _bench_groups(entries, usable, batches, device, threads, timing, skipped)
        bar.close()
        peak_after = compute_ceiling(device, threads, peak_shape)
    finally:
        torch.set_num_threads(previous_threads)
    peak = _add_rates(rows, peak_before, peak_after)
    machine = machine_info(device, threads)
    machine["load_average_before_after"] = [load_before, load_average()]
    return {
        "machine": machine,
        "settings": {
            "methods": [str(m) for m in methods],
            "resolutions": list(resolutions),
            "runtimes": list(runtimes),
            "batches": list(batches),
            "output_size": output_size,
            "in_channels": in_channels,
            "classes": num_classes,
            "warmup": warmup,
            "repeats": repeats,
            "rounds": rounds,
            "memory_budget_mb": budget / 1e6,
        },
        "conv_peak": peak,
        "rows": rows,
        "skipped": skipped,
    }


def _add_rates(rows: list[dict], peak_before: dict, peak_after: dict) -> dict:
    """Each row's achieved GFLOP/s and share of the ceiling, measured before and after the
    cases (the better median counts); returns the ceiling."""
    peak = max(peak_before, peak_after, key=lambda p: p["gflops"])
    peak = {**peak, "gflops_before_after": [peak_before["gflops"], peak_after["gflops"]]}
    for row in rows:
        flops = 2 * row["gmac_per_image"] * 1e9 * row["batch"] / (row["median_ms"] / 1000)
        row["gflops"] = flops / 1e9
        row["pct_peak"] = 100 * row["gflops"] / peak["gflops"]
    return peak


def _bench_groups(
    entries: list[BenchModel],
    usable: list[Runtime],
    batches: Sequence[int],
    device: str,
    threads: int,
    timing: Timing,
    skipped: list,
) -> list[dict]:
    """Every group of one batch size and one input size, one after the other; a group's
    sessions are released before the next."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="upseg-bench-") as workdir:
        ctx = BenchContext(device, threads, Path(workdir))
        for batch in batches:
            for size in dict.fromkeys(e.input_size for e in entries):
                group = [e for e in entries if e.input_size == size]
                rows += _bench_group(group, usable, batch, ctx, timing, skipped)
                ctx.release()
                gc.collect()
    return rows


class Timing:
    """How a group is timed, its memory budget and the shared progress bar."""

    def __init__(self, warmup: int, repeats: int, rounds: int, budget: int, bar: tqdm) -> None:
        self.warmup, self.repeats, self.rounds = warmup, repeats, rounds
        self.budget, self.bar = budget, bar


def _skip(skipped: list, entry: BenchModel, runtime: str, reason: str) -> None:
    skipped.append(
        {"method": entry.name, "input": entry.input_size, "runtime": runtime, "reason": reason}
    )


def _bench_group(
    entries: list[BenchModel],
    runtimes: list[Runtime],
    batch: int,
    ctx: BenchContext,
    timing: Timing,
    skipped: list[dict[str, object]],
) -> list[dict[str, object]]:
    """All cases of one batch size and input size: admitted by memory, prepared, warmed up
    and timed interleaved."""
    cases: list[tuple[dict[str, object], Runner]] = []
    failed: set[tuple[str, int, str]] = set()
    held, bar = 0, timing.bar
    sync = synchronizer(ctx.device)
    for entry in entries:
        for runtime in runtimes:
            for mode in MODES:
                key = (entry.name, entry.input_size, runtime.name)
                if key in failed:
                    bar.update(timing.rounds + 1)
                    continue
                need = case_memory(entry, mode, batch)
                if held + need > timing.budget:
                    _skip(
                        skipped,
                        entry,
                        runtime.name,
                        f"{MODE_TITLES[mode]} at batch {batch} needs about {need / 1e9:.2f} GB "
                        f"with {held / 1e9:.2f} GB held, over the {timing.budget / 1e9:.2f} GB "
                        "budget (--max-memory)",
                    )
                    bar.update(timing.rounds + 1)
                    continue
                reset_peak_rss()
                try:
                    run = runtime.prepare(entry, mode, batch, ctx)
                    for _ in range(timing.warmup):
                        run()
                    sync()
                except Exception as error:  # an export or session failure skips this runtime
                    failed.add(key)
                    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                    _skip(skipped, entry, runtime.name, reason)
                    bar.update(timing.rounds + 1)
                    continue
                rss = peak_rss()
                held += need
                bar.set_postfix_str(f"batch {batch}, input {entry.input_size}")
                bar.update()
                meta = {
                    "method": entry.name,
                    "runtime": runtime.name,
                    "mode": mode,
                    "input": entry.input_size,
                    "output": entry.output_size if mode == "e2e" else _forward_side(entry),
                    "batch": batch,
                    "device": ctx.device,
                    "threads": ctx.threads,
                    "gmac_per_image": entry.macs / 1e9,
                    "memory_estimate_mb": need / 1e6,
                    "rss_peak_mb": None if rss is None else rss / 1e6,
                }
                cases.append((meta, run))
    dropped = [c for c in cases if (c[0]["method"], c[0]["input"], c[0]["runtime"]) in failed]
    bar.update(len(dropped) * timing.rounds)
    cases = [c for c in cases if c not in dropped]
    per_round = math.ceil(timing.repeats / timing.rounds)
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(timing.rounds):
        for i, (_, run) in enumerate(cases):
            run()  # untimed: lets the previous case's thread pool go quiet
            sync()
            times[i] += [timed_ms(run, sync) for _ in range(per_round)]
            bar.update()
    return [
        {**meta, **_summary(t, batch), "calls": len(t)}
        for (meta, _), t in zip(cases, times, strict=True)
    ]


def _forward_side(entry: BenchModel) -> int:
    """Side of the forward output: R for a head model, r for a baseline."""
    return entry.output_size if entry.model.head is not None else entry.input_size
