"""Helpers for tests that run a real ``dagster-daemon`` (run monitoring, warm run launcher)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T], timeout_s: float = 60.0, every_s: float = 0.3) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextmanager
def running_daemon(cwd: Path, env: Mapping[str, str]) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run -w workspace.yaml`` in ``cwd`` (own session, log in daemon.log)."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=(cwd / "daemon.log").open("w"),
        start_new_session=True,
    )
    try:
        yield daemon
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
