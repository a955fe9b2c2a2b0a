"""Daemon heartbeat health: the CLI and the sensor, on real instances and a real daemon."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.types import DaemonHeartbeat
from dagster._utils.error import SerializableErrorInfo

from resources.alerts import AlertsResource
from sensors.health import daemon_health, daemon_health_sensor, main

REPO = Path(__file__).resolve().parents[1]
INSTANCE_YAML = """
telemetry: {enabled: false}
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
run_monitoring: {enabled: true, poll_interval_seconds: 5}
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "dagster_home"
    path.mkdir()
    (path / "dagster.yaml").write_text(INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(path))
    return path


def beat(instance: dg.DagsterInstance, age_s: float, errors: list[str] | None = None) -> None:
    infos = [SerializableErrorInfo(message=e, stack=[], cls_name="Error") for e in errors or []]
    for daemon_type in instance.get_required_daemon_types():
        instance.add_daemon_heartbeat(
            DaemonHeartbeat(time.time() - age_s, daemon_type, "test", infos or None)
        )


def test_recent_heartbeats_are_healthy(home: Path, capsys: pytest.CaptureFixture[str]):
    with dg.DagsterInstance.get() as instance:
        beat(instance, age_s=5)
    assert main(["--max-age", "60"]) == 0
    assert capsys.readouterr().out.startswith("OK:")


def test_stale_heartbeats_exit_non_zero_and_name_the_daemons(
    home: Path, capsys: pytest.CaptureFixture[str]
):
    with dg.DagsterInstance.get() as instance:
        beat(instance, age_s=600)
        required = instance.get_required_daemon_types()
    assert main(["--max-age", "120"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("UNHEALTHY:")
    assert "restart it" in out
    for daemon_type in required:
        assert daemon_type in out
    assert re.search(r"last heartbeat 6\d\d s ago \(limit 120 s\)", out)


def test_a_daemon_that_never_beat_is_unhealthy(home: Path, capsys: pytest.CaptureFixture[str]):
    assert main([]) == 1
    assert "no heartbeat ever recorded" in capsys.readouterr().out


def test_heartbeat_errors_fail_only_when_asked(home: Path, capsys: pytest.CaptureFixture[str]):
    with dg.DagsterInstance.get() as instance:
        beat(instance, age_s=1, errors=["Traceback...\nConnectionError: database unreachable"])
    assert main([]) == 0
    assert main(["--fail-on-errors"]) == 1
    assert "ConnectionError: database unreachable" in capsys.readouterr().out


def test_without_dagster_home_there_is_nothing_to_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main([]) == 2


def test_sensor_alerts_once_when_daemons_go_stale_and_once_when_they_recover(
    home: Path, slack_server
):
    alerts = AlertsResource(token="xoxb-test-health", api_url=slack_server.url)
    with dg.DagsterInstance.get() as instance:
        beat(instance, age_s=900)
        cursor = None
        for _ in range(2):
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"alerts": alerts}
            )
            result = daemon_health_sensor(context)
            cursor = context.cursor
            assert "stale daemons" in result.skip_message
        assert len(slack_server.messages()) == 1
        assert slack_server.messages()[0].startswith("UNHEALTHY:")

        beat(instance, age_s=0)
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"alerts": alerts}
        )
        assert "healthy" in daemon_health_sensor(context).skip_message
        assert slack_server.messages()[-1].startswith("Daemons recovered:")


@pytest.mark.slow
def test_cli_sees_a_real_daemon_alive_then_dead(home: Path):
    """Daemons beat every 30 s: alive within 60 s; once killed, the beats stop for good."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "--empty-workspace"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        with dg.DagsterInstance.get() as instance:
            while time.monotonic() < deadline:
                rows = daemon_health(instance)
                if rows and all(r.last_heartbeat for r in rows):
                    break
                time.sleep(0.5)
        alive = subprocess.run(
            [sys.executable, "-m", "sensors.health", "--max-age", "60"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert alive.stdout.startswith("OK:")
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(10)

    with dg.DagsterInstance.get() as instance:
        last = max(r.last_heartbeat or 0.0 for r in daemon_health(instance))
    time.sleep(max(0.0, last + 4 - time.time()))
    dead = subprocess.run(
        [sys.executable, "-m", "sensors.health", "--max-age", "3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert dead.returncode == 1, dead.stdout + dead.stderr
    assert dead.stdout.startswith("UNHEALTHY:")
    assert "restart it" in dead.stdout
