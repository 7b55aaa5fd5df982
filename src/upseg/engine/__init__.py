"""Runs: configuration, training and what can be read back from a run folder.

This package's namespace is the public run API that deploy/ and experiments/ use: a run's
settings, its model and store, its data split, and scoring at full resolution. Training
itself is upseg.engine.trainer.
"""

from upseg.engine.config import TrainConfig, resolve_device
from upseg.engine.runs import (
    EXECUTION_SETTINGS,
    LOCATION_SETTINGS,
    build_model,
    check_run_store,
    load_run,
    method_label,
    model_for,
    open_run_store,
    read_metrics,
    read_run_config,
    run_dataset,
    run_patients,
    run_state,
    split_patients,
    store_fingerprint,
)
from upseg.engine.scoring import score

__all__ = [
    "EXECUTION_SETTINGS",
    "LOCATION_SETTINGS",
    "TrainConfig",
    "build_model",
    "check_run_store",
    "load_run",
    "method_label",
    "model_for",
    "open_run_store",
    "read_metrics",
    "read_run_config",
    "resolve_device",
    "run_dataset",
    "run_patients",
    "run_state",
    "score",
    "split_patients",
    "store_fingerprint",
]
