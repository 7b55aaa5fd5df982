"""Inference benchmark: latency and throughput of models x input sizes x runtimes x batches.

Two modes, measured side by side for every case:
  - "forward": the network only, image at r in, logits out (backbone for a baseline,
    backbone + head for a head model);
  - "e2e" (end to end): image at r in, label mask at R out, what a user gets: a baseline adds
    the bilinear stretch to R and argmax, a head model adds argmax.

Runtimes (RUNTIMES; `register_runtime` adds one):
  - torch-fp32: PyTorch eager, inference mode;
  - torch-bf16: the same under torch.autocast(bfloat16), only where the device computes bf16
    natively (a CPU with AVX512-BF16 or AMX, a GPU with bf16); elsewhere skipped with the
    reason, since emulated bf16 measures the emulation;
  - ort-fp32: onnxruntime on a file written by upseg.deploy.export.export_onnx (checked against
    PyTorch). End to end, the resize and argmax are nodes inside the ONNX graph
    (upseg.deploy.labels), so one session.run goes from image to labels; that graph is
    checked against PyTorch's labels too. A head runs folded (upseg.models.folded_head);
  - ort-int8: the static int8 QDQ model of `upseg export --int8` (same weight settings),
    calibrated on random inputs, since only its speed is measured here; its end-to-end graph
    is checked against its own logits.
Inputs are random and made once per case outside the timed region; outputs are what the
runtime returns (torch tensors on the device, numpy arrays from onnxruntime). On CUDA every
timed call ends with torch.cuda.synchronize(); onnxruntime runs there only with its CUDA
provider, with numpy input and output (host copies included).

Timing: torch and onnxruntime use `threads` intra-op threads. Every case is warmed up, then
all cases of one batch size run interleaved in `rounds` rounds (each round: one untimed
call, so a thread pool left spinning by the previous case does not count, then its share of
`repeats` timed calls), which spreads the drift of a shared machine over all cases alike.
Latency = median and 90th percentile of the per-call times; throughput = batch / median.

Achieved GFLOP/s = 2 x MACs per image (upseg.profile.count_macs: the published layers, also
for a folded head; resize and argmax count nothing) x batch / median time, shown against the
machine's conv peak: the GFLOP/s (median call) of one large 3x3 convolution in PyTorch fp32
with the same threads, measured before and after the cases, the better of the two. Rows also
keep the fastest call (min_ms), a hint of what an unshared machine would show.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from upseg.models import LowResSegmenter
from upseg.resize import stretch_logits

MODES = ("forward", "e2e")
MODE_TITLES = {"forward": "forward", "e2e": "end-to-end"}
DEFAULT_RUNTIMES = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8")
LABEL_MISMATCH_TOLERANCE = 1e-3  # fraction of pixels whose ONNX label may differ (near ties)


@dataclass
class BenchModel:
    """One model to time: `model` is on the CPU in eval mode, `macs` per image at its input."""

    name: str
    model: LowResSegmenter
    output_size: int
    macs: int

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def in_channels(self) -> int:
        return int(self.model.in_channels)


@dataclass
class BenchContext:
    device: str
    threads: int
    workdir: Path
    cache: dict = field(default_factory=dict)  # per runtime: exported files, sessions, models


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


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and the evidence (flags or capability)."""
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = [flag for flag, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()]
    if not found and Path("/proc/cpuinfo").is_file():
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
        found = [flag for flag in checks if flag in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    if found:
        return True, f"CPU has {' and '.join(found)} (torch capability {capability})"
    return False, (
        f"this CPU has no native bf16 (no avx512_bf16 or amx_bf16; torch capability "
        f"{capability}); autocast would time an emulation"
    )


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
        x = torch.randn(batch, entry.in_channels, entry.input_size, entry.input_size)
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
            path = ctx.workdir / f"{len(ctx.cache)}-forward.onnx"
            export_onnx(entry.model, path)
            ctx.cache[key] = path
        return ctx.cache[key]

    def model_file(self, entry: BenchModel, mode: str, ctx: BenchContext) -> Path:
        """The ONNX file this runtime runs in `mode` (e2e: forward + resize + argmax)."""
        from upseg.deploy.labels import add_label_output

        forward = self.forward_file(entry, ctx)
        if mode == "forward":
            return forward
        key = (self.name, "onnx-e2e", id(entry.model))
        if key not in ctx.cache:
            path = add_label_output(
                forward, forward.with_name(f"{forward.stem}-e2e.onnx"), entry.output_size
            )
            ctx.cache[key] = path
        return ctx.cache[key]

    def session(self, entry: BenchModel, mode: str, ctx: BenchContext):
        import onnxruntime as ort

        key = (self.name, "session", mode, id(entry.model))
        if key not in ctx.cache:
            options = ort.SessionOptions()
            options.intra_op_num_threads = ctx.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            path = self.model_file(entry, mode, ctx)
            session = ort.InferenceSession(
                str(path), options, providers=[self._provider(ctx.device)]
            )
            ctx.cache[key] = session
            if mode == "e2e":
                self.check_labels(session, entry, path, ctx)
        return ctx.cache[key]

    def check_labels(self, session, entry: BenchModel, path: Path, ctx: BenchContext) -> None:
        """Fail unless the e2e graph gives PyTorch's labels."""
        _check_labels(session, entry, path)

    def prepare(self, entry: BenchModel, mode: str, batch: int, ctx: BenchContext) -> Runner:
        session = self.session(entry, mode, ctx)
        size = entry.input_size
        x = np.random.default_rng(0).standard_normal((batch, entry.in_channels, size, size))
        feed = {session.get_inputs()[0].name: x.astype(np.float32)}
        return lambda: session.run(None, feed)


def _check_labels(session, entry: BenchModel, path: Path, logits=None) -> None:
    """The e2e graph must give the labels of its logits (by default PyTorch's) stretched to R,
    up to near ties in a few pixels. `logits`: a function image -> logits to compare with."""
    from upseg.deploy.export import ExportError

    x = torch.randn(2, entry.in_channels, entry.input_size, entry.input_size)
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
        shape = (batch, entry.in_channels, entry.input_size, entry.input_size)
        self.batches = [generator.standard_normal(shape).astype(np.float32) for _ in range(batches)]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return {"image": self.batches.pop()} if self.batches else None


class OrtInt8Runtime(OrtRuntime):
    """onnxruntime on the static int8 (QDQ) model that `upseg export --int8` writes, with the
    same weight settings (upseg.deploy.quantize), calibrated on random inputs: speed only.
    Its accuracy is what `export --int8` checks on a run's validation split."""

    name = "ort-int8"

    def unavailable(self, device: str) -> str | None:
        if device.startswith("cuda"):
            return "int8 QDQ models are benchmarked on the CPU provider only"
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


def default_threads() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _timed_ms(run: Runner, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    sync()
    return 1000 * (time.perf_counter() - start)


def conv_peak(
    device: str = "cpu",
    batch: int = 32,
    channels: int = 64,
    size: int = 128,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, float]:
    """GFLOP/s of one 3x3 convolution (batch, channels -> channels, size x size, padding 1)
    in PyTorch fp32 with the current thread count: 2 x MACs / median time (and / the fastest
    call, "gflops_best")."""
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    x = torch.randn(batch, channels, size, size, device=device)
    sync = _synchronizer(device)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return conv(x)

    for _ in range(warmup):
        run()
    sync()
    times = [_timed_ms(run, sync) for _ in range(repeats)]
    median = statistics.median(times)
    gflop = 2 * batch * channels * channels * 9 * size * size / 1e9
    return {
        "shape": f"{batch} x {channels} -> {channels} x {size} x {size}, 3x3",
        "median_ms": median,
        "gflops": gflop / (median / 1000),
        "gflops_best": gflop / (min(times) / 1000),
    }


def _load_average() -> float | None:
    """The 1-minute load average (other work sharing the cores), where the OS reports it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info(device: str, threads: int) -> dict[str, object]:
    """What the numbers were measured on."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "cpu": cpu,
        "cores_available": default_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_bf16_support()[1],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "device": device,
        "threads": threads,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_bench_models(
    methods: Sequence[str | Path],
    resolutions: Sequence[int],
    output_size: int,
    in_channels: int,
    num_classes: int,
    backbone_kwargs: dict | None = None,
    checkpoint: str = "last",
) -> tuple[list[BenchModel], list[dict[str, object]]]:
    """Models from methods (`upseg sweep` syntax, fresh random weights, one per resolution)
    or run directories (their own weights and sizes; `resolutions` do not apply to them).
    Returns the models and the skipped (method, input, reason) combinations."""
    from upseg.models import build, method_name
    from upseg.models.registry import make_backbone
    from upseg.profile import count_macs
    from upseg.sweep import parse_method

    entries, skipped = [], []
    for spec in methods:
        if Path(spec).is_dir():
            from upseg.train import load_run

            model, config, _ = load_run(spec, checkpoint)
            label = method_name(config.backbone, config.head, config.head_init)
            name = f"{Path(spec).name} ({label})"
            shape = (1, model.in_channels, model.input_size, model.input_size)
            entries.append(BenchModel(name, model, model.output_size, count_macs(model, shape)))
            continue
        method = parse_method(str(spec))
        head = None if method.head == "none" else method.head
        if backbone_kwargs:  # bad options are bad usage, not a skipped size: fail here
            with torch.device("meta"):
                make_backbone(method.backbone, in_channels, num_classes, **backbone_kwargs)
        for size in resolutions:
            try:
                model = build(
                    method.backbone,
                    in_channels,
                    num_classes,
                    size,
                    output_size if head else None,
                    head=head,
                    head_init=method.init,
                    **(backbone_kwargs or {}),
                ).eval()
            except ValueError as error:
                skipped.append(
                    {"method": str(spec), "input": size, "runtime": "all", "reason": str(error)}
                )
                continue
            macs = count_macs(model, (1, in_channels, size, size))
            entries.append(BenchModel(str(spec), model, output_size, macs))
    return entries, skipped


def _summary(times: list[float], batch: int) -> dict[str, float]:
    median = float(np.percentile(times, 50))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": min(times),
        "images_per_s": batch / (median / 1000),
    }


def run_bench(
    methods: Sequence[str | Path],
    resolutions: Sequence[int] = (16, 32, 64),
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    batches: Sequence[int] = (1, 32),
    output_size: int = 256,
    in_channels: int = 4,
    num_classes: int = 4,
    threads: int | None = None,
    device: str = "cpu",
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 5,
    peak_shape: tuple[int, int, int] = (32, 64, 128),
    backbone_kwargs: dict | None = None,
    checkpoint: str = "last",
    progress: bool = True,
) -> dict[str, object]:
    """Time every model x resolution x runtime x batch in both modes.

    Returns {"machine", "settings", "conv_peak", "rows", "skipped"}: one row per measured
    (method, runtime, mode, input, batch) with median_ms, p90_ms, images_per_s, gflops and
    pct_peak; `skipped` lists {method, input, runtime, reason} for what could not run.
    """
    unknown = [name for name in runtimes if name not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; choose from {sorted(RUNTIMES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; choose cpu or cuda")
    if min(batches) < 1 or repeats < 1 or rounds < 1 or warmup < 0:
        raise ValueError("batches, repeats and rounds must be at least 1, warmup at least 0")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if min(output_size, in_channels, num_classes) < 1:
        raise ValueError("--output-size, --in-channels and --classes must be at least 1")
    if min(resolutions, default=1) < 1:
        raise ValueError(f"--resolutions must be at least 1, got {min(resolutions)}")
    if min(peak_shape) < 1:
        raise ValueError(f"--peak-shape values must be at least 1, got {list(peak_shape)}")
    threads = threads or default_threads()
    entries, skipped = load_bench_models(
        methods, resolutions, output_size, in_channels, num_classes, backbone_kwargs, checkpoint
    )
    load_before = _load_average()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak_before = conv_peak(device, *peak_shape)
        rows = []
        with tempfile.TemporaryDirectory(prefix="upseg-bench-") as workdir:
            ctx = BenchContext(device, threads, Path(workdir))
            usable = []
            for name in runtimes:
                reason = RUNTIMES[name].unavailable(device)
                if reason:
                    skipped.append(
                        {"method": "all", "input": "all", "runtime": name, "reason": reason}
                    )
                else:
                    usable.append(RUNTIMES[name])
            for batch in batches:
                rows += _bench_batch(
                    entries, usable, batch, ctx, warmup, repeats, rounds, skipped, progress
                )
        peak_after = conv_peak(device, *peak_shape)
    finally:
        torch.set_num_threads(previous_threads)
    # measured before and after the cases; the better median is the machine's peak
    peak = max(peak_before, peak_after, key=lambda p: p["gflops"])
    peak = {**peak, "gflops_before_after": [peak_before["gflops"], peak_after["gflops"]]}
    for row in rows:
        flops = 2 * row["gmac_per_image"] * 1e9 * row["batch"] / (row["median_ms"] / 1000)
        row["gflops"] = flops / 1e9
        row["pct_peak"] = 100 * row["gflops"] / peak["gflops"]
    machine = machine_info(device, threads)
    machine["load_average_before_after"] = [load_before, _load_average()]
    return {
        "machine": machine,
        "settings": {
            "methods": [str(m) for m in methods],
            "resolutions": list(resolutions),
            "runtimes": list(runtimes),
            "batches": list(batches),
            "output_size": output_size,
            "in_channels": in_channels,
            "classes": num_classes,
            "warmup": warmup,
            "repeats": repeats,
            "rounds": rounds,
        },
        "conv_peak": peak,
        "rows": rows,
        "skipped": skipped,
    }


def _bench_batch(
    entries: list[BenchModel],
    runtimes: list[Runtime],
    batch: int,
    ctx: BenchContext,
    warmup: int,
    repeats: int,
    rounds: int,
    skipped: list[dict[str, object]],
    progress: bool,
) -> list[dict[str, object]]:
    """All cases of one batch size, prepared together and timed interleaved."""
    cases: list[tuple[dict[str, object], Runner]] = []
    failed: set[tuple[str, int, str]] = set()
    for entry in entries:
        for runtime in runtimes:
            for mode in MODES:
                key = (entry.name, entry.input_size, runtime.name)
                if key in failed:
                    continue
                try:
                    run = runtime.prepare(entry, mode, batch, ctx)
                except Exception as error:  # an export or session failure skips this runtime
                    failed.add(key)
                    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                    skipped.append(
                        {
                            "method": entry.name,
                            "input": entry.input_size,
                            "runtime": runtime.name,
                            "reason": reason,
                        }
                    )
                    continue
                meta = {
                    "method": entry.name,
                    "runtime": runtime.name,
                    "mode": mode,
                    "input": entry.input_size,
                    "output": entry.output_size if mode == "e2e" else _forward_side(entry),
                    "batch": batch,
                    "device": ctx.device,
                    "threads": ctx.threads,
                    "gmac_per_image": entry.macs / 1e9,
                }
                cases.append((meta, run))
    cases = [
        (meta, run)
        for meta, run in cases
        if (meta["method"], meta["input"], meta["runtime"]) not in failed
    ]
    sync = _synchronizer(ctx.device)
    per_round = math.ceil(repeats / rounds)
    times: list[list[float]] = [[] for _ in cases]
    bar = tqdm(total=len(cases) * (rounds + 1), desc=f"bench batch {batch}", disable=not progress)
    for _, run in cases:
        for _ in range(warmup):
            run()
        sync()
        bar.update()
    for _ in range(rounds):
        for i, (_, run) in enumerate(cases):
            run()  # untimed: lets the previous case's thread pool go quiet
            sync()
            times[i] += [_timed_ms(run, sync) for _ in range(per_round)]
            bar.update()
    bar.close()
    return [
        {**meta, **_summary(t, batch), "calls": len(t)}
        for (meta, _), t in zip(cases, times, strict=True)
    ]


def _forward_side(entry: BenchModel) -> int:
    """Side of the forward output: R for a head model, r for a baseline."""
    return entry.output_size if entry.model.head is not None else entry.input_size
