"""Audience estimates: the projection science and the write-audit-publish gate end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import redis

from near_assets.audience import audience_estimates, day_detection
from near_assets.evaluation.audience import audience_truth
from near_assets.science.audience import project_audience, score_against_truth
from near_assets.tables import AUDIENCE_ESTIMATES, AUDIENCE_REDIS_KEY
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from resources.spark import SparkResource

REPO = Path(__file__).resolve().parents[1]
TABLE, REDIS_KEY = AUDIENCE_ESTIMATES.name, AUDIENCE_REDIS_KEY

# ---- science ---------------------------------------------------------------------------------


def test_each_visitor_stands_for_population_over_active_panel_of_home_area() -> None:
    areas = pd.DataFrame({"area_id": ["a", "b"], "population": [100, 1000]})
    homes = pd.DataFrame({"device_id": ["d1", "d2", "d3", "d4"], "area_id": ["a", "a", "b", "b"]})
    visits = pd.DataFrame({"device_id": ["d1", "d1", "d3"], "poi_id": ["p", "p", "p"]})
    out = project_audience(visits, homes, areas, active_devices=["d1", "d2", "d3"]).set_index(
        "poi_id"
    )
    assert out.loc["p", "visitors"] == 2  # repeats count once
    assert out.loc["p", "estimate"] == 100 / 2 + 1000 / 1  # d4 was not active: b's weight is 1000


def test_unknown_home_visitors_count_as_visitors_and_estimate_is_at_least_visitors() -> None:
    areas = pd.DataFrame({"area_id": ["a"], "population": [10]})
    homes = pd.DataFrame({"device_id": ["d1", "d2"], "area_id": ["a", "a"]})
    visits = pd.DataFrame({"device_id": [f"x{i}" for i in range(8)], "poi_id": "p"})
    out = project_audience(visits, homes, areas).iloc[0]
    assert out["visitors"] == 8 and out["estimate"] >= 8
    assert out["estimate_low"] >= 8


def test_every_known_poi_gets_a_row_with_an_interval_around_the_estimate() -> None:
    areas = pd.DataFrame({"area_id": ["a"], "population": [1000]})
    homes = pd.DataFrame({"device_id": [f"d{i}" for i in range(10)], "area_id": "a"})
    visits = pd.DataFrame({"device_id": ["d1", "d2"], "poi_id": ["p1", "p1"]})
    out = project_audience(visits, homes, areas, pois=["p1", "p2"]).set_index("poi_id")
    assert list(out.index) == ["p1", "p2"]
    assert out.loc["p2", ["visitors", "estimate", "estimate_low"]].tolist() == [0, 0, 0]
    assert out.loc["p2", "estimate_high"] > 0
    assert (out["estimate_low"] <= out["estimate"]).all()
    assert (out["estimate"] <= out["estimate_high"]).all()


def day_of_pings(device: str, every_s: int, lat0: float = 52.0) -> pd.DataFrame:
    """At place A until noon, one travel ping, then at place B (about 2 km away) till midnight."""
    t = np.arange(0, 86_400, every_s, dtype=float)
    t = np.sort(np.r_[t[(t < 43_200) | (t > 44_400)], 43_800.0])
    lat = np.where(t < 43_200, lat0, lat0 + 0.018)
    lat = np.where(t == 43_800.0, lat0 + 0.009, lat)
    ts = pd.Timestamp("2024-03-04", tz="UTC") + pd.to_timedelta(t, unit="s")
    return pd.DataFrame({"device_id": device, "ts": ts, "lat": lat, "lon": 4.0})


def test_detection_rate_follows_the_device_sampling_and_needs_no_truth() -> None:
    from near_assets.science.audience import DetectionParams, detection_rates
    from near_assets.science.stays import detect_stays

    pings = pd.concat([day_of_pings("dense", 60), day_of_pings("sparse", 1500)])
    stays = detect_stays(pings)
    none = pd.DataFrame({"device_id": pd.Series(dtype=str), "dwell_s": pd.Series(dtype=float)})
    rates, summary = detection_rates(pings, stays, none, DetectionParams(groups=2))
    p = rates.set_index("device_id")["p_detect"]
    assert p["dense"] > 0.95  # a ping a minute sees nearly every visit
    assert p["sparse"] < p["dense"] - 0.1  # a ping every 25 min misses the short ones
    assert summary["anchors"] >= 2
    # The visits seen are all ~10 min long: short dwells, which the sparse device cannot see.
    short = pd.DataFrame({"device_id": "dense", "dwell_s": np.full(30, 620.0)})
    rates, summary = detection_rates(pings, stays, short, DetectionParams(groups=2))
    p = rates.set_index("device_id")["p_detect"]
    assert summary["mean_dwell_s"] < 1500
    assert p["dense"] > 0.9 and p["sparse"] == DetectionParams().min_p
    empty = pings.iloc[:0]
    assert detection_rates(empty, stays.iloc[:0], none)[0].empty


def simulated_day(
    seed: int, n_pois: int = 600, day: int = 0, change: float = 0.0
) -> tuple[pd.DataFrame, ...]:
    """A panel sampled per area (rates 0.5-3 %) from a population visiting POIs independently.

    The world (population, panel, visit rates) depends on ``seed``; the visits on ``day``.
    ``change``: s.d. of a real day-to-day log change of every POI's visit rate.
    """
    world = np.random.default_rng(seed)
    population = world.integers(3000, 20000, 32)
    panel = world.binomial(population, world.uniform(0.005, 0.03, 32))
    q = world.gamma(0.6, 0.012, n_pois)
    if change:
        q = np.minimum(
            q * np.exp(change * np.random.default_rng([seed, day, 1]).standard_normal(n_pois)), 1.0
        )
    rng = np.random.default_rng([seed, day])
    areas = pd.DataFrame({"area_id": [f"a{i}" for i in range(32)], "population": population})
    homes, visits, truth, panel_visitors = [], [], np.zeros(n_pois, int), np.zeros(n_pois, int)
    for a in range(32):
        ids = np.array([f"a{a}d{i}" for i in range(panel[a])])
        homes.append(pd.DataFrame({"device_id": ids, "area_id": f"a{a}"}))
        seen = rng.random((len(ids), n_pois)) < q
        dev, poi = np.nonzero(seen)
        visits.append(pd.DataFrame({"device_id": ids[dev], "poi_id": [f"p{j}" for j in poi]}))
        panel_visitors += seen.sum(0)
        truth += seen.sum(0) + rng.binomial(population[a] - panel[a], q)
    pois = [f"p{j}" for j in range(n_pois)]
    truth_df = pd.DataFrame(
        {"poi_id": pois, "panel_visitors": panel_visitors, "true_people": truth}
    )
    return pd.concat(visits), pd.concat(homes), areas, pois, truth_df


def test_projection_is_accurate_and_the_interval_calibrated_on_a_sampled_panel() -> None:
    visits, homes, areas, pois, truth = simulated_day(3)
    score = score_against_truth(project_audience(visits, homes, areas, pois=pois), truth)
    assert score["pois_scored"] > 50
    assert score["median_abs_pct_error"] < 10
    assert 0.85 <= score["interval_coverage"] <= 0.97
    assert 0.85 <= score["interval_coverage_all"] <= 0.97
    assert score["visitors_median_abs_pct_error"] == 0


def test_blending_trailing_days_cuts_the_error_and_keeps_the_interval_calibrated() -> None:
    from near_assets.science.audience import daily_ht

    history, pairs = [], []
    for day in range(6):
        visits, homes, areas, pois, _ = simulated_day(5, 300, day)
        per_poi, _, day_pairs = daily_ht(visits, homes, areas, pois)
        history.append(per_poi)
        pairs.append(day_pairs)
    visits, homes, areas, pois, truth = simulated_day(5, 300, 6)
    alone = score_against_truth(project_audience(visits, homes, areas, pois=pois), truth)
    kw = {"pois": pois, "history": history, "history_pairs": pairs}
    blended = score_against_truth(project_audience(visits, homes, areas, **kw), truth)
    assert blended["median_abs_pct_error"] < alone["median_abs_pct_error"]
    assert blended["median_abs_pct_error"] < 6
    assert 0.85 <= blended["interval_coverage_all"] <= 0.97


def test_one_trailing_day_with_real_changes_keeps_the_interval_calibrated() -> None:
    """Audiences that really move by ~25 % a day: the between-day variance is estimated from
    today and a single trailing day (it used to be 0 with one day: over-confident blend)."""
    from near_assets.science.audience import daily_ht

    covered = []
    for seed in (21, 22):
        visits, homes, areas, pois, _ = simulated_day(seed, 400, 0, change=0.25)
        per_poi, _, day_pairs = daily_ht(visits, homes, areas, pois)
        visits, homes, areas, pois, truth = simulated_day(seed, 400, 1, change=0.25)
        kw = {"pois": pois, "history": [per_poi], "history_pairs": [day_pairs]}
        covered.append(score_against_truth(project_audience(visits, homes, areas, **kw), truth))
    assert all(0.85 <= s["interval_coverage"] <= 0.97 for s in covered)
    assert all(0.85 <= s["interval_coverage_all"] <= 0.97 for s in covered)


def test_the_same_panel_seen_again_does_not_shrink_the_interval() -> None:
    """Days whose visitors are the same panel devices carry the same sampling error: the
    covariance through repeat visitors keeps the blend from treating them as new samples."""
    from near_assets.science.audience import blend_with_history, daily_ht, day_covariance

    visits, homes, areas, pois, _ = simulated_day(9, 200)
    per_poi, typical, day_pairs = daily_ht(visits, homes, areas, pois)
    both = day_covariance(day_pairs, day_pairs, per_poi.index)
    assert np.allclose(both, per_poi["var"], rtol=0.05)  # each visitor's w(w-1) on both days
    naive = blend_with_history(per_poi, [per_poi] * 6, typical)
    shared = blend_with_history(per_poi, [per_poi] * 6, typical, [day_pairs] * 7)
    big = per_poi["e"] > per_poi["e"].median()
    assert (naive["var"][big] < 0.3 * per_poi["var"][big]).all()  # 7 "independent" samples
    assert (shared["var"][big] > 0.85 * per_poi["var"][big]).all()
    assert np.allclose(shared["e"], per_poi["e"])


# ---- write-audit-publish end to end ---------------------------------------------------------

POIS = [f"poi{i:03d}" for i in range(120)]
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04", "2024-03-05"]


def write_inputs(lake: LakeResource, day: str, seed: int, drop_half_pois: bool = False) -> None:
    rng = np.random.default_rng(seed)
    devices = [f"d{i:04d}" for i in range(300)]
    lake.write_parquet(
        pd.DataFrame({"device_id": devices, "area_id": [f"a{i % 3}" for i in range(300)]}),
        f"work/demographics/date={day}",
    )
    dev = rng.choice(devices, 1500)
    poi = rng.choice(POIS, 1500)
    visits = pd.DataFrame({"device_id": dev, "poi_id": poi})
    if drop_half_pois:
        visits = visits[~visits["poi_id"].isin(POIS[::2])]
    lake.write_parquet(visits, f"curated/visits/date={day}")


def square(x: float, y: float, size: float) -> str:
    return f"POLYGON (({x} {y}, {x + size} {y}, {x + size} {y + size}, {x} {y + size}, {x} {y}))"


@pytest.fixture
def world(tmp_lake: LakeResource) -> LakeResource:
    tmp_lake.write_parquet(
        pd.DataFrame(
            {"poi_id": POIS, "geometry_wkt": [square(i * 0.01, 0, 0.001) for i in range(120)]}
        ),
        "reference/pois",
    )
    tmp_lake.write_parquet(
        pd.DataFrame(
            {
                "area_id": ["a0", "a1", "a2"],
                "geometry_wkt": [square(i, 1, 1.0) for i in range(3)],
                "population": [20000, 50000, 10000],
            }
        ),
        "reference/areas",
    )
    return tmp_lake


def run_day(lake: LakeResource, redis_url: str, alerts: AlertsResource, day: str):
    return dg.materialize(
        [audience_estimates],
        partition_key=day,
        resources={
            "lake": lake,
            "redis": RedisResource(url=redis_url),
            "alerts": alerts,
            "spark": SparkResource(master="local[2]"),
        },
        raise_on_error=False,
    )


def lake_snapshot(lake: LakeResource) -> dict[str, bytes]:
    keys = lake.list(f"curated/{TABLE}") + lake.list(f"backup/{TABLE}")
    return {k: lake.read_bytes(k) for k in keys}


def redis_snapshot(client: redis.Redis) -> dict[str, dict]:
    names = [REDIS_KEY, f"{REDIS_KEY}:meta", f"{REDIS_KEY}:backup", f"{REDIS_KEY}:backup:meta"]
    return {k: client.hgetall(k) for k in names}


def test_a_faulty_day_alerts_and_leaves_production_untouched_then_the_next_day_publishes(
    world: LakeResource, redis_url: str, redis_client: redis.Redis, slack_server
) -> None:
    alerts = AlertsResource(token="xoxb-test", api_url=slack_server.url)
    for i, day in enumerate(DAYS[:3]):
        write_inputs(world, day, seed=i)
        assert run_day(world, redis_url, alerts, day).success
    assert redis_client.hget(f"{REDIS_KEY}:meta", "date") == DAYS[2]
    assert redis_client.hlen(REDIS_KEY) == len(POIS)
    lake_before, redis_before = lake_snapshot(world), redis_snapshot(redis_client)

    write_inputs(world, DAYS[3], seed=3, drop_half_pois=True)
    result = run_day(world, redis_url, alerts, DAYS[3])

    assert not result.success
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert {"visited_pois_band", "total_visitors_band"} <= failed
    (message,) = slack_server.messages()
    assert TABLE in message and f"date={DAYS[3]}" in message and "visited_pois_band" in message
    assert "ratio=" in message and "/runs/" in message
    assert lake_snapshot(world) == lake_before
    assert redis_snapshot(redis_client) == redis_before
    assert not redis_client.keys(f"{REDIS_KEY}:staging:*")
    assert not world.list(f"staging/{TABLE}")

    write_inputs(world, DAYS[4], seed=4)
    assert run_day(world, redis_url, alerts, DAYS[4]).success
    assert redis_client.hget(f"{REDIS_KEY}:meta", "date") == DAYS[4]
    assert redis_client.hget(f"{REDIS_KEY}:backup:meta", "date") == DAYS[2]
    published = world.read_parquet(f"curated/{TABLE}/date={DAYS[4]}")
    assert len(published) == len(POIS)
    assert set(published.columns) >= {"poi_id", "visitors", "estimate", "estimate_low"}
    assert len(slack_server.messages()) == 1


def test_restore_command_rolls_back_the_lake_partition_and_the_redis_hash(
    world: LakeResource, redis_url: str, redis_client: redis.Redis, monkeypatch
) -> None:
    alerts = AlertsResource()
    day = DAYS[0]
    write_inputs(world, day, seed=10)
    assert run_day(world, redis_url, alerts, day).success
    first_lake = world.read_bytes(f"curated/{TABLE}/date={day}/part-0.parquet")
    first_redis = redis_client.hgetall(REDIS_KEY)
    write_inputs(world, day, seed=11)  # a rerun of the day with different inputs
    assert run_day(world, redis_url, alerts, day).success
    assert redis_client.hgetall(REDIS_KEY) != first_redis

    monkeypatch.setenv("LAKE_ROOT", world.root)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("LAKE_BUCKET", raising=False)
    spec = importlib.util.spec_from_file_location("restore_cli", REPO / "scripts" / "restore.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([TABLE, "--date", day]) == 0
    assert world.read_bytes(f"curated/{TABLE}/date={day}/part-0.parquet") == first_lake
    assert redis_client.hgetall(REDIS_KEY) == first_redis


def run_days(lake: LakeResource, redis_url: str, alerts: AlertsResource, first: str, last: str):
    """One run over the partitions ``first`` .. ``last`` (what a single-run backfill launches)."""
    return dg.materialize(
        [audience_estimates, audience_truth],
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        resources={
            "lake": lake,
            "redis": RedisResource(url=redis_url),
            "alerts": alerts,
            "spark": SparkResource(master="local[2]"),
        },
        raise_on_error=False,
    )


def test_the_month_backfill_can_select_audience_estimates() -> None:
    assert audience_estimates.backfill_policy == dg.BackfillPolicy.single_run()
    upstream = {k.to_user_string() for k in audience_estimates.dependency_keys}
    assert upstream >= {"clean_pings", "stay_points", "visits", "demographics", "reference_pois"}


def test_a_multi_day_run_publishes_each_day_in_order_with_its_own_history(
    world: LakeResource, redis_url: str, redis_client: redis.Redis, slack_server
) -> None:
    """Days 1-3 are published one after the other (lake and Redis); day 4 sees them as its
    trailing history, so its visited-POI band is enforced and fails it: days 1-3 stay
    published, day 4 is not."""
    alerts = AlertsResource(token="xoxb-test", api_url=slack_server.url)
    for i, day in enumerate(DAYS[:3]):
        write_inputs(world, day, seed=i)
    write_inputs(world, DAYS[3], seed=3, drop_half_pois=True)

    result = run_days(world, redis_url, alerts, DAYS[0], DAYS[3])

    assert not result.success
    assert all(world.parquet_files(f"curated/{TABLE}/date={d}") for d in DAYS[:3])
    assert not world.parquet_files(f"curated/{TABLE}/date={DAYS[3]}")
    assert redis_client.hget(f"{REDIS_KEY}:meta", "date") == DAYS[2]
    assert redis_client.hget(f"{REDIS_KEY}:backup:meta", "date") == DAYS[1]  # swapped per day
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert "visited_pois_band" in failed
    (message,) = slack_server.messages()
    assert f"date={DAYS[3]}" in message

    write_inputs(world, DAYS[3], seed=3)
    write_inputs(world, DAYS[4], seed=4)
    again = run_days(world, redis_url, alerts, DAYS[3], DAYS[4])
    assert again.success
    mats = again.asset_materializations_for_node(TABLE)
    assert sorted(m.partition for m in mats) == DAYS[3:5]
    assert all("dagster/row_count" in m.metadata for m in mats)
    assert redis_client.hget(f"{REDIS_KEY}:meta", "date") == DAYS[4]
    assert redis_client.hget(f"{REDIS_KEY}:backup:meta", "date") == DAYS[3]
    assert redis_client.hlen(REDIS_KEY) == len(POIS)


# ---- calendar-aware bands and missing inputs (issue 14) ---------------------------------------


def publish_history(lake: LakeResource, saturday: str, saturday_total: int) -> None:
    """Three published weeks before ``saturday``: weekends 1.6x weekdays, all POIs visited."""
    for d in pd.date_range(end=pd.Timestamp(saturday) - pd.Timedelta(days=1), periods=21):
        total = saturday_total if d.weekday() >= 5 else round(saturday_total / 1.6)
        visitors = np.full(len(POIS), total // len(POIS))
        visitors[: total % len(POIS)] += 1
        est = visitors * 10
        df = pd.DataFrame(
            {"poi_id": POIS, "visitors": visitors, "estimate": est, "estimate_low": est,
             "estimate_high": est, "std_error": 1.0}
        )  # fmt: skip
        lake.write_parquet(df, f"curated/{TABLE}/date={d.date().isoformat()}")


def checks_of(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.parametrize("broken", [False, True])
def test_a_normal_saturday_publishes_and_half_the_devices_blocks(
    world: LakeResource, redis_url: str, broken: bool
) -> None:
    saturday = "2024-03-23"
    write_inputs(world, saturday, seed=7)
    visits = world.read_parquet(f"curated/visits/date={saturday}")
    publish_history(world, saturday, len(visits.drop_duplicates()))
    if broken:  # half the panel's devices vanished upstream
        kept = visits[visits["device_id"] < "d0150"]
        world.write_parquet(kept, f"curated/visits/date={saturday}")

    result = run_day(world, redis_url, AlertsResource(), saturday)

    band = checks_of(result)["total_visitors_band"]
    assert "of 3 previous Saturdays (2024-03-02, 2024-03-09, 2024-03-16)" in band.description
    assert "block band [" in band.description
    if broken:
        assert not result.success and not band.passed
        assert band.metadata["severity"].value == "BLOCK"
        assert not world.parquet_files(f"curated/{TABLE}/date={saturday}")
    else:
        assert result.success and band.passed, band.description
        assert band.metadata["severity"].value == "OK"
        assert world.parquet_files(f"curated/{TABLE}/date={saturday}")


def test_a_missing_or_empty_input_day_never_overwrites_the_published_partition(
    world: LakeResource, redis_url: str, redis_client: redis.Redis
) -> None:
    day = DAYS[0]
    write_inputs(world, day, seed=1)
    assert run_day(world, redis_url, AlertsResource(), day).success
    before, redis_before = lake_snapshot(world), redis_snapshot(redis_client)

    world.write_parquet(
        pd.DataFrame({"device_id": pd.Series(dtype=str), "poi_id": pd.Series(dtype=str)}),
        f"curated/visits/date={day}",
    )  # the day's visits republished empty upstream
    empty = run_day(world, redis_url, AlertsResource(), day)
    world.delete(f"work/demographics/date={DAYS[1]}")
    missing = run_day(world, redis_url, AlertsResource(), DAYS[1])

    for result, reason in (
        (empty, "visits empty"),
        (missing, "visits missing, demographics missing"),
    ):
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        description = failure.event_specific_data.error.message
        assert "no data for" in description and reason in description, description
        assert "nothing published" in description
    assert lake_snapshot(world) == before
    assert redis_snapshot(redis_client) == redis_before


def test_a_bad_reference_poi_is_quarantined_and_the_rest_publishes(
    world: LakeResource, redis_url: str
) -> None:
    reference = world.read_parquet("reference/pois")
    reference.loc[5, "geometry_wkt"] = "oops"
    reference = pd.concat([reference, reference.iloc[[7]].assign(geometry_wkt=square(9, 9, 1))])
    world.write_parquet(reference, "reference/pois")
    write_inputs(world, DAYS[0], seed=2)

    result = run_day(world, redis_url, AlertsResource(), DAYS[0])

    assert result.success
    published = world.read_parquet(f"curated/{TABLE}/date={DAYS[0]}")
    assert set(POIS) - set(published["poi_id"]) == {POIS[5], POIS[7]}
    quarantine = world.read_parquet("quarantine/reference/kind=pois")
    reasons = dict(zip(quarantine["row_id"], quarantine["reason"], strict=False))
    assert reasons[POIS[5]].startswith("invalid WKT")
    assert reasons[POIS[7]] == "duplicate poi_id: 2 rows disagree, none kept"


def test_truth_scoring_is_a_non_blocking_check_in_the_same_run(
    world: LakeResource, redis_url: str, redis_client: redis.Redis
) -> None:
    day = DAYS[0]
    write_inputs(world, day, seed=1)
    truth = pd.DataFrame(
        {"poi_id": POIS, "panel_visitors": 40, "true_people": np.arange(len(POIS)) * 30 + 3000}
    )
    world.write_parquet(truth, f"truth/poi_visitors/date={day}")
    assert audience_truth.check_specs and not next(iter(audience_truth.check_specs)).blocking

    result = dg.materialize(
        [audience_estimates, audience_truth],
        partition_key=day,
        resources={
            "lake": world,
            "redis": RedisResource(url=redis_url),
            "alerts": AlertsResource(),
            "spark": SparkResource(master="local[2]"),
        },
    )

    (check,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "audience_estimates_accuracy"
    ]
    assert check.passed and check.partition == day
    assert check.metadata["truth_pois_scored"].value == len(POIS)
    assert {"truth_median_abs_pct_error", "truth_interval_coverage"} <= set(check.metadata)
    (mat,) = result.asset_materializations_for_node(TABLE)
    assert mat.metadata["dagster/row_count"].value == len(POIS)
    assert not any(k.startswith("truth_") for k in mat.metadata)


# ---- the real chain: generator -> clean -> stays -> visits -> homes -> audience ---------------

CHAIN_DAYS = ["2024-03-04", "2024-03-05", "2024-03-06"]


def real_chain(lake: LakeResource, devices: int, seed: int) -> dict:
    """The generator's default panel through the science of every upstream asset, in-process."""
    from datetime import date

    from near_assets.science.cleaning import clean_pings
    from near_assets.science.demographics import device_demographics
    from near_assets.science.home import homes_by_day
    from near_assets.science.stays import detect_stays
    from near_assets.science.visits import PoiIndex, match_visits
    from near_assets.synth import generate

    generate(
        lake,
        seed=seed,
        devices=devices,
        start=CHAIN_DAYS[0],
        days=len(CHAIN_DAYS),
        progress=False,
        timezone="UTC",
    )
    pois = lake.read_parquet("reference/pois")
    index = PoiIndex(pois)
    days = {}
    for d in CHAIN_DAYS:
        clean, _ = clean_pings(lake.read_parquet(f"raw/pings/date={d}"), date.fromisoformat(d))
        stays = detect_stays(clean)
        days[d] = (clean[["device_id", "ts", "lat", "lon"]], stays, match_visits(stays, index))
    last = CHAIN_DAYS[-1]
    cols = ["device_id", "start_ts", "end_ts", "lat", "lon"]
    stays = pd.concat([s[cols] for _, s, _ in days.values()], ignore_index=True)
    areas = lake.read_parquet("reference/areas")
    homes = homes_by_day(stays, [last]).drop(columns="date")
    return {
        "day": days[last],
        "homes": device_demographics(homes, areas)[["device_id", "area_id"]],
        "areas": areas,
        "pois": pois["poi_id"].astype(str),
        "truth": lake.read_parquet(f"truth/poi_visitors/date={last}"),
    }


@pytest.mark.slow
def test_visit_detection_correction_brings_the_real_chain_to_the_true_population(
    tmp_lake: LakeResource,
) -> None:
    """About half the true visits leave no stay (no or too few pings during the visit): the
    plain projection of detected visits counts about half the people; the detection-rate
    correction (estimated from the day's pings, stays and visits only) removes that bias and
    keeps the 90 % interval calibrated. The per-POI +-10 % target needs POIs with >= 30 panel
    visitors, which a test-sized panel has few of (``bench/audience_accuracy.py`` measures
    it on 10,000 devices); here the bias is asserted on the POIs' total and mean error."""
    from near_assets.science.audience import detection_rates

    chain = real_chain(tmp_lake, devices=2500, seed=11)
    pings, stays, visits = chain["day"]
    rates, summary = detection_rates(pings, stays, visits)
    assert 0.3 < summary["mean_detection_rate"] < 0.7  # about half the visits have no pings
    day = CHAIN_DAYS[-1]  # the asset's helper reads the same inputs from the lake and caches
    tmp_lake.write_parquet(pings, f"work/clean_pings/date={day}")
    tmp_lake.write_parquet(stays, f"curated/stay_points/date={day}")
    tmp_lake.write_parquet(visits, f"curated/visits/date={day}")
    cached, _ = day_detection(tmp_lake, day, refresh=True)
    assert np.allclose(
        cached.set_index("device_id").loc[rates["device_id"], "p_detect"], rates["p_detect"]
    )
    assert tmp_lake.parquet_files(f"work/visit_detection/date={day}")
    args = (visits, chain["homes"], chain["areas"])
    kw = {"pois": chain["pois"], "active_devices": pd.unique(pings["device_id"])}
    truth = chain["truth"]
    plain_est = project_audience(*args, **kw)
    plain = score_against_truth(plain_est, truth, min_panel_visitors=10)
    fixed_est = project_audience(*args, **kw, detection=rates)
    fixed = score_against_truth(fixed_est, truth, min_panel_visitors=10)

    def total_ratio(est: pd.DataFrame) -> float:
        both = est.merge(truth, on="poi_id")
        return both["estimate"].sum() / both["true_people"].sum()

    assert total_ratio(plain_est) < 0.65 and plain["mean_pct_error"] < -35
    assert abs(total_ratio(fixed_est) - 1) < 0.10
    assert fixed["pois_scored"] >= 30
    assert abs(fixed["mean_pct_error"]) < 12
    assert fixed["median_abs_pct_error"] < 0.6 * plain["median_abs_pct_error"]
    assert 0.8 <= fixed["interval_coverage"] <= 0.97
    assert 0.8 <= fixed["interval_coverage_all"] <= 0.97
