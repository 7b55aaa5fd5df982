"""`upseg evaluate`: a run scored at full resolution, written as JSON, CSV and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from upseg.cli.common import positive_int
from upseg.engine.runs import CHECKPOINTS, SPLITS


def run(args: argparse.Namespace) -> int:
    from upseg.experiments.evaluate import evaluate_run

    if not args.tolerance >= 0 or args.tolerance == float("inf"):
        args.parser.error(
            f"--tolerance must be a finite number of pixels >= 0, not {args.tolerance}"
        )
    written = evaluate_run(
        args.run,
        checkpoint=args.checkpoint,
        split=args.split,
        figures=args.figures,
        against=args.against,
        num_slices=args.num_slices,
        progress=not args.quiet,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="score a run at full resolution: pooled and per patient, overlap and boundary",
        description="Score a trained run on its validation split at R (baselines are stretched "
        "bilinearly first) and write JSON and CSV: pooled paper-style and foreground scores, "
        "and per patient (all its slices as one volume) Dice, Jaccard, HD95 and normalised "
        "surface Dice per class and region, as a CSV and an nnU-Net-style summary.json; with "
        "a head, every stage is scored too. With --against, the two runs are compared patient "
        "by patient (mean difference, 95%% bootstrap interval, verdict, Wilcoxon signed-rank "
        "p).",
        epilog="example: upseg evaluate runs/head16 --figures --against runs/elunet16",
    )
    evaluate.add_argument("run", type=Path, help="run directory")
    evaluate.add_argument(
        "--checkpoint",
        choices=CHECKPOINTS,
        default="last",
        help="last (default; selects nothing on the data it reports) or best",
    )
    evaluate.add_argument("--split", choices=SPLITS, default="val")
    evaluate.add_argument(
        "--figures", action="store_true", help="write the qualitative grid of paper Fig. 7/8"
    )
    evaluate.add_argument(
        "--against",
        type=Path,
        metavar="RUN_DIR",
        help="a second run on the same patients (e.g. the baseline): paired comparison, and "
        "shown beside this one in --figures",
    )
    evaluate.add_argument(
        "--tolerance",
        type=float,
        default=2.0,
        metavar="PX",
        help="surface Dice tolerance in pixels at R (default 2)",
    )
    evaluate.add_argument(
        "--seed", type=int, default=0, help="bootstrap seed of the paired interval (default 0)"
    )
    evaluate.add_argument("--num-slices", type=positive_int, default=4, help="rows in the figure")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=run, parser=evaluate)
