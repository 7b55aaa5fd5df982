"""Model cost: parameters, multiply-accumulates (MACs) and memory, counted or measured.

MACs come from torch's FlopCounterMode, which counts convolutions, transposed convolutions
and matrix products (2 FLOPs = 1 MAC) and ignores element-wise work (BatchNorm, ReLU, adds).
The count runs on the 'meta' device, so it costs no compute and no memory. Up-scaling stages
are counted as their two published layers (ConvTranspose2d + Conv2d: (4 Cin + 36 Nc) Nc h^2
MACs for input side h); their composed execution (upseg.models.subpixel) does 16 Cin Nc (h + 1)^2.

Memory, two numbers (1 MB = 10^6 bytes):
  - `activation_mb`: torchinfo's "Forward/backward pass size", twice the bytes of the output
    of every layer with parameters (outputs + their gradients), for the published layers;
    the kind of number in the "Memory (MB)" column of paper Table IV. It is counted from
    shapes, not measured.
  - `peak_inference_mb`: measured. One eval-mode forward runs under torch.profiler with
    profile_memory=True; replaying its allocation and free events in time order gives the
    largest amount of CPU memory that torch's allocator held at once above what it held
    before the pass (activations, the output and workspaces torch allocates; not the
    weights, which exist before, and not memory a library allocates on its own).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from upseg.models.features import DEFAULT_HEAD_INPUT
from upseg.models.head import UpscalingStage
from upseg.models.methods import method_name
from upseg.models.segmenter import build


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Unique parameters (a tensor shared by two modules counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _on_meta(model: nn.Module) -> bool:
    return all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _published_layers(model: nn.Module, device: str | None = None) -> nn.Module:
    """An eval-mode copy whose up-scaling stages run as their two published layers."""
    twin = copy.deepcopy(model) if device is None else copy.deepcopy(model).to(device)
    twin.eval()
    for module in twin.modules():
        if isinstance(module, UpscalingStage):
            module.composed = False
    return twin


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one inference forward pass (eval mode) for an input of `input_shape`."""
    meta_model = _published_layers(model, None if _on_meta(model) else "meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() // 2


def activation_mb(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """torchinfo's "Forward/backward pass size (MB)" for an input of `input_shape`.

    Runs one real forward on the CPU (torchinfo records output shapes with hooks), so the
    model must hold real weights.
    """
    import torchinfo

    twin = _published_layers(model, "cpu")
    stats = torchinfo.summary(twin, input_size=input_shape, device="cpu", mode="eval", verbose=0)
    return stats.total_output_bytes / 1e6


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """The profiler's C++ side prints start/stop lines to file descriptor 2; hide them."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by a Python object
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(devnull)
        os.close(saved)


def peak_inference_mb(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Measured peak CPU memory (MB) of one eval-mode forward for an input of `input_shape`:
    the largest sum of live bytes allocated by torch during the pass (see the module doc).

    One untimed forward runs first, so one-off caches are not charged to the measured pass.
    The model's own composed up-scaling stages run, as in deployment.
    """
    from torch.profiler import ProfilerActivity, profile

    twin = copy.deepcopy(model).to("cpu").eval()
    x = torch.randn(input_shape)
    with torch.no_grad():
        twin(x)
        with (
            _stderr_silenced(),
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        ):
            out = twin(x)
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak / 1e6


def profile_model(
    model: nn.Module,
    method: str,
    input_size: int,
    output_size: int,
    in_channels: int,
    memory: bool = True,
) -> dict[str, object]:
    """Cost row of one model for one image of `in_channels` channels at `input_size`.

    Keys: method, input, output, params, head_params, gmac, and with `memory` (needs real
    weights) activation_mb and peak_mb.
    """
    side = getattr(model, "feed_size", input_size)  # a guided model takes the image at R
    shape = (1, in_channels, side, side)
    head = getattr(model, "head", None)
    row: dict[str, object] = {
        "method": method,
        "input": input_size,
        "output": output_size,
        "params": count_parameters(model),
        "head_params": 0 if head is None else count_parameters(head),
        "gmac": count_macs(model, shape) / 1e9,
    }
    if memory:
        row["activation_mb"] = activation_mb(model, shape)
        row["peak_mb"] = peak_inference_mb(model, shape)
    return row


def profile_row(
    backbone: str,
    head: str | None,
    input_size: int,
    output_size: int,
    in_channels: int,
    num_classes: int,
    memory: bool = False,
    **backbone_kwargs,
) -> dict[str, object]:
    """Cost of one configuration, one image of `in_channels` channels (fresh weights).

    Without `memory` the model is built on the 'meta' device (counting needs shapes only).
    """
    with torch.device("cpu" if memory else "meta"):
        model = build(
            backbone,
            in_channels,
            num_classes,
            input_size,
            output_size if head else None,
            head=head,
            head_input=DEFAULT_HEAD_INPUT,  # the paper's head, as its Table IV counts it
            **backbone_kwargs,
        )
    return profile_model(
        model,
        method_name(backbone, head),
        input_size,
        model.output_size,
        in_channels,
        memory=memory,
    )
