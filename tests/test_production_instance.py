"""The production instance profile: valid, compute logs in S3 (moto), warm runs across hosts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from instance_plugins.run_launcher import (
    CREATED_TAG,
    HOST_TAG,
    PID_TAG,
    SIGNALLED_TAG,
    WarmRunLauncher,
)

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "deploy" / "production" / "dagster.yaml"
MARKER = "compute-log-marker-7f3a91"  # a constant: the step process re-imports this module


@dg.op
def shout() -> None:
    print(f"{MARKER} on stdout", flush=True)
    print(f"{MARKER} on stderr", file=sys.stderr, flush=True)


@dg.job
def shout_job() -> None:
    shout()


PROD_ENV = {
    "DAGSTER_PG_HOST": "db.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_COMPUTE_LOG_BUCKET": "compute-logs",
    "DAGSTER_COMPUTE_LOG_PREFIX": "platform/compute",
}


def test_production_profile_is_a_valid_instance_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance.config import dagster_instance_config

    for name, value in PROD_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(PROFILE.parent))
    logs = config["compute_logs"]
    assert logs["class"] == "S3ComputeLogManager"
    assert logs["config"]["bucket"] == {"env": "DAGSTER_COMPUTE_LOG_BUCKET"}
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {
        "env": "DAGSTER_PG_PASSWORD"
    }


@pytest.mark.slow
def test_a_runs_stdout_and_stderr_land_in_the_s3_bucket(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3

    bucket = f"compute-logs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_BUCKET", bucket)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_PREFIX", "platform/compute")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)  # boto3 reads it: no config change
    section = yaml.safe_load(PROFILE.read_text())["compute_logs"]
    section["config"]["local_dir"] = str(tmp_path / "buffer")
    with dg.instance_for_test(overrides={"compute_logs": section}) as instance:
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
        result = dg.execute_job(
            dg.reconstructable(shout_job),
            instance=instance,
            run_config={"execution": {"config": {"in_process": {}}}},
        )
        assert result.success
        run_id = result.run_id
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("platform/compute/") for k in keys), keys
    bodies = {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in keys}
    out = [k for k, text in bodies.items() if f"{MARKER} on stdout" in text]
    err = [k for k, text in bodies.items() if f"{MARKER} on stderr" in text]
    assert out and err, bodies
    assert all(run_id in k or "compute_logs" in k for k in out + err)


# --- the warm launcher on more than one host ------------------------------------------------------


@pytest.fixture
def sleeper():
    """A real process standing in for a warm run worker (records whether it got SIGINT)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGINT, lambda *a: sys.exit(42))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def warm_run(instance: dg.DagsterInstance, pid: int, host: str) -> str:
    import psutil

    run = instance.create_run_for_job(shout_job, status=dg.DagsterRunStatus.STARTED)
    instance.add_run_tags(
        run.run_id,
        {
            PID_TAG: str(pid),
            CREATED_TAG: repr(psutil.Process(pid).create_time()),
            HOST_TAG: host,
        },
    )
    return run.run_id


def launcher_on(instance: dg.DagsterInstance, host: str) -> WarmRunLauncher:
    launcher = WarmRunLauncher()
    launcher.register_instance(instance)
    launcher._host = host  # what socket.gethostname() returns on that host
    return launcher


def test_a_run_on_another_host_is_never_signalled_by_local_pid(sleeper) -> None:
    with dg.instance_for_test() as instance:
        run_id = warm_run(instance, sleeper.pid, "worker-host-b")
        here = launcher_on(instance, "webserver-host-a")
        run = instance.get_run_by_id(run_id)
        health = here.check_run_worker_health(run)
        assert health.status.value == "RUNNING" and "not checked" in (health.msg or "")
        assert here.terminate(run_id)  # asks for it ...
        time.sleep(0.3)
        assert sleeper.poll() is None  # ... but never signals a pid of another host
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELING
        assert here.deliver_cancellations() == 0  # not this host's worker

        there = launcher_on(instance, "worker-host-b")  # the daemon on the worker's host
        assert there.deliver_cancellations() == 1
        assert sleeper.wait(10) == 42  # SIGINT, as Dagster's own cancellation
        assert SIGNALLED_TAG in instance.get_run_by_id(run_id).tags
        assert there.deliver_cancellations() == 0  # signalled once only


def test_a_local_warm_run_is_terminated_with_sigint_once(sleeper) -> None:
    with dg.instance_for_test() as instance:
        run_id = warm_run(instance, sleeper.pid, "host-a")
        here = launcher_on(instance, "host-a")
        assert here.check_run_worker_health(instance.get_run_by_id(run_id)).status.value == (
            "RUNNING"
        )
        assert here.terminate(run_id)
        assert sleeper.wait(10) == 42
        assert here.deliver_cancellations() == 0  # the daemon does not signal it again
        dead = here.check_run_worker_health(instance.get_run_by_id(run_id))
        assert dead.status.value == "FAILED"


def test_no_stray_signal_reaches_this_test_process() -> None:
    """Sanity: the launcher's watcher thread only runs in a daemon process."""
    assert os.getpid() and signal.getsignal(signal.SIGINT) is not None
    with dg.instance_for_test() as instance:
        launcher = launcher_on(instance, "h")
        assert launcher._watcher is None


# --- the container recipe (not run here: no Docker engine) is consistent with the workspace ------


def test_compose_services_match_the_production_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.workspace.config_schema import process_workspace_config

    workspace = yaml.safe_load((PROFILE.parent / "workspace.yaml").read_text())
    monkeypatch.setenv("NEAR_CODE_SERVER_HOST", "near-code")
    monkeypatch.setenv("RISK_CODE_SERVER_HOST", "risk-code")
    assert process_workspace_config(workspace).success
    servers = {
        e["grpc_server"]["location_name"]: e["grpc_server"]["port"] for e in workspace["load_from"]
    }
    compose = yaml.safe_load((PROFILE.parent / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "near-code", "risk-code", "webserver", "daemon"}
    for name, location in (("near-code", "near_assets"), ("risk-code", "risk_assets")):
        cmd = services[name]["command"]
        assert cmd[:3] == ["dagster", "code-server", "start"]
        assert cmd[cmd.index("-m") + 1] == f"{location}.definitions"
        assert int(cmd[cmd.index("-p") + 1]) == servers[location]
    for name in ("webserver", "daemon"):
        assert "deploy/production/workspace.yaml" in services[name]["command"]
    assert all(p.startswith("127.0.0.1:") for p in services["webserver"]["ports"])
    dockerfile = (PROFILE.parent / "Dockerfile").read_text()
    assert "uv sync --frozen --no-dev" in dockerfile and "UV_COMPILE_BYTECODE=1" in dockerfile
    assert "\nUSER platform\n" in dockerfile
