"""How signups become onboarding runs: the signup sensor and the onboarding failure sensor.

This module owns the run protocol both sides share (the ``onboarding`` job name, the
``applicants`` partitions, the run tags); ``risk_assets.onboarding`` defines the job and assets
from these names and imports the sensors from here, never the other way round. The Redis side
(consumer group, batches, guards) is ``risk_assets.streams``.

``signup_sensor`` (running by default, every sensor-daemon loop: 1 s with ``dagster.yaml``'s
``sensor_loop_seconds``, Dagster's 5 s otherwise; one tick in flight at a time) reads the ``signups``
stream through the Redis consumer group ``onboarding``, so its position lives in Redis, not in
the Dagster cursor: a lost or reset ``DAGSTER_HOME`` neither replays nor skips signups. Each
tick:

1. re-reads this consumer's pending entries (delivered before, not yet decided), then new ones;
2. acknowledges entries already decided or dead-lettered; dead-letters malformed ones
   (atomically with their ``XACK``);
3. for pending entries already in a batch: asks again for the batch's run (same run key, so
   Dagster skips it when the run exists) when this instance has no such run; when the run has
   stalled (started or finished ``ONBOARDING_STALL_SECONDS`` (120) ago, or starting for 180 s,
   without a decision, e.g. its process was killed) asks for a retry of its undecided
   applicants under a new run key, and after ``ONBOARDING_MAX_ATTEMPTS`` (3) publishes ``review``;
4. with no new entry yet, listens up to ``ONBOARDING_LISTEN_SECONDS`` (4) for one (a blocking
   read that covers most of the time between ticks, so a signup is picked up as it arrives),
   then groups the new valid entries into batches (up to ``ONBOARDING_MAX_PER_RUN``, 100),
   records them in Redis, adds one ``applicants`` partition each and requests one run each
   (launched at once: ``direct_lanes`` of the run coordinator in ``dagster.yaml``).

The tick adds the partitions of all its batches itself, in one ``add_dynamic_partitions``
call (which skips existing keys), before it returns its run requests, instead of returning an
``AddDynamicPartitionsRequest`` per batch: Dagster's sensor daemon checks each requested key
with its own query, 11.3 s for a tick of 500 new applicants against 0.06 s for the one call
(SQLite, load average 30 on the shared 2-core machine). Its ticks list no added partitions.

``applicants`` partitions are short-lived: once an applicant is decided, the housekeeping retire
sensor (``sensors/housekeeping.py``) deletes its partition after ``PLATFORM_RETIRE_AFTER_SECONDS``
(600), so the partition list a multi-applicant run resolves stays bounded by the signups of the
last minutes, however many applicants the instance has decided. Runs, materializations (by
partition key), lake objects and decisions stay; a retired applicant is re-run by re-adding its
key (``<user slug>_<signup id>``) and launching that partition.

An entry is acknowledged only when its decision (or dead letter) is written, in the same Lua
script, so a crash at any point leaves it pending and it is picked up again; decisions are
guarded per signup id, so a repeated run never publishes twice.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from resources.alerts import AlertsResource, run_url
from resources.redis_store import RedisResource
from risk_assets import streams
from risk_assets.validation import signup_id_of, validate_signup

ONBOARDING_JOB = "onboarding"
APPLICANTS = "applicants"
RUN_TAGS = {"platform/lane": "onboarding", "dagster/priority": "10"}
RUN_KEY_TAG = "dagster/run_key"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
WAITING = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED}
FAILURE_SCORE = 0.5
STARTING_STALL_S = 180.0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class TickPlan:
    """What one sensor tick decided."""

    batches: list[streams.Batch] = field(default_factory=list)
    dead: int = 0
    acked: int = 0
    reviewed: int = 0
    pending: int = 0
    new: int = 0


def batch_run_request(batch: streams.Batch) -> dg.RunRequest:
    """One run for a batch: a single partition, or a contiguous range of partitions."""
    tags = {
        **RUN_TAGS,
        "onboarding/batch": batch.batch_id,
        "onboarding/size": str(len(batch.partitions)),
    }
    if len(batch.partitions) == 1:
        return dg.RunRequest(run_key=batch.run_key, partition_key=batch.partitions[0], tags=tags)
    tags[RANGE_START_TAG], tags[RANGE_END_TAG] = batch.partitions[0], batch.partitions[-1]
    return dg.RunRequest(run_key=batch.run_key, tags=tags)


def _run_record(instance: dg.DagsterInstance, run_key: str):
    records = instance.get_run_records(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return records[0] if records else None


def _publish_review(client, signup_id: str, reason: str) -> bool:
    fields = streams.signup_fields(client, [signup_id])[signup_id] or {}
    created, _ = streams.publish_decision(
        client,
        {
            "user_id": fields.get("user_id", ""),
            "signup_id": signup_id,
            "decision": "review",
            "score": FAILURE_SCORE,
            "reason": reason,
        },
    )
    return created


def plan_tick(
    client,
    instance: dg.DagsterInstance,
    *,
    max_new: int = 500,
    max_per_run: int = 100,
    stall_s: float = 60.0,
    max_attempts: int = 3,
    listen_s: float = 0.0,
    now: float | None = None,
) -> TickPlan:
    """Read owed signups and decide which batch runs to (re)request (see module docstring)."""
    plan = TickPlan()
    read = streams.read_owed(client, max_new=max_new, listen_s=listen_s)
    now = time.time() if now is None else now
    plan.pending, plan.new = read.n_pending, read.n_new
    if not read.entries:
        return plan
    states = streams.guards(client, [sid for sid, _ in read.entries])
    fresh: list[tuple[str, str]] = []
    batch_ids: dict[str, None] = {}
    for (sid, fields), (decided, dead, batch_id) in zip(read.entries, states, strict=True):
        if decided or dead:
            client.xack(streams.SIGNUPS, streams.GROUP, sid)
            plan.acked += 1
        elif batch_id:
            batch_ids[batch_id] = None
        else:
            verdict = validate_signup(sid, fields)
            if verdict.ok:
                fresh.append((sid, verdict.application["partition_key"]))
            else:
                streams.dead_letter(client, sid, verdict.reason or "invalid", fields)
                plan.dead += 1
    for batch_id in batch_ids:
        batch = streams.load_batch(client, batch_id)
        if batch is None:
            continue
        record = _run_record(instance, batch.run_key)
        if record is None:
            plan.batches.append(batch)
            continue
        status = record.dagster_run.status
        if status in WAITING:
            continue
        if status == dg.DagsterRunStatus.STARTING or record.start_time is None:
            since, limit = record.create_timestamp.timestamp(), max(stall_s, STARTING_STALL_S)
        else:
            since, limit = record.start_time, stall_s
        if now - since < limit:
            continue
        owed = [
            (s, p)
            for s, p in zip(batch.signups, batch.partitions, strict=True)
            if not streams.is_decided(client, s)
        ]
        undecided = [s for s, _ in owed]
        if batch.attempt + 1 >= max_attempts:
            reason = f"onboarding run {status.value.lower()} after {batch.attempt + 1} attempts"
            plan.reviewed += sum(_publish_review(client, s, reason) for s in undecided)
            continue
        if not owed:
            continue
        # the retry covers the undecided applicants only: decided ones may have been retired
        # from the partitions already, and a range must start and end at live keys
        batch.signups, batch.partitions = undecided, [p for _, p in owed]
        batch.attempt += 1
        batch.run_key = f"onboarding:{batch.batch_id}~{batch.attempt}"
        batch.created_at = now
        streams.save_batches(client, [batch])
        plan.batches.append(batch)
    new_batches = [
        streams.Batch(
            batch_id=chunk[0][0],
            signups=[s for s, _ in chunk],
            partitions=[p for _, p in chunk],
            run_key=f"onboarding:{chunk[0][0]}",
            created_at=now,
        )
        for chunk in (fresh[i : i + max_per_run] for i in range(0, len(fresh), max_per_run))
    ]
    streams.save_batches(client, new_batches)
    plan.batches.extend(new_batches)
    return plan


def build_signup_sensor(listen_s: float | None = None) -> dg.SensorDefinition:
    """The sensor; ``listen_s`` (default ``ONBOARDING_LISTEN_SECONDS``, 4) bounds its wait."""

    @dg.sensor(
        name="signup_sensor",
        job_name=ONBOARDING_JOB,
        # every sensor-daemon loop (1 s with dagster.yaml's sensor_loop_seconds, else 5 s); the
        # tick listens for signups most of that time and only one tick is ever in flight
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Signups from Redis to per-applicant onboarding runs (consumer group).",
    )
    def signup_sensor(context: dg.SensorEvaluationContext, redis: RedisResource):
        """Turn new ``signups`` entries into applicant partitions and onboarding runs."""
        plan = plan_tick(
            redis.get_client(),
            context.instance,
            max_per_run=_env_int("ONBOARDING_MAX_PER_RUN", 100),
            stall_s=float(os.environ.get("ONBOARDING_STALL_SECONDS", 120)),
            max_attempts=_env_int("ONBOARDING_MAX_ATTEMPTS", 3),
            listen_s=(
                float(os.environ.get("ONBOARDING_LISTEN_SECONDS", 4.0))
                if listen_s is None
                else listen_s
            ),
        )
        summary = (
            f"pending={plan.pending} new={plan.new} dead={plan.dead} acked={plan.acked} "
            f"reviewed={plan.reviewed} runs={len(plan.batches)}"
        )
        if not plan.batches:
            return dg.SkipReason(summary)
        context.log.info(summary)
        # one bulk insert per tick, before the runs that resolve these keys are requested
        keys = list(dict.fromkeys(p for b in plan.batches for p in b.partitions))
        context.instance.add_dynamic_partitions(APPLICANTS, keys)
        return dg.SensorResult(run_requests=[batch_run_request(b) for b in plan.batches])

    return signup_sensor


def run_partitions(
    instance: dg.DagsterInstance, tags: dict[str, str], client: Any = None
) -> list[str]:
    """The applicants partitions a run covered: its partition tag, else its batch's partitions
    (recorded in Redis), else its range resolved through the partition list."""
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not start or not end:
        return []
    batch = (
        streams.load_batch(client, tags["onboarding/batch"])
        if client and tags.get("onboarding/batch")
        else None
    )
    if batch is not None and batch.partitions:
        return batch.partitions
    keys = instance.get_dynamic_partitions(APPLICANTS)
    if start not in keys or end not in keys:
        return [start, end]
    return keys[keys.index(start) : keys.index(end) + 1]


def review_failed_run(client, partitions: list[str], reason: str) -> int:
    """Publish ``review`` for every applicant of a failed run that has no decision yet."""
    published = 0
    for p in partitions:
        published += _publish_review(client, signup_id_of(p), reason)
    return published


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        while (
            error is not None and error.cause is not None and error.cls_name.startswith("Dagster")
        ):
            error = error.cause
        message = (error.message if error else "").strip().splitlines()
        return f"onboarding failed at {event.step_key}: {message[0][:150] if message else 'error'}"
    return f"onboarding run failed: {(context.failure_event.message or 'unknown')[:150]}"


def build_onboarding_failure_sensor(job: Any) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name="onboarding_failure_sensor",
        monitored_jobs=[job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
    )
    def onboarding_failure_sensor(
        context: dg.RunFailureSensorContext, redis: RedisResource, alerts: AlertsResource
    ):
        """A failed onboarding run still decides its applicants: ``review`` with the reason."""
        run = context.dagster_run
        client = redis.get_client()
        partitions = run_partitions(context.instance, dict(run.tags), client)
        reason = failure_reason(context)
        n = review_failed_run(client, partitions, reason)
        alerts.send(
            f":warning: onboarding run failed for {len(partitions)} applicant(s) "
            f"({n} sent to review): {reason}\nRun: {run_url(run.run_id)}",
            context.log,
        )

    return onboarding_failure_sensor
