"""How big does the instance database get, and what keeps it bounded?

Runs N onboarding-like runs (one new applicant partition each, six chained assets like
``application -> ... -> decision``, in-process) into a fresh instance, plus the ticks of the
signup sensor that launched them (one tick every 5 s over the period; a tick with a run
request per run, the rest skipped), then measures the database:

1. ``no retention``: everything kept;
2. ``tick retention``: what ``retention:`` in deploy/production/dagster.yaml removes once the
   ticks are old enough (skipped ticks after 1 day, successful ones after 7). Dagster's
   retention covers schedule/sensor/automation *ticks only*; runs and event logs stay;
3. ``tick retention + run purge``: additionally ``instance.delete_run`` for every run but the
   newest ``--keep-runs`` (what a nightly purge of runs older than N days does);
4. ``housekeeping``: the platform's own job functions (``sensors/housekeeping.py``) with the
   per-lane horizons: the older half of the onboarding runs and ``--batch-runs`` batch-lane
   runs are dated back past the onboarding lane's horizon (within the platform's), then
   ``retire_partitions``, ``purge_runs`` (platform horizon) and ``purge_onboarding_runs``
   (onboarding lane horizon) run as the housekeeping jobs run them; the old onboarding runs go,
   the batch runs of the same age stay (printed), what is left is measured.

From the measured bytes per run it prints a simulated month at ``--rate`` signups/s
(``--per-run`` applicants per onboarding run): the database holds the onboarding runs of the
last ``horizon`` days plus the time between two purge passes, so its size stops growing once
the month passes that; printed for the old policy (every run kept 35 days,
``retention_horizon_days()``, nightly pass: still growing at day 30) and the per-lane one
(``--lane-horizon``, default ``onboarding_run_horizon_days()``, purged every
``--purge-every-hours``, the hourly ``platform_onboarding_purge`` schedule). Batch runs (a few
dozen a day, kept 35 days) are not in the month figure.

Sizes are measured after ``VACUUM`` (SQLite) / ``VACUUM FULL`` (PostgreSQL), i.e. the space
the data really needs. Usage::

    uv run python bench/db_size.py --runs 1000 [--backend postgres|sqlite] [--keep-runs 100]
    uv run python bench/db_size.py --runs 1000 --rate 1 --per-run 1 --lane-horizon 2 \
        --purge-every-hours 1

PostgreSQL: the server from ``DAGSTER_PG_*`` (default 127.0.0.1:5432, user postgres); a
temporary database is created and dropped.
"""

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from sensors.housekeeping import (
    ONBOARDING_PURGE_CRON,
    RetireSpec,
    onboarding_run_horizon_days,
    purge_onboarding_runs,
    purge_runs,
    retention_horizon_days,
    retire_partitions,
)

APPLICANTS = "bench_applicants"
applicants = dg.DynamicPartitionsDefinition(name=APPLICANTS)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
STEPS = ["application", "bank_features", "fraud_features", "credit_features", "risk_score"]


def onboarding_assets() -> list[dg.AssetsDefinition]:
    out: list[dg.AssetsDefinition] = []
    for name in [*STEPS, "decision"]:
        deps = [out[-1]] if out else []

        @dg.asset(name=name, partitions_def=applicants, deps=deps)
        def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            """One per-applicant step."""
            context.log.info("scored %s", context.partition_key)
            return dg.MaterializeResult(metadata={"score": 0.5, "rows": 1})

        out.append(_asset)
    return out


def sqlite_yaml() -> str:
    return "telemetry: {enabled: false}\n"


def postgres_yaml() -> str:
    return (
        "telemetry: {enabled: false}\n"
        "storage:\n  postgres:\n    postgres_db:\n"
        "      hostname: {env: DAGSTER_PG_HOST}\n      port: {env: DAGSTER_PG_PORT}\n"
        "      username: {env: DAGSTER_PG_USER}\n      password: {env: DAGSTER_PG_PASSWORD}\n"
        "      db_name: {env: DAGSTER_PG_DB}\n      scheme: postgresql+psycopg2\n"
    )


class Backend:
    def __init__(self, kind: str, home: Path):
        self.kind, self.home = kind, home
        self.db_name = f"bench_{uuid.uuid4().hex[:10]}"
        if kind == "postgres":
            import psycopg2

            os.environ.setdefault("DAGSTER_PG_HOST", "127.0.0.1")
            os.environ.setdefault("DAGSTER_PG_PORT", "5432")
            os.environ.setdefault("DAGSTER_PG_USER", "postgres")
            os.environ.setdefault("DAGSTER_PG_PASSWORD", "")
            os.environ["DAGSTER_PG_DB"] = self.db_name
            self.admin = psycopg2.connect(
                host=os.environ["DAGSTER_PG_HOST"],
                port=int(os.environ["DAGSTER_PG_PORT"]),
                user=os.environ["DAGSTER_PG_USER"],
                password=os.environ["DAGSTER_PG_PASSWORD"],
                dbname="postgres",
            )
            self.admin.autocommit = True
            self.admin.cursor().execute(f'CREATE DATABASE "{self.db_name}"')
        (home / "dagster.yaml").write_text(postgres_yaml() if kind == "postgres" else sqlite_yaml())

    def size(self) -> int:
        if self.kind == "postgres":
            import psycopg2

            conn = psycopg2.connect(
                host=os.environ["DAGSTER_PG_HOST"],
                port=int(os.environ["DAGSTER_PG_PORT"]),
                user=os.environ["DAGSTER_PG_USER"],
                password=os.environ["DAGSTER_PG_PASSWORD"],
                dbname=self.db_name,
            )
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("VACUUM FULL")
            cur.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')"
            )
            size = int(cur.fetchone()[0])
            conn.close()
            return size
        total = 0
        for path in (self.home / "storage").rglob("*.db"):
            with sqlite3.connect(path) as conn:
                conn.execute("VACUUM")
            total += path.stat().st_size
        for path in (self.home / "history").rglob("*.db"):
            with sqlite3.connect(path) as conn:
                conn.execute("VACUUM")
            total += path.stat().st_size
        return total

    def close(self) -> None:
        if self.kind == "postgres":
            self.admin.cursor().execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self.admin.close()


def add_sensor_ticks(instance: dg.DagsterInstance, runs: list[str], interval_s: float) -> int:
    """The signup sensor's ticks over the period: one per interval, a run request per run."""
    from dagster._core.scheduler.instigation import InstigatorType, TickData, TickStatus

    n_ticks = max(len(runs), int(len(runs) * 86400 / 1000 / interval_s))
    every = max(1, n_ticks // max(1, len(runs)))
    start = time.time() - n_ticks * interval_s
    run_iter = iter(runs)
    for i in range(n_ticks):
        run_id = next(run_iter, None) if i % every == 0 else None
        instance.create_tick(
            TickData(
                instigator_origin_id="bench-signup-sensor",
                instigator_name="signup_sensor",
                instigator_type=InstigatorType.SENSOR,
                status=TickStatus.SUCCESS if run_id else TickStatus.SKIPPED,
                timestamp=start + i * interval_s,
                run_ids=[run_id] if run_id else [],
                cursor=f"{i}-0",
                skip_reason=None if run_id else "no new signups",
                selector_id="bench-signup-sensor",
            )
        )
    return n_ticks


def purge_ticks_like_retention(instance: dg.DagsterInstance) -> None:
    """What the daemon's retention does once ticks pass their age (here: all of them)."""
    from dagster._core.scheduler.instigation import TickStatus

    instance.purge_ticks(
        "bench-signup-sensor",
        "bench-signup-sensor",
        before=time.time() + 1,
        tick_statuses=[TickStatus.SKIPPED, TickStatus.SUCCESS, TickStatus.FAILURE],
    )


def backdate_runs(instance: dg.DagsterInstance, run_ids: list[str], days: float) -> None:
    """Move runs' creation time ``days`` back (the storage's own table, any SQL backend)."""
    import sqlalchemy as db
    from dagster._core.storage.runs.schema import RunsTable

    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            rows = conn.execute(
                db.select(RunsTable.c.run_id, RunsTable.c.create_timestamp).where(
                    RunsTable.c.run_id.in_(chunk)
                )
            ).fetchall()
            for run_id, created in rows:
                conn.execute(
                    RunsTable.update()
                    .where(RunsTable.c.run_id == run_id)
                    .values(create_timestamp=created - timedelta(days=days))
                )


def housekeeping_pass(
    instance: dg.DagsterInstance,
    run_ids: list[str],
    batch_ids: list[str],
    horizon_days: float,
    lane_horizon_days: float,
) -> tuple[int, int, int]:
    """The per-lane policy on the older half of the runs: dated back past the onboarding lane's
    horizon (but well within the platform's), as are the batch runs; then the housekeeping's
    steps: retire partitions, purge finished runs past the platform horizon (none here), purge
    finished onboarding runs past the lane's. Returns (retired, purged, batch runs kept)."""
    old = run_ids[: len(run_ids) // 2]
    backdate_runs(instance, [*old, *batch_ids], lane_horizon_days + 1)
    keys = instance.get_dynamic_partitions(APPLICANTS)
    now = time.time()
    born = {
        k: now - (horizon_days + 1) * 86400 if i < len(old) else now for i, k in enumerate(keys)
    }
    spec = RetireSpec(APPLICANTS, born.get, lambda _resources, ks: [True] * len(ks))
    retired, _ = retire_partitions(instance, spec, horizon_days)
    purged = purge_runs(instance, horizon_days)  # the platform horizon: nothing is that old
    purged += purge_onboarding_runs(instance, lane_horizon_days)
    return retired, purged, sum(instance.has_run(r) for r in batch_ids)


def simulated_month(
    per_run_bytes: float, base_bytes: float, rate: float, per_run: float, kept_days: float
) -> list[tuple[int, float]]:
    """(day, bytes) over 30 days: the database holds the onboarding runs of the last
    ``kept_days`` (the horizon + the time between two purge passes)."""
    runs_per_day = rate * 86400 / per_run
    return [
        (day, base_bytes + per_run_bytes * runs_per_day * min(day, kept_days))
        for day in (1, 2, 3, 7, 14, 21, 30)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--keep-runs", type=int, default=100)
    parser.add_argument("--tick-interval", type=float, default=5.0)
    parser.add_argument(
        "--checkpoints",
        type=lambda v: {int(x) for x in v.split(",")},
        default={100, 250, 500},
        help="also print the size after these many runs (comma-separated)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--rate", type=float, default=1.0, help="signups/s of the simulated month")
    parser.add_argument("--per-run", type=float, default=1.0, help="applicants per run (month)")
    parser.add_argument(
        "--lane-horizon",
        type=float,
        default=onboarding_run_horizon_days(),
        help="onboarding runs' horizon in days (default: $PLATFORM_ONBOARDING_RUN_HORIZON_DAYS"
        f" or {onboarding_run_horizon_days():g})",
    )
    parser.add_argument(
        "--purge-every-hours",
        type=float,
        default=1.0,
        help=f"hours between onboarding purge passes (the schedule: {ONBOARDING_PURGE_CRON!r})",
    )
    parser.add_argument(
        "--batch-runs", type=int, default=10, help="batch-lane runs, aged like the old half"
    )
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on kill -TERM too
    home = Path(tempfile.mkdtemp(prefix="bench-db-"))
    backend = Backend(args.backend, home)
    job = dg.Definitions(assets=onboarding_assets()).resolve_implicit_global_asset_job_def()
    figures: dict[str, Any] = {"backend": args.backend, "runs": args.runs}
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            t0 = time.perf_counter()
            run_ids = []
            for i in range(args.runs):
                key = f"applicant-{i:06d}"
                instance.add_dynamic_partitions(APPLICANTS, [key])
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=key,
                    tags={"platform/lane": "onboarding"},
                    run_config=QUIET,
                )
                run_ids.append(result.run_id)
                if i + 1 in args.checkpoints:
                    size = backend.size()
                    print(
                        f"after {i + 1:>5} runs: {size / 1e6:8.2f} MB (runs + event logs)"
                        f" {time.perf_counter() - t0:7.1f} s",
                        flush=True,
                    )
            figures["run_seconds"] = round(time.perf_counter() - t0, 1)
            batch_ids = []
            for i in range(args.batch_runs):
                key = f"batch-{i:06d}"
                instance.add_dynamic_partitions(APPLICANTS, [key])
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=key,
                    tags={"platform/lane": "batch"},
                    run_config=QUIET,
                )
                batch_ids.append(result.run_id)
            figures["events"] = (
                sum(len(instance.all_logs(r)) for r in run_ids[:10])
                // min(10, len(run_ids))
                * len(run_ids)
            )
            figures["ticks"] = add_sensor_ticks(instance, run_ids, args.tick_interval)

            figures["bytes_no_retention"] = backend.size()
            purge_ticks_like_retention(instance)
            figures["bytes_tick_retention"] = backend.size()
            horizon = retention_horizon_days()
            t1 = time.perf_counter()
            retired, purged, batch_kept = housekeeping_pass(
                instance, run_ids, batch_ids, horizon, args.lane_horizon
            )
            figures["housekeeping_seconds"] = round(time.perf_counter() - t1, 1)
            figures["housekeeping_retired"], figures["housekeeping_purged"] = retired, purged
            figures["batch_runs"], figures["batch_runs_kept"] = len(batch_ids), batch_kept
            figures["bytes_housekeeping"] = backend.size()
            kept = [r for r in [*run_ids, *batch_ids] if instance.has_run(r)]
            for run_id in kept[: max(0, len(kept) - args.keep_runs)]:
                instance.delete_run(run_id)
            figures["kept_runs"] = min(args.keep_runs, len(run_ids))
            figures["bytes_tick_retention_and_run_purge"] = backend.size()
    finally:
        backend.close()
        shutil.rmtree(home, ignore_errors=True)

    n = args.runs
    no_ret = int(figures["bytes_no_retention"])
    tick_ret = int(figures["bytes_tick_retention"])
    purged = int(figures["bytes_tick_retention_and_run_purge"])
    print(
        f"backend: {args.backend}; {n} onboarding-like runs (6 assets each) in "
        f"{figures['run_seconds']} s; ~{figures['events']} events; {figures['ticks']} sensor ticks"
    )
    print(f"{'no retention':<34}{no_ret / 1e6:>10.2f} MB  ({no_ret / n / 1e3:.1f} kB per run)")
    print(f"{'tick retention':<34}{tick_ret / 1e6:>10.2f} MB")
    print(
        f"{'tick retention + run purge':<34}{purged / 1e6:>10.2f} MB  "
        f"(kept newest {figures['kept_runs']} runs)"
    )
    house = int(figures["bytes_housekeeping"])
    gone = int(figures["housekeeping_purged"])
    per_run = (tick_ret - house) / max(1, gone)
    base = max(0.0, purged - per_run * int(figures["kept_runs"]))
    print(
        f"{'housekeeping (per-lane horizons)':<34}{house / 1e6:>10.2f} MB  (purged {gone} "
        f"onboarding runs older than {args.lane_horizon:g} d, kept "
        f"{figures['batch_runs_kept']}/{figures['batch_runs']} batch runs of the same age, "
        f"retired {figures['housekeeping_retired']} partitions in "
        f"{figures['housekeeping_seconds']} s): {per_run / 1e3:.1f} kB per purged run, "
        f"{per_run * 1000 / 1e6:.1f} MB per 1,000 runs"
    )
    figures["bytes_per_run"] = round(per_run)
    every_days = args.purge_every_hours / 24
    for key, label, kept_days in (
        (
            "month_before",
            f"before: every run {retention_horizon_days()} d, nightly purge",
            retention_horizon_days() + 1,
        ),
        (
            "month_per_lane",
            f"per-lane: onboarding runs {args.lane_horizon:g} d, purged every "
            f"{args.purge_every_hours:g} h",
            args.lane_horizon + every_days,
        ),
    ):
        month = simulated_month(per_run, base, args.rate, args.per_run, kept_days)
        cells = "  ".join(f"day {d}: {b / 1e9:.2f} GB" for d, b in month)
        bounded = (
            f"bounded at {month[-1][1] / 1e9:.2f} GB from day {math.ceil(kept_days)}"
            if kept_days < 30
            else "still growing at day 30"
        )
        figures[key] = {str(d): round(b) for d, b in month}
        print(
            f"simulated month at {args.rate:g} signups/s, {args.per_run:g} per run, {label} "
            f"({bounded}): {cells}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
