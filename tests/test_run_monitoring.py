"""A run whose worker is killed with ``kill -9`` is failed, then retried, by a real daemon.

How Dagster 1.13 notices a dead run worker with the DefaultRunLauncher (runs are spawned by
the code server): the launcher does not support ``check_run_worker_health``; the code
server's cleanup thread sees its child process gone (0.5 s tick) and reports the run failed.
When the code server died too, run monitoring's runtime limit (``dagster/max_runtime`` tag or
``run_monitoring.max_runtime_seconds``) fails the run. ``run_retries`` then re-executes it.
Both paths are exercised here, against one ``dagster-daemon run`` started in its own session.
"""

import os
import signal
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import PARENT_RUN_ID_TAG

from tests.daemon_helpers import running_daemon
from tests.daemon_helpers import wait_for as _wait_for

pytestmark = pytest.mark.slow

DEFS = '''
import os
import time
from pathlib import Path

import dagster as dg


@dg.op
def slow_step(context: dg.OpExecutionContext) -> None:
    """Record the worker's pids, then work for a while (retries finish at once)."""
    if context.run.tags.get("dagster/retry_number"):
        return
    out = Path(os.environ["PID_DIR"]) / context.run_id
    out.write_text(f"{os.getpid()} {os.getppid()}")
    for _ in range(600):
        time.sleep(0.2)


@dg.job(executor_def=dg.in_process_executor)
def slow_job():
    slow_step()
'''

INSTANCE = """
telemetry: {enabled: false}
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config: {dequeue_interval_seconds: 1}
run_monitoring:
  enabled: true
  start_timeout_seconds: 60
  cancel_timeout_seconds: 10
  max_resume_run_attempts: 0
  poll_interval_seconds: 1
run_retries:
  enabled: true
  max_retries: 1
"""

WORKSPACE = """
load_from:
  - python_file: {relative_path: defs.py, location_name: monitoring_test}
"""

TIMEOUT_S = 60


def wait_for(what: str, fn, timeout_s: float = TIMEOUT_S):
    return _wait_for(what, fn, timeout_s, every_s=0.5)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("monitoring")
    home, pids = tmp_path / "home", tmp_path / "pids"
    home.mkdir()
    pids.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    (tmp_path / "defs.py").write_text(DEFS)
    (tmp_path / "workspace.yaml").write_text(WORKSPACE)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PID_DIR": str(pids)}

    def launch(*tags: str) -> None:
        tag_args = [a for t in tags for a in ("--tags", t)]
        subprocess.run(
            ["dagster", "job", "launch", "-w", "workspace.yaml", "-j", "slow_job", *tag_args],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )

    with (
        running_daemon(tmp_path, env),
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        yield instance, launch, pids


def started_worker(instance: dg.DagsterInstance, pids: Path):
    """(run id, worker pid, code server pid) of the run that is running now, if any."""
    for path in pids.iterdir():
        run = instance.get_run_by_id(path.name)
        text = path.read_text()
        if text and run is not None and run.status == dg.DagsterRunStatus.STARTED:
            worker, code_server = (int(x) for x in text.split())
            return run.run_id, worker, code_server
    return None


def retry_of(instance: dg.DagsterInstance, run_id: str):
    runs = instance.get_runs(filters=dg.RunsFilter(tags={PARENT_RUN_ID_TAG: run_id}))
    return runs[0] if runs else None


def messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(e.message or "" for e in instance.all_logs(run_id))


def test_killed_run_worker_is_failed_then_retried(platform):
    instance, launch, pids = platform
    launch('{"platform/lane": "batch"}')
    run_id, worker, _ = wait_for("the run worker to start", lambda: started_worker(instance, pids))

    os.kill(worker, signal.SIGKILL)
    failed = wait_for(
        "the killed run to be marked FAILURE",
        lambda: (r := instance.get_run_by_id(run_id)).status == dg.DagsterRunStatus.FAILURE and r,
    )
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert "was terminated by signal 9 (SIGKILL)" in messages(instance, run_id)

    retry = wait_for("a retry run", lambda: retry_of(instance, run_id))
    assert retry.tags["dagster/retry_number"] == "1"
    assert retry.tags["platform/lane"] == "batch"
    done = wait_for(
        "the retry to succeed",
        lambda: instance.get_run_by_id(retry.run_id).status == dg.DagsterRunStatus.SUCCESS,
    )
    assert done


def test_run_orphaned_with_its_code_server_is_failed_by_the_runtime_limit(platform):
    instance, launch, pids = platform
    launch('{"dagster/max_runtime": "8"}')
    run_id, worker, code_server = wait_for(
        "the run worker to start", lambda: started_worker(instance, pids)
    )

    os.kill(code_server, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    wait_for(
        "run monitoring to fail the orphaned run",
        lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE,
    )
    assert "maximum runtime of 8 seconds" in messages(instance, run_id)
