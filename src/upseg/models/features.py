"""The backbone's last decoder features: the input of the 1x1 conv that makes its logits.

A head that reads features (head_input="features") needs the C_f channels that feed the
backbone's final logit conv. `split_logit_conv` finds that conv in any backbone without
knowing its code: one dummy forward with a hook on every nn.Conv2d, and the conv whose output
tensor *is* the backbone's output (the same object, so nothing runs after it) is the logit
conv. It is then swapped for nn.Identity in place, so the backbone returns what the conv
read; the caller keeps the conv and applies it itself. The split is checked: the conv applied
to the stripped backbone's output must give the original logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

HEAD_INPUTS: tuple[str, ...] = ("logits", "features")
# What a method name without '@' and a stored run without the setting mean: the paper's head,
# reading the logits. What build() and `upseg train` pick when not told: resolve_head_input.
DEFAULT_HEAD_INPUT = "logits"
# The heads whose first stage may read the features (the skip head reads the logits only).
FEATURE_HEADS: tuple[str, ...] = ("plain", "guided")


def check_head_input(name: str) -> str:
    """`name` if it is a head input: 'logits' (the paper's head reads the Nc logits) or
    'features' (stage 1 reads the C_f channels that feed the backbone's logit conv)."""
    if name not in HEAD_INPUTS:
        raise ValueError(f"unknown head input {name!r}; choose one of {HEAD_INPUTS}")
    return name


def resolve_head_input(head: str | None, head_input: str | None) -> str:
    """`head_input`, or when None the recipe's choice (docs/results.md): 'features' for the
    plain and the guided head, 'logits' for the skip head and for a baseline."""
    if head_input is None:
        return "features" if head in FEATURE_HEADS else DEFAULT_HEAD_INPUT
    return check_head_input(head_input)


def check_logit_conv(conv: nn.Module, num_classes: int, where: str = "the logit conv") -> None:
    """A ValueError unless `conv` is a plain 1x1 Conv2d to `num_classes` channels: only such a
    conv can be composed into a head stage (applied on each sub-pixel)."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv, nn.LazyConv2d):
        raise ValueError(f"{where} must be an nn.Conv2d, got {type(conv).__name__}")
    plain = (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )
    if not plain:
        raise ValueError(
            f"{where} is {conv}; a features head needs a 1x1 conv with stride 1, no padding "
            "and one group"
        )
    if conv.out_channels != num_classes:
        raise ValueError(
            f"{where} gives {conv.out_channels} channels, not the {num_classes} classes"
        )


def _dummy_input(backbone: nn.Module, in_channels: int, input_size: int) -> Tensor:
    """A fixed random image on the backbone's device (the global RNG is left alone)."""
    like = next(iter(backbone.parameters()), None)
    device = torch.device("cpu") if like is None else like.device
    dtype = torch.float32 if like is None else like.dtype
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, in_channels, input_size, input_size, generator=generator, device="cpu")
    return image.to(device=device, dtype=dtype)


def _run(backbone: nn.Module, image: Tensor) -> Tensor:
    was_training = backbone.training
    backbone.eval()  # BatchNorm statistics stay as they are
    try:
        with torch.no_grad():
            return backbone(image)
    finally:
        backbone.train(was_training)


def split_logit_conv(
    backbone: nn.Module, in_channels: int, num_classes: int, input_size: int, name: str
) -> nn.Conv2d:
    """Find the Conv2d whose output is the backbone's output, replace it by nn.Identity inside
    `backbone` (in place) and return it. Afterwards backbone(x) is (B, C_f, r, r), the conv's
    input, and conv(backbone(x)) equals the original logits. A ValueError (naming `name`) when
    there is no such conv, it runs more than once, or it is not a plain 1x1 conv."""
    calls: list[tuple[str, nn.Module, object]] = []

    def recorder(path: str) -> Callable[..., None]:
        return lambda module, _, output: calls.append((path, module, output))

    hooks = [
        module.register_forward_hook(recorder(path))
        for path, module in backbone.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    image = _dummy_input(backbone, in_channels, input_size)
    try:
        logits = _run(backbone, image)
    finally:
        for hook in hooks:
            hook.remove()
    final = [(path, module) for path, module, out in calls if out is logits]
    if not final:
        raise ValueError(
            f"backbone {name!r}: cannot find the conv that makes its logits (an nn.Conv2d whose "
            "output the backbone returns unchanged), so head_input='features' cannot read its "
            "features; use head_input='logits'"
        )
    path, conv = final[-1]
    where = f"backbone {name!r}: its logit conv {path!r}"
    if not path:
        raise ValueError(f"backbone {name!r} is a single conv: it has no features to read")
    if sum(module is conv for _, module, _ in calls) > 1:
        raise ValueError(f"{where} runs more than once, so it cannot be split off")
    check_logit_conv(conv, num_classes, where)
    parent_path, _, child = path.rpartition(".")
    parent = backbone.get_submodule(parent_path)
    setattr(parent, child, nn.Identity())
    try:
        features = _run(backbone, image)
        expected = (1, conv.in_channels, *logits.shape[2:])
        fits = isinstance(features, Tensor) and tuple(features.shape) == expected
        if fits and not logits.is_meta:
            with torch.no_grad():
                fits = torch.allclose(conv(features), logits, rtol=1e-4, atol=1e-5)
        if not fits:
            raise ValueError(f"{where}: without it the backbone does not return its input")
    except BaseException:
        setattr(parent, child, conv)  # the backbone as it was
        raise
    return conv
