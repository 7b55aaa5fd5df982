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
