"""upseg: low-resolution-in, full-resolution-out medical image segmentation."""

from upseg.losses import MultiScaleLoss
from upseg.metrics import ConfusionMatrix
from upseg.models import LowResSegmenter, UpscalingHead, build, list_backbones

__version__ = "0.1.0"

__all__ = [
    "ConfusionMatrix",
    "LowResSegmenter",
    "MultiScaleLoss",
    "UpscalingHead",
    "__version__",
    "build",
    "list_backbones",
]
