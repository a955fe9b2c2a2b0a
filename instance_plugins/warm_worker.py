"""A warm run-worker parent: import a code location once, then fork one run worker per run.

Started by :class:`instance_plugins.run_launcher.WarmRunLauncher` as
``python -m instance_plugins.warm_worker module|file <module name or path> [<working directory>]``
with the code location's interpreter. It imports Dagster and the code location's module, builds
its repository definition once, then answers requests on its stdin/stdout (one JSON object per
line; the real stdout is moved to stderr so nothing else can write into the protocol):

- ``{"run_id": ..., "instance_ref": <serialized InstanceRef>}`` -> forks a child that executes
  the run exactly like ``dagster api execute_run`` does (``_execute_run_command_body``: engine
  events, run cancellation, failure reporting) and answers ``{"pid": ..., "create_time": ...}``;
- the code changed on disk since it was imported (edited code, then a reload in ``dagster dev``)
  -> answers ``{"stale": true}`` and exits, so the launcher starts a fresh parent;
- end of input (the launcher's process ended) -> exits; running children finish their runs.

Children are reaped here; a child's exit is seen by the run's status, and a child that died
without finishing is found by :meth:`WarmRunLauncher.check_run_worker_health` (run monitoring).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys
from pathlib import Path

WARM_INSTANCE_REF_ENV = "PLATFORM_WARM_INSTANCE_REF"
WARM_IMPORTS_ENV = "PLATFORM_WARM_IMPORTS"


def _code_files(working_directory: str | None) -> dict[str, float]:
    """Modification times of the imported modules that live under the working directory."""
    if not working_directory:
        return {}
    root = str(Path(working_directory).resolve())
    files: dict[str, float] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or ".venv" in path or "site-packages" in path:
            continue
        resolved = str(Path(path).resolve())
        if resolved.startswith(root + os.sep):
            try:
                files[resolved] = os.stat(resolved).st_mtime
            except OSError:
                continue
    return files


def _changed(files: dict[str, float]) -> bool:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return True
        except OSError:
            return True
    return False


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _warm_up(serialized_ref: str | None, imports: str) -> None:
    """Do once here what every run worker would do first: open the instance (imports its
    storage, SQLAlchemy, the compute log manager) and import the run's heavy libraries."""
    for name in filter(None, (n.strip() for n in imports.split(","))):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    if not serialized_ref:
        return
    from dagster._core.executor.in_process import InProcessExecutor  # noqa: F401
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._serdes import deserialize_value

    instance = DagsterInstance.from_ref(deserialize_value(serialized_ref, InstanceRef))
    try:
        instance.get_runs(limit=1)
        instance.event_log_storage  # noqa: B018
        instance.compute_log_manager  # noqa: B018
    finally:
        instance.dispose()  # no connection may be shared with the forked workers


def _run_child(run_id: str, serialized_ref: str) -> int:
    """Body of a forked run worker (mirrors ``dagster api execute_run``)."""
    profile_dir = os.environ.get("PLATFORM_WARM_PROFILE_DIR")
    if profile_dir:  # where a warm run worker spends its time (cProfile, one file per run)
        import cProfile

        profiler = cProfile.Profile()
        try:
            return profiler.runcall(_run_child_body, run_id, serialized_ref)
        finally:
            profiler.dump_stats(os.path.join(profile_dir, f"{run_id}.prof"))
    return _run_child_body(run_id, serialized_ref)


def _run_child_body(run_id: str, serialized_ref: str) -> int:
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance import DagsterInstance, InstanceRef
    from dagster._serdes import deserialize_value
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts():
        ref = deserialize_value(serialized_ref, InstanceRef)
        with DagsterInstance.from_ref(ref) as instance:
            return _execute_run_command_body(
                run_id, instance, lambda _event: None, set_exit_code_on_failure=True
            )


def main(argv: list[str]) -> int:
    proto_in = os.fdopen(os.dup(0), "r", buffering=1)
    proto_out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # prints of user code go to the launcher's stderr, never into the protocol

    # Import everything a run needs once, before the first fork.
    from dagster import Definitions
    from dagster._cli.api import _execute_run_command_body  # noqa: F401
    from dagster._core.code_pointer import load_python_file, load_python_module
    from dagster._core.execution.api import execute_run_iterator  # noqa: F401

    kind, target = argv[0], argv[1]
    working_directory = argv[2] if len(argv) > 2 else None
    load = load_python_module if kind == "module" else load_python_file
    module = load(target, working_directory)
    for value in vars(module).values():
        if isinstance(value, Definitions):
            # resolved once here (the repository and each of its jobs, which Dagster builds
            # lazily at first use), inherited by every run worker
            value.get_repository_def().get_all_jobs()
    _warm_up(os.environ.get(WARM_INSTANCE_REF_ENV), os.environ.get(WARM_IMPORTS_ENV, ""))
    files = _code_files(working_directory)
    proto_out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")

    try:
        return _serve(proto_in, proto_out, files)
    except KeyboardInterrupt:  # Ctrl-C in `dagster dev` reaches the whole process group
        return 0


def _serve(proto_in, proto_out, files: dict[str, float]) -> int:
    """Answer fork requests until the launcher goes away (see the module docstring)."""
    import psutil

    while True:
        readable, _, _ = select.select([proto_in], [], [], 1.0)
        _reap()
        if not readable:
            continue
        line = proto_in.readline()
        if not line:
            return 0
        request = json.loads(line)
        if _changed(files):
            proto_out.write(json.dumps({"stale": True}) + "\n")
            return 0
        pid = os.fork()
        if pid == 0:  # the run worker
            code = 1
            try:
                proto_in.close()
                proto_out.close()
                code = _run_child(request["run_id"], request["instance_ref"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        proto_out.write(
            json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time()}) + "\n"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
