"""The production topology on one machine: one process per service, the commands of compose.yaml.

Starts, each in its own process group and with exactly the ``command`` its service has in
``deploy/production/compose.yaml``: the two gRPC code servers (``near-code``, ``risk-code``), the
webserver and the daemon, both on ``deploy/production/workspace.yaml`` (``grpc_server`` entries)
and the production instance profile (``deploy/production/dagster.yaml``) on a throwaway
PostgreSQL database, with a real Redis, compute logs in moto's S3 and a tiny generated lake.
Only what differs between containers and one machine is set differently: service host names
(``127.0.0.1``), the database user and name, ``DAGSTER_HOME`` (a copy of the profile, so that
nothing is written into the checkout) and the lake/S3 locations. Then:

1. three signups pushed to ``signups`` are decided on ``decisions`` (signup sensor in the daemon,
   onboarding runs forked from the daemon's warm parent);
2. one batch partition (``pings_daily`` for one day) launched through the webserver's GraphQL
   (``launchRun``) runs through the queue and the ``near_assets`` code server to success;
3. the ``near_assets`` code server is restarted (a deploy of that location: SIGTERM, start the
   same command again): while it is down ``risk_assets``' ``signup_sensor`` keeps ticking and a
   signup pushed meanwhile is decided; afterwards the webserver serves the new server.

Every process is stopped at the end (process groups, SIGTERM then SIGKILL), the database is
dropped and the services' ports are checked closed, whether the test passed or not. Skips when
PostgreSQL on 127.0.0.1:5432 does not answer. Not tested here: the image and compose itself
(no Docker engine on the build machine).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from tests.daemon_helpers import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROD = REPO / "deploy" / "production"
BIN = Path(sys.executable).parent
DAY = "2024-01-01"
PG = {"host": "127.0.0.1", "port": 5432}
SERVICES = ("near-code", "risk-code", "webserver", "daemon")
DECISION_TIMEOUT_S = 120.0


def compose() -> dict:
    return yaml.safe_load((PROD / "compose.yaml").read_text())


def service_ports(spec: dict) -> dict[str, int]:
    """The port each platform service listens on, from its compose command (``-p N``)."""
    out = {}
    for name in SERVICES:
        cmd = spec["services"][name]["command"]
        if "-p" in cmd:
            out[name] = int(cmd[cmd.index("-p") + 1])
    return out


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pg_admin():
    """A connection to the ``postgres`` database on 127.0.0.1:5432, or skip with the reason."""
    import psycopg2

    try:
        conn = psycopg2.connect(
            **PG,
            user=os.environ.get("DAGSTER_PG_USER", "postgres"),
            password=os.environ.get("DAGSTER_PG_PASSWORD", ""),
            dbname="postgres",
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL on 127.0.0.1:5432 does not answer ({str(exc).strip()[:200]}): "
            "the topology test runs the production profile on a real PostgreSQL"
        )
    conn.autocommit = True
    return conn


def graphql(port: int, query: str, variables: dict | None = None, timeout_s: float = 30) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload = json.loads(response.read())
    assert not payload.get("errors"), payload["errors"]
    return payload["data"]


LOCATIONS = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""
SENSOR = """
query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
  __typename ... on Sensor { id sensorState { status ticks(limit: 500) { timestamp status } } }
} }
"""
STOP_SENSOR = "mutation($id: String) { stopSensor(id: $id) { __typename } }"
RELOAD = """
mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
  __typename ... on WorkspaceLocationEntry { loadStatus } } }
"""
LAUNCH = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
} }
"""
RUN = """
query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }
"""
RUNS = """
query { runsOrError { ... on Runs { results { runId jobName status tags { key value } } } } }
"""
WARM_TAG = "platform/run_worker_pid"  # set on runs forked from the daemon's warm parent
COMPUTE_LOG_DIR = Path("/tmp/dagster-compute-logs")  # the profile's compute_logs.local_dir


def sensor_selector(location: str, sensor: str) -> dict:
    return {
        "repositoryLocationName": location,
        "repositoryName": "__repository__",
        "sensorName": sensor,
    }


def make_signup(i: int) -> dict[str, str]:
    payload = {
        "business_name": f"Topology test {i}",
        "industry": "retail",
        "years_in_business": 4.0 + i,
        "annual_revenue": 250_000.0 + 1000 * i,
        "requested_amount": 20_000.0,
        "country": "US",
    }
    return {"user_id": f"topology-{i}", "payload": json.dumps(payload)}


def decided(client: redis.Redis, ids: set[str]) -> set[str]:
    return {f["signup_id"] for _, f in client.xrange("decisions")} & ids


class Topology:
    """The platform services as processes, each started with its compose command."""

    def __init__(self, spec: dict, env: dict[str, str], logs: Path) -> None:
        self.spec, self.env, self.logs = spec, env, logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = service_ports(spec)
        self.groups: set[int] = set()
        logs.mkdir(parents=True, exist_ok=True)

    def command(self, name: str) -> list[str]:
        return list(self.spec["services"][name]["command"])

    def start(self, name: str) -> subprocess.Popen:
        cmd = self.command(name)
        exe = BIN / cmd[0]  # the image's PATH starts with the venv's bin, as here
        log = (self.logs / f"{name}.log").open("a")
        proc = subprocess.Popen(
            [str(exe) if exe.exists() else cmd[0], *cmd[1:]],
            cwd=REPO,  # the image's WORKDIR (/app) is the checkout
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        self.groups.add(proc.pid)
        return proc

    def stop(self, name: str, timeout_s: float = 20.0) -> None:
        """SIGTERM to the service's process group (what ``docker stop`` sends), then SIGKILL."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone: whatever it left in its group goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text()[-3000:]
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail}")

    def leftovers(self) -> list[str]:
        out = []
        for pgid in self.groups:
            try:
                os.killpg(pgid, 0)
                out.append(f"process group {pgid}")
            except ProcessLookupError:
                pass
        out += [f"port {p}" for p in self.ports.values() if port_open(p)]
        return out

    def healthy(self, name: str) -> bool:
        """The compose healthcheck of a code server (``dagster api grpc-health-check``)."""
        self.alive(name)
        test = self.spec["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        exe = BIN / test[1]
        result = subprocess.run(
            [str(exe) if exe.exists() else test[1], *test[2:]],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            timeout=60,
        )
        return result.returncode == 0

    def wait_code_server(self, name: str) -> None:
        wait_for(f"{name} to be healthy", lambda: self.healthy(name), 150, 1.0)

    def loaded(self) -> bool:
        self.alive("webserver")
        try:
            entries = graphql(self.ports["webserver"], LOCATIONS)["workspaceOrError"]
        except OSError:
            return False
        entries = entries["locationEntries"]
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            return False
        errors = [
            (e["name"], e["locationOrLoadError"].get("message", "")[:500])
            for e in entries
            if e["locationOrLoadError"]["__typename"] == "PythonError"
        ]
        for name, _ in errors:  # a location the webserver saw before its server was up
            graphql(self.ports["webserver"], RELOAD, {"name": name})
        return not errors

    def runs(self) -> list[dict]:
        return graphql(self.ports["webserver"], RUNS)["runsOrError"]["results"]

    def ticks(self, location: str, sensor: str) -> list[float]:
        data = graphql(self.ports["webserver"], SENSOR, {"s": sensor_selector(location, sensor)})
        state = data["sensorOrError"]["sensorState"]
        return sorted(t["timestamp"] for t in state["ticks"])


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    env = {**os.environ, "LAKE_ROOT": str(root)}
    env.pop("LAKE_BUCKET", None)
    synth = BIN / "near-synth"
    subprocess.run(
        [
            str(synth),
            "--devices",
            "3",
            "--days",
            "1",
            "--start",
            DAY,
            "--campaigns",
            "1",
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return root


@pytest.fixture
def topology(
    tmp_path: Path, lake: Path, redis_url: str, moto_endpoint: str
) -> Iterator[tuple[Topology, redis.Redis]]:
    import boto3

    admin = pg_admin()
    spec = compose()
    ports = service_ports(spec)
    busy = [f"{name}:{port}" for name, port in ports.items() if port_open(port)]
    if busy:
        pytest.skip(f"the production ports are taken on this machine: {', '.join(busy)}")
    db = f"topology_{uuid.uuid4().hex[:10]}"
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROD / "dagster.yaml", home / "dagster.yaml")
    bucket = f"compute-logs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)

    platform_env = {k: str(v) for k, v in spec["x-platform"]["environment"].items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "LAKE_"))}
    env.update(platform_env)
    env.update(
        {
            # one machine instead of one container per service
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": PG["host"],
            "DAGSTER_PG_PORT": str(PG["port"]),
            "DAGSTER_PG_USER": admin.info.user,
            "DAGSTER_PG_PASSWORD": os.environ.get("DAGSTER_PG_PASSWORD", ""),
            "DAGSTER_PG_DB": db,
            "NEAR_CODE_SERVER_HOST": "127.0.0.1",
            "RISK_CODE_SERVER_HOST": "127.0.0.1",
            # what platform.env holds in production
            "REDIS_URL": redis_url,
            "LAKE_ROOT": str(lake),
            "LAKE_START_DATE": DAY,
            "DAGSTER_COMPUTE_LOG_BUCKET": bucket,
            "DAGSTER_COMPUTE_LOG_PREFIX": "platform/compute",
            "AWS_ENDPOINT_URL_S3": moto_endpoint,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    buffer_before = set(COMPUTE_LOG_DIR.iterdir()) if COMPUTE_LOG_DIR.is_dir() else set()
    top = Topology(spec, env, tmp_path / "logs")
    try:
        yield top, client
    finally:
        top.stop_all()
        client.flushdb()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        left = wait_for_none(top.leftovers, 20)
        # the local buffer of the S3 compute logs (the profile's local_dir): the empty folders
        # this test's runs and sensor ticks left there
        new = set(COMPUTE_LOG_DIR.iterdir()) - buffer_before if COMPUTE_LOG_DIR.is_dir() else ()
        for folder in new:
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
        assert not left, f"left running after the test: {left}"
        # state lives in PostgreSQL, Redis and S3: the image's read-only /app is enough
        assert written == ["dagster.yaml"], f"written into DAGSTER_HOME: {written}"


def wait_for_none(fn, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := fn()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def gaps(ts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ts)]


def compute_log_keys(top: Topology, endpoint: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    listing = s3.list_objects_v2(Bucket=top.env["DAGSTER_COMPUTE_LOG_BUCKET"])
    return [o["Key"] for o in listing.get("Contents", [])]


def run_batch_partition(top: Topology, s3_keys) -> str:
    """``pings_daily`` for ``DAY``, launched with the webserver's GraphQL, waited to success."""
    web = top.ports["webserver"]
    params = {
        "selector": {
            "repositoryLocationName": "near_assets",
            "repositoryName": "__repository__",
            "jobName": "pings_daily",
        },
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DAY}]},
    }
    launched = graphql(web, LAUNCH, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    def done() -> str | None:
        top.alive("daemon")
        status = graphql(web, RUN, {"id": run_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_for(f"batch run {run_id}", done, 150, 1.0) == "SUCCESS"
    # its stdout/stderr went to the compute-log bucket, where a webserver on any host reads them
    keys = s3_keys()
    assert any(run_id in k for k in keys), keys
    return run_id


def test_production_topology_decides_signups_runs_a_partition_and_survives_a_deploy(
    topology: tuple[Topology, redis.Redis], moto_endpoint: str
) -> None:
    top, client = topology
    t0 = time.monotonic()
    marks: dict[str, float] = {}
    web = top.ports["webserver"]

    # code servers first (compose: webserver and daemon depend on their health checks)
    top.start("near-code")
    top.start("risk-code")
    top.wait_code_server("near-code")
    top.wait_code_server("risk-code")
    marks["code servers healthy"] = time.monotonic() - t0
    top.start("webserver")
    wait_for("the webserver to load both locations", top.loaded, 150, 1.0)
    marks["webserver loaded"] = time.monotonic() - t0
    # the batch location's own sensors would start runs of their own on the generated lake:
    # stopped (as an operator would in the UI) before the daemon starts, so the batch run below
    # is the only one
    for sensor in ("raw_pings_sensor", "batch_automation"):
        data = graphql(web, SENSOR, {"s": sensor_selector("near_assets", sensor)})
        result = graphql(web, STOP_SENSOR, {"id": data["sensorOrError"]["id"]})
        assert result["stopSensor"]["__typename"] == "StopSensorMutationResult", result
    top.start("daemon")

    # 1. signups -> decisions
    ids = {client.xadd("signups", make_signup(i)) for i in range(3)}
    wait_for(
        "3 decisions",
        lambda: (top.alive("daemon"), decided(client, ids) == ids)[1],
        DECISION_TIMEOUT_S,
        0.5,
    )
    marks["3 signups decided"] = time.monotonic() - t0

    # 2. one batch partition through the webserver, the run queue and the near code server
    run_id = run_batch_partition(top, s3_keys=lambda: compute_log_keys(top, moto_endpoint))
    marks["batch partition succeeded"] = time.monotonic() - t0

    # 3. deploy the near_assets location: restart its code server alone
    before = top.ticks("risk_assets", "signup_sensor")
    down = time.time()
    top.stop("near-code")
    assert not port_open(top.ports["near-code"])
    during = client.xadd("signups", make_signup(99))

    def sensor_kept_ticking() -> bool:
        top.alive("daemon")
        late = [t for t in top.ticks("risk_assets", "signup_sensor") if t > down]
        return decided(client, {during}) == {during} and len(late) >= 2

    wait_for(
        "a decision and signup_sensor ticks while near_assets is down",
        sensor_kept_ticking,
        DECISION_TIMEOUT_S,
        0.5,
    )
    marks["signup decided during the deploy"] = time.monotonic() - t0
    top.start("near-code")
    top.wait_code_server("near-code")
    up = time.time()
    graphql(web, RELOAD, {"name": "near_assets"})
    wait_for("the webserver to serve the restarted near_assets", top.loaded, 150, 1.0)
    after_up = len([t for t in top.ticks("risk_assets", "signup_sensor") if t > up])
    wait_for(
        "signup_sensor ticks after the deploy",
        lambda: len([t for t in top.ticks("risk_assets", "signup_sensor") if t > up]) > after_up,
        60,
        1.0,
    )
    marks["near_assets back, sensor still ticking"] = time.monotonic() - t0
    # the daemon launches through the new server: the same partition again
    again = run_batch_partition(top, s3_keys=lambda: compute_log_keys(top, moto_endpoint))
    assert again != run_id
    marks["batch partition succeeded on the new near_assets server"] = time.monotonic() - t0

    ticks = top.ticks("risk_assets", "signup_sensor")
    window = [t for t in ticks if down <= t <= up]
    prior = [t for t in before if t > before[-1] - (up - down)] if before else []
    print(f"\nload average: {os.getloadavg()}")
    for label, at in marks.items():
        print(f"  {at:6.1f} s  {label}")
    print(
        f"signup_sensor ticks: {len(before)} before the deploy; {len(window)} in the "
        f"{up - down:.1f} s near_assets was down (max gap {max(gaps(window), default=0):.1f} s); "
        f"same span before it: {len(prior)} (max gap {max(gaps(prior), default=0):.1f} s); "
        f"median gap overall {statistics.median(gaps(ticks)):.1f} s"
    )
    # a decision is published by the run's last step: let the runs end before judging them
    terminal = {"SUCCESS", "FAILURE", "CANCELED"}
    runs = wait_for(
        "every run to end",
        lambda: (lambda rs: rs if all(r["status"] in terminal for r in rs) else None)(top.runs()),
        90,
        1.0,
    )
    onboarding = [
        r for r in runs if {"key": "dagster/sensor_name", "value": "signup_sensor"} in r["tags"]
    ]
    warm = [r for r in onboarding if any(t["key"] == WARM_TAG for t in r["tags"])]
    print(
        f"runs: {len(onboarding)} onboarding ({len(warm)} forked from the daemon's warm parent), "
        f"{len(runs) - len(onboarding)} other; statuses "
        f"{sorted({r['status'] for r in runs})}"
    )
    assert all(r["status"] == "SUCCESS" for r in runs), runs
    all_ids = ids | {during}
    per_signup = [f["signup_id"] for _, f in client.xrange("decisions")]
    assert sorted(per_signup) == sorted(all_ids), "a signup lost or decided twice"
    assert len(window) >= 2
    for name in SERVICES:
        top.alive(name)
