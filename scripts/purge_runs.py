"""Run the nightly housekeeping by hand: retire decided applicants' partitions, purge old runs.

    uv run python scripts/purge_runs.py --dry-run                  # count only
    uv run python scripts/purge_runs.py                            # the platform horizon
    uv run python scripts/purge_runs.py --older-than-days 40       # another horizon, once
    uv run python scripts/purge_runs.py --onboarding-only          # the hourly onboarding pass
    uv run python scripts/purge_runs.py --onboarding-horizon-days 1   # another lane horizon, once

The normal way is the ``platform_housekeeping`` job (``risk_assets`` location, scheduled nightly,
alerted on failure): this is a thin command line over the same functions
(``sensors/housekeeping.py``) for an operator at a shell. The horizon defaults to the platform's
one horizon, ``retention_horizon_days()`` (the longest window an asset reads + 7 days); onboarding-lane
runs (run tag ``platform/lane: onboarding``) are then purged after the lane's short horizon,
``onboarding_run_horizon_days()`` (``PLATFORM_ONBOARDING_RUN_HORIZON_DAYS``, 2 days by default),
as the hourly ``platform_onboarding_purge`` job does. Only
finished runs (success, failure, canceled) are deleted; queued or running ones are never touched;
undecided applicants keep their partitions. The lake and Redis are not touched.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import SimpleNamespace

import dagster as dg

from sensors.housekeeping import (  # noqa: F401  (purge_runs: imported by tests and callers)
    FINISHED,
    onboarding_run_horizon_days,
    purge_onboarding_runs,
    purge_runs,
    retention_horizon_days,
    retire_partitions,
)


def main(
    argv: Sequence[str] | None = None,
    instance_factory: Callable[[], AbstractContextManager[dg.DagsterInstance]] = (
        dg.DagsterInstance.get
    ),
) -> None:
    """``argv``: the arguments (default: the command line's); ``instance_factory``: the instance
    as a context manager (default: ``$DAGSTER_HOME``'s)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help=f"horizon in days (default: the platform's, {retention_horizon_days()})",
    )
    parser.add_argument(
        "--onboarding-horizon-days",
        type=float,
        default=None,
        help=(
            "horizon in days of onboarding-lane runs (default: $PLATFORM_ONBOARDING_RUN_HORIZON_DAYS"
            f" or {onboarding_run_horizon_days():g})"
        ),
    )
    parser.add_argument(
        "--onboarding-only",
        action="store_true",
        help="only purge onboarding-lane runs (the hourly pass); no partitions, no batch runs",
    )
    parser.add_argument("--dry-run", action="store_true", help="count, do not delete")
    parser.add_argument(
        "--runs-only", action="store_true", help="do not retire applicants' partitions"
    )
    args = parser.parse_args(argv)
    horizon = args.older_than_days if args.older_than_days is not None else retention_horizon_days()
    lane_horizon = (
        args.onboarding_horizon_days
        if args.onboarding_horizon_days is not None
        else onboarding_run_horizon_days()
    )
    if lane_horizon < 0 or horizon < 0:
        parser.error("horizons must be >= 0 days")
    verb = "would" if args.dry_run else "did"
    with instance_factory() as instance:
        if args.onboarding_only:
            n = purge_onboarding_runs(instance, lane_horizon, dry_run=args.dry_run)
            print(f"{verb} delete {n} finished onboarding run(s) older than {lane_horizon} day(s)")
            return
        if not args.runs_only:
            from resources.redis_store import RedisResource
            from risk_assets.definitions import RETIRE_APPLICANTS

            resources = SimpleNamespace(redis=RedisResource.from_env())
            retired, kept = retire_partitions(
                instance, RETIRE_APPLICANTS, horizon, resources=resources, dry_run=args.dry_run
            )
            print(
                f"{verb} retire {retired} applicants partition(s) older than {horizon} day(s); "
                f"kept {kept} undecided"
            )
        n = purge_runs(instance, horizon, dry_run=args.dry_run)
        print(f"{verb} delete {n} finished run(s) older than {horizon} day(s)")
        n = purge_onboarding_runs(instance, lane_horizon, dry_run=args.dry_run)
        print(f"{verb} delete {n} finished onboarding run(s) older than {lane_horizon} day(s)")


if __name__ == "__main__":
    main()
