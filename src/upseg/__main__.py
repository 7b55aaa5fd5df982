"""`python -m upseg ...` (what torchrun -m upseg runs) is the `upseg` command."""

from upseg.cli import main

raise SystemExit(main())
