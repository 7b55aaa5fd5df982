"""`upseg prepare`: a dataset (or the phantom) into a slice store."""

from __future__ import annotations

import argparse
from pathlib import Path

from upseg.data import FORMATS
from upseg.data.folder import LAYOUTS

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
    counts = {"num_patients": args.patients, "slices_per_patient": args.slices_per_patient}
    counts = {k: v for k, v in counts.items() if v is not None}  # 0 is refused, not a default
    return data.PhantomReader(**size, **counts, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from upseg.data import SliceStore, prepare
    from upseg.data.store import check_split_options

    check_split_options(0 if args.val_fraction is None else args.val_fraction, args.seed)
    reader = _make_reader(args, args.parser)
    out = prepare(
        reader,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        force=args.force,
        command=" ".join(["upseg", *args.argv]),
    )
    store = SliceStore(out)
    split = store.manifest["split"]
    print(
        f"wrote {out}: {len(store)} slices of {len(store.modalities)} x {store.size} x "
        f"{store.size} from {len(store.manifest['patients'])} patients "
        f"({len(split['train'])} train, {len(split['val'])} val); classes "
        f"{', '.join(store.class_names)}"
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    prepare.add_argument("--format", required=True, choices=FORMATS)
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
        choices=LAYOUTS,
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
    prepare.set_defaults(func=run, parser=prepare)
