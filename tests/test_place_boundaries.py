"""PlaceMatrix (issue 16 item 2): the generator's true footprints, the science, the asset."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import shapely

from near_assets import mobility
from near_assets.evaluation import places
from near_assets.models import place_boundaries as pb
from near_assets.science import placematrix
from near_assets.science.stays import EARTH_M_PER_DEG, to_utc
from near_assets.science.visits import match_visits
from near_assets.synth import generate
from near_assets.tables import CLEAN_PINGS, RAW_PINGS, REFERENCE_POIS, VISITS
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

START, DAYS = "2024-03-04", 7
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
LAT0, LON0 = 40.70, -74.00
KX = np.cos(np.radians(LAT0)) * EARTH_M_PER_DEG


def box(cx: float, cy: float, hx: float, hy: float) -> str:
    """A WKT box from local metres around (LAT0, LON0)."""
    lon0, lon1 = LON0 + (cx - hx) / KX, LON0 + (cx + hx) / KX
    lat0, lat1 = LAT0 + (cy - hy) / EARTH_M_PER_DEG, LAT0 + (cy + hy) / EARTH_M_PER_DEG
    return shapely.box(lon0, lat0, lon1, lat1).wkt


def stays_in(
    rng: np.random.Generator, cx: float, cy: float, hx: float, hy: float, n: int, tag: str
) -> pd.DataFrame:
    """``n`` 30-minute stays of ``n`` devices spread over the central 75 % of a true box."""
    x = cx + rng.uniform(-0.75, 0.75, n) * hx
    y = cy + rng.uniform(-0.75, 0.75, n) * hy
    start = pd.Timestamp("2024-03-04 10:00", tz="UTC") + pd.to_timedelta(np.arange(n), "min")
    return pd.DataFrame(
        {
            "device_id": [f"{tag}{i}" for i in range(n)],
            "start_ts": start,
            "end_ts": start + pd.Timedelta(minutes=30),
            "lat": LAT0 + y / EARTH_M_PER_DEG,
            "lon": LON0 + x / KX,
        }
    )


@pytest.fixture(scope="module")
def case() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Four POIs: A delivered 45 m off, B and C one building (overlapping delivered polygons),
    D with only 5 visitors."""
    rng = np.random.default_rng(3)
    truth = pd.DataFrame(
        {
            "poi_id": ["A", "B", "C", "D"],
            "geometry_wkt": [
                box(0, 0, 20, 15),
                box(300, 0, 15, 20),
                box(330, 0, 15, 20),
                box(600, 0, 20, 20),
            ],
        }
    )
    pois = pd.DataFrame(
        {
            "poi_id": ["A", "B", "C", "D"],
            "brand": ["x", None, None, None],
            "geometry_wkt": [
                box(45, 0, 20, 15),  # offset
                box(309, 0, 24, 20),  # 285 .. 333: its end of the building and most of C's
                box(321, 0, 24, 20),  # 297 .. 345
                box(620, 0, 30, 30),
            ],
        }
    )
    stays = pd.concat(
        [
            stays_in(rng, 0, 0, 20, 15, 200, "a"),
            stays_in(rng, 300, 0, 15, 20, 200, "b"),
            stays_in(rng, 330, 0, 15, 20, 200, "c"),
            stays_in(rng, 600, 0, 20, 20, 5, "d"),
        ],
        ignore_index=True,
    )
    return truth, pois, stays


def test_refined_boundaries_beat_the_delivered_polygons(case) -> None:
    truth, pois, stays = case
    found = placematrix.refine_boundaries(stays, pois)
    assert list(found.columns) == placematrix.BOUNDARY_COLUMNS
    assert found["poi_id"].tolist() == ["A", "B", "C", "D"]
    refined = placematrix.boundary_iou(found, truth).set_index("poi_id")["iou"]
    delivered = placematrix.boundary_iou(pois, truth).set_index("poi_id")["iou"]
    assert refined["A"] > 0.75 and delivered["A"] < 0.2
    assert found.set_index("poi_id").loc["A", "shift_m"] > 35
    # the shared building is split between its two shops, without overlap
    assert refined["B"] > 0.7 and refined["C"] > 0.7
    assert refined["B"] > delivered["B"] and refined["C"] > delivered["C"]
    b, c = shapely.from_wkt(found.set_index("poi_id").loc[["B", "C"], "geometry_wkt"])
    assert shapely.area(shapely.intersection(b, c)) < 1e-12
    # thin evidence keeps the delivered polygon
    d = found.set_index("poi_id").loc["D"]
    assert d["source"] == "delivered" and d["geometry_wkt"] == pois.loc[3, "geometry_wkt"]
    assert d["iou_with_delivered"] == 1.0
    assert placematrix.boundary_invariants(found).all()
    # deterministic
    pd.testing.assert_frame_equal(found, placematrix.refine_boundaries(stays, pois))


def test_visits_match_the_refined_polygons(case) -> None:
    _, pois, stays = case
    found = placematrix.refine_boundaries(stays, pois)
    on_a = stays[stays["device_id"].str.startswith("a")]
    delivered = match_visits(on_a, pois)
    refined = match_visits(on_a, placematrix.with_boundaries(pois, found))
    assert (refined["poi_id"] == "A").mean() > 0.97
    assert len(delivered) < 0.9 * len(on_a)  # the far side of A is > 25 m from its polygon
    assert refined["brand"].eq("x").all()  # the POI's other columns are kept
    on_c = stays[stays["device_id"].str.startswith("c")]
    assert (
        match_visits(on_c, placematrix.with_boundaries(pois, found))["poi_id"] == "C"
    ).mean() > 0.97


def test_generator_footprints_option_keeps_pings_inside_true_footprints(tmp_path) -> None:
    lake = LakeResource(root=str(tmp_path / "lake"))
    generate(lake, seed=4, devices=150, start=START, days=1, progress=False, footprints=True)
    truth = lake.read_parquet("truth/poi_footprints")
    pois = REFERENCE_POIS.read(lake)
    assert set(truth["kind"]) == {"exact", "offset", "oversized", "undersized", "shared"}
    assert (truth["poi_id"].to_numpy() == pois["poi_id"].to_numpy()).all()
    assert (truth["delivered_wkt"] == pois["geometry_wkt"]).all()
    shared = truth[truth["kind"] == "shared"]
    assert len(shared) % 2 == 0 and shared["partner_poi_id"].notna().all()
    assert truth.loc[truth["kind"] == "offset", "iou_delivered"].median() < 0.4
    # every visit's true stay spot lies inside its POI's true footprint
    stays = lake.read_parquet(f"truth/stays/date={START}").dropna(subset=["poi_id"])
    geoms = shapely.from_wkt(truth.set_index("poi_id").loc[stays["poi_id"], "geometry_wkt"])
    inside = shapely.contains_xy(geoms, stays["lon"].to_numpy(), stays["lat"].to_numpy())
    assert len(stays) > 50 and inside.all()


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    """800 devices with true footprints, 7 days; stay points published for every day."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("placematrix") / "lake"))
    generate(
        lake,
        seed=6,
        devices=800,
        start=START,
        days=DAYS,
        dirt=False,
        campaigns=0,
        progress=False,
        footprints=True,
    )
    for day in DATES:
        raw = RAW_PINGS.read(lake, day)
        raw["ts"] = to_utc(raw["ts"])  # stand-in for clean_pings (tested elsewhere)
        CLEAN_PINGS.write(lake, raw.sort_values(["device_id", "ts"]), day)
    result = dg.materialize(
        [mobility.stay_points],
        resources=resources(lake),
        tags={
            "dagster/asset_partition_range_start": DATES[0],
            "dagster/asset_partition_range_end": DATES[-1],
        },
    )
    assert result.success
    return lake


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


ENGINES = ("pandas", "spark")


@pytest.fixture(scope="module")
def runs(lake: LakeResource) -> dict[str, tuple[dg.ExecuteInProcessResult, dict]]:
    """The asset and its accuracy check on the last two days (one run, a window each), once
    per engine (one Spark job), and the rows each run published per day."""
    out = {}
    for engine in ENGINES:
        config = {"min_stays": 10, "min_devices": 6, "engine": engine}
        result = dg.materialize(
            [pb.place_boundaries, places.place_boundaries_accuracy],
            resources=resources(lake),
            tags={
                "dagster/asset_partition_range_start": DATES[-2],
                "dagster/asset_partition_range_end": DATES[-1],
            },
            run_config={"ops": {"place_boundaries": {"config": config}}},
        )
        assert result.success, engine
        out[engine] = result, {d: pb.PLACE_BOUNDARIES.read(lake, d) for d in DATES[-2:]}
    return out


def day_meta(result: dg.ExecuteInProcessResult, day: str) -> dict:
    (mat,) = [
        m for m in result.asset_materializations_for_node("place_boundaries") if m.partition == day
    ]
    return mat.metadata


def test_place_boundaries_asset_publishes_every_poi_with_its_checks(
    lake: LakeResource, runs: dict
) -> None:
    result, published = runs["pandas"]
    found = published[DATES[-1]]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    for name in ("unique_keys", "valid_polygons", "known_coverage", "place_boundaries_accuracy"):
        assert any(n.startswith(name) for n in checks), name
    assert all(c.passed for c in checks.values())
    meta = day_meta(result, DATES[-1])
    assert meta["engine"].value == "pandas"
    assert meta["window_days_found"].value == DAYS
    assert day_meta(result, DATES[-2])["window_days_found"].value == DAYS - 1
    assert meta["refined"].value > 10
    assert meta["truth_median_iou_refined"].value > meta["truth_median_iou_delivered"].value
    accuracy = checks["place_boundaries_accuracy"].metadata  # one run of two days
    assert accuracy["days_scored"].value == 2
    last = accuracy["per_day"].value[DATES[-1]]
    assert last["truth_median_iou_refined_pois"] > last["truth_median_iou_refined_pois_delivered"]
    pois = REFERENCE_POIS.read(lake)
    assert list(found.columns) == placematrix.BOUNDARY_COLUMNS
    assert sorted(found["poi_id"]) == sorted(pois["poi_id"]) and found["poi_id"].is_unique
    assert set(found["source"]) == {"placematrix", "delivered"}


def test_both_engines_publish_the_same_rows(runs: dict) -> None:
    (pandas_run, pandas_rows), (spark_run, spark_rows) = runs["pandas"], runs["spark"]
    for day in DATES[-2:]:
        pd.testing.assert_frame_equal(spark_rows[day], pandas_rows[day])
        meta = {"pandas": day_meta(pandas_run, day), "spark": day_meta(spark_run, day)}
        assert meta["spark"]["engine"].value == "spark"
        for key in ("window_days_found", "stays", "refined", "truth_median_iou_refined"):
            assert meta["spark"][key].value == meta["pandas"][key].value, key
    assert (pandas_rows[DATES[-1]]["source"] == "placematrix").sum() > 10
    checks = spark_run.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)


def test_science_steps_give_the_same_rows_on_any_cut(case) -> None:
    """What the Spark job relies on: stays assigned in any batches, POIs in any buckets, rows
    in any order give ``refine_boundaries``' rows."""
    _, pois, stays = case
    p = placematrix.PlaceMatrixParams(min_stays=10, min_devices=6)
    whole = placematrix.refine_boundaries(stays, pois, p)
    index = placematrix.PoiIndex.of(pois)
    shuffled = stays.sample(frac=1.0, random_state=7)
    assigned = pd.concat(
        [placematrix.assign_stays(shuffled.iloc[i::3], index, p) for i in range(3)],
        ignore_index=True,
    )
    stats = pd.concat(
        [placematrix.cluster_stats(g, index, p) for _, g in assigned.groupby(assigned["poi"] % 2)],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(placematrix.footprints(index, stats, p), whole)


def test_visits_may_match_the_footprints_of_the_day_before(lake: LakeResource, runs: dict) -> None:
    """``visits`` with ``place_boundaries: true`` reads the footprints published for D-1."""
    found = {}
    for refined in (False, True):
        result = dg.materialize(
            [mobility.visits],
            resources=resources(lake),
            partition_key=DATES[-1],
            run_config={"ops": {"visits": {"config": {"place_boundaries": refined}}}},
        )
        assert result.success
        (mat,) = result.asset_materializations_for_node("visits")
        found[refined] = mat.metadata["polygons"].value, VISITS.read(lake, DATES[-1])
    assert found[False][0] == "delivered"
    assert found[True][0] == f"place_boundaries {DATES[-2]}"
    assert len(found[True][1]) != len(found[False][1])  # other polygons, other matches
