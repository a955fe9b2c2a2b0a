"""The chain's per-device steps on both engines: the same rows and figures, the engine that ran."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from near_assets import mobility
from near_assets.science.stays import to_utc
from near_assets.spark_jobs import apply_by_device
from near_assets.synth import generate
from publishing import journal
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource
from tests.conftest import free_port, wait_for_port

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM"),
]

START, DAYS = "2024-03-04", 2
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
RANGE = {
    "dagster/asset_partition_range_start": DATES[0],
    "dagster/asset_partition_range_end": DATES[-1],
}
# figures that describe the run, not the rows
RUN_FIGURES = {"seconds", "engine", "pings_per_s", "version", "production_holds"}


def row_figures(value: object) -> object:
    """``value`` without the run figures, at any depth."""
    if isinstance(value, dict):
        return {
            k: row_figures(v)
            for k, v in value.items()
            if k not in RUN_FIGURES and not k.startswith("spark_")
        }
    return value


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


@pytest.fixture(scope="module")
def stays_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated lake with clean pings and published stay points (pandas)."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("chain") / "lake"))
    generate(lake, seed=5, devices=120, start=START, days=DAYS, dirt=False, progress=False)
    for day in DATES:
        raw = lake.read_parquet(f"raw/pings/date={day}")
        raw["ts"] = to_utc(raw["ts"])
        lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
    assert dg.materialize([mobility.stay_points], resources=resources(lake), tags=RANGE).success
    return Path(lake.root)


def figures(result: dg.ExecuteInProcessResult, key: str, root: str) -> tuple[str, dict]:
    """(engine that ran, row figures of each day) of an asset's materializations (the lake's
    root in paths replaced by ``<lake>``)."""
    events = result.asset_materializations_for_node(key)
    engines = {m.metadata["engine"].value for m in events}
    assert len(engines) == 1
    by_day = row_figures({m.partition: {k: v.value for k, v in m.metadata.items()} for m in events})
    text = json.dumps(by_day, sort_keys=True, default=str).replace(root, "<lake>")
    return engines.pop(), json.loads(text)


def canonical(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = df.sort_values(keys).reset_index(drop=True)
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype):
            out[col] = out[col].dt.as_unit("us")
    return out


CHAIN = [mobility.stay_points, mobility.home_ping_hours, mobility.visits, mobility.home_location]
CHAIN_KEYS = {
    "stay_points": ["device_id", "start_ts"],
    "visits": ["device_id", "start_ts", "poi_id"],
    "home_location": ["device_id"],
}


def engine_config(engine: str) -> dict:
    return {"ops": {a.op.name: {"config": {"engine": engine}} for a in CHAIN}}


def checks_of(result: dg.ExecuteInProcessResult) -> dict:
    """(asset, check) -> (passed, description, figures) of every check evaluation."""
    out = {}
    for ev in result.get_asset_check_evaluations():
        meta = {k: v.value for k, v in ev.metadata.items()}
        out[(ev.asset_key.to_user_string(), ev.check_name)] = (ev.passed, ev.description, meta)
    return out


@pytest.fixture(scope="module")
def chain(stays_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The mobility chain (stays, ping hours, visits, homes) over both days on each engine,
    from the same clean pings (one Spark job per asset)."""
    out = {}
    for engine in ("pandas", "spark"):
        root = tmp_path_factory.mktemp(f"chain-{engine}") / "lake"
        shutil.copytree(stays_lake, root)
        lake = LakeResource(root=str(root))
        for table in ("stay_points", "visits"):  # the fixture published pandas stays: start over
            lake.delete(f"curated/{table}")
            lake.delete(f"backup/{table}")
        result = dg.materialize(
            CHAIN, resources=resources(lake), tags=RANGE, run_config=engine_config(engine)
        )
        assert result.success
        out[engine] = (lake, result)
    return out


def test_the_chain_gives_the_same_rows_checks_and_figures_on_both_engines(chain: dict):
    (pandas_lake, pandas_run), (spark_lake, spark_run) = chain["pandas"], chain["spark"]
    for key in ("stay_points", "visits", "home_location", "home_ping_hours"):
        ran_pandas, fig_pandas = figures(pandas_run, key, pandas_lake.root)
        ran_spark, fig_spark = figures(spark_run, key, spark_lake.root)
        assert (ran_pandas, ran_spark) == ("pandas", "spark"), key
        assert fig_pandas == fig_spark, key
    assert checks_of(pandas_run) == checks_of(spark_run)
    assert len(checks_of(spark_run)) == 11
    for table in CHAIN_KEYS:
        for day in DATES:
            folder = f"curated/{table}/date={day}"
            a, b = pandas_lake.read_parquet(folder), spark_lake.read_parquet(folder)
            assert len(a) > 0, (table, day)
            # same rows in the same order and dtypes (tables are written sorted)
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-9)
            # same content digest in the version stamp (Spark's writer digests what it writes)
            stamps = [journal.read_stamp(lk, folder) for lk in (pandas_lake, spark_lake)]
            if table != "visits":  # float sums of visit distances may differ in the last ulp
                assert stamps[0]["content"] == stamps[1]["content"], (table, day)
    for day in DATES:
        folder = f"work/home_ping_hours/date={day}"
        a, b = pandas_lake.read_parquet(folder), spark_lake.read_parquet(folder)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-9)


def test_ping_hours_run_as_spark_sql_without_python_workers(chain: dict):
    """``home_ping_hours`` on Spark is its relational twin (same rows: the test above)."""
    from near_assets.science.home import HomeParams
    from near_assets.spark_jobs import relational

    assert HomeParams.cell_m == relational.CELL_M
    assert apply_by_device.TWINS is relational.TWINS
    _, result = chain["spark"]
    (event,) = result.asset_materializations_for_node("home_ping_hours")[-1:]
    assert event.metadata["spark_relational"].value is True
    assert event.metadata["spark_buckets"].value == 0
    (stays,) = result.asset_materializations_for_node("stay_points")[-1:]
    assert stays.metadata["spark_relational"].value is False


def test_spark_publishes_the_object_it_wrote_without_the_run_process_rewriting_it(chain: dict):
    lake, result = chain["spark"]
    for table in CHAIN_KEYS:
        events = {m.partition: m.metadata for m in result.asset_materializations_for_node(table)}
        for day in DATES:
            folder = f"curated/{table}/date={day}"
            stamp = journal.read_stamp(lake, folder)
            assert stamp["run_id"] == result.run_id
            assert stamp["version"] == events[day]["version"].value
            meta = pq.read_metadata(lake.uri(f"{folder}/part-0.parquet")).metadata
            # the run process writes through pandas (schema metadata b"pandas"); the job does not
            assert b"pandas" not in meta and b"wap" in meta
            assert not lake.parquet_files(f"staging/{table}/date={day}")
    assert not lake.list("work/_engine")


def test_a_failed_audit_from_spark_figures_blocks_the_publish_and_keeps_production(
    chain: dict, tmp_path: Path
):
    source, _ = chain["spark"]
    lake = LakeResource(root=str(tmp_path / "lake"))
    shutil.copytree(source.root, lake.root)
    day = DATES[1]
    production = lake.read_bytes(f"curated/visits/date={day}/part-0.parquet")
    # four earlier Mondays/Tuesdays... with ten times the visits: the day's count is far below
    big = pd.concat([lake.read_parquet(f"curated/visits/date={day}")] * 10, ignore_index=True)
    for weeks in (1, 2, 3):
        earlier = str((pd.Timestamp(day) - pd.Timedelta(weeks=weeks)).date())
        lake.write_parquet(big, f"curated/visits/date={earlier}")
    result = dg.materialize(
        [mobility.visits],
        resources=resources(lake),
        partition_key=day,
        run_config={"ops": {"visits": {"config": {"engine": "spark"}}}},
        raise_on_error=False,
    )
    assert not result.success
    checks = checks_of(result)
    passed, description, meta = checks[("visits", "row_count_band")]
    assert passed is False and "outside the block band" in description
    assert meta["baseline"] == "same_weekday"
    assert checks[("visits", "dwell_positive")][0] is True
    assert lake.read_bytes(f"curated/visits/date={day}/part-0.parquet") == production
    assert not lake.parquet_files(f"staging/visits/date={day}")  # the job's stage is discarded


def test_spark_writer_digest_matches_the_publishing_digest():
    frame = pd.DataFrame(
        {
            "device_id": ["a", "b", "c"],
            "ts": pd.to_datetime([1, 2, 3], unit="s", utc=True),
            "n": np.array([1, 2, 3], dtype=np.int32),
        }
    )
    split = apply_by_device.ContentDigest()
    split.update(frame.iloc[:1])
    split.update(frame.iloc[1:])
    assert split.hexdigest() == journal.content_digest(frame)


@pytest.fixture(scope="module")
def small_part_moto() -> Iterator[str]:
    """A moto S3 server that accepts multipart parts of 1 KiB (S3's minimum is 5 MiB)."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "S3_UPLOAD_PART_MIN_SIZE": "1024"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_on_s3_the_job_stages_the_day_and_the_publish_copies_it_in_parts(
    stays_lake: Path, small_part_moto: str
):
    import boto3

    moto_endpoint = small_part_moto

    pandas_lake = LakeResource(root=str(stays_lake))  # stays published by the pandas engine
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    # tiny multipart thresholds: the publish copies the Spark-written object in parts
    lake = LakeResource(
        bucket=bucket,
        prefix="platform",
        endpoint_url=moto_endpoint,
        copy_threshold=4 * 1024,
        copy_part_size=2 * 1024,
    )
    day = DATES[0]
    for key in pandas_lake.parquet_files(f"work/clean_pings/date={day}"):
        lake.write_bytes(key, pandas_lake.read_bytes(key))
    result = dg.materialize(
        [mobility.stay_points],
        resources=resources(lake),
        partition_key=day,
        run_config={"ops": {"stay_points": {"config": {"engine": "spark"}}}},
    )
    assert result.success
    folder = f"curated/stay_points/date={day}"
    assert journal.read_stamp(lake, folder)["run_id"] == result.run_id
    assert journal.fingerprint(lake, folder)["size"] > 4 * 1024
    pd.testing.assert_frame_equal(
        lake.read_parquet(folder), pandas_lake.read_parquet(folder), rtol=0, atol=1e-9
    )
    assert not lake.parquet_files(f"staging/stay_points/date={day}")
