"""`upseg predict`: masks at full resolution for files, with a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upseg.deploy.predict import DEFAULT_RUNTIME, RUNTIMES
from upseg.engine.runs import CHECKPOINTS


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from upseg.deploy.predict import predict

    def report(path: str, problem: str) -> None:
        tqdm.write(f"error: {path}: {problem}", file=sys.stderr)

    result = predict(
        args.run,
        args.inputs,
        args.out,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        device=args.device,
        force=args.force,
        progress=not args.quiet,
        runtime=args.runtime,
        on_skip=report,
    )
    for path in result["written"]:
        print(f"wrote {path}")
    skipped = result["skipped"]
    print(
        f"{len(result['written'])} written to {args.out}, {len(skipped)} skipped"
        + (": " + ", ".join(s["path"] for s in skipped) if skipped else "")
    )
    return 1 if skipped else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="segment NIfTI volumes or images with a trained run: full-resolution masks",
        description="Segment each input with a trained run, preprocessed exactly as its "
        "training data was, and write one mask per input in the input's own grid: NIfTI "
        "with the input's affine and header and the source's label values (BraTS 0/1/2/4), "
        "or a PNG for images. A bad input is reported and skipped, the others are still "
        "written, and the exit code is then 1; an existing mask is kept without --force.",
        epilog="examples:\n"
        "  upseg predict runs/head16 data/brats2018/Brats18_2013_11_1 --out masks\n"
        "  upseg predict runs/head16 data/brats2018 --out masks --batch-size 64\n"
        "  upseg predict runs/prostate Task05_Prostate/imagesTs --out masks --device cuda\n"
        "  upseg predict runs/us scans/images/P01_3.png --out masks --force",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument("run", type=Path, help="run directory made by upseg train")
    predict.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="BraTS case folders (or a folder of them), NIfTI files or folders of them, "
        "PNG / TIFF images or folders of them; whichever the run was trained on",
    )
    predict.add_argument("--out", type=Path, required=True, help="folder for the masks")
    predict.add_argument("--checkpoint", choices=CHECKPOINTS, default="last")
    predict.add_argument("--batch-size", type=int, default=32, help="slices per batch (32)")
    predict.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    predict.add_argument("--force", action="store_true", help="replace existing masks")
    predict.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=DEFAULT_RUNTIME,
        help="auto (default): onnxruntime on the CPU when it is installed and the model "
        "exports (the graph is cached in RUN/export/), else PyTorch; torch: eager PyTorch "
        "(any device); ort: onnxruntime, CPU only",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=run, parser=predict)
