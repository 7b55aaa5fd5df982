"""The native stage kernel (upseg.stage_ce) against plain PyTorch and torch.compile.

One training step of ELU-Net + head (benchmarks/train_step.py's set-up: n = 16, 4 channels,
4 classes, R = 256, Adam, random data) in three forms, interleaved and repeated:
  - native: upseg as it trains today, the C kernel scoring the head's stages;
  - pytorch: the same step with the kernel switched off (the path used without a compiler);
  - compile: the kernel off and the forward pass plus loss through torch.compile (inductor).
The compile form is compiled (and warmed up) before timing; its compile time is printed.
Median step time of each form and the ratio to native within each repeat are reported.

usage: python benchmarks/stage_kernel.py [--sizes 16 32] [--heads plain] [--batch 32]
       [--steps 8] [--repeats 3] [--bf16] [--threads N] [--loss ce|dice_ce|dice]
       [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from train_step import interleaved, make_step, paired_text, timed

from upseg.deploy.machine import cpu_flags
from upseg.engine.memory import keep_freed_memory
from upseg.losses import native, stage_ce


@contextlib.contextmanager
def kernel_off() -> Iterator[None]:
    """MultiScaleLoss takes its PyTorch path inside the block, as where no kernel builds."""
    usable = stage_ce.usable
    stage_ce.usable = lambda *args: False
    try:
        yield
    finally:
        stage_ce.usable = usable


def without_kernel(step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with kernel_off():
            step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--heads", nargs="+", default=["plain"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--loss", default="ce", choices=["ce", "dice_ce", "dice"])
    parser.add_argument("--no-compile", action="store_true", help="leave the compile form out")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    kernel = "built" if stage_ce.native_library() else native.unavailable_reason("stage_ce")
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"bf16 {args.bf16}, loss {args.loss}, native kernel {kernel}, CPU flags: "
        f"{' '.join(flags)}"
    )
    print("| input | head | form | step ms (median) | images/s | ratio to native (median, range) |")
    print("|---|---|---|---|---|---|")
    for r in args.sizes:
        for head in args.heads:
            setup = (r, head, args.batch, args.bf16, False, False)
            forms = {
                "native": make_step(*setup, loss=args.loss),
                "pytorch": without_kernel(make_step(*setup, loss=args.loss)),
            }
            if not args.no_compile:
                compiled = make_step(*setup, compiled=True, loss=args.loss)
                forms["compile"] = without_kernel(compiled)
                start = time.perf_counter()
                timed(forms["compile"], 2)  # compiles; the first calls also warm up
                compile_s = time.perf_counter() - start
            for step in forms.values():
                timed(step, 2)
            times = interleaved(forms, args.repeats, args.steps)
            for name in forms:
                t = statistics.median(times[name])
                print(
                    f"| {r} | {head} | {name} | {1000 * t:.0f} | {args.batch / t:.1f} | "
                    f"{paired_text(times[name], times['native'])} |"
                )
            if not args.no_compile:
                print(f"(input {r}, {head}: the first 2 compiled steps took {compile_s:.0f} s)")


if __name__ == "__main__":
    main()
