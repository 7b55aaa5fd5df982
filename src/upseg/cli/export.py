"""`upseg export`: a run (or a fresh model) as ONNX, optionally int8, or a MONAI bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upseg.cli.common import flag_name, model_flags
from upseg.engine.runs import CHECKPOINTS
from upseg.models import BASELINE, HEADS, list_backbones


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _int8_table(report: dict) -> str:
    """fp32 against int8: pooled foreground Dice, paper-style Jaccard, mean per-patient Dice
    of each class and region, file size, speed at batch 1 and whether int8 pays."""
    fp32, int8, change = report["fp32"], report["int8"], report["change"]
    lines = [f"{'':28}{'fp32':>10}{'int8':>10}{'change':>10}"]
    rows = [("foreground_dice", "foreground Dice"), ("paper_jaccard", "Jaccard (paper eq. 1)")]
    rows += [
        (k, f"patient Dice {k.removeprefix('patient_dice_')}") for k in change if "patient" in k
    ]
    for key, label in rows:
        lines.append(f"{label:28}{fp32[key]:10.4f}{int8[key]:10.4f}{change[key]:+10.4f}")
    ratio = int8["bytes"] / fp32["bytes"]
    lines.append(
        f"{'file size (KiB)':28}{fp32['bytes'] / 1024:10.1f}{int8['bytes'] / 1024:10.1f}"
        f"{ratio:9.2f}x"
    )
    speed = report["speed"]
    lines.append(
        f"{'ms per image (batch 1)':28}{speed['fp32_ms']:10.2f}{speed['int8_ms']:10.2f}"
        f"{speed['speedup']:9.2f}x"
    )
    lines.append(f"on this CPU: {speed['advice']}")
    return "\n".join(lines)


# the flags that build a fresh model, with their defaults (not with a RUN)
MODEL_FLAGS = {
    "backbone": None,
    "head": "plain",
    "input_size": None,
    "output_size": 256,
    "in_channels": 4,
    "classes": 4,
}


def run(args: argparse.Namespace) -> int:
    from upseg.deploy.export import export_onnx
    from upseg.deploy.outputs import check_output_file
    from upseg.models import build

    if args.bundle is not None:
        return _export_bundle(args)
    if args.out is None:
        args.parser.error("give --out FILE (or --bundle DIR)")
    if args.force:
        args.parser.error("--force only applies with --bundle")
    model_flags(args, MODEL_FLAGS, "a RUN directory" if args.run is not None else "")
    int8_only = {
        "--calibration-slices": args.calibration_slices is not None,
        "--max-dice-drop": args.max_dice_drop is not None,
        "--force-int8": args.force_int8,
        "--per-tensor": args.per_tensor,
    }
    if args.int8:
        return _export_int8(args)
    given = [flag for flag, present in int8_only.items() if present]
    if given:
        args.parser.error(f"{' '.join(given)} only apply with --int8")
    check_output_file(args.out, "--out")
    if args.run is not None:
        from upseg.engine import load_run

        model = load_run(args.run, args.checkpoint)[0]
    else:
        if args.backbone is None or args.input_size is None:
            args.parser.error("give a RUN directory, or --backbone and --input-size")
        head = None if args.head == BASELINE else args.head
        model = build(
            args.backbone,
            args.in_channels,
            args.classes,
            args.input_size,
            args.output_size if head else None,
            head=head,
        )
    result = export_onnx(model, args.out, tolerance=args.tolerance)
    _print_export(result)
    return 0


def _export_bundle(args: argparse.Namespace) -> int:
    from upseg.deploy.bundle import write_bundle

    if args.run is None:
        args.parser.error("--bundle needs a RUN directory")
    model_flags(args, MODEL_FLAGS, "a RUN directory")
    clashes = {
        "--out": args.out is not None,
        "--int8": args.int8,
        "--calibration-slices": args.calibration_slices is not None,
        "--max-dice-drop": args.max_dice_drop is not None,
        "--force-int8": args.force_int8,
        "--per-tensor": args.per_tensor,
    }
    given = [flag for flag, present in clashes.items() if present]
    if given:
        args.parser.error(f"--bundle writes its own files; drop {' '.join(given)}")
    files = write_bundle(
        args.run, args.bundle, checkpoint=args.checkpoint, force=args.force,
        tolerance=args.tolerance,
    )  # fmt: skip
    print(f"wrote MONAI bundle {args.bundle} ({args.checkpoint} weights):")
    for path in files:
        print(f"  {path.relative_to(args.bundle)}")
    configs = args.bundle / "configs"
    print(
        f"segment with: python -m monai.bundle run --config_file {configs / 'inference.json'} "
        f"--meta_file {configs / 'metadata.json'} --bundle_root {args.bundle} "
        "--input CASE_OR_FILE --output_dir masks"
    )
    return 0


def _print_export(result: dict, written: bool = True) -> None:
    print(
        f"{'wrote' if written else 'exported (not written)'} {result['path']}: image "
        f"{result['input']} -> logits {result['output']} (dynamic batch); checked against "
        f"PyTorch at batch 1 and 3, max |diff| {result['max_abs_diff']:.2e}"
    )


def _export_int8(args: argparse.Namespace) -> int:
    from upseg.deploy.quantize import Int8RefusedError, export_int8, int8_paths

    if args.run is None:
        args.parser.error("--int8 needs a trained RUN directory (its store calibrates and scores)")
    try:
        report = export_int8(
            args.run,
            args.out,
            checkpoint=args.checkpoint,
            tolerance=args.tolerance,
            **{
                key: value
                for key, value in (
                    ("calibration_slices", args.calibration_slices),
                    ("max_dice_drop", args.max_dice_drop),
                )
                if value is not None  # else the library's defaults
            },
            force=args.force_int8,
            per_channel=not args.per_tensor,
            progress=sys.stderr.isatty(),
        )
    except Int8RefusedError as refused:
        _print_export(refused.report["export"], written=False)
        print(_int8_table(refused.report))
        raise
    _print_export(report["export"])
    print(_int8_table(report))
    calibration, validation = report["calibration"], report["validation"]
    size = report["output_size"]
    print(
        f"wrote {report['int8']['path']}: calibrated on {calibration['slices']} training "
        f"slices ({_count(calibration['patients'], 'patient')}); scored on "
        f"{validation['slices']} validation slices ({_count(validation['patients'], 'patient')})"
        f" at {size} x {size}; report {int8_paths(args.out)[1]}"
    )
    if report["int8"]["forced"]:
        judged = report["judged"]
        print(
            f"warning: per-patient Dice of {judged['group']} fell by {judged['drop']:.4f} > "
            f"--max-dice-drop {report['max_dice_drop']:g}; written because of --force-int8",
            file=sys.stderr,
        )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write a trained run (or a fresh model) as one ONNX file, checked against PyTorch",
        description="Export the eval-mode model (image at r -> logits at R) to ONNX with a "
        "dynamic batch size and check it with onnxruntime; nothing is written on a mismatch.",
        epilog="examples:\n  upseg export runs/head16 --out head16.onnx\n"
        "  upseg export runs/head16 --out head16.onnx --int8   # + head16.int8.onnx/.json\n"
        "  upseg export --backbone elunet --head plain --input-size 16 --output-size 256 "
        "--out fresh.onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("run", type=Path, nargs="?", help="run directory (or use --backbone)")
    export.add_argument("--out", type=Path, help="ONNX file to write (or use --bundle)")
    export.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="write RUN as a MONAI bundle folder instead: configs/{metadata,inference}.json, "
        "models/model.pt + model.onnx, docs/README.md (a model card); "
        "`python -m monai.bundle run` then segments NIfTI files with it",
    )
    export.add_argument(
        "--force", action="store_true", help="with --bundle: replace a non-empty DIR"
    )
    export.add_argument("--checkpoint", choices=CHECKPOINTS, default="last")
    fresh = export.add_argument_group(
        "fresh model", "a model with random weights instead of a RUN (not with a RUN)"
    )
    fresh.add_argument("--backbone", choices=list_backbones())
    fresh.add_argument("--head", choices=(BASELINE, *HEADS), help=f"default {MODEL_FLAGS['head']}")
    fresh.add_argument("--input-size", type=int)
    for name in ("output_size", "in_channels", "classes"):
        fresh.add_argument(flag_name(name), type=int, help=f"default {MODEL_FLAGS[name]}")
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |ONNX - PyTorch|, positive (default 1e-4)",
    )
    int8 = export.add_argument_group(
        "int8",
        "with --int8, --out holds the fp32 model and FILE.int8.onnx the int8 one (QOperator, "
        "uint8 activations, static, calibrated on the run's training patients); both are "
        "scored on the run's validation patients at R and timed, and FILE.int8.json records "
        "the comparison",
    )
    int8.add_argument("--int8", action="store_true", help="also write a static int8 model")
    int8.add_argument(
        "--calibration-slices",
        type=int,
        default=None,
        metavar="N",
        help="training slices the quantiser calibrates on, spread evenly (default 64)",
    )
    int8.add_argument(
        "--max-dice-drop",
        type=float,
        default=None,
        metavar="D",
        help="refuse the int8 model if its mean per-patient Dice of any class or region is "
        "more than D (>= 0) below fp32's (default 0.01, one point); on a refusal nothing is "
        "written and files already there stay as they were",
    )
    int8.add_argument(
        "--force-int8", action="store_true", help="write the int8 model even past --max-dice-drop"
    )
    int8.add_argument(
        "--per-tensor",
        action="store_true",
        help="8-bit weights with one scale per tensor instead of 7-bit weights with one "
        "scale per output channel",
    )
    export.set_defaults(func=run, parser=export)
