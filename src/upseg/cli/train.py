"""`upseg train`: one run from flags, a YAML file of settings, or a run folder to resume."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from upseg.cli.common import TRAIN_FLAGS, add_config_flags, flag_name
from upseg.engine import TrainConfig
from upseg.errors import TrainingError


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """--config's settings, overridden by the flags given."""
    import yaml

    values: dict = {}
    if args.config:
        try:
            loaded = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as error:
            reason = " ".join(str(error).split())
            raise ValueError(f"{args.config}: not valid YAML ({reason})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings")
        values.update(loaded)
    values.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    for required in ("store", "out"):
        if required not in values:
            raise ValueError(f"--{required} is required (on the command line or in --config)")
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from upseg.engine import read_run_config
    from upseg.engine.trainer import train

    if args.resume:
        given = [flag_name(k) for k in TRAIN_FLAGS if getattr(args, k) is not None]
        if given or args.config:
            extra = " ".join(given) or "--config"
            args.parser.error(f"--resume continues a run with its own settings; drop {extra}")
        if not (args.resume / "config.yaml").is_file():
            raise TrainingError(f"{args.resume}: nothing to resume (no config.yaml)")
        config = read_run_config(args.resume)  # trains on in this folder, wherever it is now
    else:
        config = _train_config(args)
    record = train(config, resume=args.resume is not None, progress=not args.quiet)
    if record and int(os.environ.get("RANK", "0")) == 0:
        print(f"run directory: {config.out}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a backbone with or without the up-scaling head on a slice store",
        description="Train one model; validation at the full resolution R after every epoch.",
        epilog="examples:\n"
        "  upseg train --store stores/brats --out runs/elunet16 --head none --input-size 16\n"
        "  upseg train --store stores/brats --out runs/head16 --head plain\n"
        "  upseg train --config experiment.yaml --epochs 50\n"
        "  upseg train --resume runs/head16\n"
        "  torchrun --nproc_per_node=2 -m upseg train --store ... --out ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", type=Path, help="YAML file of settings (flags override)")
    add_config_flags(train, TRAIN_FLAGS)
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run with its own settings",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=run, parser=train)
