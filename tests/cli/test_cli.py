import csv
import subprocess
import sys

import pytest

from tests.helpers import run_cli
from upseg.cli import main


def test_profile_prints_a_table_and_writes_csv(tmp_path, capsys) -> None:
    out = tmp_path / "cost.csv"
    code = main(
        [
            "profile",
            "--backbones",
            "elunet",
            "--input-sizes",
            "16",
            "32",
            "--in-channels",
            "1",
            "--classes",
            "1",
            "--no-memory",
            "--csv",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| elunet+plain | 16 | 256 | 3,375,789 | 60 |" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["method"] for r in rows] == ["elunet", "elunet+plain", "elunet+skip"] * 2
    assert int(rows[2]["head_params"]) == 143


def test_profile_skips_impossible_configurations(capsys) -> None:
    code = main(
        [
            "profile",
            "--backbones",
            "elunet",
            "--heads",
            "skip",
            "plain",
            "--input-sizes",
            "64",
            "--output-size",
            "256",
            "--no-memory",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "elunet+plain" in captured.out
    assert "skipped elunet+skip at 64" in captured.err


def test_profile_with_nothing_buildable_fails(capsys) -> None:
    assert main(["profile", "--input-sizes", "20"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "--backbones", "resnet"], "invalid choice: 'resnet'"),
        (["profile", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["profile", "--input-sizes", "sixteen"], "invalid int value"),
    ],
)
def test_wrong_flags_exit_non_zero_with_a_message(argv: list[str], message: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2
    assert message in result.stderr


def test_console_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "upseg", "profile", "--frobnicate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "unrecognized arguments: --frobnicate" in result.stderr
