from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from upseg.data.errors import DataError
from upseg.experiments.patient_report import (
    SCORE_COLUMNS,
    markdown,
    paired_rows,
    patient_score_rows,
    read_patient_scores,
    reference_volumes,
    results_from_score_rows,
    row_patients,
    seed_rows,
    size_rows,
    size_strata,
    summary_rows,
)
from upseg.io import write_csv


def record(method: str, r: int, seed: int, dice: dict[str, float], hd: float = 3.0) -> dict:
    patients = {
        pid: {"tumour": {"dice": d, "jaccard": d / (2 - d), "hd95": hd, "nsd": d}}
        for pid, d in dice.items()
    }
    return {"method": method, "input": r, "seed": seed, "scores": {"patients": patients}}


def test_seeds_are_averaged_per_patient_first() -> None:
    runs = [
        record("elunet+plain", 16, 0, {"a": 0.6, "b": 0.8}),
        record("elunet+plain", 16, 1, {"a": 0.8, "b": math.nan}),
    ]
    patients = row_patients(runs)
    assert patients["a"]["tumour"]["dice"] == pytest.approx(0.7)
    assert patients["b"]["tumour"]["dice"] == pytest.approx(0.8)  # NaN seed left out
    [row] = summary_rows(runs)
    assert (row["runs"], row["patients"]) == (2, 2)
    assert row["dice_mean"] == pytest.approx(0.75) and row["dice_median"] == pytest.approx(0.75)


def test_heads_are_paired_with_their_baselines() -> None:
    base = {f"p{i}": 0.5 + 0.01 * i for i in range(12)}
    runs = [
        record("elunet", 16, 0, base, hd=5.0),
        record("elunet+plain:bilinear", 16, 0, {p: d + 0.05 for p, d in base.items()}, hd=4.0),
        record("elunet", 32, 0, {p: d + 0.08 for p, d in base.items()}),
        record("unet", 16, 0, {p: d - 0.01 for p, d in base.items()}),  # no baseline of its own
        record("elunet", 64, 0, base),  # not twice the head's input: not compared
    ]
    rows = paired_rows(runs)
    assert {(r["method"], r["input"], r["against"], r["against_input"]) for r in rows} == {
        ("elunet+plain:bilinear", 16, "elunet", 16),  # same input
        ("elunet+plain:bilinear", 16, "elunet", 32),  # twice the input
        ("elunet+plain:bilinear", 16, "unet", 16),  # another backbone, same input
    }
    dice = {(r["against"], r["against_input"]): r for r in rows if r["metric"] == "dice"}
    assert dice[("elunet", 16)]["mean"] == pytest.approx(0.05) and dice[("elunet", 16)]["n"] == 12
    assert dice[("elunet", 16)]["verdict"] == "ahead"
    assert dice[("elunet", 32)]["mean"] == pytest.approx(-0.03)
    assert dice[("elunet", 32)]["verdict"] == "behind"
    assert dice[("unet", 16)]["mean"] == pytest.approx(0.06)
    hd95 = next(r for r in rows if r["metric"] == "hd95" and r["against_input"] == 16)
    assert hd95["mean"] == pytest.approx(-1.0)
    assert hd95["verdict"] == "ahead"  # a smaller distance is better
    text = markdown(summary_rows(runs), rows, tolerance=2)
    assert (
        "| elunet+plain:bilinear | 16 | elunet | 16 | tumour | dice | 12 | 60.5 | 55.5 | "
        "5.0 [5.0, 5.0] | 12/12 | < 0.001 | ahead |" in text
    )
    assert "| elunet+plain:bilinear | 16 | elunet | 32 | tumour | dice |" in text
    assert "NSD@2px mean" in text


def test_every_run_and_patient_gets_a_row() -> None:
    runs = [
        {**record("elunet", 16, 0, {"a": 0.6, "b": 0.8}), "fold": 0},
        {**record("elunet", 16, 1, {"a": 0.7}), "fold": 0},
    ]
    rows = patient_score_rows(runs)
    assert [(r["seed"], r["patient"], r["dice"]) for r in rows] == [
        (0, "a", 0.6),
        (0, "b", 0.8),
        (1, "a", 0.7),
    ]
    assert set(rows[0]) == {
        "method", "input", "fold", "seed", "patient", "group", "dice", "jaccard", "hd95", "nsd"
    }  # fmt: skip


def test_each_seed_is_compared_alone() -> None:
    base = {f"p{i}": 0.5 + 0.01 * i for i in range(10)}
    runs = [
        record("elunet", 16, 0, base),
        record("elunet", 16, 1, {p: d + 0.05 for p, d in base.items()}),
        record("elunet", 16, 2, base),  # a seed the head lacks: no row for it
        record("elunet+plain", 16, 0, {p: d + 0.10 for p, d in base.items()}),
        record("elunet+plain", 16, 1, {p: d + 0.03 for p, d in base.items()}),
        record("elunet", 32, 0, base),  # one seed shared: no per-seed rows against it
    ]
    rows = [r for r in seed_rows(runs) if r["metric"] == "dice"]
    assert [(r["against_input"], r["seed"]) for r in rows] == [(16, 0), (16, 1)]
    # each seed against the same seed of the baseline, not against the baseline's mean
    assert rows[0]["mean"] == pytest.approx(0.10) and rows[0]["verdict"] == "ahead"
    assert rows[1]["mean"] == pytest.approx(-0.02) and rows[1]["verdict"] == "behind"
    [mean] = [r for r in paired_rows(runs) if r["metric"] == "dice" and r["against_input"] == 16]
    # seeds averaged per patient first: (0.10 + 0.03) / 2 - (0 + 0.05 + 0) / 3
    assert mean["mean"] == pytest.approx(0.065 - 0.05 / 3)
    text = markdown(summary_rows(runs), paired_rows(runs), seeds=seed_rows(runs))
    assert (
        "| elunet+plain | 16 | elunet | 16 | 1 | tumour | 10 | -2.0 [-2.0, -2.0] | 0/10 |" in text
    )
    assert seed_rows([r for r in runs if r["seed"] == 0]) == []


def test_a_seed_with_unfinished_folds_is_compared_on_its_patients() -> None:
    base = {f"p{i}": 0.5 + 0.01 * i for i in range(10)}
    half = {p: d for p, d in base.items() if p < "p5"}
    runs = [
        record("elunet", 16, 0, base),
        record("elunet", 16, 1, base),
        record("elunet+plain", 16, 0, {p: d + 0.1 for p, d in base.items()}),
        record("elunet+plain", 16, 1, {p: d + 0.2 for p, d in half.items()}),
    ]
    rows = {r["seed"]: r for r in seed_rows(runs) if r["metric"] == "dice"}
    assert (rows[0]["n"], rows[1]["n"]) == (10, 5)
    assert rows[1]["mean"] == pytest.approx(0.2)


def test_size_strata_split_patients_by_volume_smallest_first() -> None:
    volumes = {"g": 30, "b": 10, "f": 70, "a": 10, "e": 50, "c": 20, "d": 40}
    assert size_strata(volumes) == [["a", "b"], ["c", "g", "d"], ["e", "f"]]  # ties by id
    assert size_strata(volumes, parts=2) == [["a", "b", "c", "g"], ["d", "e", "f"]]
    assert size_strata({"a": 1, "b": 2}) == []  # fewer patients than thirds


def sized(method: str, seed: int, dice: dict[str, float], volume: dict[str, int]) -> dict:
    result = record(method, 16, seed, dice)
    for pid, groups in result["scores"]["patients"].items():
        groups["tumour"]["n_ref"] = volume[pid]
    return result


def test_heads_are_compared_within_each_lesion_size_third() -> None:
    volume = {f"p{i:02d}": 100 * (i + 1) for i in range(30)}
    volume["p30"] = 0  # no reference tumour: in no third
    base = {pid: 0.5 for pid in volume}
    head = {pid: 0.6 if 0 < volume[pid] <= 1000 else 0.5 for pid in volume}
    head["p14"] = 0.49  # the middle third: one patient behind
    runs = [
        sized("elunet", 0, base, volume),
        sized("elunet", 1, base, volume),
        sized("elunet+plain", 0, head, volume),
        sized("elunet+plain", 1, {p: d + 0.1 * (p < "p10") for p, d in head.items()}, volume),
    ]
    assert reference_volumes(runs) == {"tumour": {p: v for p, v in volume.items() if v}}
    dice = [r for r in size_rows(runs) if r["metric"] == "dice"]
    assert [(r["part"], r["volume_low"], r["volume_high"], r["n"]) for r in dice] == [
        (1, 100, 1000, 10),
        (2, 1100, 2000, 10),
        (3, 2100, 3000, 10),
    ]
    # seeds averaged per patient first: the smallest third gains 0.1 and 0.2, mean 0.15
    assert [r["mean"] for r in dice] == pytest.approx([0.15, -0.001, 0.0])
    assert [r["verdict"] for r in dice] == ["ahead", "level", "level"]
    assert (dice[0]["better"], dice[1]["better"]) == (10, 0)
    text = markdown(summary_rows(runs), paired_rows(runs), sizes=size_rows(runs))
    assert (
        "| elunet+plain | 16 | elunet | 16 | tumour | 1 | 100-1,000 | 10 | 65.0 | 50.0 | "
        "15.0 [15.0, 15.0] | 10/10 | 0.002 | ahead |" in text
    )
    # an unfinished fold: the head lacks two small-lesion patients, so the first third (8
    # shared patients) gets no row; the thirds themselves stay those of all patients
    for run in runs[2:]:
        run["scores"]["patients"] = {
            p: s for p, s in run["scores"]["patients"].items() if p not in ("p00", "p01")
        }
    parts = [(r["part"], r["n"]) for r in size_rows(runs) if r["metric"] == "dice"]
    assert parts == [(2, 10), (3, 10)]


def test_reference_volumes_must_agree_between_runs() -> None:
    runs = [sized("elunet", 0, {"a": 0.5}, {"a": 100}), sized("elunet", 1, {"a": 0.5}, {"a": 90})]
    with pytest.raises(ValueError, match="patient a, tumour: reference volume 90"):
        reference_volumes(runs)


def test_score_rows_read_back_give_the_same_tables(tmp_path: Path) -> None:
    base = {f"p{i}": 0.5 + 0.02 * i for i in range(30)}
    runs = [
        sized("elunet", 0, base, {p: 100 + i for i, p in enumerate(base)}) | {"fold": 0},
        {**record("elunet", 16, 1, {p: d + 0.01 for p, d in base.items()}), "fold": 0},
        {**record("elunet+plain", 16, 0, {p: d + 0.04 for p, d in base.items()}), "fold": 0},
        {**record("elunet+plain", 16, 1, {"p0": math.nan, "p1": 0.6}), "fold": 0},
    ]
    path = write_csv(tmp_path / "scores.csv", patient_score_rows(runs))
    back = results_from_score_rows(read_patient_scores(path))
    assert [(r["method"], r["input"], r["fold"], r["seed"]) for r in back] == [
        ("elunet", 16, 0, 0),
        ("elunet", 16, 0, 1),
        ("elunet+plain", 16, 0, 0),
        ("elunet+plain", 16, 0, 1),
    ]
    assert math.isnan(back[3]["scores"]["patients"]["p0"]["tumour"]["dice"])
    assert back[0]["scores"]["patients"]["p3"]["tumour"]["n_ref"] == 103
    assert len({row["part"] for row in size_rows(back)}) == 3  # thirds from the file's volumes
    for table in (patient_score_rows, paired_rows, summary_rows, size_rows):  # NaN == NaN in json
        assert json.dumps(table(back)) == json.dumps(table(runs))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no per-patient scores"),
        ("method,input,fold,seed,patient,group,dice\nelunet,16,0,0,a,tumour,0.5\n",
         "lacks the column.s. jaccard, hd95, nsd"),
        (f"{','.join(SCORE_COLUMNS)}\nelunet,sixteen,0,0,a,tumour,0.5,0.3,2,0.6\n",
         "line 2: input 'sixteen' is not a whole number"),
        (f"{','.join(SCORE_COLUMNS)}\nelunet,16,0,,a,tumour,0.5,0.3,2,0.6\n",
         "line 2: seed '' is not a whole number"),
        (f"{','.join(SCORE_COLUMNS)}\nelunet,16,0,0,a,tumour,0.5,0.3,far,0.6\n",
         "line 2: hd95 'far' is not a number"),
        (f"{','.join(SCORE_COLUMNS)}\nelunet,16,0,0,a,tumour,0.5,0.3,2,0.6\n"
         "elunet,16,0,0,a,tumour,0.6,0.4,2,0.6\n",
         "line 3 repeats the scores of .'elunet', 16, 0, 0, 'a', 'tumour'."),
        (f"{','.join(SCORE_COLUMNS)}\nelunet,16,0,0,a,tumour,0.5,0.3,2,0.6\nelunet,16,0\n",
         "line 3 has fewer fields"),
        (f"{','.join(SCORE_COLUMNS)}\nelunet,16,0,0,a,tumour,0.5,0.3,2,0.6,7\n",
         "line 2 has more fields"),
    ],
)  # fmt: skip
def test_bad_score_files_are_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "scores.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"scores\.csv: {problem}"):
        read_patient_scores(path)


def test_a_missing_score_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.csv: cannot read"):
        read_patient_scores(tmp_path / "missing.csv")


def test_a_score_file_from_a_spreadsheet_reads(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    path.write_text(f"\ufeff{','.join(SCORE_COLUMNS)}\nelunet,16,0,0,a,tumour,0.5,0.3,,nan\n")
    [row] = read_patient_scores(path)  # the byte-order mark a spreadsheet writes is skipped
    assert (row["method"], row["input"], row["dice"]) == ("elunet", 16, 0.5)
    assert math.isnan(row["hd95"]) and math.isnan(row["nsd"]) and "n_ref" not in row
