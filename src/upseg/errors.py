"""Errors that the command line reports as one line and exit code 1."""

from upseg.data.errors import DataError


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, a run directory that does not fit the request)."""


__all__ = ["DataError", "TrainingError"]
