"""Training-step time of the head against the baseline at the same input size.

ELU-Net (n = 16), 4 input channels, 4 classes, R = 256, Adam, random data of the real shapes.
A baseline step trains against the mask at r; a head step against all stages up to 256.
Runs are interleaved and repeated; the median step time of each is reported, and the ratio to
the baseline both from those medians and within each repeat (its median and range), which
holds up better on a machine whose speed drifts.

usage: python benchmarks/train_step.py [--batch 32] [--steps 8] [--repeats 3] [--bf16]
       [--channels-last] [--no-malloc-setting] [--layerwise] [--heads plain skip]
       [--threads N] [--clock wall|cpu] [--profile]

--clock cpu times the process's CPU time instead of the wall clock: with one thread on a
machine shared with other work it still counts only this process's own work.
--profile prints, per variant, the operators that take the most CPU time over --steps steps
(torch.profiler, self time per step) instead of the timing table.
UPSEG_NATIVE=0 in the environment runs the heads without the native stage kernel
(upseg.losses.stage_ce), as on a machine without a C compiler.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from upseg.data.resize import downsample_labels
from upseg.engine.memory import keep_freed_memory
from upseg.losses import MultiScaleLoss, native, stage_ce
from upseg.models import UpscalingStage, build

R, CLASSES, CHANNELS = 256, 4, 4


def make_step(
    r: int,
    head: str | None,
    batch: int,
    bf16: bool,
    channels_last: bool,
    layerwise: bool,
    compiled: bool = False,
    loss: str = "ce",
):
    """One training step of ELU-Net (+ head) on fixed random data, as a closure. `compiled`:
    the forward pass and the loss go through torch.compile (inductor) as one function;
    `loss`: MultiScaleLoss's base loss."""
    torch.manual_seed(0)
    head_input = "logits" if head else None  # the head the recorded figures were taken with
    model = build(
        "elunet", CHANNELS, CLASSES, r, R if head else None, head=head, head_input=head_input
    ).train()
    for module in model.modules():
        if isinstance(module, UpscalingStage):
            module.composed = not layerwise
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = MultiScaleLoss(CLASSES, base=loss)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, CHANNELS, r, r)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = torch.randint(0, CLASSES, (batch, R, R), dtype=torch.uint8)
    if head is None:
        mask = downsample_labels(mask, r).contiguous()

    def forward_loss(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            outputs = model(x)
        return criterion([o.float() for o in outputs], mask)

    loss_of = torch.compile(forward_loss) if compiled else forward_loss

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(x, mask).backward()
        optimizer.step()

    return step


def interleaved(steps: dict, repeats: int, count: int, clock=time.perf_counter) -> dict:
    """Seconds per step of every variant, `repeats` times over, the variants back to back in
    each repeat (so that a ratio within one repeat sees one machine state)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step, count, clock))
    return times


def paired_text(times: list[float], reference: list[float]) -> str:
    """Median and range of the per-repeat ratios of `times` to `reference`."""
    paired = [a / b for a, b in zip(times, reference, strict=True)]
    return f"{statistics.median(paired):.2f} ({min(paired):.2f}-{max(paired):.2f})"


def timed(step, steps: int, clock=time.perf_counter) -> float:
    start = clock()
    for _ in range(steps):
        step()
    return (clock() - start) / steps


def print_profile(title: str, step, args: argparse.Namespace, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        timed(step, args.steps)
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / args.steps / 1000
    print(f"\n{title}: {total:.0f} ms per step (self CPU time under the profiler)")
    events = sorted(
        prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total
    )
    for event in events[:rows]:
        ms = event.self_cpu_time_total / args.steps / 1000
        print(f"  {ms:7.1f} ms  {event.key:30s} {str(event.input_shapes)[:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--heads", nargs="+", default=["plain", "skip"])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-malloc-setting", action="store_true")
    parser.add_argument(
        "--layerwise",
        action="store_true",
        help="run head stages as ConvTranspose2d then Conv2d (reference form)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    applied = False if args.no_malloc_setting else keep_freed_memory()
    kernel = "on" if stage_ce.native_library() else f"off ({native.unavailable_reason('stage_ce')})"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"bf16 {args.bf16}, channels_last {args.channels_last}, malloc setting {applied}, "
        f"head stages {'layerwise' if args.layerwise else 'composed'}, {args.clock} clock, "
        f"native stage kernel {kernel}"
    )
    if not args.profile:
        print(
            "| input | method | step ms (median) | images/s | ratio to baseline | "
            "ratio within each repeat (median, lowest-highest) |"
        )
        print("|---|---|---|---|---|---|")
    for r in args.sizes:
        variants = {"baseline": None, **{f"+{h}": h for h in args.heads}}
        steps = {
            name: make_step(r, head, args.batch, args.bf16, args.channels_last, args.layerwise)
            for name, head in variants.items()
        }
        for step in steps.values():
            timed(step, 2)  # warm-up
        if args.profile:
            for name, step in steps.items():
                print_profile(f"input {r}, elunet{'' if name == 'baseline' else name}", step, args)
            continue
        times = interleaved(steps, args.repeats, args.steps, clock)
        base = statistics.median(times["baseline"])
        for name in steps:
            t = statistics.median(times[name])
            print(
                f"| {r} | elunet{'' if name == 'baseline' else name} | {1000 * t:.0f} | "
                f"{args.batch / t:.1f} | {t / base:.2f} | "
                f"{paired_text(times[name], times['baseline'])} |"
            )


if __name__ == "__main__":
    main()
