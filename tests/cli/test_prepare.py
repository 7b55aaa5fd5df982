from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.files import brats_case, lgg_subfolder_tree, truncate
from tests.helpers import run_cli
from upseg.cli import main
from upseg.data import SliceStore

run = run_cli


def test_prepare_phantom(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "prepare",
            "--format",
            "phantom",
            "--size",
            "64",
            "--patients",
            "4",
            "--slices-per-patient",
            "2",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert code == 0
    assert "8 slices of 4 x 64 x 64 from 4 patients (3 train, 1 val)" in capsys.readouterr().out
    store = SliceStore(tmp_path / "p")
    assert store.manifest["provenance"]["command"].startswith("upseg prepare --format phantom")


def test_prepare_brats_files(tmp_path: Path) -> None:
    for i in range(3):
        brats_case(tmp_path / "src", f"Brats18_T_{i}", seed=i)
    result = run(
        "prepare",
        str(tmp_path / "src"),
        "--format",
        "brats",
        "--out",
        str(tmp_path / "s"),
        "--modalities",
        "flair",
        "t2",
    )
    assert result.returncode == 0, result.stderr
    assert SliceStore(tmp_path / "s").modalities == ["flair", "t2"]


def test_bad_file_exit_code_and_message(tmp_path: Path) -> None:
    brats_case(tmp_path / "src", "Brats18_T_0")
    brats_case(tmp_path / "src", "Brats18_T_1")
    truncate(tmp_path / "src" / "Brats18_T_1" / "Brats18_T_1_seg.nii.gz")
    result = run(
        "prepare", str(tmp_path / "src"), "--format", "brats", "--out", str(tmp_path / "s")
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Brats18_T_1_seg.nii.gz" in last and "truncated" in last
    assert not (tmp_path / "s").exists()


def test_empty_folder_exit_code(tmp_path: Path) -> None:
    result = run("prepare", str(tmp_path), "--format", "folder", "--out", str(tmp_path / "s"))
    assert result.returncode == 1
    assert "no images/ sub-folder" in result.stderr


def test_prepare_lgg_patient_subfolders(tmp_path: Path) -> None:
    """kaggle_3m as downloaded: one sub-folder per patient of X.tif + X_mask.tif."""
    counts = {"TCGA_HT_7692_19960724": 3, "TCGA_CS_4941_19960909": 2, "TCGA_DU_5849_19950405": 4}
    written = lgg_subfolder_tree(tmp_path / "kaggle_3m", counts)
    out = tmp_path / "s"
    result = run(
        "prepare",
        str(tmp_path / "kaggle_3m"),
        "--format",
        "folder",
        "--layout",
        "suffix",
        "--size",
        "32",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "9 slices of 3 x 32 x 32 from 3 patients" in result.stdout
    store = SliceStore(out)
    assert store.patient_ids() == sorted(counts)
    assert {p["id"]: p["count"] for p in store.manifest["patients"]} == counts
    for patient in store.manifest["patients"]:
        for k, name in enumerate(patient["geometry"]["files"]):
            image, mask = written[name]
            assert name.startswith(patient["id"] + "/")
            assert np.array_equal(store.masks[patient["start"] + k], mask // 255)
            channels = np.moveaxis(image, -1, 0).astype(np.float64)
            mean = channels.mean(axis=(1, 2), keepdims=True)
            expected = (channels - mean) / channels.std(axis=(1, 2), keepdims=True)
            np.testing.assert_allclose(store.images[patient["start"] + k], expected, atol=2e-2)


def test_empty_patient_subfolders_exit_code(tmp_path: Path) -> None:
    (tmp_path / "src" / "TCGA_CS_4941_19960909").mkdir(parents=True)
    result = run(
        "prepare",
        str(tmp_path / "src"),
        "--format",
        "folder",
        "--layout",
        "suffix",
        "--out",
        str(tmp_path / "s"),
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'src'}: no image/mask pairs found" in result.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["prepare", "x", "--format", "brats", "--modality", "T2", "--out", "o"],
            "--modality applies to --format decathlon, not brats",
        ),
        (["prepare", "--format", "brats", "--out", "o"], "needs a SOURCE folder"),
        (["prepare", "x", "--format", "phantom", "--out", "o"], "takes no SOURCE"),
        (
            ["prepare", "x", "--format", "folder", "--values", "0-0", "--out", "o"],
            "pixel:class pairs",
        ),
        (["prepare", "x", "--format", "nifti", "--out", "o"], "invalid choice: 'nifti'"),
        (["prepare", "x", "--format", "brats"], "required: --out"),
    ],
)
def test_wrong_flags(argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["x", "--format", "folder", "--patient-regex", "("], "--patient-regex '(' is not a valid"),
        (["x", "--format", "folder", "--values", "0:0,255:-1"], "--values: class -1"),
        (["x", "--format", "folder", "--values", "0:0,255:300"], "--values: class 300"),
        (["x", "--format", "folder", "--values=-1:0,255:1"], "--values: pixel value -1"),
        (["x", "--format", "folder", "--size", "0"], "(--size) must be between 1 and"),
        (["x", "--format", "decathlon", "--size", "0"], "(--size) must be between 1 and"),
        (["x", "--format", "brats", "--size", "-8"], "(--size) must be between 1 and"),
        (["--format", "phantom", "--size", "0"], "(--size) must be between 1 and"),
        (["--format", "phantom", "--size", "-8"], "(--size) must be between 1 and"),
        (["--format", "phantom", "--size", "100000"], "(--size) must be between 1 and"),
        (["--format", "phantom", "--patients", "0"], "(--patients) must be an integer >= 2"),
        (["--format", "phantom", "--slices-per-patient", "0"], "(--slices-per-patient) must be"),
        (["--format", "phantom", "--seed", "-1"], "(--seed) must be a non-negative integer"),
        # checked before the (missing) folder is looked at: a usage error, not a data error
        (["x", "--format", "folder", "--val-fraction", "1"], "(--val-fraction) must be in [0, 1)"),
        (["x", "--format", "brats", "--val-fraction", "nan"], "(--val-fraction) must be in"),
    ],
)
def test_bad_flag_values_exit_2_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("prepare", *flags, "--out", "store")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert list(tmp_path.iterdir()) == []
