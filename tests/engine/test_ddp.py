"""DistributedDataParallel with two CPU processes (gloo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from upseg.data import PhantomReader, prepare

TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc_per_node=2",
    "--master_port=0",
    "--rdzv_backend=c10d",
    "--rdzv_endpoint=127.0.0.1:0",
]


def test_two_processes_keep_identical_parameters(tmp_path: Path) -> None:
    store = prepare(
        PhantomReader(size=64, num_patients=4, slices_per_patient=4),
        tmp_path / "store",
        progress=False,
    )
    worker = Path(__file__).with_name("ddp_worker.py")
    out = tmp_path / "run"
    result = subprocess.run(
        [*TORCHRUN, str(worker), str(store), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first = torch.load(out / "rank0.pt", weights_only=True)
    second = torch.load(out / "rank1.pt", weights_only=True)
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert all(torch.equal(first[k], saved[k]) for k in first)  # rank 0 wrote these weights


def test_torchrun_cli(tmp_path: Path) -> None:
    store = prepare(
        PhantomReader(size=64, num_patients=4, slices_per_patient=4),
        tmp_path / "store",
        progress=False,
    )
    out = tmp_path / "run"
    command = [
        *TORCHRUN,
        "-m",
        "upseg",
        "train",
        "--store",
        str(store),
        "--out",
        str(out),
        "--backbone-kwargs",
        '{"base_width": 4}',
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    # The same command again: refused on rank 0; torchrun stops the other rank (no hang) and
    # the refusal is the one line the user reads.
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 1
    assert f"error: {out}: a run already exists here" in again.stderr
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "metrics.jsonl").read_text().count("\n") == 1
