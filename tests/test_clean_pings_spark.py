"""clean_pings on both engines: the same clean rows, quarantine rows, reasons and counts.

Two generated days with dirt (``near_assets.synth``, few devices) plus a hand-made file of
edge cases (nanosecond timestamps, NaN and empty fields, duplicates across files whose first
delivery differs in accuracy, a small high-density point, pings on and beside the points of a
learnt high-density list published for each day before) go through ``clean_pings`` with
``engine: pandas`` and ``engine: spark`` (one local Spark job for both days, under Pipes).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets.pings import clean_pings
from near_assets.science.cleaning import REASONS
from near_assets.science.hdp import HdpParams, cell_codes
from near_assets.synth import generate
from near_assets.tables import CLEAN_PINGS, HIGH_DENSITY_POINTS, QUARANTINED_PINGS
from resources.lake import LakeResource
from resources.spark import SparkResource

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM"),
]

START = "2024-03-04"
DAYS = ["2024-03-04", "2024-03-05"]
HDP_MIN_DEVICES = 4
COLUMNS = ["device_id", "ts", "lat", "lon", "accuracy_m"]
EXACT = (42.00013, -3.00013)
"""A learnt exact-point HDP: only pings on this very coordinate go."""
CELL = (42.01013, -3.01013)
"""A learnt whole-cell HDP: every ping of its ~11 m cell goes."""
LISTS = {"2024-03-03": [(*EXACT, True), (*CELL, False)], "2024-03-04": [(*CELL, False)]}
"""The lists published for the day before each of ``DAYS`` (day 2 no longer lists EXACT)."""


def hdp_list(entries: list[tuple[float, float, bool]]) -> pd.DataFrame:
    """A published-like ``HIGH_DENSITY_POINTS`` list of ``(lat, lon, exact_point)`` entries."""
    lat = np.array([e[0] for e in entries])
    lon = np.array([e[1] for e in entries])
    return pd.DataFrame(
        {
            "cell": cell_codes(lat, lon, HdpParams.cell_deg),
            "lat": lat,
            "lon": lon,
            "days_flagged": 3,
            "days_seen": 3,
            "devices_median": 30.0,
            "concentration_median": 9.0,
            "accuracy_share_median": 0.9,
            "first_flagged": "2024-03-01",
            "last_flagged": "2024-03-03",
            "exact_point": [e[2] for e in entries],
        }
    )


def edge_cases(day: str) -> pd.DataFrame:
    """Rows for every rule's corners, ``ts`` as nanosecond timestamps (ms precision)."""
    t0 = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=8)
    ms = pd.Timedelta(milliseconds=1)
    rows = [
        ("e-1", t0, 40.0, -3.0, 10.0),
        ("e-1", t0, 40.0, -3.0, 99.0),  # duplicate of the first delivery (other accuracy)
        ("e-1", t0 + ms, 40.0, -3.0, np.nan),  # missing accuracy is fine
        ("e-2", t0, 40.1, -3.1, 5000.0),  # low_accuracy; its later twin is kept
        ("e-2", t0, 40.1, -3.1, 20.0),
        ("", t0, 40.2, -3.2, 10.0),  # empty device id: null_field
        ("e-3", t0, np.nan, -3.2, 10.0),  # NaN: null_field
        ("e-3", t0, 40.2, np.inf, 10.0),  # out_of_range
        ("e-3", t0, 40.2, -3.2, -1.0),  # negative accuracy: out_of_range
        ("e-3", t0, -0.0, 0.0, 10.0),  # zero_zero
        ("e-3", t0 - pd.Timedelta(days=1), 40.2, -3.2, 10.0),  # outside_day
        ("e-3", t0 + pd.Timedelta(hours=16), 40.2, -3.2, 10.0),  # next day 00:00
        ("e-4", None, 40.2, -3.2, 10.0),  # null ts
        *((f"h-{i}", t0 + i * ms, 41.123451, -3.5, 10.0) for i in range(HDP_MIN_DEVICES)),
        *((f"h-{i}", t0 + i * ms, 41.123449, -3.5, 10.0) for i in range(HDP_MIN_DEVICES - 1)),
        ("l-1", t0, *EXACT, 15.0),  # on a listed exact point: high_density
        ("l-1", t0, *EXACT, 15.0),  # ... its repeat stays a duplicate
        ("l-2", t0 + ms, *EXACT, 15.0),
        ("l-3", t0, 42.00011, -3.00013, 15.0),  # the exact point's cell, another coordinate
        ("l-4", t0, 42.01011, -3.01014, 15.0),  # in a listed cell: high_density
        ("l-5", t0, *CELL, 15.0),
        ("l-6", t0, 42.01016, -3.01013, 15.0),  # the next cell: kept
        ("l-7", t0, 42.01015, -3.01013, 15.0),  # on a cell edge: the same double arithmetic
        ("l-8", t0, 42.0101, -3.0101, 15.0),  # a 4-decimal fix, on a cell corner
        # across the listed cell and its neighbours in 5e-6 degree steps: both engines must
        # compute the very cell codes of hdp.cell_codes, edges included
        *(
            (f"g-{i:02d}", t0, round(CELL[0] + i * 5e-6, 6), round(CELL[1] - i * 5e-6, 6), 15.0)
            for i in range(-25, 26)
        ),
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    return frame


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = LakeResource(root=str(tmp_path_factory.mktemp("raw") / "lake"))
    generate(lake, seed=5, devices=40, start=START, days=len(DAYS), dirt_share=0.1, progress=False)
    for day in DAYS:
        lake.write_parquet(edge_cases(day), f"raw/pings/date={day}/zz-edge.parquet")
        first = sorted(k for k in lake.list(f"raw/pings/date={day}") if k.endswith(".parquet"))[0]
        repeat = lake.read_arrow(first).slice(0, 50)  # a re-delivery: 50 duplicates
        lake.write_parquet(repeat, f"raw/pings/date={day}/zz-retry.parquet")
    for day, entries in LISTS.items():  # as high_density_points publishes them
        lake.write_parquet(hdp_list(entries), HIGH_DENSITY_POINTS.key(day))
    return Path(lake.root)


def run(
    lake: LakeResource, engine: str, days: list[str] = DAYS, **extra: Any
) -> dg.ExecuteInProcessResult:
    config = {"engine": engine, "hdp_min_devices": HDP_MIN_DEVICES, "hdp_decimals": 5, **extra}
    return dg.materialize(
        [clean_pings],
        resources={"lake": lake, "spark": SparkResource(master="local[2]")},
        tags={
            "dagster/asset_partition_range_start": days[0],
            "dagster/asset_partition_range_end": days[-1],
        },
        run_config={"ops": {"clean_pings": {"config": config}}},
        raise_on_error=False,
    )


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["ts"] = pd.to_datetime(out["ts"], utc=True).dt.as_unit("ns")
    keys = [c for c in ["reason", *COLUMNS] if c in out.columns]
    return out[keys].sort_values(keys, ignore_index=True, na_position="first")


def figures(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    return {
        e.partition: {k: v.value for k, v in e.metadata.items()}
        for e in result.asset_materializations_for_node("clean_pings")
    }


@pytest.mark.slow  # one local Spark job (~8 s start): ~25 s idle, ~100 s at load average 12
def test_both_engines_give_the_same_rows_reasons_and_counts(generated: Path, tmp_path: Path):
    outputs, metas, checks = {}, {}, {}
    for engine in ("pandas", "spark"):
        lake = LakeResource(root=str(tmp_path / engine))
        shutil.copytree(generated, lake.root)
        # Spark: a few thousand rows a file, so the day is several range partitions (as a
        # Near-sized day is) and its cache goes to disk
        extra = {"spark_rows_per_file": 3_000} if engine == "spark" else {}
        result = run(lake, engine, **extra)
        assert result.success, engine
        metas[engine] = figures(result)
        (evaluation,) = result.get_asset_check_evaluations()
        checks[engine] = (evaluation.passed, evaluation.metadata["bad_rows"].value)
        outputs[engine] = {
            (table.name, day): lake.read_parquet(table.key(day))
            for table in (CLEAN_PINGS, QUARANTINED_PINGS)
            for day in DAYS
        }
    assert checks["spark"] == checks["pandas"]
    for day in DAYS:
        pandas_meta, spark_meta = metas["pandas"][day], metas["spark"][day]
        assert (pandas_meta["engine"], spark_meta["engine"]) == ("pandas", "spark")
        assert spark_meta["hdp_list_cells"] == pandas_meta["hdp_list_cells"] > 0
        keys = ("rows_in", "rows_out", "devices_in", "devices_out", "bad_share", "hdp_list_cells")
        for key in keys:
            assert spark_meta[key] == pandas_meta[key], key
        counts = {r: spark_meta[f"dropped/{r}"] for r in REASONS}
        assert counts == {r: pandas_meta[f"dropped/{r}"] for r in REASONS}
        assert all(counts[r] > 0 for r in REASONS), counts  # every rule is exercised
    for (table, day), pandas_rows in outputs["pandas"].items():
        spark_rows = outputs["spark"][(table, day)]
        assert len(spark_rows) == len(pandas_rows) > 0
        pd.testing.assert_frame_equal(
            canonical(pandas_rows), canonical(spark_rows), check_dtype=False, rtol=1e-12
        )
        if table == CLEAN_PINGS.name:  # the part files, in name order, are one sorted table
            order = spark_rows.sort_values(["device_id", "ts"], kind="stable")
            assert order.index.equals(spark_rows.index)
            assert len(CLEAN_PINGS.files(LakeResource(root=str(tmp_path / "spark")), day)) > 1
    assert str(outputs["spark"][(CLEAN_PINGS.name, DAYS[0])]["ts"].dtype).endswith("UTC]")
    # the planted lists did their part (the same on both engines, compared above)
    for day, listed in (
        (DAYS[0], {"l-1", "l-2", "l-4", "l-5"}),
        (DAYS[1], {"l-4", "l-5"}),  # EXACT is no longer listed
    ):
        dirt = outputs["pandas"][(QUARANTINED_PINGS.name, day)]
        on_list = dirt[dirt["device_id"].str.startswith("l-") & (dirt["reason"] == "high_density")]
        assert listed <= set(on_list["device_id"]) <= listed | {"l-7", "l-8"}, day
        kept = outputs["pandas"][(CLEAN_PINGS.name, day)]
        assert {"l-3", "l-6"} <= set(kept["device_id"]), day
        assert (dirt[dirt["device_id"] == "l-1"]["reason"] == "duplicate").sum() == 1, day


@pytest.mark.parametrize("engine", ["pandas", "spark"])
def test_a_raw_file_with_a_bad_schema_fails_clearly(tmp_lake: LakeResource, engine: str):
    good = edge_cases(DAYS[0])
    tmp_lake.write_parquet(good, f"raw/pings/date={DAYS[0]}/part-0.parquet")
    bad = good.assign(lat=good["lat"].astype(str)).drop(columns=["lon"])
    tmp_lake.write_parquet(bad, f"raw/pings/date={DAYS[0]}/part-1.parquet")

    result = run(tmp_lake, engine, DAYS[:1])

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert description == (
        f"{tmp_lake.uri(f'raw/pings/date={DAYS[0]}/part-1.parquet')}: missing required column "
        "'lon'; column 'lat' has type string, expected float64 degrees"
    )
    assert not CLEAN_PINGS.exists(tmp_lake, DAYS[0])


@pytest.mark.slow  # one more local Spark job
def test_spark_engine_on_an_s3_lake_replaces_both_outputs(s3_lake: LakeResource):
    """S3 lake, local Spark: raw files staged, outputs uploaded over the previous version."""
    from datetime import date

    from near_assets.science.cleaning import clean_pings as clean_in_process

    day = DAYS[0]
    raw = edge_cases(day)
    s3_lake.write_parquet(raw, f"raw/pings/date={day}/part-0.parquet")
    s3_lake.write_parquet(raw.head(3), CLEAN_PINGS.key(day))  # a previous version: replaced

    result = run(s3_lake, "spark", [day], max_bad_share=1.0)  # the day is mostly dirt

    assert result.success
    assert figures(result)[day]["engine"] == "spark"
    expected = clean_in_process(
        raw, date.fromisoformat(day), hdp_min_devices=HDP_MIN_DEVICES, hdp_decimals=5
    )
    for table, rows in zip((CLEAN_PINGS, QUARANTINED_PINGS), expected, strict=True):
        assert all(k.endswith(".parquet") for k in table.files(s3_lake, day))
        pd.testing.assert_frame_equal(
            canonical(rows), canonical(s3_lake.read_parquet(table.key(day))), check_dtype=False
        )
