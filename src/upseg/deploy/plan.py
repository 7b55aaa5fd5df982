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
from upseg.io import write_csv, write_json, written_together

STATS = ("median_ms", "p90_ms")
PLAN_FILES = ("plan.csv", "plan.json")


def architecture(method: str) -> str:
    """The method name without its head initialisation: what latency depends on."""
    return method.split(":", 1)[0]


NOT_SCORES = ("method", "input", "output", "runs", "params", "gmac", "train_minutes")
BENCH_KEYS = {
    "method": str,
    "runtime": str,
    "mode": str,
    "input": int,
    "batch": int,
    "median_ms": float,
    "p90_ms": float,
}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_sweep(path: str | Path) -> list[dict]:
    """Rows of `sweep.csv` (a file, or the sweep folder holding it): input as an int, and
    every column with a number in it as floats (all of its cells must then be numbers)."""
    path = _locate(path, "sweep.csv", "upseg sweep")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(path, f"not a readable CSV file ({error})") from None
    if not rows or not {"method", "input"} <= set(header):
        raise DataError(path, "not a sweep.csv (needs method and input columns, and rows)")
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise DataError(path, f"line {line} does not have the header's {len(header)} fields")
    numeric = [k for k in header if k != "method" and any(_number(r[k]) is not None for r in rows)]
    out = []
    for line, row in enumerate(rows, start=2):
        parsed: dict = dict(row)
        try:
            parsed["input"] = int(row["input"])
        except ValueError:
            raise DataError(
                path, f"line {line}: input {row['input']!r} is not a whole number"
            ) from None
        for key in numeric:
            if key != "input":
                parsed[key] = _number(row[key])
                if parsed[key] is None:
                    raise DataError(path, f"line {line}: {key} {row[key]!r} is not a number")
        out.append(parsed)
    return out


def read_bench(path: str | Path) -> list[dict]:
    """Rows of `bench.json` (a file, or the bench folder holding it); each has at least
    BENCH_KEYS, of those types."""
    path = _locate(path, "bench.json", "upseg bench")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"not a bench.json ({error})") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(path, 'not a bench.json (needs a list of rows under "rows")')
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(path, f"row {number} of {len(rows)} is not an object")
        missing = [key for key in BENCH_KEYS if key not in row]
        if missing:
            raise DataError(path, f"row {number} of {len(rows)} lacks {', '.join(missing)}")
        for key, kind in BENCH_KEYS.items():
            value = row[key]
            fits = isinstance(value, str) if kind is str else _is_number(value, kind is int)
            if not fits:
                raise DataError(
                    path, f"row {number} of {len(rows)}: {key} {value!r} is not {_KINDS[kind]}"
                )
    return rows


_KINDS = {str: "text", int: "a whole number", float: "a number"}


def _is_number(value: object, whole: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return float(value).is_integer() if whole else True


def score_columns(sweep_rows: list[dict]) -> list[str]:
    """Columns of the sweep that `--metric` can rank by: numbers, not settings or spreads."""
    if not sweep_rows:
        return []
    return [
        key
        for key, value in sweep_rows[0].items()
        if key not in NOT_SCORES and not key.endswith("_std") and _is_number(value)
    ]


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
    scores = score_columns(sweep_rows)
    if sweep_rows and metric not in scores:
        raise ValueError(
            f"--metric {metric!r} is not a score column of the sweep; choose from "
            f"{', '.join(scores) or '(none)'}"
        )
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


def write_plan(result: dict, out: str | Path, budget_ms: float) -> list[Path]:
    """plan.csv (the trade-off rows) and plan.json (everything) in `out`, together: both are
    written under temporary names and renamed into place once both exist. A plan without
    rows is a ValueError: there is nothing to write."""
    if not result["rows"]:
        raise ValueError("the plan has no rows; nothing to write")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = [out / name for name in PLAN_FILES]
    with written_together(final) as staged:
        write_csv(staged[0], result["rows"])
        write_json(staged[1], {**result, "budget_ms": budget_ms})
    return final
