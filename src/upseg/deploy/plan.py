"""`upseg plan`: the best model and input size inside a latency budget, from measurements.

Quality comes from a sweep (`sweep.csv`: mean scores per method and input size); latency
comes from `upseg bench` on the target device (`bench.json`). Nothing is estimated: a
configuration missing from either side is listed as such, never filled in. Latency does
not depend on the weights' initialisation, so `elunet+plain:pytorch` in a sweep takes the
bench figures of `elunet+plain` (and the other way round). A sweep scores fp32 models, so the
timings of int8 runtimes (names ending in "int8") are left out unless asked for: their model
is not the one the sweep scored (`upseg export --int8` reports its Dice).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from upseg.errors import DataError

STATS = ("median_ms", "p90_ms")


def architecture(method: str) -> str:
    """The method name without its head initialisation: what latency depends on."""
    return method.split(":", 1)[0]


def read_sweep(path: str | Path) -> list[dict]:
    """Rows of `sweep.csv` (a file, or the sweep folder holding it), numbers as floats."""
    path = _locate(path, "sweep.csv", "upseg sweep")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"method", "input"} <= set(rows[0]):
        raise DataError(path, "not a sweep.csv (needs method and input columns)")
    out = []
    for row in rows:
        parsed: dict = {"method": row["method"], "input": int(row["input"])}
        for key, value in row.items():
            if key not in parsed:
                try:
                    parsed[key] = float(value)
                except ValueError:
                    parsed[key] = value
        out.append(parsed)
    return out


def read_bench(path: str | Path) -> list[dict]:
    """Rows of `bench.json` (a file, or the bench folder holding it)."""
    path = _locate(path, "bench.json", "upseg bench")
    try:
        rows = json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(path, f"not a bench.json ({error})") from None
    return rows


def _locate(path: str | Path, name: str, command: str) -> Path:
    """`path` itself, or the file `name` inside the folder `path`; it must exist."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise DataError(path, f"no {command.split()[-1]} results here; run {command} first")
    return path


def plan(
    sweep_rows: list[dict],
    bench_rows: list[dict],
    budget_ms: float,
    batch: int = 1,
    mode: str = "e2e",
    stat: str = "p90_ms",
    metric: str = "foreground_dice",
    include_int8: bool = False,
) -> dict:
    """Trade-off rows (one per swept method and input size, with its fastest measured
    runtime) and the pick: the best `metric` whose latency `stat` fits `budget_ms`.

    Returns {"rows", "pick" (a row or None), "missing" (what could not be judged)}."""
    if stat not in STATS:
        raise ValueError(f"unknown statistic {stat!r}; choose one of {STATS}")
    if budget_ms <= 0:
        raise ValueError(f"the budget must be positive, not {budget_ms} ms")
    if sweep_rows and metric not in sweep_rows[0]:
        raise ValueError(f"the sweep has no {metric!r} column")
    timings: dict[tuple[str, int], dict] = {}
    left_out: set[str] = set()
    for row in bench_rows:
        if row.get("batch") != batch or row.get("mode") != mode:
            continue
        if str(row["runtime"]).endswith("int8") and not include_int8:
            left_out.add(str(row["runtime"]))
            continue
        key = (architecture(str(row["method"])), int(row["input"]))
        if key not in timings or row[stat] < timings[key][stat]:
            timings[key] = row
    rows, missing = [], []
    for runtime in sorted(left_out):
        missing.append(
            f"{runtime} timings left out: the sweep scored the fp32 models "
            "(--include-int8 uses them; export --int8 reports the int8 Dice)"
        )
    for quality in sweep_rows:
        timing = timings.get((architecture(quality["method"]), quality["input"]))
        if timing is None:
            missing.append(
                f"{quality['method']} @ {quality['input']}: no {mode} latency at batch {batch}"
            )
            continue
        value = quality[metric]
        rows.append(
            {
                "method": quality["method"],
                "input": quality["input"],
                metric: value,
                f"{metric}_std": quality.get(f"{metric}_std", float("nan")),
                "runs": quality.get("runs", float("nan")),
                "runtime": timing["runtime"],
                stat: timing[stat],
                "images_per_s": timing.get("images_per_s", float("nan")),
                "fits": timing[stat] <= budget_ms,
            }
        )
    swept = {(architecture(q["method"]), q["input"]) for q in sweep_rows}
    for method, size in sorted(k for k in timings if k not in swept):
        missing.append(f"{method} @ {size}: measured but not in the sweep (no quality figure)")
    rows.sort(key=lambda r: (r[stat], r["method"]))
    candidates = [r for r in rows if r["fits"] and not math.isnan(r[metric])]
    pick = max(candidates, key=lambda r: (r[metric], -r[stat]), default=None)
    return {"rows": rows, "pick": pick, "missing": missing}
