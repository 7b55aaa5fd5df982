"""What turns runs into results: `upseg evaluate` (one run scored and written out), the sweep
(methods x sizes x folds x seeds, the paper's tables and figures), its per-patient tables, and
the demo."""
