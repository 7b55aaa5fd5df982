"""What the benchmark machine is and can do: cores, bf16, memory, resident-set peaks, and a
compute ceiling measured with more than one engine.

The ceiling ("peak") is the best fp32 GFLOP/s of several large kernels with the bench's
thread count: a 3x3 convolution in PyTorch and in onnxruntime, and a square matrix product in
PyTorch. Each is timed as the median call, and the best is taken, so no engine that the bench
runs can beat the ceiling by a wide margin on one shape it was not measured on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from upseg.deploy.runtimes import available_cores, ort_session


def cpu_flags() -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and the evidence (flags or capability)."""
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = [flag for flag, fn in checks.items() if getattr(torch.cpu, fn, lambda: False)()]
    if not found:
        flags = cpu_flags()
        found = [flag for flag in checks if flag in flags]
    capability = torch.backends.cpu.get_cpu_capability()
    if found:
        return True, f"CPU has {' and '.join(found)} (torch capability {capability})"
    return False, (
        f"this CPU has no native bf16 (no avx512_bf16 or amx_bf16; torch capability "
        f"{capability}); autocast would time an emulation"
    )


def load_average() -> float | None:
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
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    info: dict[str, object] = {
        "cpu": cpu,
        "cpu_flags": [f for f in wanted if f in cpu_flags()],
        "cores_available": available_cores(),
        "memory_available_gb": round(available_memory() / 1e9, 1),
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


# -- memory -----------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes the system can still give without swapping (MemAvailable), else total RAM."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 0


def _status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Restart the process's resident-set high-water mark (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int | None:
    """The process's peak resident set since the last reset, in bytes (None: unknown)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        with contextlib.suppress(ImportError, OSError):
            import resource

            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kB, never reset
    return None if kb is None else kb * 1024


# -- compute ceiling ----------------------------------------------------------------------
def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def timed_ms(run: Callable[[], object], sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    sync()
    return 1000 * (time.perf_counter() - start)


def _rate(run: Callable[[], object], gflop: float, device: str, warmup: int, repeats: int) -> dict:
    sync = synchronizer(device)
    for _ in range(warmup):
        run()
    sync()
    times = [timed_ms(run, sync) for _ in range(repeats)]
    median = statistics.median(times)
    return {
        "median_ms": median,
        "gflops": gflop / (median / 1000),
        "gflops_best": gflop / (min(times) / 1000),
    }


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

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return conv(x)

    gflop = 2 * batch * channels * channels * 9 * size * size / 1e9
    shape = f"{batch} x {channels} -> {channels} x {size} x {size}, 3x3"
    return {"engine": "torch conv", "shape": shape, **_rate(run, gflop, device, warmup, repeats)}


def gemm_peak(device: str = "cpu", n: int = 1024, warmup: int = 2, repeats: int = 5) -> dict:
    """GFLOP/s of an n x n x n fp32 matrix product in PyTorch."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return {
        "engine": "torch GEMM",
        "shape": f"{n} x {n} x {n}",
        **_rate(lambda: a @ b, 2 * n**3 / 1e9, device, warmup, repeats),
    }


def ort_conv_peak(
    threads: int, batch: int = 32, channels: int = 64, size: int = 128, warmup=2, repeats=5
) -> dict:
    """The conv of `conv_peak` as a one-node ONNX graph in onnxruntime (CPU)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((channels, channels, 3, 3))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "peak",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    session = ort_session(model.SerializeToString(), threads, spinning=True)
    x = np.random.default_rng(1).standard_normal((batch, channels, size, size), np.float32)
    gflop = 2 * batch * channels * channels * 9 * size * size / 1e9
    return {
        "engine": "onnxruntime conv",
        "shape": f"{batch} x {channels} -> {channels} x {size} x {size}, 3x3",
        **_rate(lambda: session.run(None, {"x": x}), gflop, "cpu", warmup, repeats),
    }


def compute_ceiling(device: str, threads: int, conv_shape: tuple[int, int, int]) -> dict:
    """The best of several engines' large fp32 kernels: {"gflops", "engine", "shape",
    "candidates": [each engine's figures]}."""
    candidates = [conv_peak(device, *conv_shape), gemm_peak(device)]
    if device == "cpu":
        with contextlib.suppress(ImportError):
            candidates.append(ort_conv_peak(threads, *conv_shape))
    best = max(candidates, key=lambda c: c["gflops"])
    return {**best, "candidates": candidates}
