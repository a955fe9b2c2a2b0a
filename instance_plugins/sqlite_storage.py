"""``TunedSqliteStorage``: Dagster's local SQLite storage, with cheaper commits and new runs.

Dagster's SQLite storage (the default of a local ``DAGSTER_HOME``) runs in WAL mode with SQLite's
default ``synchronous=FULL``: every committed event (about 30 per onboarding run, each written to
the run's database and, for asset events, to the index) waits for an fsync of the WAL, about
5 ms each on these machines and much more when the disk is shared. ``synchronous=NORMAL`` is
SQLite's documented setting for WAL mode: a commit is durable against a crash of any process,
and only the last transactions before a power loss or OS crash can be lost (the database is
never corrupted). That trade is right for a local development or single-host instance; a
production instance uses PostgreSQL (``deploy/production/dagster.yaml``) and is unaffected.

Each run's events live in their own SQLite file (``history/runs/<run id>.db``). Dagster creates
it at the run's first event by creating the tables and stamping the alembic revision: about
0.5 s of CPU on these machines (more under load), on the path from a sensor tick to the run's
start, and each process checks the revision again at its first connection to the file.
:class:`TunedSqliteEventLogStorage` instead copies an empty, fully initialized shard made once
per instance (``history/runs/.shard-template/<dagster version>.sqlite``, in WAL mode) to the new
run's file (atomically: a hard link of a private copy, so a concurrent creator's file wins) and
trusts a run file that exists. The index shard is initialized by Dagster as before.

A run of several partitions (an onboarding batch: a range of ``applicants``) is planned by
Dagster with one ``ASSET_MATERIALIZATION_PLANNED`` event per asset *and partition*, each its own
write: 600 writes before a 100-applicant run can start. This storage reports
``supports_partition_subset_in_asset_materialization_planned_events`` (what Dagster's
``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=1`` does for other storages): one event per
asset carrying the run's partition subset. Dagster's documented trade-off: the partitions of a
failed multi-partition run are not marked *failed* in the UI (the run is, and an onboarding
run's applicants are sent to review by ``onboarding_failure_sensor`` either way).

Importing this module (any process that opens an instance configured with this class: the
webserver, the daemon, code servers, run workers) sets ``synchronous=NORMAL`` on every new
SQLite connection that SQLAlchemy opens in that process. Configure in ``dagster.yaml``::

    storage:
      custom:
        module: instance_plugins.sqlite_storage
        class: TunedSqliteStorage
        config:
          base_dir: {env: DAGSTER_HOME}
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from typing import Any

from dagster import __version__ as dagster_version
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._utils import mkdir_p
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

SYNCHRONOUS = "NORMAL"


@event.listens_for(Engine, "connect")
def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        finally:
            cursor.close()


class TunedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's per-run SQLite event log; a new run's file is a copy of a template (docstring)."""

    _template_lock = threading.Lock()

    def _template(self) -> str:
        """The initialized empty shard to copy (made once per instance and Dagster version)."""
        folder = os.path.join(self._base_dir, ".shard-template")
        path = os.path.join(folder, f"{dagster_version}.sqlite")
        if os.path.exists(path):
            return path
        with self._template_lock:
            if os.path.exists(path):
                return path
            mkdir_p(folder)
            scratch = os.path.join(folder, f"build-{os.getpid()}-{threading.get_ident()}.sqlite")
            engine = create_engine(f"sqlite:///{scratch}", poolclass=NullPool)
            try:
                super()._initdb(engine)
                with engine.connect() as conn:  # fold the WAL into the file before copying it
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                engine.dispose()
            for suffix in ("-wal", "-shm"):
                if os.path.exists(scratch + suffix):
                    os.remove(scratch + suffix)
            os.replace(scratch, path)
        return path

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        return True

    def prepare(self) -> None:
        """Make the template now (the daemon calls this at start), not at the first run."""
        self._template()

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        path = engine.url.database
        if (
            for_index_shard
            or not path
            or os.path.splitext(os.path.basename(path))[0] == INDEX_SHARD_NAME
        ):
            super()._initdb(engine, for_index_shard=for_index_shard)
            return
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return  # created complete (by a copy, or by Dagster's own init)
        private = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"
        shutil.copyfile(self._template(), private)
        try:
            os.link(private, path)  # never replaces a file another process created meanwhile
        except FileExistsError:
            pass
        finally:
            os.remove(private)


class TunedSqliteStorage(DagsterSqliteStorage):
    """:class:`~dagster._core.storage.sqlite_storage.DagsterSqliteStorage` with commits that do
    not wait for an fsync and runs whose event files are copied from a template (docstring)."""

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = TunedSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)
