"""Platform-wide settings read from the environment in one place."""

from __future__ import annotations

import os
from datetime import date


def lake_start_date() -> str:
    value = os.environ.get("LAKE_START_DATE", "2024-01-01")
    date.fromisoformat(value)
    return value


def lake_timezone() -> str:
    return os.environ.get("LAKE_TIMEZONE", "UTC")
