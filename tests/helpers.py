"""Test helpers: the command line run in-process (fast, capturing what it prints and its exit
code), a tiny trained run, and small widths for every backbone."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from upseg.cli import main
from upseg.data import PhantomReader, prepare
from upseg.engine import TrainConfig
from upseg.engine.trainer import train

# Small widths for every registered backbone: export and folding time hardly depend on width.
SMALL_BACKBONES = {
    "unet": {"base_width": 4},
    "elunet": {"base_width": 4},
    "basicunet": {"features": (4, 4, 8, 8, 16, 4)},
    "basicunetpp": {"features": (4, 4, 8, 8, 16, 4)},
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def tiny_phantom_run(tmp_path: Path, name: str) -> Path:
    """A run directory as `upseg train` makes it: ELU-Net of width 4, input 16, one step on a
    small phantom store (64 x 64)."""
    store = prepare(
        PhantomReader(size=64, num_patients=4, slices_per_patient=4), tmp_path / "s", progress=False
    )
    run = tmp_path / name
    config = TrainConfig(
        store=str(store),
        out=str(run),
        input_size=16,
        batch_size=4,
        epochs=1,
        max_steps_per_epoch=1,
        backbone_kwargs={"base_width": 4},
    )
    train(config, progress=False)
    return run
