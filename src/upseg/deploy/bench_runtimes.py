"""Runtimes the benchmark can time, by name (RUNTIMES; `register_runtime` adds one):
  - torch-fp32: PyTorch eager, inference mode;
  - torch-bf16: the same under torch.autocast(bfloat16), only where the device computes bf16
    natively (a CPU with AVX512-BF16 or AMX, a GPU with bf16); elsewhere skipped with the
    reason, since emulated bf16 measures the emulation;
  - ort-fp32: onnxruntime on a file written by upseg.deploy.export.export_onnx (checked against
    PyTorch). End to end it runs the labels graph that predict runs
    (upseg.deploy.labels.export_labels), so one session.run goes from image to labels; that
    graph is checked against PyTorch's labels too. A head runs folded
    (upseg.models.folded_head);
  - ort-int8: the static int8 model of `upseg export --int8` (same form and weight settings),
    calibrated on random inputs, since only its speed is measured here; its end-to-end graph
    is checked against its own logits.
Each runtime turns (model, mode, batch) into a call that runs one batch; what it builds
(exported files, sessions, device copies) lives in the BenchContext's cache, which the bench
empties after each group of cases so that memory stays bounded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from upseg.data.resize import stretch_logits
from upseg.deploy.machine import cpu_bf16_support
from upseg.deploy.runtimes import ort_session
from upseg.models import LowResSegmenter

MODES = ("forward", "e2e")
DEFAULT_RUNTIMES = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8")
LABEL_MISMATCH_TOLERANCE = 1e-3  # fraction of pixels whose ONNX label may differ (near ties)


@dataclass
class BenchModel:
    """One model to time: `model` is on the CPU in eval mode, `macs` per image at its input,
    `activation_bytes` per image (torchinfo's forward/backward size: twice the outputs of
    every layer with parameters), what the memory check scales by the batch."""

    name: str
    model: LowResSegmenter
    output_size: int
    macs: int
    activation_bytes: int = 0
    classes: int = 1  # logit channels

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def feed_size(self) -> int:
        """Side of the model's input: R for a guided head, else input_size."""
        return self.model.feed_size

    @property
    def in_channels(self) -> int:
        return int(self.model.in_channels)


@dataclass
class BenchContext:
    device: str
    threads: int
    workdir: Path
    cache: dict = field(default_factory=dict)  # per runtime: exported files, sessions, models
    files: int = 0  # files named so far in workdir

    def release(self) -> None:
        """Drop sessions and device copies; keep the exported files (on disk) for later."""
        self.cache = {k: v for k, v in self.cache.items() if isinstance(v, Path)}

    def new_file(self, name: str) -> Path:
        """A path in workdir that no earlier call returned (files outlive `release`)."""
        self.files += 1
        return self.workdir / f"{self.files}-{name}"


Runner = Callable[[], object]


class Runtime(ABC):
    """How one runtime runs a model."""

    name = ""

    @abstractmethod
    def unavailable(self, device: str) -> str | None:
        """None when this runtime can run on `device`, else the reason it cannot."""

    @abstractmethod
    def prepare(self, entry: BenchModel, mode: str, batch: int, ctx: BenchContext) -> Runner:
        """A call that runs one batch of `batch` images in `mode` (inputs made once here)."""


class TorchRuntime(Runtime):
    def __init__(self, name: str, dtype: torch.dtype | None = None) -> None:
        self.name = name
        self.dtype = dtype

    def unavailable(self, device: str) -> str | None:
        if self.dtype != torch.bfloat16:
            return None
        if device.startswith("cuda"):
            return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
        supported, reason = cpu_bf16_support()
        return None if supported else reason

    def _device_model(self, entry: BenchModel, ctx: BenchContext) -> LowResSegmenter:
        key = ("torch", id(entry.model))
        if key not in ctx.cache:
            model = entry.model
            ctx.cache[key] = model if ctx.device == "cpu" else _copy_to(model, ctx.device)
        return ctx.cache[key]

    def prepare(self, entry: BenchModel, mode: str, batch: int, ctx: BenchContext) -> Runner:
        model = self._device_model(entry, ctx)
        x = torch.randn(batch, entry.in_channels, entry.feed_size, entry.feed_size)
        x = x.to(ctx.device)
        device_type = "cuda" if ctx.device.startswith("cuda") else "cpu"
        dtype, output_size = self.dtype, entry.output_size

        def run() -> torch.Tensor:
            with (
                torch.inference_mode(),
                torch.autocast(
                    device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
                ),
            ):
                logits = model(x)
                if mode == "forward":
                    return logits
                return stretch_logits(logits, output_size).argmax(1)

        return run


def _copy_to(model: LowResSegmenter, device: str) -> LowResSegmenter:
    import copy

    return copy.deepcopy(model).to(device).eval()


class OrtRuntime(Runtime):
    """onnxruntime fp32. A later precision (int8) overrides `model_file` to transform the
    exported forward graph and reuses the rest."""

    name = "ort-fp32"

    def _provider(self, device: str) -> str:
        return "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"

    def unavailable(self, device: str) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        provider = self._provider(device)
        if provider not in ort.get_available_providers():
            return f"onnxruntime has no {provider} here (for CUDA install onnxruntime-gpu)"
        return None

    def forward_file(self, entry: BenchModel, ctx: BenchContext) -> Path:
        """The exported fp32 logits graph of `entry`, written once per bench."""
        from upseg.deploy.export import export_onnx

        key = ("onnx-forward", id(entry.model))
        if key not in ctx.cache:
            path = ctx.new_file("forward.onnx")
            export_onnx(entry.model, path)
            ctx.cache[key] = path
        return ctx.cache[key]

    def model_file(self, entry: BenchModel, mode: str, ctx: BenchContext) -> Path:
        """The ONNX file this runtime runs in `mode` (e2e: image to labels at R)."""
        forward = self.forward_file(entry, ctx)
        if mode == "forward":
            return forward
        key = (self.name, "onnx-e2e", id(entry.model))
        if key not in ctx.cache:
            path = forward.with_name(f"{forward.stem}-e2e.onnx")
            ctx.cache[key] = self.e2e_file(entry, forward, path)
        return ctx.cache[key]

    def e2e_file(self, entry: BenchModel, forward: Path, path: Path) -> Path:
        """The labels graph that predict runs (upseg.deploy.labels.export_labels) at `path`;
        `forward`: this runtime's logits graph."""
        from upseg.deploy.labels import export_labels

        return export_labels(entry.model, path, entry.output_size)

    def session(self, entry: BenchModel, mode: str, ctx: BenchContext):

        key = (self.name, "session", mode, id(entry.model))
        if key not in ctx.cache:
            path = self.model_file(entry, mode, ctx)
            provider = self._provider(ctx.device)
            session = ort_session(path, ctx.threads, spinning=True, provider=provider)
            ctx.cache[key] = session
            if mode == "e2e":
                self.check_labels(session, entry, path, ctx)
        return ctx.cache[key]

    def check_labels(self, session, entry: BenchModel, path: Path, ctx: BenchContext) -> None:
        """Fail unless the e2e graph gives PyTorch's labels."""
        _check_labels(session, entry, path)

    def prepare(self, entry: BenchModel, mode: str, batch: int, ctx: BenchContext) -> Runner:
        session = self.session(entry, mode, ctx)
        size = entry.feed_size
        x = np.random.default_rng(0).standard_normal((batch, entry.in_channels, size, size))
        feed = {session.get_inputs()[0].name: x.astype(np.float32)}
        return lambda: session.run(None, feed)


def _check_labels(session, entry: BenchModel, path: Path, logits=None) -> None:
    """The e2e graph must give the labels of its logits (by default PyTorch's) stretched to R,
    up to near ties in a few pixels. `logits`: a function image -> logits to compare with."""
    from upseg.deploy.export import ExportError

    x = torch.randn(2, entry.in_channels, entry.feed_size, entry.feed_size)
    with torch.inference_mode():
        scores = entry.model(x) if logits is None else logits(x)
        expected = stretch_logits(scores, entry.output_size).argmax(1).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    mismatch = float(np.mean(got != expected)) if got.shape == expected.shape else 1.0
    if mismatch > LABEL_MISMATCH_TOLERANCE:
        raise ExportError(
            f"{path}: ONNX labels differ from those of its logits in {100 * mismatch:.2f}% of "
            "pixels"
        )


class RandomCalibration:
    """onnxruntime CalibrationDataReader of standard-normal images (B, C, r, r): the int8
    ranges they set do not change the speed that the bench measures."""

    def __init__(self, entry: BenchModel, batches: int = 4, batch: int = 8) -> None:
        generator = np.random.default_rng(0)
        shape = (batch, entry.in_channels, entry.feed_size, entry.feed_size)
        self.batches = [generator.standard_normal(shape).astype(np.float32) for _ in range(batches)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {"image": self.batches.pop()} if self.batches else None


class OrtInt8Runtime(OrtRuntime):
    """onnxruntime on the static int8 (QOperator) model that `upseg export --int8` writes, with the
    same weight settings (upseg.deploy.quantize), calibrated on random inputs: speed only.
    Its accuracy is what `export --int8` checks on a run's validation split."""

    name = "ort-int8"

    def unavailable(self, device: str) -> str | None:
        if device.startswith("cuda"):
            return "int8 models are benchmarked on the CPU provider only"
        return super().unavailable(device)

    def forward_file(self, entry: BenchModel, ctx: BenchContext) -> Path:
        from upseg.deploy.quantize import quantize_onnx

        key = (self.name, "onnx-forward", id(entry.model))
        if key not in ctx.cache:
            fp32 = super().forward_file(entry, ctx)
            path = fp32.with_name(f"{fp32.stem}-int8.onnx")
            quantize_onnx(fp32, path, RandomCalibration(entry))
            ctx.cache[key] = path
        return ctx.cache[key]

    def e2e_file(self, entry: BenchModel, forward: Path, path: Path) -> Path:
        """The int8 logits graph followed by resize + argmax (upseg.deploy.labels)."""
        from upseg.deploy.labels import add_label_output

        return add_label_output(forward, path, entry.output_size)

    def check_labels(self, session, entry: BenchModel, path: Path, ctx: BenchContext) -> None:
        forward = self.session(entry, "forward", ctx)
        name = forward.get_inputs()[0].name

        def logits(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(forward.run(None, {name: x.numpy()})[0])

        _check_labels(session, entry, path, logits)


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> None:
    if runtime.name in RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is already registered")
    RUNTIMES[runtime.name] = runtime


register_runtime(TorchRuntime("torch-fp32"))
register_runtime(TorchRuntime("torch-bf16", torch.bfloat16))
register_runtime(OrtRuntime())
register_runtime(OrtInt8Runtime())
