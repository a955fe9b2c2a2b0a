"""Housekeeping inside the platform: the nightly ``platform_housekeeping`` job, the hourly
``platform_onboarding_purge`` job and their schedules.

One job, visible in the UI, scheduled (``platform_housekeeping_schedule``, 03:15 UTC, running by
default) and alerted on like any run of its location (the location's run-failure alert sensor
posts a failed run to Slack). One run:

1. **retires old dynamic partitions** (``applicants``): keys older than the horizon whose work
   is done (an applicant that was decided) are deleted from the partitions definition, so the
   partition list every multi-applicant run resolves stays bounded (about horizon x signups per
   day). Undecided keys are kept whatever their age. What stays: the ``decisions`` stream
   (user id, signup id, decision), the lake objects of every stage and, until the purge below,
   the runs tagged ``dagster/partition=<key>``; the key itself is ``<user slug>_<signup id>``,
   so it can be rebuilt from the applicant id and re-added to re-run (deploy/production/README.md).
2. **purges finished runs** (success, failure, canceled) older than the same horizon, with their
   event logs; queued and running runs are never touched;
3. **purges finished onboarding runs** (run tag ``platform/lane: onboarding``) older than the
   onboarding lane's short horizon (below). The same pass runs every hour on its own
   (``platform_onboarding_purge`` job, schedule ``platform_onboarding_purge_schedule``), so one
   pass deletes about an hour of onboarding runs (3,600 at 1 signup/s), not a day's 86,400
   (the nightly step is the backstop if that schedule is off).

**Onboarding lane horizon** (``onboarding_run_horizon_days()``, ``PLATFORM_ONBOARDING_RUN_HORIZON_DAYS``,
2 days by default): an onboarding run is one applicant's (or a few applicants') decision, and
that decision is kept elsewhere: every stage's output in the lake
(``work/onboarding/<asset>/<partition>.json``, the decision in ``work/onboarding/decision/``) and
the decision on the ``decisions`` stream. No asset reads a trailing window of onboarding
partitions, so their runs need not live for the platform horizon; at 1 signup/s the 35-day
horizon would keep about 3 million of them (167 GB on PostgreSQL, ``bench/db_size.py``). Batch
runs (every other lane) keep the platform horizon.

**The platform horizon** for steps 1 and 2: the longest trailing window an asset reads plus a margin
(``retention_horizon_days()``: affinity's 28 days + 7 = 35 days by default). Deleting a run
deletes the materializations it recorded, so a daily partition inside a window that is still
read must never lose its run: the horizon covers the longest window. The windows are declared in
``near_assets/mobility.py`` / ``near_assets/profiles.py`` from ``NEAR_HOME_WINDOW_DAYS`` / ``NEAR_AFFINITY_WINDOW_DAYS``; a
shared folder may not import a code location, so the same variables are read here and
``tests/test_purge_runs.py`` asserts that the horizon covers every window the code declares.

**Short-lived partitions**: besides the nightly pass, a sensor per retire spec
(``<partitions name>_retire_sensor``, every ``RETIRE_SENSOR_INTERVAL_S``) retires done keys
older than ``PLATFORM_RETIRE_AFTER_SECONDS`` (600; a negative value turns it off), at most
``RETIRE_MAX_KEYS_PER_TICK`` per tick. Work still owed (an undecided applicant) is never retired,
so the live partition list holds the undecided keys and the last minutes' keys: its size follows
the signup rate, not the instance's age. Materializations of a retired key stay in the event log
(``instance.fetch_materializations`` by asset key and partition) until their run is purged.

``scripts/purge_runs.py`` is a thin command line over :func:`purge_runs` and
:func:`retire_partitions` (cron-free: the schedule is the normal way).
"""

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

JOB_NAME = "platform_housekeeping"
ONBOARDING_PURGE_JOB_NAME = "platform_onboarding_purge"
MARGIN_DAYS = 7
DEFAULT_CRON = "15 3 * * *"
ONBOARDING_PURGE_CRON = "45 * * * *"  # hourly, away from the nightly run's 03:15
LANE_TAG = "platform/lane"
ONBOARDING_LANE = "onboarding"
ONBOARDING_HORIZON_ENV = "PLATFORM_ONBOARDING_RUN_HORIZON_DAYS"
DEFAULT_ONBOARDING_HORIZON_DAYS = 2.0
RETIRE_AFTER_ENV = "PLATFORM_RETIRE_AFTER_SECONDS"
DEFAULT_RETIRE_AFTER_S = 600.0
RETIRE_SENSOR_INTERVAL_S = 15
RETIRE_MAX_KEYS_PER_TICK = 20_000
FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]


def longest_window_days() -> int:
    """The longest trailing window (days) an asset reads: affinity (28) by default."""
    return max(
        int(os.environ.get("NEAR_HOME_WINDOW_DAYS", "14")),
        int(os.environ.get("NEAR_AFFINITY_WINDOW_DAYS", "28")),
    )


def retention_horizon_days() -> int:
    """The platform's one retention horizon: the longest window plus ``MARGIN_DAYS``."""
    return longest_window_days() + MARGIN_DAYS


def onboarding_run_horizon_days() -> float:
    """How long finished onboarding-lane runs are kept (``PLATFORM_ONBOARDING_RUN_HORIZON_DAYS``)."""
    days = float(os.environ.get(ONBOARDING_HORIZON_ENV, DEFAULT_ONBOARDING_HORIZON_DAYS))
    if days < 0:
        raise ValueError(f"{ONBOARDING_HORIZON_ENV} must be >= 0, got {days}")
    return days


def purge_runs(
    instance: dg.DagsterInstance,
    older_than_days: float,
    *,
    dry_run: bool = False,
    batch: int = 500,
    now: float | None = None,
    tags: Mapping[str, str] | None = None,
) -> int:
    """Delete finished runs created more than ``older_than_days`` ago; returns how many.

    ``tags``: only runs carrying all of them (e.g. ``{"platform/lane": "onboarding"}``). Runs are
    selected ``batch`` at a time, oldest first, in the run storage (status, creation time and
    tags are filtered there, not in Python) and each batch is deleted (``delete_run``: the run,
    its tags and its event log) before the next is read, so a pass over millions of runs holds
    one batch in memory and does not walk past the younger runs on every page. A dry run counts
    every matching run.
    """
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    before = datetime.fromtimestamp(cutoff, tz=UTC)
    filters = dg.RunsFilter(statuses=FINISHED, created_before=before, tags=dict(tags or {}))
    if dry_run:
        return instance.get_runs_count(filters=filters)
    deleted = 0
    while True:
        # oldest first: the scan starts among the runs to delete instead of walking past every
        # run younger than the horizon (2 days of onboarding runs: 172,800 at 1 signup/s)
        records = instance.get_run_records(filters=filters, limit=batch, ascending=True)
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
            deleted += 1
        if len(records) < batch:
            return deleted


def purge_onboarding_runs(
    instance: dg.DagsterInstance,
    older_than_days: float | None = None,
    *,
    dry_run: bool = False,
    batch: int = 500,
    now: float | None = None,
) -> int:
    """:func:`purge_runs` of the onboarding lane only, after its short horizon (module docstring)."""
    horizon = onboarding_run_horizon_days() if older_than_days is None else older_than_days
    return purge_runs(
        instance,
        horizon,
        dry_run=dry_run,
        batch=batch,
        now=now,
        tags={LANE_TAG: ONBOARDING_LANE},
    )


@dataclass(frozen=True)
class RetireSpec:
    """Which keys of a dynamic partitions definition may be retired.

    ``created_at(key)``: the key's creation time (epoch seconds; ``None``: never retire it).
    Keys are scanned in insertion order and the scan stops at the first key younger than the
    horizon. ``done(resources, keys)``: one flag per key, True when its work is finished (a decided
    applicant); ``resources`` has the job's ``resource_keys`` as attributes (``context.resources``
    in the job, any object with the same attributes elsewhere, e.g. ``scripts/purge_runs.py``).
    """

    partitions_def_name: str
    created_at: Callable[[str], float | None]
    done: Callable[[Any, Sequence[str]], Sequence[bool]]
    resource_keys: frozenset[str] = frozenset()


def _delete_partitions(instance: dg.DagsterInstance, name: str, keys: Sequence[str]) -> None:
    """Delete ``keys`` of dynamic partitions definition ``name``.

    On SQL event-log storage (SQLite, PostgreSQL) one ``DELETE ... IN (...)`` per 500 keys: the
    public ``delete_dynamic_partition`` is one statement per key (about 280 keys/s on SQLite,
    an hour for a million); elsewhere, that public call per key.
    """
    storage = instance.event_log_storage
    try:
        import sqlalchemy as db
        from dagster._core.storage.event_log.schema import DynamicPartitionsTable
        from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    except ImportError:  # pragma: no cover - a Dagster without these internals
        storage = None
    if not isinstance(storage, SqlEventLogStorage):
        for key in keys:
            instance.delete_dynamic_partition(name, key)
        return
    table = DynamicPartitionsTable
    for start in range(0, len(keys), 500):
        chunk = list(keys[start : start + 500])
        with storage.index_connection() as conn:
            conn.execute(
                table.delete().where(
                    db.and_(table.c.partitions_def_name == name, table.c.partition.in_(chunk))
                )
            )


def retire_partitions(
    instance: dg.DagsterInstance,
    spec: RetireSpec,
    older_than_days: float,
    *,
    resources: Any = None,
    dry_run: bool = False,
    page: int = 1000,
    now: float | None = None,
) -> tuple[int, int]:
    """Delete ``spec``'s keys older than the horizon whose work is done.

    Returns (retired, kept because not done).
    """
    retired, kept, _ = retire_some(
        instance, spec, older_than_days, resources=resources, dry_run=dry_run, page=page, now=now
    )
    return retired, kept


def retire_some(
    instance: dg.DagsterInstance,
    spec: RetireSpec,
    older_than_days: float,
    *,
    resources: Any = None,
    dry_run: bool = False,
    page: int = 1000,
    now: float | None = None,
    max_keys: int | None = None,
    cursor: str | None = None,
) -> tuple[int, int, str | None]:
    """:func:`retire_partitions` from ``cursor`` (``None``: the oldest key), looking at no more
    than ``max_keys`` keys; returns (retired, kept, where the next call resumes: ``None`` once
    the scan reached a young key or the end, so the next call starts over at the oldest)."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    retired = kept = scanned = 0
    while max_keys is None or scanned < max_keys:
        limit = page if max_keys is None else min(page, max_keys - scanned)
        result = instance.get_paginated_dynamic_partitions(
            spec.partitions_def_name, limit=limit, ascending=True, cursor=cursor
        )
        old: list[str] = []
        reached_young = False
        for key in result.results:
            created = spec.created_at(key)
            if created is None:
                continue
            if created >= cutoff:
                reached_young = True
                break
            old.append(key)
        scanned += len(result.results)
        flags = list(spec.done(resources, old)) if old else []
        finished = [k for k, ok in zip(old, flags, strict=True) if ok]
        kept += len(old) - len(finished)
        if finished and not dry_run:
            _delete_partitions(instance, spec.partitions_def_name, finished)
        retired += len(finished)
        if reached_young or not result.has_more:
            return retired, kept, None
        # deleted keys leave the table, but the id cursor stays valid for the rest
        cursor = result.cursor
    return retired, kept, cursor


def retire_after_seconds() -> float:
    """How long a done key stays a live partition (``PLATFORM_RETIRE_AFTER_SECONDS``)."""
    return float(os.environ.get(RETIRE_AFTER_ENV, DEFAULT_RETIRE_AFTER_S))


def build_retire_sensor(spec: RetireSpec) -> dg.SensorDefinition:
    """A sensor that retires ``spec``'s done keys minutes after they are done (module docstring)."""

    @dg.sensor(
        name=f"{spec.partitions_def_name}_retire_sensor",
        minimum_interval_seconds=RETIRE_SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys=set(spec.resource_keys),
        description=(
            f"Retire done {spec.partitions_def_name!r} partitions older than "
            f"${RETIRE_AFTER_ENV} ({DEFAULT_RETIRE_AFTER_S:.0f} s by default)."
        ),
    )
    def retire_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        after = retire_after_seconds()
        if after < 0:
            return dg.SkipReason(f"{RETIRE_AFTER_ENV} < 0: retiring is off")
        before = time.monotonic()
        retired, kept, resume = retire_some(
            context.instance,
            spec,
            after / 86400,
            resources=context.resources,
            max_keys=RETIRE_MAX_KEYS_PER_TICK,
            cursor=context.cursor or None,
        )
        context.update_cursor(resume or "")  # a capped pass resumes where it stopped
        return dg.SkipReason(
            f"retired {retired} done partition(s) older than {after:.0f} s, kept {kept} not done "
            f"({time.monotonic() - before:.2f} s{', more next tick' if resume else ''})"
        )

    return retire_sensor


class HousekeepingConfig(dg.Config):
    horizon_days: float | None = None  # default: retention_horizon_days()
    onboarding_horizon_days: float | None = None  # default: onboarding_run_horizon_days()
    dry_run: bool = False


class OnboardingPurgeConfig(dg.Config):
    onboarding_horizon_days: float | None = None  # default: onboarding_run_horizon_days()
    dry_run: bool = False


def build_housekeeping(
    retire: Sequence[RetireSpec] = (),
    *,
    cron: str = DEFAULT_CRON,
    onboarding_cron: str = ONBOARDING_PURGE_CRON,
    tags: dict[str, str] | None = None,
) -> dg.Definitions:
    """The ``platform_housekeeping`` job, the hourly ``platform_onboarding_purge`` job and their
    schedules (include in ONE code location)."""
    resource_keys = set().union(*(s.resource_keys for s in retire)) if retire else set()

    @dg.op(
        name="housekeeping",
        required_resource_keys=resource_keys,
        description=(
            "Retire old done dynamic partitions, purge finished runs (platform horizon), then "
            "finished onboarding runs (the lane's short horizon)."
        ),
    )
    def housekeeping(context: dg.OpExecutionContext, config: HousekeepingConfig) -> None:
        horizon = (
            config.horizon_days if config.horizon_days is not None else (retention_horizon_days())
        )
        meta: dict[str, object] = {"horizon_days": horizon, "dry_run": config.dry_run}
        for spec in retire:
            before = time.monotonic()
            retired, kept = retire_partitions(
                context.instance, spec, horizon, resources=context.resources, dry_run=config.dry_run
            )
            meta[f"{spec.partitions_def_name}_retired"] = retired
            meta[f"{spec.partitions_def_name}_kept_not_done"] = kept
            context.log.info(
                f"{spec.partitions_def_name}: retired {retired} partition(s) older than "
                f"{horizon} days, kept {kept} not done ({time.monotonic() - before:.1f} s)"
            )
        purged = purge_runs(context.instance, horizon, dry_run=config.dry_run)
        meta["runs_purged"] = purged
        context.log.info(f"purged {purged} finished run(s) older than {horizon} days")
        _purge_onboarding(context, config.onboarding_horizon_days, config.dry_run, meta)
        context.add_output_metadata(meta)  # type: ignore[arg-type]

    @dg.op(
        name="purge_onboarding_runs",
        description="Purge finished onboarding-lane runs older than the lane's short horizon.",
    )
    def purge_onboarding(context: dg.OpExecutionContext, config: OnboardingPurgeConfig) -> None:
        meta: dict[str, object] = {"dry_run": config.dry_run}
        _purge_onboarding(context, config.onboarding_horizon_days, config.dry_run, meta)
        context.add_output_metadata(meta)  # type: ignore[arg-type]

    @dg.job(
        name=JOB_NAME,
        description=(
            "Nightly retention: retire decided applicants' partitions and purge finished runs "
            f"older than the platform horizon ({retention_horizon_days()} days: the longest "
            f"window an asset reads + {MARGIN_DAYS}), and finished onboarding runs older than "
            f"the lane's horizon (${ONBOARDING_HORIZON_ENV}, "
            f"{DEFAULT_ONBOARDING_HORIZON_DAYS:g} days by default)."
        ),
        tags={"platform/lane": "batch", "dagster/max_runtime": "3600", **(tags or {})},
    )
    def housekeeping_job() -> None:
        housekeeping()

    @dg.job(
        name=ONBOARDING_PURGE_JOB_NAME,
        description=(
            "Hourly: purge finished onboarding-lane runs older than the lane's horizon "
            f"(${ONBOARDING_HORIZON_ENV}, {DEFAULT_ONBOARDING_HORIZON_DAYS:g} days by default); "
            "their decisions stay in the lake and on the decisions stream."
        ),
        tags={"platform/lane": "batch", "dagster/max_runtime": "3600", **(tags or {})},
    )
    def onboarding_purge_job() -> None:
        purge_onboarding()

    job = housekeeping_job
    schedule = dg.ScheduleDefinition(
        name=f"{JOB_NAME}_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs platform_housekeeping nightly; a failure alerts like any failed run.",
    )
    onboarding_schedule = dg.ScheduleDefinition(
        name=f"{ONBOARDING_PURGE_JOB_NAME}_schedule",
        job=onboarding_purge_job,
        cron_schedule=onboarding_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Runs platform_onboarding_purge hourly, so one pass deletes an hour of onboarding "
            "runs; a failure alerts like any failed run."
        ),
    )
    return dg.Definitions(
        jobs=[job, onboarding_purge_job],
        schedules=[schedule, onboarding_schedule],
        sensors=[build_retire_sensor(spec) for spec in retire],
    )


def _purge_onboarding(
    context: dg.OpExecutionContext,
    horizon_days: float | None,
    dry_run: bool,
    meta: dict[str, object],
) -> None:
    horizon = onboarding_run_horizon_days() if horizon_days is None else horizon_days
    before = time.monotonic()
    purged = purge_onboarding_runs(context.instance, horizon, dry_run=dry_run)
    meta["onboarding_horizon_days"] = horizon
    meta["onboarding_runs_purged"] = purged
    context.log.info(
        f"purged {purged} finished onboarding run(s) older than {horizon} days "
        f"({time.monotonic() - before:.1f} s)"
    )
