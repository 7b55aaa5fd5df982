"""Backbone registry: one line per name. A backbone maps (B, C, r, r) -> (B, Nc, r, r) logits."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from upseg.models.elunet import ELUNet
from upseg.models.monai_nets import basic_unet, basic_unet_plusplus
from upseg.models.unet import UNet


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: Callable[..., nn.Module]  # factory(in_channels, num_classes, **kwargs)
    divisor: int  # input sides must be a multiple of this
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str, factory: Callable[..., nn.Module], divisor: int, description: str
) -> None:
    """Add a backbone; `factory(in_channels, num_classes, **kwargs)` must return the module."""
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = BackboneSpec(name, factory, divisor, description)


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())}"
        ) from None


def _options(factory: Callable[..., nn.Module]) -> tuple[list[str], bool]:
    """Keyword options of `factory` after (in_channels, num_classes), and whether it also
    passes on **kwargs (then its list is not complete)."""
    try:
        parameters = list(inspect.signature(factory).parameters.values())[2:]
    except (TypeError, ValueError):  # no signature to read
        return [], True
    names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def make_backbone(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """The registered backbone `name`, built with its options `kwargs`. An option it does not
    take, or a value it cannot use, is a ValueError naming the backbone and the option."""
    spec = get_backbone_spec(name)
    options, open_ended = _options(spec.factory)
    unknown = [key for key in kwargs if key not in options]
    if unknown and not open_ended:
        raise ValueError(
            f"backbone {name!r} has no option {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(options) or 'none'})"
        )
    try:
        return spec.factory(in_channels, num_classes, **kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        if not kwargs:
            raise
        raise ValueError(
            f"backbone {name!r} cannot be built with options {json.dumps(kwargs, default=str)}: "
            f"{error}"
        ) from None


register_backbone("unet", UNet, 16, "U-Net (Ronneberger 2015), base width 64")
register_backbone("elunet", ELUNet, 16, "ELU-Net (Deng 2022), base width 16, unshared weights")
register_backbone("basicunet", basic_unet, 16, "MONAI BasicUNet, 2-D")
register_backbone("basicunetpp", basic_unet_plusplus, 16, "MONAI BasicUNetPlusPlus, 2-D")
