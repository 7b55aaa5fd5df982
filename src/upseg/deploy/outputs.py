"""Checks on where a command will write, made before it does any work: a destination that
cannot be written is a ValueError (bad usage) naming the flag, the path and the problem."""

from __future__ import annotations

import os
from pathlib import Path


def _check_ancestors(path: Path, flag: str) -> None:
    """The nearest existing folder above `path` must be a writable folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {path}: cannot write in {parent} (permission denied)")
            return


def check_output_file(path: str | Path, flag: str) -> Path:
    """A file can be written (created or replaced) at `path`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name inside it or elsewhere")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot replace it (permission denied)")
    _check_ancestors(path, flag)
    return path


def check_output_folder(path: str | Path, flag: str, names: tuple[str, ...] = ()) -> Path:
    """Files `names` can be written inside the folder `path` (created if missing)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {path}: is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: cannot write in it (permission denied)")
        for name in names:
            if (path / name).is_dir():
                raise ValueError(f"{flag} {path}: {path / name} is a folder, not a file")
    else:
        _check_ancestors(path, flag)
    return path
