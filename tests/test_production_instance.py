"""The production profile (deploy/production/dagster.yaml) against a real PostgreSQL.

The server is the one on 127.0.0.1:5432 when it answers and accepts us (user from
``DAGSTER_PG_USER``/``PGUSER``, default ``postgres``), otherwise one this module starts with
``initdb``/``pg_ctl`` on a free port; without either the tests are skipped. Each test gets a
fresh database that is dropped afterwards.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.conftest import free_port

PROFILE = Path(__file__).resolve().parents[1] / "deploy" / "production" / "dagster.yaml"
PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD")

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is needed to manage test databases")


def _answers(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _connect(server: dict[str, str], dbname: str = "postgres"):
    conn = psycopg2.connect(
        host=server["host"],
        port=int(server["port"]),
        user=server["user"],
        password=server["password"],
        dbname=dbname,
        connect_timeout=5,
    )
    conn.autocommit = True
    return conn


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_postgres_user() -> list[str]:
    """initdb/postgres refuse to run as root: run them as the ``postgres`` account then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root without a 'postgres' account: cannot start PostgreSQL")
    runuser = shutil.which("runuser")
    if not runuser:
        pytest.skip("running as root without 'runuser': cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def _existing_server() -> dict[str, str] | None:
    server = {
        "host": "127.0.0.1",
        "port": "5432",
        "user": os.environ.get("DAGSTER_PG_USER") or os.environ.get("PGUSER") or "postgres",
        "password": os.environ.get("DAGSTER_PG_PASSWORD") or os.environ.get("PGPASSWORD") or "",
    }
    if not _answers("127.0.0.1", 5432):
        return None
    try:
        _connect(server).close()
    except psycopg2.OperationalError:
        return None
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, str]]:
    existing = _existing_server()
    if existing:
        yield existing
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "no PostgreSQL: 127.0.0.1:5432 does not answer (or refuses us) and initdb/pg_ctl "
            "are not installed (apt-get install postgresql)"
        )
    prefix = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="platform-pg-"))
    if prefix:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield {"host": "127.0.0.1", "port": str(port), "user": "postgres", "password": ""}
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def production_home(
    postgres_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A DAGSTER_HOME holding the production profile, pointed at a fresh database."""
    db_name = f"dagster_test_{uuid.uuid4().hex[:12]}"
    admin = _connect(postgres_server)
    admin.cursor().execute(f'CREATE DATABASE "{db_name}"')
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROFILE, home / "dagster.yaml")
    for name, key in zip(PG_ENV, ("host", "port", "user", "password"), strict=True):
        monkeypatch.setenv(name, postgres_server[key])
    monkeypatch.setenv("DAGSTER_PG_DB", db_name)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    try:
        yield home
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()


daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=0)


@dg.asset(partitions_def=daily)
def tiny_daily(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """A tiny daily-partitioned asset: one row per partition."""
    return dg.MaterializeResult(metadata={"rows": 1, "day": context.partition_key})


def test_profile_reads_every_database_setting_from_the_environment():
    storage = yaml.safe_load(PROFILE.read_text())["storage"]["postgres"]["postgres_db"]
    assert {k: v for k, v in storage.items() if k not in ("params", "scheme")} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }


def test_batch_lane_can_never_take_every_run_slot():
    config = yaml.safe_load(PROFILE.read_text())["run_coordinator"]["config"]
    limits = {
        item.get("value"): item["limit"]
        for item in config["tag_concurrency_limits"]
        if item["key"] == "platform/lane"
    }
    assert limits["batch"] < config["max_concurrent_runs"]
    assert limits["onboarding"] >= config["max_concurrent_runs"] - limits["batch"]


def test_production_instance_has_monitoring_retries_retention_and_no_telemetry(
    production_home: Path,
):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.event_log_storage, SqlEventLogStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 300
        assert instance.run_monitoring_max_runtime_seconds == 21600
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert not instance.telemetry_enabled
        retention = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        assert retention[TickStatus.SKIPPED] == 1


def test_partitioned_materialization_round_trips_through_postgres(production_home: Path):
    with dg.DagsterInstance.get() as instance:
        for day in ("2024-01-01", "2024-01-02"):
            result = dg.materialize([tiny_daily], instance=instance, partition_key=day)
            assert result.success

        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=tiny_daily.key), limit=10
        ).records
        assert sorted(r.partition_key for r in records) == ["2024-01-01", "2024-01-02"]

        latest = instance.get_latest_materialization_event(tiny_daily.key)
        assert latest is not None
        assert latest.asset_materialization.partition == "2024-01-02"
        assert latest.asset_materialization.metadata["day"].value == "2024-01-02"

    # a second process reading the same database sees the same records
    with dg.DagsterInstance.get() as reader:
        assert reader.get_materialized_partitions(tiny_daily.key) == {"2024-01-01", "2024-01-02"}
