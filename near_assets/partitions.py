"""Partitions of the location-intelligence graph."""

from __future__ import annotations

import dagster as dg

from resources.settings import lake_start_date

daily_partitions = dg.DailyPartitionsDefinition(start_date=lake_start_date(), end_offset=1)
"""One partition per UTC day, from ``LAKE_START_DATE`` up to and including today."""


# Daily assets follow their upstream on every day, not only the latest one: a backfill or the
# first days of a new lake flow down the chain without anyone launching the downstream days.
eager_any_day = (
    dg.AutomationCondition.eager()
    .without(dg.AutomationCondition.in_latest_time_window())
    .with_label("eager (any day)")
)
