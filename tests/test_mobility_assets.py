"""Mobility assets on a small generated lake: materialize, publish, measure against truth."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets import mobility, profiles
from near_assets.engine import default_engine
from near_assets.evaluation.mobility import checks as accuracy_checks
from near_assets.evaluation.mobility import stay_points_accuracy
from near_assets.science import accuracy, home
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from publishing.tables import utc_days
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

START, DAYS = "2024-03-04", 3
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
ASSETS = [
    mobility.stay_points,
    mobility.visits,
    mobility.home_ping_hours,
    mobility.home_location,
    profiles.demographics,
    profiles.brand_affinity,
]


def write_clean_pings(lake: LakeResource, day: str) -> None:
    """Stand-in for ``clean_pings`` (its own module is tested elsewhere): typed raw pings."""
    raw = lake.read_parquet(f"raw/pings/date={day}")
    raw["ts"] = to_utc(raw["ts"])
    lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = LakeResource(root=str(tmp_path_factory.mktemp("generated") / "lake"))
    generate(lake, seed=3, devices=150, start=START, days=DAYS, dirt=False, progress=False)
    for day in DATES:
        write_clean_pings(lake, day)
    return Path(lake.root)


@pytest.fixture
def mobility_lake(generated: Path, tmp_lake: LakeResource) -> LakeResource:
    shutil.copytree(generated, tmp_lake.root)
    return tmp_lake


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


def materialize_range(
    lake: LakeResource, first: str, last: str, **kwargs
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ASSETS, *accuracy_checks],
        resources=resources(lake),
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        **kwargs,
    )


def materialization(result: dg.ExecuteInProcessResult, key: str) -> dict:
    events = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in events[-1].metadata.items()}


def check_metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    (evaluation,) = [c for c in result.get_asset_check_evaluations() if c.check_name == name]
    return {k: v.value for k, v in evaluation.metadata.items()}


def daily_job_run(lake: LakeResource, day: str) -> dg.ExecuteInProcessResult:
    """One day through the location's asset job, accuracy checks included (as with truth/)."""
    defs = dg.Definitions(
        assets=ASSETS,
        asset_checks=accuracy_checks,
        jobs=[mobility.mobility_job],
        resources=resources(lake),
    )
    return defs.resolve_job_def(mobility.mobility_job.name).execute_in_process(partition_key=day)


def test_default_engine_comes_from_the_environment_and_is_validated(monkeypatch):
    monkeypatch.setenv("NEAR_ENGINE", "spark")
    assert default_engine() == "spark"
    monkeypatch.setenv("NEAR_ENGINE", "dask")
    with pytest.raises(ValueError, match="NEAR_ENGINE must be one of pandas, spark"):
        default_engine()


def test_backfill_run_then_daily_run_publish_every_table_with_accuracy(mobility_lake):
    backfill = materialize_range(mobility_lake, DATES[0], DATES[1])
    assert backfill.success
    days = check_metadata(backfill, "stay_points_accuracy")
    assert days["days"] == 2 and set(days["per_day"]) == set(DATES[:2])
    result = daily_job_run(mobility_lake, DATES[2])
    for table in ("stay_points", "visits", "home_location", "brand_affinity"):
        for day in DATES:
            assert mobility_lake.parquet_files(f"curated/{table}/date={day}"), (table, day)
    for day in DATES:
        assert mobility_lake.parquet_files(f"work/demographics/date={day}")
        assert mobility_lake.parquet_files(f"work/area_coverage/date={day}")
    stays = mobility_lake.read_parquet(f"curated/stay_points/date={DATES[0]}")
    assert {"device_id", "start_ts", "end_ts", "lat", "lon", "n_pings"} <= set(stays.columns)
    assert (pd.to_datetime(stays["start_ts"], utc=True).dt.strftime("%Y-%m-%d") == DATES[0]).all()
    visits = mobility_lake.read_parquet(f"curated/visits/date={DATES[0]}")
    assert {"device_id", "poi_id", "start_ts", "end_ts", "dwell_s"} <= set(visits.columns)
    homes = mobility_lake.read_parquet(f"curated/home_location/date={DATES[-1]}")
    assert homes["confidence"].between(0, 1).all()
    assert homes["device_id"].is_unique
    affinity = mobility_lake.read_parquet(f"curated/brand_affinity/date={DATES[-1]}")
    assert np.isfinite(affinity["affinity"]).all()

    stays = check_metadata(result, "stay_points_accuracy")
    assert stays["stay_precision"] >= 0.97
    assert stays["stay_recall"] >= 0.93
    visits = check_metadata(result, "visits_accuracy")
    assert visits["visit_precision"] >= 0.9
    assert visits["visit_recall"] >= 0.9
    homes_meta = materialization(result, "home_location")
    assert homes_meta["window_days_found"] == 3
    assert homes_meta["ping_days_found"] == 3
    assert homes_meta["evidence"] == "stays+pings"
    assert homes_meta["calibration_version"] == home.calibration_version()
    assert homes_meta["min_confidence"] == home.DEFAULT_MIN_CONFIDENCE
    by_method = homes_meta["homes_by_method"]
    assert set(by_method) == {"night", "day_rest", "evening"}
    assert sum(by_method.values()) == homes_meta["homes"]
    home_acc = check_metadata(result, "home_location_accuracy")
    assert home_acc["home_within_200m"] >= 0.95
    assert home_acc["home_coverage"] >= 0.95
    assert "| confidence | homes |" in home_acc["home_reliability"]
    assert 0 <= home_acc["home_calibration_max_gap"] <= 0.1
    demo = check_metadata(result, "demographics_accuracy")
    assert demo["area_correct"] >= 0.95
    checks = {
        (c.asset_key.to_user_string(), c.check_name): c.passed
        for c in result.get_asset_check_evaluations()
    }
    assert len(checks) == 14 + len(accuracy_checks)  # audits and accuracy, in the same run
    assert all(checks.values()), checks


def test_stay_accuracy_scores_with_the_parameters_the_asset_ran_with(mobility_lake):
    day, min_duration_s = DATES[0], 1800.0
    result = dg.materialize(
        [mobility.stay_points, stay_points_accuracy],
        resources=resources(mobility_lake),
        partition_key=day,
        run_config={"ops": {"stay_points": {"config": {"min_duration_s": min_duration_s}}}},
    )
    expected = accuracy.stay_accuracy(
        mobility_lake.read_parquet(f"curated/stay_points/date={day}"),
        mobility_lake.read_parquet(f"truth/stays/date={day}"),
        day,
        min_duration_s=min_duration_s,
        pings=mobility_lake.read_parquet(f"work/clean_pings/date={day}", ["device_id", "ts"]),
    )
    assert check_metadata(result, "stay_points_accuracy") == {
        k: v for k, v in expected.items() if v is not None
    }


def test_home_window_reads_the_mapped_partitions_and_skips_days_before_the_lake(mobility_lake):
    result = dg.materialize(
        [mobility.stay_points, mobility.home_location],
        resources=resources(mobility_lake),
        partition_key=DATES[0],
    )
    home = materialization(result, "home_location")
    assert home["window_days_found"] == 1
    assert home["homes"] > 0


def test_home_ping_hours_reduce_each_day_of_clean_pings(mobility_lake):
    result = dg.materialize(
        [mobility.home_ping_hours],
        resources=resources(mobility_lake),
        tags={
            "dagster/asset_partition_range_start": DATES[0],
            "dagster/asset_partition_range_end": DATES[1],
        },
    )
    assert result.success
    events = result.asset_materializations_for_node("home_ping_hours")
    meta = {e.partition: {k: v.value for k, v in e.metadata.items()} for e in events}
    assert set(meta) == set(DATES[:2])
    for day in DATES[:2]:
        pings = mobility_lake.read_parquet(f"work/clean_pings/date={day}")
        hours = mobility_lake.read_parquet(f"work/home_ping_hours/date={day}")
        assert list(hours.columns) == ["device_id", "ts", "lat", "lon"]
        assert 0 < len(hours) < len(pings) / 2
        assert not hours.duplicated(["device_id", "ts", "lat", "lon"]).any()
        assert meta[day]["rows"] == meta[day]["dagster/row_count"] == len(hours)
        assert meta[day]["devices"] == pings["device_id"].nunique()
        assert (utc_days(hours["ts"]) == day).all()


def add_device(lake: LakeResource, day: str, rows: list[tuple[float, float]]) -> None:
    """Append pings (UTC hour of the day, metres east of the lake's first ping) to clean_pings."""
    pings = lake.read_parquet(f"work/clean_pings/date={day}")
    lat0, lon0 = float(pings["lat"].iloc[0]), float(pings["lon"].iloc[0])
    kx = 111_320.0 * np.cos(np.radians(lat0))
    extra = pd.DataFrame(
        {
            "device_id": [device for device, _, _ in rows],
            "ts": [pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=h) for _, h, _ in rows],
            "lat": lat0,
            "lon": [lon0 + east / kx for _, _, east in rows],
        }
    )
    out = pd.concat([pings, extra.astype({"ts": pings["ts"].dtype})], ignore_index=True)
    lake.write_parquet(out.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")


def test_home_uses_sparse_night_pings_and_leaves_out_a_device_seen_only_by_day(mobility_lake):
    day = DATES[0]
    office = [h / 12 for h in range(9 * 12, 17 * 12)]  # a ping every 5 min, 09-17 UTC
    add_device(
        mobility_lake,
        day,
        [("zz_day_only", h, 5000.0) for h in office]
        + [("zz_sparse_night", h, 5000.0) for h in office]
        + [("zz_sparse_night", h, 0.0) for h in (0.4, 1.9, 3.3, 4.6, 6.2)],  # no stay at night
    )
    result = dg.materialize(
        [mobility.stay_points, mobility.home_ping_hours, mobility.home_location],
        resources=resources(mobility_lake),
        partition_key=day,
    )
    assert result.success
    meta = materialization(result, "home_location")
    assert meta["evidence"] == "stays+pings"
    assert 0.9 < meta["coverage"] <= 1  # of the devices with stays or ping hours
    stays = mobility_lake.read_parquet(f"curated/stay_points/date={day}")
    assert {"zz_day_only", "zz_sparse_night"} <= set(stays["device_id"])  # both eligible
    homes = mobility_lake.read_parquet(f"curated/home_location/date={day}").set_index("device_id")
    assert "zz_day_only" not in homes.index  # its only place may be its workplace
    night = homes.loc["zz_sparse_night"]
    assert night["method"] == "night" and night["confidence"] >= home.DEFAULT_MIN_CONFIDENCE
    pings = mobility_lake.read_parquet(f"work/clean_pings/date={day}")
    truth = pings[(pings["device_id"] == "zz_sparse_night") & (pings["ts"].dt.hour < 7)]
    err = accuracy.haversine_m(
        night["lat"], night["lon"], truth["lat"].iloc[0], truth["lon"].iloc[0]
    )
    assert err < 50


def test_collapsed_day_fails_the_blocking_norm_check_and_keeps_production(mobility_lake):
    materialize_range(mobility_lake, DATES[0], DATES[1])
    # the third day's feed collapses: each device reports a single ping
    day = DATES[2]
    pings = mobility_lake.read_parquet(f"work/clean_pings/date={day}")
    mobility_lake.write_parquet(pings.drop_duplicates("device_id"), f"work/clean_pings/date={day}")
    # with only two days of history the band is not enforced; give it three
    for d in DATES[:2]:
        mobility_lake.copy(
            f"curated/stay_points/date={d}",
            f"curated/stay_points/date=2024-03-0{DATES.index(d) + 1}",
        )
    result = dg.materialize(
        [mobility.stay_points],
        resources=resources(mobility_lake),
        partition_key=day,
        raise_on_error=False,
    )
    assert not result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["stays_per_device_within_norm"] is False
    assert not mobility_lake.parquet_files(f"curated/stay_points/date={day}")


def test_assets_report_the_engine_that_ran_not_the_configured_one(mobility_lake):
    # home_ping_hours configured for Spark on a day without clean pings: nothing to hand to a
    # Spark job, so the (empty) day is computed in-process and says so
    mobility_lake.delete(f"work/clean_pings/date={DATES[0]}")
    result = dg.materialize(
        [mobility.home_ping_hours],
        resources=resources(mobility_lake),
        partition_key=DATES[0],
        run_config={"ops": {"home_ping_hours": {"config": {"engine": "spark"}}}},
    )
    meta = materialization(result, "home_ping_hours")
    assert meta["engine"] == "pandas" and meta["rows"] == 0


def test_an_empty_input_day_is_no_data_and_never_overwrites_a_published_day(mobility_lake):
    assert dg.materialize(
        [mobility.stay_points], resources=resources(mobility_lake), partition_key=DATES[1]
    ).success
    published = mobility_lake.read_bytes(f"curated/stay_points/date={DATES[1]}/part-0.parquet")
    mobility_lake.delete(f"work/clean_pings/date={DATES[1]}")
    result = dg.materialize(
        [mobility.stay_points],
        resources=resources(mobility_lake),
        partition_key=DATES[1],
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no data: clean_pings is missing or empty" in failure.step_failure_data.error.message
    after = mobility_lake.read_bytes(f"curated/stay_points/date={DATES[1]}/part-0.parquet")
    assert after == published

    # in a run over several days, the day without input is skipped and says so
    result = dg.materialize(
        [mobility.stay_points, mobility.visits],
        resources=resources(mobility_lake),
        tags={
            "dagster/asset_partition_range_start": DATES[0],
            "dagster/asset_partition_range_end": DATES[1],
        },
    )
    by_day = {
        m.partition: m.metadata for m in result.asset_materializations_for_node("stay_points")
    }
    assert by_day[DATES[1]]["input"].value == "missing or empty"
    assert "not published" in by_day[DATES[1]]["skipped"].value
    assert by_day[DATES[0]]["dagster/row_count"].value > 0
    assert (
        mobility_lake.read_bytes(f"curated/stay_points/date={DATES[1]}/part-0.parquet") == published
    )


# Both engines giving the same rows, checks and figures (stays, ping hours, visits, homes):
# tests/test_spark_chain.py (one Spark job per asset for the whole chain).
