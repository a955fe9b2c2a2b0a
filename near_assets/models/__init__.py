"""Near's foundational models beyond the daily chain (issue 16), one module per model.

- ``visit_history``: per-device, per-POI rolling history, incremental from the daily visits;
- ``high_density_points``: coordinates and small cells reported by implausibly many devices,
  learnt from the clean pings (the list ``clean_pings`` may drop);
- ``identity_graph``: devices linked into people and households (cross identity) from
  co-location at home and by day.

Each module ends with ``defs = dg.Definitions(...)``; ``near_assets/definitions.py`` merges them.
Tables are declared in ``near_assets.tables``.
"""

import dagster as dg

GROUP = "models"
KINDS = {"pandas", "parquet"}
RETRY = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL)
"""Group, kinds and retry policy every model asset shares."""
