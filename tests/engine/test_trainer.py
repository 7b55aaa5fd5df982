from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import run_cli
from upseg.data import BratsReader, PhantomReader, SliceStore, prepare
from upseg.engine import TrainConfig
from upseg.engine.runs import load_checkpoint, load_run, run_dataset
from upseg.engine.schedule import learning_rate
from upseg.engine.trainer import Trainer, train
from upseg.errors import TrainingError
from upseg.experiments.evaluate import evaluate_run

TINY = {"backbone_kwargs": {"base_width": 4}, "input_size": 16, "batch_size": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "phantom"
    return prepare(
        PhantomReader(size=64, num_patients=5, slices_per_patient=8), out, progress=False
    )


def config(store: Path, out: Path, **kwargs) -> TrainConfig:
    return TrainConfig(store=str(store), out=str(out), **{**TINY, **kwargs})


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


cli = run_cli


def cli_process(*argv: str) -> subprocess.CompletedProcess:
    """A separate process: same thread count and global torch settings as a user's run."""
    return subprocess.run(
        [sys.executable, "-m", "upseg", *argv], capture_output=True, text=True, check=False
    )


class TwoCases(BratsReader):
    def items(self) -> list[Path]:
        return super().items()[:2]


def test_short_real_training_loss_falls(shared_data: Path, tmp_path: Path) -> None:
    reader = TwoCases(shared_data / "brats2018", slices="tumour")
    store = prepare(reader, tmp_path / "brats", progress=False)
    run = tmp_path / "run"
    train(
        TrainConfig(
            store=str(store),
            out=str(run),
            backbone_kwargs={"base_width": 8},
            input_size=16,
            batch_size=8,
            epochs=3,
            max_steps_per_epoch=5,
            lr=3e-3,
        ),
        progress=False,
    )
    losses = [m["train_loss"] for m in metrics(run)]
    assert losses[-1] < losses[0], losses
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 3 and state["class_names"] == ["background", "NCR", "ED", "ET"]


def test_run_directory(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    record = train(config(store, run, epochs=2, output_size=64), progress=False)
    assert record["epoch"] == 2 and record["images_per_s"] > 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["head"] == "plain" and saved["output_size"] == 64
    lines = metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2]
    assert 0 <= lines[-1]["val"]["paper_jaccard"] <= 1
    assert set(lines[-1]["val"]["regions"]) == {"WT", "TC", "ET"}
    for name in ("last", "best"):
        state = torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
        assert "model" in state and "optimizer" in state
    with pytest.raises(TrainingError, match="a run already exists here"):
        train(config(store, run, epochs=2), progress=False)


def wait_for_line(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().count("\n") >= 1:
            return
        if process.poll() is not None:
            raise AssertionError(process.stderr.read() if process.stderr else "exited")
        time.sleep(0.01)
    raise AssertionError("no epoch finished in time")


def test_resume_after_sigkill_matches_uninterrupted(store: Path, tmp_path: Path) -> None:
    flags = [
        "--store",
        str(store),
        "--backbone-kwargs",
        '{"base_width": 4}',
        "--input-size",
        "16",
        "--output-size",
        "64",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--deterministic",
        "true",
        "--seed",
        "3",
        "--schedule",
        "cosine",
        "--warmup-epochs",
        "1",
        "--quiet",
    ]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "upseg", "train", *flags, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(killed / "metrics.jsonl", process)
    os.kill(process.pid, signal.SIGKILL)  # during epoch 2
    process.wait()
    assert [m["epoch"] for m in metrics(killed)] == [1]
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 1
    result = cli_process("train", "--resume", str(killed), "--quiet")
    assert result.returncode == 0, result.stderr
    assert [m["epoch"] for m in metrics(killed)] == [1, 2]
    clean = tmp_path / "clean"
    assert cli_process("train", *flags, "--out", str(clean)).returncode == 0
    resumed = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    uninterrupted = load_checkpoint(clean / "checkpoints" / "last.pt")["model"]
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def test_schedule_sets_the_rate_of_every_step(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(
        config(store, run, epochs=3, schedule="poly", warmup_epochs=1, max_steps_per_epoch=2),
        progress=False,
    )
    seen: list[float] = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    trainer.run()
    expected = [learning_rate(1e-3, "poly", s, 6, 2) for s in range(6)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(5e-4) and seen[-1] < seen[3] < seen[2] == 1e-3
    assert [m["lr"] for m in metrics(run)] == pytest.approx(expected[1::2])


class PoisonedTrainer(Trainer):
    """Feeds NaN inputs from the second epoch on."""

    def _train_epoch(self, epoch: int) -> dict:
        if epoch == 1:
            self.train_set.inputs = self.train_set.inputs * float("nan")
        return super()._train_epoch(epoch)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    trainer = PoisonedTrainer(config(store, run, epochs=3), progress=False)
    with pytest.raises(TrainingError, match=r"at epoch 2, step 1; .*last.pt \(epoch 1\)"):
        trainer.run()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [m["epoch"] for m in metrics(run)] == [1]


def test_nan_input_exits_non_zero(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    prepare(PhantomReader(size=64, num_patients=3, slices_per_patient=2), copy, progress=False)
    import numpy as np

    inputs = np.array(SliceStore(copy).lowres_images(16))
    inputs[:] = float("nan")
    np.save(copy / "lowres" / "images_r16_area.npy", inputs)
    result = cli(
        "train",
        "--store",
        str(copy),
        "--out",
        str(tmp_path / "run"),
        "--input-size",
        "16",
        "--batch-size",
        "2",
        "--backbone-kwargs",
        '{"base_width": 4}',
        "--quiet",
    )
    assert result.returncode == 1
    assert "the loss became nan at epoch 1, step 1" in result.stderr


def test_a_guided_run_trains_on_full_frames_and_evaluates(store: Path, tmp_path: Path) -> None:
    """The guided head's run feeds the store's frames at R (the model averages them down for
    the backbone); evaluation scores every stage and draws its figure the same way."""
    run = tmp_path / "guided"
    train(config(store, run, head="guided", epochs=1, max_steps_per_epoch=2), progress=False)
    model, saved, _ = load_run(run)
    opened = SliceStore(store)
    dataset = run_dataset(saved, opened)
    assert model.guided and dataset[0]["image"].shape == (len(opened.modalities), 64, 64)
    written = evaluate_run(run, figures=True, num_slices=2, progress=False)
    result = json.loads(written[0].read_text())
    assert result["method"] == "elunet+guided@features" and result["input_size"] == 16
    assert sorted(result["scores"]["stages"], key=int) == ["16", "32", "64"]
    assert written[-1].name == "last_val_figure.png" and written[-1].stat().st_size > 10_000


def test_evaluate_baseline_and_head(store: Path, tmp_path: Path) -> None:
    baseline, head = tmp_path / "baseline", tmp_path / "head"
    folds = {"folds": 2, "fold": 0}  # two or three validation patients to pair
    train(config(store, baseline, head="none", epochs=1, **folds), progress=False)
    train(config(store, head, epochs=1, **folds), progress=False)
    written = evaluate_run(baseline, progress=False)
    assert [p.name for p in written] == [
        "last_val.json",
        "last_val.csv",
        "last_val_patients.csv",
        "last_val_summary.json",
    ]
    written = evaluate_run(head, figures=True, against=baseline, num_slices=2, progress=False)
    names = [p.name for p in written]
    assert names == [
        "last_val.json",
        "last_val.csv",
        "last_val_stages.csv",
        "last_val_patients.csv",
        "last_val_summary.json",
        "last_val_vs_baseline.csv",
        "last_val_vs_baseline.md",
        "last_val_figure.png",
    ]
    result = json.loads(written[0].read_text())
    assert result["method"] == "elunet+plain@features" and result["output_size"] == 64
    assert sorted(result["scores"]["stages"], key=int) == ["16", "32", "64"]
    for stage in result["scores"]["stages"].values():
        assert 0 <= stage["paper_jaccard"] <= 1
    assert written[-1].stat().st_size > 10_000
    # per patient: every validation patient, its voxel counts read back from the store
    opened = SliceStore(store)
    patients = result["scores"]["patients"]
    ids = opened.patient_ids()
    assert set(patients) < set(ids) and result["patients"] == len(patients) >= 2
    for pid, groups in patients.items():
        masks = np.asarray(opened.masks[opened.slices[:, 0] == ids.index(pid)])
        assert list(groups) == ["NCR", "ED", "ET", "WT", "TC"]
        assert groups["ED"]["n_ref"] == int((masks == 2).sum())
        assert groups["WT"]["n_ref"] == int((masks > 0).sum())
    summary = json.loads(written[4].read_text())
    dice = [p["metrics"]["WT"]["dice"] for p in summary["metric_per_case"]]
    assert summary["mean"]["WT"]["dice"] == pytest.approx(np.nanmean(dice))
    rows = list(csv.DictReader(written[5].open()))
    assert len(rows) == 5 * 4 and {r["n"] for r in rows if r["group"] == "WT"} == {
        str(len(patients))
    }
    assert {r["verdict"] for r in rows if r["group"] == "WT"} <= {"ahead", "level", "behind"}
    assert "difference [95% CI]" in written[6].read_text()


def test_a_run_against_itself_is_level(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(store, run, epochs=1, folds=2, fold=0), progress=False)
    written = evaluate_run(run, against=run, progress=False)
    rows = list(csv.DictReader(written[-2].open()))
    wt = {(float(r["mean"]), float(r["low"]), r["verdict"]) for r in rows if r["group"] == "WT"}
    assert wt == {(0.0, 0.0, "level")}
    other = tmp_path / "fold1"
    train(config(store, other, epochs=1, folds=2, fold=1), progress=False)
    with pytest.raises(TrainingError, match="patients differ"):
        evaluate_run(run, against=other, progress=False)


def test_config_file_and_flags(store: Path, tmp_path: Path) -> None:
    settings = tmp_path / "experiment.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "store": str(store),
                "epochs": 5,
                "head": "none",
                "backbone_kwargs": {"base_width": 4},
                "batch_size": 4,
            }
        )
    )
    run = tmp_path / "run"
    result = cli("train", "--config", str(settings), "--epochs", "1", "--out", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["head"] == "none"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["train", "--resume", "nowhere"], 1, "nothing to resume"),
        (["train", "--store", "s"], 2, "--out is required"),
        (["train", "--store", "s", "--out", "o", "--head", "big"], 2, "invalid choice: 'big'"),
        (["train", "--store", "nowhere", "--out", "o"], 1, "not a slice store"),
        (
            ["train", "--store", "STORE", "--out", "o", "--output-size", "128"],
            2,
            "differs from the store's resolution 64",
        ),
        (["evaluate", "nowhere"], 1, "no checkpoints/last.pt"),
        (["evaluate", "nowhere", "--tolerance", "-1"], 2, "--tolerance must be a finite"),
    ],
)
def test_cli_errors(argv: list[str], code: int, message: str, store: Path, tmp_path: Path) -> None:
    argv = [str(tmp_path / a) if a in ("nowhere", "o") else a for a in argv]
    argv = [str(store) if a == "STORE" else a for a in argv]
    result = cli(*argv)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_unknown_config_key(tmp_path: Path) -> None:
    settings = tmp_path / "bad.yaml"
    settings.write_text("store: s\nout: o\nlearning_rate: 0.1\n")
    result = cli("train", "--config", str(settings))
    assert (
        result.returncode == 2 and "unknown configuration keys ['learning_rate']" in result.stderr
    )


def test_fold_patients_partition() -> None:
    from upseg.engine.runs import fold_patients

    ids = [f"p{i}" for i in range(7)]
    folds = [fold_patients(ids, 3, k, seed=1) for k in range(3)]
    assert sorted(p for fold in folds for p in fold) == ids
    assert [len(fold) for fold in folds] == [3, 2, 2]
    assert fold_patients(list(reversed(ids)), 3, 0, seed=1) == folds[0]


def test_crash_between_checkpoint_and_log_is_repaired(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(store, run, epochs=2), progress=False)
    metrics_file = run / "metrics.jsonl"
    lines = metrics_file.read_text().splitlines()
    metrics_file.write_text(lines[0] + "\n")  # as if killed after last.pt, before the log line
    train(config(store, run, epochs=2), resume=True, progress=False)
    assert metrics_file.read_text().splitlines() == lines


def test_run_state_refuses_other_settings(store: Path, tmp_path: Path) -> None:
    from upseg.engine import run_state
    from upseg.engine.trainer import train_or_resume

    run = tmp_path / "run"
    assert train_or_resume(config(store, run, epochs=1), progress=False) == "trained"
    assert run_state(config(store, run, epochs=1)) == "finished"
    assert train_or_resume(config(store, run, epochs=1), progress=False) == "skipped (finished)"
    with pytest.raises(TrainingError, match=r"holds a run with other settings \(lr\)"):
        run_state(config(store, run, epochs=1, lr=0.1))
    with pytest.raises(TrainingError, match=r"other settings \(head_init\)"):
        run_state(config(store, run, epochs=1, head_init="pytorch"))

    # A run saved while PyTorch's initialisation was called "default" keeps that meaning.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["head_init"] == "upsample"
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "head_init": "default"}))
    assert run_state(config(store, run, epochs=1, head_init="pytorch")) == "finished"
    with pytest.raises(TrainingError, match=r"other settings \(head_init\)"):
        run_state(config(store, run, epochs=1))
    # A baseline has no head: whatever head_init it was saved with, it is the same run.
    (run / "config.yaml").write_text(
        yaml.safe_dump({**saved, "head": "none", "head_init": "default", "head_input": "logits"})
    )
    for init in ("default", "pytorch", "upsample"):
        assert run_state(config(store, run, epochs=1, head="none", head_init=init)) == "finished"


def test_more_cli_errors(store: Path, tmp_path: Path) -> None:
    missing = cli("train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 1 and "No such file" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1,\n")
    bad_yaml = cli("train", "--config", str(broken))
    assert bad_yaml.returncode == 2 and "not valid YAML" in bad_yaml.stderr
    resume = cli("train", "--resume", str(tmp_path), "--epochs", "5")
    assert resume.returncode == 2 and "drop --epochs" in resume.stderr
    run = tmp_path / "run"
    train(config(store, run, epochs=1), progress=False)
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    corrupt = cli("evaluate", str(run))
    assert corrupt.returncode == 1 and "last.pt: cannot read the checkpoint" in corrupt.stderr


@pytest.mark.parametrize(
    "settings",
    [
        {"lr": -1.0},
        {"lr": float("nan")},
        {"weight_decay": -1.0},
        {"workers": -1},
        {"loss": "focal"},
        {"epochs": "ten"},
        {"flips": "maybe"},
        {"max_steps_per_epoch": 0},
        {"folds": 1},
        {"schedule": "step"},
        {"warmup_epochs": 10},
        {"device": "gpu7"},
        {"backbone_kwargs": []},
    ],
)
def test_bad_settings_are_refused_before_a_run_folder_exists(
    settings: dict, store: Path, tmp_path: Path
) -> None:
    key = next(iter(settings))
    with pytest.raises(ValueError, match=key):
        config(store, tmp_path / "run", **settings)
    lines = [f"{k}: {json.dumps(v)}" for k, v in {**TINY, **settings}.items()]
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("\n".join(lines).replace("NaN", ".nan") + "\n")
    run = tmp_path / "run"
    result = cli("train", "--config", str(settings_file), "--store", str(store), "--out", str(run))
    assert result.returncode == 2 and key in result.stderr, result.stderr
    assert not run.exists()


def test_unknown_backbone_keyword_is_a_usage_error(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = cli(
        "train", "--store", str(store), "--out", str(run), "--backbone-kwargs", '{"nope": 4}'
    )
    assert result.returncode == 2 and "nope" in result.stderr, result.stderr
    assert not run.exists()


def test_run_folders_move_and_copy(store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative_store = os.path.relpath(store, tmp_path)
    original = tmp_path / "runs" / "original"
    train(config(relative_store, "runs/original", epochs=1), progress=False)
    saved = yaml.safe_load((original / "config.yaml").read_text())
    assert Path(saved["store"]).is_absolute() and saved["store_id"]
    # A copy resumes in the copy (here to a second epoch); the original stays as it was.
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    shutil.copytree(original, copy)
    (copy / "config.yaml").write_text(yaml.safe_dump({**saved, "epochs": 2}))
    before = (original / "checkpoints" / "last.pt").read_bytes()
    monkeypatch.chdir(copy.parent)
    result = cli("train", "--resume", "copy", "--quiet")
    assert result.returncode == 0, result.stderr
    assert [m["epoch"] for m in metrics(copy)] == [1, 2]
    assert [m["epoch"] for m in metrics(original)] == [1]
    assert (original / "checkpoints" / "last.pt").read_bytes() == before
    evaluated = cli("evaluate", "copy", "--quiet")  # from another folder than the run's
    assert evaluated.returncode == 0, evaluated.stderr


def test_runs_refuse_another_store(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(store, run, epochs=1), progress=False)
    assert cli("evaluate", str(run), "--quiet").returncode == 0
    scores = (run / "evaluation" / "last_val.json").read_bytes()
    other = prepare(
        PhantomReader(size=64, num_patients=5, slices_per_patient=8, seed=3),
        tmp_path / "other",
        progress=False,
    )
    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "store": str(other)}))
    for argv in (["evaluate", str(run)], ["train", "--resume", str(run)]):
        result = cli(*argv)
        assert result.returncode == 1, result.stderr
        assert "is not the one this run was trained on" in result.stderr
    assert (run / "evaluation" / "last_val.json").read_bytes() == scores
    # A run from before store fingerprints: classes, modalities and size are still checked.
    renamed = prepare(
        PhantomReader(size=64, num_patients=5, slices_per_patient=8),
        tmp_path / "s2",
        progress=False,
    )
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["modalities"] = ["a", "b", "c", "d"]
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    del saved["store_id"]
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "store": str(renamed)}))
    for name in ("last", "best"):
        state = torch.load(run / "checkpoints" / f"{name}.pt", weights_only=True)
        del state["config"]["store_id"]
        torch.save(state, run / "checkpoints" / f"{name}.pt")
    result = cli("evaluate", str(run))
    assert result.returncode == 1 and "has modalities" in result.stderr, result.stderr


def test_damaged_run_files_are_named(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(store, run, epochs=1), progress=False)
    saved_text = (run / "config.yaml").read_text()
    saved = yaml.safe_load(saved_text)
    for text, named, message in (
        ("", "config.yaml", "expected a mapping"),
        ("epochs: [1,\n", "config.yaml", "not valid YAML"),
        (yaml.safe_dump({**saved, "epochs": "ten"}), "config.yaml", "epochs"),
        (
            yaml.safe_dump({**saved, "epochs": 2, "backbone_kwargs": {"base_width": 8}}),
            "checkpoints/last.pt",
            "do not fit the model",
        ),
    ):
        (run / "config.yaml").write_text(text)
        result = cli("train", "--resume", str(run))
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"error: {run / named}: "), result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "epochs": 2}))
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_lo\n')
    result = cli("train", "--resume", str(run))
    assert result.returncode == 1 and "metrics.jsonl: line 1" in result.stderr, result.stderr


def test_train_does_not_overwrite_a_foreign_config(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "experiment"
    folder.mkdir()
    mine = f"# my notes\nstore: {store}\nepochs: 1\nbatch_size: 4\n"
    (folder / "config.yaml").write_text(mine)
    result = cli("train", "--config", str(folder / "config.yaml"), "--out", str(folder))
    assert result.returncode == 1 and "not a run folder" in result.stderr, result.stderr
    assert (folder / "config.yaml").read_text() == mine


def test_cuda_without_a_gpu_is_a_usage_error(store: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("train", "--store", str(store), "--out", str(tmp_path / "r"), "--device", "cuda")
    assert result.returncode == 2 and "no CUDA device" in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()


def test_new_runs_from_a_copied_config(store: Path, tmp_path: Path) -> None:
    """A run's config.yaml used as a template (another store, lr written as YAML reads it)."""
    first = tmp_path / "first"
    train(config(store, first, epochs=1), progress=False)
    other = prepare(
        PhantomReader(size=64, num_patients=4, slices_per_patient=4, seed=5),
        tmp_path / "other",
        progress=False,
    )
    saved = yaml.safe_load((first / "config.yaml").read_text())
    template = tmp_path / "template.yaml"
    text = yaml.safe_dump({**saved, "store": str(other)}).replace("lr: 0.001", "lr: 1e-4")
    template.write_text(text)
    assert "lr: 1e-4" in text
    second = tmp_path / "second"
    result = cli("train", "--config", str(template), "--out", str(second), "--quiet")
    assert result.returncode == 0, result.stderr
    made = yaml.safe_load((second / "config.yaml").read_text())
    assert made["lr"] == 1e-4 and made["store_id"] != saved["store_id"]


def test_an_append_cut_short_is_repaired_on_resume(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config(store, run, epochs=2), progress=False)
    metrics_file = run / "metrics.jsonl"
    lines = metrics_file.read_text().splitlines()
    metrics_file.write_text(lines[0] + "\n" + lines[1][:20])  # killed during the append
    result = cli("train", "--resume", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert metrics_file.read_text().splitlines() == lines


def test_a_features_head_trains_from_the_cli_and_loads_back(store: Path, tmp_path: Path) -> None:
    from upseg.engine import load_run, method_label, run_state

    run = tmp_path / "run"
    result = cli(
        "train",
        "--store",
        str(store),
        "--out",
        str(run),
        "--head-input",
        "features",
        "--backbone-kwargs",
        '{"base_width": 4}',
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "3",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["head_input"] == "features" and saved["head"] == "plain"
    assert 0 <= metrics(run)[-1]["val"]["paper_jaccard"] <= 1
    model, loaded, _ = load_run(run, "last")
    assert model.head_input == "features" and model.head.in_channels == 4  # ELU-Net's C_f
    assert method_label(loaded) == "elunet+plain@features"
    short = {"epochs": 1, "max_steps_per_epoch": 3}
    assert run_state(config(store, run, head_input="features", **short)) == "finished"
    with pytest.raises(TrainingError, match=r"other settings \(head_input\)"):
        run_state(config(store, run, head_input="logits", **short))


def test_runs_saved_before_head_input_read_their_logits(store: Path, tmp_path: Path) -> None:
    from upseg.engine import load_run, run_state

    run = tmp_path / "run"
    short = {"epochs": 1, "max_steps_per_epoch": 2}
    train(config(store, run, head_input="logits", **short), progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["head_input"] == "logits"
    del saved["head_input"]  # as written before the setting existed
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_state(config(store, run, head_input="logits", **short)) == "finished"
    with pytest.raises(TrainingError, match=r"other settings \(head_input\)"):
        run_state(config(store, run, **short))  # today's default reads the features
    with pytest.raises(TrainingError, match=r"other settings \(head_input\)"):
        run_state(config(store, run, head_input="features", **short))
    model, _, _ = load_run(run, "last")
    assert model.head_input == "logits" and model.logit_conv is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"head": "skip", "head_input": "features"}, "needs the plain or guided head"),
        ({"head": "none", "head_input": "features"}, "needs the plain or guided head"),
        ({"head_input": "pixels"}, "unknown head_input 'pixels'"),
    ],
)
def test_bad_head_inputs_are_refused(settings: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(store="s", out=str(tmp_path / "o"), **settings)
