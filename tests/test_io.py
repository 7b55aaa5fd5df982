from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from upseg.io import (
    atomic_path,
    replacing_folder,
    temporary_sibling,
    write_csv,
    write_json,
    write_text_atomic,
    written_together,
)


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    with atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".onnx" and tmp.name.startswith(".model.")
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_writers(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "a" / "b.md", "# hi\n")
    assert (tmp_path / "a" / "b.md").read_text() == "# hi\n"
    write_json(tmp_path / "c.json", {"x": [1, 2]})
    assert (tmp_path / "c.json").read_text() == '{\n "x": [\n  1,\n  2\n ]\n}\n'
    write_csv(tmp_path / "d.csv", [{"a": 1, "b": 2}, {"a": 3, "b": 4}])
    assert list(csv.DictReader((tmp_path / "d.csv").open())) == [
        {"a": "1", "b": "2"},
        {"a": "3", "b": "4"},
    ]


def test_files_written_together_or_not_at_all(tmp_path: Path) -> None:
    paths = [tmp_path / "x.md", tmp_path / "y.png"]
    paths[0].write_text("earlier")
    with pytest.raises(OSError), written_together(paths) as staged:
        staged[0].write_text("new")
        raise OSError("the figure failed")
    assert paths[0].read_text() == "earlier" and not paths[1].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.md"]
    with written_together(paths) as staged:
        for path in staged:
            path.write_text("new")
    assert [p.read_text() for p in paths] == ["new", "new"]


def test_a_temporary_name_can_keep_a_double_suffix(tmp_path: Path) -> None:
    target = tmp_path / "case.nii.gz"
    pid = os.getpid()
    assert temporary_sibling(target, suffix=".nii.gz").name == f".case.{pid}.tmp.nii.gz"
    assert temporary_sibling(target, keep_suffix=True).name == f".case.nii.{pid}.tmp.gz"
    assert temporary_sibling(target).name == f".case.nii.gz.{pid}.tmp"
    with atomic_path(target, suffix=".nii.gz") as tmp:
        tmp.write_text("mask")
    assert target.read_text() == "mask" and sorted(tmp_path.iterdir()) == [target]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), replacing_folder(target) as work:
        (work / "half.txt").write_text("half")
        raise RuntimeError("the writer failed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(tmp_path.iterdir()) == [target]  # no work folder left
    with replacing_folder(target) as work:
        assert work.is_dir() and not any(work.iterdir()) and work.name.startswith(".bundle.")
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(tmp_path.iterdir()) == [target]  # the old folder is gone too


def test_a_folder_that_cannot_move_in_puts_the_old_one_back(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "store"
    target.mkdir()
    (target / "old.txt").write_text("old")
    rename = os.rename

    def refuse_the_new_folder(source, destination) -> None:
        if Path(destination) == target and Path(source).name.endswith(".tmp"):
            raise OSError("no room")
        rename(source, destination)

    monkeypatch.setattr("upseg.io.os.rename", refuse_the_new_folder)
    with pytest.raises(OSError, match="no room"), replacing_folder(target) as work:
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(tmp_path.iterdir()) == [target]
