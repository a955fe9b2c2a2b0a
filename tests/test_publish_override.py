"""Operator override of a blocked publish (run tag ``platform/publish_override``) and rollback.

Real lake (``tmp_lake``), real Slack HTTP server (``slack_server``); the CLI test runs the
documented ``dagster job execute ... --tags`` command on a tiny job in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from publishing.tables import LakeTable
from publishing.wap import (
    OVERRIDE_TAG,
    audit_specs,
    has_columns,
    no_nulls,
    publish_days,
    restore_table,
    value_band,
    write_audit_publish,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource

ROOT = Path(__file__).resolve().parents[1]
TABLE = "scores"
DAY = "2024-05-02"
PART = f"date={DAY}"
REASON = "holiday sale: volume confirmed with the client"


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"k{i}" for i in range(n)], "score": 1})


def audits() -> list:
    # rows within 0.5-2x of a median of 10: 5..20 rows pass; a shift audit, overridable
    return [
        has_columns("id", "score"),
        no_nulls("id"),
        value_band("rows_band", "Rows within 0.5-2x of 10.", len, [10, 10, 10]),
    ]


def make_asset(df: pd.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, audits()))
    def scores(context, lake: LakeResource, alerts: AlertsResource):
        yield from write_audit_publish(context, lake, alerts, TABLE, PART, df, audits())

    return scores


def run(asset, lake: LakeResource, alerts: AlertsResource | None = None, reason: str | None = None):
    return dg.materialize(
        [asset],
        resources={"lake": lake, "alerts": alerts or AlertsResource()},
        tags={OVERRIDE_TAG: reason} if reason is not None else None,
        raise_on_error=False,
    )


def production_rows(lake: LakeResource, part: str = PART) -> int:
    return len(lake.read_parquet(f"curated/{TABLE}/{part}"))


@pytest.fixture
def alerts(slack_server) -> AlertsResource:
    return AlertsResource(token="xoxb-test", api_url=slack_server.url)


def test_blocked_partition_is_published_by_override_and_restored(
    tmp_lake: LakeResource, slack_server, alerts: AlertsResource
) -> None:
    assert run(make_asset(frame(10)), tmp_lake).success
    blocked = run(make_asset(frame(50)), tmp_lake, alerts)
    assert not blocked.success
    assert production_rows(tmp_lake) == 10
    assert "failed its audit" in slack_server.messages()[-1]

    result = run(make_asset(frame(50)), tmp_lake, alerts, reason=f"  {REASON}\n ")
    assert result.success
    assert production_rows(tmp_lake) == 50
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    band = checks["rows_band"]
    assert not band.passed and band.severity == dg.AssetCheckSeverity.WARN
    assert "overridden by operator" in (band.description or "")
    assert checks["contract_columns"].passed and checks["no_null_keys"].passed
    (mat,) = result.asset_materializations_for_node(TABLE)
    assert mat.metadata["override_reason"].value == REASON
    assert mat.metadata["overridden_audits"].value == "rows_band"
    assert mat.metadata["override_run_id"].value == result.run_id
    message = slack_server.messages()[-1]
    assert f"published by operator override: {REASON}; overridden: rows_band" in message
    assert "scripts/restore.py scores --date 2024-05-02" in message

    out = restore_table(tmp_lake, TABLE, PART)
    assert out["lake"]
    assert production_rows(tmp_lake) == 10
    assert len(tmp_lake.read_parquet(f"backup/{TABLE}/{PART}")) == 50


def test_without_override_or_with_an_empty_reason_nothing_changes(
    tmp_lake: LakeResource,
) -> None:
    assert run(make_asset(frame(10)), tmp_lake).success
    for reason in (None, "   "):
        result = run(make_asset(frame(50)), tmp_lake, reason=reason)
        assert not result.success
        (band,) = [e for e in result.get_asset_check_evaluations() if not e.passed]
        assert band.check_name == "rows_band" and band.severity == dg.AssetCheckSeverity.ERROR
    assert production_rows(tmp_lake) == 10


@pytest.mark.parametrize(
    ("df", "blocker"),
    [
        (frame(50).drop(columns=["score"]), "contract_columns"),
        (frame(50).assign(id=None), "no_null_keys"),
        (frame(0), "empty table"),
    ],
    ids=["missing_column", "null_keys", "empty_table"],
)
def test_contract_breaks_block_even_with_override(
    tmp_lake: LakeResource, slack_server, alerts: AlertsResource, df: pd.DataFrame, blocker: str
) -> None:
    assert run(make_asset(frame(10)), tmp_lake).success
    before = tmp_lake.read_bytes(f"curated/{TABLE}/{PART}/part-0.parquet")
    result = run(make_asset(df), tmp_lake, alerts, reason=REASON)
    assert not result.success
    assert tmp_lake.read_bytes(f"curated/{TABLE}/{PART}/part-0.parquet") == before
    assert not tmp_lake.exists(f"backup/{TABLE}/{PART}")
    errors = [
        e
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    assert errors  # nothing reported as overridden
    message = slack_server.messages()[-1]
    assert f"Operator override ({REASON}) refused" in message and blocker in message
    assert not tmp_lake.list(f"staging/{TABLE}")


def test_publish_days_honours_the_override_per_day(tmp_lake: LakeResource) -> None:
    declared = LakeTable.curated(TABLE)
    days = {"2024-05-05": frame(10), "2024-05-06": frame(50)}

    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, audits()))
    def two_days(context, lake: LakeResource, alerts: AlertsResource):
        yield from publish_days(
            context, lake, alerts, declared, days, lambda day: audits(), {}, {"run": "x"}
        )

    assert not run(two_days, tmp_lake).success
    assert not tmp_lake.exists(f"curated/{TABLE}/date=2024-05-06")
    result = run(two_days, tmp_lake, reason=REASON)
    assert result.success
    assert production_rows(tmp_lake, "date=2024-05-06") == 50
    (mat,) = result.asset_materializations_for_node(TABLE)
    per_day = mat.metadata["per_day"].value
    assert "override_reason" not in per_day["2024-05-05"]
    assert per_day["2024-05-06"]["override_reason"] == REASON
    assert mat.metadata["overridden_days"].value == ["2024-05-06"]
    (band,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "rows_band"]
    assert not band.passed and band.severity == dg.AssetCheckSeverity.WARN


CLI_MODULE = """
import dagster as dg
import pandas as pd

from publishing.wap import audit_specs, has_columns, value_band, write_audit_publish
from resources.alerts import AlertsResource
from resources.lake import LakeResource

AUDITS = [has_columns("id"), value_band("rows_band", "Rows near 10.", len, [10, 10, 10])]


@dg.asset(
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-05-01"),
    check_specs=audit_specs("scores", AUDITS),
)
def scores(context, lake: LakeResource, alerts: AlertsResource):
    df = pd.DataFrame({"id": [f"k{i}" for i in range(50)]})
    yield from write_audit_publish(
        context, lake, alerts, "scores", f"date={context.partition_key}", df, AUDITS
    )


defs = dg.Definitions(
    assets=[scores],
    jobs=[dg.define_asset_job("scores_daily", selection=[scores])],
    resources={"lake": LakeResource.from_env(), "alerts": AlertsResource.from_env()},
)
"""


@pytest.mark.slow
def test_cli_job_execute_with_the_override_tag(
    tmp_path: Path, tmp_lake: LakeResource, slack_server
) -> None:
    """The documented command: ``dagster job execute ... --tags '{"dagster/partition": D,
    "platform/publish_override": R}'`` (partition and override both as run tags)."""
    assert run(make_asset(frame(10)), tmp_lake).success  # production: 10 rows on DAY
    module = tmp_path / "cli_defs.py"
    module.write_text(textwrap.dedent(CLI_MODULE))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LAKE_ROOT": tmp_lake.root,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_API_URL": slack_server.url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    env.pop("LAKE_BUCKET", None)
    (tmp_path / "dagster_home").mkdir()
    tags = json.dumps({"dagster/partition": DAY, OVERRIDE_TAG: REASON})
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-f", str(module)]
    done = subprocess.run(
        [*cmd, "-j", "scores_daily", "--tags", tags],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert production_rows(tmp_lake) == 50
    assert len(tmp_lake.read_parquet(f"backup/{TABLE}/{PART}")) == 10
    assert any(f"published by operator override: {REASON}" in m for m in slack_server.messages())


def staged_asset(df: pd.DataFrame) -> dg.AssetsDefinition:
    """Publishes ``df`` as a Spark job stages a day: written and stamped by the job's writer
    (``apply_by_device.DayWriter``) into the run's staging folder before the audits."""
    import pyarrow as pa

    from near_assets.spark_jobs.apply_by_device import DayWriter
    from publishing import journal
    from publishing.tables import run_staging_key
    from publishing.wap import Figures, Staged

    @dg.asset(name=TABLE, check_specs=audit_specs(TABLE, audits()))
    def scores(context, lake: LakeResource, alerts: AlertsResource):
        folder = run_staging_key(TABLE, PART, context.run_id)
        version = journal.new_version()
        spec = {
            "sort": ["id"],
            "nulls": ["id"],
            "targets": {
                DAY: {
                    "uri": lake.uri(f"{folder}/part-0.parquet"),
                    "stamp": {"version": version, "run_id": context.run_id},
                }
            },
            "s3_endpoint": lake.endpoint_url if lake.backend == "s3" else None,
        }
        table = pa.Table.from_pandas(df, preserve_index=False)
        writer = DayWriter(DAY, spec, table.schema.remove_metadata())
        for batch in table.to_batches(max_chunksize=7):  # several row groups
            writer.add(pa.Table.from_batches([batch]))
        out = writer.close()
        staged = Staged(
            folder, version, out["content"], out["size"], Figures.from_dict(out["figures"])
        )
        yield from write_audit_publish(context, lake, alerts, TABLE, PART, staged, audits())

    return scores


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_an_override_of_a_job_staged_object_is_recorded_in_its_stamp(
    backend: str, request: pytest.FixtureRequest
) -> None:
    from publishing import journal
    from publishing.baselines import published_history

    lake: LakeResource = request.getfixturevalue("tmp_lake" if backend == "local" else "s3_lake")
    assert run(staged_asset(frame(10)), lake).success
    assert not run(staged_asset(frame(50)), lake).success
    result = run(staged_asset(frame(50)), lake, reason=REASON)
    assert result.success
    folder = f"curated/{TABLE}/{PART}"
    stamp = journal.read_stamp(lake, folder)
    assert stamp["override"] == REASON and stamp["overridden_audits"] == ["rows_band"]
    assert stamp["run_id"] == result.run_id
    (mat,) = result.asset_materializations_for_node(TABLE)
    assert stamp["version"] == mat.metadata["version"].value
    # same rows and content digest as the job wrote, in its row groups
    published = lake.read_parquet(folder)
    pd.testing.assert_frame_equal(published, frame(50))
    assert stamp["content"] == journal.content_digest(frame(50))
    with lake.open_input(f"{folder}/part-0.parquet") as fh:
        import pyarrow.parquet as pq

        assert pq.ParquetFile(fh).num_row_groups == 8
    # later baselines leave the overridden day out
    (day,) = published_history(lake, LakeTable.curated(TABLE), "2024-05-03")
    assert (day.day, day.left_out) == (DAY, "overridden")
