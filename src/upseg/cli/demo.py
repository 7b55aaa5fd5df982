"""`upseg demo`: baseline against head on the phantom (or real data), end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from upseg.data import FILE_FORMATS


def run(args: argparse.Namespace) -> int:
    from upseg.experiments.demo import run_demo

    if (args.data is None) != (args.format is None):
        args.parser.error("--data and --format go together (e.g. --data DIR --format brats)")
    run_demo(
        args.out,
        args.data,
        args.format,
        tuple(args.resolutions),
        args.epochs,
        args.batch_size,
        progress=not args.quiet,
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="baseline against up-scaling head on the built-in phantom: table and figures",
        description="Train the ELU-Net baseline and ELU-Net + head at each input size, score "
        "both at full resolution, count their cost, time them, and print a table. About 5 "
        "minutes on 2 CPU cores with the defaults; re-running reuses finished runs.",
        epilog="examples:\n  upseg demo\n  upseg demo --data data/brats2018 "
        "--format brats --epochs 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("upseg-out/demo"),
        help="output folder (default upseg-out/demo)",
    )
    demo.add_argument("--data", type=Path, help="a real dataset instead of the phantom")
    demo.add_argument("--format", choices=FILE_FORMATS)
    demo.add_argument("--resolutions", type=int, nargs="+", default=[16, 32], metavar="R")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=run, parser=demo)
