from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli
from upseg.deploy.plan import plan, read_bench, read_sweep
from upseg.io import write_csv, write_json

SWEEP = [
    {"method": "elunet", "input": 16, "runs": 5, "foreground_dice": 0.36, "paper_jaccard": 0.42},
    {"method": "elunet", "input": 32, "runs": 5, "foreground_dice": 0.49, "paper_jaccard": 0.50},
    {
        "method": "elunet+plain:pytorch",
        "input": 16,
        "runs": 5,
        "foreground_dice": 0.38,
        "paper_jaccard": 0.43,
    },
    {
        "method": "elunet+plain:pytorch",
        "input": 32,
        "runs": 5,
        "foreground_dice": 0.48,
        "paper_jaccard": 0.49,
    },
    {"method": "unet", "input": 32, "runs": 1, "foreground_dice": 0.42, "paper_jaccard": 0.46},
]


def _bench(method: str, size: int, runtime: str, p90: float, mode: str = "e2e", batch: int = 1):
    return {
        "method": method,
        "input": size,
        "runtime": runtime,
        "mode": mode,
        "batch": batch,
        "median_ms": p90 * 0.8,
        "p90_ms": p90,
        "images_per_s": batch / (p90 * 0.8 / 1000),
    }


BENCH = [
    _bench("elunet", 16, "torch-fp32", 10.0),
    _bench("elunet", 16, "ort-fp32", 6.0),
    _bench("elunet", 32, "ort-fp32", 20.0),
    _bench("elunet+plain", 16, "ort-fp32", 8.0),
    _bench("elunet+plain", 32, "ort-fp32", 25.0),
    _bench("elunet+plain", 16, "ort-fp32", 1.0, mode="forward"),  # not what a user gets
    _bench("elunet", 32, "ort-fp32", 2.0, batch=32),  # another batch size
    _bench("basicunet", 16, "ort-fp32", 3.0),
]


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(21.0, ("elunet", 32)), (15.0, ("elunet+plain:pytorch", 16)), (7.0, ("elunet", 16))],
)
def test_plan_picks_the_best_score_inside_the_budget(budget: float, expected: tuple) -> None:
    result = plan(SWEEP, BENCH, budget)
    assert (result["pick"]["method"], result["pick"]["input"]) == expected


def test_plan_uses_the_fastest_runtime_and_lists_what_it_lacks() -> None:
    result = plan(SWEEP, BENCH, 15.0)
    by_key = {(r["method"], r["input"]): r for r in result["rows"]}
    assert by_key[("elunet", 16)]["runtime"] == "ort-fp32"
    assert by_key[("elunet", 16)]["p90_ms"] == 6.0
    # the head's latency does not depend on its initialisation
    assert by_key[("elunet+plain:pytorch", 16)]["p90_ms"] == 8.0
    assert [r["p90_ms"] for r in result["rows"]] == sorted(r["p90_ms"] for r in result["rows"])
    assert ("unet", 32) not in by_key
    assert result["missing"] == [
        "unet @ 32: no e2e latency at batch 1",
        "basicunet @ 16: measured but not in the sweep (no quality figure)",
    ]
    assert plan(SWEEP, BENCH, 5.0)["pick"] is None
    median = plan(SWEEP, BENCH, 5.0, stat="median_ms")  # 6 ms p90 is 4.8 ms median
    assert (median["pick"]["method"], median["pick"]["input"]) == ("elunet", 16)
    with pytest.raises(ValueError, match="unknown statistic"):
        plan(SWEEP, BENCH, 5.0, stat="mean_ms")


def test_plan_leaves_int8_timings_out_unless_asked() -> None:
    bench = [*BENCH, _bench("elunet", 32, "ort-int8", 12.0)]  # faster than ort-fp32's 20 ms
    result = plan(SWEEP, bench, 15.0)
    assert (result["pick"]["method"], result["pick"]["input"]) == ("elunet+plain:pytorch", 16)
    assert {r["runtime"] for r in result["rows"]} == {"ort-fp32"}
    assert result["missing"][0].startswith("ort-int8 timings left out: the sweep scored")
    result = plan(SWEEP, bench, 15.0, include_int8=True)
    assert (result["pick"]["method"], result["pick"]["input"], result["pick"]["runtime"]) == (
        "elunet",
        32,
        "ort-int8",
    )
    assert not any("left out" in line for line in result["missing"])


def test_plan_cli(tmp_path: Path) -> None:
    sweep, bench = tmp_path / "sweep", tmp_path / "bench"
    write_csv(sweep / "sweep.csv", SWEEP)
    write_json(bench / "bench.json", {"rows": BENCH})
    assert read_sweep(sweep)[0]["foreground_dice"] == 0.36
    assert len(read_bench(bench)) == len(BENCH)
    args = ["plan", "--sweep", str(sweep), "--bench", str(bench), "--out", str(tmp_path / "o")]
    result = run_cli(*args, "--budget-ms", "15")
    assert result.returncode == 0, result.stderr
    assert "pick: elunet+plain:pytorch at input 16 on ort-fp32" in result.stdout
    assert "not judged: unet @ 32" in result.stdout
    assert (tmp_path / "o" / "plan.csv").is_file() and (tmp_path / "o" / "plan.json").is_file()
    result = run_cli(*args, "--budget-ms", "1")
    assert result.returncode == 1
    assert "nothing fits 1 ms: the fastest measured is elunet @ 16 (ort-fp32)" in result.stdout
    result = run_cli("plan", "--sweep", str(sweep), "--bench", str(tmp_path), "--budget-ms", "9")
    assert result.returncode == 1
    assert f"{tmp_path / 'bench.json'}: no bench results here" in result.stderr


def _plan_args(tmp_path: Path, sweep_rows: list[dict], bench: object) -> list[str]:
    sweep, bench_dir = tmp_path / "sweep", tmp_path / "bench"
    write_csv(sweep / "sweep.csv", sweep_rows)
    write_json(bench_dir / "bench.json", bench)
    return ["plan", "--sweep", str(sweep), "--bench", str(bench_dir), "--budget-ms", "15"]


@pytest.mark.parametrize("metric", ["method", "input", "runs", "foreground_dice_std", "nope"])
def test_metric_must_be_a_score_column(metric: str, tmp_path: Path) -> None:
    sweep = [{**row, "foreground_dice_std": 0.01} for row in SWEEP]
    result = run_cli(*_plan_args(tmp_path, sweep, {"rows": BENCH}), "--metric", metric)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --metric {metric!r} is not a score column of the sweep; choose from "
        "foreground_dice, paper_jaccard"
    )


@pytest.mark.parametrize(
    ("bench", "problem"),
    [
        ({"rows": 3}, 'not a bench.json (needs a list of rows under "rows")'),
        ([1, 2], 'not a bench.json (needs a list of rows under "rows")'),
        ({"rows": [BENCH[0], "x"]}, "row 2 of 2 is not an object"),
        ({"rows": [{"method": "elunet", "input": 16}]}, "row 1 of 1 lacks runtime, mode, batch"),
        ({"rows": [{**BENCH[0], "p90_ms": "fast"}]}, "row 1 of 1: p90_ms 'fast' is not a number"),
        ({"rows": [{**BENCH[0], "input": "x16"}]}, "row 1 of 1: input 'x16' is not a whole"),
    ],
)
def test_malformed_bench_json_names_the_file(bench: object, problem: str, tmp_path: Path) -> None:
    result = run_cli(*_plan_args(tmp_path, SWEEP, bench))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'bench' / 'bench.json'}: {problem}")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"input": "x16"}, "line 3: input 'x16' is not a whole number"),
        ({"foreground_dice": "good"}, "line 3: foreground_dice 'good' is not a number"),
    ],
)
def test_malformed_sweep_csv_names_the_file(change: dict, problem: str, tmp_path: Path) -> None:
    sweep = [SWEEP[0], {**SWEEP[1], **change}, *SWEEP[2:]]
    result = run_cli(*_plan_args(tmp_path, sweep, {"rows": BENCH}))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'sweep' / 'sweep.csv'}: {problem}"


def test_short_sweep_line_names_the_file(tmp_path: Path) -> None:
    args = _plan_args(tmp_path, SWEEP, {"rows": BENCH})
    path = tmp_path / "sweep" / "sweep.csv"
    path.write_text(path.read_text() + "elunet,64\n")
    result = run_cli(*args)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {path}: line 7 does not have the header's 5 fields")


def test_plan_without_rows_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.csv").write_text("earlier")
    args = _plan_args(tmp_path, SWEEP, {"rows": [_bench("basicunet", 16, "ort-fp32", 3.0)]})
    result = run_cli(*args, "--out", str(out))
    assert result.returncode == 1 and f"nothing written to {out}" in result.stderr
    assert [p.name for p in out.iterdir()] == ["plan.csv"]
    assert (out / "plan.csv").read_text() == "earlier"
    afile = tmp_path / "afile"
    afile.write_text("keep")
    result = run_cli(*args, "--out", str(afile))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --out {afile}: is a file, not a folder"
