"""audience_estimates on both engines: the same estimates, rates and figures; the engine that ran.

One small generated lake (two days, the upstream science written in-process, the first day's
visit-detection rates cached; devices grouped into people by the generator, the identity graph
of the first day only, from its truth, some devices left out), copied once per engine and count
unit; the second day is estimated with the first blended in (history). Counting devices, Spark
reads the local lake; counting people, an S3 lake on moto with local Spark (inputs staged,
outputs uploaded). Each Spark run is one job, its spec passed as a lake object.
"""

from __future__ import annotations

import shutil
import uuid
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
    IDENTITY_GRAPH,
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
    pytest.mark.timeout(1200),  # at most one Spark job per test, but a shared machine is slow
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
    generate(
        lake,
        seed=3,
        devices=400,
        start=DAYS[0],
        days=2,
        progress=False,
        timezone="UTC",
        people=True,
    )
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
    truth = lake.read_parquet("truth/identity").sort_values("device_id", ignore_index=True)
    graph = truth.iloc[[i for i in range(len(truth)) if i % 10]]  # a tenth left out of the graph
    lake.write_parquet(graph[["device_id", "person_id"]], IDENTITY_GRAPH.key(DAYS[0]))
    return root


def s3_copy(source: Path, endpoint: str) -> LakeResource:
    """The lake at ``source`` copied to a new bucket of the moto server."""
    import boto3

    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    lake = LakeResource(bucket=bucket, prefix="platform", endpoint_url=endpoint)
    for path in source.rglob("*"):
        if path.is_file():
            lake.write_bytes(path.relative_to(source).as_posix(), path.read_bytes())
    return lake


@pytest.fixture(scope="module")
def runs(
    source: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str, moto_endpoint: str
) -> Runs:
    return Runs(source, tmp_path_factory, redis_url, moto_endpoint)


class Runs:
    """One materialization per (engine, count unit), run when a test first asks for it (each
    test's time holds at most its own Spark job)."""

    def __init__(self, source: Path, factory: pytest.TempPathFactory, redis: str, moto: str):
        self.source, self.factory, self.redis, self.moto = source, factory, redis, moto
        self.done: dict[str, tuple] = {}

    def __getitem__(self, name: str) -> tuple:
        if name not in self.done:
            self.done[name] = self.run(name)
        return self.done[name]

    def run(self, name: str) -> tuple:
        engine, _, people = name.partition("-")
        count = people or "devices"
        if (engine, count) == ("spark", "people"):  # local Spark, S3 lake
            lake = s3_copy(self.source, self.moto)
        else:
            root = self.factory.mktemp(engine) / "lake"
            shutil.copytree(self.source, root)
            lake = LakeResource(root=str(root))
        config = {"engine": engine, "count": count}
        result = dg.materialize(
            [audience_estimates, audience_truth] if count == "devices" else [audience_estimates],
            partition_key=DAYS[1],
            resources={
                "lake": lake,
                "redis": RedisResource(url=self.redis),
                "alerts": AlertsResource(),
                "spark": SparkResource(master="local[2]"),
            },
            run_config={"ops": {"audience_estimates": {"config": config}}},
        )
        assert result.success
        redis_rows = RedisResource(url=self.redis).get_client().hlen(AUDIENCE_REDIS_KEY)
        return lake, result, redis_rows


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


def test_counting_people_gives_the_same_rows_on_both_engines_and_fewer_visitors(runs) -> None:
    (dev_lake, dev_run, _) = runs["pandas"]
    (pd_lake, pd_run, pd_redis), (sp_lake, sp_run, sp_redis) = (
        runs["pandas-people"],
        runs["spark-people"],
    )
    a = AUDIENCE_ESTIMATES.read(pd_lake, DAYS[1]).sort_values("poi_id", ignore_index=True)
    b = AUDIENCE_ESTIMATES.read(sp_lake, DAYS[1]).sort_values("poi_id", ignore_index=True)
    pd.testing.assert_frame_equal(a[COUNTS], b[COUNTS])
    assert np.allclose(a["std_error"], b["std_error"], rtol=1e-9)
    assert pd_redis == sp_redis == len(a)

    devices = AUDIENCE_ESTIMATES.read(dev_lake, DAYS[1]).sort_values("poi_id", ignore_index=True)
    assert (a["poi_id"] == devices["poi_id"]).all()
    assert (a["visitors"] <= devices["visitors"]).all()
    assert a["visitors"].sum() < devices["visitors"].sum()

    ma, mb, md = materialization(pd_run), materialization(sp_run), materialization(dev_run)
    assert (ma["engine"], mb["engine"]) == ("pandas", "spark")
    assert md["count_unit"] == "devices" and "devices_per_person" not in md
    for key in (*DAY_FIGURES, "panel_visitor_devices", "devices_per_person", "active_people"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-9), key
    assert ma["count_unit"] == mb["count_unit"] == "people"
    assert ma["identity_graph_day"] == mb["identity_graph_day"] == DAYS[0]  # latest <= D
    assert ma["panel_visitor_devices"] == md["panel_visitors"]
    ratio = md["panel_visitors"] / ma["panel_visitors"]
    assert ma["devices_per_person"] == pytest.approx(ratio, abs=1e-4)  # rounded to 4 decimals
    assert ma["devices_per_person"] > 1.1  # people of 1-3 devices, a tenth of them unlinked
    assert ma["active_people"] < ma["active_devices"]


def test_the_spark_job_reads_its_spec_from_the_lake_and_leaves_no_scratch(runs) -> None:
    for name in ("spark", "spark-people"):
        lake, result, _ = runs[name]
        meta = materialization(result)
        assert meta["spark_spec_bytes"] > 1000
        assert not lake.list("work/_engine")
