from __future__ import annotations

from pathlib import Path

import pytest

from upseg.experiments.demo import run_demo


def test_demo_end_to_end_and_rerun(tmp_path: Path, capsys) -> None:
    small = {"num_patients": 4, "slices_per_patient": 6}
    result = run_demo(
        tmp_path, resolutions=(16,), epochs=1, batch_size=8, progress=False, phantom=small
    )
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["elunet", "elunet+plain@features"]  # the recipe
    baseline, head = rows
    # 4 stages at Nc = 4; stage 1's transposed conv reads ELU-Net's C_f = 16 features, not Nc
    assert head["params"] - baseline["params"] == 4 * (13 * 16 + 2 * 4) + (16 - 4) * 4 * 4
    assert 0 < baseline["gmac"] < head["gmac"] < baseline["gmac"] + 0.05
    assert all(0 <= r["foreground_dice"] <= 1 and r["latency_ms"] > 0 for r in rows)
    assert [r["group"] for r in rows] == ["WT", "WT"]  # BraTS-like phantom: whole tumour
    assert all(0 <= r["patient_dice"] <= 1 and r["patient_hd95"] >= 0 for r in rows)
    assert baseline["vs_baseline"] == "" and head["vs_baseline"] == "too few patients"
    for path in result["figures"]:
        assert path.is_file() and path.stat().st_size > 5_000
    printed = capsys.readouterr().out
    assert "| elunet+plain@features | 16 | 256 |" in printed
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    metrics = tmp_path / "runs" / "plain_r16" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    again = run_demo(
        tmp_path, resolutions=(16,), epochs=1, batch_size=8, progress=False, phantom=small
    )
    assert metrics.stat().st_mtime_ns == before  # finished runs are reused, not retrained
    assert again["rows"][1]["foreground_dice"] == head["foreground_dice"]


def test_demo_refuses_a_folder_of_other_data(tmp_path: Path) -> None:
    from upseg.errors import TrainingError
    from upseg.experiments.demo import _store

    small = {"num_patients": 2, "slices_per_patient": 2, "size": 64}
    path = _store(tmp_path, None, None, small, progress=False)
    manifest = (path / "manifest.json").read_bytes()
    assert _store(tmp_path, None, None, small, progress=False) == path  # same data: reused
    with pytest.raises(TrainingError, match="holds a demo of other data"):
        _store(tmp_path, None, None, {**small, "num_patients": 3}, progress=False)
    assert (path / "manifest.json").read_bytes() == manifest
