"""The synthetic lake generator: determinism, CONTRACTS schemas, planted dirt, ground truth."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from near_assets.synth import REASONS, dirty_day, generate
from near_assets.synth import campaigns as camp
from near_assets.synth.cli import main as cli_main
from near_assets.synth.dirt import DEFAULT_SHARES, HD_MIN_DEVICES, reason_shares
from resources.lake import LakeResource

START = "2026-03-02"
SMALL = {"devices": 50, "days": 3, "start": START, "progress": False}


def _lake(tmp_path: Path, name: str) -> LakeResource:
    return LakeResource(root=str(tmp_path / name))


def _read_pings(lake: LakeResource, day: str) -> pd.DataFrame:
    """All of a day's files, ts normalised to UTC timestamps (files may differ in ts type)."""
    frames = []
    for key in lake.parquet_files(f"raw/pings/date={day}"):
        df = lake.read_parquet(key)
        if df["ts"].dtype.kind in "iuf" or str(df["ts"].dtype) == "Int64":
            df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _days(start: str, n: int) -> list[str]:
    first = date.fromisoformat(start)
    return [(first + timedelta(days=i)).isoformat() for i in range(n)]


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> LakeResource:
    lake = LakeResource(root=str(tmp_path_factory.mktemp("synth") / "lake"))
    generate(lake, seed=7, **SMALL)
    return lake


def test_same_seed_gives_identical_lakes(small_lake: LakeResource, tmp_path: Path) -> None:
    again = _lake(tmp_path, "again")
    generate(again, seed=7, **SMALL)
    for key in ["reference/pois", "reference/areas", "truth/homes"]:
        pd.testing.assert_frame_equal(small_lake.read_parquet(key), again.read_parquet(key))
    for day in _days(START, 3):
        for key in [f"raw/pings/date={day}", f"truth/stays/date={day}"]:
            pd.testing.assert_frame_equal(small_lake.read_parquet(key), again.read_parquet(key))
        assert small_lake.read_json(f"truth/dirt/date={day}.json") == again.read_json(
            f"truth/dirt/date={day}.json"
        )


def test_different_seed_gives_different_pings(small_lake: LakeResource, tmp_path: Path) -> None:
    other = _lake(tmp_path, "other")
    generate(other, seed=8, **SMALL)
    a = small_lake.read_parquet(f"raw/pings/date={START}")
    b = other.read_parquet(f"raw/pings/date={START}")
    assert len(a) != len(b) or not np.allclose(a["lat"].fillna(0), b["lat"].fillna(0))


def test_pings_follow_the_contract_schema(small_lake: LakeResource) -> None:
    ts_types = set()
    for day in _days(START, 3):
        files = small_lake.parquet_files(f"raw/pings/date={day}")
        assert len(files) >= 2
        for key in files:
            schema = pq.read_schema(small_lake.store.uri(key))
            assert schema.names == ["device_id", "ts", "lat", "lon", "accuracy_m"]
            assert schema.field("device_id").type == pa.string()
            assert schema.field("lat").type == pa.float64()
            assert schema.field("lon").type == pa.float64()
            assert pa.types.is_floating(schema.field("accuracy_m").type)
            ts = schema.field("ts").type
            assert ts in (pa.timestamp("us", tz="UTC"), pa.int64())
            ts_types.add(ts)
    assert ts_types == {pa.timestamp("us", tz="UTC"), pa.int64()}
    ids = small_lake.read_parquet(f"raw/pings/date={START}")["device_id"].dropna()
    assert ids.str.fullmatch(r"d\d{6}").all()


def test_reference_tables_follow_the_contract(small_lake: LakeResource) -> None:
    pois = small_lake.read_parquet("reference/pois")
    assert list(pois.columns) == ["poi_id", "name", "brand", "category", "geometry_wkt"]
    assert pois["poi_id"].is_unique and len(pois) == 300
    assert pois["geometry_wkt"].str.startswith("POLYGON ((").all()
    assert pois["brand"].notna().sum() >= 8 * 3 and pois["brand"].isna().any()
    areas = small_lake.read_parquet("reference/areas")
    assert {"area_id", "geometry_wkt", "population", "median_income"} <= set(areas.columns)
    assert len(areas) == 64 and areas["population"].between(2_000, 30_000).all()
    shares = areas[["age_18_34", "age_35_54", "age_55_plus"]]
    assert (shares.sum(axis=1) <= 1.0).all() and (shares >= 0).all().all()


def test_poi_polygons_do_not_overlap(small_lake: LakeResource) -> None:
    import shapely

    polys = shapely.from_wkt(small_lake.read_parquet("reference/pois")["geometry_wkt"])
    tree = shapely.STRtree(polys)
    left, right = tree.query(polys, predicate="intersects")
    assert (left == right).all()


def test_dirt_is_planted_in_the_stated_shares(small_lake: LakeResource) -> None:
    expected = reason_shares(sum(DEFAULT_SHARES.values()))
    for day in _days(START, 3):
        dirt = small_lake.read_json(f"truth/dirt/date={day}.json")
        assert set(dirt) == {"rows", *REASONS}
        assert 0.05 <= sum(dirt[r] for r in REASONS) / dirt["rows"] <= 0.08
        for reason in REASONS:
            assert dirt[reason] / dirt["rows"] == pytest.approx(expected[reason], rel=0.25)


def test_dirt_counts_match_the_rows_written(small_lake: LakeResource) -> None:
    day = START
    dirt = small_lake.read_json(f"truth/dirt/date={day}.json")
    df = _read_pings(small_lake, day)
    assert len(df) == dirt["rows"]
    nulls = df[["device_id", "ts", "lat", "lon"]].isna().any(axis=1)
    assert nulls.sum() == dirt["null_field"]
    ok = df[~nulls]
    out_of_range = (ok["lat"].abs() > 90) | (ok["lon"].abs() > 180)
    assert out_of_range.sum() == dirt["out_of_range"]
    assert ((ok["lat"] == 0) & (ok["lon"] == 0)).sum() == dirt["zero_zero"]
    day_start = pd.Timestamp(day, tz="UTC")
    outside = (ok["ts"] < day_start) | (ok["ts"] >= day_start + pd.Timedelta(days=1))
    assert outside.sum() == dirt["outside_day"]
    assert (ok["accuracy_m"] > 1000).sum() == dirt["low_accuracy"]
    assert df.duplicated().sum() == dirt["duplicate"]
    devices_per_point = ok.groupby(["lat", "lon"])["device_id"].nunique()
    dense = devices_per_point[devices_per_point >= min(HD_MIN_DEVICES, ok["device_id"].nunique())]
    dense = dense.drop(index=(0.0, 0.0), errors="ignore")
    assert len(dense) >= 1
    on_dense = ok.set_index(["lat", "lon"]).index.isin(dense.index)
    assert on_dense.sum() == dirt["high_density"]


def test_dirty_day_has_the_chosen_share(tmp_path: Path) -> None:
    lake = _lake(tmp_path, "dirty")
    counts = dirty_day(lake, "2026-03-05", share=0.30, devices=60)
    bad = sum(counts[r] for r in REASONS)
    assert bad / counts["rows"] == pytest.approx(0.30, abs=0.01)
    assert all(counts[r] > 0 for r in REASONS)
    assert len(_read_pings(lake, "2026-03-05")) == counts["rows"]


def test_no_dirt_writes_clean_pings(tmp_path: Path) -> None:
    lake = _lake(tmp_path, "clean")
    generate(lake, seed=3, devices=20, days=1, start=START, dirt=False, progress=False)
    counts = lake.read_json(f"truth/dirt/date={START}.json")
    assert all(counts[r] == 0 for r in REASONS)
    df = _read_pings(lake, START)
    assert not df.duplicated().any() and df[["device_id", "ts", "lat", "lon"]].notna().all().all()


def test_each_device_has_one_true_home(small_lake: LakeResource) -> None:
    homes = small_lake.read_parquet("truth/homes")
    assert homes["device_id"].is_unique and len(homes) == 50
    assert homes["observed_days"].between(1, 3).all()
    assert homes["night_shift"].dtype == bool
    areas = small_lake.read_parquet("reference/areas")["area_id"]
    assert homes["home_area_id"].isin(areas).all()


def test_true_stays_lie_inside_their_day_without_overlap(small_lake: LakeResource) -> None:
    pois = set(small_lake.read_parquet("reference/pois")["poi_id"])
    for day in _days(START, 3):
        stays = small_lake.read_parquet(f"truth/stays/date={day}")
        start = pd.Timestamp(day, tz="UTC")
        assert (stays["start_ts"] >= start).all()
        assert (stays["end_ts"] <= start + pd.Timedelta(days=1)).all()
        assert ((stays["end_ts"] - stays["start_ts"]) >= pd.Timedelta(minutes=5)).all()
        assert set(stays["kind"]) <= {"home", "work", "poi"}
        assert stays.loc[stays["kind"] == "poi", "poi_id"].isin(pois).all()
        assert stays.loc[stays["kind"] != "poi", "poi_id"].isna().all()
        s = stays.sort_values(["device_id", "start_ts"])
        nxt = s.groupby("device_id")["start_ts"].shift(-1)
        assert not (nxt < s["end_ts"]).any()


def test_poi_visitors_agree_with_true_stays(small_lake: LakeResource) -> None:
    for day in _days(START, 3):
        stays = small_lake.read_parquet(f"truth/stays/date={day}")
        visitors = small_lake.read_parquet(f"truth/poi_visitors/date={day}").set_index("poi_id")
        from_stays = stays[stays["kind"] == "poi"].groupby("poi_id")["device_id"].nunique()
        panel = visitors["panel_visitors"]
        assert (panel[panel > 0].sort_index() == from_stays.sort_index()).all()
        assert (visitors["true_people"] >= panel).all()
        assert visitors["true_people"].sum() > 100 * panel.sum()


def test_campaigns_run_15_to_90_days_with_exposures(tmp_path: Path) -> None:
    lake = _lake(tmp_path, "campaigns")
    start = "2026-01-01"
    generate(lake, seed=11, devices=40, days=20, start=start, campaigns=4, progress=False)
    keys = lake.list("reference/campaigns")
    assert len(keys) == 4
    lifts = []
    for key in keys:
        ref = lake.read_json(key)
        assert set(ref) == {"campaign_id", "brand", "start_date", "end_date"}
        first, last = date.fromisoformat(ref["start_date"]), date.fromisoformat(ref["end_date"])
        assert 15 <= (last - first).days + 1 <= 90
        assert date(2026, 1, 1) <= first and last <= date(2026, 1, 20)
        truth = lake.read_json(f"truth/campaigns/{ref['campaign_id']}.json")
        lifts.append(truth["planted_lift"])
        exposures = lake.read_parquet(f"raw/exposures/campaign_id={ref['campaign_id']}")
        assert list(exposures.columns) == ["device_id", "ts"]
        assert exposures["device_id"].nunique() == truth["exposed_devices"]
        assert exposures["ts"].min() >= pd.Timestamp(first, tz="UTC")
        assert exposures["ts"].max() < pd.Timestamp(last + timedelta(days=1), tz="UTC")
    assert sorted(lifts) == [0.0, 0.0, camp.PLANTED_LIFT, camp.PLANTED_LIFT]
    panel = lake.read_json("truth/panel.json")
    assert panel["seed"] == 11 and panel["campaigns"] == ["C001", "C002", "C003", "C004"]


def test_campaign_plans_stay_within_bounds_for_any_range() -> None:
    for days in (15, 16, 40, 120, 400):
        for seed in range(5):
            plans = camp.plan_campaigns(seed, date(2025, 1, 1), days, ["A", "B"], 10, 4)
            for c in plans:
                length = (c.end_date - c.start_date).days + 1
                assert camp.MIN_DAYS <= length <= camp.MAX_DAYS
                assert c.end_date < date(2025, 1, 1) + timedelta(days=days)
    assert camp.plan_campaigns(1, date(2025, 1, 1), 14, ["A"], 10, 4) == []


def test_sparse_profile_samples_about_two_pings_an_hour(tmp_path: Path) -> None:
    lake = _lake(tmp_path, "sparse")
    generate(
        lake, seed=5, devices=80, days=7, start=START, profile="sparse", dirt=False, progress=False
    )
    homes = lake.read_parquet("truth/homes")
    assert homes["observed_days"].between(1, 7).all()
    assert homes["observed_days"].nunique() >= 5
    assert homes["night_shift"].mean() > 0.15
    pings = device_days = 0
    for day in _days(START, 7):
        df = lake.read_parquet(f"raw/pings/date={day}")
        pings += len(df)
        device_days += df["device_id"].nunique()
    assert pings / device_days / 24 == pytest.approx(2.0, rel=0.25)


def test_generate_works_on_s3(s3_lake: LakeResource) -> None:
    summary = generate(s3_lake, seed=7, devices=15, days=2, start=START, progress=False)
    assert summary["pings"] == sum(summary["per_day"].values()) > 0
    assert len(s3_lake.parquet_files(f"raw/pings/date={START}")) >= 2
    df = s3_lake.read_parquet(f"raw/pings/date={START}")
    assert len(df) == summary["per_day"][START]
    assert s3_lake.exists("truth/panel.json") and s3_lake.exists("truth/homes/part-0.parquet")


def test_cli_writes_a_sample_ending_today(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_ROOT", str(tmp_path / "cli"))
    monkeypatch.delenv("LAKE_BUCKET", raising=False)
    assert cli_main(["--devices", "10", "--days", "2", "--campaigns", "0", "--no-progress"]) == 0
    lake = LakeResource(root=str(tmp_path / "cli"))
    today = pd.Timestamp.now(tz="UTC").date()
    days = lake.list_dirs("raw/pings")
    assert days == [f"date={today - timedelta(days=1)}", f"date={today}"]


def test_default_profile_samples_about_180_pings_per_device_day(small_lake: LakeResource) -> None:
    for day in _days(START, 3):
        df = small_lake.read_parquet(f"raw/pings/date={day}")
        per_device = len(df) / df["device_id"].nunique()
        assert 120 <= per_device <= 250


def test_some_travel_pings_are_followed_by_long_gaps(small_lake: LakeResource) -> None:
    day = START
    dirt = small_lake.read_json(f"truth/dirt/date={day}.json")
    assert dirt["rows"] > 0
    pings = _read_pings(small_lake, day).dropna().drop_duplicates()
    start = pd.Timestamp(day, tz="UTC")
    pings = pings[(pings["ts"] >= start) & (pings["ts"] < start + pd.Timedelta(days=1))]
    stays = small_lake.read_parquet(f"truth/stays/date={day}")
    joined = pd.merge_asof(
        pings.sort_values("ts"),
        stays.sort_values("start_ts"),
        left_on="ts",
        right_on="start_ts",
        by="device_id",
    ).sort_values(["device_id", "ts"])
    travelling = ~(joined["ts"] < joined["end_ts"])
    gap_after = joined.groupby("device_id")["ts"].shift(-1) - joined["ts"]
    long_gap_after_travel = travelling & (gap_after > pd.Timedelta(minutes=20))
    assert long_gap_after_travel.sum() >= 10
    assert travelling.mean() < 0.15


def _kind_at(stays: pd.DataFrame, when: pd.Timestamp) -> pd.Series:
    at = stays[(stays["start_ts"] <= when) & (stays["end_ts"] > when)]
    return at.set_index("device_id")["kind"]


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_routines_follow_the_local_clock(tmp_path: Path, timezone: str) -> None:
    lake = _lake(tmp_path, "tz")
    generate(
        lake,
        seed=2,
        devices=40,
        days=2,
        start=START,
        timezone=timezone,
        campaigns=0,
        progress=False,
    )
    homes = lake.read_parquet("truth/homes").set_index("device_id")
    day = _days(START, 2)[1]
    stays = lake.read_parquet(f"truth/stays/date={day}")
    start = pd.Timestamp(day, tz="UTC")
    assert (stays["start_ts"] >= start).all()
    assert (stays["end_ts"] <= start + pd.Timedelta(days=1)).all()
    s = stays.sort_values(["device_id", "start_ts"])
    assert not (s.groupby("device_id")["start_ts"].shift(-1) < s["end_ts"]).any()
    local_night = pd.Timestamp(f"{day} 03:30", tz=timezone).tz_convert("UTC")
    if local_night < start:
        local_night += pd.Timedelta(days=1)
    kinds = _kind_at(stays, local_night)
    day_shift = kinds[~homes.loc[kinds.index, "night_shift"].to_numpy()]
    assert len(day_shift) >= 20 and (day_shift == "home").all()
    assert lake.read_json("truth/panel.json")["timezone"] == timezone


def test_hdp_option_plants_high_density_points_with_truth(tmp_path: Path) -> None:
    """``hdp=True`` plants towers, IP centroids and SDK defaults (half beside busy POIs) with
    their truth; the same seed gives the same lake."""
    kw = {"devices": 80, "days": 2, "start": START, "progress": False, "dirt": False}
    lake = _lake(tmp_path, "hdp")
    generate(lake, seed=5, hdp=True, **kw)
    planted = lake.read_parquet("truth/hdp")
    assert set(planted["kind"]) == {"cell_tower", "ip_centroid", "sdk_default"}
    assert planted["near_poi_id"].notna().sum() == len(planted) // 2
    day = _days(START, 1)[0]
    rows = lake.read_parquet(f"truth/hdp_pings/date={day}")
    pings = _read_pings(lake, day).merge(rows, on=["device_id", "ts"])
    assert len(pings) == len(rows) > 0
    exact = pings.merge(planted, on="hdp_id", suffixes=("", "_hdp"))
    exact = exact[exact["kind"] != "ip_centroid"]
    assert (exact["lat"] == exact["lat_hdp"]).all() and (exact["lon"] == exact["lon_hdp"]).all()
    again = _lake(tmp_path, "hdp-again")
    generate(again, seed=5, hdp=True, **kw)
    pd.testing.assert_frame_equal(
        lake.read_parquet(f"raw/pings/date={day}"), again.read_parquet(f"raw/pings/date={day}")
    )


def test_people_option_plants_people_and_households_with_truth(tmp_path: Path) -> None:
    """``people=True`` groups devices into people of 1-3 devices (the same stays) and households
    (one home, own day places); the truth lists them; the same seed gives the same lake."""
    kw = {"devices": 60, "days": 2, "start": START, "progress": False, "dirt": False}
    lake = _lake(tmp_path, "people")
    generate(lake, seed=5, people=True, **kw)
    truth = lake.read_parquet("truth/identity")
    assert len(truth) == 60 and truth["device_id"].is_unique
    assert set(truth["devices_in_person"]) <= {1, 2, 3} and truth["devices_in_person"].max() > 1
    persons = truth.groupby("person_id")["household_id"].nunique()
    assert (persons == 1).all() and truth["household_id"].nunique() < truth["person_id"].nunique()
    homes = lake.read_parquet("truth/homes").merge(truth, on="device_id")
    assert (homes.groupby("household_id")[["home_lat", "home_lon"]].nunique() == 1).all().all()
    assert (homes.groupby("person_id")[["work_lat", "work_lon"]].nunique() == 1).all().all()
    day = _days(START, 1)[0]
    stays = lake.read_parquet(f"truth/stays/date={day}").merge(truth, on="device_id")
    pair = truth[truth["devices_in_person"] > 1].groupby("person_id")["device_id"].agg(list)
    for devices in pair.head(5):
        a, b = (stays[stays["device_id"] == d] for d in devices[:2])
        if len(a) and len(b):  # both observed that day: the same places at the same times
            cols = ["start_ts", "end_ts", "lat", "lon"]
            pd.testing.assert_frame_equal(
                a[cols].reset_index(drop=True), b[cols].reset_index(drop=True)
            )
    again = _lake(tmp_path, "people-again")
    generate(again, seed=5, people=True, **kw)
    pd.testing.assert_frame_equal(
        lake.read_parquet(f"raw/pings/date={day}"), again.read_parquet(f"raw/pings/date={day}")
    )
