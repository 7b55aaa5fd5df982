"""Backbones, the up-scaling head and the segmenter that joins them."""

from upseg.models.features import DEFAULT_HEAD_INPUT, HEAD_INPUTS
from upseg.models.head import (
    DEFAULT_HEAD_INIT,
    HEAD_INITS,
    UpscalingHead,
    UpscalingStage,
    plain_head_num_params,
    resolve_head_init,
    skip_head_num_params,
)
from upseg.models.registry import get_backbone_spec, list_backbones, register_backbone
from upseg.models.segmenter import LowResSegmenter, build, method_name

__all__ = [
    "DEFAULT_HEAD_INIT",
    "DEFAULT_HEAD_INPUT",
    "HEAD_INITS",
    "HEAD_INPUTS",
    "LowResSegmenter",
    "UpscalingHead",
    "UpscalingStage",
    "build",
    "get_backbone_spec",
    "list_backbones",
    "method_name",
    "plain_head_num_params",
    "register_backbone",
    "resolve_head_init",
    "skip_head_num_params",
]
