"""Device buckets in ``apply_by_device``: one pandas call per bucket of many devices gives exactly
what one call per device gives, and what the in-process engine gives (real local Spark)."""

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from near_assets.science.home import homes_by_day
from near_assets.science.stays import detect_stays, to_utc
from near_assets.spark_jobs import apply_by_device
from near_assets.synth import generate
from resources.lake import LakeResource
from resources.spark import SparkResource

START, DAYS = "2024-03-04", ["2024-03-04", "2024-03-05"]
STAYS = "near_assets.science.stays:detect_stays"
HOMES = "near_assets.science.home:homes_by_day"
HOME_PARAMS = {"as_of": DAYS, "window_days": 14, "timezone": "America/New_York"}


def test_bucket_count_auto_fixed_and_per_group() -> None:
    count = apply_by_device.bucket_count
    assert count("auto", ["device_id"], rows=1_000, parallelism=2) == 8
    assert count("auto", ["device_id"], rows=30_000_000, parallelism=2) == 30  # <= 1 M rows each
    assert count("5", ["device_id"], rows=10, parallelism=2) == 5
    assert count(0, ["device_id"], rows=10, parallelism=2) == 0
    # a function grouping by device only must not receive several dates of a device at once
    assert count("auto", ["device_id", "date"], rows=10, parallelism=2) == 0
    with pytest.raises(ValueError):
        count("-1", ["device_id"], rows=10, parallelism=2)


def test_resource_passes_buckets_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    args = SparkResource.job_arguments(STAYS, ["/in"], "/out")
    assert "--buckets" not in args  # the job's default: auto
    assert SparkResource.job_arguments(STAYS, ["/in"], "/out", buckets=0)[-2:] == ["--buckets", "0"]
    monkeypatch.setenv("SPARK_DEVICE_BUCKETS", "12")
    assert SparkResource.from_env().device_buckets == 12


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    """Two days of 60 devices' clean pings (a few thousand rows), as ``clean_pings`` writes them."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("buckets") / "lake"))
    generate(lake, seed=5, devices=60, start=START, days=len(DAYS), dirt=False, progress=False)
    for day in DAYS:
        raw = lake.read_parquet(f"raw/pings/date={day}")
        raw["ts"] = to_utc(raw["ts"])
        lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
    return lake


def run_job(spark, function: str, inputs: list[str], out: Path, params: dict, buckets) -> tuple:
    args = argparse.Namespace(
        function=function,
        input=inputs,
        output=str(out),
        params=json.dumps(params),
        group_by="device_id",
        buckets=str(buckets),
        master=None,
        spark_conf="{}",
    )
    summary = apply_by_device.run(args, lambda _: None, spark=spark)
    return pd.read_parquet(out), summary


def canonical(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = df.sort_values(keys, ignore_index=True)
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
            out[col]
        ):
            out[col] = pd.to_datetime(out[col], utc=True).dt.as_unit("us")
        elif out[col].dtype == object or isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(str)
    return out


def assert_same(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    assert len(a) > 0
    pd.testing.assert_frame_equal(
        canonical(a, keys), canonical(b, keys), check_dtype=False, check_exact=True
    )


@pytest.mark.spark
@pytest.mark.slow  # four local Spark jobs: ~15 s on an idle machine, minutes under load
def test_bucketed_equals_per_device_equals_in_process(spark, lake: LakeResource, tmp_path: Path):
    pings = [lake.uri(f"work/clean_pings/date={d}") for d in DAYS]
    in_process = detect_stays(
        pd.concat([lake.read_parquet(f"work/clean_pings/date={d}") for d in DAYS])
    )
    stays = {}
    for buckets in (0, "auto"):  # auto: 8 buckets locally, ~8 devices in each call
        stays[buckets], summary = run_job(
            spark, STAYS, pings, tmp_path / f"stays-{buckets}", {}, buckets
        )
        assert (
            summary["buckets"] == {0: 0, "auto": 4 * spark.sparkContext.defaultParallelism}[buckets]
        )
        assert list(stays[buckets].columns) == list(in_process.columns)  # no bucket column
        assert_same(stays[buckets], in_process, ["device_id", "start_ts"])

    stays_key = lake.write_parquet(in_process, "work/stays_all")
    homes_in_process = homes_by_day(in_process, **HOME_PARAMS)
    assert homes_in_process["device_id"].nunique() > 20
    for buckets in (0, 3):  # 3 buckets: ~20 devices in each call
        homes, _ = run_job(
            spark, HOMES, [lake.uri(stays_key)], tmp_path / f"homes-{buckets}", HOME_PARAMS, buckets
        )
        assert_same(homes, homes_in_process, ["date", "device_id"])
