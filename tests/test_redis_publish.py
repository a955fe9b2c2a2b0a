"""The Redis side of write-audit-publish, against a real redis-server."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest
import redis

from publishing.redis_hash import RedisHashTarget, json_rows, restore_hash

KEY = "audience:estimates"
encode = json_rows("poi_id", {"visitors": "visitors", "estimate": "estimate"})


def version(k: int) -> pd.DataFrame:
    """Version ``k``: a distinct row count (1000 + 250 k) and ``visitors == k`` in every value."""
    n = 1000 + 250 * k
    return pd.DataFrame(
        {"poi_id": [f"p{i}" for i in range(n)], "visitors": k, "estimate": 10 * k + 1}
    )


def day(k: int) -> str:
    return f"2024-01-{k + 1:02d}"


def publish(client: redis.Redis, k: int) -> dict:
    target = RedisHashTarget(client, KEY, encode, batch_size=300)
    df = version(k)
    target.stage(df, day(k))
    assert target.verify(df).passed
    return target.publish(day(k))


def test_publish_writes_contract_hash_and_meta(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    assert redis_client.hlen(KEY) == len(version(1))
    value = json.loads(redis_client.hget(KEY, "p7"))
    assert value == {"date": day(1), "visitors": 1, "estimate": 11}
    meta = redis_client.hgetall(f"{KEY}:meta")
    assert meta["date"] == day(1) and meta["rows"] == str(len(version(1)))
    assert meta["published_at"].endswith("Z")
    assert redis_client.ttl(KEY) == -1  # the staging expiry does not survive the swap
    assert not redis_client.keys(f"{KEY}:staging:*")


def test_previous_version_is_kept_as_backup(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    publish(redis_client, 2)
    assert redis_client.hlen(f"{KEY}:backup") == len(version(1))
    assert redis_client.hget(f"{KEY}:backup:meta", "date") == day(1)
    assert redis_client.hget(f"{KEY}:meta", "date") == day(2)


def test_discarded_stage_leaves_live_untouched(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    before = redis_client.hgetall(KEY), redis_client.hgetall(f"{KEY}:meta")
    target = RedisHashTarget(redis_client, KEY, encode)
    target.stage(version(3), day(3))
    assert redis_client.ttl(target.staging_key) > 0
    target.discard()
    assert (redis_client.hgetall(KEY), redis_client.hgetall(f"{KEY}:meta")) == before
    assert not redis_client.exists(target.staging_key)


def test_verify_fails_when_the_stage_is_incomplete(redis_client: redis.Redis) -> None:
    target = RedisHashTarget(redis_client, KEY, encode)
    df = version(1)
    target.stage(df, day(1))
    redis_client.hdel(target.staging_key, "p3")
    audit = target.verify(df)
    assert not audit.passed and audit.figures["staged_rows"] == len(df) - 1
    with pytest.raises(redis.ResponseError, match="expected"):
        target.publish(day(1))


def test_older_day_does_not_replace_newer_serving_data(redis_client: redis.Redis) -> None:
    publish(redis_client, 5)
    result = publish(redis_client, 2)
    assert result["redis"].startswith("skipped")
    assert redis_client.hget(f"{KEY}:meta", "date") == day(5)
    assert redis_client.hlen(KEY) == len(version(5))


def test_restore_swaps_live_and_backup(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    publish(redis_client, 2)
    assert restore_hash(redis_client, KEY) == len(version(1))
    assert redis_client.hget(f"{KEY}:meta", "date") == day(1)
    assert redis_client.hlen(f"{KEY}:backup") == len(version(2))
    assert restore_hash(redis_client, KEY) == len(version(2))  # twice undoes it
    assert redis_client.hget(f"{KEY}:meta", "date") == day(2)


def test_restore_without_backup_fails(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    with pytest.raises(redis.ResponseError, match="no backup"):
        restore_hash(redis_client, KEY)


def test_readers_see_a_complete_old_or_new_version_during_publishes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    versions = range(7)
    rows_of = {len(version(k)): k for k in versions}
    publish(redis_client, 0)
    reader = redis.Redis.from_url(redis_url, decode_responses=True)
    stop, first_read = threading.Event(), threading.Event()
    problems: list[str] = []
    seen: set[int] = set()
    reads = 0

    def hammer() -> None:
        nonlocal reads
        while True:
            stopping = stop.is_set()
            pipe = reader.pipeline(transaction=True)  # one atomic snapshot of the three keys
            pipe.hlen(KEY).hget(KEY, "p0").hget(f"{KEY}:meta", "date")
            n, p0, meta_date = pipe.execute()
            single_len, single_get = reader.hlen(KEY), reader.hget(KEY, "p1")
            reads += 5
            if n not in rows_of:
                problems.append(f"HLEN {n}")
            elif p0 is None or json.loads(p0)["visitors"] != rows_of[n]:
                problems.append(f"mixed: HLEN {n} with p0={p0}")
            elif meta_date != day(rows_of[n]):
                problems.append(f"meta {meta_date} with version {rows_of[n]}")
            else:
                seen.add(rows_of[n])
            if single_len not in rows_of:
                problems.append(f"single HLEN {single_len}")
            if single_get is None or json.loads(single_get)["visitors"] not in versions:
                problems.append(f"single HGET {single_get}")
            first_read.set()
            if stopping:
                return

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    first_read.wait(10)
    for k in versions[1:]:
        publish(redis_client, k)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert problems == []
    assert {0, 6} <= seen
    assert reads > 10


def test_an_empty_version_is_never_published(redis_client: redis.Redis) -> None:
    publish(redis_client, 1)
    target = RedisHashTarget(redis_client, KEY, encode)
    empty = version(1).iloc[:0]
    target.stage(empty, day(2))
    assert not target.verify(empty).passed
    with pytest.raises(redis.ResponseError, match="nothing staged"):
        target.publish(day(2))
    assert redis_client.hlen(KEY) == len(version(1))


# ---- at scale: values built by Arrow kernels, raw pipelined HSET ------------------------------


def test_arrow_encoder_gives_the_json_of_each_row() -> None:
    df = pd.DataFrame(
        {
            "poi_id": ["a", "b", "c"],
            "visitors": pd.array([1, None, 3], dtype="Int64"),
            "share": [0.5, float("nan"), 2.0],
            "name": ['q"uote\\', "plain", None],
            "open": [True, False, True],
        }
    )
    enc = json_rows("poi_id", {"v": "visitors", "s": "share", "n": "name", "o": "open"})
    pairs = list(enc(df, "2024-01-02"))
    assert [f for f, _ in pairs] == ["a", "b", "c"]
    values = [json.loads(v) for _, v in pairs]
    assert values[0] == {"date": "2024-01-02", "v": 1, "s": 0.5, "n": 'q"uote\\', "o": 1}
    assert values[1] == {"date": "2024-01-02", "v": None, "s": None, "n": "plain", "o": 0}
    assert values[2]["n"] is None and values[2]["s"] == 2.0
    assert pairs[0][1].startswith('{"date": "2024-01-02", "v": 1, ')  # the contract's layout


def test_arrow_staging_in_many_pipelined_commands_holds_every_row(
    redis_client: redis.Redis,
) -> None:
    df = version(40)  # 11,000 rows
    target = RedisHashTarget(redis_client, KEY, encode, pipeline_rows=700, pipeline_depth=3)
    target.stage(df, day(1))
    assert target.verify(df).passed
    assert redis_client.hgetall(target.staging_key) == dict(encode(df, day(1)))
    assert 0 < redis_client.ttl(target.staging_key) <= 24 * 3600
    assert redis_client.ping()  # the connection's replies were all read


def test_a_plain_generator_encoder_still_works(redis_client: redis.Redis) -> None:
    def encoder(df: pd.DataFrame, partition: str | None):
        for pid, v in zip(df["poi_id"], df["visitors"], strict=True):
            yield pid, json.dumps({"date": partition, "visitors": int(v)})

    target = RedisHashTarget(redis_client, KEY, encoder, batch_size=100)
    target.stage(version(1), day(1))
    assert target.verify(version(1)).passed
    target.publish(day(1))
    assert json.loads(redis_client.hget(KEY, "p3")) == {"date": day(1), "visitors": 1}


def test_republishing_the_live_rows_keeps_the_backup(redis_client: redis.Redis) -> None:
    def publish_content(k: int, content: str) -> dict:
        target = RedisHashTarget(redis_client, KEY, encode, content=content)
        target.stage(version(k), day(2))
        return target.publish(day(2))

    publish_content(1, "c1")
    publish_content(2, "c2")
    assert publish_content(2, "c2")["redis"].startswith("unchanged")
    assert redis_client.hlen(f"{KEY}:backup") == len(version(1))
    assert not redis_client.keys(f"{KEY}:staging:*")
