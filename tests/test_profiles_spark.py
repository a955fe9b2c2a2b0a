"""demographics, brand_affinity, campaign_insights and aggregate_insights on both engines.

One generated lake (visits with brands and homes from the generator's truth, as in
``tests/test_campaigns.py``); each asset runs once in pandas and once as its Spark job
(``near_assets/spark_jobs/profiles.py``, one local job each). Keys and counts must be identical,
floats equal within 1e-9 relative; each materialization names the engine that ran.
"""

from __future__ import annotations

import shutil
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets import mobility, profiles
from near_assets.campaigns import campaign_insights
from near_assets.insights import aggregate_insights, aggregate_insights_job
from near_assets.synth import generate
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM"),
]

START, DAYS = "2024-03-01", 21
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
LAST = DATES[-2:]
RANGE = {
    "dagster/asset_partition_range_start": LAST[0],
    "dagster/asset_partition_range_end": LAST[-1],
}
ENGINES = ("pandas", "spark")
RTOL = 1e-9


def build_lake(lake: LakeResource) -> dict[str, Any]:
    """Generate a lake and publish visits (with brands) and homes from its truth."""
    summary = generate(lake, devices=200, start=START, days=DAYS, seed=3, progress=False)
    pois = lake.read_parquet("reference/pois")[["poi_id", "brand"]]
    homes = lake.read_parquet("truth/homes").rename(columns={"home_lat": "lat", "home_lon": "lon"})
    homes = homes.assign(confidence=0.9, nights=7, hours=20, method="truth")
    for day in summary["per_day"]:
        stays = lake.read_parquet(f"truth/stays/date={day}")
        v = stays[stays["kind"] == "poi"].merge(pois, on="poi_id", how="left")
        v["dwell_s"] = (v["end_ts"] - v["start_ts"]).dt.total_seconds()
        v["distance_m"] = 0.0
        columns = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s", "brand", "distance_m"]
        lake.write_parquet(v[columns], f"curated/visits/date={day}")
        columns = ["device_id", "lat", "lon", "confidence", "nights", "hours", "method"]
        lake.write_parquet(homes[columns], f"curated/home_location/date={day}")
    return summary


def run_engine(lake: LakeResource, engine: str, cid: str, brand: str) -> dict[str, Any]:
    """Every asset on ``engine``: its outputs and the metadata of its materializations."""
    resources = {
        "lake": lake,
        "alerts": AlertsResource(),
        "spark": SparkResource(master="local[2]"),
    }
    config = {"config": {"engine": engine}}
    out: dict[str, Any] = {}
    daily = dg.materialize(
        [mobility.visits, mobility.home_location, profiles.demographics, profiles.brand_affinity],
        selection=[profiles.demographics, profiles.brand_affinity],
        resources=resources,
        tags=RANGE,
        run_config={"ops": {"demographics": config, "brand_affinity": config}},
    )
    assert daily.success
    for name in ("demographics", "brand_affinity"):
        out[name] = {m.partition: m.metadata for m in daily.asset_materializations_for_node(name)}
    for day in LAST:
        out[f"demographics/{day}"] = lake.read_parquet(f"work/demographics/date={day}")
        out[f"area_coverage/{day}"] = lake.read_parquet(f"work/area_coverage/date={day}")
        out[f"brand_affinity/{day}"] = lake.read_parquet(f"curated/brand_affinity/date={day}")

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [cid])
        result = dg.materialize(
            [campaign_insights],
            partition_key=cid,
            instance=instance,
            resources=resources,
            run_config={
                "ops": {"campaign_insights": {"config": {"engine": engine, "as_of": DATES[-1]}}}
            },
        )
    assert result.success
    (mat,) = result.asset_materializations_for_node("campaign_insights")
    out["campaign_insights"] = mat.metadata
    out["campaign_row"] = lake.read_parquet(f"curated/campaign_insights/campaign_id={cid}")

    request = {
        "brand": brand,
        "start_date": DATES[2],
        "end_date": DATES[-1],
        "affinity_brand": brand,
        "min_affinity": -5.0,
        "engine": engine,
    }
    defs = dg.Definitions(
        assets=[aggregate_insights], jobs=[aggregate_insights_job], resources=resources
    )
    result = defs.resolve_job_def("aggregate_insights_job").execute_in_process(
        run_config={"ops": {"aggregate_insights": {"config": request}}}
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("aggregate_insights")
    out["aggregate_insights"] = mat.metadata
    key = f"insights/{mat.metadata['request_hash'].value}"
    for table in ("visitors", "dwell", "home_area_mix", "brand_affinity"):
        out[f"insights/{table}"] = lake.read_parquet(f"{key}/{table}.parquet")
    out["insights/summary"] = lake.read_json(f"{key}/summary.json")
    return out


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    lake = LakeResource(root=str(tmp_path_factory.mktemp("profiles") / "lake"))
    summary = build_lake(lake)
    cid = summary["campaigns"][0]
    brand = lake.read_json(f"reference/campaigns/{cid}.json")["brand"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAKE_START_DATE", START)
        return {engine: run_engine(lake, engine, cid, brand) for engine in ENGINES}


def same_rows(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    """Same columns, keys and counts exactly; floats within ``RTOL``."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) > 0
    a = a.sort_values(keys, ignore_index=True)
    b = b.sort_values(keys, ignore_index=True)
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) or pd.api.types.is_float_dtype(y):
            assert np.allclose(x.astype(float), y.astype(float), rtol=RTOL, equal_nan=True), col
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), col


def values(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def engine_of(metadata: dict[str, Any]) -> str:
    return values(metadata)["engine"]


def test_demographics_and_coverage_are_the_same_on_both_engines(engines):
    pandas, spark = engines["pandas"], engines["spark"]
    for day in LAST:
        same_rows(pandas[f"demographics/{day}"], spark[f"demographics/{day}"], ["device_id"])
        same_rows(pandas[f"area_coverage/{day}"], spark[f"area_coverage/{day}"], ["area_id"])
        # the table is written sorted by device under both engines
        assert spark[f"demographics/{day}"]["device_id"].is_monotonic_increasing
    for engine in ENGINES:
        assert {engine_of(m) for m in engines[engine]["demographics"].values()} == {engine}
    strip = {"seconds", "engine"}
    for day in LAST:
        a, b = (
            {k: v for k, v in values(engines[e]["demographics"][day]).items() if k not in strip}
            for e in ENGINES
        )
        assert {k: v for k, v in b.items() if not k.startswith("spark_")} == a


def test_brand_affinity_is_the_same_on_both_engines(engines):
    for day in LAST:
        same_rows(
            engines["pandas"][f"brand_affinity/{day}"],
            engines["spark"][f"brand_affinity/{day}"],
            ["device_id", "brand"],
        )
        figures = {e: values(engines[e]["brand_affinity"][day]) for e in ENGINES}
        for key in ("visits_in_window", "window_days_found", "devices", "brands", "share_positive"):
            assert figures["pandas"][key] == figures["spark"][key], key
        for engine in ENGINES:
            assert figures[engine]["engine"] == engine


def test_campaign_insights_estimate_is_the_same_on_both_engines(engines):
    a, b = (engines[e]["campaign_row"] for e in ENGINES)
    same_rows(a, b, ["campaign_id"])
    meta = {e: values(engines[e]["campaign_insights"]) for e in ENGINES}
    for key in ("exposed_devices", "exposed_in_exposures", "control_devices", "strata",
                "unmatched_exposed", "window_days_read", "pre_days_read", "home_location_day",
                "exposed_brand_visits"):  # fmt: skip
        assert meta["pandas"][key] == meta["spark"][key], key
    assert np.isclose(meta["pandas"]["lift"], meta["spark"]["lift"], rtol=1e-6)
    assert meta["pandas"]["engine"] == "pandas" and meta["spark"]["engine"] == "spark"
    # the panel comes back compressed: fewer rows than devices
    assert 0 < meta["spark"]["panel_rows_read"] < meta["spark"]["panel_devices"]


def test_aggregate_insights_are_the_same_on_both_engines(engines):
    pandas, spark = engines["pandas"], engines["spark"]
    same_rows(pandas["insights/visitors"], spark["insights/visitors"], ["device_id"])
    same_rows(pandas["insights/dwell"], spark["insights/dwell"], ["bin"])
    same_rows(pandas["insights/home_area_mix"], spark["insights/home_area_mix"], ["area_id"])
    same_rows(pandas["insights/brand_affinity"], spark["insights/brand_affinity"], ["brand"])
    a, b = (
        {k: v for k, v in engines[e]["insights/summary"].items() if k != "generated_at"}
        for e in ENGINES
    )
    assert a == b
    assert values(pandas["aggregate_insights"])["engine"] == "pandas"
    assert values(spark["aggregate_insights"])["engine"] == "spark"
    for key in ("visitors", "visits", "estimated_people", "dagster/row_count"):
        assert values(pandas["aggregate_insights"])[key] == values(spark["aggregate_insights"])[key]
