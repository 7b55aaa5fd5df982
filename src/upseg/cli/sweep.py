"""`upseg sweep`: methods x input sizes x folds x seeds, the paper's tables and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from upseg.cli.common import add_config_flags
from upseg.engine.config import default

# training settings a sweep passes to every run (the method names carry head and init), with
# the sweep's own help texts (None: none)
SWEEP_TRAIN_FLAGS = {
    "lr": None,
    "loss": "every run's loss (default {default})",
    "stage_weights": None,
    "schedule": "learning rate (default {default})",
    "warmup_epochs": None,
    "bf16": "bf16 autocast",
    "backbone_kwargs": None,
    "max_steps_per_epoch": None,
    "device": "cpu, cuda, cuda:1, ... (default: a GPU when there is one)",
}


def run(args: argparse.Namespace) -> int:
    from upseg.experiments.sweep import run_sweep

    extra = {k: getattr(args, k) for k in SWEEP_TRAIN_FLAGS if getattr(args, k) is not None}
    result = run_sweep(
        args.store,
        args.out,
        args.methods,
        args.resolutions,
        args.folds,
        tuple(args.seeds),
        args.epochs,
        args.batch_size,
        extra,
        progress=not args.quiet,
        workers=args.workers,
        time_limit=None if args.time_limit is None else 60 * args.time_limit,
        pair_with=args.pair_with,
    )
    print(result["tables"])
    for path in result["figures"]:
        print(f"wrote {path}")
    print(f"wrote {args.out / 'sweep.md'}, {args.out / 'sweep.csv'}")
    return 1 if result["failed"] else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="methods x input sizes (x folds x seeds): the paper's tables and figures",
        description="Train and score every method at every input size, resumably; write the "
        "paper's Table II/III layouts (markdown, CSV) and Fig. 1 / Fig. 5.",
        epilog="example: upseg sweep --store stores/brats --out sweeps/brats --methods elunet "
        "elunet+plain elunet+plain:pytorch elunet+skip unet --resolutions 16 32 64 --folds 5",
    )
    sweep.add_argument("--store", type=Path, required=True)
    sweep.add_argument("--out", type=Path, required=True)
    sweep.add_argument(
        "--methods",
        nargs="+",
        required=True,
        metavar="METHOD",
        help="backbone[+HEAD[@features][:INIT]] (@features: plain head only), e.g. elunet "
        "elunet+plain@features (the recipe's head) elunet+plain (the paper's, reading the "
        "logits) elunet+plain:pytorch",
    )
    sweep.add_argument("--resolutions", type=int, nargs="+", required=True, metavar="R")
    sweep.add_argument(
        "--folds",
        type=int,
        default=default("folds"),
        help="k-fold patient-level cross-validation (default: the store's split)",
    )
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0])
    sweep.add_argument("--epochs", type=int, default=default("epochs"))
    sweep.add_argument("--batch-size", type=int, default=default("batch_size"))
    add_config_flags(sweep, list(SWEEP_TRAIN_FLAGS), SWEEP_TRAIN_FLAGS)
    sweep.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once, each in its own process (several small runs can "
        "share one GPU); default 1",
    )
    sweep.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="start no new run after this many minutes (runs in flight finish; the tables "
        "hold the finished runs, and the same command later finishes the rest)",
    )
    sweep.add_argument(
        "--pair-with",
        type=Path,
        nargs="+",
        default=[],
        metavar="CSV",
        help="earlier sweeps' sweep_patient_scores.csv: their runs join the per-patient tables "
        "and paired comparisons (e.g. a baseline trained on another machine)",
    )
    sweep.add_argument("--quiet", action="store_true")
    sweep.set_defaults(func=run, parser=sweep)
