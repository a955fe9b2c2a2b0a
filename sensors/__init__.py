"""Sensors both code locations share: Slack alerts on failed runs and checks, daemon health.

Each location's ``definitions.py`` merges ``platform_sensors(<location name>)``. The daemon
health sensor belongs to one location only (``risk_assets``, the one that must never stall), so
that a stale daemon alerts once.
"""

from __future__ import annotations

import dagster as dg

from sensors.alerts import alert_sensors
from sensors.health import daemon_health_sensor


def platform_sensors(location: str, *, daemon_health: bool = False) -> dg.Definitions:
    """Alert sensors of ``location`` (and the daemon health sensor where asked)."""
    sensors = [*alert_sensors(location)]
    if daemon_health:
        sensors.append(daemon_health_sensor)
    return dg.Definitions(sensors=sensors)
