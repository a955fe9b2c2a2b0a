"""Cross identity (issue 16 item 3) on a small generated lake with people and households
(the generator's ``people`` option): published through write-audit-publish, scored against the
truth, blocked by its audits; and the science on hand-made stays."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from near_assets import mobility
from near_assets.models import identity_graph as ig
from near_assets.science import identity
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

START, DAYS = "2024-03-04", 4
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]


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


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    """200 devices in people and households, 4 days; stay points published for every day."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("identity") / "lake"))
    generate(
        lake, seed=5, devices=200, start=START, days=DAYS, dirt=False, progress=False, people=True
    )
    for day in DATES:
        raw = lake.read_parquet(f"raw/pings/date={day}")
        raw["ts"] = to_utc(raw["ts"])  # stand-in for clean_pings (tested elsewhere)
        lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
    assert run_range(lake, [mobility.stay_points], DATES[0], DATES[-1]).success
    return lake


def test_identity_graph_links_households_and_audits_block(lake: LakeResource) -> None:
    result = run_range(lake, [ig.identity_graph], DATES[0], DATES[-1])
    assert result.success
    per_day = result.asset_materializations_for_node("identity_graph")[-1].metadata
    figures = per_day["per_day"].value[DATES[-1]]
    assert figures["homes_from"] == "night stays"  # home_location not materialized here
    assert figures["truth_household_precision"] >= 0.95
    assert figures["truth_household_recall"] >= 0.6
    graph = ig.IDENTITY_GRAPH.read(lake, DATES[-1])
    assert list(graph.columns) == identity.GRAPH_COLUMNS
    assert graph["device_id"].is_unique and graph["confidence"].between(0, 1).all()
    linked = graph[graph["confidence"] > 0]
    assert len(linked) > 20 and (graph["person_id"] <= graph["device_id"]).all()
    truth = lake.read_parquet("truth/identity")
    acc = identity.pairwise_accuracy(graph, truth, "person_id")
    assert acc["precision"] >= 0.95

    # an audit that fails blocks the publish and production stays as it was
    before = ig.IDENTITY_GRAPH.read(lake, DATES[-1])
    blocked = dg.materialize(
        [ig.identity_graph],
        resources=resources(lake),
        partition_key=DATES[-1],
        run_config={"ops": {"identity_graph": {"config": {"max_household_devices": 1}}}},
        raise_on_error=False,
    )
    assert not blocked.success
    checks = [c for c in blocked.get_asset_check_evaluations() if c.check_name == "household_size"]
    assert checks and not any(c.passed for c in checks)
    pd.testing.assert_frame_equal(ig.IDENTITY_GRAPH.read(lake, DATES[-1]), before)


def test_identity_graph_reads_home_location_when_published(lake: LakeResource) -> None:
    homes = run_range(
        lake, [mobility.stay_points, mobility.home_ping_hours, mobility.home_location], *DATES[::3]
    )
    assert homes.success
    result = dg.materialize([ig.identity_graph], resources=resources(lake), partition_key=DATES[-1])
    assert result.success
    figures = result.asset_materializations_for_node("identity_graph")[-1].metadata
    assert figures["homes_from"].value == "home_location"
    assert figures["truth_household_precision"].value >= 0.95


def _stay(device: str, day: str, h0: float, h1: float, lat: float, lon: float) -> dict:
    t = pd.Timestamp(day, tz="UTC")
    return {
        "device_id": device,
        "start_ts": t + pd.Timedelta(hours=h0),
        "end_ts": t + pd.Timedelta(hours=h1),
        "lat": lat,
        "lon": lon,
    }


def test_person_household_and_neighbour_are_told_apart() -> None:
    home, near_home, office, office2 = (
        (52.5, 13.4),
        (52.5004, 13.4),  # a neighbour ~45 m away
        (52.52, 13.45),
        (52.48, 13.35),
    )
    rows = []
    for day in ["2024-03-04", "2024-03-05", "2024-03-06"]:
        for dev in ("a1", "a2", "b1"):  # a1/a2 one person, b1 the same home
            rows.append(_stay(dev, day, 0, 7.5, *home))
            rows.append(_stay(dev, day, 19, 24, *home))
        for dev in ("a1", "a2"):
            rows.append(_stay(dev, day, 9, 17, *office))
        rows.append(_stay("b1", day, 9, 17, *office2))
        rows.append(_stay("n1", day, 0, 7, *near_home))
        rows.append(_stay("n1", day, 20, 24, *near_home))
    graph, edges = identity.link_devices(pd.DataFrame(rows))
    g = graph.set_index("device_id")
    assert g.loc["a1", "person_id"] == g.loc["a2", "person_id"] == "a1"
    assert g.loc["b1", "person_id"] == "b1" and g.loc["b1", "household_id"] == "a1"
    assert g.loc["n1", "household_id"] == "n1" and g.loc["n1", "confidence"] == 0
    assert set(edges["kind"]) == {"person", "household"}


def test_a_chain_of_neighbours_is_split_not_published_whole() -> None:
    ids = [f"d{i:02d}" for i in range(15)]
    chain = pd.DataFrame(
        {
            "device_a": ids[:-1],
            "device_b": ids[1:],
            "nights": 3,
            "night_dist_m": 5.0,
            "days_elsewhere": 0,
            "home_dist_m": 5.0,
            "score": [0.99 if i % 5 else 0.6 for i in range(14)],
            "kind": "household",
        }
    )
    kept = identity.split_large(pd.Series(ids), chain)
    graph = identity.identity_graph(pd.Series(ids), kept)
    sizes = graph.groupby("household_id").size()
    assert sizes.max() <= identity.IdentityParams().max_household
    assert len(kept) == 11  # the three weak links (0.6) cut, the strong ones kept


def test_identity_graph_accuracy_check_scores_pairs(lake: LakeResource) -> None:
    from near_assets.evaluation.models import identity_graph_accuracy

    result = dg.materialize(
        [ig.identity_graph, identity_graph_accuracy],
        resources=resources(lake),
        partition_key=DATES[-1],
    )
    assert result.success
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "identity_graph_accuracy"
    ]
    assert check.passed
    figures = {k: v.value for k, v in check.metadata.items()}
    assert figures["household_precision"] >= 0.95 and figures["person_precision"] >= 0.95
    assert figures["household_pairs_true"] > 0
    asset_meta = result.asset_materializations_for_node("identity_graph")[-1].metadata
    assert figures["household_recall"] == asset_meta["truth_household_recall"].value
