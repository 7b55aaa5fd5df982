"""Command line: thin sub-commands over the library. `upseg COMMAND --help` for each."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from upseg.deploy.bench import DEFAULT_RUNTIMES, RUNTIMES
from upseg.engine.schedule import SCHEDULES
from upseg.errors import DataError, TrainingError
from upseg.io import write_csv, write_json
from upseg.models import HEAD_INITS, HEAD_INPUTS, list_backbones

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


def cmd_profile(args: argparse.Namespace) -> int:
    from upseg.deploy.outputs import check_output_file
    from upseg.models import method_name
    from upseg.models.profile import profile_row

    _model_flags(args, PROFILE_MODEL_FLAGS, "a RUN directory" if args.runs else "")
    sizes = {"--input-sizes": min(args.input_sizes), "--output-size": args.output_size}
    sizes.update({"--in-channels": args.in_channels, "--classes": args.classes})
    for flag, value in sizes.items():
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.csv:
        check_output_file(args.csv, "--csv")
    if args.json not in (None, "-"):
        check_output_file(args.json, "--json")
    rows, skipped = [], []
    if args.runs:
        rows = _profile_runs(args)
    else:
        for size in args.input_sizes:
            for backbone in args.backbones:
                for head_choice in args.heads:
                    head = None if head_choice == "none" else head_choice
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
    if not rows:
        print("error: no configuration could be built:\n  " + "\n  ".join(skipped), file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(rows, indent=2))
    else:
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
        table = _markdown_table(rows, columns)
        header = "| " + " | ".join(PROFILE_COLUMNS.get(c, c) for c in columns) + " |"
        print("\n".join([header, *table.splitlines()[1:]]))
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if args.csv:
        write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")
    if args.json not in (None, "-"):
        write_json(args.json, rows)
        print(f"wrote {args.json}")
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
    counts = {"num_patients": args.patients, "slices_per_patient": args.slices_per_patient}
    counts = {k: v for k, v in counts.items() if v is not None}  # 0 is refused, not a default
    return data.PhantomReader(**size, **counts, seed=args.seed)


def cmd_prepare(args: argparse.Namespace) -> int:
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


def _train_config(args: argparse.Namespace):
    import yaml

    from upseg.engine import TrainConfig

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
    for key in TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            values[key] = str(value) if isinstance(value, Path) else value
    for required in ("store", "out"):
        if required not in values:
            raise ValueError(f"--{required} is required (on the command line or in --config)")
    return TrainConfig.from_dict(values)


TRAIN_FLAGS = (
    "store",
    "out",
    "backbone",
    "head",
    "head_init",
    "head_input",
    "input_size",
    "output_size",
    "loss",
    "target_resize",
    "stage_weights",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "epochs",
    "batch_size",
    "seed",
    "downsample",
    "flips",
    "workers",
    "bf16",
    "channels_last",
    "device",
    "deterministic",
    "folds",
    "fold",
    "max_steps_per_epoch",
    "backbone_kwargs",
)


def cmd_train(args: argparse.Namespace) -> int:
    from upseg.engine import read_run_config
    from upseg.engine.trainer import train

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in TRAIN_FLAGS if getattr(args, k) is not None]
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


def cmd_evaluate(args: argparse.Namespace) -> int:
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


def cmd_demo(args: argparse.Namespace) -> int:
    from upseg.experiments.demo import run_demo

    if (args.data is None) != (args.format is None):
        args.parser.error("--data and --format go together (e.g. --data DIR --format brats)")
    run_demo(
        args.out,
        args.data,
        args.format,
        tuple(args.resolutions),
        args.epochs,
        args.batch_size,
        progress=not args.quiet,
    )
    return 0


# training settings a sweep passes to every run (the method names carry head and init)
SWEEP_TRAIN_FLAGS = (
    "lr",
    "loss",
    "stage_weights",
    "schedule",
    "warmup_epochs",
    "bf16",
    "backbone_kwargs",
    "max_steps_per_epoch",
    "device",
)


def cmd_sweep(args: argparse.Namespace) -> int:
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
    )
    print(result["tables"])
    for path in result["figures"]:
        print(f"wrote {path}")
    print(f"wrote {args.out / 'sweep.md'}, {args.out / 'sweep.csv'}")
    return 1 if result["failed"] else 0


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _int8_table(report: dict) -> str:
    """fp32 against int8: foreground Dice, paper-style Jaccard, file size."""
    fp32, int8, change = report["fp32"], report["int8"], report["change"]
    lines = [f"{'':24}{'fp32':>10}{'int8':>10}{'change':>10}"]
    for key, label in (
        ("foreground_dice", "foreground Dice"),
        ("paper_jaccard", "Jaccard (paper eq. 1)"),
    ):
        lines.append(f"{label:24}{fp32[key]:10.4f}{int8[key]:10.4f}{change[key]:+10.4f}")
    ratio = int8["bytes"] / fp32["bytes"]
    lines.append(
        f"{'file size (KiB)':24}{fp32['bytes'] / 1024:10.1f}{int8['bytes'] / 1024:10.1f}"
        f"{ratio:9.2f}x"
    )
    return "\n".join(lines)


# flags that build a fresh model in `export` (with their defaults there) and `profile`
EXPORT_MODEL_FLAGS = {
    "backbone": None,
    "head": "plain",
    "input_size": None,
    "output_size": 256,
    "in_channels": 4,
    "classes": 4,
}
PROFILE_MODEL_FLAGS = {
    "backbones": ["elunet", "unet"],
    "heads": list(HEAD_CHOICES),
    "input_sizes": [16, 32, 64],
    "output_size": 256,
    "in_channels": 4,
    "classes": 4,
}


def _model_flags(args: argparse.Namespace, defaults: dict[str, object], what: str) -> None:
    """Refuse model flags beside run directories (a run brings its own model); otherwise
    fill in the defaults of those not given."""
    given = [f"--{k.replace('_', '-')}" for k in defaults if getattr(args, k) is not None]
    if what and given:
        args.parser.error(f"{what} brings its own model; drop {' '.join(given)}")
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, default)


def cmd_export(args: argparse.Namespace) -> int:
    from upseg.deploy.export import export_onnx
    from upseg.deploy.outputs import check_output_file
    from upseg.models import build

    if args.bundle is not None:
        return _export_bundle(args)
    if args.out is None:
        args.parser.error("give --out FILE (or --bundle DIR)")
    if args.force:
        args.parser.error("--force only applies with --bundle")
    _model_flags(args, EXPORT_MODEL_FLAGS, "a RUN directory" if args.run is not None else "")
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
        head = None if args.head == "none" else args.head
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
    _model_flags(args, EXPORT_MODEL_FLAGS, "a RUN directory")
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
        print(
            f"warning: foreground Dice fell by {-report['change']['foreground_dice']:.4f} > "
            f"--max-dice-drop {report['max_dice_drop']:g}; written because of --force-int8",
            file=sys.stderr,
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
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


def cmd_plan(args: argparse.Namespace) -> int:
    from upseg.deploy.outputs import check_output_folder
    from upseg.deploy.plan import PLAN_FILES, plan, read_bench, read_sweep, write_plan

    if args.out:
        check_output_folder(args.out, "--out", PLAN_FILES)
    result = plan(
        read_sweep(args.sweep),
        read_bench(args.bench),
        args.budget_ms,
        batch=args.batch,
        mode=args.mode,
        stat=args.stat,
        metric=args.metric,
        include_int8=args.include_int8,
    )
    rows, pick, stat, metric = result["rows"], result["pick"], args.stat, args.metric
    if rows:
        table = [
            {
                "method": r["method"],
                "input": r["input"],
                "runtime": r["runtime"],
                stat: f"{r[stat]:.2f}",
                metric: f"{100 * r[metric]:.1f}",
                "runs": int(r["runs"]) if r["runs"] == r["runs"] else "-",
                f"within {args.budget_ms:g} ms": "yes" if r["fits"] else "no",
            }
            for r in rows
        ]
        print(
            f"{args.mode} latency ({stat.removesuffix('_ms')}, batch {args.batch}) against "
            f"{metric} (%), fastest measured runtime per model:\n"
        )
        print(_markdown_table(table, list(table[0])))
    for line in result["missing"]:
        print(f"not judged: {line}")
    if not rows:
        print(
            "error: no swept model has a measured latency; run upseg bench on this device "
            "with the sweep's methods and input sizes"
            + (f" (nothing written to {args.out})" if args.out else ""),
            file=sys.stderr,
        )
        return 1
    if args.out:
        for path in write_plan(result, args.out, args.budget_ms):
            print(f"wrote {path}")
    if pick is None:
        fastest = rows[0]
        print(
            f"\nnothing fits {args.budget_ms:g} ms: the fastest measured is "
            f"{fastest['method']} @ {fastest['input']} ({fastest['runtime']}) at "
            f"{fastest[stat]:.2f} ms",
        )
        return 1
    print(
        f"\npick: {pick['method']} at input {pick['input']} on {pick['runtime']}: "
        f"{metric} {100 * pick[metric]:.1f}%, {stat.removesuffix('_ms')} {pick[stat]:.2f} ms "
        f"(budget {args.budget_ms:g} ms)"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from upseg.deploy.bench import run_bench
    from upseg.deploy.bench_report import BENCH_FILES, bench_preamble, bench_table, write_bench
    from upseg.deploy.outputs import check_output_folder

    check_output_folder(args.out, "--out", BENCH_FILES)
    if args.keep_freed_memory:
        from upseg.engine.memory import keep_freed_memory

        keep_freed_memory()
    result = run_bench(
        args.methods,
        args.resolutions,
        args.runtimes,
        args.batches,
        output_size=args.output_size,
        in_channels=args.in_channels,
        num_classes=args.classes,
        threads=args.threads,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        peak_shape=tuple(args.peak_shape),
        backbone_kwargs=args.backbone_kwargs,
        checkpoint=args.checkpoint,
        max_memory=None if args.max_memory is None else int(args.max_memory * 1e9),
        progress=not args.quiet,
    )
    result["settings"]["command"] = "upseg " + " ".join(args.argv)
    result["settings"]["keep_freed_memory"] = args.keep_freed_memory
    print(bench_preamble(result) + "\n")
    if not result["rows"]:
        print(
            f"error: nothing was measured (every case was skipped, reasons above); nothing "
            f"written to {args.out}",
            file=sys.stderr,
        )
        return 1
    print(bench_table(result))
    for path in write_bench(result, args.out):
        print(f"wrote {path}")
    return 0


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"base_width\": 8}}', got {text!r}"
        )
    return value


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from upseg.data.resize import DOWNSAMPLE_MODES
    from upseg.losses import BASE_LOSSES, STAGE_WEIGHTS, TARGET_RESIZES

    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override)")
    parser.add_argument("--store", type=Path, help="slice store made by upseg prepare")
    parser.add_argument("--out", type=Path, help="run directory to create")
    parser.add_argument("--backbone", choices=list_backbones())
    parser.add_argument(
        "--backbone-kwargs",
        type=_json_dict,
        metavar="JSON",
        help="backbone options, e.g. '{\"base_width\": 8}'",
    )
    parser.add_argument(
        "--head",
        choices=("plain", "skip", "none"),
        help="up-scaling head; none trains the baseline (default plain)",
    )
    parser.add_argument(
        "--head-init",
        choices=HEAD_INITS,
        help="upsample: stages start as nearest up-sampling (default); bilinear: as repeated "
        "bilinear x2; pytorch: PyTorch's layer initialisation, as in the paper",
    )
    parser.add_argument(
        "--head-input",
        choices=HEAD_INPUTS,
        help="what the head's first stage reads: the backbone's logits (default) or the "
        "features that feed its final 1x1 conv (plain head only)",
    )
    parser.add_argument("--input-size", type=int, help="input resolution r (default 16)")
    parser.add_argument("--output-size", type=int, help="output resolution R (default: store)")
    parser.add_argument("--loss", choices=BASE_LOSSES)
    parser.add_argument("--target-resize", choices=TARGET_RESIZES)
    parser.add_argument("--stage-weights", choices=STAGE_WEIGHTS)
    parser.add_argument("--optimizer", choices=("adam", "adamw", "sgd"))
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning rate per step: constant (default), cosine to 0, or poly (1 - p)^0.9",
    )
    parser.add_argument(
        "--warmup-epochs", type=int, help="linear warm-up from lr / steps (default 0)"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--downsample", choices=DOWNSAMPLE_MODES, help="input downsampling")
    parser.add_argument("--flips", type=_bool, metavar="BOOL", help="random flips (default on)")
    parser.add_argument("--workers", type=int, help="DataLoader workers")
    parser.add_argument("--bf16", type=_bool, metavar="BOOL", help="bf16 autocast")
    parser.add_argument("--channels-last", type=_bool, metavar="BOOL")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    parser.add_argument("--deterministic", type=_bool, metavar="BOOL")
    parser.add_argument("--folds", type=int, help="k for patient-level k-fold validation")
    parser.add_argument("--fold", type=int, help="which fold validates (0..k-1)")
    parser.add_argument("--max-steps-per-epoch", type=int)


def build_parser() -> argparse.ArgumentParser:
    from upseg.losses import BASE_LOSSES, STAGE_WEIGHTS

    parser = argparse.ArgumentParser(
        prog="upseg",
        description="Low-resolution-in, full-resolution-out segmentation for embedded devices.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    profile.add_argument("--checkpoint", choices=("last", "best"), default="last")
    models = profile.add_argument_group(
        "models", "fresh models to count instead of RUN directories (not with a RUN)"
    )
    models.add_argument(
        "--backbones",
        nargs="+",
        choices=list_backbones(),
        metavar="NAME",
        help=f"backbones to count (from: {', '.join(list_backbones())}; default elunet unet)",
    )
    models.add_argument("--heads", nargs="+", choices=HEAD_CHOICES, help="default: none plain skip")
    models.add_argument("--input-sizes", nargs="+", type=int, metavar="R", help="default: 16 32 64")
    models.add_argument(
        "--output-size",
        type=int,
        help="ground-truth resolution the head up-scales to (default 256)",
    )
    models.add_argument("--in-channels", type=int, help="image channels (default 4)")
    models.add_argument("--classes", type=int, help="output classes (default 4)")
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
    profile.set_defaults(func=cmd_profile, parser=profile)

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
    _add_train_flags(train)
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run with its own settings",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train, parser=train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a run at full resolution: pooled and per patient, overlap and boundary",
        description="Score a trained run on its validation split at R (baselines are stretched "
        "bilinearly first) and write JSON and CSV: pooled paper-style and foreground scores, "
        "and per patient (all its slices as one volume) Dice, Jaccard, HD95 and normalised "
        "surface Dice per class and region, as a CSV and an nnU-Net-style summary.json; with "
        "a head, every stage is scored too. With --against, the two runs are compared patient "
        "by patient (mean difference, 95%% bootstrap interval, verdict).",
        epilog="example: upseg evaluate runs/head16 --figures --against runs/elunet16",
    )
    evaluate.add_argument("run", type=Path, help="run directory")
    evaluate.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="last (default; selects nothing on the data it reports) or best",
    )
    evaluate.add_argument("--split", choices=("val", "train", "all"), default="val")
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
    evaluate.add_argument("--num-slices", type=_positive_int, default=4, help="rows in the figure")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate, parser=evaluate)

    demo = commands.add_parser(
        "demo",
        help="baseline against up-scaling head on the built-in phantom: table and figures",
        description="Train the ELU-Net baseline and ELU-Net + head at each input size, score "
        "both at full resolution, count their cost, time them, and print a table. About 5 "
        "minutes on 2 CPU cores with the defaults; re-running reuses finished runs.",
        epilog="examples:\n  upseg demo\n  upseg demo --data data/brats2018 "
        "--format brats --epochs 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("upseg-out/demo"),
        help="output folder (default upseg-out/demo)",
    )
    demo.add_argument("--data", type=Path, help="a real dataset instead of the phantom")
    demo.add_argument("--format", choices=("brats", "decathlon", "folder"))
    demo.add_argument("--resolutions", type=int, nargs="+", default=[16, 32], metavar="R")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo, parser=demo)

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
        "elunet+plain elunet+plain:pytorch elunet+plain@features",
    )
    sweep.add_argument("--resolutions", type=int, nargs="+", required=True, metavar="R")
    sweep.add_argument(
        "--folds",
        type=int,
        default=0,
        help="k-fold patient-level cross-validation (default: the store's split)",
    )
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0])
    sweep.add_argument("--epochs", type=int, default=10)
    sweep.add_argument("--batch-size", type=int, default=32)
    sweep.add_argument("--lr", type=float)
    sweep.add_argument("--loss", choices=BASE_LOSSES, help="every run's loss (default ce)")
    sweep.add_argument("--stage-weights", choices=STAGE_WEIGHTS)
    sweep.add_argument("--schedule", choices=SCHEDULES, help="learning rate (default constant)")
    sweep.add_argument("--warmup-epochs", type=int)
    sweep.add_argument("--bf16", type=_bool, metavar="BOOL", help="bf16 autocast")
    sweep.add_argument("--backbone-kwargs", type=_json_dict, metavar="JSON")
    sweep.add_argument("--max-steps-per-epoch", type=int)
    sweep.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: a GPU when there is one)")
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
    sweep.add_argument("--quiet", action="store_true")
    sweep.set_defaults(func=cmd_sweep)

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
    export.add_argument("--checkpoint", choices=("last", "best"), default="last")
    fresh = export.add_argument_group(
        "fresh model", "a model with random weights instead of a RUN (not with a RUN)"
    )
    fresh.add_argument("--backbone", choices=list_backbones())
    fresh.add_argument("--head", choices=HEAD_CHOICES, help="default plain")
    fresh.add_argument("--input-size", type=int)
    fresh.add_argument("--output-size", type=int, help="default 256")
    fresh.add_argument("--in-channels", type=int, help="default 4")
    fresh.add_argument("--classes", type=int, help="default 4")
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |ONNX - PyTorch|, positive (default 1e-4)",
    )
    int8 = export.add_argument_group(
        "int8",
        "with --int8, --out holds the fp32 model and FILE.int8.onnx the int8 one (QDQ, "
        "static, calibrated on the run's training patients); both are scored on the run's "
        "validation patients at R and FILE.int8.json records the comparison",
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
        help="refuse the int8 model if its foreground Dice is more than D (>= 0) below "
        "fp32's (default 0.01, one point); on a refusal nothing is written and files "
        "already there stay as they were",
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
    export.set_defaults(func=cmd_export, parser=export)

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
    predict.add_argument("--checkpoint", choices=("last", "best"), default="last")
    predict.add_argument("--batch-size", type=int, default=32, help="slices per batch (32)")
    predict.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    predict.add_argument("--force", action="store_true", help="replace existing masks")
    predict.add_argument(
        "--runtime",
        choices=("auto", "torch", "ort"),
        default="auto",
        help="auto (default): onnxruntime on the CPU when it is installed and the model "
        "exports (the graph is cached in RUN/export/), else PyTorch; torch: eager PyTorch "
        "(any device); ort: onnxruntime, CPU only",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)

    plan = commands.add_parser(
        "plan",
        help="the best model and input size inside a latency budget, from measured results",
        description="Join a sweep's quality (sweep.csv) with latency measured by upseg bench "
        "on this device (bench.json) and pick the best score whose latency fits the budget. "
        "Nothing is estimated: models missing from either side are listed, not guessed.",
        epilog="example: upseg plan --budget-ms 33 --sweep sweeps/brats --bench bench/cpu",
    )
    plan.add_argument("--budget-ms", type=float, required=True, help="latency budget per image")
    plan.add_argument("--sweep", type=Path, required=True, help="sweep folder or sweep.csv")
    plan.add_argument("--bench", type=Path, required=True, help="bench folder or bench.json")
    plan.add_argument("--batch", type=int, default=1, help="bench batch size to use (default 1)")
    plan.add_argument(
        "--mode",
        choices=("e2e", "forward"),
        default="e2e",
        help="e2e: image at r in, label mask at R out (default); forward: network only",
    )
    plan.add_argument(
        "--stat",
        choices=("p90_ms", "median_ms"),
        default="p90_ms",
        help="latency statistic held against the budget (default p90_ms)",
    )
    plan.add_argument(
        "--metric",
        default="foreground_dice",
        help="a score column of sweep.csv (default foreground_dice)",
    )
    plan.add_argument(
        "--include-int8",
        action="store_true",
        help="also use int8 runtimes' timings (the sweep's scores are those of the fp32 models)",
    )
    plan.add_argument(
        "--out",
        type=Path,
        help="folder for plan.csv and plan.json (written together, only when some model "
        "was judged)",
    )
    plan.set_defaults(func=cmd_plan)
    bench = commands.add_parser(
        "bench",
        help="latency and throughput of models x input sizes x runtimes (torch, onnxruntime)",
        description="Time each model at each input size with each runtime at batch 1 and a "
        "larger batch, forward only and end to end (image at r in, label mask at R out), "
        "against the machine's conv peak; print a table and write CSV, JSON and a figure "
        "(paper Fig. 6).",
        epilog="examples:\n  upseg bench --methods elunet elunet+plain --resolutions 16 32 64 "
        "--threads 2 --out bench/\n  upseg bench --methods runs/head16 runs/base16 --out "
        "bench/ --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument(
        "--methods",
        nargs="+",
        required=True,
        metavar="METHOD",
        help="backbone[+plain[@features]|+skip][:bilinear|:pytorch] (fresh weights) or a run "
        "directory",
    )
    bench.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 64], metavar="r")
    bench.add_argument(
        "--runtimes",
        nargs="+",
        default=list(DEFAULT_RUNTIMES),
        choices=sorted(RUNTIMES),
        metavar="RUNTIME",
        help=f"from: {', '.join(sorted(RUNTIMES))} (default: all)",
    )
    bench.add_argument("--batches", type=int, nargs="+", default=[1, 8], metavar="B")
    bench.add_argument("--output-size", type=int, default=256, help="R (default 256)")
    bench.add_argument("--in-channels", type=int, default=4)
    bench.add_argument("--classes", type=int, default=4)
    bench.add_argument(
        "--threads", type=int, help="intra-op threads, at least 1 (default: all cores)"
    )
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    bench.add_argument("--warmup", type=int, default=3, help="untimed calls per case")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    bench.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    bench.add_argument(
        "--max-memory",
        type=float,
        metavar="GB",
        help="memory budget: cases whose estimate does not fit are skipped with the reason "
        "(default 80%% of the memory available at the start)",
    )
    bench.add_argument(
        "--peak-shape",
        type=int,
        nargs=3,
        default=[16, 64, 128],
        metavar=("BATCH", "CHANNELS", "SIZE"),
        help="the 3x3 conv that, in PyTorch and onnxruntime beside a 1024^3 GEMM, measures "
        "the ceiling (default 16 64 128)",
    )
    bench.add_argument("--backbone-kwargs", type=_json_dict, metavar="JSON")
    bench.add_argument("--checkpoint", choices=("last", "best"), default="last")
    bench.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="apply upseg.engine.memory.keep_freed_memory() (glibc malloc) first, as training does",
    )
    bench.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for bench.{md,csv,json} and the figure, written together only when "
        "something was measured",
    )
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 success, 1 bad data or a failed run, 2 bad usage or settings."""
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


if __name__ == "__main__":
    raise SystemExit(main())
