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


# format-specific flags of `prepare`: dest -> formats it applies to
PREPARE_FLAGS = {
    "modalities": ("brats",),
    "modality": ("decathlon",),
    "merge": ("decathlon",),
    "layout": ("folder",),
    "values": ("folder",),
    "class_names": ("folder",),
    "patient_regex": ("folder",),
    "patients": ("phantom",),
    "slices_per_patient": ("phantom",),
}


def _parse_values(text: str) -> dict[int, int]:
    try:
        pairs = [item.split(":") for item in text.split(",")]
        return {int(k): int(v) for k, v in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--values takes pixel:class pairs like 0:0,255:1, got {text!r}"
        ) from None


def _parse_merge(text: str) -> tuple[str, list[int]]:
    name, _, members = text.partition("=")
    try:
        values = [int(v) for v in members.split(",")]
    except ValueError:
        values = []
    if not name or not values:
        raise argparse.ArgumentTypeError(f"--merge takes NAME=1,2, got {text!r}")
    return name, values


def _make_reader(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from upseg import data

    for dest, formats in PREPARE_FLAGS.items():
        if getattr(args, dest) is not None and args.format not in formats:
            flag = "--" + dest.replace("_", "-")
            parser.error(f"{flag} applies to --format {' or '.join(formats)}, not {args.format}")
    if args.format != "phantom" and args.source is None:
        parser.error(f"--format {args.format} needs a SOURCE folder")
    size = {} if args.size is None else {"size": args.size}
    slices = {} if args.slices is None else {"slices": args.slices}
    if args.format == "brats":
        modalities = {} if args.modalities is None else {"modalities": args.modalities}
        return data.BratsReader(args.source, **size, **modalities, **slices)
    if args.format == "decathlon":
        merge = dict(args.merge) if args.merge else None
        return data.DecathlonReader(
            args.source, **size, modality=args.modality, merge=merge, **slices
        )
    if args.slices is not None:
        parser.error(f"--slices does not apply to --format {args.format}")
    if args.format == "folder":
        return data.FolderReader(
            args.source,
            **size,
            layout=args.layout or "images-masks",
            values=args.values,
            class_names=args.class_names,
            patient_regex=args.patient_regex,
        )
    if args.source is not None:
        parser.error("--format phantom takes no SOURCE: it is generated")
    return data.PhantomReader(
        **size,
        num_patients=args.patients or 12,
        slices_per_patient=args.slices_per_patient or 24,
        seed=args.seed,
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from upseg.data import DataError, SliceStore, prepare

    try:
        reader = _make_reader(args, args.parser)
        out = prepare(
            reader,
            args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            force=args.force,
            command=" ".join(["upseg", *args.argv]),
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    store = SliceStore(out)
    split = store.manifest["split"]
    print(
        f"wrote {out}: {len(store)} slices of {len(store.modalities)} x {store.size} x "
        f"{store.size} from {len(store.manifest['patients'])} patients "
        f"({len(split['train'])} train, {len(split['val'])} val); classes "
        f"{', '.join(store.class_names)}"
    )
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

    prepare = commands.add_parser(
        "prepare",
        help="convert BraTS, Decathlon, an image folder or the phantom into a slice store",
        description="Read a dataset once into a memory-mappable slice store with a JSON "
        "manifest and a deterministic patient-level split.",
        epilog="examples:\n"
        "  upseg prepare data/brats2018 --format brats --out stores/brats\n"
        "  upseg prepare Task05_Prostate --format decathlon --size 320 --out stores/prostate\n"
        "  upseg prepare scans --format folder --layout suffix --values 0:0,255:1 "
        "--patient-regex '^(P[0-9]+)_' --out stores/us\n"
        "  upseg prepare --format phantom --out stores/phantom",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("source", nargs="?", type=Path, help="dataset folder (not for phantom)")
    prepare.add_argument(
        "--format", required=True, choices=("brats", "decathlon", "folder", "phantom")
    )
    prepare.add_argument("--out", required=True, type=Path, help="store folder to create")
    prepare.add_argument(
        "--size", type=int, help="full resolution R (default: 256; 320 for decathlon)"
    )
    prepare.add_argument(
        "--val-fraction",
        type=float,
        help="patients held out for validation "
        "(default: brats 0.15, decathlon 1/3, folder 0.2, phantom 0.25)",
    )
    prepare.add_argument("--seed", type=int, default=0, help="split seed (and phantom seed)")
    prepare.add_argument("--force", action="store_true", help="replace an existing store")
    prepare.add_argument(
        "--slices",
        help="brats: brain (default), tumour or all; decathlon: all (default) or foreground",
    )
    prepare.add_argument("--modalities", nargs="+", help="brats: subset of flair t1 t1ce t2")
    prepare.add_argument("--modality", help="decathlon: modality name (default: the first)")
    prepare.add_argument(
        "--merge",
        action="append",
        type=_parse_merge,
        metavar="NAME=1,2",
        help="decathlon: join label values into one class (repeatable)",
    )
    prepare.add_argument(
        "--layout",
        choices=("images-masks", "suffix"),
        help="folder: images/X + masks/X (default) or X + X_mask",
    )
    prepare.add_argument(
        "--values",
        type=_parse_values,
        metavar="P:C,...",
        help="folder: mask pixel value -> class (default 0:0,1:1,255:1)",
    )
    prepare.add_argument("--class-names", nargs="+", help="folder: class names, background first")
    prepare.add_argument(
        "--patient-regex", help="folder: regex on the file stem whose first group is the patient id"
    )
    prepare.add_argument("--patients", type=int, help="phantom: number of patients (12)")
    prepare.add_argument("--slices-per-patient", type=int, help="phantom: slices each (24)")
    prepare.set_defaults(func=cmd_prepare, parser=prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
