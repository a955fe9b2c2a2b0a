"""brand_affinity and campaign_insights from visit_history or from the daily visits; affinity
counting devices or people.

One generated lake (people of 1-3 devices, visits with brands from the generator's truth, the
identity graph of the second-to-last day from its truth with a tenth of the devices left out);
``visit_history`` is published by its own asset. With mean dwells and a 7-day window the day's
history holds everything the score needs: the rows must be the same as from the window of
visits (keys and counts exact, floats within 2e-3 absolute: the history keeps dwell sums to the
millisecond, which moves scores by ~1e-6), on both engines; a day without a history partition
falls back to the window. A campaign (planted here: 80 exposed devices, window of the last 5 days, 3 pre-period days)
gets the same panel and lift from differences of history snapshots as from the daily visits.
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
from near_assets.models import visit_history as vh
from near_assets.synth import generate
from near_assets.tables import BRAND_AFFINITY, IDENTITY_GRAPH, VISIT_HISTORY
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

START, DAYS = "2024-03-01", 9
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
LAST = DATES[-2:]
MEAN7 = {"dwell": "mean", "window_days": 7}
CID = "cmp-history"
LIVE_UNTIL = str((pd.Timestamp(DATES[4]) + pd.Timedelta(days=14)).date())  # measured as of LAST


def resources(lake: LakeResource) -> dict[str, Any]:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


def tags(first: str, last: str) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    lake = LakeResource(root=str(tmp_path_factory.mktemp("affinity") / "lake"))
    summary = generate(
        lake, devices=300, start=START, days=DAYS, seed=5, progress=False, people=True
    )
    pois = lake.read_parquet("reference/pois")[["poi_id", "brand"]]
    homes = lake.read_parquet("truth/homes").rename(columns={"home_lat": "lat", "home_lon": "lon"})
    homes = homes.assign(confidence=0.9, nights=7, hours=20, method="truth")
    home_columns = ["device_id", "lat", "lon", "confidence", "nights", "hours", "method"]
    for day in summary["per_day"]:
        lake.write_parquet(homes[home_columns], f"curated/home_location/date={day}")
        stays = lake.read_parquet(f"truth/stays/date={day}")
        v = stays[stays["kind"] == "poi"].merge(pois, on="poi_id", how="left")
        v["dwell_s"] = (v["end_ts"] - v["start_ts"]).dt.total_seconds()
        v["distance_m"] = 0.0
        columns = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s", "brand", "distance_m"]
        lake.write_parquet(v[columns], f"curated/visits/date={day}")
    history = dg.materialize(
        [mobility.visits, vh.visit_history],
        selection=[vh.visit_history],
        resources=resources(lake),
        tags=tags(DATES[0], DATES[-1]),
    )
    assert history.success
    truth = lake.read_parquet("truth/identity").sort_values("device_id", ignore_index=True)
    graph = truth.iloc[[i for i in range(len(truth)) if i % 10]]
    lake.write_parquet(graph[["device_id", "person_id"]], IDENTITY_GRAPH.key(LAST[0]))
    brand = pois["brand"].dropna().value_counts().index[0]
    lake.write_json(
        f"reference/campaigns/{CID}.json",
        {"campaign_id": CID, "brand": brand, "start_date": DATES[4], "end_date": LIVE_UNTIL},
    )
    exposed = sorted(homes["device_id"])[::3][:80]
    lake.write_parquet(
        pd.DataFrame(
            {"device_id": exposed, "ts": pd.Timestamp(DATES[4], tz="UTC") + pd.Timedelta(hours=9)}
        ),
        f"raw/exposures/campaign_id={CID}",
    )
    return lake


def campaign(lake: LakeResource, **config: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """campaign_insights of the planted campaign as of the last day, 3 pre-period days."""
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [CID])
        result = dg.materialize(
            [campaign_insights],
            partition_key=CID,
            instance=instance,
            resources=resources(lake),
            run_config={
                "ops": {
                    "campaign_insights": {"config": {"as_of": DATES[-1], "pre_days": 3, **config}}
                }
            },
        )
    assert result.success
    (mat,) = result.asset_materializations_for_node("campaign_insights")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return lake.read_parquet(f"curated/campaign_insights/campaign_id={CID}"), meta


def run(lake: LakeResource, **config: Any) -> dict[str, Any]:
    """brand_affinity of the LAST days with ``config``: each day's rows and metadata."""
    result = dg.materialize(
        [mobility.visits, profiles.brand_affinity],
        selection=[profiles.brand_affinity],
        resources=resources(lake),
        tags=tags(*LAST),
        run_config={"ops": {"brand_affinity": {"config": config}}},
    )
    assert result.success
    out: dict[str, Any] = {}
    for mat in result.asset_materializations_for_node("brand_affinity"):
        meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        out[mat.partition] = (BRAND_AFFINITY.read(lake, mat.partition), meta)
    return out


def same_rows(a: pd.DataFrame, b: pd.DataFrame, rtol: float, atol: float = 1e-9) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 50
    a = a.sort_values(["device_id", "brand"], ignore_index=True)
    b = b.sort_values(["device_id", "brand"], ignore_index=True)
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            assert np.allclose(a[col], b[col], rtol=rtol, atol=atol), col
        else:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), col


FIGURES = ("visits_in_window", "devices", "brands", "share_positive")


@pytest.fixture(scope="module")
def pandas_runs(lake: LakeResource) -> dict[str, Any]:
    runs = {
        (count, use_history): run(lake, count=count, use_history=use_history, **MEAN7)
        for count in ("devices", "people")
        for use_history in (True, False)
    }
    runs["default"] = run(lake)
    runs["people-median"] = run(lake, count="people")
    return runs


def test_affinity_from_history_equals_affinity_from_the_window(pandas_runs) -> None:
    for count in ("devices", "people"):
        history, window = pandas_runs[(count, True)], pandas_runs[(count, False)]
        for day in LAST:
            (a, ma), (b, mb) = history[day], window[day]
            # the history keeps dwell sums to the millisecond: 1e-3 s on dwell, ~1e-6 on scores
            same_rows(a, b, rtol=1e-6, atol=2e-3)
            assert (ma["source"], mb["source"]) == ("history", "visits")
            for key in FIGURES:
                assert ma[key] == pytest.approx(mb[key], rel=1e-9), key


def test_the_default_reads_the_window_and_counts_devices(pandas_runs) -> None:
    for day in LAST:
        df, meta = pandas_runs["default"][day]
        assert (meta["source"], meta["dwell"], meta["count_unit"]) == (
            "visits",
            "median",
            "devices",
        )
        assert "devices_per_person" not in meta and len(df) > 50


def test_counting_people_scores_fewer_rows_one_per_person(pandas_runs, lake) -> None:
    graph = IDENTITY_GRAPH.read(lake, LAST[0])
    persons = set(graph["person_id"])
    for key in [("people", True), "people-median"]:
        for day in LAST:
            people, meta = pandas_runs[key][day]
            base = ("devices", True) if key != "people-median" else "default"
            devices, _ = pandas_runs[base][day]
            assert meta["count_unit"] == "people" and meta["identity_graph_day"] == LAST[0]
            assert people["device_id"].nunique() < devices["device_id"].nunique()
            assert meta["devices_per_person"] > 1.2
            assert not people.duplicated(["device_id", "brand"]).any()
            # a device of the graph is scored under its person's id, never its own
            absorbed = set(graph.loc[graph["device_id"] != graph["person_id"], "device_id"])
            assert not (set(people["device_id"]) & absorbed)
            assert set(people["device_id"]) & persons


@pytest.fixture(scope="module")
def fallback_lake(lake: LakeResource, tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    """A copy of the lake without the last day's history (that day falls back to the window)."""
    root = tmp_path_factory.mktemp("fallback") / "lake"
    shutil.copytree(lake.root, root)
    copy = LakeResource(root=str(root))
    copy.delete(VISIT_HISTORY.key(LAST[1]))
    return copy


# one Spark job (30-40 s on an idle laptop) per test; generous under a shared machine's load
@pytest.mark.spark
@pytest.mark.timeout(1200)
@pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM")
@pytest.mark.parametrize(
    ("config", "sources"),
    [
        ({"count": "people", "use_history": True, **MEAN7}, ("history", "visits")),
        ({"count": "people"}, ("visits", "visits")),
    ],
    ids=["mean-history-fallback", "median-window"],
)
def test_spark_gives_the_same_rows_counting_people(
    fallback_lake: LakeResource, config: dict[str, Any], sources: tuple[str, str]
) -> None:
    """Day 1 reads its history (mean dwells), day 2 falls back to the window; pandas and Spark
    (one job) agree, counting people."""
    pandas = run(fallback_lake, engine="pandas", **config)
    spark = run(fallback_lake, engine="spark", **config)
    for day, source in zip(LAST, sources, strict=True):
        (a, ma), (b, mb) = pandas[day], spark[day]
        same_rows(a, b, rtol=1e-9)
        assert ma["source"] == mb["source"] == source
        assert (ma["engine"], mb["engine"]) == ("pandas", "spark")
        for key in (*FIGURES, "devices_scored", "devices_per_person"):
            assert ma[key] == pytest.approx(mb[key], rel=1e-9), key
        assert ma["identity_graph_day"] == mb["identity_graph_day"] == LAST[0]


CAMPAIGN_FIGURES = (
    "exposed_devices", "control_devices", "strata", "unmatched_exposed", "exposed_brand_visits",
    "window_days_read", "pre_days_read", "exposed_visit_rate", "control_visit_rate", "lift",
)  # fmt: skip


def test_campaign_panel_from_history_snapshots_equals_the_daily_visits(lake) -> None:
    a, ma = campaign(lake, engine="pandas", use_history=True)
    b, mb = campaign(lake, engine="pandas", use_history=False)
    assert ma["visits_source"] == "visit_history" and mb["visits_source"] == "visits"
    assert ma["history_snapshots"] == ", ".join([DATES[0], DATES[3], DATES[-1]])
    pd.testing.assert_frame_equal(a, b)
    for key in CAMPAIGN_FIGURES:
        assert ma[key] == mb[key], key
    assert ma["exposed_brand_visits"] > 0 and ma["control_devices"] >= 30


@pytest.mark.spark
@pytest.mark.timeout(1200)
@pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM")
def test_campaign_panel_from_history_is_the_same_on_spark(lake) -> None:
    a, ma = campaign(lake, engine="pandas", use_history=True)
    b, mb = campaign(lake, engine="spark", use_history=True)
    assert ma["visits_source"] == mb["visits_source"] == "visit_history"
    assert a["exposed_devices"].tolist() == b["exposed_devices"].tolist()
    for key in CAMPAIGN_FIGURES:
        assert ma[key] == pytest.approx(mb[key], rel=1e-9), key
