"""Share of a training epoch that the data pipeline costs.

Trains ELU-Net + plain head (r -> R) on a slice store for a fixed number of steps twice:
once fed by LowResPairs through a DataLoader (flips on), once from batches already collated
in memory. The difference is the pipeline's cost.

usage: python benchmarks/data_pipeline.py STORE [--input-size 32] [--batch 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import torch
from torch.utils.data import DataLoader

from upseg.data import LowResPairs, SliceStore
from upseg.losses import MultiScaleLoss
from upseg.models import build


def train_steps(model, criterion, optimizer, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    store = SliceStore(args.store)
    dataset = LowResPairs(store, args.input_size, "train", flips=True)
    classes = len(store.class_names)
    model = build("elunet", len(store.modalities), classes, args.input_size, store.size).train()
    criterion = MultiScaleLoss(classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loader():
        return DataLoader(
            dataset,
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=False,
        )

    cached = list(itertools.islice(loader(), args.steps))
    train_steps(model, criterion, optimizer, cached[:2])  # warm-up
    piped, memory = [], []
    for _ in range(args.repeats):
        piped.append(
            train_steps(model, criterion, optimizer, itertools.islice(loader(), args.steps))
        )
        memory.append(train_steps(model, criterion, optimizer, cached))
    start = time.perf_counter()
    for _ in itertools.islice(loader(), args.steps):
        pass
    loader_alone = (time.perf_counter() - start) / args.steps
    best_piped, best_memory = min(piped), min(memory)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(
        f"ELU-Net+plain {args.input_size} -> {store.size}, batch {args.batch}, "
        f"{args.steps} steps, workers {args.workers}"
    )
    share = 100 * (best_piped - best_memory) / best_memory
    print(
        f"best of {args.repeats}: from the DataLoader {best_piped:.2f} s, from memory "
        f"{best_memory:.2f} s; pipeline share {share:+.1f}%"
    )
    step = best_memory / args.steps
    print(
        f"loader alone: {1000 * loader_alone:.1f} ms per batch = "
        f"{100 * loader_alone / step:.1f}% of a {1000 * step:.0f} ms training step"
    )


if __name__ == "__main__":
    main()
