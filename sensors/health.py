"""Daemon health: say loudly when the dagster-daemon stops sending heartbeats.

Every daemon thread (sensors, schedules, run queue, run monitoring, run retries, backfills,
automation) writes a heartbeat to the instance database about every 30 s. A daemon that died
or hangs stops writing, and nothing else in Dagster pages anyone: the UI shows it only on its
"Deployment > Daemons" page, and ``dagster-daemon liveness-check`` tolerates 30 minutes.

Command line (exit 0 healthy, 1 stale/missing heartbeats, 2 nothing to check)::

    python -m sensors.health [--max-age 120] [--fail-on-errors] [--json]

It reads the instance of ``$DAGSTER_HOME`` (the same profile the daemon uses), so it can run
from cron, a systemd timer, a load-balancer health probe or a monitoring agent.

``daemon_health_sensor`` does the same check from inside the sensor daemon: it cannot see
the whole daemon dying (then it stops too; use the CLI for that), but it alerts when one
daemon thread (e.g. the run queue or run monitoring) stops while the others keep going.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import dagster as dg

from resources.alerts import AlertsResource

DEFAULT_MAX_AGE_S = 120.0
MAX_AGE_ENV = "PLATFORM_DAEMON_MAX_AGE_S"


@dataclass(frozen=True)
class DaemonHealth:
    """The state of one required daemon as seen from its last heartbeat."""

    daemon_type: str
    last_heartbeat: float | None
    age_s: float | None
    errors: tuple[str, ...]
    stale: bool

    def healthy(self, fail_on_errors: bool = False) -> bool:
        return not self.stale and not (fail_on_errors and self.errors)

    def describe(self, max_age_s: float) -> str:
        if self.last_heartbeat is None:
            state = "no heartbeat ever recorded"
        elif self.stale:
            state = f"last heartbeat {self.age_s:.0f} s ago (limit {max_age_s:.0f} s)"
        else:
            state = f"ok, last heartbeat {self.age_s:.0f} s ago"
        if self.errors:
            state += f"; {len(self.errors)} recent error(s): {self.errors[0]}"
        return f"{self.daemon_type}: {state}"


def daemon_health(
    instance: dg.DagsterInstance, max_age_s: float = DEFAULT_MAX_AGE_S, now: float | None = None
) -> list[DaemonHealth]:
    """One ``DaemonHealth`` per daemon this instance's configuration requires."""
    now = time.time() if now is None else now
    heartbeats = instance.get_daemon_heartbeats()
    out = []
    for daemon_type in instance.get_required_daemon_types():
        beat = heartbeats.get(daemon_type)
        if beat is None:
            out.append(DaemonHealth(daemon_type, None, None, (), True))
            continue
        age = max(0.0, now - beat.timestamp)
        errors = tuple(
            (err.message or "").strip().splitlines()[-1] if err.message else err.cls_name or "error"
            for err in (beat.errors or [])
        )
        out.append(DaemonHealth(daemon_type, beat.timestamp, age, errors, age > max_age_s))
    return out


def summarize(
    rows: Sequence[DaemonHealth], max_age_s: float, fail_on_errors: bool = False
) -> tuple[bool, str]:
    """(healthy, a message an operator can act on)."""
    bad = [r for r in rows if not r.healthy(fail_on_errors)]
    details = "\n".join("  " + r.describe(max_age_s) for r in rows)
    if not bad:
        return True, f"OK: {len(rows)} daemon(s) healthy\n{details}"
    names = ", ".join(r.daemon_type for r in bad)
    return False, (
        f"UNHEALTHY: {names} not heartbeating within {max_age_s:.0f} s. The dagster-daemon "
        "service is down, stuck, or pointed at another DAGSTER_HOME/database: check its "
        "logs and restart it (queued runs, schedules, sensors, run monitoring and retries "
        f"are stopped until then).\n{details}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sensors.health",
        description="Exit non-zero when the dagster-daemon heartbeats of $DAGSTER_HOME are stale.",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=float(os.environ.get(MAX_AGE_ENV, DEFAULT_MAX_AGE_S)),
        help=f"seconds without a heartbeat before a daemon counts as dead "
        f"(default ${MAX_AGE_ENV} or {DEFAULT_MAX_AGE_S:.0f}; daemons beat every 30 s)",
    )
    parser.add_argument(
        "--fail-on-errors",
        action="store_true",
        help="also fail when a daemon is alive but its last heartbeat carries errors",
    )
    parser.add_argument("--json", action="store_true", help="print the state as JSON")
    args = parser.parse_args(argv)

    if not os.environ.get("DAGSTER_HOME"):
        print("CANNOT CHECK: DAGSTER_HOME is not set (point it at the daemon's instance folder)")
        return 2
    with dg.DagsterInstance.get() as instance:
        rows = daemon_health(instance, args.max_age)
    if not rows:
        print("CANNOT CHECK: this instance requires no daemons (ephemeral instance?)")
        return 2
    healthy, message = summarize(rows, args.max_age, args.fail_on_errors)
    if args.json:
        print(json.dumps({"healthy": healthy, "daemons": [asdict(r) for r in rows]}, indent=2))
    else:
        print(message)
    return 0 if healthy else 1


@dg.sensor(
    name="daemon_health_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Alerts when a dagster-daemon thread stops heartbeating (run queue, "
    "monitoring, retries, schedules...). The whole daemon dying is caught by "
    "`python -m sensors.health`, not by this sensor.",
)
def daemon_health_sensor(context: dg.SensorEvaluationContext, alerts: AlertsResource):
    """Alert once when daemons go stale and once when they recover (state in the cursor)."""
    max_age = float(os.environ.get(MAX_AGE_ENV, DEFAULT_MAX_AGE_S))
    rows = daemon_health(context.instance, max_age)
    stale = sorted(r.daemon_type for r in rows if r.stale)
    previous = json.loads(context.cursor) if context.cursor else []
    if stale != previous:
        healthy, message = summarize(rows, max_age)
        alerts.send(message if not healthy else f"Daemons recovered: {', '.join(previous)}")
        context.update_cursor(json.dumps(stale))
    if stale:
        return dg.SkipReason(f"stale daemons: {', '.join(stale)}")
    return dg.SkipReason(f"{len(rows)} daemon(s) healthy")


defs = dg.Definitions(sensors=[daemon_health_sensor])


if __name__ == "__main__":
    sys.exit(main())
