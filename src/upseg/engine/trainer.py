"""Training: one run = one model on one slice store, written to a run directory
(upseg.engine.runs describes the folder).

Every epoch reseeds from (seed, epoch), so a run resumed from the last epoch-end checkpoint
replays the interrupted epoch exactly and ends where an uninterrupted run would (bit-exact
with `deterministic`). Under torchrun the model trains with DistributedDataParallel (gloo on
CPU, nccl on GPU); rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from upseg.data import LowResPairs, SliceStore
from upseg.engine.config import TrainConfig, resolve_device
from upseg.engine.memory import keep_freed_memory
from upseg.engine.runs import (
    build_model,
    changed_settings,
    check_store,
    feed_size,
    load_checkpoint,
    load_weights,
    read_metrics,
    run_state,
    save_checkpoint,
    split_patients,
    store_fingerprint,
)
from upseg.engine.schedule import learning_rate
from upseg.engine.scoring import score
from upseg.errors import TrainingError
from upseg.io import write_text_atomic
from upseg.losses import MultiScaleLoss, native, stage_ce
from upseg.models import BASELINE


def train_or_resume(config: TrainConfig, progress: bool = True) -> str:
    """Train a new run, resume a partial one, leave a finished one; returns what it did."""
    state = run_state(config)
    if state != "finished":
        train(config, resume=state == "partial", progress=progress)
    return {"new": "trained", "partial": "resumed", "finished": "skipped (finished)"}[state]


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
            feed_size(config, self.store),
            downsample=config.downsample,
            flips=config.flips,
            patients=train,
        )
        self.val_set = LowResPairs(
            self.store, feed_size(config, self.store), downsample=config.downsample, patients=val
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
                min(config.warmup_epochs, config.epochs - 1) * steps,
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
        uses_kernel = self.device.type == "cpu" and config.head != BASELINE and config.loss == "ce"
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
            save_checkpoint(state, directory / "best.pt")
        save_checkpoint(state, directory / "last.pt")
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
