"""Stay detection: specification by small constructed tracks (metres, seconds, UTC)."""

import numpy as np
import pandas as pd
import pytest

from near_assets.science.stays import STAY_COLUMNS, StayParams, detect_stays

DAY = pd.Timestamp("2024-03-04", tz="UTC")
LAT0, LON0 = 40.70, -74.00
M_PER_DEG = 111_320.0


def track(points: list[tuple[float, float, float]], device: str = "a") -> pd.DataFrame:
    """Pings from (minutes after midnight, metres east, metres north)."""
    t, east, north = (np.array(x, dtype=float) for x in zip(*points, strict=True))
    return pd.DataFrame(
        {
            "device_id": device,
            "ts": DAY + pd.to_timedelta(t * 60, unit="s"),
            "lat": LAT0 + north / M_PER_DEG,
            "lon": LON0 + east / (M_PER_DEG * np.cos(np.radians(LAT0))),
        }
    )


def still(start_min: float, end_min: float, every_min: float, east: float = 0, north: float = 0):
    rng = np.random.default_rng(int(start_min))
    times = np.arange(start_min, end_min + 1e-9, every_min)
    return [(t, east + rng.normal(0, 10), north + rng.normal(0, 10)) for t in times]


def test_a_device_standing_still_for_an_hour_is_one_stay_at_its_place():
    stays = detect_stays(track(still(60, 120, 2)))
    assert len(stays) == 1
    (stay,) = stays.itertuples()
    assert stay.start_ts == DAY + pd.Timedelta(minutes=60)
    assert stay.end_ts == DAY + pd.Timedelta(minutes=120)
    assert stay.n_pings == 31
    assert abs(stay.lat - LAT0) * M_PER_DEG < 10


def test_a_stay_ends_at_its_last_ping_inside_the_radius_not_at_the_next_ping():
    pings = [*still(60, 90, 5), (200, 5000, 0)]
    (stay,) = detect_stays(track(pings)).itertuples()
    assert stay.end_ts == DAY + pd.Timedelta(minutes=90)


def test_one_travel_ping_followed_by_a_long_gap_is_not_a_stay():
    pings = [(10, 0, 0), (10.5, 400, 0), (11, 800, 0), (12, 1500, 0), (100, 6000, 0)]
    assert detect_stays(track(pings)).empty


def test_a_short_stop_below_the_minimum_duration_is_not_a_stay():
    pings = [(0, 0, 0), *still(10, 13, 1, east=3000), (20, 8000, 0)]
    assert detect_stays(track(pings), min_duration_s=300).empty


def test_known_stays_are_recovered_and_travel_between_them_is_not():
    home = still(0, 60, 3)
    travel = [(62 + i, 300 * (i + 1), 0) for i in range(10)]
    work = still(75, 300, 4, east=4000)
    shop = still(320, 350, 2, east=4000, north=2000)
    stays = detect_stays(track(home + travel + work + shop))
    assert len(stays) == 3
    east = (stays["lon"] - LON0) * M_PER_DEG * np.cos(np.radians(LAT0))
    north = (stays["lat"] - LAT0) * M_PER_DEG
    np.testing.assert_allclose(east, [0, 4000, 4000], atol=15)
    np.testing.assert_allclose(north, [0, 0, 2000], atol=15)


def test_one_gps_jump_inside_a_stay_does_not_split_it():
    pings = [*still(0, 30, 2), (31, 900, 0), *still(32, 60, 2)]
    stays = detect_stays(track(sorted(pings)))
    assert len(stays) == 1
    assert stays["n_pings"].iloc[0] == 31


def test_a_silence_longer_than_max_gap_ends_the_stay():
    pings = still(0, 30, 5) + still(300, 330, 5)
    stays = detect_stays(track(pings), max_gap_s=2 * 3600)
    assert len(stays) == 2


def test_stays_end_at_utc_midnight_so_days_are_independent():
    pings = still(23 * 60, 25 * 60, 5)
    stays = detect_stays(track(pings))
    assert list(stays["start_ts"].dt.strftime("%Y-%m-%d")) == ["2024-03-04", "2024-03-05"]
    both = detect_stays(track(pings))
    one_day = detect_stays(track([p for p in pings if p[0] < 24 * 60]))
    pd.testing.assert_frame_equal(both.iloc[:1], one_day)


def test_devices_are_separate_and_input_order_does_not_matter():
    a = track(still(0, 60, 3), "a")
    b = track(still(0, 60, 3, east=50), "b")
    both = pd.concat([a, b]).sample(frac=1, random_state=1)
    stays = detect_stays(both)
    assert list(stays["device_id"]) == ["a", "b"]
    pd.testing.assert_frame_equal(stays, detect_stays(pd.concat([a, b])))


@pytest.mark.parametrize("ts", ["ms", "naive", "categorical"])
def test_integer_ms_and_naive_timestamps_and_categorical_ids_are_accepted(ts):
    pings = track(still(0, 60, 3))
    expected = detect_stays(pings)
    if ts == "ms":
        pings["ts"] = pings["ts"].astype("int64") // 1_000_000
    elif ts == "naive":
        pings["ts"] = pings["ts"].dt.tz_localize(None)
    else:
        pings["device_id"] = pings["device_id"].astype("category")
    got = detect_stays(pings)
    got["device_id"] = got["device_id"].astype(str)
    pd.testing.assert_frame_equal(got, expected)


def test_empty_input_gives_an_empty_frame_with_the_output_columns():
    empty = detect_stays(pd.DataFrame(columns=["device_id", "ts", "lat", "lon"]))
    assert list(empty.columns) == STAY_COLUMNS
    assert empty.empty


def test_params_defaults_are_documented_values():
    p = StayParams()
    assert (p.radius_m, p.min_duration_s, p.max_gap_s) == (100.0, 300.0, 7200.0)
