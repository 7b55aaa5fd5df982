from __future__ import annotations

import csv
from pathlib import Path

import pytest

from upseg.io import atomic_path, write_csv, write_json, write_text_atomic, written_together


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
