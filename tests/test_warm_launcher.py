"""``WarmRunLauncher`` behind a real ``dagster-daemon``: onboarding-lane runs are forked from a warm
parent, other runs go through the code server, and cancel, edited code and a dead parent work;
``WarmQueuedRunCoordinator`` launches a sensor's onboarding run without the queue.
"""

import json
import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._cli.job import _create_run
from dagster._core.launcher.base import WorkerStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from instance_plugins.run_launcher import PID_TAG
from tests.daemon_helpers import running_daemon
from tests.daemon_helpers import wait_for as _wait_for

pytestmark = pytest.mark.slow

DEFS = '''
import os
import time
from pathlib import Path

import dagster as dg


@dg.op
def record(context: dg.OpExecutionContext) -> None:
    """Record this worker's pid and parent pid; wait while the run is tagged to hold."""
    out = Path(os.environ["PID_DIR"]) / context.run_id
    out.write_text(f"{os.getpid()} {os.getppid()}")
    while context.run.tags.get("hold") and not (out.parent / "release").exists():
        time.sleep(0.1)


@dg.job(executor_def=dg.in_process_executor)
def quick_job():
    record()


@dg.sensor(job=quick_job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def trigger_sensor():
    """One onboarding-lane run per file in $TRIGGER_DIR."""
    for path in sorted(Path(os.environ["TRIGGER_DIR"]).iterdir()):
        yield dg.RunRequest(
            run_key=path.name, tags={"platform/lane": "onboarding", "trigger": path.name}
        )


defs = dg.Definitions(jobs=[quick_job], sensors=[trigger_sensor])
'''

INSTANCE = """
telemetry: {enabled: false}
run_launcher:
  module: instance_plugins.run_launcher
  class: WarmRunLauncher
  config: {lanes: [onboarding]}
run_coordinator:
  module: instance_plugins.run_launcher
  class: WarmQueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
    direct_lanes: [onboarding]
    sensor_loop_seconds: 1
    tag_concurrency_limits: [{key: platform/lane, value: onboarding, limit: 4}]
"""

WORKSPACE = """
load_from:
  - python_file: {relative_path: defs.py, location_name: warm_test}
"""

ONBOARDING = '{"platform/lane": "onboarding"}'
HOLD = '{"platform/lane": "onboarding", "hold": "1"}'
TIMEOUT_S = 90


def wait_for(what: str, fn, timeout_s: float = TIMEOUT_S):
    return _wait_for(what, fn, timeout_s)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("warm")
    home, pids = tmp_path / "home", tmp_path / "pids"
    home.mkdir()
    pids.mkdir()
    (tmp_path / "triggers").mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    (tmp_path / "defs.py").write_text(DEFS)
    (tmp_path / "workspace.yaml").write_text(WORKSPACE)
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PID_DIR": str(pids),
        "TRIGGER_DIR": str(tmp_path / "triggers"),
        "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    }
    with (
        # the instance's SQLite files exist before the daemon and code servers open them
        dg.DagsterInstance.from_config(str(home)) as instance,
        running_daemon(tmp_path, env),
        WorkspaceProcessContext(
            instance, WorkspaceFileTarget([str(tmp_path / "workspace.yaml")])
        ) as workspace_process,
    ):
        workspace = workspace_process.create_request_context()
        location = workspace.get_code_location("warm_test")
        repo = next(iter(location.get_repositories().values()))
        job = repo.get_full_job("quick_job")

        def launch(tags: str | None = None) -> str:
            """What ``dagster job launch --tags ...`` does, without a new process each time."""
            run = _create_run(
                instance=instance,
                code_location=location,
                remote_repo=repo,
                remote_job=job,
                run_config={},
                tags=json.loads(tags) if tags else {},
                op_selection=None,
                run_id=None,
            )
            instance.submit_run(run.run_id, workspace)
            return run.run_id

        yield instance, launch, tmp_path


def finished(instance: dg.DagsterInstance, run_id: str):
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


def worker_pids(tmp_path: Path, run_id: str) -> tuple[int, int]:
    path = tmp_path / "pids" / run_id
    text = wait_for(f"run {run_id} to record its pids", lambda: path.exists() and path.read_text())
    pid, ppid = (int(x) for x in text.split())
    return pid, ppid


def run_warm(instance: dg.DagsterInstance, launch) -> str:
    """Launch onboarding runs until one is forked from the warm parent (the first ones start
    cold, through the code server, while the parent warms up in the background)."""
    for _ in range(20):
        run_id = launch(ONBOARDING)
        run = wait_for("the run to start", lambda rid=run_id: _started_or_done(instance, rid))
        if PID_TAG in run.tags:
            return run_id
        wait_for("the run to finish", lambda rid=run_id: finished(instance, rid))
        time.sleep(1)
    raise AssertionError("no onboarding run was forked from a warm parent")


def _started_or_done(instance: dg.DagsterInstance, run_id: str):
    run = instance.get_run_by_id(run_id)
    ok = run is not None and run.status not in (
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
    )
    return run if ok else None


def test_first_onboarding_run_starts_cold_while_the_parent_warms(platform):
    instance, launch, _ = platform
    run_id = launch(ONBOARDING)
    run = wait_for("the run to finish", lambda: finished(instance, run_id))
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert PID_TAG not in run.tags
    logs = "\n".join(e.message or "" for e in instance.all_logs(run_id))
    assert "launching through the code server" in logs


def test_onboarding_runs_are_forked_from_one_warm_parent(platform):
    instance, launch, tmp_path = platform
    runs = [run_warm(instance, launch), launch(ONBOARDING)]
    for run_id in runs:
        run = wait_for("the run to finish", lambda rid=run_id: finished(instance, rid))
        assert run.status == dg.DagsterRunStatus.SUCCESS
    pids = [worker_pids(tmp_path, run_id) for run_id in runs]
    assert [str(pid) for pid, _ in pids] == [instance.get_run_by_id(r).tags[PID_TAG] for r in runs]
    parents = {ppid for _, ppid in pids}
    assert len(parents) == 1, "both runs come from the same warm parent"
    assert "warm_worker" in Path(f"/proc/{parents.pop()}/cmdline").read_text()


def test_other_runs_go_through_the_code_server(platform):
    instance, launch, tmp_path = platform
    run_id = launch()
    run = wait_for("the run to finish", lambda: finished(instance, run_id))
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert PID_TAG not in run.tags
    _, ppid = worker_pids(tmp_path, run_id)
    assert "warm_worker" not in Path(f"/proc/{ppid}/cmdline").read_text()


def test_a_warm_run_can_be_cancelled(platform):
    instance, launch, tmp_path = platform
    run_warm(instance, launch)
    run_id = launch(HOLD)
    worker_pids(tmp_path, run_id)
    assert instance.run_launcher.terminate(run_id)
    run = wait_for("the run to be cancelled", lambda: finished(instance, run_id))
    assert run.status == dg.DagsterRunStatus.CANCELED


def test_edited_code_gets_a_fresh_warm_parent(platform):
    instance, launch, tmp_path = platform
    first = run_warm(instance, launch)
    wait_for("the run to finish", lambda: finished(instance, first))
    _, old_parent = worker_pids(tmp_path, first)
    defs = tmp_path / "defs.py"
    defs.write_text(defs.read_text() + "\n# edited\n")
    os.utime(defs, (time.time() + 5, time.time() + 5))
    second = run_warm(instance, launch)  # the first launch after the edit starts cold
    run = wait_for("the run to finish", lambda: finished(instance, second))
    assert run.status == dg.DagsterRunStatus.SUCCESS
    _, new_parent = worker_pids(tmp_path, second)
    assert new_parent != old_parent


def test_health_check_reports_a_killed_warm_worker(platform):
    instance, launch, tmp_path = platform
    run_warm(instance, launch)
    run_id = launch(HOLD)
    pid, _ = worker_pids(tmp_path, run_id)
    run = wait_for(
        "the run to start",
        lambda: (r := instance.get_run_by_id(run_id)).status == dg.DagsterRunStatus.STARTED and r,
    )
    launcher = instance.run_launcher
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    os.kill(pid, signal.SIGKILL)
    health = wait_for(
        "the health check to see the dead worker",
        lambda: (h := launcher.check_run_worker_health(run)).status == WorkerStatus.FAILED and h,
    )
    assert "is gone" in (health.msg or "")


def test_a_sensors_onboarding_run_is_launched_without_the_queue(platform):
    instance, launch, tmp_path = platform

    def sensor_run(name: str):
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"trigger": name}))
        return runs[0] if runs and runs[0].is_finished else None

    for i in range(20):  # the sensor's code origin may warm its own parent first
        (tmp_path / "triggers" / f"signup-{i}").touch()
        run = wait_for("the sensor's run to finish", lambda n=f"signup-{i}": sensor_run(n))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        kinds = [e.dagster_event_type for e in instance.all_logs(run.run_id) if e.is_dagster_event]
        assert dg.DagsterEventType.PIPELINE_STARTING in kinds
        assert dg.DagsterEventType.PIPELINE_ENQUEUED not in kinds  # never waited in the queue
        if PID_TAG in run.tags:  # forked from the warm parent
            break
        time.sleep(1)
    else:
        raise AssertionError("no sensor run was forked from a warm parent")
    queued = launch(ONBOARDING)  # submitted outside the daemon (the UI, the CLI): queued
    wait_for("the queued run to finish", lambda: finished(instance, queued))
    kinds = [e.dagster_event_type for e in instance.all_logs(queued) if e.is_dagster_event]
    assert dg.DagsterEventType.PIPELINE_ENQUEUED in kinds
