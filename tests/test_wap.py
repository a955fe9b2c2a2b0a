"""The write-audit-publish core: lake partition plus extra targets, one gate, one restore."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest
import redis

from publishing.redis_hash import RedisHashTarget, json_rows
from publishing.tables import LakeTable
from publishing.wap import (
    Audit,
    PublishTarget,
    audit_specs,
    covers_known,
    has_columns,
    no_nulls,
    publish_days,
    restore_table,
    row_count_band,
    rows_satisfy,
    trailing_published,
    trailing_published_rows,
    unique_keys,
    value_band,
    write_audit_publish,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource

TABLE = "scores"
KEY = "scores:live"
PART = "date=2024-05-02"
encode = json_rows("id", {"score": "score"})


def frame(n: int, score: int = 1) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"k{i}" for i in range(n)], "score": score})


def audits() -> list:
    return [
        has_columns("id", "score"),
        no_nulls("id"),
        rows_satisfy("score_positive", "Scores are positive.", lambda df: df["score"] > 0),
    ]


class BrokenPublishTarget:
    """A target whose stage and verify work but whose publish fails (e.g. serving store down)."""

    name = "broken"
    check_name = "broken_staged_complete"
    description = "Always verifies."

    def __init__(self) -> None:
        self.discarded = False

    def stage(self, df: pd.DataFrame, partition: str | None) -> dict:
        return {}

    def verify(self, df: pd.DataFrame) -> Audit:
        return Audit(self.check_name, True)

    def publish(self, partition: str | None) -> dict:
        raise ConnectionError("serving store unreachable")

    def discard(self) -> None:
        self.discarded = True

    def restore(self) -> int:
        return 0


REDIS_SPEC = [("redis_staged_complete", "The staged hash holds every row.")]


def make_asset(df: pd.DataFrame, targets_fn=list, target_specs=()):

    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, audits(), target_specs))
    def scores(context, lake: LakeResource, alerts: AlertsResource):
        yield from write_audit_publish(
            context, lake, alerts, TABLE, PART, df, audits(), targets=targets_fn()
        )

    return scores


def run(asset, lake: LakeResource, alerts: AlertsResource | None = None):
    return dg.materialize(
        [asset],
        resources={"lake": lake, "alerts": alerts or AlertsResource()},
        raise_on_error=False,
    )


def test_audit_specs_are_blocking_and_include_target_checks(redis_client: redis.Redis) -> None:
    target = RedisHashTarget(redis_client, KEY, encode)
    assert isinstance(target, PublishTarget)
    specs = audit_specs(TABLE, audits(), [target])
    assert [s.name for s in specs] == [
        "contract_columns",
        "no_null_keys",
        "score_positive",
        "redis_staged_complete",
    ]
    assert all(s.blocking for s in specs)


def test_passing_audits_publish_lake_and_target_keeping_backups(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    def targets():
        return [RedisHashTarget(redis_client, KEY, encode)]

    assert run(make_asset(frame(5, 1), targets, REDIS_SPEC), tmp_lake).success
    assert run(make_asset(frame(6, 2), targets, REDIS_SPEC), tmp_lake).success
    assert len(tmp_lake.read_parquet(f"curated/{TABLE}/{PART}")) == 6
    assert len(tmp_lake.read_parquet(f"backup/{TABLE}/{PART}")) == 5
    assert redis_client.hlen(KEY) == 6 and redis_client.hlen(f"{KEY}:backup") == 5
    assert redis_client.hget(f"{KEY}:meta", "date") == "2024-05-02"
    assert not tmp_lake.list(f"staging/{TABLE}")


def test_failed_audit_alerts_fails_and_touches_no_production_copy(
    tmp_lake: LakeResource, redis_client: redis.Redis, slack_server
) -> None:
    def targets():
        return [RedisHashTarget(redis_client, KEY, encode)]

    assert run(make_asset(frame(5, 1), targets, REDIS_SPEC), tmp_lake).success
    before = tmp_lake.read_bytes(f"curated/{TABLE}/{PART}/part-0.parquet")
    live = redis_client.hgetall(KEY)
    alerts = AlertsResource(token="xoxb-test", api_url=slack_server.url)
    result = run(make_asset(frame(7, 0), targets, REDIS_SPEC), tmp_lake, alerts)
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["score_positive"]
    (message,) = slack_server.messages()
    assert TABLE in message and PART in message and "violating_rows=7" in message
    assert tmp_lake.read_bytes(f"curated/{TABLE}/{PART}/part-0.parquet") == before
    assert not tmp_lake.exists(f"backup/{TABLE}/{PART}")
    assert redis_client.hgetall(KEY) == live
    assert not redis_client.exists(f"{KEY}:backup")
    assert not redis_client.keys(f"{KEY}:staging:*")
    assert not tmp_lake.list(f"staging/{TABLE}")


def test_a_target_that_cannot_publish_rolls_the_lake_back(tmp_lake: LakeResource) -> None:
    assert run(make_asset(frame(5)), tmp_lake).success
    before = tmp_lake.read_bytes(f"curated/{TABLE}/{PART}/part-0.parquet")
    broken = BrokenPublishTarget()
    asset = make_asset(frame(9), lambda: [broken], [(broken.check_name, broken.description)])
    result = run(asset, tmp_lake)
    assert not result.success
    assert tmp_lake.read_bytes(f"curated/{TABLE}/{PART}/part-0.parquet") == before


def test_restore_swaps_production_and_backup_in_the_lake_and_targets(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    def targets():
        return [RedisHashTarget(redis_client, KEY, encode)]

    assert run(make_asset(frame(5), targets, REDIS_SPEC), tmp_lake).success
    assert run(make_asset(frame(6), targets, REDIS_SPEC), tmp_lake).success
    restore_table(tmp_lake, TABLE, PART, targets())
    assert len(tmp_lake.read_parquet(f"curated/{TABLE}/{PART}")) == 5
    assert len(tmp_lake.read_parquet(f"backup/{TABLE}/{PART}")) == 6
    assert redis_client.hlen(KEY) == 5
    restore_table(tmp_lake, TABLE, PART, targets())  # twice undoes it
    assert len(tmp_lake.read_parquet(f"curated/{TABLE}/{PART}")) == 6
    assert redis_client.hlen(KEY) == 6


def test_restore_without_a_backup_refuses(tmp_lake: LakeResource) -> None:
    with pytest.raises(FileNotFoundError):
        restore_table(tmp_lake, TABLE, PART)


def test_publish_works_the_same_on_s3(s3_lake: LakeResource) -> None:
    assert run(make_asset(frame(5, 1)), s3_lake).success
    assert run(make_asset(frame(3, 2)), s3_lake).success
    assert len(s3_lake.read_parquet(f"curated/{TABLE}/{PART}")) == 3
    assert len(s3_lake.read_parquet(f"backup/{TABLE}/{PART}")) == 5


# ---- reusable audits ---------------------------------------------------------------------------


def test_row_count_band_needs_history_then_enforces_the_band() -> None:
    assert row_count_band([10, 10])(frame(1)).passed  # too little history
    audit = row_count_band([100, 110, 90], 0.8, 1.25)(frame(50))
    assert not audit.passed and audit.figures["ratio"] == 0.5
    assert row_count_band([100, 110, 90], 0.8, 1.25)(frame(100)).passed


def test_known_coverage_flags_missing_and_unknown_ids() -> None:
    known = [f"k{i}" for i in range(10)]
    assert covers_known("id", known)(frame(10)).passed
    half = covers_known("id", known)(frame(5))
    assert not half.passed and half.figures["coverage"] == 0.5
    assert not covers_known("id", known[:3], min_share=0.5)(frame(4)).passed  # k3 unknown


def test_unique_keys_and_value_band() -> None:
    assert not unique_keys("id")(pd.concat([frame(3), frame(2)])).passed
    band = value_band("mean_score", "Mean score near the norm.", lambda d: d["score"].mean())
    assert band(frame(3, 5)).passed
    strict = value_band("mean_score", "x", lambda d: d["score"].mean(), [1.0, 1.0, 1.0], 0.5, 2)
    assert not strict(frame(3, 5)).passed


def test_trailing_published_rows_reads_footers(tmp_lake: LakeResource) -> None:
    for day, n in [("2024-05-01", 4), ("2024-04-29", 7)]:
        tmp_lake.write_parquet(frame(n), f"curated/{TABLE}/date={day}")
    assert sorted(trailing_published_rows(tmp_lake, TABLE, "2024-05-02")) == [4, 7]
    empty = frame(0)
    tmp_lake.write_parquet(empty, f"curated/{TABLE}/date=2024-04-30")
    assert sorted(trailing_published_rows(tmp_lake, TABLE, "2024-05-02")) == [0, 4, 7]
    declared = LakeTable.curated(TABLE)
    assert sorted(trailing_published_rows(tmp_lake, declared, "2024-05-02")) == [0, 4, 7]
    assert sorted(trailing_published(tmp_lake, declared, "2024-05-02", len)) == [0.0, 4.0, 7.0]


def test_every_publish_reports_the_published_rows_as_dagster_row_count(
    tmp_lake: LakeResource,
) -> None:
    declared = LakeTable.curated(TABLE)

    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, audits()))
    def one_day(context, lake: LakeResource, alerts: AlertsResource):
        yield from write_audit_publish(
            context, lake, alerts, declared, declared.folder("2024-05-02"), frame(5), audits()
        )

    result = run(one_day, tmp_lake)
    assert result.success
    (mat,) = result.asset_materializations_for_node(TABLE)
    assert mat.metadata["dagster/row_count"].value == 5 == mat.metadata["rows"].value
    assert len(tmp_lake.read_parquet(f"curated/{TABLE}/{PART}")) == 5

    days = {"2024-05-03": frame(3), "2024-05-04": frame(4)}

    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, audits()))
    def two_days(context, lake: LakeResource, alerts: AlertsResource):
        yield from publish_days(
            context, lake, alerts, declared, days, lambda day: audits(), {}, {"run": "x"}
        )

    result = run(two_days, tmp_lake)
    assert result.success
    (mat,) = result.asset_materializations_for_node(TABLE)
    assert mat.metadata["dagster/row_count"].value == 7 == mat.metadata["rows"].value
    assert mat.metadata["days"].value == 2
    for day, df in days.items():
        assert len(tmp_lake.read_parquet(f"curated/{TABLE}/date={day}")) == len(df)

    daily = dg.DailyPartitionsDefinition(start_date="2024-05-01")

    @dg.asset(
        name=TABLE,
        partitions_def=daily,
        check_specs=audit_specs(TABLE, audits()),
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def daily_days(context, lake: LakeResource, alerts: AlertsResource):
        frames = {d: frame(n) for d, n in zip(context.partition_keys, (2, 6), strict=True)}
        yield from publish_days(context, lake, alerts, declared, frames, lambda d: audits(), {}, {})

    result = dg.materialize(
        [daily_days],
        resources={"lake": tmp_lake, "alerts": AlertsResource()},
        tags={
            "dagster/asset_partition_range_start": "2024-05-05",
            "dagster/asset_partition_range_end": "2024-05-06",
        },
    )
    assert result.success
    per_partition = {
        m.partition: m.metadata["dagster/row_count"].value
        for m in result.asset_materializations_for_node(TABLE)
    }
    assert per_partition == {"2024-05-05": 2, "2024-05-06": 6}


def test_the_materialization_names_the_version_production_holds(
    tmp_lake: LakeResource, redis_client: redis.Redis
) -> None:
    from publishing.journal import read_journal, read_stamp

    def targets():
        return [RedisHashTarget(redis_client, KEY, encode)]

    result = run(make_asset(frame(5, 3), targets, REDIS_SPEC), tmp_lake)
    assert result.success
    (mat,) = result.asset_materializations_for_node(TABLE)
    stamp = read_stamp(tmp_lake, f"curated/{TABLE}/{PART}")
    assert mat.metadata["version"].value == stamp["version"]
    assert mat.metadata["version"].value == redis_client.hget(f"{KEY}:meta", "version")
    assert stamp["run_id"] == result.run_id  # staged under run=<run_id>, moved as audited
    assert mat.metadata["production_holds"].value.startswith("rows of version")
    assert read_journal(tmp_lake, TABLE, PART) is None
    assert not tmp_lake.list(f"staging/{TABLE}")


def test_a_warning_publishes_shows_a_warn_check_and_alerts(
    tmp_lake: LakeResource, slack_server
) -> None:
    def shifted(df: pd.DataFrame) -> Audit:
        return Audit("volume_band", True, "WARN: 1.3x the median", {"severity": "WARN"})

    shifted.audit_name = "volume_band"
    declared = LakeTable.curated(TABLE)

    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, [shifted]))
    def warned(context, lake: LakeResource, alerts: AlertsResource):
        yield from write_audit_publish(
            context, lake, alerts, declared, declared.folder("2024-05-09"), frame(4), [shifted]
        )

    alerts = AlertsResource(token="xoxb-test", api_url=slack_server.url)
    result = run(warned, tmp_lake, alerts)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert len(tmp_lake.read_parquet(f"curated/{TABLE}/date=2024-05-09")) == 4
    (message,) = slack_server.messages()
    assert "published with a warning" in message and "volume_band" in message
