"""The up-scaling head alone in onnxruntime, exported in three exact forms.

- window: the stages as they run in training (2x2 window conv, border terms, strided shuffle);
- layerwise: each stage as its two published layers (ConvTranspose2d then Conv2d 3x3);
- folded: the whole head as one 3x3 conv with nine border regions + DepthToSpace
  (upseg.models.folded_head), what `upseg export` writes.

Plain head, 4 classes, R = 256, random weights; logits at r in, logits at R out. Each form is
checked against the PyTorch head before it is timed. Sessions use a fixed thread count and run
interleaved; medians over the rounds are printed with each graph's node count.

usage: python benchmarks/head_forms.py [--sizes 16 32 64] [--batches 1 32] [--threads 1]
       [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from upseg.models import UpscalingHead
from upseg.models.folded_head import fold_head

R, CLASSES = 256, 4


class FinalOutput(nn.Module):
    """A head -> its finest output only (one ONNX output)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.head(logits)[-1]


def export(module: nn.Module, path: Path, size: int) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(2, CLASSES, size, size),),
            str(path),
            input_names=["logits"],
            dynamic_shapes={"logits": {0: batch}},
            dynamo=True,
            external_data=False,
            opset_version=18,
        )


def main() -> None:
    import onnx
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s); median ms (graph nodes)")
    print("| r | batch | window | layerwise | folded |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            head = UpscalingHead(CLASSES, (R // size).bit_length() - 1).eval()
            with torch.no_grad():
                for p in head.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            layerwise = UpscalingHead(CLASSES, head.num_stages).eval()
            layerwise.load_state_dict(head.state_dict())
            for stage in layerwise.stages:
                stage.composed = False
            forms = {"window": head, "layerwise": layerwise, "folded": fold_head(head)}
            sessions, nodes = {}, {}
            probe = torch.randn(3, CLASSES, size, size)
            with torch.no_grad():
                expected = head(probe)[-1].numpy()
            for name, module in forms.items():
                path = Path(tmp) / f"{name}-{size}.onnx"
                export(FinalOutput(module), path, size)
                nodes[name] = len(onnx.load(str(path)).graph.node)
                sessions[name] = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
                got = sessions[name].run(None, {"logits": probe.numpy()})[0]
                if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                    raise SystemExit(f"{name} at r = {size} does not reproduce the head")
            for batch in args.batches:
                x = {
                    "logits": np.random.default_rng(0).standard_normal(
                        (batch, CLASSES, size, size), dtype=np.float32
                    )
                }
                calls = max(2, 64 // batch)
                times: dict[str, list[float]] = {name: [] for name in sessions}
                for _ in range(args.rounds):
                    for name, session in sessions.items():
                        session.run(None, x)
                        start = time.perf_counter()
                        for _ in range(calls):
                            session.run(None, x)
                        times[name].append((time.perf_counter() - start) / calls * 1000)
                cells = [f"{statistics.median(times[n]):.3g} ({nodes[n]})" for n in sessions]
                print(f"| {size} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
