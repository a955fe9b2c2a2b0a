"""Alerts for both code locations: failed runs and failed (non-blocking) asset checks.

``alert_sensors(location)`` returns the sensors a code location includes:

- ``<location>_run_failure_alert``: with ``SLACK_BOT_TOKEN`` set, dagster-slack's
  ``make_slack_on_run_failure_sensor`` posting to ``SLACK_CHANNEL`` (``SLACK_API_URL``
  overrides Slack's API base URL, as for ``AlertsResource``) with a "View in Dagster UI"
  button; without a token, a run-failure sensor that writes the same text to the log.
  Either way the text names the location, job, partition and error and links the run
  (``DAGSTER_UI_URL``).
- ``<location>_check_failure_alert``: every failed *non-blocking* asset check of the location
  (input monitors) posts through the ``alerts`` resource (Slack or the log).
- ``<location>_freshness_alert``: an asset whose ``FreshnessPolicy`` turns FAIL (or WARN) posts
  once per transition, and once more when it is fresh again.
  Blocking checks are write-audit-publish gates, which alert on their own with every failed
  figure, so they are not repeated here.

Both sensors run by default (``DefaultSensorStatus.RUNNING``) once the daemon is up.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Iterator, Sequence

import dagster as dg
import dagster_slack.sensors as slack_sensors
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from resources.alerts import AlertsResource, run_url

log = logging.getLogger("platform.alerts")
UI_ENV = "DAGSTER_UI_URL"
TERMINAL = {
    AssetCheckExecutionRecordStatus.SUCCEEDED,
    AssetCheckExecutionRecordStatus.FAILED,
}


def ui_base_url() -> str:
    return os.environ.get(UI_ENV, "http://127.0.0.1:3000").rstrip("/")


def run_failure_text(location: str, context: dg.RunFailureSensorContext) -> str:
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    where = f" partition `{partition}`" if partition else ""
    error = context.failure_event.message if context.failure_event else "run failed"
    steps = []
    for event in context.get_step_failure_events()[:3]:
        failure = event.step_failure_data
        error_info = failure.error if failure else None
        while error_info is not None and error_info.cause is not None:
            error_info = error_info.cause  # the user's exception, not Dagster's wrapper
        reason = error_info.message.strip() if error_info else ""
        steps.append(f"• `{event.step_key}`: {reason[:300]}")
    head = f":red_circle: [{location}] run of `{run.job_name}`{where} failed: {error}"
    return "\n".join([head, *steps, f"Run: {run_url(run.run_id)}"])


@contextlib.contextmanager
def _slack_base_url(api_url: str | None) -> Iterator[None]:
    """dagster-slack builds ``WebClient(token=...)``; point it at ``api_url`` when given."""
    original = slack_sensors.WebClient
    if api_url:
        slack_sensors.WebClient = functools.partial(original, base_url=api_url)  # type: ignore[misc]
    try:
        yield
    finally:
        slack_sensors.WebClient = original  # type: ignore[misc]


def run_failure_alert_sensor(
    location: str,
    *,
    token: str | None = None,
    channel: str | None = None,
    api_url: str | None = None,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """Slack (token set) or log (no token) alert on every failed run of the code location."""
    token = token if token is not None else os.environ.get("SLACK_BOT_TOKEN")
    channel = channel or os.environ.get("SLACK_CHANNEL", "#data-platform-alerts")
    api_url = api_url if api_url is not None else os.environ.get("SLACK_API_URL")
    name = f"{location}_run_failure_alert"
    if token:
        with _slack_base_url(api_url):
            return slack_sensors.make_slack_on_run_failure_sensor(
                channel=channel,
                slack_token=token,
                text_fn=functools.partial(run_failure_text, location),
                name=name,
                webserver_base_url=ui_base_url(),
                minimum_interval_seconds=minimum_interval_seconds,
                default_status=dg.DefaultSensorStatus.RUNNING,
            )

    @dg.run_failure_sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Writes failed runs of {location} to the log (set SLACK_BOT_TOKEN for Slack).",
    )
    def log_run_failure(context: dg.RunFailureSensorContext) -> None:
        text = run_failure_text(location, context)
        log.warning("[alert] %s", text)
        context.log.warning(f"[alert] {text}")

    return log_run_failure


def check_failure_text(location: str, evaluation: dg.AssetCheckEvaluation, run_id: str) -> str:
    figures = ", ".join(
        f"{k}={getattr(v, 'value', v)}"
        for k, v in (evaluation.metadata or {}).items()
        if not isinstance(getattr(v, "value", v), dict | list)
    )
    partition = f" `{evaluation.partition}`" if evaluation.partition else ""
    return (
        f":warning: [{location}] check `{evaluation.check_name}` on "
        f"*{evaluation.asset_key.to_user_string()}*{partition} failed: "
        f"{evaluation.description or ''}" + (f" ({figures})" if figures else "") + "\n"
        f"Run: {run_url(run_id)}"
    )


def _evaluation(record: AssetCheckExecutionRecord) -> dg.AssetCheckEvaluation | None:
    event = record.event.dagster_event if record.event else None
    data = event.event_specific_data if event else None
    return data if isinstance(data, dg.AssetCheckEvaluation) else None


def failed_check_evaluations(
    instance: dg.DagsterInstance, check_keys: Sequence[dg.AssetCheckKey], seen: dict[str, int]
) -> tuple[list[tuple[dg.AssetCheckEvaluation, str]], dict[str, int]]:
    """Failed non-blocking evaluations newer than ``seen`` (per check: last execution id).

    Execution ids come from the instance's asset-check table, which every storage (SQLite,
    Postgres) indexes across runs. Returns the failures and the updated ``seen``.
    """
    failed: list[tuple[dg.AssetCheckEvaluation, str]] = []
    out = dict(seen)
    for key in check_keys:
        name = key.to_user_string()
        last = seen.get(name, 0)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
        done = [r for r in history if r.id > last and r.status in TERMINAL]
        for record in sorted(done, key=lambda r: r.id):
            evaluation = _evaluation(record)
            if (
                record.status == AssetCheckExecutionRecordStatus.FAILED
                and evaluation is not None
                and not evaluation.blocking
            ):
                failed.append((evaluation, record.run_id))
        if done:
            out[name] = max(last, *(r.id for r in done))
    return failed, out


def latest_execution_ids(
    instance: dg.DagsterInstance, check_keys: Sequence[dg.AssetCheckKey]
) -> dict[str, int]:
    out = {}
    for key in check_keys:
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
        out[key.to_user_string()] = history[0].id if history else 0
    return out


def check_failure_alert_sensor(
    location: str, minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    """Alert on failed non-blocking asset checks of the code location (see module doc)."""

    @dg.sensor(
        name=f"{location}_check_failure_alert",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts failed non-blocking asset checks (input monitors) to Slack/log.",
    )
    def check_failure_alert(
        context: dg.SensorEvaluationContext, alerts: AlertsResource
    ) -> dg.SensorResult:
        repo = context.repository_def
        keys = sorted(repo.asset_graph.asset_check_keys, key=str) if repo is not None else []
        if context.cursor is None:  # start from now: do not replay old failures
            seen = latest_execution_ids(context.instance, keys)
            return dg.SensorResult(cursor=json.dumps(seen))
        failed, seen = failed_check_evaluations(context.instance, keys, json.loads(context.cursor))
        for evaluation, run_id in failed:
            alerts.send(check_failure_text(location, evaluation, run_id), context.log)
        return dg.SensorResult(cursor=json.dumps(seen))

    return check_failure_alert


ALERTING_FRESHNESS = {"WARN", "FAIL"}


def freshness_transitions(
    states: dict[str, str], previous: dict[str, str]
) -> list[tuple[str, str, str | None]]:
    """(asset, new state, old state) for each asset whose freshness changed to or from an
    alerting state (WARN/FAIL) since ``previous``."""
    out = []
    for asset, state in sorted(states.items()):
        old = previous.get(asset)
        if state != old and (state in ALERTING_FRESHNESS or old in ALERTING_FRESHNESS):
            out.append((asset, state, old))
    return out


def freshness_text(location: str, asset: str, state: str, old: str | None) -> str:
    if state in ALERTING_FRESHNESS:
        return (
            f":hourglass: *{asset}* ({location}) is {state} against its freshness policy: "
            f"no new materialization within the window (see the asset's Overview in "
            f"{ui_base_url()})."
        )
    return f":white_check_mark: *{asset}* ({location}) is fresh again ({old} -> {state})."


def freshness_alert_sensor(
    location: str, minimum_interval_seconds: int = 300
) -> dg.SensorDefinition:
    """Alert when an asset of the location goes stale against its ``FreshnessPolicy``."""

    @dg.sensor(
        name=f"{location}_freshness_alert",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts assets that turn WARN/FAIL against their freshness policy.",
    )
    def freshness_alert(
        context: dg.SensorEvaluationContext, alerts: AlertsResource
    ) -> dg.SensorResult:
        graph = context.repository_def.asset_graph if context.repository_def else None
        keys = [
            key
            for key in (graph.get_all_asset_keys() if graph else [])
            if graph.get(key).freshness_policy is not None
        ]
        records = context.instance.get_freshness_state_records(keys) if keys else {}
        states = {k.to_user_string(): r.freshness_state.value for k, r in records.items()}
        previous = json.loads(context.cursor) if context.cursor else {}
        for asset, state, old in freshness_transitions(states, previous):
            alerts.send(freshness_text(location, asset, state, old), context.log)
        return dg.SensorResult(cursor=json.dumps({**previous, **states}))

    return freshness_alert


def alert_sensors(location: str) -> Sequence[dg.SensorDefinition]:
    """The alert sensors a code location includes (failed runs, failed checks, stale assets)."""
    return [
        run_failure_alert_sensor(location),
        check_failure_alert_sensor(location),
        freshness_alert_sensor(location),
    ]
