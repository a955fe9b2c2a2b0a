"""Realistic generator profiles and the home model on sparse panels (issue 13).

Generator: the new knobs are deterministic by seed and produce the stated shares; the historical
profiles are frozen. Model: behaviour per stratum (night shift, one observed day, sparse nights,
no night evidence, away nights) on constructed cases and on a small realistic panel; the
calibration table loads and is monotone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from near_assets.science import home
from near_assets.science.accuracy import haversine_m, home_reliability, reliability_table
from near_assets.science.cleaning import clean_pings
from near_assets.science.stays import detect_stays
from near_assets.synth.cli import main as cli_main
from near_assets.synth.generator import (
    build_world,
    pings_tables,
    profile_timezone,
    simulate_day,
    truth_homes,
)
from near_assets.synth.panel import FIT_PROFILES, HOLDOUT_PROFILE, PROFILES, REAL_PROFILES
from resources.lake import LakeResource

START = "2026-03-02"  # a Monday
DAY = pd.Timestamp(START, tz="UTC")
LAT0, LON0 = 51.50, -0.12
M = 111_320.0
KX = M * np.cos(np.radians(LAT0))


# ---- generator ------------------------------------------------------------------------------


def _world(profile: str, devices: int, days: int = 7, seed: int = 3):
    return build_world(
        seed, devices, START, days, profile, 0, profile_timezone(profile), audience=False
    )


@pytest.fixture(scope="module")
def eu_week():
    """real_eu, 1,500 devices, 7 days: the world and each day's result (no dirt)."""
    world = _world("real_eu", 1500)
    return world, [simulate_day(world, i, 0.0) for i in range(7)]


def _digest(world, days: int) -> str:
    h = hashlib.sha256()
    for i in range(days):
        r = simulate_day(world, i, 0.05)
        for k in sorted(r.pings):
            h.update(np.ascontiguousarray(r.pings[k]).tobytes())
        h.update(r.stays.to_csv().encode())
    return h.hexdigest()[:16]


def test_historical_profiles_are_frozen():
    # Digests of the generator before the realistic profiles existed (same seed, same bytes).
    # If a numpy upgrade changes its random streams, regenerate them from the previous commit.
    assert _digest(build_world(7, 40, START, 2, "default", 0, "UTC"), 2) == "d22eaaf3b2935d40"
    assert _digest(build_world(5, 40, START, 2, "sparse", 0, "UTC"), 2) == "e9a1622a17debc93"


def test_realistic_profiles_are_deterministic_by_seed():
    a, b, c = (
        _world("real_uswest", 60, 2),
        _world("real_uswest", 60, 2),
        _world("real_uswest", 60, 2, 4),
    )
    assert _digest(a, 2) == _digest(b, 2) != _digest(c, 2)
    pd.testing.assert_frame_equal(truth_homes(a), truth_homes(b))


def test_profile_grid_holds_one_profile_back():
    assert HOLDOUT_PROFILE in REAL_PROFILES and HOLDOUT_PROFILE not in FIT_PROFILES
    assert set(FIT_PROFILES) | {HOLDOUT_PROFILE} == set(REAL_PROFILES)
    lats = {PROFILES[p].center_lat for p in REAL_PROFILES}
    zones = {PROFILES[p].timezone for p in REAL_PROFILES}
    assert len(lats) == len(REAL_PROFILES) and len(zones) >= 5
    assert min(lats) < 0 < max(lats)


def test_stationary_rates_are_a_wide_log_normal(eu_week):
    world, _ = eu_week
    rate = world.panel.rate_h
    assert np.median(rate) == pytest.approx(2.0, rel=0.1)
    assert rate.min() >= 0.2 and (rate <= 0.5).mean() > 0.04 and (rate > 8).mean() > 0.04
    assert np.std(np.log(rate)) == pytest.approx(0.9, rel=0.15)


def test_nights_are_sampled_sparser_than_days(eu_week):
    world, days = eu_week
    t = pd.to_datetime(np.concatenate([d.pings["t_ms"] for d in days]), unit="ms", utc=True)
    hour = t.tz_convert(world.timezone).hour
    per_hour = np.bincount(hour, minlength=24)
    night, day = per_hour[[0, 1, 2, 3, 4, 5]].mean(), per_hour[10:17].mean()
    assert night / day == pytest.approx(world.profile.night_damping, abs=0.06)


def test_each_device_is_observed_on_one_contiguous_run_of_1_to_7_days(eu_week):
    world, _ = eu_week
    obs = world.observed.astype(int)
    runs = (np.diff(np.c_[np.zeros(len(obs)), obs, np.zeros(len(obs))], axis=1) == 1).sum(axis=1)
    assert (runs == 1).all()
    lengths = np.bincount(obs.sum(axis=1), minlength=8)[1:] / len(obs)
    np.testing.assert_allclose(lengths, 1 / 7, atol=0.035)


def test_a_quarter_of_days_have_an_outage_of_hours_without_any_ping(eu_week):
    world, days = eu_week
    outages = [world.outage(i) for i in range(400)]
    hit = [o for o in outages if o is not None]
    assert len(hit) / 400 == pytest.approx(0.25, abs=0.06)
    assert all(0 < (end - start) / 3600 <= 6.0 for start, end in hit)
    assert np.median([(end - start) / 3600 for start, end in hit]) > 2.5
    for i, result in enumerate(days):
        if (o := world.outage(i)) is not None:
            t = result.pings["t_ms"] - int(pd.Timestamp(world.dates()[i], tz="UTC").value // 10**6)
            assert not ((t >= o[0] * 1000) & (t < o[1] * 1000)).any()


def test_night_shift_and_away_sleepers_come_in_the_stated_shares(eu_week):
    world, days = eu_week
    truth = truth_homes(world)
    assert truth["night_shift"].mean() == pytest.approx(0.06, abs=0.002)
    day_shift = truth[~truth["night_shift"]]
    assert day_shift["sleeps_away"].mean() == pytest.approx(0.10, abs=0.01)
    assert not truth.loc[truth["night_shift"], "sleeps_away"].any()
    sleepers = truth[truth["sleeps_away"]]
    nights = world.observed[sleepers.index].sum()
    assert sleepers["away_nights"].sum() / nights == pytest.approx(1 / 3, abs=0.06)
    stays = pd.concat([d.stays for d in days])
    away = stays[stays["kind"] == "away"]
    assert set(away["device_id"]) <= set(sleepers["device_id"]) and len(away) > 50
    t = truth.set_index("device_id").loc[away["device_id"]]
    assert (haversine_m(away["lat"], away["lon"], t["home_lat"], t["home_lon"]) > 200).mean() > 0.95


def test_truth_carries_the_strata_the_bench_needs(eu_week):
    world, _ = eu_week
    truth = truth_homes(world)
    expected = {"ping_rate_h", "observed_days", "night_shift", "sleeps_away", "away_nights"}
    assert expected <= set(truth.columns)
    assert truth["home_lat"].between(LAT0 - 0.1, LAT0 + 0.1).all()
    first = pd.to_datetime(truth["first_observed"])
    last = pd.to_datetime(truth["last_observed"])
    assert ((last - first).dt.days + 1 == truth["observed_days"]).all()


def test_routines_follow_the_profile_clock_with_utc_feeds():
    world = _world("real_uswest", 200, 2)
    assert world.timezone == "America/Los_Angeles"
    stays = simulate_day(world, 1, 0.0).stays
    at = pd.Timestamp(f"{world.dates()[1]} 03:30", tz="America/Los_Angeles").tz_convert("UTC")
    now = stays[(stays["start_ts"] <= at) & (stays["end_ts"] > at)].set_index("device_id")
    truth = truth_homes(world).set_index("device_id").loc[now.index]
    asleep = now.loc[~truth["night_shift"].to_numpy(), "kind"]
    assert len(asleep) > 100 and asleep.isin(["home", "away"]).all()


def test_cli_writes_a_realistic_profile_with_its_clock(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.delenv("LAKE_BUCKET", raising=False)
    monkeypatch.delenv("LAKE_TIMEZONE", raising=False)
    args = ["--devices", "30", "--days", "1", "--campaigns", "0", "--no-progress"]
    assert cli_main([*args, "--profile", "real_uswest", "--start", START]) == 0
    lake = LakeResource(root=str(tmp_path / "lake"))
    panel = lake.read_json("truth/panel.json")
    assert panel["timezone"] == "America/Los_Angeles"
    assert panel["profile"]["name"] == "real_uswest" and "outages_utc_h" in panel
    assert "ping_rate_h" in lake.read_parquet("truth/homes").columns


# ---- model: constructed cases ---------------------------------------------------------------


def stay(device: str, start_h: float, end_h: float, east: float, day: int = 0) -> dict:
    return {
        "device_id": device,
        "start_ts": DAY + pd.Timedelta(days=day, hours=start_h),
        "end_ts": DAY + pd.Timedelta(days=day, hours=end_h),
        "lat": LAT0,
        "lon": LON0 + east / KX,
    }


def ping(device: str, hour: float, east: float, day: int = 0) -> dict:
    return {
        "device_id": device,
        "ts": DAY + pd.Timedelta(days=day, hours=hour),
        "lat": LAT0,
        "lon": LON0 + east / KX,
    }


def east_m(homes: pd.DataFrame) -> pd.Series:
    return ((homes["lon"] - LON0) * KX).round()


def test_a_night_shift_worker_gets_the_day_rest_home():
    work = [stay("n", 22, 30, 4000, day=d) for d in range(5)]  # Mon-Fri nights at work
    rest = [stay("n", 6.5, 14, 0, day=d) for d in range(1, 6)]
    evening = [ping("n", h, 0, day=d) for d in range(1, 6) for h in (18.5, 20.2)]
    out = home.infer_homes(pd.DataFrame(work + rest), pings=pd.DataFrame(evening))
    (h,) = out.itertuples()
    assert h.method == "day_rest" and abs(east_m(out).iloc[0]) < 20
    assert h.confidence >= home.DEFAULT_MIN_CONFIDENCE


def test_a_day_worker_keeps_the_night_home_even_when_nights_are_sparse():
    office = [stay("d", 8, 17, 4000, day=d) for d in range(5)]
    night_pings = [ping("d", h, 0, day=d) for d in range(5) for h in (23.4, 2.7)]
    out = home.infer_homes(pd.DataFrame(office), pings=pd.DataFrame(night_pings))
    (h,) = out.itertuples()
    # 02:40 on Monday belongs to the night that began on Sunday: 6 nights
    assert h.method == "night" and abs(east_m(out).iloc[0]) < 20 and h.nights == 6


def test_a_sparse_night_yields_pings_but_no_stay():
    office = pd.DataFrame([stay("s", 8, 17, 3000)])
    night = pd.DataFrame([ping("s", 1.2, 0), ping("s", 4.9, 0), ping("s", 23.3, 0)])
    assert home.infer_homes(office, min_confidence=0.0).empty  # stays only: no night evidence
    out = home.infer_homes(office, pings=night, min_confidence=0.0)
    assert list(out["method"]) == ["night"] and abs(east_m(out).iloc[0]) < 20


def test_without_night_evidence_the_workplace_is_never_the_home():
    days = pd.DataFrame([stay("w", 8, 17, 3000, day=d) for d in range(5)])
    assert home.infer_homes(days, min_confidence=0.0).empty
    evenings = pd.DataFrame([ping("w", 19.5, 0, day=d) for d in range(5)])
    out = home.infer_homes(days, pings=evenings, min_confidence=0.0)
    assert list(out["method"]) == ["evening"] and abs(east_m(out).iloc[0]) < 20


def test_one_observed_night_is_less_certain_than_a_week():
    one = [stay("one", 22.5, 31, 0), stay("one", 8, 17, 3000, day=1)]
    week = [stay("week", 22.5, 31, 0, day=d) for d in range(7)]
    week += [stay("week", 8, 17, 3000, day=d) for d in range(1, 6)]
    out = home.infer_homes(pd.DataFrame(one + week), min_confidence=0.0).set_index("device_id")
    assert (out["method"] == "night").all() and (east_m(out).abs() < 20).all()
    assert out.loc["week", "confidence"] > out.loc["one", "confidence"]
    assert out.loc["week", "confidence"] > 0.97
    assert list(out["nights"]) == [1, 7]


def test_nights_split_between_two_places_lower_the_confidence():
    split = [stay("split", 22.5, 31, 0, day=d) for d in range(4)]
    split += [stay("split", 22.5, 31, 2500, day=d) for d in range(4, 7)]
    home_only = [stay("home", 22.5, 31, 0, day=d) for d in range(7)]
    out = home.infer_homes(pd.DataFrame(split + home_only), min_confidence=0.0)
    out = out.set_index("device_id")
    assert abs(east_m(out).loc["split"]) < 20
    assert out.loc["split", "confidence"] < out.loc["home", "confidence"]


def test_ping_hours_reduce_pings_without_changing_the_homes():
    rng = np.random.default_rng(0)
    pings = pd.DataFrame(
        [
            ping(f"p{i}", h, rng.normal(0, 10) + 100 * i, d)
            for i in range(3)
            for d in range(3)
            for h in rng.uniform(0, 24, 20)
        ]
    )
    stays = pd.DataFrame([stay("p0", 9, 12, 5000)])
    reduced = home.ping_hours(pings)
    assert len(reduced) < len(pings)
    pd.testing.assert_frame_equal(home.ping_hours(reduced), reduced)
    a = home.infer_homes(stays, pings=pings, min_confidence=0.0)
    b = home.infer_homes(stays, pings=reduced, min_confidence=0.0)
    pd.testing.assert_frame_equal(a.drop(columns=["lat", "lon"]), b.drop(columns=["lat", "lon"]))
    assert (haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]) < 15).all()


def test_homes_by_day_windows_the_pings_too():
    night = pd.DataFrame([ping("a", 2.5, 0, day=d) for d in range(3)])
    later = pd.DataFrame([ping("a", 2.5, 2000, day=d) for d in range(10, 13)])
    stays = pd.DataFrame([stay("a", 9, 12, 5000, day=d) for d in (0, 12)])
    out = home.homes_by_day(
        stays,
        ["2026-03-04", "2026-03-14"],
        window_days=4,
        pings=pd.concat([night, later]),
        min_confidence=0.0,
    )
    assert list(out["date"]) == ["2026-03-04", "2026-03-14"]
    np.testing.assert_allclose(east_m(out), [0, 2000], atol=20)


def test_pings_as_rows_of_one_union_give_the_same_homes_in_any_row_order():
    """What the Spark engine hands over (stays and ping hours read as one union, rows with a
    ``ts`` are pings) gives the in-process homes, whatever the rows' order."""
    rng = np.random.default_rng(1)
    stays = pd.DataFrame(
        [stay(f"u{i}", 8, 17, 3000 + 10 * i, day=d) for i in range(4) for d in range(3)]
        + [stay(f"u{i}", 8, 17, 3005 + 10 * i, day=d) for i in range(2) for d in range(3)]
        + [stay("u0", 22, 30, 0, day=1)]
    )
    pings = home.ping_hours(
        pd.DataFrame(
            [
                ping(f"u{i}", h, rng.normal(0, 15) + 100 * i, day=d)
                for i in range(4)
                for d in range(3)
                for h in rng.uniform(0, 24, 12)
            ]
        )
    )
    days = ["2026-03-03", "2026-03-04"]
    expected = home.homes_by_day(stays, days, window_days=3, pings=pings, min_confidence=0.0)
    assert expected["device_id"].nunique() == 4
    union = pd.concat([stays.assign(n_pings=5), pings], ignore_index=True)
    for seed in range(3):
        shuffled = union.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        out = home.homes_by_day(shuffled, days, window_days=3, ping_rows=True, min_confidence=0.0)
        pd.testing.assert_frame_equal(out, expected, check_exact=True)
    stays_only = home.homes_by_day(stays, days, window_days=3, pings=pings.iloc[:0])
    no_ping_rows = home.homes_by_day(stays.assign(ts=pd.NaT), days, window_days=3, ping_rows=True)
    pd.testing.assert_frame_equal(no_ping_rows, stays_only)


def test_the_spark_zip_ships_the_calibration_table_and_home_loads_it_from_there(tmp_path: Path):
    import subprocess
    import sys
    import zipfile

    from near_assets.spark_jobs.deploy import build_py_files

    archive = build_py_files(tmp_path / "platform.zip")
    names = zipfile.ZipFile(archive).namelist()
    assert "near_assets/science/home_calibration.json" in names
    assert "near_assets/science/home.py" in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from near_assets.science import home; "
        "assert home.__file__.startswith(sys.argv[1]), home.__file__; "
        "print(home.load_calibration().version)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(archive)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == home.calibration_version()


# ---- calibration ----------------------------------------------------------------------------


def test_the_calibration_table_loads_and_is_monotone():
    doc = json.loads(home.CALIBRATION_PATH.read_text())
    cal = home.load_calibration()
    assert cal.version == doc["version"] and cal.features == home.FEATURES
    assert set(cal.methods) == set(home.METHODS)
    assert doc["held_back_profile"] == HOLDOUT_PROFILE
    assert HOLDOUT_PROFILE not in doc["fitted_on"]["profiles"]
    assert doc["default_min_confidence"] == home.DEFAULT_MIN_CONFIDENCE
    assert home.HomeParams().min_confidence == home.DEFAULT_MIN_CONFIDENCE
    for fit in cal.methods.values():
        assert (np.diff(fit.iso_x) >= 0).all() and (np.diff(fit.iso_y) >= 0).all()
        assert fit.iso_y.min() >= 0 and fit.iso_y.max() <= 1
        grid = np.linspace(0, 1, 101)
        assert (np.diff(np.interp(grid, fit.iso_x, fit.iso_y)) >= 0).all()


def test_reliability_table_bins_confidence_against_the_share_within():
    conf = [0.05, 0.55, 0.58, 0.95, 0.97, 1.0]
    ok = [False, True, False, True, True, True]
    table = reliability_table(conf, ok)
    assert list(table["bin"]) == ["0.0-0.1", "0.5-0.6", "0.9-1.0"]
    assert list(table["homes"]) == [1, 2, 3]
    assert table.loc[1, "share_within"] == 0.5 and table.loc[1, "gap"] == pytest.approx(-0.065)
    truth = pd.DataFrame({"device_id": ["a", "b"], "home_lat": LAT0, "home_lon": LON0})
    homes = pd.DataFrame(
        {"device_id": ["a", "b"], "lat": [LAT0, LAT0 + 0.01], "lon": LON0, "confidence": 0.9}
    )
    rel = home_reliability(homes, truth)
    assert rel.iloc[0].to_dict() == {
        "bin": "0.9-1.0",
        "homes": 2,
        "mean_confidence": 0.9,
        "share_within": 0.5,
        "gap": -0.4,
    }


# ---- model on a small realistic panel -----------------------------------------------------------


@pytest.fixture(scope="module")
def holdout_homes():
    """real_holdout (never fitted on), 600 devices, 7 days, through clean -> stays -> homes."""
    world = _world(HOLDOUT_PROFILE, 600, seed=21)
    pings, stays = [], []
    for i, day in enumerate(world.dates()):
        raw = pa.concat_tables(pings_tables(world, day, simulate_day(world, i, 0.05).pings))
        clean, _ = clean_pings(raw.to_pandas(), day)
        pings.append(clean[["device_id", "ts", "lat", "lon"]])
        stays.append(detect_stays(clean))
    stays_df, pings_df = pd.concat(stays), pd.concat(pings)
    found = home.infer_homes(stays_df, timezone=world.timezone, pings=pings_df, min_confidence=0)
    truth = truth_homes(world)
    scored = truth[truth["device_id"].isin(stays_df["device_id"])].merge(
        found, on="device_id", how="left"
    )
    err = haversine_m(scored["lat"], scored["lon"], scored["home_lat"], scored["home_lon"])
    return scored.assign(correct=err <= 200, confidence=scored["confidence"].fillna(0.0))


def test_sparse_panel_homes_are_right_and_cover_the_panel(holdout_homes):
    pub = holdout_homes[holdout_homes["confidence"] >= home.DEFAULT_MIN_CONFIDENCE]
    assert len(pub) / len(holdout_homes) >= 0.93
    assert pub["correct"].mean() >= 0.93
    assert abs(pub["correct"].mean() - pub["confidence"].mean()) < 0.05


def test_night_shift_workers_get_day_rest_and_day_workers_do_not(holdout_homes):
    ns = holdout_homes[holdout_homes["night_shift"] & holdout_homes["method"].notna()]
    assert (ns["method"] == "day_rest").mean() >= 0.5
    day = holdout_homes[~holdout_homes["night_shift"]]
    assert (day["method"] == "day_rest").mean() < 0.01
    assert holdout_homes.loc[holdout_homes["method"] == "day_rest", "correct"].mean() >= 0.9


def test_one_observed_day_is_scored_lower_and_still_mostly_right(holdout_homes):
    pub = holdout_homes[holdout_homes["confidence"] >= home.DEFAULT_MIN_CONFIDENCE]
    one = pub[pub["observed_days"] == 1]
    many = pub[pub["observed_days"] >= 5]
    assert len(one) >= 30 and one["correct"].mean() >= 0.85
    assert one["confidence"].mean() < many["confidence"].mean()
