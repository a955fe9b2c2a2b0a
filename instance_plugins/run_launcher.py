"""``WarmRunLauncher``: runs of latency-sensitive lanes start in a forked, already-warm worker.

Dagster's :class:`~dagster.DefaultRunLauncher` asks the code server to *spawn* a fresh Python
process per run, which imports Dagster and the code location again: 4-6 s on these 2-core
machines before the first step starts, and as much CPU per run. For the onboarding lane (a
decision per signup within seconds) that start-up is most of the latency, so this launcher
keeps, per code location, one warm parent process (:mod:`instance_plugins.warm_worker`) that has
imported the code once and forks a run worker per run (tens of milliseconds).

- Only runs whose ``lane_tag`` (``platform/lane``) is in ``lanes`` (default ``["onboarding"]``)
  use a warm worker; every other run, and any run the warm path cannot start, goes through
  :class:`~dagster.DefaultRunLauncher` unchanged (the fallback is logged as an engine event).
- The child runs exactly what ``dagster api execute_run`` runs, so events, retries, run
  monitoring, cancellation (SIGINT, as Dagster's own cancellation does) and compute logs behave
  as for any run. The worker's pid and start time are recorded as run tags.
- :meth:`check_run_worker_health` makes run monitoring useful for these runs: a worker that
  died without finishing its run (``kill -9``, out of memory) is reported ``FAILED`` at the next
  monitoring poll, so the run is failed (and retried by run retries) within seconds instead of
  staying ``STARTED``. Runs launched through the code server are reported ``RUNNING`` (no
  check, as with the default launcher).
- ``preload`` (module names, e.g. ``[risk_assets.definitions]``): the daemon starts those warm
  parents when it builds the launcher; with :class:`WarmQueuedRunCoordinator` as the run
  coordinator that is when the daemon starts, so even the first run after a restart starts warm.
- ``warm_imports`` (module names, e.g. ``[pandas, pyarrow.parquet]``): libraries the runs import
  on first use, imported once in the parent. The parent also opens the instance once (storage
  and SQLAlchemy imports) and closes it before forking.
- Edited code: the warm parent notices changed source files at the next launch, exits, and a
  new one is started (that run pays the cold start once).
- More than one host: a warm worker is a local process of the host whose launcher forked it
  (the daemon's, as the queued run coordinator launches runs), recorded as ``HOST_TAG``. No
  process ever signals or inspects a pid recorded by another host: :meth:`check_run_worker_health`
  reports such a run ``RUNNING`` with "on another host: not checked" (run monitoring fails runs
  for any other status; the run's ``max_runtime`` still applies), and :meth:`terminate` from
  another host (a webserver elsewhere) only marks the run ``CANCELING``; the daemon on the
  worker's host delivers the SIGINT within ``CANCEL_POLL_S`` (a watcher thread that looks for
  its own host's canceling warm runs), and a run nobody signals is failed by run monitoring's
  ``cancel_timeout_seconds``. Each worker is signalled once (``SIGNALLED_TAG``).

- ``delegate`` (optional, ``{module, class, config}`` like any ``ConfigurableClass`` in
  ``dagster.yaml``): the run launcher every run that is not on a warm lane is handed to (e.g.
  ``dagster_aws.ecs.EcsRunLauncher``: batch runs in their own ECS task). It is built when this
  launcher is built (a wrong module, class or config fails there, with a message that says what
  to fix), gets the same instance, and receives ``launch_run``, ``terminate``,
  ``check_run_worker_health``, ``resume_run``, ``get_run_worker_debug_info``, ``join`` and
  ``dispose`` for its runs. Without ``delegate`` those runs go through the code server as with
  :class:`~dagster.DefaultRunLauncher`. A warm-lane run the warm path cannot start (its parent
  is warming up) still goes through the code server, never to the delegate (an ECS task takes
  30-90 s to start; the code server about 5 s).
- Which launcher took a run is the run tag ``LAUNCHED_BY_TAG`` (``platform/launched_by``:
  ``warm``, ``code_server`` or ``delegate``), written at launch (before the delegate is called),
  so ``terminate`` and the health check reach the right launcher from any process and after a
  restart. A run without it (launched before the tag existed) is ``warm`` when it has a worker
  pid, else ``code_server``. A pid is only ever read or signalled for a ``warm`` run of this
  host: Dagster's run retries copy the parent run's tags to the retry, so a retry of a warm run
  arrives with the dead parent worker's pid and host; the launch overwrites those tags (empty
  values count as absent), and a retry launched by the delegate or the code server is never
  signalled or health-checked by that stale pid.

Configure in ``dagster.yaml``::

    run_launcher:
      module: instance_plugins.run_launcher
      class: WarmRunLauncher
      config:
        lanes: [onboarding]
        preload: [risk_assets.definitions]
        warm_imports: [pandas, pyarrow.parquet]
        delegate:                        # optional: every other lane
          module: dagster_aws.ecs
          class: EcsRunLauncher
          config: {task_definition: ..., container_name: run}
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterRunStatus, DefaultRunLauncher, Field, Permissive, QueuedRunCoordinator
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._serdes import serialize_value
from dagster._serdes.config_class import ConfigurableClassData

from instance_plugins.warm_worker import WARM_IMPORTS_ENV, WARM_INSTANCE_REF_ENV

PID_TAG = "platform/run_worker_pid"
CREATED_TAG = "platform/run_worker_created"
HOST_TAG = "platform/run_worker_host"
SIGNALLED_TAG = "platform/run_worker_signalled"
WORKER_TAGS = (PID_TAG, CREATED_TAG, HOST_TAG, SIGNALLED_TAG)
LAUNCHED_BY_TAG = "platform/launched_by"
WARM, CODE_SERVER, DELEGATE = "warm", "code_server", "delegate"
CANCEL_POLL_S = 2.0
WARM_START_TIMEOUT_S = 120.0
WARM_RETRY_AFTER_S = 60.0  # after a parent failed to start, runs launch cold this long


def _is_daemon_process() -> bool:
    """True in ``dagster-daemon run`` (also as ``python -m dagster._daemon``, as dagster dev runs it)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name == "dagster-daemon" or argv0.parent.name == "_daemon"


@dataclass(frozen=True)
class CodeKey:
    """What a warm parent has imported: a module or file, from a directory, with an interpreter."""

    kind: str  # "module" or "file"
    target: str
    working_directory: str | None
    executable: str


def code_key(repository_origin: Any) -> CodeKey | None:
    """The warm parent a run's repository origin can use (None: not a module or file pointer)."""
    pointer = repository_origin.code_pointer
    module, python_file = getattr(pointer, "module", None), getattr(pointer, "python_file", None)
    if isinstance(module, str):
        kind, target = "module", module
    elif isinstance(python_file, str):
        kind, target = "file", python_file
    else:
        return None
    return CodeKey(
        kind=kind,
        target=target,
        working_directory=getattr(pointer, "working_directory", None),
        executable=repository_origin.executable_path or sys.executable,
    )


class WarmNotReady(RuntimeError):
    """The warm parent is (re)starting; the run is launched the ordinary way meanwhile."""


class WarmParent:
    """One warm parent process for one code location.

    Starting a parent takes as long as a cold run start, so it never blocks a launch: while it
    starts (first use, after edited code, after it died) runs are launched through the code
    server and the parent warms up in a background thread.
    """

    def __init__(
        self, key: CodeKey, instance_ref: str | None = None, imports: Sequence[str] = ()
    ) -> None:
        self.key = key
        self.instance_ref = instance_ref
        self.imports = tuple(imports)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._warming: threading.Thread | None = None
        self.last_error: str | None = None
        self._failed_at = -WARM_RETRY_AFTER_S

    def _start(self) -> subprocess.Popen[str]:
        wd = self.key.working_directory
        proc = subprocess.Popen(
            [
                self.key.executable,
                "-m",
                "instance_plugins.warm_worker",
                self.key.kind,
                self.key.target,
            ]
            + ([wd] if wd else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=wd or None,
            env={
                **os.environ,
                WARM_INSTANCE_REF_ENV: self.instance_ref or "",
                WARM_IMPORTS_ENV: ",".join(self.imports),
            },
            text=True,
            bufsize=1,
        )
        ready = self._read(proc)
        if not ready.get("ready"):
            proc.kill()
            raise RuntimeError(f"warm worker parent did not start: {ready}")
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            code = proc.wait(timeout=WARM_START_TIMEOUT_S)
            raise RuntimeError(f"warm worker parent exited (code {code})")
        return json.loads(line)

    def _warm_in_background(self) -> None:
        try:
            proc = self._start()
        except Exception as exc:
            self.last_error, self._failed_at = str(exc), time.monotonic()
            return
        with self._lock:
            self._stop()
            self._proc = proc
            self.last_error = None

    def warm(self) -> threading.Thread:
        """Start the parent in the background unless it runs or is starting already."""
        with self._lock:
            return self._ensure_warming()

    def _ensure_warming(self) -> threading.Thread:
        recently_failed = time.monotonic() - self._failed_at < WARM_RETRY_AFTER_S
        if (self._warming is None or not self._warming.is_alive()) and not recently_failed:
            self._warming = threading.Thread(
                target=self._warm_in_background, name="warm-run-worker-parent", daemon=True
            )
            self._warming.start()
        return self._warming

    def fork_run(self, run_id: str, instance_ref: str) -> dict[str, Any]:
        """Fork a worker for ``run_id``; returns ``{"pid", "create_time"}``.

        Raises :class:`WarmNotReady` (and starts warming) when no parent is ready.
        """
        request = json.dumps({"run_id": run_id, "instance_ref": instance_ref}) + "\n"
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                self._proc = None
                self._ensure_warming()
                raise WarmNotReady(self.last_error or "warm run-worker parent is starting")
            try:
                assert proc.stdin is not None
                proc.stdin.write(request)
                proc.stdin.flush()
                reply = self._read(proc)
            except (OSError, RuntimeError, ValueError) as exc:
                reply = {"error": str(exc)}
            if "pid" in reply:
                return reply
            # code changed on disk ("stale") or the parent broke: replace it
            self._stop()
            self._ensure_warming()
            raise WarmNotReady(
                "code changed; warm parent restarting" if reply.get("stale") else str(reply)
            )

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()

    def close(self) -> None:
        with self._lock:
            self._stop()


class InvalidDelegateError(ValueError):
    """``run_launcher.config.delegate`` names no usable run launcher (the message says why)."""


KNOWN_LAUNCHERS = (
    "'dagster' (DefaultRunLauncher), 'dagster_aws.ecs' (EcsRunLauncher), "
    "'dagster_k8s' (K8sRunLauncher), 'dagster_docker' (DockerRunLauncher)"
)


def build_delegate(spec: Mapping[str, Any]) -> RunLauncher:
    """Build the run launcher ``{module, class, config}`` describes, as ``dagster.yaml`` would."""
    import importlib

    import yaml
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._serdes import ConfigurableClass

    module_name, class_name = spec["module"], spec["class"]
    where = f"run_launcher.config.delegate ({module_name}.{class_name})"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidDelegateError(
            f"{where}: cannot import module {module_name!r} ({exc}). `module` is the module that "
            f"defines the launcher, e.g. {KNOWN_LAUNCHERS}; its package must be installed."
        ) from exc
    klass = getattr(module, class_name, None)
    launchers = sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, RunLauncher)
        and issubclass(value, ConfigurableClass)
        and not issubclass(value, WarmRunLauncher)
    )
    if not (
        isinstance(klass, type)
        and issubclass(klass, RunLauncher)
        and issubclass(klass, ConfigurableClass)
    ):
        found = "is not a run launcher" if klass is not None else "does not exist"
        raise InvalidDelegateError(
            f"{where}: class {class_name!r} {found} in module {module_name!r}; configurable run "
            f"launchers there: {', '.join(launchers) or f'none (e.g. {KNOWN_LAUNCHERS})'}."
        )
    if issubclass(klass, WarmRunLauncher):
        raise InvalidDelegateError(f"{where}: the delegate cannot itself be a WarmRunLauncher.")
    data = ConfigurableClassData(
        module_name, class_name, yaml.safe_dump(dict(spec.get("config") or {}))
    )
    try:
        return data.rehydrate(as_type=klass)
    except DagsterInvalidConfigError as exc:
        raise InvalidDelegateError(f"{where}: invalid `config`: {exc}") from exc
    except Exception as exc:  # the launcher's own constructor (e.g. an AWS call) failed
        raise InvalidDelegateError(f"{where}: could not be built: {exc!r}") from exc


class WarmRunLauncher(DefaultRunLauncher):
    """Launch the configured lanes' runs in forked warm workers; others through the delegate
    (``delegate``) or, without one, through the code server like the default launcher."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        lanes: Sequence[str] = ("onboarding",),
        lane_tag: str = "platform/lane",
        preload: Sequence[str] = (),
        warm_imports: Sequence[str] = (),
        delegate: RunLauncher | None = None,
    ) -> None:
        super().__init__(inst_data=inst_data)
        self.preload = tuple(preload)
        self.warm_imports = tuple(warm_imports)
        self.lanes = frozenset(lanes)
        self.lane_tag = lane_tag
        self.delegate = delegate
        self._parents: dict[CodeKey, WarmParent] = {}
        self._parents_lock = threading.Lock()
        self._host = socket.gethostname()
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "lanes": Field([str], is_required=False, default_value=["onboarding"]),
            "lane_tag": Field(str, is_required=False, default_value="platform/lane"),
            "preload": Field([str], is_required=False, default_value=[]),
            "warm_imports": Field([str], is_required=False, default_value=[]),
            "delegate": Field(
                {"module": str, "class": str, "config": Field(Permissive(), is_required=False)},
                is_required=False,
                description="The run launcher (any configurable one) of the runs not on a warm "
                "lane; unset: through the code server, as DefaultRunLauncher.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmRunLauncher:
        spec = config_value.get("delegate")
        return cls(
            inst_data=inst_data,
            lanes=config_value.get("lanes", ["onboarding"]),
            lane_tag=config_value.get("lane_tag", "platform/lane"),
            preload=config_value.get("preload", []),
            warm_imports=config_value.get("warm_imports", []),
            delegate=build_delegate(spec) if spec else None,
        )

    @property
    def delegate_name(self) -> str:
        kind = type(self.delegate) if self.delegate is not None else None
        return f"{kind.__module__}.{kind.__qualname__}" if kind else "no delegate"

    def wants_warm(self, tags: Mapping[str, str]) -> bool:
        return tags.get(self.lane_tag) in self.lanes

    @staticmethod
    def launched_by(run) -> str:
        """Which launcher took ``run``: ``warm``, ``code_server`` or ``delegate``."""
        route = run.tags.get(LAUNCHED_BY_TAG)
        if route in (WARM, CODE_SERVER, DELEGATE):
            return route
        if route is None and run.tags.get(PID_TAG):  # launched before the tag existed
            return WARM
        return CODE_SERVER

    def _parent(self, key: CodeKey) -> WarmParent:
        with self._parents_lock:
            if key not in self._parents:
                ref = serialize_value(self._instance.get_ref()) if self.has_instance else None
                self._parents[key] = WarmParent(key, ref, self.warm_imports)
            return self._parents[key]

    def _route(self, run, route: str) -> None:
        """Record ``route`` on ``run``, dropping worker tags a retried run copied from its parent."""
        tags = {LAUNCHED_BY_TAG: route}
        tags.update({t: "" for t in WORKER_TAGS if run.tags.get(t)})
        self._instance.add_run_tags(run.run_id, tags)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if not self.wants_warm(run.tags):
            if self.delegate is not None:
                self._route(run, DELEGATE)  # before the launch: terminate finds it meanwhile
                self.delegate.launch_run(context)
            else:
                self._route(run, CODE_SERVER)
                super().launch_run(context)
            return
        origin = run.job_code_origin
        key = code_key(origin.repository_origin) if origin is not None else None
        if key is None:
            self._route(run, CODE_SERVER)
            super().launch_run(context)
            return
        if any(run.tags.get(t) for t in (LAUNCHED_BY_TAG, *WORKER_TAGS)):
            # a retry carries its parent's tags: never let the parent's worker be seen meanwhile
            self._route(run, CODE_SERVER)
        try:
            worker = self._parent(key).fork_run(
                run.run_id, serialize_value(self._instance.get_ref())
            )
        except Exception as exc:  # warming up, or any failure: launch the ordinary way
            self._instance.report_engine_event(
                f"Warm run worker not available ({exc}); launching through the code server.",
                run,
                cls=self.__class__,
            )
            self._route(run, CODE_SERVER)
            super().launch_run(context)
            return
        self._instance.add_run_tags(
            run.run_id,
            {
                LAUNCHED_BY_TAG: WARM,
                PID_TAG: str(worker["pid"]),
                CREATED_TAG: repr(worker["create_time"]),
                HOST_TAG: self._host,
                **({SIGNALLED_TAG: ""} if run.tags.get(SIGNALLED_TAG) else {}),
            },
        )
        self._run_ids.add(run.run_id)

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        if self.delegate is not None:
            self.delegate.register_instance(instance)
        if _is_daemon_process():
            if self.preload:
                self._warm_preloads()
            self._watch_cancellations()

    def _watch_cancellations(self) -> None:
        """In the daemon: deliver cancellations requested from other hosts to this host's workers."""
        if self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop_watch.wait(CANCEL_POLL_S):
                try:
                    self.deliver_cancellations()
                except Exception:  # a storage hiccup must not end the watcher
                    continue

        self._watcher = threading.Thread(target=loop, name="warm-run-cancel-watcher", daemon=True)
        self._watcher.start()

    def deliver_cancellations(self) -> int:
        """SIGINT this host's warm workers whose runs are ``CANCELING``; returns how many."""
        from dagster import RunsFilter

        records = self._instance.get_run_records(
            filters=RunsFilter(statuses=[DagsterRunStatus.CANCELING], tags={HOST_TAG: self._host}),
            limit=100,
        )
        n = 0
        for record in records:
            run = record.dagster_run
            if self.is_local(run) and not run.tags.get(SIGNALLED_TAG):
                n += self._signal_local(run)
        return n

    def _signal_local(self, run, *, tagged: bool = False) -> bool:
        """Signal ``run``'s worker on this host once (SIGINT: Dagster's own cancellation)."""
        import signal

        if not self.is_local(run):  # never a pid of another host, a delegate's or a stale one
            return False
        if not tagged:
            self._instance.add_run_tags(run.run_id, {SIGNALLED_TAG: repr(time.time())})
        if self.check_run_worker_health(run).status != WorkerStatus.RUNNING:
            self._instance.report_run_canceled(run, "run worker already gone")
            return False
        os.kill(int(run.tags[PID_TAG]), signal.SIGINT)
        return True

    def is_local(self, run) -> bool:
        """True when ``run`` is a warm run whose worker was forked on this host."""
        return (
            self.launched_by(run) == WARM
            and bool(run.tags.get(PID_TAG))
            and run.tags.get(HOST_TAG) == self._host
        )

    def _warm_preloads(self) -> None:
        """Start the configured modules' warm parents (in the background) before their first run."""
        for module in self.preload:
            self._parent(CodeKey("module", module, os.getcwd(), sys.executable)).warm()

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True  # warm runs always; a delegate's runs when it can, else "not checked"

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        import psutil

        route = self.launched_by(run)
        if route == DELEGATE:
            if self.delegate is not None and self.delegate.supports_check_run_worker_health:
                return self.delegate.check_run_worker_health(run)
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"launched by the delegate run launcher ({self.delegate_name}), which has no "
                "worker health check: not checked",
            )
        pid = run.tags.get(PID_TAG)
        if route != WARM or not pid:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "launched through the code server: not checked"
            )
        if not self.is_local(run):
            # never read a pid of another host: run monitoring fails any status but RUNNING
            return CheckRunHealthResult(
                WorkerStatus.RUNNING,
                f"run worker {pid} is on host {run.tags.get(HOST_TAG)!r}, not "
                f"{self._host!r}: not checked",
            )
        try:
            proc = psutil.Process(int(pid))
            alive = proc.status() != psutil.STATUS_ZOMBIE and repr(
                proc.create_time()
            ) == run.tags.get(CREATED_TAG)
        except psutil.NoSuchProcess:
            alive = False
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=pid)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone but the run did not finish",
            run_worker_id=pid,
        )

    def get_run_worker_debug_info(self, run, include_container_logs: bool | None = True):
        if self.launched_by(run) == DELEGATE and self.delegate is not None:
            return self.delegate.get_run_worker_debug_info(run, include_container_logs)
        return None

    @property
    def supports_resume_run(self) -> bool:
        return self.delegate is not None and self.delegate.supports_resume_run

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        route = self.launched_by(run)
        if route == DELEGATE and self.delegate is not None and self.delegate.supports_resume_run:
            self.delegate.resume_run(context)
            return
        who = f"the delegate ({self.delegate_name})" if route == DELEGATE else f"{route!r}"
        raise NotImplementedError(
            f"Run {run.run_id} was launched by {who}, which cannot resume a run; it is failed "
            "instead (run retries re-execute it)."
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        if run is None:
            return super().terminate(run_id)
        route = self.launched_by(run)
        if route == DELEGATE:
            if self.delegate is not None:
                return self.delegate.terminate(run_id)
            if run.is_finished:
                return False
            self._instance.report_run_canceling(run)
            self._instance.report_engine_event(
                "The run was launched by a delegate run launcher, which this instance's "
                "WarmRunLauncher has no `delegate` for: the termination request cannot be sent.",
                run,
                cls=self.__class__,
            )
            return False
        if route != WARM or not run.tags.get(PID_TAG):
            return super().terminate(run_id)
        if run.is_finished:
            return False
        if not self.is_local(run):
            self._instance.report_run_canceling(
                run,
                message=(
                    f"Run worker {run.tags[PID_TAG]} is on host {run.tags.get(HOST_TAG)!r}; "
                    f"the daemon there delivers the cancellation (asked from {self._host!r})."
                ),
            )
            return True
        # tagged before CANCELING is visible, so this host's daemon never signals it a second time
        self._instance.add_run_tags(run.run_id, {SIGNALLED_TAG: repr(time.time())})
        self._instance.report_run_canceling(run)
        self._signal_local(run, tagged=True)
        return True

    def join(self, timeout: int = 30) -> None:
        super().join(timeout)
        if self.delegate is not None:
            self.delegate.join(timeout)

    def dispose(self) -> None:
        self._stop_watch.set()
        with self._parents_lock:
            for parent in self._parents.values():
                parent.close()
            self._parents.clear()
        if self.delegate is not None:
            self.delegate.dispose()


class WarmQueuedRunCoordinator(QueuedRunCoordinator):
    """Dagster's queued run coordinator, with two additions for latency-sensitive lanes.

    - In the daemon it builds the run launcher as soon as the queue starts, so a
      :class:`WarmRunLauncher`'s ``preload`` parents warm up before the first run instead of at it
      (Dagster builds the launcher lazily, at the first launch).
    - ``direct_lanes`` (e.g. ``[onboarding]``): a run of such a lane (``lane_tag``) submitted in
      the daemon (by the sensor or schedule tick that created it; the UI's submissions are
      queued) is launched at once, without waiting for the queue's next dequeue cycle, as long as fewer than the lane's
      ``tag_concurrency_limits`` limit (or ``max_concurrent_runs``) of its runs are starting or
      running; otherwise, or for any other lane, it is queued as usual. A run launched directly
      has no ``PIPELINE_ENQUEUED`` event (``NOT_STARTED`` -> ``STARTING``, as with the default
      coordinator), so the dequeue loop never sees it and it is never launched twice.
    - ``sensor_loop_seconds`` (e.g. ``1``): in the daemon, the sensor daemon's loop period
      (Dagster's ``MIN_INTERVAL_LOOP_TIME``, 5 s), so a sensor with ``minimum_interval_seconds``
      below 5 s is evaluated that often. Each loop reads the sensor states once; sensors with
      longer intervals are not evaluated more often.
    """

    def __init__(
        self,
        *args: Any,
        direct_lanes: Sequence[str] = (),
        lane_tag: str = "platform/lane",
        sensor_loop_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.direct_lanes = frozenset(direct_lanes)
        self.lane_tag = lane_tag
        self.sensor_loop_seconds = sensor_loop_seconds
        self._direct_lock = threading.Lock()

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **super().config_type(),
            "direct_lanes": Field([str], is_required=False, default_value=[]),
            "lane_tag": Field(str, is_required=False, default_value="platform/lane"),
            "sensor_loop_seconds": Field(float, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        config = dict(config_value)
        direct = config.pop("direct_lanes", [])
        lane_tag = config.pop("lane_tag", "platform/lane")
        loop = config.pop("sensor_loop_seconds", None)
        coordinator = super().from_config_value(inst_data, config)
        coordinator.direct_lanes = frozenset(direct)
        coordinator.lane_tag = lane_tag
        coordinator.sensor_loop_seconds = loop
        return coordinator

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        if _is_daemon_process():
            instance.run_launcher  # noqa: B018
            prepare = getattr(instance.event_log_storage, "prepare", None)
            if prepare is not None:  # instance_plugins.sqlite_storage: the new-run template
                prepare()
            if self.sensor_loop_seconds:
                import dagster._daemon.sensor as sensor_daemon

                sensor_daemon.MIN_INTERVAL_LOOP_TIME = self.sensor_loop_seconds

    def lane_limit(self, lane: str) -> int:
        """The most runs of ``lane`` starting or running at once (its tag limit, else the max)."""
        limits = [
            int(limit["limit"])
            for limit in self.get_run_queue_config().tag_concurrency_limits or []
            if limit.get("key") == self.lane_tag and limit.get("value") == lane
        ]
        if limits:
            return min(limits)
        top = self.get_run_queue_config().max_concurrent_runs
        return top if top >= 0 else 1 << 30

    def submit_run(self, context):
        from dagster import RunsFilter

        run = context.dagster_run
        lane = run.tags.get(self.lane_tag)
        if (
            lane not in self.direct_lanes
            or run.status != DagsterRunStatus.NOT_STARTED
            or context.workspace is None
            or not _is_daemon_process()  # the UI's submissions: the daemon's queue launches them
        ):
            return super().submit_run(context)
        with self._direct_lock:  # one direct launch decision at a time per process
            busy = self._instance.get_runs_count(
                RunsFilter(
                    statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
                    tags={self.lane_tag: lane},
                )
            )
            if busy >= self.lane_limit(lane):
                return super().submit_run(context)
            self._launch_now(run, context.workspace)
        launched = self._instance.get_run_by_id(run.run_id)
        assert launched is not None
        return launched

    def _launch_now(self, run, workspace) -> None:
        """Launch like the queue's dequeue does (``STARTING``, then the launcher); a code server
        that cannot be reached puts the run in the queue instead, whose retries take over."""
        from dagster._core.errors import (
            DagsterCodeLocationLoadError,
            DagsterUserCodeUnreachableError,
        )
        from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
        from dagster._utils.error import serializable_error_info_from_exc_info

        instance = self._instance
        starting = DagsterEvent(
            event_type_value=DagsterEventType.PIPELINE_STARTING.value, job_name=run.job_name
        )
        instance.report_dagster_event(starting, run_id=run.run_id)
        run = instance.get_run_by_id(run.run_id)
        try:
            instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=workspace))
        except Exception as exc:
            error = serializable_error_info_from_exc_info(sys.exc_info())
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.status != DagsterRunStatus.STARTING:
                return  # the run moved on (started, or failed itself): nothing to undo
            if isinstance(exc, DagsterUserCodeUnreachableError | DagsterCodeLocationLoadError):
                instance.report_engine_event(
                    "Direct launch could not reach the code server; the run is queued instead.",
                    current,
                    EngineEventData.engine_error(error),
                )
                instance.report_dagster_event(DagsterEvent.job_enqueue(current), run_id=run.run_id)
                return
            instance.report_engine_event(
                "Direct launch failed; the run is marked failed.",
                current,
                EngineEventData.engine_error(error),
            )
            instance.report_run_failed(current)
