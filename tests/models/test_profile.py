import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import run_cli, tiny_phantom_run
from upseg.data import SliceStore
from upseg.models import build, plain_head_num_params
from upseg.models.profile import (
    activation_mb,
    count_macs,
    count_parameters,
    peak_inference_mb,
    profile_row,
)


def test_conv_macs_by_hand() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    assert count_macs(conv, (2, 3, 10, 10)) == 2 * 5 * 3 * 9 * 10 * 10


def test_head_adds_under_a_hundredth_of_a_gmac() -> None:
    base = count_macs(build("elunet", 1, 1, 16), (1, 1, 16, 16))
    paper_head = build("elunet", 1, 1, 16, 256, head_input="logits")
    with_head = count_macs(paper_head, (1, 1, 16, 16))
    # a stage with output side s, Nc = 1: ConvTranspose 4 (s/2)^2 + 3x3 conv 9 s^2 = 10 s^2 MACs
    assert with_head - base == sum(10 * s * s for s in (32, 64, 128, 256))
    assert 0 < (with_head - base) / 1e9 < 0.01


def test_counting_leaves_the_model_untouched() -> None:
    model = build("elunet", 1, 2, 16, 64, base_width=4).train()
    before = [p.clone() for p in model.parameters()]
    count_macs(model, (1, 1, 16, 16))
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_profile_row() -> None:
    row = profile_row("elunet", "plain", 16, 256, 1, 1)
    assert row["head_params"] == 60
    assert row["params"] == count_parameters(build("elunet", 1, 1, 16)) + 60
    assert row["gmac"] == pytest.approx(0.0457, rel=0.01)


def test_profile_row_head_parameters_follow_the_paper() -> None:
    """m (13 Nc^2 + 2 Nc) for the plain head: 16 -> 256 is m = 4 stages, Nc = 4 classes."""
    row = profile_row("elunet", "plain", 16, 256, 4, 4)
    assert row["head_params"] == 4 * (13 * 4**2 + 2 * 4) == 864
    assert row["output"] == 256


def test_profile_row_counts_unet_at_320() -> None:
    assert profile_row("unet", None, 320, 320, 1, 1)["gmac"] == pytest.approx(75.1, rel=0.01)


def test_activation_memory_is_torchinfos_forward_backward_size() -> None:
    # one conv layer with parameters: output 8 x 32 x 32 fp32, counted twice (with gradients)
    conv = nn.Conv2d(1, 8, 3, padding=1)
    assert activation_mb(conv, (1, 1, 32, 32)) == pytest.approx(2 * 8 * 32 * 32 * 4 / 1e6)


def test_memory_columns_grow_with_the_input() -> None:
    small = profile_row("elunet", "plain", 16, 64, 1, 2, memory=True, base_width=4)
    large = profile_row("elunet", "plain", 32, 64, 1, 2, memory=True, base_width=4)
    assert 0 < small["activation_mb"] < large["activation_mb"]
    assert 0 < small["peak_mb"] <= large["peak_mb"]
    # the up-scaling head's layers count too: more memory than the bare backbone
    bare = profile_row("elunet", None, 16, 64, 1, 2, memory=True, base_width=4)
    assert bare["activation_mb"] < small["activation_mb"]


def test_measured_peak_holds_at_least_the_output() -> None:
    conv = nn.Conv2d(1, 8, 3, padding=1)
    output_mb = 8 * 64 * 64 * 4 / 1e6
    peak = peak_inference_mb(conv, (1, 1, 64, 64))
    assert output_mb <= peak < 20 * output_mb


def test_profile_cli_table_iv_columns(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    args = ["profile", "--backbones", "elunet", "--heads", "none", "plain", "--input-sizes", "16"]
    result = run_cli(*args, "--json", str(out))
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[2]
    assert header.startswith("| Method | Resolution |")
    assert "| Complexity (GMac) | Memory (MB) | Peak (MB) |" in header
    assert "| elunet+plain | 16 | 256 | 3,377,076 | 864 |" in result.stdout
    rows = json.loads(out.read_text())
    assert [r["head_params"] for r in rows] == [0, 4 * (13 * 4**2 + 2 * 4)]
    assert all(r["activation_mb"] > 0 and r["peak_mb"] > 0 for r in rows)


def test_profile_of_a_run_directory(tmp_path: Path) -> None:
    run = tiny_phantom_run(tmp_path, "run")
    result = run_cli("profile", str(run), "--csv", str(tmp_path / "cost.csv"))
    assert result.returncode == 0, result.stderr
    [row] = list(csv.DictReader((tmp_path / "cost.csv").open()))
    classes = len(SliceStore(tmp_path / "s").class_names)
    assert (row["method"], row["input"], row["output"], row["run"]) == (
        "elunet+plain@features",
        "16",
        "64",
        str(run),
    )
    assert int(row["head_params"]) == plain_head_num_params(classes, 2)
    assert float(row["activation_mb"]) > 0 and float(row["peak_mb"]) > 0
    missing = run_cli("profile", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "checkpoints/last.pt" in missing.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--output-size", "0"], "--output-size must be at least 1, got 0"),
        (["--input-sizes", "16", "-16"], "--input-sizes must be at least 1, got -16"),
        (["--in-channels", "0"], "--in-channels must be at least 1, got 0"),
        (["--classes", "0"], "--classes must be at least 1, got 0"),
    ],
)
def test_profile_sizes_must_be_positive(flags: list[str], message: str) -> None:
    result = run_cli("profile", "--backbones", "elunet", "--no-memory", *flags)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.strip() == f"error: {message}"


def test_profile_destinations_are_checked_first(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    args = ["profile", "--backbones", "elunet", "--heads", "none", "--no-memory"]
    for flag in ("--csv", "--json"):
        result = run_cli(*args, flag, str(afile / "cost.out"))
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.strip() == (
            f"error: {flag} {afile / 'cost.out'}: {afile} is a file, not a folder"
        )
        result = run_cli(*args, flag, str(tmp_path))
        assert result.returncode == 2
        assert f"error: {flag} {tmp_path}: is a folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_model_flags_beside_runs_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"  # refused before the run is even read
    result = run_cli("profile", str(run), "--backbones", "unet", "--input-sizes", "32")
    assert result.returncode == 2
    assert "a RUN directory brings its own model; drop --backbones --input-sizes" in result.stderr
