"""upseg bench on tiny models and few calls: structure and bookkeeping, never speed."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.helpers import run_cli, tiny_phantom_run
from upseg.data.resize import stretch_logits
from upseg.deploy import bench, bench_runtimes
from upseg.deploy.bench_report import BENCH_FILES, bench_table, write_bench
from upseg.deploy.export import export_onnx
from upseg.deploy.labels import add_label_output
from upseg.models import build

TINY = {
    "output_size": 64,
    "in_channels": 2,
    "num_classes": 3,
    "threads": 1,
    "warmup": 1,
    "repeats": 3,
    "rounds": 2,
    "peak_shape": (2, 8, 16),
    "backbone_kwargs": {"base_width": 4},
    "progress": False,
}


@pytest.fixture(scope="module")
def result() -> dict:
    return bench.run_bench(
        ["elunet", "elunet+plain"],
        resolutions=[16, 32],
        runtimes=["torch-fp32", "torch-bf16", "ort-fp32", "ort-int8"],
        batches=[1, 2],
        **TINY,
    )


def test_rows_for_every_model_size_runtime_mode_and_batch(result: dict) -> None:
    runtimes = ["torch-fp32", "ort-fp32", "ort-int8"]
    bf16_skips = [s for s in result["skipped"] if s["runtime"] == "torch-bf16"]
    if not bf16_skips:  # a CPU with native bf16 times it too
        runtimes.append("torch-bf16")
    expected = set(
        itertools.product(["elunet", "elunet+plain"], [16, 32], runtimes, bench.MODES, [1, 2])
    )
    got = {(r["method"], r["input"], r["runtime"], r["mode"], r["batch"]) for r in result["rows"]}
    assert got == expected
    assert len(result["rows"]) == len(expected)


def test_latencies_and_throughput_are_consistent(result: dict) -> None:
    for row in result["rows"]:
        assert math.isfinite(row["median_ms"]) and row["median_ms"] > 0
        assert row["p90_ms"] >= row["median_ms"] >= row["min_ms"] > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / row["median_ms"])
        assert row["calls"] == 4  # 3 repeats over 2 rounds: 2 per round
        assert row["gflops"] > 0 and row["pct_peak"] > 0
    peak = result["conv_peak"]
    assert peak["gflops_best"] >= peak["gflops"] == max(peak["gflops_before_after"]) > 0


def test_outputs_follow_the_mode(result: dict) -> None:
    for row in result["rows"]:
        head = row["method"] == "elunet+plain"
        if row["mode"] == "e2e" or head:
            assert row["output"] == 64
        else:
            assert row["output"] == row["input"]
    # the head adds its stages' MACs to the same backbone
    macs = {(r["method"], r["input"]): r["gmac_per_image"] for r in result["rows"]}
    assert macs[("elunet+plain", 16)] > macs[("elunet", 16)]


def test_skipped_runtime_has_a_reason(monkeypatch) -> None:
    monkeypatch.setattr(
        bench_runtimes, "cpu_bf16_support", lambda: (False, "no bf16 on this test CPU")
    )
    result = bench.run_bench(
        ["elunet", "elunet+skip"],
        resolutions=[32],
        runtimes=["torch-fp32", "torch-bf16"],
        batches=[1],
        **TINY,
    )
    reasons = {(s["runtime"], s["method"]): s["reason"] for s in result["skipped"]}
    assert reasons[("torch-bf16", "all")] == "no bf16 on this test CPU"
    # 32 -> 64 is one stage; the inner-skip head needs three
    assert "at least 3 stages" in reasons[("all", "elunet+skip")]
    assert {r["runtime"] for r in result["rows"]} == {"torch-fp32"}
    assert {r["method"] for r in result["rows"]} == {"elunet"}


def test_bad_usage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        bench.run_bench(["elunet"], runtimes=["tensorrt"], **TINY)
    with pytest.raises(ValueError, match="not backbone"):
        bench.run_bench(["elunet+wide"], **TINY)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            bench.run_bench(["elunet"], device="cuda", **TINY)


def test_files_written(result: dict, tmp_path: Path) -> None:
    paths = write_bench(result, tmp_path)
    assert sorted(p.name for p in paths) == [
        "bench-fig6.png",
        "bench.csv",
        "bench.json",
        "bench.md",
    ]
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert len(rows) == len(result["rows"])
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "bench-fig6.png").stat().st_size > 10_000
    table = bench_table(result)
    # forward and end to end side by side: one line per method x runtime x size x batch
    assert len(table.splitlines()) == 2 + len(result["rows"]) // 2
    assert "| elunet+plain | ort-fp32 | 16 → 64 | 2 |" in table


def test_label_graph_matches_pytorch(tmp_path: Path) -> None:
    """A baseline's graph gains the bilinear stretch to R and argmax (a head model's only the
    argmax; the bench checks both kinds before timing them)."""
    model = build("elunet", 2, 3, 16, base_width=4).eval()
    export_onnx(model, tmp_path / "logits.onnx")
    add_label_output(tmp_path / "logits.onnx", tmp_path / "labels.onnx", 64)
    session = ort.InferenceSession(
        str(tmp_path / "labels.onnx"), providers=["CPUExecutionProvider"]
    )
    x = torch.randn(3, 2, 16, 16)
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = stretch_logits(model(x), 64).argmax(1).numpy()
    assert got.shape == expected.shape == (3, 64, 64) and got.dtype == np.int64
    assert np.mean(got != expected) < 1e-3


def test_cli_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--methods", "elunet+plain", "--resolutions", "16", "--output-size", "64"]
    args += ["--runtimes", "torch-fp32", "ort-fp32", "--batches", "1", "2", "--threads", "1"]
    args += ["--warmup", "1", "--repeats", "2", "--rounds", "1", "--peak-shape", "2", "8", "16"]
    args += ["--backbone-kwargs", '{"base_width": 4}', "--quiet", "--out", str(out)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "| elunet+plain | ort-fp32 | 16 → 64 | 2 |" in result.stdout
    assert "Ceiling (best of large fp32 kernels, median call)" in result.stdout
    assert "candidates: torch conv " in result.stdout and "onnxruntime conv " in result.stdout
    saved = json.loads((out / "bench.json").read_text())
    assert saved["settings"]["command"].startswith("upseg bench --methods elunet+plain")
    assert len(saved["rows"]) == 2 * 2 * 2  # runtimes x modes x batches
    assert (out / "bench-fig6.png").is_file()
    bad = run_cli("bench", "--methods", "elunet", "--device", "tpu", "--out", str(out))
    assert bad.returncode == 2 and "unknown device" in bad.stderr


def test_a_run_directory_is_timed_at_its_own_sizes(tmp_path: Path) -> None:
    run = tiny_phantom_run(tmp_path, "head16")
    settings = {**TINY, "output_size": 256, "in_channels": 1, "num_classes": 1}
    result = bench.run_bench(
        [run], resolutions=[32], runtimes=["torch-fp32"], batches=[1], **settings
    )
    assert {(r["method"], r["input"], r["output"]) for r in result["rows"]} == {
        ("head16 (elunet+plain@features)", 16, 64)
    }
    assert len(result["rows"]) == len(bench.MODES)


def test_int8_runtime_runs_the_quantised_model_of_the_folded_export(tmp_path: Path) -> None:
    import onnx

    model = build("elunet", 2, 3, 16, 64, head="plain", base_width=4).eval()
    entry = bench.BenchModel("elunet+plain", model, 64, 1)
    ctx = bench.BenchContext("cpu", 1, tmp_path)
    runtime = bench.RUNTIMES["ort-int8"]
    fp32 = onnx.load(str(bench.RUNTIMES["ort-fp32"].model_file(entry, "forward", ctx)))
    assert "DepthToSpace" in {n.op_type for n in fp32.graph.node}  # the folded head
    int8 = onnx.load(str(runtime.model_file(entry, "forward", ctx)))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "QLinearConv"} <= ops  # QOperator form
    labels = runtime.prepare(entry, "e2e", 2, ctx)()[0]  # checked against its own logits
    assert labels.shape == (2, 64, 64) and labels.dtype == np.int64
    assert set(np.unique(labels)) <= {0, 1, 2}


QUICK_CLI = ["--runtimes", "torch-fp32", "--batches", "1", "--threads", "1", "--warmup", "1"]
QUICK_CLI += ["--repeats", "1", "--rounds", "1", "--peak-shape", "1", "4", "8", "--quiet"]


def _earlier_bench(out: Path) -> dict[str, bytes]:
    """Files of an earlier bench in `out`, by name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: f"earlier {name}".encode() for name in BENCH_FILES}
    for name, content in files.items():
        (out / name).write_bytes(content)
    return files


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_nothing_measured_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    earlier = _earlier_bench(out)
    args = ["bench", "--methods", "elunet+plain", "--resolutions", "48", "--output-size", "32"]
    result = run_cli(*args, *QUICK_CLI, "--out", str(out))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: nothing was measured (every case was skipped, reasons above); nothing "
        f"written to {out}"
    )
    assert "Skipped all for elunet+plain at 48: " in result.stdout
    assert _contents(out) == earlier
    with pytest.raises(ValueError, match="measured nothing"):
        write_bench({"rows": []}, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_bench_files_are_written_all_or_none(result: dict, tmp_path: Path, monkeypatch) -> None:
    earlier = _earlier_bench(tmp_path)

    def broken_figure(*args, **kwargs) -> None:
        raise RuntimeError("no figure today")

    monkeypatch.setattr("upseg.plots.latency_figure", broken_figure)
    with pytest.raises(RuntimeError, match="no figure today"):
        write_bench(result, tmp_path)
    assert _contents(tmp_path) == earlier  # no file replaced, no temporary file left


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threads", "0"], "error: --threads must be at least 1, got 0"),
        (["--threads", "-2"], "error: --threads must be at least 1, got -2"),
        (["--resolutions", "16", "0"], "error: --resolutions must be at least 1, got 0"),
        (
            ["--peak-shape", "0", "4", "8"],
            "error: --peak-shape values must be at least 1, got [0, 4, 8]",
        ),
        (
            ["--backbone-kwargs", '{"nope": 1}'],
            "error: backbone 'elunet' has no option 'nope' (its options: base_width, upsample)",
        ),
    ],
)
def test_bad_settings_are_usage_errors(flags: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = run_cli("bench", "--methods", "elunet", *QUICK_CLI, *flags, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused_before_timing(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    out.write_text("keep")
    result = run_cli("bench", "--methods", "elunet", *QUICK_CLI, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --out {out}: is a file, not a folder"
    assert out.read_text() == "keep"


def test_cases_over_the_memory_budget_are_skipped_with_the_reason() -> None:
    settings = {**TINY, "max_memory": 3_000_000}  # 3 MB: the baseline fits, the head does not
    result = bench.run_bench(
        ["elunet", "elunet+plain"],
        resolutions=[16],
        runtimes=["torch-fp32"],
        batches=[1],
        **settings,
    )
    measured = {(r["method"], r["mode"]) for r in result["rows"]}
    memory_skips = [s for s in result["skipped"] if "budget" in s["reason"]]
    assert memory_skips and all("--max-memory" in s["reason"] for s in memory_skips)
    assert {s["method"] for s in memory_skips} <= {"elunet", "elunet+plain"}
    assert len(measured) + len(memory_skips) == 4
    for row in result["rows"]:
        assert 0 < row["memory_estimate_mb"] <= 3
    with pytest.raises(ValueError, match="max-memory"):
        bench.run_bench(["elunet"], **{**TINY, "max_memory": 0})


def test_case_memory_grows_with_batch_and_output() -> None:
    model = build("elunet", 2, 3, 16, 64, head="plain", base_width=4).eval()
    entry = bench.BenchModel("elunet+plain", model, 64, 1, activation_bytes=1000, classes=3)
    one, eight = bench.case_memory(entry, "forward", 1), bench.case_memory(entry, "forward", 8)
    assert eight - one == 7 * (1000 + 4 * 2 * 16 * 16)
    assert bench.case_memory(entry, "e2e", 1) - one == 64 * 64 * (4 * 3 + 8)


def test_ceiling_and_resident_memory_are_recorded(result: dict) -> None:
    peak = result["conv_peak"]
    engines = [c["engine"] for c in peak["candidates"]]
    assert engines[:2] == ["torch conv", "torch GEMM"] and "onnxruntime conv" in engines
    assert peak["gflops"] == max(c["gflops"] for c in peak["candidates"])
    assert all(r["rss_peak_mb"] is None or r["rss_peak_mb"] > 10 for r in result["rows"])
    assert "peak RSS MB" in bench_table(result)


def test_files_exported_in_earlier_groups_keep_their_models() -> None:
    """Sessions are dropped between groups but files stay; a new file must never take the
    name of one still in use (a 32-input export once replaced a 16-input one)."""
    ctx = bench_runtimes.BenchContext("cpu", 1, Path("work"))
    first = ctx.new_file("forward.onnx")
    ctx.cache["session"] = object()
    ctx.release()
    assert ctx.new_file("forward.onnx") != first
    result = bench.run_bench(
        ["elunet", "elunet+plain"],
        resolutions=[16, 32],
        runtimes=["ort-fp32"],
        batches=[1, 2],
        **TINY,
    )
    assert result["skipped"] == []
    assert len(result["rows"]) == 2 * 2 * 2 * len(bench.MODES)


def test_a_guided_head_is_timed_on_the_full_image() -> None:
    """The guided model takes the image at R: the bench feeds it so in every runtime, and its
    end-to-end graph passes the label check before it is timed."""
    result = bench.run_bench(
        ["elunet+guided"],
        resolutions=[16],
        runtimes=["torch-fp32", "ort-fp32"],
        batches=[1],
        **TINY,
    )
    assert result["skipped"] == []
    got = {(r["runtime"], r["mode"]) for r in result["rows"]}
    assert got == set(itertools.product(["torch-fp32", "ort-fp32"], bench.MODES))
