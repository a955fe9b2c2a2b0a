"""audience_estimates on both engines: the same estimates, rates and figures; the engine that ran.

One small generated lake (two days, the upstream science written in-process, the first day's
visit-detection rates cached), copied once per engine; the second day is estimated with the
first blended in (history). The Spark run is one job.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets.audience import audience_estimates, day_detection
from near_assets.evaluation.audience import audience_truth
from near_assets.tables import (
    AUDIENCE_ESTIMATES,
    AUDIENCE_REDIS_KEY,
    CLEAN_PINGS,
    DEMOGRAPHICS,
    STAY_POINTS,
    VISIT_DETECTION,
    VISITS,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from resources.spark import SparkResource

pytestmark = [
    pytest.mark.spark,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM"),
]

DAYS = ["2024-03-04", "2024-03-05"]
COUNTS = ["poi_id", "visitors", "estimate", "estimate_low", "estimate_high"]
# figures of the day (the engine's own run figures excluded)
DAY_FIGURES = (
    "pois",
    "visited_pois",
    "panel_visitors",
    "projected_people",
    "devices_with_home_area",
    "history_days_blended",
    "active_devices",
    "detection_correction",
    "mean_detection_rate",
    "detection_speed_mps",
    "detection_mean_dwell_s",
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated pings, clean pings, stays, visits and home areas of two days (pandas science)."""
    from near_assets.science.cleaning import clean_pings
    from near_assets.science.demographics import device_demographics
    from near_assets.science.home import homes_by_day
    from near_assets.science.stays import detect_stays
    from near_assets.science.visits import PoiIndex, match_visits
    from near_assets.synth import generate

    root = tmp_path_factory.mktemp("audience") / "lake"
    lake = LakeResource(root=str(root))
    generate(lake, seed=3, devices=400, start=DAYS[0], days=2, progress=False, timezone="UTC")
    index = PoiIndex(lake.read_parquet("reference/pois"))
    areas = lake.read_parquet("reference/areas")
    for day in DAYS:
        clean, _ = clean_pings(lake.read_parquet(f"raw/pings/date={day}"), date.fromisoformat(day))
        stays = detect_stays(clean)
        lake.write_parquet(clean, CLEAN_PINGS.key(day))
        lake.write_parquet(stays, STAY_POINTS.key(day))
        lake.write_parquet(match_visits(stays, index), VISITS.key(day))
        homes = homes_by_day(stays, [day]).drop(columns="date")
        lake.write_parquet(device_demographics(homes, areas), DEMOGRAPHICS.key(day))
    day_detection(lake, DAYS[0])  # the trailing day's rates are cached, as in production
    return root


@pytest.fixture(scope="module")
def runs(source: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict:
    out = {}
    for engine in ("pandas", "spark"):
        root = tmp_path_factory.mktemp(engine) / "lake"
        shutil.copytree(source, root)
        lake = LakeResource(root=str(root))
        result = dg.materialize(
            [audience_estimates, audience_truth],
            partition_key=DAYS[1],
            resources={
                "lake": lake,
                "redis": RedisResource(url=redis_url),
                "alerts": AlertsResource(),
                "spark": SparkResource(master="local[2]"),
            },
            run_config={"ops": {"audience_estimates": {"config": {"engine": engine}}}},
        )
        assert result.success
        redis_rows = RedisResource(url=redis_url).get_client().hlen(AUDIENCE_REDIS_KEY)
        out[engine] = (lake, result, redis_rows)
    return out


def materialization(result: dg.ExecuteInProcessResult) -> dict:
    (mat,) = result.asset_materializations_for_node("audience_estimates")
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def accuracy(result: dg.ExecuteInProcessResult) -> dict:
    (check,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "audience_estimates_accuracy"
    ]
    return {k: getattr(v, "value", v) for k, v in check.metadata.items()}


def test_both_engines_publish_the_same_estimates_and_report_the_engine_that_ran(runs) -> None:
    (pd_lake, pd_run, pd_redis), (sp_lake, sp_run, sp_redis) = runs["pandas"], runs["spark"]
    a = AUDIENCE_ESTIMATES.read(pd_lake, DAYS[1]).sort_values("poi_id", ignore_index=True)
    b = AUDIENCE_ESTIMATES.read(sp_lake, DAYS[1]).sort_values("poi_id", ignore_index=True)
    assert len(a) > 50 and (a["visitors"] > 0).sum() > 20
    pd.testing.assert_frame_equal(a[COUNTS], b[COUNTS])
    assert np.allclose(a["std_error"], b["std_error"], rtol=1e-9)
    assert pd_redis == sp_redis == len(a)

    ma, mb = materialization(pd_run), materialization(sp_run)
    assert (ma["engine"], mb["engine"]) == ("pandas", "spark")
    assert ma["history_days_blended"] == 1 and ma["detection_correction"] is True
    for key in DAY_FIGURES:
        assert ma[key] == pytest.approx(mb[key], rel=1e-9), key
    assert accuracy(pd_run) == accuracy(sp_run)


def test_both_engines_write_the_same_visit_detection_rates(runs) -> None:
    (pd_lake, _, _), (sp_lake, _, _) = runs["pandas"], runs["spark"]
    for day in DAYS[1:]:  # today's, refreshed by the run
        a = VISIT_DETECTION.read(pd_lake, day).sort_values("device_id", ignore_index=True)
        b = VISIT_DETECTION.read(sp_lake, day).sort_values("device_id", ignore_index=True)
        assert len(a) > 300
        assert a["device_id"].tolist() == b["device_id"].tolist()
        assert a["ping_group"].astype(int).tolist() == b["ping_group"].astype(int).tolist()
        assert np.allclose(a["p_detect"], b["p_detect"], rtol=1e-9)
        assert a["p_detect"].nunique() > 3  # the rates follow the devices' sampling
