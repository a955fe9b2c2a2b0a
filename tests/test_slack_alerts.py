"""Run-failure and check-failure alerts, posted to a local HTTP server standing in for Slack."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from resources.alerts import AlertsResource
from sensors.alerts import alert_sensors, check_failure_alert_sensor, run_failure_alert_sensor


@dg.asset
def broken_asset() -> None:
    """Always fails."""
    raise RuntimeError("boom: upstream file missing")


@dg.asset
def counted() -> int:
    """Succeeds; its monitor fails."""
    return 1


@dg.asset_check(asset=counted)
def sensible_count() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False, description="3 rows, expected >= 10", metadata={"rows": 3, "expected": 10}
    )


@dg.asset_check(asset=counted, blocking=True)
def gate() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, description="gated elsewhere")


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def failure_context(instance: dg.DagsterInstance, sensor_name: str):
    result = dg.materialize([broken_asset], instance=instance, raise_on_error=False)
    assert not result.success
    return dg.build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
    ).for_run_failure(), result.run_id


def test_run_failure_posts_to_slack_with_a_link_to_the_run(instance, slack_server) -> None:
    sensor = run_failure_alert_sensor(
        "near_assets", token="xoxb-test", channel="#alerts", api_url=slack_server.url
    )
    context, run_id = failure_context(instance, sensor.name)
    sensor(context)
    ((method, params),) = slack_server.calls
    assert method == "chat.postMessage"
    assert params["channel"] == "#alerts"
    assert params["_authorization"] == "Bearer xoxb-test"
    assert "[near_assets]" in params["text"] and "boom: upstream file missing" in params["text"]
    assert f"/runs/{run_id}" in params["text"]
    assert f"/runs/{run_id}" in str(params["blocks"])  # the "View in Dagster UI" button


def test_without_a_token_run_failures_go_to_the_log(instance, slack_server, caplog) -> None:
    sensor = run_failure_alert_sensor("risk_assets", token="", api_url=slack_server.url)
    context, run_id = failure_context(instance, sensor.name)
    with caplog.at_level(logging.WARNING, logger="platform.alerts"):
        sensor(context)
    assert slack_server.calls == []
    assert any("[risk_assets]" in r.message and run_id in r.message for r in caplog.records)


def test_each_code_location_gets_its_own_named_sensors(monkeypatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    near = {s.name for s in alert_sensors("near_assets")}
    risk = {s.name for s in alert_sensors("risk_assets")}
    kinds = ("run_failure_alert", "check_failure_alert", "freshness_alert")
    assert near == {f"near_assets_{kind}" for kind in kinds}
    assert risk == {f"risk_assets_{kind}" for kind in kinds}
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-env")
    assert run_failure_alert_sensor("near_assets").name == "near_assets_run_failure_alert"


def test_failed_non_blocking_checks_are_posted_once(instance, slack_server) -> None:
    sensor = check_failure_alert_sensor("near_assets")
    defs = dg.Definitions(assets=[counted], asset_checks=[sensible_count, gate], sensors=[sensor])
    alerts = AlertsResource(token="xoxb-test", api_url=slack_server.url)

    def tick(cursor: str | None) -> str:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            repository_def=defs.get_repository_def(),
            resources={"alerts": alerts},
        )
        return sensor.evaluate_tick(context).cursor

    cursor = tick(None)  # the first tick starts from now
    result = dg.materialize(
        [counted, sensible_count, gate], instance=instance, raise_on_error=False
    )
    cursor = tick(cursor)
    (text,) = slack_server.messages()
    assert "sensible_count" in text and "3 rows, expected >= 10" in text and "rows=3" in text
    assert f"/runs/{result.run_id}" in text
    assert "gate" not in text.split("check")[1].split("on")[0]
    tick(cursor)
    assert len(slack_server.messages()) == 1


# ---- "sensible numbers" monitors ----------------------------------------------------------


def test_ping_volume_fails_when_pings_stop_arriving_or_arrive_twice() -> None:
    from near_assets.monitors import ping_volume_audit

    history = [1000, 1100, 900, 1000]
    assert ping_volume_audit(480, history, 0.5).passed
    low = ping_volume_audit(100, history, 0.5)
    assert not low.passed and low.figures["expected_so_far"] == 500
    assert not ping_volume_audit(3500, history, 1.0).passed
    assert ping_volume_audit(5, [], 0.9).passed  # nothing to compare with yet


def test_input_monitors_alert_slack_when_todays_pings_are_short(
    tmp_lake, instance, slack_server
) -> None:
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from near_assets import monitors

    today = datetime.now(UTC).date()
    for back in range(1, 4):
        day = (today - timedelta(days=back)).isoformat()
        tmp_lake.write_parquet(pd.DataFrame({"device_id": ["d"] * 5000}), f"raw/pings/date={day}")
    tmp_lake.write_parquet(pd.DataFrame({"device_id": []}, dtype=str), "reference/pois")
    alerts = AlertsResource(token="xoxb-test", api_url=slack_server.url)
    sensor = check_failure_alert_sensor("near_assets")
    defs = dg.Definitions(
        assets=[dg.AssetSpec("raw_pings"), monitors.reference_pois],
        asset_checks=[monitors.raw_pings_volume, monitors.poi_reference_not_empty],
        jobs=[monitors.sensible_numbers_job],
        sensors=[sensor],
        resources={"lake": tmp_lake, "alerts": alerts},
    )
    repo = defs.get_repository_def()

    def tick(cursor: str | None) -> str:
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, repository_def=repo, resources={"alerts": alerts}
        )
        return sensor.evaluate_tick(context).cursor

    cursor = tick(None)
    result = defs.resolve_job_def("sensible_numbers").execute_in_process(instance=instance)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["poi_reference_not_empty"].passed
    tick(cursor)
    texts = "\n".join(slack_server.messages())
    assert "poi_reference_not_empty" in texts and "0 POIs" in texts
    if not evaluations["raw_pings_volume"].passed:
        assert "raw_pings_volume" in texts and "expected about" in texts


def test_freshness_alerts_fire_once_per_transition_to_and_from_stale() -> None:
    from sensors.alerts import freshness_text, freshness_transitions

    first = freshness_transitions({"visits": "PASS", "stay_points": "FAIL"}, {})
    assert first == [("stay_points", "FAIL", None)]
    seen = {"visits": "PASS", "stay_points": "FAIL"}
    assert freshness_transitions(seen, seen) == []
    back = freshness_transitions({"visits": "WARN", "stay_points": "PASS"}, seen)
    assert back == [("stay_points", "PASS", "FAIL"), ("visits", "WARN", "PASS")]
    assert "FAIL against its freshness policy" in freshness_text("near_assets", *first[0])
    assert "fresh again" in freshness_text("near_assets", *back[0])
