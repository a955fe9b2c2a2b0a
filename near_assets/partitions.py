"""Partitions of the location-intelligence graph, and the automation conditions built on them."""

from __future__ import annotations

import dagster as dg

from resources.settings import lake_start_date

daily_partitions = dg.DailyPartitionsDefinition(start_date=lake_start_date(), end_offset=1)
"""One partition per UTC day, from ``LAKE_START_DATE`` up to and including today."""


external_assets = dg.AssetSelection.all(include_sources=True) - dg.AssetSelection.all()
"""Assets the platform reads but never materializes (``near_assets.reference``).

Dagster counts an external asset that was never observed as *missing*, and ``eager`` waits for
missing dependencies (``on_cron`` for dependencies updated since the tick) forever: automation
conditions of assets that read reference data ``.ignore(external_assets)``.
"""

# Daily assets follow their upstream on every day, not only the latest one: a backfill or the
# first days of a new lake flow down the chain without anyone launching the downstream days.
eager_any_day = (
    dg.AutomationCondition.eager()
    .without(dg.AutomationCondition.in_latest_time_window())
    .ignore(external_assets)
    .with_label("eager (any day)")
)
