"""ONNX graphs that end in the label mask: image (B, C, r, r) in, labels (B, R, R) out.

`add_label_output` takes an exported logits graph (upseg.deploy.export) and appends what a
user runs after it: for a baseline (logits at r), a bilinear resize to R with the
coordinates of torch's `align_corners=False` (ONNX Resize, mode "linear", "half_pixel", no
antialiasing: the same as upseg.resize.stretch_logits); then ArgMax over the classes. The
output "labels" is int64, as torch's argmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def add_label_output(src: str | Path, dst: str | Path, output_size: int) -> Path:
    """Write `dst`: the graph of `src` (one output, logits (B, Nc, s, s)) followed by a resize
    to `output_size` (only when s differs) and ArgMax over axis 1."""
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
    graph.node.append(helper.make_node("ArgMax", [scores], ["labels"], axis=1, keepdims=0))
    batch = dims[0]
    labels = helper.make_tensor_value_info(
        "labels",
        TensorProto.INT64,
        [batch.dim_param or batch.dim_value or None, output_size, output_size],
    )
    graph.ClearField("output")
    graph.output.append(labels)
    onnx.checker.check_model(model)
    dst = Path(dst)
    onnx.save(model, str(dst))
    return dst
