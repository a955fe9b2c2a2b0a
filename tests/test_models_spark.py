"""visit_history, high_density_points and identity_graph on both engines.

One generated lake (planted HDPs, people and households; stay points and visits published in
pandas); each model runs once in pandas and once as its Spark job
(``near_assets/spark_jobs/models.py``, one local job per model, every day of the run in it).
Keys and counts must be identical, floats equal within tolerance; each materialization names
the engine that ran, and the day's figures agree.
"""

from __future__ import annotations

import shutil
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets import mobility
from near_assets.models import high_density_points as hd
from near_assets.models import identity_graph as ig
from near_assets.models import visit_history as vh
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM"),
]

START, DAYS = "2024-03-04", 4
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
ENGINES = ("pandas", "spark")
RUN_FIGURES = {"seconds", "engine", "update_s", "seconds_science", "version", "content_digest",
               "production_holds", "backup"}  # fmt: skip
"""Figures that describe the run, not the rows."""


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


def run_range(lake: LakeResource, assets: list, first: str, last: str, **kw):
    return dg.materialize(
        assets,
        resources=resources(lake),
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        **kw,
    )


def build_lake(lake: LakeResource) -> None:
    generate(
        lake,
        seed=7,
        devices=160,
        start=START,
        days=DAYS,
        dirt=False,
        progress=False,
        hdp=True,
        people=True,
    )
    for day in DATES:
        raw = lake.read_parquet(f"raw/pings/date={day}")
        raw["ts"] = to_utc(raw["ts"])  # stand-in for clean_pings (tested elsewhere)
        lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
    assert run_range(lake, [mobility.stay_points, mobility.visits], DATES[0], DATES[-1]).success


def per_day(result: dg.ExecuteInProcessResult, node: str) -> dict[str, dict[str, Any]]:
    """Each partition's metadata (values) of a run's materializations of ``node``."""
    out = {}
    for m in result.asset_materializations_for_node(node):
        out[m.partition] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
    return out


def run_model(lake: LakeResource, asset: dg.AssetsDefinition, days: list[str], **config):
    """``asset`` over ``days`` on each engine: per-day metadata and the published days (read
    right after each engine's run: the next run replaces them)."""
    name = asset.key.to_user_string()
    out: dict[str, Any] = {}
    for engine in ENGINES:
        result = run_range(
            lake,
            [asset],
            days[0],
            days[-1],
            run_config={"ops": {name: {"config": {"engine": engine, **config}}}},
        )
        assert result.success
        out[engine] = {"meta": per_day(result, name)}
        for day in days:
            out[engine][day] = lake.read_parquet(f"curated/{name}/date={day}")
            if name == "high_density_points":
                out[engine][f"cells/{day}"] = lake.read_parquet(f"work/hdp_cells/date={day}")
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    lake = LakeResource(root=str(tmp_path_factory.mktemp("models_spark") / "lake"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAKE_START_DATE", START)
        build_lake(lake)
    return lake


@pytest.fixture(scope="module")
def history_runs(lake: LakeResource) -> dict[str, Any]:
    runs = run_model(lake, vh.visit_history, DATES)
    # a daily run: the last day alone, incremental from the snapshot Spark published the day
    # before (read from the lake)
    daily = run_range(
        lake,
        [vh.visit_history],
        DATES[-1],
        DATES[-1],
        run_config={"ops": {"visit_history": {"config": {"engine": "spark"}}}},
    )
    assert daily.success
    runs["daily"] = {
        "meta": per_day(daily, "visit_history"),
        DATES[-1]: lake.read_parquet(f"curated/visit_history/date={DATES[-1]}"),
    }
    return runs


@pytest.fixture(scope="module")
def hdp_runs(lake: LakeResource) -> dict[str, Any]:
    # a small panel: planted pings weigh more than in a real one
    return run_model(lake, hd.high_density_points, DATES, max_removed_share=0.1)


@pytest.fixture(scope="module")
def identity_runs(lake: LakeResource) -> dict[str, Any]:
    return run_model(lake, ig.identity_graph, DATES[-2:])


def same_rows(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], atol: float = 1e-9) -> None:
    """Same columns, keys and counts exactly; floats within ``atol`` (and 1e-9 relative)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b) > 0
    a = a.sort_values(keys, ignore_index=True)
    b = b.sort_values(keys, ignore_index=True)
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) or pd.api.types.is_float_dtype(y):
            assert np.allclose(x.astype(float), y.astype(float), rtol=1e-9, atol=atol), col
        elif isinstance(x.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(x):
            assert (pd.to_datetime(x, utc=True) == pd.to_datetime(y, utc=True)).all(), col
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), col


def row_figures(value: Any) -> Any:
    """``value`` without the run figures, at any depth."""
    if isinstance(value, dict):
        return {
            k: row_figures(v)
            for k, v in value.items()
            if k not in RUN_FIGURES and not k.startswith("spark_")
        }
    return value


def assert_engines(runs: dict[str, Any]) -> None:
    for engine in ENGINES:
        assert {m["engine"] for m in runs[engine]["meta"].values()} == {engine}


def test_visit_history_is_the_same_on_both_engines(history_runs):
    pandas, spark = history_runs["pandas"], history_runs["spark"]
    for day in DATES:
        # dwell sums are added in another order: rounded to ms, they may differ by 1 ms
        same_rows(pandas[day], spark[day], ["device_id", "poi_id"], atol=2e-3)
        # the snapshot is written sorted by key under both engines
        keys = spark[day][["device_id", "poi_id"]]
        assert keys.equals(keys.sort_values(["device_id", "poi_id"], ignore_index=True))
    assert_engines(history_runs)
    assert spark["meta"][DATES[0]]["mode"] == "rebuild"
    assert {spark["meta"][d]["mode"] for d in DATES[1:]} == {"incremental"}
    for day in DATES:
        assert row_figures(pandas["meta"][day]) == row_figures(spark["meta"][day]), day
    daily = history_runs["daily"]
    same_rows(pandas[DATES[-1]], daily[DATES[-1]], ["device_id", "poi_id"], atol=2e-3)
    figures = daily["meta"][DATES[-1]]
    assert figures["engine"] == "spark" and figures["mode"] == "incremental"
    assert figures["previous_pairs"] == len(spark[DATES[-2]])


def test_high_density_points_are_the_same_on_both_engines(hdp_runs):
    pandas, spark = hdp_runs["pandas"], hdp_runs["spark"]
    for day in DATES:
        same_rows(pandas[f"cells/{day}"], spark[f"cells/{day}"], ["cell"])
    listed = 0
    for day in DATES:
        listed += len(spark[day])
        if len(pandas[day]) or len(spark[day]):
            same_rows(pandas[day], spark[day], ["cell"])
    assert listed > 0
    assert_engines(hdp_runs)
    # "added" / "dropped" compare with the list published the day before: by the pandas run
    # for the Spark run, by none for the pandas run (the per_day table repeats them)
    skip = {"added", "dropped", "per_day"}
    for day in DATES:
        a, b = ({k: v for k, v in row_figures(r["meta"][day]).items() if k not in skip}
                for r in (pandas, spark))  # fmt: skip
        assert a == b, day


def test_identity_graph_is_the_same_on_both_engines(identity_runs):
    pandas, spark = identity_runs["pandas"], identity_runs["spark"]
    for day in DATES[-2:]:
        same_rows(pandas[day], spark[day], ["device_id"])
        assert (spark[day]["confidence"] > 0).sum() > 10  # households were linked
        assert spark[day]["device_id"].is_monotonic_increasing
    assert_engines(identity_runs)
    for day in DATES[-2:]:
        a, b = row_figures(pandas["meta"][day]), row_figures(spark["meta"][day])
        assert a == b, day
        assert b["truth_household_precision"] >= 0.9
