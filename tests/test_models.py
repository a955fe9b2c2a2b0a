"""Models of issue 16 on a small generated lake: visit history (incremental, write-audit-publish)
and high-density points (planted by the generator's ``hdp`` option, scored against its truth)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from near_assets import mobility
from near_assets.models import visit_history as vh
from near_assets.science import history
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from near_assets.tables import VISIT_HISTORY
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

START, DAYS = "2024-03-04", 4
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]


def write_clean_pings(lake: LakeResource, day: str) -> None:
    """Stand-in for ``clean_pings`` (tested elsewhere): typed raw pings."""
    raw = lake.read_parquet(f"raw/pings/date={day}")
    raw["ts"] = to_utc(raw["ts"])
    lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


def run_range(
    lake: LakeResource, assets: list, first: str, last: str, **kw
) -> dg.ExecuteInProcessResult:
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
    """150 devices, 4 days, HDPs planted; stay points and visits published for every day."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("models") / "lake"))
    generate(
        lake, seed=3, devices=150, start=START, days=DAYS, dirt=False, progress=False, hdp=True
    )
    for day in DATES:
        write_clean_pings(lake, day)
    result = run_range(lake, [mobility.stay_points, mobility.visits], DATES[0], DATES[-1])
    assert result.success
    return lake


def meta(result: dg.ExecuteInProcessResult, key: str) -> dict:
    events = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in events[-1].metadata.items()}


def test_visit_history_incremental_equals_a_rebuild_and_audits_block(lake: LakeResource) -> None:
    backfill = run_range(lake, [vh.visit_history], DATES[0], DATES[2])
    assert backfill.success
    per_day = meta(backfill, "visit_history")["per_day"]
    assert per_day[DATES[0]]["mode"] == "rebuild"
    assert per_day[DATES[1]]["mode"] == per_day[DATES[2]]["mode"] == "incremental"
    daily = dg.materialize([vh.visit_history], resources=resources(lake), partition_key=DATES[3])
    assert daily.success
    figures = meta(daily, "visit_history")
    assert figures["mode"] == "incremental" and figures["previous_pairs"] > 0

    visits = pd.concat(
        [lake.read_parquet(f"curated/visits/date={d}") for d in DATES], ignore_index=True
    )
    published = VISIT_HISTORY.read(lake, DATES[3])
    oracle = history.history_from_visits(visits, DATES[3])
    pd.testing.assert_frame_equal(
        published.reset_index(drop=True), oracle, check_exact=False, atol=1e-2, check_dtype=False
    )
    assert published["visits_total"].sum() == len(visits)
    assert (published["visits_7d"] == published["visits_total"]).all()  # 4 days < 7

    # a corrupt snapshot upstream: the next day's audit blocks and production stays as it was
    bad = published.copy()
    bad.loc[0, "visits_7d"] = -50
    lake.write_parquet(bad, f"curated/visit_history/date={DATES[2]}")
    before = lake.read_parquet(f"curated/visit_history/date={DATES[3]}")
    blocked = dg.materialize(
        [vh.visit_history],
        resources=resources(lake),
        partition_key=DATES[3],
        raise_on_error=False,
    )
    assert not blocked.success
    checks = [
        c for c in blocked.get_asset_check_evaluations() if c.check_name == "history_consistent"
    ]
    assert checks and not any(c.passed for c in checks)
    pd.testing.assert_frame_equal(
        lake.read_parquet(f"curated/visit_history/date={DATES[3]}"), before
    )


def test_high_density_points_learns_the_planted_points(lake: LakeResource) -> None:
    from datetime import date

    from near_assets.models import high_density_points as hd
    from near_assets.science import hdp
    from near_assets.science.cleaning import clean_pings

    # a 150-device panel carries planted HDPs on a larger share of its pings than a real one
    config = {"ops": {"high_density_points": {"config": {"max_removed_share": 0.1}}}}
    result = run_range(lake, [hd.high_density_points], DATES[0], DATES[-1], run_config=config)
    assert result.success
    per_day = meta(result, "high_density_points")["per_day"]
    assert set(per_day) == set(DATES)
    listed = lake.read_parquet(f"curated/high_density_points/date={DATES[-1]}")
    assert len(listed) and listed["cell"].is_unique
    assert lake.parquet_files(f"work/hdp_cells/date={DATES[-1]}")

    planted = lake.read_parquet("truth/hdp")
    precise, found = hdp.match_planted(listed, planted)
    assert precise.mean() >= 0.9, listed
    # planted HDPs active on >= 2 of the 4 days
    truth = pd.concat(
        [lake.read_parquet(f"truth/hdp_pings/date={d}").assign(date=d) for d in DATES]
    )
    active = truth.groupby("hdp_id")["date"].nunique()
    seen = planted["hdp_id"].map(active).fillna(0) >= 2
    assert found[seen.to_numpy()].mean() >= 0.95

    # the list in clean_pings: planted pings go, genuine visit pings stay
    raw = lake.read_parquet(f"raw/pings/date={DATES[-1]}")
    clean, quarantine = clean_pings(raw, date.fromisoformat(DATES[-1]), hdps=listed)
    fixed, _ = clean_pings(raw, date.fromisoformat(DATES[-1]))
    assert len(clean) < len(fixed)
    assert (quarantine["reason"] == "high_density").sum() > 0


def test_update_history_over_120_days_equals_the_rescan() -> None:
    """Windows opening and closing for four months: the incremental path never drifts."""
    import numpy as np

    rng = np.random.default_rng(0)
    days = pd.date_range("2024-01-01", periods=120, freq="D", tz="UTC")
    n = 6000
    start = days[rng.integers(0, 120, n)] + pd.to_timedelta(rng.integers(0, 80_000, n), unit="s")
    dwell = rng.uniform(300, 5000, n)
    visits = pd.DataFrame(
        {
            "device_id": [f"d{i}" for i in rng.integers(0, 120, n)],
            "poi_id": [f"p{i}" for i in rng.integers(0, 30, n)],
            "start_ts": start,
            "end_ts": start + pd.to_timedelta(dwell, unit="s"),
            "dwell_s": dwell,
            "brand": "b",
        }
    )
    by_day = dict(tuple(visits.groupby(visits["start_ts"].dt.strftime("%Y-%m-%d"))))
    keys = [str(d.date()) for d in days]
    snapshot = history.empty_history()
    for i, day in enumerate(keys):
        leaving = {
            w: by_day[keys[i - w]] for w in history.WINDOWS if i >= w and keys[i - w] in by_day
        }
        snapshot = history.update_history(snapshot, by_day.get(day, visits.iloc[:0]), leaving, day)
        if i in (6, 29, 89, 119):
            pd.testing.assert_frame_equal(
                snapshot, history.history_from_visits(visits, day), check_exact=False, atol=1e-2
            )
            assert history.history_invariants(snapshot).all()


def test_hdp_cells_flag_a_fake_point_not_a_busy_place() -> None:
    """A busy place (many devices spread over its footprint, scattered accuracies) is not
    flagged; an SDK default beside it (fewer devices, one accuracy, one point) is."""
    import numpy as np

    from near_assets.science import hdp

    rng = np.random.default_rng(1)
    n_mall, n_fake = 1500, 60
    mall_dev = rng.integers(0, 150, n_mall)
    fake_dev = rng.integers(1000, 1020, n_fake)
    pings = pd.DataFrame(
        {
            "device_id": np.r_[mall_dev, fake_dev].astype(str),
            "lat": np.r_[40.7 + rng.normal(0, 3e-4, n_mall), np.full(n_fake, 40.70023)],
            "lon": np.r_[-74.0 + rng.normal(0, 3e-4, n_mall), np.full(n_fake, -74.00023)],
            "accuracy_m": np.r_[rng.uniform(3, 60, n_mall).round(1), np.full(n_fake, 65.0)],
        }
    )
    cells = hdp.day_cells(pings)
    fake = hdp.cell_codes(np.array([40.70023]), np.array([-74.00023]), hdp.HdpParams.cell_deg)
    flagged = cells[cells["flagged"]]
    assert flagged["cell"].tolist() == fake.tolist()
    listed = hdp.maintain_list(
        pd.concat([cells.assign(date="2024-01-01"), cells.assign(date="2024-01-02")]),
        "2024-01-02",
    )
    assert listed["cell"].tolist() == fake.tolist() and listed["days_flagged"].tolist() == [2]
    on = hdp.on_hdp(pings["lat"].to_numpy(), pings["lon"].to_numpy(), listed)
    assert on[n_mall:].all() and on[:n_mall].mean() < 0.01


def test_high_density_points_accuracy_check_scores_the_planted_points(lake: LakeResource) -> None:
    from near_assets.evaluation.models import high_density_points_accuracy
    from near_assets.models import high_density_points as hd

    config = {"ops": {"high_density_points": {"config": {"max_removed_share": 0.1}}}}
    result = run_range(
        lake,
        [hd.high_density_points, high_density_points_accuracy],
        DATES[0],
        DATES[-1],
        run_config=config,
    )
    assert result.success
    (check,) = [
        c
        for c in result.get_asset_check_evaluations()
        if c.check_name == "high_density_points_accuracy"
    ]
    assert check.passed
    per_day = check.metadata["per_day"].value
    last = per_day[DATES[-1]]
    assert last["precision"] >= 0.9 and last["recall"] >= 0.95, last
    assert last["planted"] > 0 and last["recall_by_kind"]
    # the list of the day before drops planted pings, and (almost) no genuine visit ping
    assert last["planted_pings_removed"] > 0.5
    assert last["genuine_visit_pings_removed"] < 0.02
    assert "planted_pings_removed" not in per_day[DATES[0]]  # no list the day before
