"""DataError: one clear message that names the offending file and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. str() is '<path>: <problem>'."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
