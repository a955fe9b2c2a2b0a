"""Partitions of the location-intelligence graph."""

from __future__ import annotations

import dagster as dg

from resources.settings import lake_start_date

daily_partitions = dg.DailyPartitionsDefinition(start_date=lake_start_date(), end_offset=1)
"""One partition per UTC day, from ``LAKE_START_DATE`` up to and including today."""
