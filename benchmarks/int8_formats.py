"""Which int8 form pays on this CPU: onnxruntime QDQ against QOperator, per-channel against
per-tensor weights, int8 against uint8 activations, with the first and last convolution kept
in float or not, timed against onnxruntime fp32 on the same exported model.

For every input size and batch, each variant's forward time (median of interleaved calls,
fresh random weights: speed only, accuracy is `upseg export --int8`'s job) is printed with its
speed-up over fp32. Calibration uses random normal images.

--ops prints instead, for fp32 and upseg's int8 form, the share of each operator type in
onnxruntime's own profile (10 calls): where the time goes, and what stays in float.

--backbone-kwargs '{"upsample": "nearest"}' times ELU-Net's int8-friendly form;
--upseg-form-only leaves the other int8 variants out.

usage: python benchmarks/int8_formats.py [--method elunet] [--sizes 64 128 256]
       [--batches 1 8] [--threads 2] [--repeats 20] [--rounds 4] [--ops]
       [--backbone-kwargs JSON] [--upseg-form-only]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from upseg.deploy.export import export_onnx
from upseg.deploy.machine import cpu_flags
from upseg.deploy.quantize import prepare_for_quantization, time_models
from upseg.deploy.runtimes import available_cores, ort_session
from upseg.models import build, parse_method

UPSEG_FORM = "QOperator u8s8 per-channel 7-bit"  # what `upseg export --int8` writes
VARIANTS = {  # name -> quantize_static settings
    "QDQ s8s8 per-channel 7-bit": {"fmt": "QDQ", "act": "s8", "per_channel": True, "reduce": True},
    "QDQ s8s8 per-tensor": {"fmt": "QDQ", "act": "s8", "per_channel": False, "reduce": False},
    "QDQ u8s8 per-channel": {"fmt": "QDQ", "act": "u8", "per_channel": True, "reduce": False},
    "QDQ u8s8 per-tensor": {"fmt": "QDQ", "act": "u8", "per_channel": False, "reduce": False},
    "QOperator u8s8 per-channel": {
        "fmt": "QOperator",
        "act": "u8",
        "per_channel": True,
        "reduce": False,
    },
    UPSEG_FORM: {"fmt": "QOperator", "act": "u8", "per_channel": True, "reduce": True},
    "QOperator u8s8 per-tensor": {
        "fmt": "QOperator",
        "act": "u8",
        "per_channel": False,
        "reduce": False,
    },
    "QDQ u8s8 per-channel, ends in float": {
        "fmt": "QDQ",
        "act": "u8",
        "per_channel": True,
        "reduce": False,
        "float_ends": True,
    },
}


class Calibration:
    def __init__(self, shape: tuple[int, ...], batches: int = 4) -> None:
        rng = np.random.default_rng(0)
        self.items = [rng.standard_normal(shape).astype(np.float32) for _ in range(batches)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {"image": self.items.pop()} if self.items else None


def quantize(fp32: Path, out: Path, shape: tuple[int, ...], variant: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    prepared = out.with_name(out.stem + "-prep.onnx")
    prepare_for_quantization(fp32, prepared)
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    exclude = [convs[0], convs[-1]] if variant.get("float_ends") else []
    quantize_static(
        str(prepared),
        str(out),
        Calibration(shape),
        quant_format=QuantFormat.QDQ if variant["fmt"] == "QDQ" else QuantFormat.QOperator,
        per_channel=variant["per_channel"],
        reduce_range=variant["reduce"],
        activation_type=QuantType.QInt8 if variant["act"] == "s8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
    )


def print_op_shares(name: str, path: Path, image: np.ndarray, threads: int) -> None:
    """Milliseconds per call and share of each operator type, from onnxruntime's profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    calls = 10
    for _ in range(calls):
        session.run(None, {"image": image})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    print(f"  {name}: {total / calls / 1000:.1f} ms per call in operators")
    for op, micros in per_op.most_common(8):
        print(f"    {op:24s} {micros / calls / 1000:8.2f} ms {100 * micros / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="elunet")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ops", action="store_true", help="operator shares instead of timings")
    parser.add_argument("--backbone-kwargs", type=json.loads, default={})
    parser.add_argument("--upseg-form-only", action="store_true")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})
    print(
        f"onnxruntime {ort.__version__}, {args.threads} threads, backbone options "
        f"{args.backbone_kwargs}, CPU flags: {' '.join(flags)}"
    )
    method = parse_method(args.method)
    with tempfile.TemporaryDirectory(prefix="upseg-int8-") as folder:
        for size in args.sizes:
            head = None if method.head == "none" else method.head
            model = build(
                method.backbone,
                args.channels,
                args.classes,
                size,
                256 if head else None,
                head=head,
                head_input=method.input if head else None,
                **args.backbone_kwargs,
            ).eval()
            fp32 = Path(folder) / f"fp32-{size}.onnx"
            export_onnx(model, fp32)
            files = {"fp32": fp32}
            only = args.ops or args.upseg_form_only
            variants = {UPSEG_FORM: VARIANTS[UPSEG_FORM]} if only else VARIANTS
            for name, variant in variants.items():
                path = Path(folder) / f"{len(files)}-{size}.onnx"
                quantize(fp32, path, (8, args.channels, size, size), variant)
                files[name] = path
            sessions = {
                name: ort_session(path, args.threads, spinning=True) for name, path in files.items()
            }
            for batch in args.batches:
                x = np.random.default_rng(1).standard_normal(
                    (batch, args.channels, size, size), dtype=np.float32
                )
                if args.ops:
                    print(f"\n{args.method} at {size}, batch {batch}:")
                    for name, path in files.items():
                        print_op_shares(name, path, x, args.threads)
                    continue
                medians = time_models(sessions, x, args.repeats, args.rounds)
                base = medians["fp32"]
                print(f"\n{args.method} at {size}, batch {batch}: fp32 {base:.2f} ms")
                for name in variants:
                    median = medians[name]
                    print(f"  {name:38s} {median:8.2f} ms  {base / median:5.2f}x fp32")


if __name__ == "__main__":
    main()
