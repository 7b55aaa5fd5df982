"""TrainConfig: every setting of a training run, its default and its checks, written once.

Each field carries in its metadata what `upseg train` shows for it (upseg.cli derives the
flags from the fields): `choices`, a tuple this class checks or a function naming what
`build` accepts (the backbone registry); `help`, where `{default}` stands for the field's
default; `flag=False` for settings the command line does not take.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from upseg.data.resize import DOWNSAMPLE_MODES
from upseg.engine.schedule import SCHEDULES
from upseg.losses import BASE_LOSSES, STAGE_WEIGHTS, TARGET_RESIZES
from upseg.models import (
    BASELINE,
    DEFAULT_HEAD_INIT,
    DEFAULT_HEAD_INPUT,
    HEAD_CHOICES,
    HEAD_INITS,
    HEAD_INPUTS,
    HEADS,
    list_backbones,
    resolve_head_init,
    resolve_head_input,
)
from upseg.models.features import FEATURE_HEADS

OPTIMIZERS = ("adam", "adamw", "sgd")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None,
    help: str | None = None,
    flag: bool = True,
) -> Any:
    """A TrainConfig field with its command-line description (see the module docstring)."""
    metadata = {"choices": choices, "help": help, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# Settings whose default changed when the LGG screen chose the recipe (docs/results.md), with
# the value runs had before: a run folder written before a setting existed trained with these.
FORMER_DEFAULTS: dict[str, Any] = {
    "loss": "ce",
    "schedule": "constant",
    "warmup_epochs": 0,
    "head_input": DEFAULT_HEAD_INPUT,
}


@dataclass
class TrainConfig:
    store: str = setting(help="slice store made by upseg prepare")
    out: str = setting(help="run directory to create")
    backbone: str = setting("elunet", choices=list_backbones)
    backbone_kwargs: dict = setting(  # noqa: RUF009 (a field with a default factory)
        factory=dict, help="backbone options, e.g. '{\"base_width\": 8}'"
    )
    head: str = setting(
        "plain",
        choices=HEAD_CHOICES,
        help="up-scaling head; guided: the plain head that also reads the full-resolution "
        "image; none trains the baseline (default {default})",
    )
    head_init: str = setting(
        DEFAULT_HEAD_INIT,
        choices=HEAD_INITS,
        help="upsample: stages start as nearest up-sampling (default); bilinear: as repeated "
        "bilinear x2; pytorch: PyTorch's layer initialisation, as in the paper",
    )
    head_input: str | None = setting(  # features: plain or guided head; None: resolved below
        None,
        choices=HEAD_INPUTS,
        help="what the head's first stage reads: the features that feed the backbone's final "
        "1x1 conv (default for the plain and guided heads, the recipe chosen in "
        "docs/results.md) or its "
        "logits (the paper's head; the default of the skip head)",
    )
    input_size: int = setting(16, help="input resolution r (default {default})")
    output_size: int | None = setting(None, help="output resolution R (default: store)")
    loss: str = setting(
        "dice_ce",
        choices=BASE_LOSSES,
        help="loss per stage: dice_ce (default: soft Dice + cross-entropy, the recipe chosen in "
        "docs/results.md), ce (the paper's), bce (one-channel models), dice",
    )
    target_resize: str = setting("nearest", choices=TARGET_RESIZES)
    stage_weights: str = setting("equal", choices=STAGE_WEIGHTS)
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    lr: float = setting(1e-3, help="learning rate (default {default})")
    weight_decay: float = setting(0.0)
    schedule: str = setting(  # per optimiser step (upseg.engine.schedule)
        "cosine",
        choices=SCHEDULES,
        help="learning rate per step: cosine to 0 (default), constant, or poly (1 - p)^0.9",
    )
    warmup_epochs: int = setting(
        1,
        help="epochs of linear warm-up from lr / steps (default {default}; at most epochs - 1, "
        "so a one-epoch run has none)",
    )
    epochs: int = setting(10)
    batch_size: int = setting(32)
    seed: int = setting(0)
    downsample: str = setting("area", choices=DOWNSAMPLE_MODES, help="input downsampling")
    flips: bool = setting(True, help="random flips (default {default})")
    workers: int = setting(0, help="DataLoader workers")
    bf16: bool = setting(False, help="bf16 autocast")
    channels_last: bool = setting(False)
    device: str = setting("auto", help="auto (default), cpu, cuda, cuda:1")
    deterministic: bool = setting(False)
    # > 0: patient-level k-fold cross-validation, validating on `fold`
    folds: int = setting(0, help="k for patient-level k-fold validation")
    fold: int = setting(0, help="which fold validates (0..k-1)")
    # the fold partition; separate from `seed` so seeds share folds
    split_seed: int = setting(0, flag=False)
    max_steps_per_epoch: int | None = setting(None)
    # fingerprint of the store the run trains on (upseg.engine.runs.store_fingerprint)
    store_id: str | None = setting(None, flag=False)

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
        if self.head_input is None:  # the recipe; a bad value is named by _check_choices
            self.head_input = resolve_head_input(self.head, None)
        # A baseline has no head to initialise: one value, so baselines never differ by it.
        if self.head == BASELINE:
            self.head_init = DEFAULT_HEAD_INIT
        elif self.head in HEADS:
            self.head_init = resolve_head_init(self.head_init)  # also former names
        _check_choices(self)
        if self.head_input != DEFAULT_HEAD_INPUT and self.head not in FEATURE_HEADS:
            raise ValueError(
                f"head_input {self.head_input!r} needs the plain or guided head, not head "
                f"{self.head!r}"
            )
        if self.head == "guided" and self.downsample != "area":
            raise ValueError(
                f"the guided head averages the full image down to r itself ('area'); "
                f"downsample {self.downsample!r} does not apply to it"
            )
        _check_ranges(self)

    @classmethod
    def from_stored(cls, values: dict) -> TrainConfig:
        """from_dict for a configuration a run wrote: a setting it lacks (it predates the
        setting) means what that run trained with, FORMER_DEFAULTS, not today's default."""
        return cls.from_dict({**FORMER_DEFAULTS, **values})

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


def default(name: str) -> Any:
    """The default of TrainConfig's setting `name`, for callers that offer it too."""
    found = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return found.default


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


def _check_choices(config: TrainConfig) -> None:
    """A ValueError naming the first setting outside its fixed choices (backbone names are
    checked by `build`, which also knows backbones registered later)."""
    for f in dataclasses.fields(config):
        allowed, value = f.metadata.get("choices"), getattr(config, f.name)
        if isinstance(allowed, tuple) and value not in allowed:
            raise ValueError(f"unknown {f.name} {value!r}; choose one of {allowed}")


def _check_ranges(config: TrainConfig) -> None:
    """A ValueError naming the first number out of its range."""
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive number, not {config.lr}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ValueError(f"weight_decay must be zero or positive, not {config.weight_decay}")
    for key in ("input_size", "output_size", "max_steps_per_epoch"):
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ValueError(f"{key} must be at least 1, not {value}")
    if not (0 <= config.warmup_epochs < config.epochs or config.warmup_epochs == 1):
        raise ValueError(
            f"warmup_epochs must be 0..{config.epochs - 1} (fewer than epochs), "
            f"not {config.warmup_epochs}"
        )
    if config.workers < 0:
        raise ValueError(f"workers must be zero or more, not {config.workers}")
    if config.folds < 0 or config.folds == 1:
        raise ValueError(f"folds must be 0 (the store's split) or at least 2, not {config.folds}")
    if config.folds and not 0 <= config.fold < config.folds:
        raise ValueError(f"fold {config.fold} is outside 0..{config.folds - 1}")
    if config.device != "auto":
        parse_device(config.device)


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
