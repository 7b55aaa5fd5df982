"""Command line: thin sub-commands over the library, one module each. `upseg COMMAND --help`
for each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from upseg.cli import (
    bench,
    demo,
    evaluate,
    export,
    plan,
    predict,
    prepare,
    profile,
    sweep,
    train,
)
from upseg.errors import DataError, TrainingError

# in the order `upseg --help` lists them
COMMANDS = (profile, prepare, train, evaluate, demo, sweep, export, predict, plan, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upseg",
        description="Low-resolution-in, full-resolution-out segmentation for embedded devices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 success, 1 bad data, a failed run or a missing package, 2 bad usage or
    settings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (DataError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a missing or unreadable file named on the command line
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:  # a package of an extra that is not installed
        print(f"error: {error}; pip install 'upseg[deploy]' brings it", file=sys.stderr)
        return 1
