"""Model cost: parameters and multiply-accumulates (MACs), counted, not estimated.

MACs come from torch's FlopCounterMode, which counts convolutions, transposed convolutions
and matrix products (2 FLOPs = 1 MAC) and ignores element-wise work (BatchNorm, ReLU, adds).
The count runs on the 'meta' device, so it costs no compute and no memory. Up-scaling stages
are counted as their two published layers (ConvTranspose2d + Conv2d: (4 Cin + 36 Nc) Nc h^2
MACs for input side h); their composed execution (upseg.subpixel) does 16 Cin Nc (h + 1)^2.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from upseg.models.head import UpscalingStage


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Unique parameters (a tensor shared by two modules counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _on_meta(model: nn.Module) -> bool:
    return all(t.is_meta for t in [*model.parameters(), *model.buffers()])


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one inference forward pass (eval mode) for an input of `input_shape`."""
    meta_model = copy.deepcopy(model) if _on_meta(model) else copy.deepcopy(model).to("meta")
    meta_model.eval()
    for module in meta_model.modules():
        if isinstance(module, UpscalingStage):
            module.composed = False  # count the architecture's layers, as published
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() // 2


def profile_row(
    backbone: str,
    head: str | None,
    input_size: int,
    output_size: int,
    in_channels: int,
    num_classes: int,
    **backbone_kwargs,
) -> dict[str, object]:
    """Counted cost of one configuration, one image of `in_channels` channels."""
    from upseg.models import build, method_name

    with torch.device("meta"):  # counting needs shapes only: no weights are allocated
        model = build(
            backbone,
            in_channels,
            num_classes,
            input_size,
            output_size if head else None,
            head=head,
            **backbone_kwargs,
        )
    head_params = 0 if model.head is None else count_parameters(model.head)
    return {
        "method": method_name(backbone, head),
        "input": input_size,
        "output": model.output_size,
        "params": count_parameters(model),
        "head_params": head_params,
        "gmac": count_macs(model, (1, in_channels, input_size, input_size)) / 1e9,
    }
