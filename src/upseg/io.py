"""Writing files and folders atomically (a crash never leaves half of one behind): every
writer in upseg goes through these."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(
    path: str | Path, keep_suffix: bool = False, suffix: str | None = None
) -> Path:
    """The hidden name a file is written under before it is renamed to `path`:
    .NAME.PID.tmp, or .STEM.PID.tmpSUFFIX with `keep_suffix` (for writers that pick the
    format from the suffix); `suffix` names a longer one to keep (.nii.gz)."""
    path = Path(path)
    if keep_suffix and suffix is None:
        suffix = path.suffix
    if suffix and path.name.endswith(suffix):
        return path.with_name(f".{path.name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(
    path: str | Path, keep_suffix: bool = False, suffix: str | None = None
) -> Iterator[Path]:
    """A temporary sibling of `path` for the block to write; renamed over `path` when the
    block ends without an error, removed otherwise (Ctrl-C included), so `path` is either
    the old file or the whole new one."""
    path = Path(path)
    tmp = temporary_sibling(path, keep_suffix, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: str | Path, data: object) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """Rows of dicts with the same keys -> CSV with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def written_together(paths: list[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside `paths` (same suffix, so a figure keeps its format) for the
    block to write; all are renamed into place when it ends without an error, none
    otherwise, so files that belong together never mix with an earlier set."""
    staged = [temporary_sibling(p, keep_suffix=True) for p in paths]
    try:
        yield staged
        for tmp, path in zip(staged, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing_folder(path: str | Path, work: str | Path | None = None) -> Iterator[Path]:
    """An empty hidden folder (`work`, by default the temporary sibling of `path`) for the
    block to fill. When the block ends without an error it takes the place of `path`: a
    folder already there is set aside first, put back if the rename fails, and removed once
    the new one is in place. Otherwise the work folder is removed (Ctrl-C included), so
    `path` is either the old folder or the whole new one."""
    path = Path(path)
    work = temporary_sibling(path) if work is None else Path(work)
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    for stale in (work, old):
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(work, path)
        except BaseException:
            if old.exists():
                os.rename(old, path)
            raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
