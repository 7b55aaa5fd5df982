"""Run under torchrun by test_ddp: trains a few steps, then every rank saves its parameters
(BatchNorm running statistics are per rank; DDP broadcasts rank 0's at each forward)."""

import os
import sys

import torch

from upseg.engine import TrainConfig
from upseg.engine.trainer import Trainer

store, out = sys.argv[1], sys.argv[2]
config = TrainConfig(
    store=store,
    out=out,
    backbone_kwargs={"base_width": 4},
    input_size=16,
    batch_size=2,
    epochs=1,
    max_steps_per_epoch=3,
)
trainer = Trainer(config, progress=False)
trainer.run()
parameters = {k: p.detach() for k, p in trainer.model.named_parameters()}
torch.save(parameters, f"{out}/rank{os.environ['RANK']}.pt")
