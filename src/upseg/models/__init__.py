"""Backbones, the up-scaling head and the segmenter that joins them."""

from upseg.models.head import (
    UpscalingHead,
    UpscalingStage,
    plain_head_num_params,
    skip_head_num_params,
)
from upseg.models.registry import get_backbone_spec, list_backbones, register_backbone
from upseg.models.segmenter import LowResSegmenter, build, method_name

__all__ = [
    "LowResSegmenter",
    "UpscalingHead",
    "UpscalingStage",
    "build",
    "get_backbone_spec",
    "list_backbones",
    "method_name",
    "plain_head_num_params",
    "register_backbone",
    "skip_head_num_params",
]
