"""``WarmRunLauncher`` with a ``delegate``: warm lanes fork on this host, every other lane goes to
the delegate run launcher, and each run's terminate / health check reaches the launcher that took
it (the ``platform/launched_by`` tag), also from a freshly built instance (a restart).

Real parts only: a real code server and run workers with ``dagster.DefaultRunLauncher`` as the
delegate, and ``dagster_aws.ecs.EcsRunLauncher`` as the delegate against moto's ECS over HTTP
(moto places the task and reports its status; no container runs).
"""

from __future__ import annotations

import json
import re
import socket
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._cli.job import _create_run
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.launcher.base import LaunchRunContext, ResumeRunContext, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG, RUN_WORKER_ID_TAG
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from instance_plugins.run_launcher import (
    CREATED_TAG,
    HOST_TAG,
    LAUNCHED_BY_TAG,
    PID_TAG,
    InvalidDelegateError,
    WarmRunLauncher,
)
from tests.daemon_helpers import wait_for as _wait_for

DEFS = '''
import os
import textwrap
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


defs = dg.Definitions(jobs=[quick_job])
'''

WORKSPACE = """
load_from:
  - python_file: {relative_path: defs.py, location_name: delegate_test}
"""

BATCH = {"platform/lane": "batch"}
ONBOARDING = {"platform/lane": "onboarding"}
TIMEOUT_S = 90


def wait_for(what: str, fn, timeout_s: float = TIMEOUT_S):
    return _wait_for(what, fn, timeout_s)


def instance_yaml(delegate: dict | None, **extra) -> str:
    config: dict = {"lanes": ["onboarding"], **extra}
    if delegate is not None:
        config["delegate"] = delegate
    return yaml.safe_dump(
        {
            "telemetry": {"enabled": False},
            "run_launcher": {
                "module": "instance_plugins.run_launcher",
                "class": "WarmRunLauncher",
                "config": config,
            },
        }
    )


def finished(instance: dg.DagsterInstance, run_id: str):
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    """An instance whose launcher delegates to ``dagster.DefaultRunLauncher``, a real code server."""
    tmp_path = tmp_path_factory.mktemp("delegate")
    home, pids = tmp_path / "home", tmp_path / "pids"
    home.mkdir()
    pids.mkdir()
    (home / "dagster.yaml").write_text(
        instance_yaml({"module": "dagster", "class": "DefaultRunLauncher"})
    )
    (tmp_path / "defs.py").write_text(DEFS)
    (tmp_path / "workspace.yaml").write_text(WORKSPACE)
    with (
        pytest.MonkeyPatch.context() as mp,
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        mp.setenv("PID_DIR", str(pids))  # the code server, its run workers, the warm parent
        with WorkspaceProcessContext(
            instance, WorkspaceFileTarget([str(tmp_path / "workspace.yaml")])
        ) as workspace_process:
            workspace = workspace_process.create_request_context()
            location = workspace.get_code_location("delegate_test")
            repo = next(iter(location.get_repositories().values()))
            job = repo.get_full_job("quick_job")

            def launch(tags: dict[str, str]) -> str:
                run = _create_run(
                    instance=instance,
                    code_location=location,
                    remote_repo=repo,
                    remote_job=job,
                    run_config={},
                    tags=tags,
                    op_selection=None,
                    run_id=None,
                )
                instance.launch_run(run.run_id, workspace)
                return run.run_id

            yield {
                "instance": instance,
                "launch": launch,
                "tmp_path": tmp_path,
                "home": home,
                "workspace": workspace,
                "location": location,
                "job": job,
            }
            (pids / "release").touch()  # let any held run finish before the server stops


def worker_pids(tmp_path: Path, run_id: str) -> tuple[int, int]:
    path = tmp_path / "pids" / run_id
    text = wait_for(f"run {run_id} to record its pids", lambda: path.exists() and path.read_text())
    pid, ppid = (int(x) for x in text.split())
    return pid, ppid


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


@pytest.mark.slow
def test_a_batch_run_is_launched_by_the_delegate(platform):
    instance, launch = platform["instance"], platform["launch"]
    launcher = instance.run_launcher
    assert isinstance(launcher, WarmRunLauncher)
    assert type(launcher.delegate) is dg.DefaultRunLauncher
    run_id = launch(BATCH)
    run = wait_for("the batch run to finish", lambda: finished(instance, run_id))
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags[LAUNCHED_BY_TAG] == "delegate"
    assert GRPC_INFO_TAG in run.tags  # DefaultRunLauncher asked the code server for a process
    assert PID_TAG not in run.tags
    assert run_id in launcher.delegate._run_ids and run_id not in launcher._run_ids
    _, ppid = worker_pids(platform["tmp_path"], run_id)
    assert "warm_worker" not in cmdline(ppid)  # a subprocess of the code server


@pytest.fixture(scope="module")
def warm_run_id(platform) -> str:
    """An onboarding run forked from the warm parent (the first ones start through the code
    server while the parent warms up in the background)."""
    instance, launch = platform["instance"], platform["launch"]
    for attempt in range(20):
        run_id = launch(ONBOARDING)
        run = wait_for("the onboarding run to finish", lambda rid=run_id: finished(instance, rid))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        if run.tags.get(LAUNCHED_BY_TAG) == "warm":
            return run_id
        assert run.tags[LAUNCHED_BY_TAG] == "code_server", run.tags  # never the delegate
        if attempt == 0:
            logs = "\n".join(e.message or "" for e in instance.all_logs(run_id))
            assert "launching through the code server" in logs
        time.sleep(1)
    raise AssertionError("no onboarding run was forked from a warm parent")


@pytest.mark.slow
def test_an_onboarding_run_is_forked_warm_not_delegated(platform, warm_run_id):
    instance = platform["instance"]
    run = instance.get_run_by_id(warm_run_id)
    pid, ppid = worker_pids(platform["tmp_path"], warm_run_id)
    assert run.tags[PID_TAG] == str(pid)
    assert run.tags[HOST_TAG] == socket.gethostname()
    assert "warm_worker" in cmdline(ppid)
    assert warm_run_id not in instance.run_launcher.delegate._run_ids


@pytest.mark.slow
def test_a_delegated_run_is_health_checked_and_terminated_through_the_delegate(platform):
    instance, launch = platform["instance"], platform["launch"]
    run_id = launch({**BATCH, "hold": "1"})
    worker_pids(platform["tmp_path"], run_id)
    run = instance.get_run_by_id(run_id)
    assert run.tags[LAUNCHED_BY_TAG] == "delegate"
    health = instance.run_launcher.check_run_worker_health(run)
    # DefaultRunLauncher has no worker health check: reported, never guessed from a pid
    assert health.status == WorkerStatus.RUNNING
    assert "DefaultRunLauncher" in (health.msg or "") and "not checked" in (health.msg or "")
    # a restarted process (a new instance from the same dagster.yaml) finds the delegate by tag
    with dg.DagsterInstance.from_config(str(platform["home"])) as restarted:
        assert restarted.run_launcher.terminate(run_id)
    run = wait_for("the delegated run to be cancelled", lambda: finished(instance, run_id))
    assert run.status == dg.DagsterRunStatus.CANCELED


@pytest.mark.slow
def test_a_retry_of_a_warm_run_is_never_checked_or_signalled_by_its_parents_pid(
    platform, warm_run_id
):
    """Dagster's run retries copy the parent's tags: the retry arrives with the dead warm
    worker's pid and host. Launched by the delegate, it must not be judged by that pid."""
    instance = platform["instance"]
    parent = instance.get_run_by_id(warm_run_id)
    retry = instance.create_reexecuted_run(
        request_context=platform["workspace"],
        parent_run=parent,
        code_location=platform["location"],
        remote_job=platform["job"],
        strategy=ReexecutionStrategy.ALL_STEPS,
        extra_tags={**BATCH, "hold": "1"},
        use_parent_run_tags=True,  # what the run-retry daemon passes
    )
    assert retry.tags[PID_TAG] == parent.tags[PID_TAG]  # inherited
    instance.launch_run(retry.run_id, platform["workspace"])
    worker_pids(platform["tmp_path"], retry.run_id)
    run = instance.get_run_by_id(retry.run_id)
    assert run.tags[LAUNCHED_BY_TAG] == "delegate"
    assert not run.tags.get(PID_TAG) and not run.tags.get(HOST_TAG)
    launcher = instance.run_launcher
    health = launcher.check_run_worker_health(run)
    assert health.status == WorkerStatus.RUNNING, health  # not "worker gone" from the old pid
    assert not launcher.is_local(run)
    assert launcher.terminate(retry.run_id)
    assert launcher.deliver_cancellations() == 0
    run = wait_for("the retry to be cancelled", lambda: finished(instance, retry.run_id))
    assert run.status == dg.DagsterRunStatus.CANCELED


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delegate", "expected"),
    [
        (
            {"module": "dagster_awz.ecs", "class": "EcsRunLauncher"},
            "cannot import module 'dagster_awz.ecs'",
        ),
        (
            {"module": "dagster_aws.ecs", "class": "EcsLauncher"},
            "class 'EcsLauncher' does not exist in module 'dagster_aws.ecs'; configurable run "
            "launchers there: EcsRunLauncher",
        ),
        ({"module": "dagster", "class": "Definitions"}, "'Definitions' is not a run launcher"),
        (
            {"module": "dagster", "class": "DefaultRunLauncher", "config": {"nope": 1}},
            "invalid `config`: Errors whilst loading configuration for {}.\n    Error 1: Received "
            'unexpected config entry "nope"',
        ),
        (
            {"module": "instance_plugins.run_launcher", "class": "WarmRunLauncher"},
            "cannot itself be a WarmRunLauncher",
        ),
        (  # the README's recipe on a host without the variable
            {
                "module": "dagster_aws.ecs",
                "class": "EcsRunLauncher",
                "config": {"task_definition": {"env": "PLATFORM_RUN_TASK_DEFINITION_UNSET"}},
            },
            "could not be built: Exception('You have attempted to fetch the environment variable "
            "PLATFORM_RUN_TASK_DEFINITION_UNSET",
        ),
    ],
)
def test_a_wrong_delegate_fails_with_a_message_that_says_what_to_fix(
    tmp_path: Path, delegate: dict, expected: str
) -> None:
    (tmp_path / "dagster.yaml").write_text(instance_yaml(delegate))
    with (
        dg.DagsterInstance.from_config(str(tmp_path)) as instance,
        pytest.raises(InvalidDelegateError) as raised,
    ):
        instance.run_launcher  # noqa: B018
    message = str(raised.value)
    assert message.startswith("run_launcher.config.delegate (")
    assert expected in message


def test_without_a_delegate_nothing_changes(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(instance_yaml(None))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert launcher.delegate is None
        assert launcher.supports_check_run_worker_health and not launcher.supports_resume_run


# --- dagster_aws.ecs.EcsRunLauncher as the delegate, on moto's ECS over HTTP ---------------------


@dg.op
def noop() -> None:
    pass


@dg.job
def ecs_job() -> None:
    noop()


README = Path(__file__).resolve().parents[1] / "deploy" / "production" / "README.md"


def readme_run_launcher() -> dict:
    """The ``run_launcher`` of the ECS recipe in deploy/production/README.md, as written there."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    recipe = [b for b in blocks if "EcsRunLauncher" in b and "WarmRunLauncher" in b]
    assert len(recipe) == 1, "the README has one delegating run_launcher recipe"
    return yaml.safe_load(textwrap.dedent(recipe[0]))["run_launcher"]


TASK_STAYS_RUNNING = {"progression": "manual", "times": 1000}


def moto_transition(endpoint: str, body: dict, action: str = "set-transition") -> None:
    """moto's state manager (its documented ``/moto-api`` endpoint of the server mode)."""
    import urllib.request

    request = urllib.request.Request(
        f"{endpoint}/moto-api/state-manager/{action}",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


@pytest.fixture
def ecs_home(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A moto ECS cluster with one container instance and the run task definition, and an
    instance profile whose launcher delegates to ``EcsRunLauncher`` (as the README's recipe)."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # every boto3 client the launcher makes
    # moto advances a task one state per describe_tasks; keep it RUNNING until it is stopped
    moto_transition(moto_endpoint, {"model_name": "ecs::task", "transition": TASK_STAYS_RUNNING})
    ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
    cluster = f"platform-{tmp_path.name[-8:]}"
    ecs.create_cluster(clusterName=cluster)
    host = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"][0]
    ecs.register_container_instance(
        cluster=cluster, instanceIdentityDocument=json.dumps({"instanceId": host["InstanceId"]})
    )
    ecs.register_task_definition(
        family="platform-run",
        containerDefinitions=[{"name": "run", "image": "platform:test", "cpu": 256, "memory": 512}],
    )
    monkeypatch.setenv("PLATFORM_RUN_TASK_DEFINITION", "platform-run")
    run_launcher = readme_run_launcher()
    # here the test process is not itself an ECS task: give the network the daemon's task would
    run_launcher["config"]["delegate"]["config"].update(
        use_current_ecs_task_config=False,
        run_task_kwargs={"cluster": cluster, "launchType": "EC2"},
    )
    (tmp_path / "dagster.yaml").write_text(
        yaml.safe_dump({"telemetry": {"enabled": False}, "run_launcher": run_launcher})
    )
    yield tmp_path
    moto_transition(moto_endpoint, {"model_name": "ecs::task"}, "unset-transition")


def test_ecs_run_launcher_as_the_delegate_on_moto(ecs_home: Path) -> None:
    import boto3
    import psutil
    from dagster_aws.ecs import EcsRunLauncher

    ecs = boto3.client("ecs")
    with dg.DagsterInstance.from_config(str(ecs_home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher.delegate, EcsRunLauncher)
        assert re.search(r":task-definition/platform-run:\d+$", launcher.delegate.task_definition)
        assert launcher.supports_resume_run  # ECS can resume; warm runs cannot (below)

        origin = dg.reconstructable(ecs_job).get_python_origin()
        run = instance.create_run_for_job(
            ecs_job, job_code_origin=origin, tags=BATCH, status=dg.DagsterRunStatus.STARTING
        )
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        run = instance.get_run_by_id(run.run_id)
        assert run.tags[LAUNCHED_BY_TAG] == "delegate"
        task_arn, cluster = run.tags["ecs/task_arn"], run.tags["ecs/cluster"]
        task = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
        assert task["lastStatus"] == "RUNNING"
        override = task["overrides"]["containerOverrides"][0]
        assert override["command"][:3] == ["dagster", "api", "execute_run"]
        # only command, cpu and memory: the environment comes from the task definition (README)
        assert "environment" not in override and "secrets" not in override
        assert task["overrides"]["cpu"] == "2048" and task["overrides"]["memory"] == "8192"
        health = launcher.check_run_worker_health(run)  # ECS's answer, from describe_tasks
        assert health.status == WorkerStatus.RUNNING
        assert health.run_worker_id == run.tags[RUN_WORKER_ID_TAG]

        # a warm run on the same instance is still checked by its pid, never sent to ECS
        me = psutil.Process()
        warm = instance.create_run_for_job(
            ecs_job,
            status=dg.DagsterRunStatus.STARTED,
            tags={
                **ONBOARDING,
                LAUNCHED_BY_TAG: "warm",
                PID_TAG: str(me.pid),
                CREATED_TAG: repr(me.create_time()),
                HOST_TAG: socket.gethostname(),
            },
        )
        checked = launcher.check_run_worker_health(warm)
        assert checked.status == WorkerStatus.RUNNING and checked.run_worker_id == str(me.pid)
        with pytest.raises(NotImplementedError, match="cannot resume"):
            launcher.resume_run(ResumeRunContext(dagster_run=warm, workspace=None))

    # after a restart: a new instance from the same profile stops the ECS task
    with dg.DagsterInstance.from_config(str(ecs_home)) as restarted:
        assert restarted.run_launcher.terminate(run.run_id)
        assert restarted.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELING
    task = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"][0]
    assert task["lastStatus"] == "STOPPED"
