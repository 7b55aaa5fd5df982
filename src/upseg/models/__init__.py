"""Backbones, the up-scaling head and the segmenter that joins them."""

from upseg.models.features import DEFAULT_HEAD_INPUT, HEAD_INPUTS, resolve_head_input
from upseg.models.head import (
    DEFAULT_HEAD_INIT,
    HEAD_INITS,
    UpscalingHead,
    UpscalingStage,
    plain_head_num_params,
    resolve_head_init,
    skip_head_num_params,
)
from upseg.models.methods import (
    BASELINE,
    HEAD_CHOICES,
    HEADS,
    Method,
    method_name,
    parse_method,
)
from upseg.models.registry import get_backbone_spec, list_backbones, register_backbone
from upseg.models.segmenter import LowResSegmenter, build

__all__ = [
    "BASELINE",
    "DEFAULT_HEAD_INIT",
    "DEFAULT_HEAD_INPUT",
    "HEADS",
    "HEAD_CHOICES",
    "HEAD_INITS",
    "HEAD_INPUTS",
    "LowResSegmenter",
    "Method",
    "UpscalingHead",
    "UpscalingStage",
    "build",
    "get_backbone_spec",
    "list_backbones",
    "method_name",
    "parse_method",
    "plain_head_num_params",
    "register_backbone",
    "resolve_head_init",
    "resolve_head_input",
    "skip_head_num_params",
]
