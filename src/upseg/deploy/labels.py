"""ONNX graphs that end in the label mask: image (B, C, r, r) in, labels (B, R, R) out.

`export_labels` writes one for any model. A model with a head is exported through
`FoldedLabels` (the folded head's channels-last form that argmaxes before it moves anything,
upseg.models.folded_head.FoldedHead.labels); a baseline, or a head too large to fold, is
exported as logits and completed by `add_label_output`.

`add_label_output` takes an exported logits graph (upseg.deploy.export) and appends what a
user runs after it: for a baseline (logits at r), a bilinear resize to R with the
coordinates of torch's `align_corners=False` (ONNX Resize, mode "linear", "half_pixel", no
antialiasing: the same as upseg.data.resize.stretch_logits); then ArgMax over the classes (or, on
request, logit > 0 for a one-channel model, as upseg.metrics.labels_from_logits). The output
"labels" is int64, as torch's argmax, or uint8 on request.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from upseg.models import LowResSegmenter
from upseg.models.folded_head import FoldedHead, fold_model


class FoldedLabels(nn.Module):
    """A LowResSegmenter with a folded head as image (B, C, r, r) -> labels (B, R, R), int64
    or uint8: the backbone, then FoldedHead.labels."""

    def __init__(self, folded: LowResSegmenter, uint8: bool = False) -> None:
        super().__init__()
        if not isinstance(folded.head, FoldedHead):
            raise ValueError("FoldedLabels needs a model whose head is folded (fold_model)")
        self.backbone, self.head = folded.backbone, folded.head
        self.uint8 = uint8

    def forward(self, x: Tensor) -> Tensor:
        labels = self.head.labels(self.backbone(x))
        return labels.to(torch.uint8) if self.uint8 else labels


def export_labels(
    model: LowResSegmenter,
    dst: str | Path,
    output_size: int,
    uint8: bool = False,
    binary: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `dst`: image at r -> "labels" at `output_size` (see the module docstring for the
    two forms). `uint8`, `binary`, `metadata`: as add_label_output (a folded head's
    one-channel labels are always logit > 0). Not checked here: callers compare the labels
    with PyTorch's (upseg.deploy.predict.check_labels)."""
    from upseg.deploy.export import export_onnx, write_onnx

    model = model.eval()
    folded = fold_model(model)
    dst = Path(dst)
    head = getattr(folded, "head", None)
    if not isinstance(head, FoldedHead) or output_size != model.output_size:
        with tempfile.TemporaryDirectory(prefix="upseg-labels-") as work:
            logits = export_onnx(model, Path(work) / "logits.onnx")["path"]
            return add_label_output(logits, dst, output_size, uint8, binary, metadata)
    import onnx

    side, channels = model.feed_size, int(model.in_channels)
    write_onnx(FoldedLabels(folded, uint8), torch.randn(2, channels, side, side), dst, "labels")
    graph = onnx.load(str(dst))
    _store_metadata(graph, metadata)
    onnx.save(graph, str(dst))
    return dst


def _store_metadata(model: object, metadata: dict[str, str] | None) -> None:
    """Key/value pairs into an onnx ModelProto's metadata_props."""
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def add_label_output(
    src: str | Path,
    dst: str | Path,
    output_size: int,
    uint8: bool = False,
    binary: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write `dst`: the graph of `src` (one output, logits (B, Nc, s, s)) followed by a resize
    to `output_size` (only when s differs) and ArgMax over axis 1. `binary`: a one-channel
    model's labels are logit > 0 (upseg.metrics.labels_from_logits) instead of ArgMax (0).
    `uint8`: labels as uint8 instead of int64. `metadata`: key/value pairs stored in the
    model's metadata_props."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    if len(graph.output) != 1:
        raise ValueError(f"{src}: expected one output (logits), found {len(graph.output)}")
    logits = graph.output[0]
    dims = logits.type.tensor_type.shape.dim
    side = dims[-1].dim_value if len(dims) == 4 else 0
    if side <= 0 or output_size % side:
        raise ValueError(
            f"{src}: logits side {side or '?'} does not divide the output size {output_size}"
        )
    scores = logits.name
    if side != output_size:
        factor = float(output_size // side)
        scales = numpy_helper.from_array(
            np.array([1.0, 1.0, factor, factor], dtype=np.float32), "label_resize_scales"
        )
        graph.initializer.append(scales)
        graph.node.append(
            helper.make_node(
                "Resize",
                [scores, "", scales.name],
                ["label_resize_logits"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            )
        )
        scores = "label_resize_logits"
    channels = dims[1].dim_value
    labels_type = TensorProto.UINT8 if uint8 else TensorProto.INT64
    if binary and channels == 1:  # one sigmoid channel: foreground where the logit is positive
        zero = numpy_helper.from_array(np.zeros((), dtype=np.float32), "label_zero")
        axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "label_channel_axis")
        graph.initializer.extend([zero, axes])
        graph.node.extend(
            [
                helper.make_node("Greater", [scores, zero.name], ["label_positive"]),
                helper.make_node("Squeeze", ["label_positive", axes.name], ["label_foreground"]),
                helper.make_node("Cast", ["label_foreground"], ["labels"], to=labels_type),
            ]
        )
    elif uint8:
        graph.node.extend(
            [
                helper.make_node("ArgMax", [scores], ["label_classes"], axis=1, keepdims=0),
                helper.make_node("Cast", ["label_classes"], ["labels"], to=labels_type),
            ]
        )
    else:
        graph.node.append(helper.make_node("ArgMax", [scores], ["labels"], axis=1, keepdims=0))
    _store_metadata(model, metadata)
    batch = dims[0]
    labels = helper.make_tensor_value_info(
        "labels",
        labels_type,
        [batch.dim_param or batch.dim_value or None, output_size, output_size],
    )
    graph.ClearField("output")
    graph.output.append(labels)
    onnx.checker.check_model(model)
    dst = Path(dst)
    onnx.save(model, str(dst))
    return dst
