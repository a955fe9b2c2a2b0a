"""``TunedSqliteStorage`` (the repo's local instance): the same files and events as Dagster's
SQLite storage, commits without an fsync, and new run files copied from one template."""

import shutil
import sqlite3
import threading
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@dg.asset
def one() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"n": 1})


people = dg.DynamicPartitionsDefinition(name="people")


@dg.asset(partitions_def=people, backfill_policy=dg.BackfillPolicy.single_run())
def each(context: dg.AssetExecutionContext) -> None:
    assert len(context.partition_keys) == 5


def test_runs_events_and_assets_as_with_dagsters_sqlite_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = yaml.safe_load((REPO / "dagster.yaml").read_text())["storage"]
    assert storage["custom"]["class"] == "TunedSqliteStorage"
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # base_dir: {env: DAGSTER_HOME}
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        from instance_plugins.sqlite_storage import TunedSqliteEventLogStorage

        assert isinstance(instance.event_log_storage, TunedSqliteEventLogStorage)
        runs = [dg.materialize([one], instance=instance).run_id for _ in range(3)]
        assert all(instance.get_run_by_id(r).is_success for r in runs)
        assert {r.run_id for r in instance.get_runs()} == set(runs)
        record = instance.get_latest_materialization_event(dg.AssetKey("one"))
        assert record is not None and record.run_id == runs[-1]
        folder = tmp_path / "history" / "runs"
        assert sorted(p.stem for p in folder.glob("*.db")) == sorted([*runs, "index"])
        assert [p.suffix for p in (folder / ".shard-template").iterdir()] == [".sqlite"]
        with sqlite3.connect(folder / f"{runs[0]}.db") as conn:  # a copy: stamped, WAL mode
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
        with instance.event_log_storage.run_connection(runs[0]) as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL

        # a run of 5 partitions is planned with one event carrying the subset, not 5 events
        keys = [f"p{i}" for i in range(5)]
        instance.add_dynamic_partitions("people", keys)
        job = dg.Definitions(assets=[each]).resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            },
        )
        planned = instance.get_records_for_run(
            result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        ).records
        assert len(planned) == 1
        data = planned[0].event_log_entry.dagster_event.event_specific_data
        assert sorted(data.partitions_subset.get_partition_keys()) == keys
        assert instance.get_materialized_partitions(dg.AssetKey("each")) == set(keys)


def test_processes_creating_the_same_run_file_at_once_keep_every_event(tmp_path: Path) -> None:
    from dagster._core.events.log import EventLogEntry

    from instance_plugins.sqlite_storage import TunedSqliteEventLogStorage

    stores = [TunedSqliteEventLogStorage(str(tmp_path)) for _ in range(4)]
    run_id = str(uuid.uuid4())

    def write(store: TunedSqliteEventLogStorage, i: int) -> None:
        store.store_event(
            EventLogEntry(
                error_info=None, level=20, user_message=f"m{i}", run_id=run_id, timestamp=1.0 + i
            )
        )

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = {e.user_message for e in stores[0].get_logs_for_run(run_id)}
    assert messages == {"m0", "m1", "m2", "m3"}
    assert not list(tmp_path.glob("*.tmp"))
