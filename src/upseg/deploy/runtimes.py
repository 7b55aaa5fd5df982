"""Threads for CPU inference: the cores this process may use, onnxruntime sessions sized to
them, and PyTorch's own thread count around a run.

One runtime computes at a time, and only it gets the cores: an onnxruntime session takes them
all for its intra-op pool (inter-op 1, sequential, no spinning between calls), and PyTorch,
left with the light preprocessing, is held to one thread meanwhile, so two thread pools never
spin against each other on the same cores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ort_session(
    source: str | Path | bytes,
    threads: int | None = None,
    spinning: bool = False,
    provider: str = "CPUExecutionProvider",
) -> Any:
    """An onnxruntime CPU session for an ONNX file (or its bytes): `threads` intra-op threads
    (default: all available cores), one inter-op thread, sequential execution, all graph
    optimisations, warnings only. `spinning`: let idle pool threads spin for the next call;
    off by default, since between calls this process does single-threaded work (reading,
    writing) that spinning threads would slow down, as they slow down other processes.
    `provider`: onnxruntime's execution provider (the bench times CUDA with it too)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, options, providers=[provider])


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `count` inside the block, restored after."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
