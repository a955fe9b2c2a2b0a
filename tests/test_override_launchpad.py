"""The operator override from the launchpad: the UI's ``launchRun`` GraphQL mutation with the
partition and ``platform/publish_override`` as run tags (what *Edit tags* in the launchpad sends),
handled by the webserver's GraphQL schema on a real workspace (the code location in its own gRPC
server process) and a real instance, whose run launcher starts the run in a subprocess.

``tests/test_publish_override.py`` covers the same override through the Python API and the
documented CLI command (``dagster job execute ... --tags``), and that without the tag the same
partition is blocked (one launch here keeps this file short).
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from publishing.baselines import published_history
from publishing.journal import read_stamp
from publishing.tables import LakeTable
from publishing.wap import OVERRIDE_TAG
from resources.lake import LakeResource

DAY = "2024-05-02"
REASON = "holiday sale: volume confirmed with the client"

MODULE = """
import dagster as dg
import pandas as pd

from publishing.wap import audit_specs, has_columns, value_band, write_audit_publish
from resources.alerts import AlertsResource
from resources.lake import LakeResource

AUDITS = [has_columns("id"), value_band("rows_band", "Rows within 0.5-2x of 10.", len, [10, 10, 10])]


@dg.asset(
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-05-01"),
    check_specs=audit_specs("scores", AUDITS),
)
def scores(context, lake: LakeResource, alerts: AlertsResource):
    df = pd.DataFrame({"id": [f"k{i}" for i in range(50)]})  # 5x the usual 10 rows
    yield from write_audit_publish(
        context, lake, alerts, "scores", f"date={context.partition_key}", df, AUDITS
    )


defs = dg.Definitions(
    assets=[scores],
    jobs=[dg.define_asset_job("scores_daily", selection=[scores])],
    resources={"lake": LakeResource.from_env(), "alerts": AlertsResource.from_env()},
)
"""

LAUNCH = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
} }
"""


def launchpad_params(tags: dict[str, str]) -> dict:
    """What the launchpad sends for job ``scores_daily`` with these run tags."""
    return {
        "selector": {
            "repositoryLocationName": "scores_location",
            "repositoryName": "__repository__",
            "jobName": "scores_daily",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }


def wait_for_run(
    instance: dg.DagsterInstance, run_id: str, timeout_s: float = 120
) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s} s")


@pytest.mark.slow
def test_override_from_the_launchpad(
    tmp_path: Path, tmp_lake: LakeResource, slack_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import PythonFileTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    # production holds 10 rows for DAY: 50 rows fail rows_band (overridable)
    tmp_lake.write_parquet(
        pd.DataFrame({"id": [f"k{i}" for i in range(10)]}), f"curated/scores/date={DAY}"
    )
    module = tmp_path / "scores_location.py"
    module.write_text(textwrap.dedent(MODULE))
    monkeypatch.setenv("LAKE_ROOT", tmp_lake.root)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    monkeypatch.setenv("SLACK_API_URL", slack_server.url)
    monkeypatch.delenv("LAKE_BUCKET", raising=False)
    target = PythonFileTarget(
        python_file=str(module),
        attribute=None,
        working_directory=str(Path(__file__).resolve().parents[1]),
        location_name="scores_location",
    )
    (tmp_path / "home").mkdir()
    with (
        # runs start when submitted (no daemon to dequeue them): the tags travel the same way
        dg.instance_for_test(
            temp_dir=str(tmp_path / "home"),
            overrides={
                "run_coordinator": {
                    "module": "dagster._core.run_coordinator",
                    "class": "DefaultRunCoordinator",
                }
            },
        ) as instance,
        WorkspaceProcessContext(instance, target) as process_context,
    ):

        def launch(tags: dict[str, str]) -> dg.DagsterRun:
            result = execute_dagster_graphql(
                process_context.create_request_context(), LAUNCH, {"p": launchpad_params(tags)}
            )
            assert not result.errors, result.errors
            launched = result.data["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            return wait_for_run(instance, launched["run"]["runId"])

        run = launch({"dagster/partition": DAY, OVERRIDE_TAG: REASON})
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags[OVERRIDE_TAG] == REASON
        assert len(tmp_lake.read_parquet(f"curated/scores/date={DAY}")) == 50
        assert len(tmp_lake.read_parquet(f"backup/scores/date={DAY}")) == 10  # restore target

        key = dg.AssetKey("scores")
        mat = instance.get_latest_materialization_event(key)
        assert mat is not None and mat.run_id == run.run_id
        meta = mat.asset_materialization.metadata
        assert meta["override_reason"].value == REASON
        assert meta["overridden_audits"].value == "rows_band"
        evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, "rows_band")]
        )[dg.AssetCheckKey(key, "rows_band")]
        assert evaluation.run_id == run.run_id
        check = evaluation.event.dagster_event.event_specific_data
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
        assert "overridden by operator" in (check.description or "")
    assert any(f"published by operator override: {REASON}" in m for m in slack_server.messages())

    # what later baselines make of it: left out once the publish records the override in its
    # stamp (publishing/wap.py); until then the day still counts
    stamp = read_stamp(tmp_lake, f"curated/scores/date={DAY}") or {}
    (day,) = published_history(tmp_lake, LakeTable.curated("scores"), "2024-05-03")
    assert day.left_out == ("overridden" if stamp.get("override") else None)
