"""Writing result files atomically (a crash never leaves half a file behind)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
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
    staged = [p.with_name(f".{p.stem}.{os.getpid()}.tmp{p.suffix}") for p in paths]
    try:
        yield staged
        for tmp, path in zip(staged, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
