"""`upseg profile`: parameters, MACs and memory of fresh models or trained runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from upseg.cli.common import markdown_table, model_flags
from upseg.engine.runs import CHECKPOINTS
from upseg.io import write_csv, write_json
from upseg.models import BASELINE, HEADS, list_backbones

# the model flags with their defaults (not with a RUN)
MODEL_FLAGS = {
    "backbones": ["elunet", "unet"],
    "heads": [BASELINE, "plain", "skip"],  # the paper's Table IV; --heads guided adds it
    "input_sizes": [16, 32, 64],
    "output_size": 256,
    "in_channels": 4,
    "classes": 4,
}

PROFILE_COLUMNS = {
    "method": "Method",
    "input": "Resolution",
    "output": "Output",
    "params": "Params",
    "head_params": "Head params",
    "gmac": "Complexity (GMac)",
    "activation_mb": "Memory (MB)",
    "peak_mb": "Peak (MB)",
}


def _profile_runs(args: argparse.Namespace) -> list[dict[str, object]]:
    from upseg.engine import load_run
    from upseg.models import method_name
    from upseg.models.profile import profile_model

    rows = []
    for run in args.runs:
        model, config, _ = load_run(run, args.checkpoint)
        method = method_name(config.backbone, config.head, config.head_init, config.head_input)
        row = profile_model(
            model,
            method,
            model.input_size,
            model.output_size,
            model.in_channels,
            memory=not args.no_memory,
        )
        rows.append({**row, "run": str(run)})
    return rows


def _profile_fresh(args: argparse.Namespace) -> tuple[list[dict[str, object]], list[str]]:
    """Rows of every backbone x head x input size, and the combinations that cannot be built."""
    from upseg.models import method_name
    from upseg.models.profile import profile_row

    rows, skipped = [], []
    for size in args.input_sizes:
        for backbone in args.backbones:
            for head_choice in args.heads:
                head = None if head_choice == BASELINE else head_choice
                try:
                    rows.append(
                        profile_row(
                            backbone,
                            head,
                            size,
                            args.output_size,
                            args.in_channels,
                            args.classes,
                            memory=not args.no_memory,
                        )
                    )
                except ValueError as error:
                    skipped.append(f"{method_name(backbone, head)} at {size}: {error}")
    return rows, skipped


def _print_table(args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    channels = "input channels of each run" if args.runs else f"{args.in_channels}-channel"
    memory = (
        ""
        if args.no_memory
        else "; Memory = torchinfo's forward/backward pass size; Peak = measured peak of CPU "
        "memory allocated by torch during one inference (MB = 10^6 bytes)"
    )
    print(
        f"Cost of one {channels} image, batch 1 (paper Table IV layout). GMac = 10^9 "
        f"multiply-accumulates counted with torch FlopCounterMode{memory}:\n"
    )
    columns = [c for c in PROFILE_COLUMNS if c in rows[0]] + (["run"] if args.runs else [])
    table = markdown_table(rows, columns)
    header = "| " + " | ".join(PROFILE_COLUMNS.get(c, c) for c in columns) + " |"
    print("\n".join([header, *table.splitlines()[1:]]))


def run(args: argparse.Namespace) -> int:
    from upseg.deploy.outputs import check_output_file

    model_flags(args, MODEL_FLAGS, "a RUN directory" if args.runs else "")
    sizes = {"--input-sizes": min(args.input_sizes), "--output-size": args.output_size}
    sizes.update({"--in-channels": args.in_channels, "--classes": args.classes})
    for flag, value in sizes.items():
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.csv:
        check_output_file(args.csv, "--csv")
    if args.json not in (None, "-"):
        check_output_file(args.json, "--json")
    rows, skipped = (_profile_runs(args), []) if args.runs else _profile_fresh(args)
    if not rows:
        print("error: no configuration could be built:\n  " + "\n  ".join(skipped), file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    else:
        _print_table(args, rows)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")
    if args.json not in (None, "-"):
        write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    defaults = {
        key: " ".join(map(str, v)) if isinstance(v, list) else v for key, v in MODEL_FLAGS.items()
    }
    profile = commands.add_parser(
        "profile",
        help="parameters, GMac and memory of backbones with and without the up-scaling head",
        description="Count parameters and multiply-accumulates, and report memory (torchinfo's "
        "forward/backward pass size and the measured peak of one batch-1 CPU inference), of "
        "each backbone x head x input size, or of trained runs, in the layout of paper Table IV.",
        epilog="examples:\n  upseg profile --backbones elunet unet --input-sizes 16 32 "
        "--output-size 256 --csv profile.csv\n  upseg profile runs/head16 runs/base16 --json -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profile.add_argument(
        "runs",
        type=Path,
        nargs="*",
        metavar="RUN",
        help="run directories to profile at their own sizes (instead of --backbones ...)",
    )
    profile.add_argument("--checkpoint", choices=CHECKPOINTS, default="last")
    models = profile.add_argument_group(
        "models", "fresh models to count instead of RUN directories (not with a RUN)"
    )
    models.add_argument(
        "--backbones",
        nargs="+",
        choices=list_backbones(),
        metavar="NAME",
        help=f"backbones to count (from: {', '.join(list_backbones())}; "
        f"default {defaults['backbones']})",
    )
    models.add_argument(
        "--heads", nargs="+", choices=[BASELINE, *HEADS], help=f"default: {defaults['heads']}"
    )
    models.add_argument(
        "--input-sizes",
        nargs="+",
        type=int,
        metavar="R",
        help=f"default: {defaults['input_sizes']}",
    )
    models.add_argument(
        "--output-size",
        type=int,
        help=f"ground-truth resolution the head up-scales to (default {defaults['output_size']})",
    )
    models.add_argument(
        "--in-channels", type=int, help=f"image channels (default {defaults['in_channels']})"
    )
    models.add_argument(
        "--classes", type=int, help=f"output classes (default {defaults['classes']})"
    )
    profile.add_argument(
        "--no-memory",
        action="store_true",
        help="counts only (no forward pass): leave out the two memory columns",
    )
    profile.add_argument("--csv", type=Path, help="also write the table as CSV here")
    profile.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the rows as JSON to FILE; alone, print JSON instead of the table",
    )
    profile.set_defaults(func=run, parser=profile)
