"""Training: one run = one model on one slice store, written to a run directory.

RUN_DIR/config.yaml       the resolved configuration
RUN_DIR/metrics.jsonl     one line per epoch: loss, validation scores at R, speed
RUN_DIR/checkpoints/      last.pt and best.pt (by validation foreground Dice), written
                          atomically; torch.load(..., weights_only=True) reads them

Every epoch reseeds from (seed, epoch), so a run resumed from the last epoch-end checkpoint
replays the interrupted epoch exactly and ends where an uninterrupted run would (bit-exact
with `deterministic`). Under torchrun the model trains with DistributedDataParallel (gloo on
CPU, nccl on GPU); rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from upseg.data import LowResPairs, SliceStore
from upseg.data.resize import DOWNSAMPLE_MODES
from upseg.errors import TrainingError
from upseg.evaluate import score
from upseg.io import atomic_path, write_text_atomic
from upseg.losses import (
    BASE_LOSSES,
    STAGE_WEIGHTS,
    TARGET_RESIZES,
    MultiScaleLoss,
    native,
    stage_ce,
)
from upseg.models import (
    DEFAULT_HEAD_INIT,
    DEFAULT_HEAD_INPUT,
    HEAD_INPUTS,
    LowResSegmenter,
    build,
    method_name,
    resolve_head_init,
)
from upseg.runtime import keep_freed_memory
from upseg.schedule import SCHEDULES, learning_rate

HEADS = ("plain", "skip", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    store: str
    out: str
    backbone: str = "elunet"
    head: str = "plain"  # plain | skip | none
    head_init: str = DEFAULT_HEAD_INIT  # upsample | bilinear | pytorch
    head_input: str = DEFAULT_HEAD_INPUT  # logits | features (plain head only)
    input_size: int = 16
    output_size: int | None = None  # default: the store's size R
    backbone_kwargs: dict = field(default_factory=dict)
    loss: str = "ce"
    target_resize: str = "nearest"
    stage_weights: str = "equal"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine | poly, per optimiser step (upseg.schedule)
    warmup_epochs: int = 0
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    downsample: str = "area"
    flips: bool = True
    workers: int = 0
    bf16: bool = False
    channels_last: bool = False
    device: str = "auto"
    deterministic: bool = False
    folds: int = 0  # > 0: patient-level k-fold cross-validation, validating on `fold`
    fold: int = 0
    split_seed: int = 0  # the fold partition; separate from `seed` so seeds share folds
    max_steps_per_epoch: int | None = None

    store_id: str | None = None  # fingerprint of the store the run trains on (store_fingerprint)

    def __post_init__(self) -> None:
        for key in ("store", "out"):  # Path objects welcome
            if isinstance(getattr(self, key), Path):
                setattr(self, key, str(getattr(self, key)))
        for key in ("lr", "weight_decay"):  # YAML reads 1e-4 (no dot) as a string
            value = getattr(self, key)
            if isinstance(value, str):
                with contextlib.suppress(ValueError):  # else the type check names it
                    setattr(self, key, float(value))
        _check_types(self)
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        # A baseline has no head to initialise: one value, so baselines never differ by it.
        self.head_init = (
            DEFAULT_HEAD_INIT if self.head == "none" else resolve_head_init(self.head_init)
        )
        if self.head_input not in HEAD_INPUTS:
            raise ValueError(f"unknown head_input {self.head_input!r}; choose one of {HEAD_INPUTS}")
        if self.head_input != DEFAULT_HEAD_INPUT and self.head != "plain":
            raise ValueError(
                f"head_input {self.head_input!r} needs the plain head, not head {self.head!r}"
            )
        for key, allowed in (
            ("optimizer", OPTIMIZERS),
            ("loss", BASE_LOSSES),
            ("target_resize", TARGET_RESIZES),
            ("stage_weights", STAGE_WEIGHTS),
            ("downsample", DOWNSAMPLE_MODES),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose one of {allowed}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, not {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be zero or positive, not {self.weight_decay}")
        for key in ("input_size", "output_size", "max_steps_per_epoch"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be at least 1, not {value}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"warmup_epochs must be 0..{self.epochs - 1} (fewer than epochs), "
                f"not {self.warmup_epochs}"
            )
        if self.workers < 0:
            raise ValueError(f"workers must be zero or more, not {self.workers}")
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (the store's split) or at least 2, not {self.folds}")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ValueError(f"fold {self.fold} is outside 0..{self.folds - 1}")
        if self.device != "auto":
            parse_device(self.device)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        )
        if missing:
            raise ValueError(f"missing configuration keys {missing}")
        return cls(**values)


def _type_fits(value: object, hint: object) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_fits(value, part) for part in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(hint) or hint)  # type: ignore[arg-type]


def _check_types(config: TrainConfig) -> None:
    """A ValueError naming the first setting whose value has the wrong type (e.g. a YAML
    config with `epochs: ten` or `flips: maybe`)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _type_fits(value, hints[f.name]):
            expected = str(hints[f.name]).replace("<class '", "").replace("'>", "")
            raise ValueError(f"setting {f.name} must be {expected}, not {value!r}")


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


def method_label(config: TrainConfig) -> str:
    return method_name(config.backbone, config.head, config.head_init, config.head_input)


def parse_device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this machine has no CUDA device")
    return device


def _atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"{path}: {error}") from None
    config.out = str(run)
    return config


def changed_settings(run: Path, config: TrainConfig) -> list[str]:
    """Settings in which the run saved at `run` differs from `config` (settings added to
    upseg since that run count with their defaults; EXECUTION_SETTINGS and the locations do
    not count; the store's fingerprint counts where both sides know it)."""
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


def train_or_resume(config: TrainConfig, progress: bool = True) -> str:
    """Train a new run, resume a partial one, leave a finished one; returns what it did."""
    state = run_state(config)
    if state != "finished":
        train(config, resume=state == "partial", progress=progress)
    return {"new": "trained", "partial": "resumed", "finished": "skipped (finished)"}[state]


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
        head=None if config.head == "none" else config.head,
        head_init=config.head_init,
        head_input=config.head_input,
        **config.backbone_kwargs,
    )


class Trainer:
    """Runs (or resumes) one training run; `run()` returns the last epoch's metrics."""

    def __init__(self, config: TrainConfig, resume: bool = False, progress: bool = True) -> None:
        config = dataclasses.replace(config)  # store_id is filled in below
        self.config = config
        self.progress = progress
        self.run_dir = Path(config.out)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(config.device)
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.main = self.rank == 0
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.store = SliceStore(config.store)
        if resume:
            check_store(config, self.store, self.run_dir)
        config.store_id = store_fingerprint(self.store)
        self._datasets()
        torch.manual_seed(config.seed)
        self.model = build_model(config, self.store).to(self.device)
        self._prepare_run_dir(resume)  # only once the configuration has proved buildable
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = MultiScaleLoss(
            1 if config.loss == "bce" else len(self.store.class_names),
            base=config.loss,
            target_resize=config.target_resize,
            weights=config.stage_weights,
        )
        self._note_native_kernel()
        self.optimizer = self._optimizer()
        self.start_epoch, self.best_score = 0, -math.inf
        self.saved_epoch = 0  # epoch of checkpoints/last.pt
        if resume:
            self._load_last()
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)

    # -- set-up --------------------------------------------------------------------------
    def _prepare_run_dir(self, resume: bool) -> None:
        checkpoints = self.run_dir / "checkpoints"
        if resume:
            if not (checkpoints / "last.pt").is_file():
                raise TrainingError(f"{self.run_dir}: nothing to resume (no checkpoints/last.pt)")
            changed = changed_settings(self.run_dir, self.config)
            if changed:
                raise TrainingError(
                    f"{self.run_dir}: --resume needs the run's own configuration; "
                    f"these settings differ: {changed}"
                )
            return
        if self.main:
            if (self.run_dir / "metrics.jsonl").exists():
                raise TrainingError(
                    f"{self.run_dir}: a run already exists here; use --resume to continue it "
                    "or choose another --out"
                )
            if (self.run_dir / "config.yaml").exists() and not checkpoints.is_dir():
                raise TrainingError(
                    f"{self.run_dir}: holds a config.yaml but is not a run folder; choose "
                    "another --out (upseg would overwrite that file)"
                )
            checkpoints.mkdir(parents=True, exist_ok=True)
            saved = dataclasses.asdict(self.config)
            saved["store"] = str(Path(self.config.store).resolve())  # found from any folder
            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(saved, sort_keys=False))

    def _datasets(self) -> None:
        config = self.config
        train, val = split_patients(config, self.store)
        self.train_set = LowResPairs(
            self.store,
            config.input_size,
            downsample=config.downsample,
            flips=config.flips,
            patients=train,
        )
        self.val_set = LowResPairs(
            self.store, config.input_size, downsample=config.downsample, patients=val
        )
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            part = "training" if len(self.train_set) == 0 else "validation"
            raise TrainingError(
                f"{config.store}: the {part} patients hold no slices; prepare the store with a "
                "--val-fraction that leaves patients on both sides, or use --folds"
            )

    def _optimizer(self) -> torch.optim.Optimizer:
        config, params = self.config, self.model.parameters()
        if config.optimizer == "sgd":
            return torch.optim.SGD(
                params, config.lr, momentum=0.9, weight_decay=config.weight_decay
            )
        kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        return kind(params, config.lr, weight_decay=config.weight_decay)

    def _load_last(self) -> None:
        path = self.run_dir / "checkpoints" / "last.pt"
        state = load_checkpoint(path)
        load_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = self.saved_epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        if self.main:  # the log must end at the checkpoint's epoch: trim or complete it
            metrics = self.run_dir / "metrics.jsonl"
            kept = [x for x in read_metrics(metrics) if x["epoch"] <= self.start_epoch]
            behind = not kept or kept[-1]["epoch"] < self.start_epoch
            if behind and "record" in state:
                kept.append(state["record"])
            write_text_atomic(metrics, "".join(f"{json.dumps(x)}\n" for x in kept))

    # -- the loop ------------------------------------------------------------------------
    def _loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        sampler = None
        if self.world > 1:
            sampler = DistributedSampler(
                self.train_set,
                self.world,
                self.rank,
                shuffle=True,
                seed=self.config.seed,
                drop_last=True,
            )
            sampler.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            self.config.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.config.workers,
            drop_last=True,
            generator=generator,
        )

    def _train_epoch(self, epoch: int) -> dict:
        config = self.config
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # flips and dropout per epoch
        self.net.train()
        loader = self._loader(epoch)
        steps = (
            len(loader)
            if config.max_steps_per_epoch is None
            else min(len(loader), config.max_steps_per_epoch)
        )
        autocast = torch.autocast(  # bf16 on request; float16 AMP on a GPU otherwise
            self.device.type,
            dtype=torch.bfloat16 if config.bf16 else torch.float16,
            enabled=config.bf16 or self.device.type == "cuda",
        )
        scaler = torch.amp.GradScaler(enabled=self.device.type == "cuda" and not config.bf16)
        total, seen, start = 0.0, 0, time.perf_counter()
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (self.progress and self.main),
            leave=False,
        )
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            rate = learning_rate(
                config.lr,
                config.schedule,
                epoch * steps + step,
                config.epochs * steps,
                config.warmup_epochs * steps,
            )
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            image = batch["image"].to(self.device, non_blocking=True)
            mask = batch["mask"].to(self.device, non_blocking=True)
            if config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast:
                outputs = self.net(image)
            loss = self.criterion([o.float() for o in outputs], mask)
            finite = torch.isfinite(loss.detach()).float().reshape(1)
            if self.world > 1:  # every rank stops together, none waits in an all-reduce
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not finite.item():
                kept = (
                    f"The last good weights are in {self.run_dir / 'checkpoints' / 'last.pt'} "
                    f"(epoch {self.saved_epoch})."
                    if self.saved_epoch
                    else "No epoch had finished, so there is no checkpoint."
                )
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"training stopped. {kept} Lower --lr or check the data for extreme values."
                )
            scaler.scale(loss).backward()
            scaler.step(self.optimizer)
            scaler.update()
            total += loss.item() * len(image)
            seen += len(image)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        seconds = time.perf_counter() - start
        return {
            "train_loss": total / max(seen, 1),
            "train_seconds": seconds,
            "images_per_s": seen * self.world / seconds,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def run(self) -> dict:
        config, record = self.config, {}
        for epoch in range(self.start_epoch, config.epochs):
            record = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            if self.world > 1:
                dist.barrier()
            if self.main:
                start = time.perf_counter()
                scores = score(
                    self.model, self.val_set, self.store.class_names, config.batch_size, self.device
                )
                record["val_seconds"] = time.perf_counter() - start
                record["val"] = {k: v for k, v in scores.items() if k != "counts"}
                current = scores["foreground_dice"]
                improved = not math.isnan(current) and current > self.best_score
                if improved:
                    self.best_score = current
                self._checkpoint(epoch + 1, improved, record)
                if self.progress:
                    print(
                        f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f}, "
                        f"val foreground Dice {current:.4f}, paper-style Jaccard "
                        f"{scores['paper_jaccard']:.4f}, {record['images_per_s']:.1f} images/s"
                    )
            if self.world > 1:
                dist.barrier()
        return record

    def _note_native_kernel(self) -> None:
        """Say so when a head run on the CPU cannot use the native stage kernel (slower steps)."""
        config = self.config
        uses_kernel = self.device.type == "cpu" and config.head != "none" and config.loss == "ce"
        if uses_kernel and self.main and self.progress and stage_ce.native_library() is None:
            reason = native.unavailable_reason("stage_ce")
            print(
                f"note: the native stage kernel is not used ({reason}); head training steps "
                "take the slower PyTorch path",
                file=sys.stderr,
            )

    def _checkpoint(self, epoch: int, improved: bool, record: dict) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "best_score": self.best_score,
            "config": dataclasses.asdict(self.config),
            "class_names": self.store.class_names,
            "modalities": self.store.modalities,
            "data": self.store.preprocessing(),  # lets predict run without the store
            "record": record,  # re-appended to metrics.jsonl if a crash came in between
        }
        directory = self.run_dir / "checkpoints"
        if improved:
            _atomic_save(state, directory / "best.pt")
        _atomic_save(state, directory / "last.pt")
        self.saved_epoch = epoch
        with (self.run_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    trainer = Trainer(config, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


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
        config = TrainConfig.from_dict(state["config"])
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
