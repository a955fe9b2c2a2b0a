"""Write-audit-publish under concurrency and faults, against a real lake (local, moto S3) and Redis.

- two publishers of one partition, many iterations: production is always exactly one audited
  version, no raw ``FileNotFoundError`` / ``FileExistsError``, a publisher that cannot get the
  lock in time fails with a retryable message;
- a crash at each step of a lake + Redis publish (the ``fault`` hook of ``write_audit_publish``
  raises, or the process exits): the next run converges lake and Redis to one version, the
  backups hold the version production held before, no staging is left, and the run's
  materialization names what production holds;
- a reply lost after the Redis swap ran: read back and recorded as published.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import redis

from publishing import journal
from publishing.redis_hash import RedisHashTarget, json_rows
from publishing.tables import publish_pool, publish_state_keys
from publishing.wap import (
    STEPS,
    converge,
    has_columns,
    no_nulls,
    rows_satisfy,
    write_audit_publish,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource

TABLE = "faulty"
PART = "date=2024-05-02"
KEY = "faulty:live"
encode = json_rows("id", {"score": "score"})
AUDITS = [
    has_columns("id", "score"),
    no_nulls("id"),
    rows_satisfy("score_positive", "Scores are positive.", lambda df: df["score"] > 0),
]


class Crash(BaseException):
    """A crash at a publish step: nothing of the publisher's own error handling runs."""


@dataclass
class Ctx:
    """What write-audit-publish uses of a Dagster execution context."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    asset_key: dg.AssetKey = field(default_factory=lambda: dg.AssetKey(TABLE))
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test_publish_faults"))


def version(v: int) -> pd.DataFrame:
    """Version ``v``: ``5 + v % 7`` rows, every score ``v`` (a mixed or partial copy shows)."""
    return pd.DataFrame({"id": [f"k{i}" for i in range(5 + v % 7)], "score": v})


def which(df: pd.DataFrame | None) -> int | None:
    """The version a table holds (asserting it is one complete version)."""
    if df is None or not len(df):
        return None
    (v,) = set(df["score"].tolist())
    assert len(df) == 5 + v % 7, f"partial version {v}: {len(df)} rows"
    return int(v)


def lake_version(lake: LakeResource, root: str) -> int | None:
    key = f"{root}/{TABLE}/{PART}/part-0.parquet"
    return which(lake.read_parquet(key)) if lake.exists(key) else None


def redis_version(client: redis.Redis, key: str) -> int | None:
    values = client.hvals(key)
    if not values:
        return None
    (v,) = {json.loads(x)["score"] for x in values}
    assert len(values) == 5 + v % 7
    return int(v)


def publish(
    lake: LakeResource,
    v: int,
    client: redis.Redis | None = None,
    fault=None,
    ctx: Ctx | None = None,
    lock_wait_s: float | None = None,
) -> dict:
    """One write-audit-publish of version ``v``; returns the materialization metadata."""
    targets = [RedisHashTarget(client, KEY, encode)] if client is not None else []
    events = write_audit_publish(
        ctx or Ctx(),
        lake,
        AlertsResource(),
        TABLE,
        PART,
        version(v),
        AUDITS,
        targets=targets,
        fault=fault,
        lock_wait_s=lock_wait_s,
    )
    (mat,) = [e for e in events if isinstance(e, dg.MaterializeResult)]
    return dict(mat.metadata or {})


def leftovers(lake: LakeResource, client: redis.Redis | None = None) -> list[str]:
    found = lake.list(f"staging/{TABLE}")
    if lake.backend == "local":
        found += [str(p) for p in Path(lake.root).rglob(".tmp-*")]
    if client is not None:
        found += client.keys(f"{KEY}:staging:*")
    return found


# ---- one publisher at a time ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_publishers_of_one_partition_publish_only_audited_versions(
    backend: str, tmp_lake: LakeResource, request: pytest.FixtureRequest
) -> None:
    lake = tmp_lake if backend == "local" else request.getfixturevalue("s3_lake")
    iterations = 12 if backend == "local" else 5
    audited: set[int] = set()
    errors: list[BaseException] = []
    mismatches: list[str] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        for i in range(iterations):
            v = 100 * (w + 1) + i
            audited.add(v)
            try:
                meta = publish(lake, v)
            except BaseException as exc:
                errors.append(exc)
                continue
            assert meta["version"]

    def reader() -> None:
        while not stop.is_set():
            try:
                v = lake_version(lake, "curated")
            except AssertionError as exc:
                mismatches.append(str(exc))
                continue
            if v is not None and v not in audited:
                mismatches.append(f"unaudited version {v} in production")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    watcher.join(10)
    assert errors == [] and mismatches == []
    assert lake_version(lake, "curated") in audited
    assert lake_version(lake, "backup") in audited
    assert leftovers(lake) == []


def _publish_in_process(root: str, first: int, n: int, out: mp.Queue) -> None:
    lake = LakeResource(root=root)
    failures = []
    for v in range(first, first + n):
        try:
            publish(lake, v)
        except BaseException as exc:  # report, never hide
            failures.append(f"{type(exc).__name__}: {exc}")
    out.put(failures)


def test_two_processes_publishing_one_partition(tmp_lake: LakeResource) -> None:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_publish_in_process, args=(tmp_lake.root, first, 15, out))
        for first in (1, 201)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == [[], []]
    assert lake_version(tmp_lake, "curated") in {*range(1, 16), *range(201, 216)}
    assert leftovers(tmp_lake) == []


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_publisher_that_cannot_get_the_lock_fails_retryably(
    backend: str, tmp_lake: LakeResource, request: pytest.FixtureRequest
) -> None:
    lake = tmp_lake if backend == "local" else request.getfixturevalue("s3_lake")
    publish(lake, 1)
    with (
        journal.publish_lock(lake, TABLE, PART, owner="run-holding-it"),
        pytest.raises(dg.Failure) as failure,
    ):
        publish(lake, 2, lock_wait_s=0.3)
    assert failure.value.allow_retries is True
    assert "another publish of this partition is in progress" in failure.value.description
    assert "run-holding-it" in failure.value.description
    assert lake_version(lake, "curated") == 1 and leftovers(lake) == []
    publish(lake, 3)  # released: the next one goes through
    assert lake_version(lake, "curated") == 3 and lake_version(lake, "backup") == 1


def test_the_pool_name_per_table() -> None:
    assert publish_pool(TABLE) == "publish/faulty"
    assert publish_state_keys(TABLE, PART)[1] == "_locks/publish/faulty/date=2024-05-02"


# ---- crashes at every step ------------------------------------------------------------------

CRASH_STEPS = [s.format("redis") for s in STEPS]


def crash_at(step: str):
    def hook(at: str) -> None:
        if at == step:
            raise Crash(step)

    return hook


def assert_consistent(lake: LakeResource, client: redis.Redis) -> int:
    """Lake and Redis serve one version; no stage is left; returns that version."""
    live = lake_version(lake, "curated")
    assert live == redis_version(client, KEY), "lake and Redis disagree"
    assert client.hget(f"{KEY}:meta", "content") == journal.read_stamp(
        lake, f"curated/{TABLE}/{PART}"
    ).get("content")
    assert journal.read_journal(lake, TABLE, PART) is None
    assert leftovers(lake, client) == []
    return live


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_a_crash_at_any_step_converges_on_the_next_run(
    step: str, tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    publish(tmp_lake, 1, redis_client)
    with pytest.raises(Crash):
        publish(tmp_lake, 2, redis_client, fault=crash_at(step))
    # what the next run does first (under the lock): converge, then its own publish
    note = converge(tmp_lake, TABLE, PART, [RedisHashTarget(redis_client, KEY, encode)])
    held = assert_consistent(tmp_lake, redis_client)
    before_journal = CRASH_STEPS.index(step) < CRASH_STEPS.index("journal")
    assert held == (1 if before_journal else 2)
    if not before_journal and step != "done":
        assert note and "rolled forward" in note
    meta = publish(tmp_lake, 3, redis_client)
    assert assert_consistent(tmp_lake, redis_client) == 3
    assert lake_version(tmp_lake, "backup") == held == redis_version(redis_client, f"{KEY}:backup")
    assert meta["version"] == redis_client.hget(f"{KEY}:meta", "version")
    assert journal.read_stamp(tmp_lake, f"curated/{TABLE}/{PART}")["version"] == meta["version"]


def test_the_next_run_itself_converges_and_says_so(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    publish(tmp_lake, 1, redis_client)
    with pytest.raises(Crash):
        publish(tmp_lake, 2, redis_client, fault=crash_at("lake_swap"))
    assert lake_version(tmp_lake, "curated") == 2 and redis_version(redis_client, KEY) == 1
    meta = publish(tmp_lake, 3, redis_client)
    assert "rolled forward" in meta["recovered"] and "redis swapped in" in meta["recovered"]
    assert assert_consistent(tmp_lake, redis_client) == 3
    assert lake_version(tmp_lake, "backup") == 2 == redis_version(redis_client, f"{KEY}:backup")


def test_a_lost_redis_stage_rolls_the_lake_back(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    publish(tmp_lake, 1, redis_client)
    publish(tmp_lake, 4, redis_client)
    with pytest.raises(Crash):
        publish(tmp_lake, 2, redis_client, fault=crash_at("lake_swap"))
    for k in redis_client.keys(f"{KEY}:staging:*"):  # e.g. Redis restarted without persistence
        redis_client.delete(k)
    note = converge(tmp_lake, TABLE, PART, [RedisHashTarget(redis_client, KEY, encode)])
    assert note and "rolled back" in note
    assert assert_consistent(tmp_lake, redis_client) == 4
    assert lake_version(tmp_lake, "backup") == 1  # as before the crashed run
    publish(tmp_lake, 5, redis_client)
    assert lake_version(tmp_lake, "backup") == 4 == redis_version(redis_client, f"{KEY}:backup")


def test_republishing_the_rows_production_holds_keeps_the_real_backup(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    """Issue 14 3(b): crash between lake and Redis, then a re-run of the same data."""
    publish(tmp_lake, 1, redis_client)
    with pytest.raises(Crash):
        publish(tmp_lake, 2, redis_client, fault=crash_at("lake_swap"))
    meta = publish(tmp_lake, 2, redis_client)  # the retry: same rows, a new run
    assert meta["production_holds"].startswith("unchanged")
    assert assert_consistent(tmp_lake, redis_client) == 2
    assert lake_version(tmp_lake, "backup") == 1 == redis_version(redis_client, f"{KEY}:backup")


def _crash_in_child(root: str, url: str, step: str) -> None:
    def die(at: str) -> None:
        if at == step:
            os._exit(17)  # kill: no finally, no handler, no lock release by the code

    publish(LakeResource(root=root), 2, redis.Redis.from_url(url, decode_responses=True), die)
    os._exit(0)


@pytest.mark.parametrize("step", ["lake_backup", "target:redis"])
def test_a_killed_process_converges_on_the_next_run(
    step: str, tmp_lake: LakeResource, redis_client: redis.Redis, redis_url: str
) -> None:
    publish(tmp_lake, 1, redis_client)
    child = mp.get_context("fork").Process(
        target=_crash_in_child, args=(tmp_lake.root, redis_url, step)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 17
    meta = publish(tmp_lake, 3, redis_client, lock_wait_s=5)  # the dead holder's lock is free
    assert "rolled forward" in meta["recovered"]
    assert assert_consistent(tmp_lake, redis_client) == 3
    assert lake_version(tmp_lake, "backup") == 2 == redis_version(redis_client, f"{KEY}:backup")


# ---- a lost reply -----------------------------------------------------------------------------


def test_a_lost_reply_after_the_redis_swap_is_read_back_as_published(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    publish(tmp_lake, 1, redis_client)

    def drop_reply(at: str) -> None:
        if at == "target:redis":  # the swap ran; its reply never arrives
            raise redis.ConnectionError("Connection closed by server.")

    meta = publish(tmp_lake, 2, redis_client, fault=drop_reply)
    assert "reply lost" in meta["redis"] and "read back" in meta["redis"]
    assert assert_consistent(tmp_lake, redis_client) == 2
    assert meta["version"] == redis_client.hget(f"{KEY}:meta", "version")
    assert lake_version(tmp_lake, "backup") == 1 == redis_version(redis_client, f"{KEY}:backup")


def test_a_redis_failure_before_the_swap_rolls_back_and_the_record_says_so(
    tmp_lake: LakeResource, redis_client: redis.Redis, slack_server
) -> None:
    publish(tmp_lake, 1, redis_client)
    publish(tmp_lake, 4, redis_client)

    class Unreachable(RedisHashTarget):
        def publish(self, partition):  # the swap never reaches Redis
            raise redis.ConnectionError("Error 111 connecting: Connection refused.")

    target = Unreachable(redis_client, KEY, encode)
    events = write_audit_publish(
        Ctx(),
        tmp_lake,
        AlertsResource(token="xoxb-test", api_url=slack_server.url),
        TABLE,
        PART,
        version(2),
        AUDITS,
        targets=[target],
    )
    with pytest.raises(dg.Failure, match="redis publish failed"):
        list(events)
    assert assert_consistent(tmp_lake, redis_client) == 4
    assert lake_version(tmp_lake, "backup") == 1  # the real previous version survives
    (message,) = slack_server.messages()
    assert "rolled back" in message and "production holds version" in message


def test_partial_objects_a_killed_writer_left_are_cleared_by_the_next_run(
    tmp_lake: LakeResource,
) -> None:
    publish(tmp_lake, 1)
    for folder in ("curated", "staging"):  # a kill -9 inside a copy / a staging write
        path = Path(tmp_lake.uri(f"{folder}/{TABLE}/{PART}")) / ".tmp-killed.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    meta = publish(tmp_lake, 2)
    assert "cleared 2" in meta["recovered"]
    assert leftovers(tmp_lake) == []
    assert lake_version(tmp_lake, "curated") == 2


def test_an_expired_s3_lease_of_a_dead_run_is_taken_over(s3_lake: LakeResource) -> None:
    publish(s3_lake, 1)
    store = s3_lake.store
    _, lock_key = publish_state_keys(TABLE, PART)
    dead = {"owner": "dead-run", "token": "t0", "since": "2024-01-01T00:00:00Z", "expires": 1.0}
    store.client.put_object(
        Bucket=store.bucket, Key=store._key(lock_key), Body=json.dumps(dead).encode()
    )
    publish(s3_lake, 2, lock_wait_s=5)
    assert lake_version(s3_lake, "curated") == 2
    assert not s3_lake.exists(lock_key)  # released after the publish


def test_a_restore_without_the_serving_copy_leaves_an_interrupted_publish_to_the_next_run(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    from publishing.wap import restore_table

    publish(tmp_lake, 1, redis_client)
    with pytest.raises(Crash):
        publish(tmp_lake, 2, redis_client, fault=crash_at("lake_swap"))
    with pytest.raises(RuntimeError, match="needs the target"):
        restore_table(tmp_lake, TABLE, PART)  # scripts/restore.py's lake part: no targets
    assert journal.read_journal(tmp_lake, TABLE, PART) is not None
    meta = publish(tmp_lake, 3, redis_client)
    assert "rolled forward" in meta["recovered"]
    assert assert_consistent(tmp_lake, redis_client) == 3


def test_a_crash_after_the_backup_copy_then_a_lost_stage_keeps_the_real_backup(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    publish(tmp_lake, 1, redis_client)
    publish(tmp_lake, 4, redis_client)
    with pytest.raises(Crash):
        publish(tmp_lake, 2, redis_client, fault=crash_at("lake_backup"))
    for k in redis_client.keys(f"{KEY}:staging:*"):
        redis_client.delete(k)
    note = converge(tmp_lake, TABLE, PART, [RedisHashTarget(redis_client, KEY, encode)])
    assert note and "rolled back" in note
    assert assert_consistent(tmp_lake, redis_client) == 4
    assert lake_version(tmp_lake, "backup") == 1  # not the copy of 4 the crashed run made
    publish(tmp_lake, 5, redis_client)
    assert assert_consistent(tmp_lake, redis_client) == 5
    assert lake_version(tmp_lake, "backup") == 4 == redis_version(redis_client, f"{KEY}:backup")
