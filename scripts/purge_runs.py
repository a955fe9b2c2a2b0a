"""Delete finished runs (and their event logs) older than N days from the Dagster instance.

    uv run python scripts/purge_runs.py --older-than-days 14            # DAGSTER_HOME's instance
    uv run python scripts/purge_runs.py --older-than-days 14 --dry-run

Dagster's ``retention:`` setting purges sensor/schedule ticks only; runs and their event logs stay
forever (82 kB per onboarding run, ``bench/db_size.py``). Run this nightly (cron / systemd timer
beside the daemon). Only finished runs (success, failure, canceled) are deleted; queued or running
ones are never touched. Asset materialization history goes with the runs that produced it; the
lake and Redis are not touched.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC

import dagster as dg

FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]


def purge_runs(
    instance: dg.DagsterInstance,
    older_than_days: float,
    *,
    dry_run: bool = False,
    batch: int = 500,
    now: float | None = None,
) -> int:
    """Delete finished runs created more than ``older_than_days`` ago; returns how many."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    from datetime import datetime

    before = datetime.fromtimestamp(cutoff, tz=UTC)
    deleted = 0
    while True:
        records = instance.get_run_records(
            filters=dg.RunsFilter(statuses=FINISHED, created_before=before),
            limit=batch,
        )
        if not records:
            return deleted
        for record in records:
            if not dry_run:
                instance.delete_run(record.dagster_run.run_id)
            deleted += 1
        if dry_run or len(records) < batch:
            return deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--older-than-days", type=float, required=True)
    parser.add_argument("--dry-run", action="store_true", help="count, do not delete")
    args = parser.parse_args()
    with dg.DagsterInstance.get() as instance:
        n = purge_runs(instance, args.older_than_days, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {n} finished run(s) older than {args.older_than_days} day(s)")


if __name__ == "__main__":
    main()
