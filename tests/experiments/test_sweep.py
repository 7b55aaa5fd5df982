from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import run_cli
from upseg.data import PhantomReader, prepare
from upseg.experiments import patient_report
from upseg.experiments.sweep import run_sweep
from upseg.models import Method, parse_method


def tiny_store(tmp_path: Path) -> Path:
    """A phantom store of 3 patients with 2 slices each at 64 x 64."""
    return prepare(
        PhantomReader(size=64, num_patients=3, slices_per_patient=2),
        tmp_path / "store",
        progress=False,
    )


def test_parse_method() -> None:
    assert parse_method("elunet") == Method("elunet", "none", "upsample")
    assert parse_method("unet+skip") == Method("unet", "skip", "upsample")
    assert parse_method("unet+skip:pytorch") == Method("unet", "skip", "pytorch")
    assert parse_method("elunet+plain:upsample").name == "elunet+plain"  # the default
    assert parse_method("elunet+plain:pytorch").name == "elunet+plain:pytorch"
    assert parse_method("elunet+plain:default").name == "elunet+plain:pytorch"  # former name
    with pytest.raises(ValueError, match="is not backbone"):
        parse_method("elunet+plain:xavier")
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        parse_method("resnet+plain")
    with pytest.raises(ValueError, match="is not backbone"):
        parse_method("elunet+wide")


def test_sweep_tables_figures_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = prepare(
        PhantomReader(size=128, num_patients=4, slices_per_patient=3),
        tmp_path / "store",
        progress=False,
    )
    out = tmp_path / "sweep"
    kwargs = {
        "folds": 2,
        "epochs": 1,
        "batch_size": 4,
        "extra": {"backbone_kwargs": {"base_width": 4}},
        "progress": False,
    }
    result = run_sweep(store, out, ["elunet", "elunet+skip"], [16], **kwargs)
    rows = result["rows"]
    assert [(r["method"], r["input"], r["runs"]) for r in rows] == [
        ("elunet", 16, 2),
        ("elunet+skip", 16, 2),
    ]
    from upseg.models import build, skip_head_num_params
    from upseg.models.profile import count_parameters

    small = count_parameters(build("elunet", 4, 4, 16, base_width=4))  # the runs' own settings
    assert rows[0]["params"] == small
    assert rows[1]["params"] == small + skip_head_num_params(4, 3)
    assert rows[1]["gmac"] > rows[0]["gmac"]
    assert 0 <= rows[0]["ED_paper_jaccard"] <= 1 and rows[0]["paper_jaccard_std"] >= 0
    tables = (out / "sweep.md").read_text()
    assert "| elunet+skip | 16 | 2 |" in tables and "±" in tables
    assert "NCR Dice | NCR Jaccard" in tables
    # per patient: 4 patients over 2 folds, each validated once; the head paired with elunet
    patients = list(csv.DictReader((out / "sweep_patients.csv").open()))
    wt = [r for r in patients if r["group"] == "WT"]
    assert [(r["method"], r["patients"]) for r in wt] == [("elunet", "4"), ("elunet+skip", "4")]
    scores = list(csv.DictReader((out / "sweep_patient_scores.csv").open()))
    assert len({(r["method"], r["patient"]) for r in scores if r["group"] == "WT"}) == 2 * 4
    paired = list(csv.DictReader((out / "sweep_paired.csv").open()))
    assert {(r["method"], r["against"], r["metric"]) for r in paired if r["group"] == "WT"} == {
        ("elunet+skip", "elunet", m) for m in ("dice", "hd95", "nsd")
    }
    assert "### Paired comparisons" in tables
    assert not (out / "sweep_paired_sizes.csv").exists()  # 4 patients: under 10 a third
    for figure in result["figures"]:
        assert figure.is_file() and figure.stat().st_size > 5_000
    runs = sorted((out / "runs").iterdir())
    assert [r.name for r in runs] == [
        "elunet+skip_r16_f0_s0",
        "elunet+skip_r16_f1_s0",
        "elunet_r16_f0_s0",
        "elunet_r16_f1_s0",
    ]
    stamps = [(r / "checkpoints" / "last.pt").stat().st_mtime_ns for r in runs]
    monkeypatch.setattr(patient_report, "SIZE_MIN_PATIENTS", 1)  # size thirds from 4 patients
    again = run_sweep(store, out, ["elunet", "elunet+skip"], [16], **kwargs)
    assert [(r / "checkpoints" / "last.pt").stat().st_mtime_ns for r in runs] == stamps
    assert again["rows"][0]["paper_jaccard"] == rows[0]["paper_jaccard"]
    sizes = list(csv.DictReader((out / "sweep_paired_sizes.csv").open()))
    assert {(r["group"], r["part"]) for r in sizes if r["metric"] == "dice"} >= {
        ("WT", "1"),
        ("WT", "2"),
        ("WT", "3"),
    }
    assert "### By lesion size" in (out / "sweep.md").read_text()


def test_sweep_cli_bad_method(tmp_path: Path) -> None:
    result = run_cli(
        "sweep",
        "--store",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--methods",
        "elunet+huge",
        "--resolutions",
        "16",
    )
    assert result.returncode == 2
    assert "method 'elunet+huge' is not backbone" in result.stderr


def test_sweep_refuses_changed_settings_and_empty(tmp_path: Path) -> None:
    from upseg.errors import TrainingError

    store = tiny_store(tmp_path)
    kwargs = {"epochs": 1, "batch_size": 2, "progress": False}
    run_sweep(
        store,
        tmp_path / "s",
        ["elunet"],
        [16],
        extra={"backbone_kwargs": {"base_width": 4}},
        **kwargs,
    )
    with pytest.raises(TrainingError, match="holds a run with other settings"):
        run_sweep(
            store,
            tmp_path / "s",
            ["elunet"],
            [16],
            extra={"backbone_kwargs": {"base_width": 8}},
            **kwargs,
        )
    with pytest.raises(ValueError, match="no runs to report"):
        run_sweep(store, tmp_path / "s", ["elunet+skip"], [16], **kwargs)


def test_sweep_workers_time_limit_and_failed_runs(tmp_path: Path) -> None:
    from upseg.errors import TrainingError

    store = prepare(
        PhantomReader(size=64, num_patients=4, slices_per_patient=2),
        tmp_path / "store",
        progress=False,
    )
    small = {"backbone_kwargs": {"base_width": 4}}
    kwargs = {"folds": 2, "epochs": 1, "batch_size": 2, "progress": False}
    out = tmp_path / "s"
    first = run_sweep(store, out, ["elunet"], [16], extra=small, workers=2, **kwargs)
    assert [(r["method"], r["runs"]) for r in first["rows"]] == [("elunet", 2)]
    for fold in (0, 1):
        assert (out / "runs" / f"elunet_r16_f{fold}_s0" / "evaluation" / "last_val.json").is_file()
    assert (
        len(first["rows"][0]["curve"]) == 1 and (out / "curves_val_foreground_dice.png").is_file()
    )
    assert "planned runs" not in (out / "sweep.md").read_text()

    # past the time limit: finished runs still count, new ones do not start
    later = run_sweep(
        store, out, ["elunet", "elunet+plain"], [16], extra=small, time_limit=0, **kwargs
    )
    assert [(r["method"], r["runs"]) for r in later["rows"]] == [("elunet", 2)]
    assert later["pending"] == ["elunet+plain_r16_f0_s0", "elunet+plain_r16_f1_s0"]
    assert not (out / "runs" / "elunet+plain_r16_f0_s0").exists()
    assert "2 of 4 planned runs are in these tables" in (out / "sweep.md").read_text()

    # a diverging run is reported, not fatal to the sweep; a sweep of only failures is
    with pytest.raises(TrainingError, match="every run of the sweep failed") as error:
        run_sweep(
            store,
            tmp_path / "bad",
            ["elunet"],
            [16],
            extra={**small, "lr": 1e30},
            **{**kwargs, "epochs": 2},
        )
    assert "the loss became" in str(error.value)


def test_sweep_checks_everything_before_training(tmp_path: Path) -> None:
    store = tiny_store(tmp_path)
    small = {"backbone_kwargs": {"base_width": 4}}
    kwargs = {"epochs": 1, "batch_size": 2, "progress": False, "extra": small}
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="24"):  # 24 does not reach 64 by doubling
        run_sweep(store, out, ["elunet+plain"], [16, 24], **kwargs)
    assert not (out / "runs").exists()
    with pytest.raises(ValueError, match="not -1 minutes"):
        run_sweep(store, out, ["elunet"], [16], time_limit=-60, **kwargs)
    # the same method under two spellings, and a repeated seed, make one run
    report = run_sweep(
        store, out, ["elunet+plain", "elunet+plain:upsample"], [16, 16], seeds=(0, 0), **kwargs
    )
    assert [(r["method"], r["runs"]) for r in report["rows"]] == [("elunet+plain", 1)]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["elunet+plain_r16_f0_s0"]


def test_sweep_names_a_damaged_run_file(tmp_path: Path) -> None:
    store = tiny_store(tmp_path)
    args = ["--store", str(store), "--out", str(tmp_path / "s"), "--methods", "elunet"]
    args += ["--resolutions", "16", "--epochs", "1", "--batch-size", "2", "--quiet"]
    args += ["--backbone-kwargs", '{"base_width": 4}']
    assert run_cli("sweep", *args).returncode == 0
    run = tmp_path / "s" / "runs" / "elunet_r16_f0_s0"
    (run / "evaluation" / "last_val.json").write_text("{not json")
    result = run_cli("sweep", *args)
    assert result.returncode == 1 and "last_val.json: damaged" in result.stderr, result.stderr
    (run / "config.yaml").write_text("epochs: [1,\n")
    result = run_cli("sweep", *args)
    assert result.returncode == 1 and "config.yaml: not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_sweep_goes_on_after_its_store_moves(tmp_path: Path) -> None:
    store = tiny_store(tmp_path)
    kwargs = {"epochs": 1, "batch_size": 2, "progress": False}
    small = {"backbone_kwargs": {"base_width": 4}}
    out = tmp_path / "s"
    run_sweep(store, out, ["elunet"], [16], extra=small, **kwargs)
    moved = store.rename(tmp_path / "moved")
    run = out / "runs" / "elunet_r16_f0_s0"
    (run / "evaluation" / "last_val.json").unlink()  # to be scored again from the moved store
    report = run_sweep(moved, out, ["elunet"], [16], extra=small, **kwargs)
    assert report["failed"] == [] and report["rows"][0]["runs"] == 1
    assert (run / "evaluation" / "last_val.json").is_file()


def test_sweep_passes_the_recipe_to_every_run(tmp_path: Path) -> None:
    import yaml

    store = prepare(
        PhantomReader(size=64, num_patients=4, slices_per_patient=2), tmp_path / "s", progress=False
    )
    recipe = ["--loss", "dice_ce", "--stage-weights", "halving", "--schedule", "cosine"]
    result = run_cli(
        "sweep", "--store", str(store), "--out", str(tmp_path / "o"),
        "--methods", "elunet+plain@features:bilinear", "--resolutions", "16", "--epochs", "2",
        "--batch-size", "2", "--max-steps-per-epoch", "1", "--warmup-epochs", "1",
        "--backbone-kwargs", '{"base_width": 4}', *recipe, "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [run] = (tmp_path / "o" / "runs").iterdir()
    assert run.name == "elunet+plain@features-bilinear_r16_f0_s0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["loss"], config["stage_weights"], config["schedule"]) == (
        "dice_ce",
        "halving",
        "cosine",
    )
    assert (config["warmup_epochs"], config["head_init"], config["head_input"]) == (
        1,
        "bilinear",
        "features",
    )


def test_a_guided_head_is_swept_and_costed_at_its_own_input(tmp_path: Path) -> None:
    """The guided model takes the image at R: its cost column counts that input, and it is
    paired with the baseline at the same r like any head."""
    from upseg.models import build
    from upseg.models.guide import guide_num_params
    from upseg.models.profile import count_macs, count_parameters

    store = tiny_store(tmp_path)
    kwargs = {"epochs": 1, "batch_size": 2, "progress": False}
    small = {"backbone_kwargs": {"base_width": 4}}
    report = run_sweep(
        store, tmp_path / "s", ["elunet+plain", "elunet+guided"], [16], extra=small, **kwargs
    )
    assert report["failed"] == []
    plain, guided = report["rows"]
    assert guided["method"] == "elunet+guided"
    assert guided["params"] == plain["params"] + guide_num_params(4, 4, 2, 8)
    model = build("elunet", 4, 4, 16, 64, head="guided", head_input="logits", base_width=4)
    assert guided["gmac"] == count_macs(model, (1, 4, 64, 64)) / 1e9 > plain["gmac"]
    assert count_parameters(model) == guided["params"]


def test_a_sweep_pairs_its_heads_with_an_earlier_sweeps_patients(tmp_path: Path) -> None:
    from upseg.data.errors import DataError

    store = tiny_store(tmp_path)
    kwargs = {
        "folds": 3,
        "epochs": 1,
        "batch_size": 2,
        "extra": {"backbone_kwargs": {"base_width": 4}},
        "progress": False,
    }
    run_sweep(store, tmp_path / "a", ["elunet"], [16], **kwargs)
    earlier = tmp_path / "a" / "sweep_patient_scores.csv"
    result = run_sweep(store, tmp_path / "b", ["elunet+plain"], [16], pair_with=[earlier], **kwargs)
    paired = list(csv.DictReader((tmp_path / "b" / "sweep_paired.csv").open()))
    dice = [r for r in paired if r["metric"] == "dice" and r["group"] == "WT"]
    assert [(r["method"], r["against"], r["n"]) for r in dice] == [("elunet+plain", "elunet", "3")]
    theirs = [float(r["dice"]) for r in csv.DictReader(earlier.open()) if r["group"] == "WT"]
    assert float(dice[0]["theirs"]) == pytest.approx(sum(theirs) / len(theirs))
    own = list(csv.DictReader((tmp_path / "b" / "sweep_patient_scores.csv").open()))
    assert {r["method"] for r in own} == {"elunet+plain"}  # its own runs only
    assert f"- elunet at 16: 3 runs from {earlier}" in result["tables"]
    assert [r["method"] for r in result["rows"]] == ["elunet+plain"]  # pooled tables: its own

    with pytest.raises(DataError, match="elunet at input 16, fold 0, seed 0 is also in this sweep"):
        run_sweep(store, tmp_path / "c", ["elunet"], [16], pair_with=[earlier], **kwargs)
    with pytest.raises(DataError, match=r"is also in .*a.sweep_patient_scores\.csv"):
        run_sweep(store, tmp_path / "c", ["unet"], [16], pair_with=[earlier, earlier], **kwargs)
    other = tmp_path / "other.csv"
    other.write_text(earlier.read_text().replace(own[0]["patient"], "somebody_else"))
    with pytest.raises(
        DataError,
        match=r"other\.csv: 1 patient\(s\) are not in the store",
    ):
        run_sweep(store, tmp_path / "c", ["unet"], [16], pair_with=[other], **kwargs)
    assert not (tmp_path / "c" / "runs").exists()  # refused before any training
    bad = run_cli(
        "sweep",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "c"),
        "--methods",
        "unet",
        "--resolutions",
        "16",
        "--pair-with",
        str(tmp_path / "none.csv"),
    )
    assert bad.returncode == 1 and "none.csv: cannot read the per-patient scores" in bad.stderr
