"""Time `upseg prepare` on a BraTS folder (default: the shared 20 cases).

usage: python benchmarks/prepare_brats.py [BRATS_DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

from upseg.data import BratsReader, SliceStore, prepare

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2018"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--out", type=Path, help="store folder (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp()) / "brats"
    start = time.perf_counter()
    prepare(BratsReader(args.source), out, force=True)
    seconds = time.perf_counter() - start
    store = SliceStore(out)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.node()}")
    print(
        f"prepared {len(store.manifest['patients'])} cases, {len(store)} slices "
        f"({store.images.nbytes / 2**30:.2f} GiB images) in {seconds:.1f} s "
        f"({seconds / len(store.manifest['patients']):.2f} s per case)"
    )
    if args.out is None:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
