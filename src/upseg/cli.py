"""Command line: thin sub-commands over the library. `upseg COMMAND --help` for each."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from upseg.models import list_backbones

HEAD_CHOICES = ("none", "plain", "skip")


def _markdown_table(rows: list[dict[str, object]], columns: Sequence[str]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if value < 1 else f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def cmd_profile(args: argparse.Namespace) -> int:
    from upseg.profile import method_name, profile_row

    rows, skipped = [], []
    for size in args.input_sizes:
        for backbone in args.backbones:
            for head_choice in args.heads:
                head = None if head_choice == "none" else head_choice
                try:
                    rows.append(
                        profile_row(
                            backbone, head, size, args.output_size, args.in_channels, args.classes
                        )
                    )
                except ValueError as error:
                    skipped.append(f"{method_name(backbone, head)} at {size}: {error}")
    if not rows:
        print("error: no configuration could be built:\n  " + "\n  ".join(skipped), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"Cost of one {args.in_channels}-channel image, {args.classes} classes "
            "(GMac = 10^9 multiply-accumulates, counted with torch FlopCounterMode):\n"
        )
        print(_markdown_table(rows, ["method", "input", "output", "params", "head_params", "gmac"]))
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if args.csv:
        _write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upseg",
        description="Low-resolution-in, full-resolution-out segmentation for embedded devices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profile = commands.add_parser(
        "profile",
        help="parameters and GMac of backbones with and without the up-scaling head",
        description="Count parameters and multiply-accumulates of each backbone x head x "
        "input size.",
        epilog="example: upseg profile --backbones elunet unet --input-sizes 16 32 "
        "--output-size 256 --csv profile.csv",
    )
    profile.add_argument(
        "--backbones",
        nargs="+",
        default=["elunet", "unet"],
        choices=list_backbones(),
        metavar="NAME",
        help=f"backbones to count (from: {', '.join(list_backbones())})",
    )
    profile.add_argument("--heads", nargs="+", default=list(HEAD_CHOICES), choices=HEAD_CHOICES)
    profile.add_argument("--input-sizes", nargs="+", type=int, default=[16, 32, 64], metavar="R")
    profile.add_argument(
        "--output-size",
        type=int,
        default=256,
        help="ground-truth resolution the head up-scales to (default 256)",
    )
    profile.add_argument("--in-channels", type=int, default=4, help="image channels (default 4)")
    profile.add_argument("--classes", type=int, default=4, help="output classes (default 4)")
    profile.add_argument("--csv", type=Path, help="also write the table as CSV here")
    profile.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    profile.set_defaults(func=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
