"""`upseg bench`: latency and throughput of models x input sizes x runtimes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upseg.cli.common import json_object
from upseg.deploy.bench_runtimes import DEFAULT_RUNTIMES, RUNTIMES
from upseg.engine.runs import CHECKPOINTS


def run(args: argparse.Namespace) -> int:
    from upseg.deploy.bench import run_bench
    from upseg.deploy.bench_report import BENCH_FILES, bench_preamble, bench_table, write_bench
    from upseg.deploy.outputs import check_output_folder

    check_output_folder(args.out, "--out", BENCH_FILES)
    if args.keep_freed_memory:
        from upseg.engine.memory import keep_freed_memory

        keep_freed_memory()
    result = run_bench(
        args.methods,
        args.resolutions,
        args.runtimes,
        args.batches,
        output_size=args.output_size,
        in_channels=args.in_channels,
        num_classes=args.classes,
        threads=args.threads,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        peak_shape=tuple(args.peak_shape),
        backbone_kwargs=args.backbone_kwargs,
        checkpoint=args.checkpoint,
        max_memory=None if args.max_memory is None else int(args.max_memory * 1e9),
        progress=not args.quiet,
    )
    result["settings"]["command"] = "upseg " + " ".join(args.argv)
    result["settings"]["keep_freed_memory"] = args.keep_freed_memory
    print(bench_preamble(result) + "\n")
    if not result["rows"]:
        print(
            f"error: nothing was measured (every case was skipped, reasons above); nothing "
            f"written to {args.out}",
            file=sys.stderr,
        )
        return 1
    print(bench_table(result))
    for path in write_bench(result, args.out):
        print(f"wrote {path}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="latency and throughput of models x input sizes x runtimes (torch, onnxruntime)",
        description="Time each model at each input size with each runtime at batch 1 and a "
        "larger batch, forward only and end to end (image at r in, label mask at R out), "
        "against the machine's conv peak; print a table and write CSV, JSON and a figure "
        "(paper Fig. 6).",
        epilog="examples:\n  upseg bench --methods elunet elunet+plain --resolutions 16 32 64 "
        "--threads 2 --out bench/\n  upseg bench --methods runs/head16 runs/base16 --out "
        "bench/ --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        required=True,
        metavar="METHOD",
        help="backbone[+plain[@features]|+skip][:bilinear|:pytorch] (fresh weights) or a run "
        "directory",
    )
    bench.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 64], metavar="r")
    bench.add_argument(
        "--runtimes",
        nargs="+",
        default=list(DEFAULT_RUNTIMES),
        choices=sorted(RUNTIMES),
        metavar="RUNTIME",
        help=f"from: {', '.join(sorted(RUNTIMES))} (default: all)",
    )
    bench.add_argument("--batches", type=int, nargs="+", default=[1, 8], metavar="B")
    bench.add_argument("--output-size", type=int, default=256, help="R (default 256)")
    bench.add_argument("--in-channels", type=int, default=4)
    bench.add_argument("--classes", type=int, default=4)
    bench.add_argument(
        "--threads", type=int, help="intra-op threads, at least 1 (default: all cores)"
    )
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    bench.add_argument("--warmup", type=int, default=3, help="untimed calls per case")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    bench.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    bench.add_argument(
        "--max-memory",
        type=float,
        metavar="GB",
        help="memory budget: cases whose estimate does not fit are skipped with the reason "
        "(default 80%% of the memory available at the start)",
    )
    bench.add_argument(
        "--peak-shape",
        type=int,
        nargs=3,
        default=[16, 64, 128],
        metavar=("BATCH", "CHANNELS", "SIZE"),
        help="the 3x3 conv that, in PyTorch and onnxruntime beside a 1024^3 GEMM, measures "
        "the ceiling (default 16 64 128)",
    )
    bench.add_argument("--backbone-kwargs", type=json_object, metavar="JSON")
    bench.add_argument("--checkpoint", choices=CHECKPOINTS, default="last")
    bench.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="apply upseg.engine.memory.keep_freed_memory() (glibc malloc) first, as training does",
    )
    bench.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for bench.{md,csv,json} and the figure, written together only when "
        "something was measured",
    )
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=run, parser=bench)
