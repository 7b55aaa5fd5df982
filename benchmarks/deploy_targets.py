"""Check the deployment targets against a `upseg bench` result (its bench.json).

Targets (ELU-Net baseline "elunet", head model "elunet+plain"):
  1. onnxruntime fp32, end to end: head latency at most 1.1x the baseline's at 16 and 32;
  2. forward only, at 16: the head's overhead over the bare backbone under 20%;
  3. end to end: the head at 16 has at least 1.5x the throughput of the baseline at 32;
  4. onnxruntime fp32 at least 1.3x faster (median latency) than eager PyTorch fp32 at r >= 32;
  5. onnxruntime int8 at least 1.5x faster than onnxruntime fp32 at r >= 64 (its accuracy, the
     other half of that target, is checked by `upseg export --int8` on a trained run).
Every ratio is printed for every runtime and batch size the file holds; the target lines are
marked. Nothing is measured here.

usage: python benchmarks/deploy_targets.py BENCH_DIR/bench.json [--base elunet]
       [--head elunet+plain] [--ort ort-fp32] [--torch torch-fp32] [--int8 ort-int8]
       [--statistic median|min]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--base", default="elunet")
    parser.add_argument("--head", default="elunet+plain")
    parser.add_argument("--ort", default="ort-fp32")
    parser.add_argument("--torch", default="torch-fp32")
    parser.add_argument("--int8", default="ort-int8")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="latency the ratios use: median (the targets) or the fastest call (a hint of an "
        "unshared machine)",
    )
    args = parser.parse_args()
    result = json.loads(args.bench_json.read_text())
    rows = {
        (r["method"], r["runtime"], r["mode"], r["input"], r["batch"]): r for r in result["rows"]
    }
    runtimes = sorted({r["runtime"] for r in result["rows"]})
    batches = sorted({r["batch"] for r in result["rows"]})
    sizes = sorted({r["input"] for r in result["rows"]})

    def ms(method: str, runtime: str, mode: str, size: int, batch: int) -> float | None:
        row = rows.get((method, runtime, mode, size, batch))
        return None if row is None else row[f"{args.statistic}_ms"]

    def report(label: str, value: float | None, ok: bool | None, target: bool) -> None:
        if value is None:
            print(f"  {label}: not measured")
            return
        verdict = "" if ok is None else ("  met" if ok else "  NOT met")
        print(f"  {'*' if target else ' '} {label}: {value:.2f}{verdict if target else ''}")

    print(f"(* = the target's own runtime and sizes; ratios of {args.statistic} latencies)")
    print(f"1. head / baseline end-to-end latency (target <= 1.1 with {args.ort} at 16 and 32)")
    for runtime in runtimes:
        for batch in batches:
            for size in sizes:
                head, base = (ms(m, runtime, "e2e", size, batch) for m in (args.head, args.base))
                ratio = head / base if head and base else None
                target = runtime == args.ort and size in (16, 32)
                report(f"{runtime} batch {batch} r {size}", ratio, ratio and ratio <= 1.1, target)
    print(f"2. head forward overhead over the backbone, % (target < 20 with {args.ort} at 16)")
    for runtime in runtimes:
        for batch in batches:
            for size in sizes:
                head, base = (
                    ms(m, runtime, "forward", size, batch) for m in (args.head, args.base)
                )
                over = 100 * (head / base - 1) if head and base else None
                target = runtime == args.ort and size == 16
                report(
                    f"{runtime} batch {batch} r {size}",
                    over,
                    over is not None and over < 20,
                    target,
                )
    print("3. end-to-end throughput, head at 16 / baseline at 32 (target >= 1.5)")
    for runtime in runtimes:
        for batch in batches:
            head, base = (
                ms(args.head, runtime, "e2e", 16, batch),
                ms(args.base, runtime, "e2e", 32, batch),
            )
            ratio = base / head if head and base else None  # throughput ratio = latency ratio
            report(f"{runtime} batch {batch}", ratio, ratio and ratio >= 1.5, runtime == args.ort)

    def speedup(slow: str, fast: str, target: float, min_size: int) -> None:
        """Latency of runtime `slow` over runtime `fast`, per method, mode, batch and size."""
        print(f"{slow} / {fast} latency (target >= {target} at r >= {min_size})")
        for method in (args.base, args.head):
            for mode in ("forward", "e2e"):
                for batch in batches:
                    for size in sizes:
                        before = ms(method, slow, mode, size, batch)
                        after = ms(method, fast, mode, size, batch)
                        ratio = before / after if before and after else None
                        report(
                            f"{method} {mode} batch {batch} r {size}",
                            ratio,
                            ratio and ratio >= target,
                            size >= min_size,
                        )

    print("4. ", end="")
    speedup(args.torch, args.ort, 1.3, 32)
    print("5. ", end="")
    speedup(args.ort, args.int8, 1.5, 64)


if __name__ == "__main__":
    main()
