"""A run folder and what can be read back from it: the public run API of upseg.engine.

RUN_DIR/config.yaml       the resolved configuration
RUN_DIR/metrics.jsonl     one line per epoch: loss, validation scores at R, speed
RUN_DIR/checkpoints/      last.pt and best.pt (by validation foreground Dice), written
                          atomically; torch.load(..., weights_only=True) reads them

A run folder may move (its settings keep the store as an absolute path plus `store_id`, a
fingerprint of the store's data), so a run is found again by its folder, and its store by
that fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from upseg.data import LowResPairs, SliceStore
from upseg.engine.config import TrainConfig
from upseg.errors import TrainingError
from upseg.io import atomic_path
from upseg.models import BASELINE, LowResSegmenter, build, method_name

CHECKPOINTS = ("last", "best")  # checkpoints/<name>.pt: after the last epoch, best validation
SPLITS = ("val", "train", "all")  # the patients of a run that run_dataset reads


def store_fingerprint(store: SliceStore) -> str:
    """A short hash of the manifest's description of a store: format, patients and their
    slice ranges, split, size, classes and modalities (not the pixels). A store prepared again
    from the same data with the same settings keeps it; the folder it lives in does not
    count."""
    manifest = store.manifest
    content = {
        "format": manifest.get("format"),
        "size": manifest.get("size"),
        "num_slices": manifest.get("num_slices"),
        "class_names": manifest.get("class_names"),
        "modalities": manifest.get("modalities"),
        "patients": [(p.get("id"), p.get("start"), p.get("count")) for p in manifest["patients"]],
        "split": manifest.get("split"),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def check_store(config: TrainConfig, store: SliceStore, run: str | Path) -> None:
    """A TrainingError when `store` is not the store the run at `run` was trained on."""
    if config.store_id is not None and config.store_id != store_fingerprint(store):
        raise TrainingError(
            f"{run}: the store {store.path} is not the one this run was trained on (other "
            "patients, split, size, classes or modalities); point the run at its own store"
        )


def fold_patients(patient_ids: list[str], folds: int, fold: int, seed: int) -> list[str]:
    """Validation patients of `fold` in a seeded, patient-level k-fold partition."""
    ids = sorted(patient_ids)
    if folds > len(ids):
        raise ValueError(f"{folds} folds need at least {folds} patients, the store has {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[fold::folds])


def split_patients(config: TrainConfig, store: SliceStore) -> tuple[list[str], list[str]]:
    """(train, validation) patients: the store's split, or fold `config.fold` of k."""
    if config.folds:
        val = fold_patients(store.patient_ids(), config.folds, config.fold, config.split_seed)
        return [p for p in store.patient_ids() if p not in set(val)], val
    return store.patient_ids("train"), store.patient_ids("val")


def run_patients(config: TrainConfig, store: SliceStore, split: str) -> list[str]:
    """The patients of a run's split: 'train', 'val' or 'all'."""
    train, val = split_patients(config, store)
    return dict(zip(SPLITS, (val, train, store.patient_ids()), strict=True))[split]


def feed_size(config: TrainConfig, store: SliceStore) -> int:
    """Side of the images a run's model takes: the store's R for the guided head (it reads
    the full image and averages it down itself), else the input size r."""
    return store.size if config.head == "guided" else config.input_size


def run_dataset(config: TrainConfig, store: SliceStore, split: str = "val") -> LowResPairs:
    """The (input at r, or at R for a guided head; mask at R) pairs of a run's split, made as
    in its training."""
    return LowResPairs(
        store,
        feed_size(config, store),
        downsample=config.downsample,
        patients=run_patients(config, store, split),
    )


def method_label(config: TrainConfig) -> str:
    return method_name(config.backbone, config.head, config.head_init, config.head_input)


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save under a temporary name, renamed over `path`: a crash keeps the old file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: checkpoint not found") from None
    except Exception as error:  # truncated or foreign files raise many types
        raise TrainingError(f"{path}: cannot read the checkpoint ({error})") from None


# where and how fast a run trains, not what it trains: a run may resume under other values
EXECUTION_SETTINGS = ("device", "workers")
# where the run and its store live: a run folder (or its store) may move; store_id says
# whether the data is the same
LOCATION_SETTINGS = ("out", "store", "store_id")


def read_run_config(run: str | Path) -> TrainConfig:
    """The TrainConfig saved in RUN/config.yaml, with `out` set to `run` (where the folder is
    now); a TrainingError naming the file when it is missing or damaged."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise TrainingError(f"{run}: no config.yaml; is this a run folder?")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise TrainingError(f"{path}: not valid YAML ({reason})") from None
    if not isinstance(values, dict):
        found = type(values).__name__
        raise TrainingError(f"{path}: expected a mapping of settings, found {found}")
    try:
        config = TrainConfig.from_stored(values)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"{path}: {error}") from None
    config.out = str(run)
    return config


def changed_settings(run: Path, config: TrainConfig) -> list[str]:
    """Settings in which the run saved at `run` differs from `config` (settings added to
    upseg since that run count with what it trained with, config.FORMER_DEFAULTS;
    EXECUTION_SETTINGS and the locations do not count; the store's fingerprint counts where
    both sides know it)."""
    saved = dataclasses.asdict(read_run_config(run))
    wanted = dataclasses.asdict(config)
    ignored = (*EXECUTION_SETTINGS, *LOCATION_SETTINGS)
    changed = [k for k in wanted if k not in ignored and saved.get(k) != wanted[k]]
    ids = (saved["store_id"], wanted["store_id"])
    if None not in ids and ids[0] != ids[1]:
        changed.append("store (other data)")
    elif None in ids and Path(saved["store"]).resolve() != Path(wanted["store"]).resolve():
        changed.append("store")  # a run from before fingerprints: its path must match
    return sorted(changed)


def run_state(config: TrainConfig) -> str:
    """'new', 'partial' (resumable) or 'finished' for the run directory `config.out`.
    A directory holding a run with other settings is a TrainingError."""
    run = Path(config.out)
    if not (run / "checkpoints" / "last.pt").is_file():
        return "new"
    changed = changed_settings(run, config)
    if changed:
        raise TrainingError(
            f"{run}: holds a run with other settings ({', '.join(changed)}); "
            "use another output folder or remove it"
        )
    done = len(read_metrics(run / "metrics.jsonl")) >= config.epochs
    return "finished" if done else "partial"


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl ([] when it is missing); a TrainingError naming the file
    and line when one is damaged."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # an append cut short: unwritten (the checkpoint holds its record)
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            records.append(record)
            int(record["epoch"])
        except (ValueError, TypeError, KeyError):
            raise TrainingError(
                f"{path}: line {number} is not an epoch record; the file is damaged (the "
                "checkpoints hold the last epoch's record: remove the damaged lines and resume)"
            ) from None
    return records


def build_model(config: TrainConfig, store: SliceStore) -> LowResSegmenter:
    return model_for(config, store.class_names, store.modalities, store.size)


def model_for(
    config: TrainConfig, class_names: list[str], modalities: list[str], size: int
) -> LowResSegmenter:
    """The untrained model of `config` for a store of these classes, modalities and size R."""
    if config.loss == "bce" and len(class_names) != 2:
        raise ValueError(
            f"loss 'bce' is for two classes (background + one), the store has "
            f"{len(class_names)}: {', '.join(class_names)}"
        )
    if config.output_size not in (None, size):
        raise ValueError(
            f"output_size {config.output_size} differs from the store's resolution {size}: "
            f"prepare the store with --size {config.output_size}, or leave --output-size out"
        )
    num_classes = len(class_names)
    if config.loss == "bce":
        num_classes = 1
    return build(
        config.backbone,
        len(modalities),
        num_classes,
        config.input_size,
        config.output_size or size,
        head=None if config.head == BASELINE else config.head,
        head_init=config.head_init,
        head_input=config.head_input,
        **config.backbone_kwargs,
    )


def load_run(
    run_dir: str | Path, checkpoint: str = "best"
) -> tuple[LowResSegmenter, TrainConfig, dict]:
    """The model of a run directory with the weights of `checkpoint` (best or last). The
    store is read only for checkpoints that do not record their data ("data")."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise TrainingError(f"{run_dir}: no checkpoints/{checkpoint}.pt; is this a run folder?")
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_stored(state["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise TrainingError(f"{path}: unusable configuration in the checkpoint ({error})") from None
    config.out = str(run_dir)
    if "data" in state:
        model = model_for(
            config, state["class_names"], state["modalities"], int(state["data"]["size"])
        )
    else:
        model = build_model(config, SliceStore(config.store))
    load_weights(model, state, path)
    return model.eval(), config, state


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load a checkpoint's weights; a TrainingError naming it when they belong to another
    model (say, config.yaml was edited to another backbone)."""
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise TrainingError(
            f"{path}: the weights do not fit the model that the run's configuration builds "
            f"({first})"
        ) from None


def open_run_store(config: TrainConfig, state: dict, run: str | Path) -> SliceStore:
    """The store of a run, checked with check_run_store."""
    store = SliceStore(config.store)
    check_run_store(config, state, run, store)
    return store


def check_run_store(config: TrainConfig, state: dict, run: str | Path, store: SliceStore) -> None:
    """A TrainingError unless `store` is what the run was trained on: its fingerprint where
    the run recorded one, else the classes, modalities and size in its checkpoint."""
    check_store(config, store, run)
    recorded = {
        "classes": state.get("class_names"),
        "modalities": state.get("modalities"),
        "size": (state.get("data") or {}).get("size"),
    }
    found = {"classes": store.class_names, "modalities": store.modalities, "size": store.size}
    for key, value in recorded.items():
        if value is not None and value != found[key]:
            raise TrainingError(
                f"{run}: the store {store.path} has {key} {found[key]}, the run was trained "
                f"with {value}; point the run at its own store"
            )
