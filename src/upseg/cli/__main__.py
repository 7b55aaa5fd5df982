"""`python -m upseg.cli`, the same as `python -m upseg`."""

from upseg.cli import main

raise SystemExit(main())
