"""Writing result files atomically (a crash never leaves half a file behind)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: str | Path, keep_suffix: bool = False) -> Path:
    """The hidden name a file is written under before it is renamed to `path`:
    .NAME.PID.tmp, or .STEM.PID.tmpSUFFIX with `keep_suffix` (for writers that pick the
    format from the suffix)."""
    path = Path(path)
    if keep_suffix:
        return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary sibling of `path` for the block to write; renamed over `path` when the
    block ends without an error, removed otherwise (Ctrl-C included), so `path` is either
    the old file or the whole new one."""
    path = Path(path)
    tmp = temporary_sibling(path, keep_suffix)
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
