"""device_ip_velocity pack: how fast each device / IP / network applies."""

from collections import Counter
from typing import Any

from risk_assets.science import VELOCITY_KEYS as KEYS
from risk_assets.science import velocity_key

HOUR_MS = 3_600_000


def run(recent_signups: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per key over 1 h and 24 h before the newest signup (stream ids are ms stamps)."""
    stamps = [int(str(a["signup_id"]).split("-")[0]) for a in recent_signups]
    end = max(stamps, default=0)
    velocity: dict[str, dict[str, dict[str, int]]] = {}
    p99: dict[str, int] = {}
    for kind in KEYS:
        hour, day = Counter(), Counter()
        for app, ts in zip(recent_signups, stamps, strict=True):
            key = velocity_key(app, kind)
            if key is None or ts < end - 24 * HOUR_MS:
                continue
            day[key] += 1
            if ts >= end - HOUR_MS:
                hour[key] += 1
        counts = sorted(day.values())
        p99[kind] = counts[min(len(counts) - 1, int(0.99 * len(counts)))] if counts else 0
        velocity[kind] = {k: {"1h": hour[k], "24h": c} for k, c in sorted(day.items()) if c >= 2}
    return {
        "n": len(recent_signups),
        "window_end_ms": end,
        "with_device": sum(1 for a in recent_signups if a.get("device_id")),
        "velocity": velocity,
        "p99_24h": p99,
    }
