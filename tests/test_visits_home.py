"""Visits, home, demographics, brand affinity and accuracy: small constructed cases."""

import numpy as np
import pandas as pd

from near_assets.science.accuracy import home_accuracy, stay_accuracy, visit_accuracy
from near_assets.science.affinity import brand_affinity
from near_assets.science.demographics import area_coverage, device_demographics
from near_assets.science.home import homes_by_day, infer_homes
from near_assets.science.visits import PoiIndex, match_visits

DAY = pd.Timestamp("2024-03-04", tz="UTC")
LAT0, LON0 = 40.70, -74.00
M = 111_320.0
KX = M * np.cos(np.radians(LAT0))


def square(poi_id: str, east: float, north: float, half: float = 20.0, brand=None) -> dict:
    x0, x1 = LON0 + (east - half) / KX, LON0 + (east + half) / KX
    y0, y1 = LAT0 + (north - half) / M, LAT0 + (north + half) / M
    wkt = f"POLYGON (({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"
    return {"poi_id": poi_id, "name": poi_id, "brand": brand, "category": "x", "geometry_wkt": wkt}


def stay(device: str, start_h: float, end_h: float, east: float, north: float, day: int = 0):
    return {
        "device_id": device,
        "start_ts": DAY + pd.Timedelta(days=day, hours=start_h),
        "end_ts": DAY + pd.Timedelta(days=day, hours=end_h),
        "lat": LAT0 + north / M,
        "lon": LON0 + east / KX,
    }


POIS = pd.DataFrame(
    [
        square("shop", 0, 0, brand="acme"),
        square("cafe", 100, 0, brand="brew"),
        square("far", 5000, 0),
    ]
)


def test_stay_centroids_match_the_polygon_they_fall_in_with_dwell():
    stays = pd.DataFrame([stay("a", 10, 10.5, 2, 3), stay("a", 11, 12, 100, 5)])
    visits = match_visits(stays, POIS)
    assert list(visits["poi_id"]) == ["shop", "cafe"]
    assert list(visits["dwell_s"]) == [1800.0, 3600.0]
    assert list(visits["brand"]) == ["acme", "brew"]
    assert (visits["distance_m"] == 0).all()


def test_a_centroid_just_outside_the_edge_matches_and_a_far_one_does_not():
    stays = pd.DataFrame([stay("a", 10, 11, 35, 0), stay("a", 12, 13, 50, 300)])
    visits = match_visits(stays, POIS, max_distance_m=25)
    assert list(visits["poi_id"]) == ["shop"]
    assert 10 < visits["distance_m"].iloc[0] < 20


def test_short_stays_are_not_visits_and_an_index_can_be_reused():
    index = PoiIndex(POIS)
    stays = pd.DataFrame([stay("a", 10, 10.05, 0, 0), stay("b", 10, 11, 0, 0)])
    visits = match_visits(stays, index, min_dwell_s=300)
    assert list(visits["device_id"]) == ["b"]


def nights(device: str, east: float, days: int, start_h=22.0, end_h=31.0) -> list[dict]:
    return [stay(device, start_h, end_h, east, 0, day=d) for d in range(days)]


def test_home_is_the_night_time_place_with_nights_counted():
    stays = pd.DataFrame(nights("a", 0, 5) + [stay("a", 9, 17, 3000, 0, day=d) for d in range(5)])
    (home,) = infer_homes(stays).itertuples()
    assert abs(home.lon - LON0) * KX < 20
    assert home.nights == 5
    assert home.method == "night"
    assert home.confidence > 0.8


def test_weak_evidence_is_less_certain_and_a_cut_on_confidence_keeps_the_strong():
    weak = pd.DataFrame([stay("weak", 23.2, 23.7, 0, 0), stay("weak", 10, 12, 500, 0)])
    strong = pd.DataFrame(nights("strong", 0, 7))
    both = pd.concat([weak, strong])
    conf = infer_homes(both, min_confidence=0.0).set_index("device_id")["confidence"]
    assert conf["weak"] < conf["strong"]
    cut = (conf["weak"] + conf["strong"]) / 2
    assert list(infer_homes(both, min_confidence=cut)["device_id"]) == ["strong"]


def test_a_device_seen_only_by_day_has_no_home():
    office = pd.DataFrame([stay("d", 9, 17, 3000, 0, day=d) for d in range(5)])
    assert infer_homes(office, min_confidence=0.0).empty


def test_a_night_shift_worker_rests_by_day_at_home():
    work_nights = nights("n", 4000, 5, start_h=22, end_h=30)
    days_home = [stay("n", 6.5, 21.5, 0, 0, day=d) for d in range(1, 6)]
    (home,) = infer_homes(pd.DataFrame(work_nights + days_home)).itertuples()
    assert home.method == "day_rest"
    assert abs(home.lon - LON0) * KX < 20


def test_a_day_worker_with_long_office_days_keeps_the_night_home():
    home_nights = nights("d", 0, 5, start_h=19.5, end_h=31)
    office = [stay("d", 7.5, 18.5, 4000, 0, day=d) for d in range(1, 6)]
    (home,) = infer_homes(pd.DataFrame(home_nights + office)).itertuples()
    assert home.method == "night"
    assert abs(home.lon - LON0) * KX < 20


def test_home_nights_use_the_local_time_zone():
    stays = pd.DataFrame([stay("a", 3, 10, 0, 0, day=d) for d in range(3)])
    utc = infer_homes(stays, timezone="UTC")
    tokyo = infer_homes(stays, timezone="Asia/Tokyo")  # 03-10 UTC is 12-19 local
    assert utc["method"].iloc[0] == "night"
    # no night in Tokyo: placed by its evenings (the 19 h local hour), never by day rest alone
    assert tokyo["method"].iloc[0] == "evening"
    afternoons = pd.DataFrame([stay("a", 3, 9.5, 0, 0, day=d) for d in range(3)])  # 12-18:30
    assert infer_homes(afternoons, timezone="Asia/Tokyo", min_confidence=0.0).empty


def test_homes_by_day_uses_only_the_trailing_window():
    old = nights("a", 0, 3)
    new = [stay("a", 22, 31, 2000, 0, day=d) for d in range(10, 13)]
    homes = homes_by_day(pd.DataFrame(old + new), as_of=["2024-03-06", "2024-03-16"], window_days=4)
    east = (homes["lon"] - LON0) * KX
    assert list(homes["date"]) == ["2024-03-06", "2024-03-16"]
    np.testing.assert_allclose(east, [0, 2000], atol=20)


AREAS = pd.DataFrame(
    {
        "area_id": ["A", "B"],
        "geometry_wkt": [
            square("A", 0, 0, 500)["geometry_wkt"],
            square("B", 2000, 0, 500)["geometry_wkt"],
        ],
        "population": [1000, 500],
        "median_income": [50_000.0, 80_000.0],
    }
)


def test_demographics_take_the_home_area_attributes_and_coverage_counts_devices():
    homes = pd.DataFrame(
        {
            "device_id": ["a", "b", "c", "d"],
            "lat": LAT0,
            "lon": [LON0, LON0 + 100 / KX, LON0 + 2000 / KX, LON0 + 9000 / KX],
            "confidence": 0.9,
        }
    )
    devices = device_demographics(homes, AREAS)
    assert list(devices["area_id"]) == ["A", "A", "B"]
    assert list(devices["median_income"]) == [50_000.0, 50_000.0, 80_000.0]
    cover = area_coverage(devices, AREAS)
    assert list(cover["panel_devices"]) == [2, 1]
    np.testing.assert_allclose(cover["coverage"], [0.002, 0.002])


def test_brand_affinity_ranks_loyal_devices_first_and_shrinks_light_users():
    rows = (
        [("loyal", "acme", 1800)] * 6
        + [("loyal", "brew", 600)]
        + [("once", "acme", 600)]
        + [(f"p{i}", "brew", 600) for i in range(20)]
        + [(f"p{i}", "acme", 600) for i in range(5)]
    )
    visits = pd.DataFrame(rows, columns=["device_id", "brand", "dwell_s"])
    scores = brand_affinity(visits)
    acme = scores[scores["brand"] == "acme"].set_index("device_id")["affinity"]
    lift = scores[scores["brand"] == "acme"].set_index("device_id")["lift"]
    assert acme.index[0] == "loyal"
    assert acme["loyal"] > acme["once"]
    assert lift["loyal"] > lift["once"] > 1  # one visit: pulled toward the baseline (lift 1)
    assert lift["once"] < 1.5
    assert scores.set_index(["device_id", "brand"]).index.is_unique


def test_accuracy_counts_overlap_and_distance_for_stays_and_poi_for_visits():
    truth = pd.DataFrame([stay("a", 1, 3, 0, 0), stay("a", 5, 6, 1000, 0), stay("a", 8, 9, 0, 0)])
    truth["poi_id"] = [None, "shop", None]
    found = pd.DataFrame([stay("a", 1.2, 2.8, 10, 0), stay("a", 5.1, 5.9, 3000, 0)])
    acc = stay_accuracy(found, truth, "2024-03-04")
    assert acc["stay_precision"] == 0.5
    assert acc["stay_recall"] == round(1 / 3, 4)
    visits = found.assign(poi_id=["x", "shop"])
    vacc = visit_accuracy(visits, truth, "2024-03-04")
    assert (vacc["visit_precision"], vacc["visit_recall"]) == (0.5, 1.0)


def test_home_accuracy_reports_precision_coverage_and_a_confidence_threshold():
    truth = pd.DataFrame({"device_id": list("abcd"), "home_lat": LAT0, "home_lon": LON0})
    homes = pd.DataFrame(
        {
            "device_id": list("abc"),
            "lat": [LAT0, LAT0 + 50 / M, LAT0 + 900 / M],
            "lon": LON0,
            "confidence": [0.9, 0.8, 0.2],
        }
    )
    acc = home_accuracy(homes, truth, eligible_devices=list("abcd"))
    assert acc["home_within_200m"] == round(2 / 3, 4)
    assert acc["home_coverage"] == 0.75
    assert acc["home_threshold_for_98pct"] == 0.8
    assert acc["home_coverage_at_98pct"] == 0.5
