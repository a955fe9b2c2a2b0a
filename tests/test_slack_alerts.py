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
    assert near == {"near_assets_run_failure_alert", "near_assets_check_failure_alert"}
    assert risk == {"risk_assets_run_failure_alert", "risk_assets_check_failure_alert"}
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
