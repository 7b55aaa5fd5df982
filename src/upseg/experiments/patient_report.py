"""Per-patient tables of a sweep: each row's patient scores, and each head against the
baselines it must beat (see comparisons()), patient by patient.

Patients are the unit. With k folds every patient is validated once per seed; its score for
a row is the mean over that row's seeds, and the paired bootstrap (upseg.metrics.paired)
resamples patients. Results are the records of `upseg.experiments.sweep` (method, input,
fold, seed and the run's evaluation scores, whose "patients" entry upseg.engine.score makes).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

from upseg.data.errors import DataError
from upseg.metrics import HIGHER_IS_BETTER, compare_patients, summarise
from upseg.models.methods import baseline_of

REPORTED = ("dice", "hd95", "nsd")  # per-patient metrics in the tables (Jaccard stays in CSV)
SIZE_PARTS = 3  # lesion-size parts of size_rows(): thirds of the patients
SIZE_MIN_PATIENTS = 10  # fewer paired patients in a part: no row (a bootstrap of 5 is no test)


def row_patients(results: Iterable[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """patient -> group -> metric: the mean over the given runs (seeds) that score it."""
    values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for result in results:
        for pid, groups in result["scores"].get("patients", {}).items():
            for group, scores in groups.items():
                for metric in HIGHER_IS_BETTER:
                    values[pid][group][metric].append(float(scores[metric]))
    return {
        pid: {
            group: {m: _nanmean(v) for m, v in metrics.items()} for group, metrics in groups.items()
        }
        for pid, groups in values.items()
    }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _group(results: Iterable[dict], key: Callable[[dict], Hashable]) -> dict:
    grouped: dict = defaultdict(list)
    for result in results:
        grouped[key(result)].append(result)
    return grouped


def _rows(results: list[dict]) -> dict[tuple[str, int], list[dict]]:
    return _group(results, lambda result: (result["method"], result["input"]))


def patient_score_rows(results: list[dict]) -> list[dict]:
    """Every run's every patient and group: method, input, fold, seed, patient, group and the
    per-patient metrics (nnU-Net's per-case table, for a whole sweep)."""
    rows = []
    for result in results:
        for pid, groups in result["scores"].get("patients", {}).items():
            for group, scores in groups.items():
                rows.append(
                    {
                        "method": result["method"],
                        "input": result["input"],
                        "fold": result.get("fold"),
                        "seed": result.get("seed"),
                        "patient": pid,
                        "group": group,
                        **{m: scores[m] for m in HIGHER_IS_BETTER if m in scores},
                        **({"n_ref": int(scores["n_ref"])} if "n_ref" in scores else {}),
                    }
                )
    return rows


def results_from_score_rows(rows: Iterable[dict]) -> list[dict]:
    """Records of patient_score_rows()' rows, one per (method, input, fold, seed), with the
    per-patient scores under "scores" -> "patients", as the tables above read them."""
    records: dict[tuple, dict] = {}
    for row in rows:
        key = (row["method"], row["input"], row.get("fold"), row.get("seed"))
        record = records.setdefault(
            key,
            {"method": key[0], "input": key[1], "fold": key[2], "seed": key[3],
             "scores": {"patients": defaultdict(dict)}},
        )  # fmt: skip
        scores = {m: row[m] for m in (*HIGHER_IS_BETTER, "n_ref") if m in row}
        record["scores"]["patients"][row["patient"]][row["group"]] = scores
    for record in records.values():
        record["scores"]["patients"] = dict(record["scores"]["patients"])
    return list(records.values())


SCORE_COLUMNS = ("method", "input", "fold", "seed", "patient", "group", *HIGHER_IS_BETTER)


def read_patient_scores(path: str | Path) -> list[dict]:
    """The rows of a sweep_patient_scores.csv (patient_score_rows() of an earlier sweep):
    input, fold, seed (and n_ref, the reference volume, where the file has it) as integers,
    the metrics as floats (empty or "nan": NaN). A row held twice is refused. Nothing here
    can tell whether the file was scored on the same store and recipe: that is the caller's."""
    path = Path(path)
    parsed, seen = [], set()
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in SCORE_COLUMNS if c not in (reader.fieldnames or [])]
            if reader.fieldnames and missing:
                raise DataError(
                    path, f"lacks the column(s) {', '.join(missing)} of a sweep_patient_scores.csv"
                )
            for row in reader:
                parsed.append(_score_row(path, reader.line_num, row))
                key = tuple(parsed[-1][c] for c in SCORE_COLUMNS[:6])
                if key in seen:
                    raise DataError(path, f"line {reader.line_num} repeats the scores of {key}")
                seen.add(key)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(path, f"cannot read the per-patient scores ({error})") from None
    if not parsed:
        raise DataError(path, "holds no per-patient scores")
    return parsed


def _score_row(path: Path, line: int, row: dict) -> dict:
    """One parsed row of read_patient_scores()."""
    if None in row.values() or None in row:
        more = "more" if None in row else "fewer"
        raise DataError(path, f"line {line} has {more} fields than the header")
    parsed: dict = {c: row[c] for c in ("method", "patient", "group")}
    for column, kind in (("input", int), ("fold", int), ("seed", int), ("n_ref", int)):
        if column == "n_ref" and not row.get(column):
            continue
        try:
            parsed[column] = kind(row[column])
        except ValueError:
            raise DataError(
                path, f"line {line}: {column} {row[column]!r} is not a whole number"
            ) from None
    for metric in HIGHER_IS_BETTER:
        try:
            parsed[metric] = float(row[metric] or "nan")
        except ValueError:
            raise DataError(
                path, f"line {line}: {metric} {row[metric]!r} is not a number"
            ) from None
    return parsed


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per (method, input) and group: patients, mean and median of each metric."""
    rows = []
    for (method, r), mine in _rows(results).items():
        patients = row_patients(mine)
        if not patients:
            continue
        for group, metrics in summarise(patients).items():
            row = {"method": method, "input": r, "runs": len(mine), "group": group}
            row["patients"] = max(v["n"] for v in metrics.values())
            for metric, values in metrics.items():
                row[f"{metric}_mean"], row[f"{metric}_median"] = values["mean"], values["median"]
            rows.append(row)
    return rows


def comparisons(keys: Iterable[tuple[str, int]]) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """(row, against) pairs among sweep rows (method, input): every head row against
    - its backbone's baseline at the same input (what the head buys),
    - that baseline at twice the input (does the head at r reach the plain network at 2r),
    - every other backbone's baseline at the same input (the bigger-backbone alternative)."""
    present = list(dict.fromkeys(keys))
    pairs = []
    for method, r in present:
        base = baseline_of(method)
        if base == method:
            continue
        wanted = [(base, r), (base, 2 * r)]
        wanted += [(m, i) for m, i in present if i == r and baseline_of(m) == m and m != base]
        pairs += [((method, r), key) for key in wanted if key in present]
    return pairs


def paired_rows(results: list[dict], seed: int = 0) -> list[dict]:
    """The comparisons() of the sweep's rows, on the patients both rows score (mean over
    seeds per patient first). "against" and "against_input" name the other row."""
    grouped = _rows(results)
    rows = []
    for mine, other in comparisons(grouped):
        rows += _paired(
            mine, other, row_patients(grouped[mine]), row_patients(grouped[other]), seed
        )
    return rows


def seed_rows(results: list[dict], bootstrap_seed: int = 0) -> list[dict]:
    """The comparisons() again, each training seed alone, for pairs whose rows share more
    than one seed: does the difference hold for every seed, not only for their mean?
    "seed" is the training seed (seed s of one row against seed s of the other: the number
    is only a label, no random draw is shared); a seed with unfinished folds is compared on
    the patients it has ("n" says how many); the interval resamples patients as in
    paired_rows()."""
    grouped = _rows(results)
    rows = []
    for mine, other in comparisons(grouped):
        ours = _group(grouped[mine], lambda result: int(result.get("seed", 0)))
        theirs = _group(grouped[other], lambda result: int(result.get("seed", 0)))
        shared = sorted(set(ours) & set(theirs))
        if len(shared) < 2:
            continue
        for seed in shared:
            a, b = row_patients(ours[seed]), row_patients(theirs[seed])
            rows += _paired(mine, other, a, b, bootstrap_seed, seed=seed)
    return rows


def reference_volumes(results: Iterable[dict]) -> dict[str, dict[str, int]]:
    """group -> patient -> its reference volume, voxels at R (the scores' n_ref, counted from
    the reference mask: the same in every run that scores the patient, checked here).
    Patients without reference foreground are left out."""
    volumes: dict[str, dict[str, int]] = defaultdict(dict)
    for result in results:
        for pid, groups in result["scores"].get("patients", {}).items():
            for group, scores in groups.items():
                n_ref = int(scores.get("n_ref", 0))
                if n_ref <= 0:
                    continue
                if volumes[group].setdefault(pid, n_ref) != n_ref:
                    raise ValueError(
                        f"patient {pid}, {group}: reference volume {n_ref} in one run and "
                        f"{volumes[group][pid]} in another; were the runs scored on one store?"
                    )
    return dict(volumes)


def size_strata(volumes: dict[str, int], parts: int = SIZE_PARTS) -> list[list[str]]:
    """Patient ids sorted by volume, then id, split into `parts` near-equal consecutive lists,
    smallest volumes first (equal volumes may fall on both sides of a bound); none when there
    are fewer patients than parts."""
    if len(volumes) < parts:
        return []
    ordered = sorted(volumes, key=lambda pid: (volumes[pid], pid))
    bounds = [round(k * len(ordered) / parts) for k in range(parts + 1)]
    return [ordered[a:b] for a, b in itertools.pairwise(bounds)]


def size_rows(results: list[dict], seed: int = 0) -> list[dict]:
    """The comparisons() again within each third of the patients by reference volume
    (reference_volumes(), size_strata(); the thirds of every patient the sweep scores), so a
    reader sees for which lesion sizes a head pays. "part" counts from 1 (smallest lesions);
    "volume_low"/"volume_high" bound the third's volumes in voxels at R. A third where the
    two rows share fewer than SIZE_MIN_PATIENTS patients gets no row: a percentile bootstrap
    over a handful of patients gives intervals too narrow to trust."""
    grouped = _rows(results)
    volumes = reference_volumes(results)
    rows = []
    for mine, other in comparisons(grouped):
        ours, theirs = row_patients(grouped[mine]), row_patients(grouped[other])
        for group, sizes in volumes.items():
            for part, members in enumerate(size_strata(sizes), start=1):
                shared = [p for p in members if p in ours and p in theirs]
                if len(shared) < SIZE_MIN_PATIENTS:
                    continue
                rows += _paired(
                    mine,
                    other,
                    {p: {group: ours[p][group]} for p in shared},
                    {p: {group: theirs[p][group]} for p in shared},
                    seed,
                    part=part,
                    volume_low=sizes[members[0]],
                    volume_high=sizes[members[-1]],
                )
    return rows


def _paired(
    mine: tuple[str, int],
    other: tuple[str, int],
    ours: dict[str, dict[str, dict[str, float]]],
    theirs: dict[str, dict[str, dict[str, float]]],
    bootstrap_seed: int,
    **extra: int,
) -> list[dict]:
    """compare_patients() of two rows' per-patient scores (row_patients()), each row named
    (method, input, against, against_input, then `extra`)."""
    compared = compare_patients(
        ours, theirs, {m: HIGHER_IS_BETTER[m] for m in REPORTED}, seed=bootstrap_seed
    )
    names = {"method": mine[0], "input": mine[1], "against": other[0], "against_input": other[1]}
    return [{**names, **extra, **row} for row in compared]


def score_text(metric: str, value: float) -> str:
    """A per-patient score for a table: HD95 in pixels, the others in points of 100."""
    if math.isnan(value):
        return "–"
    return f"{value:.2f}" if metric == "hd95" else f"{100 * value:.1f}"


def p_text(p: float) -> str:
    """A Wilcoxon signed-rank p-value for a table."""
    if math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def verdict_cells(row: dict) -> str:
    """A paired row's last table cells: difference [interval] | better in | p | verdict |."""
    return (
        f"{interval_text(row)} | {row['better']}/{row['n']} | "
        f"{p_text(row['p_wilcoxon'])} | {row['verdict']} |"
    )


def interval_text(row: dict) -> str:
    """A paired row's mean difference and its interval."""
    m = row["metric"]
    return (
        f"{score_text(m, row['mean'])} [{score_text(m, row['low'])}, {score_text(m, row['high'])}]"
    )


def markdown(
    summary: list[dict],
    paired: list[dict],
    tolerance: float | None = None,
    seeds: list[dict] | None = None,
    sizes: list[dict] | None = None,
) -> str:
    """The tables: Dice and NSD in points of 100, HD95 in pixels at R; per seed (seed_rows())
    and per lesion-size part (size_rows()) Dice only."""
    nsd = f"NSD@{tolerance:g}px" if tolerance is not None else "NSD"
    lines = [
        "### Per patient (all slices of a patient as one volume; mean over seeds per patient)",
        "",
        f"| method | input | runs | group | patients | Dice mean | Dice median | HD95 mean | "
        f"HD95 median | {nsd} mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['method']} | {row['input']} | {row['runs']} | {row['group']} | "
            f"{row['patients']} | {score_text('dice', row['dice_mean'])} | "
            f"{score_text('dice', row['dice_median'])} | {score_text('hd95', row['hd95_mean'])} | "
            f"{score_text('hd95', row['hd95_median'])} | {score_text('nsd', row['nsd_mean'])} |"
        )
    if paired:
        lines += _comparison_table(
            "Paired comparisons (difference = method - other, 95% bootstrap interval over "
            "patients; lower HD95 is better; two-sided Wilcoxon signed-rank p): each head "
            "against its baseline at the same input, at twice the input, and against other "
            "backbones at the same input",
            ["group", "metric", "patients", "method mean", "other mean"],
            paired,
            lambda row: (
                f"{row['group']} | {row['metric']} | {row['n']} | "
                f"{score_text(row['metric'], row['ours'])} | "
                f"{score_text(row['metric'], row['theirs'])}"
            ),
        )
    per_seed = [row for row in seeds or [] if row["metric"] == "dice"]
    if per_seed:
        lines += _comparison_table(
            "Each training seed alone (per-patient Dice, difference = method - other, "
            "95% bootstrap interval over patients; HD95 and NSD in sweep_paired_seeds.csv)",
            ["seed", "group", "patients"],
            per_seed,
            lambda row: f"{row['seed']} | {row['group']} | {row['n']}",
        )
    by_size = [row for row in sizes or [] if row["metric"] == "dice"]
    if by_size:
        lines += _comparison_table(
            "By lesion size (per-patient Dice; the sweep's patients in thirds by their "
            "reference volume, voxels at R, smallest first; difference = method - other; HD95 "
            "and NSD in sweep_paired_sizes.csv)",
            ["group", "third", "reference voxels", "patients", "method mean", "other mean"],
            by_size,
            lambda row: (
                f"{row['group']} | {row['part']} | "
                f"{row['volume_low']:,}-{row['volume_high']:,} | {row['n']} | "
                f"{score_text('dice', row['ours'])} | {score_text('dice', row['theirs'])}"
            ),
        )
    return "\n".join(lines) + "\n"


def _comparison_table(
    title: str, columns: list[str], rows: list[dict], cells: Callable[[dict], str]
) -> list[str]:
    """Markdown lines of one table of paired rows: the pair's names, `columns` filled by
    `cells(row)`, then the verdict_cells()."""
    header = ["method", "input", "against", "at input", *columns]
    header += ["difference [95% CI]", "better in", "p (signed rank)", "verdict"]
    lines = ["", f"### {title}", "", f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['input']} | {row['against']} | {row['against_input']} | "
            f"{cells(row)} | {verdict_cells(row)}"
        )
    return lines
