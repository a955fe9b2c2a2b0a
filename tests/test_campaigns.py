"""Campaign insights: file validation, the campaign sensor, lift science, automation."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets.campaigns import (
    CampaignLive,
    campaign_insights,
    campaign_partitions,
    campaign_sensor,
)
from near_assets.evaluation.campaigns import campaign_truth
from near_assets.science.campaigns import (
    CampaignFileError,
    build_panel,
    campaign_phase,
    matched_lift,
    parse_campaign,
)
from near_assets.science.demographics import home_areas
from near_assets.tables import CAMPAIGN_INSIGHTS
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

TODAY = datetime.now(UTC).date()


def campaign_json(cid: str, start: date, days: int = 30, brand: str = "Acme") -> bytes:
    end = start + timedelta(days=days - 1)
    return json.dumps(
        {"campaign_id": cid, "brand": brand, "start_date": str(start), "end_date": str(end)}
    ).encode()


def put(lake: LakeResource, name: str, data: bytes) -> None:
    lake.write_bytes(f"reference/campaigns/{name}", data)


def publish_visits(lake: LakeResource, day: date, homes: bool = True) -> None:
    """A published ``curated/visits/date=<day>`` (CONTRACTS columns, one visit) and, with
    ``homes``, ``curated/home_location/date=<day>``."""
    if homes:
        lake.write_parquet(
            pd.DataFrame(
                {"device_id": ["d000001"], "lat": [40.7], "lon": [-74.0], "confidence": [1.0],
                 "nights": [7]}
            ),
            f"curated/home_location/date={day.isoformat()}",
        )  # fmt: skip
    ts = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12)
    lake.write_parquet(
        pd.DataFrame(
            {
                "device_id": ["d000001"],
                "poi_id": ["poi_1"],
                "start_ts": [ts],
                "end_ts": [ts + pd.Timedelta(minutes=20)],
                "dwell_s": [1200.0],
            }
        ),
        f"curated/visits/date={day.isoformat()}",
    )


def tick(lake: LakeResource, alerts: AlertsResource, instance, cursor=None):
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"lake": lake, "alerts": alerts}
    )
    return campaign_sensor(ctx)


@pytest.fixture
def slack_alerts(slack_server) -> AlertsResource:
    return AlertsResource(token="xoxb-test", channel="#alerts", api_url=slack_server.url)


# ---- file validation ------------------------------------------------------------------------


def test_valid_campaign_file_parses():
    spec = parse_campaign(campaign_json("c_1", date(2024, 3, 1), 15), "c_1")
    assert (spec.campaign_id, spec.brand, spec.days) == ("c_1", "Acme", 15)


@pytest.mark.parametrize(
    ("raw", "stem", "reason"),
    [
        (b"{not json", "c1", "not valid JSON"),
        (b'{"campaign_id": "c1", "brand": "A", "start_date": "2024-01-01"}', "c1", "end_date"),
        (campaign_json("c1", date(2024, 1, 1), 14), "c1", "campaigns run 15 to 90"),
        (campaign_json("c1", date(2024, 1, 1), 91), "c1", "campaigns run 15 to 90"),
        (
            b'{"campaign_id": "c1", "brand": "A", "start_date": "2024-02-01", '
            b'"end_date": "2024-01-01"}',
            "c1",
            "before start_date",
        ),
        (campaign_json("../etc", date(2024, 1, 1)), None, "unsafe campaign_id"),
        (campaign_json("a b", date(2024, 1, 1)), None, "unsafe campaign_id"),
        (campaign_json("x" * 65, date(2024, 1, 1)), None, "unsafe campaign_id"),
        (campaign_json("c2", date(2024, 1, 1)), "c1", "does not match the file name"),
        (b"[1, 2]", "c1", "not a JSON object"),
    ],
)
def test_malformed_campaign_files_are_rejected_with_a_reason(raw, stem, reason):
    with pytest.raises(CampaignFileError, match=reason):
        parse_campaign(raw, stem)


def test_campaign_phase_is_live_until_two_days_after_the_end():
    spec = parse_campaign(campaign_json("c", date(2024, 1, 1), 15))
    assert campaign_phase(spec, date(2023, 12, 31)) == "upcoming"
    assert campaign_phase(spec, date(2024, 1, 1)) == "live"
    assert campaign_phase(spec, date(2024, 1, 17)) == "live"
    assert campaign_phase(spec, date(2024, 1, 18)) == "ended"


# ---- sensor ------------------------------------------------------------------------------------


def test_three_good_files_give_three_partitions_and_run_requests(tmp_lake, slack_alerts):
    start = TODAY - timedelta(days=20)
    publish_visits(tmp_lake, start)
    for cid in ("spring_a", "spring-b", "C3"):
        put(tmp_lake, f"{cid}.json", campaign_json(cid, start))
    with dg.instance_for_test() as instance:
        result = tick(tmp_lake, slack_alerts, instance)
        assert sorted(r.partition_key for r in result.run_requests) == [
            "C3",
            "spring-b",
            "spring_a",
        ]
        (add,) = result.dynamic_partitions_requests
        assert add.partitions_def_name == "campaigns"
        assert sorted(add.partition_keys) == ["C3", "spring-b", "spring_a"]
        instance.add_dynamic_partitions("campaigns", list(add.partition_keys))

        again = tick(tmp_lake, slack_alerts, instance, result.cursor)
        assert not again.run_requests
        assert not again.dynamic_partitions_requests
        assert "no new or changed" in again.skip_reason.skip_message


def test_malformed_file_is_reported_once_per_version_and_never_blocks_others(
    tmp_lake, slack_alerts, slack_server
):
    start = TODAY - timedelta(days=20)
    publish_visits(tmp_lake, start)
    put(tmp_lake, "good.json", campaign_json("good", start))
    put(tmp_lake, "broken.json", b'{"campaign_id": "broken", "brand": ')
    with dg.instance_for_test() as instance:
        first = tick(tmp_lake, slack_alerts, instance)
        assert [r.partition_key for r in first.run_requests] == ["good"]
        assert len(slack_server.messages()) == 1
        assert "broken.json" in slack_server.messages()[0]
        assert "not valid JSON" in slack_server.messages()[0]

        second = tick(tmp_lake, slack_alerts, instance, first.cursor)
        assert len(slack_server.messages()) == 1  # same version: not reported again
        assert not second.run_requests

        put(tmp_lake, "broken.json", campaign_json("broken", start, days=120))
        third = tick(tmp_lake, slack_alerts, instance, second.cursor)
        assert "broken.json: runs 120 days" in third.skip_reason.skip_message
        assert len(slack_server.messages()) == 2


def test_unsafe_ids_are_rejected(tmp_lake, slack_alerts, slack_server):
    start = TODAY - timedelta(days=20)
    publish_visits(tmp_lake, start)
    put(tmp_lake, "ok.json", campaign_json("ok", start))
    put(tmp_lake, "has space.json", campaign_json("has space", start))
    put(tmp_lake, "dots.json", campaign_json("../../x", start))
    with dg.instance_for_test() as instance:
        result = tick(tmp_lake, slack_alerts, instance)
    assert [r.partition_key for r in result.run_requests] == ["ok"]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["ok"]
    assert len(slack_server.messages()) == 2
    assert all("unsafe" in m for m in slack_server.messages())


def test_sensor_reads_campaign_files_from_s3(s3_lake, slack_alerts):
    publish_visits(s3_lake, TODAY - timedelta(days=20))
    put(s3_lake, "s3c.json", campaign_json("s3c", TODAY - timedelta(days=20)))
    with dg.instance_for_test() as instance:
        result = tick(s3_lake, slack_alerts, instance)
    assert [r.partition_key for r in result.run_requests] == ["s3c"]


def test_upcoming_campaign_gets_a_partition_but_no_run_yet(tmp_lake, slack_alerts):
    put(tmp_lake, "future.json", campaign_json("future", TODAY + timedelta(days=5)))
    with dg.instance_for_test() as instance:
        result = tick(tmp_lake, slack_alerts, instance)
    assert not result.run_requests
    assert list(result.dynamic_partitions_requests[0].partition_keys) == ["future"]


def test_first_run_waits_until_the_lake_has_visits_for_the_window_start(
    tmp_lake, slack_alerts, slack_server
):
    start = TODAY - timedelta(days=3)
    put(tmp_lake, "early.json", campaign_json("early", start))
    put(tmp_lake, "bad.json", b"{")
    with dg.instance_for_test() as instance:
        first = tick(tmp_lake, slack_alerts, instance)
        assert not first.run_requests
        skip = first.skip_reason.skip_message
        assert f"waiting for visits: early (no curated/visits for {start} yet)" in skip
        assert "bad.json: not valid JSON" in skip
        (add,) = first.dynamic_partitions_requests
        assert list(add.partition_keys) == ["early"]  # the partition exists while it waits
        instance.add_dynamic_partitions("campaigns", ["early"])
        assert "early.json" not in first.cursor  # kept out of the cursor: checked again

        publish_visits(tmp_lake, start + timedelta(days=1), homes=False)  # a later day: no
        second = tick(tmp_lake, slack_alerts, instance, first.cursor)
        assert not second.run_requests
        assert "waiting for visits: early" in second.skip_reason.skip_message
        assert not second.dynamic_partitions_requests

        publish_visits(tmp_lake, start, homes=False)  # visits, but nothing to match homes on
        waiting = tick(tmp_lake, slack_alerts, instance, second.cursor)
        assert not waiting.run_requests
        assert f"early (no curated/home_location around {start} yet)" in (
            waiting.skip_reason.skip_message
        )

        publish_visits(tmp_lake, start)
        third = tick(tmp_lake, slack_alerts, instance, waiting.cursor)
        assert [r.partition_key for r in third.run_requests] == ["early"]
        assert not third.dynamic_partitions_requests

        fourth = tick(tmp_lake, slack_alerts, instance, third.cursor)
        assert not fourth.run_requests
        assert fourth.skip_reason.skip_message == "no new or changed campaign files"
    assert len(slack_server.messages()) == 1  # the malformed file: once for its version


def test_ended_campaign_waits_for_the_lake_first_day_and_its_last_day(tmp_lake, slack_alerts):
    """An ended campaign gets no daily refresh, so its only run waits for the whole window."""
    from near_assets.partitions import daily_partitions

    lake_first = date.fromisoformat(daily_partitions.get_first_partition_key())
    start = lake_first - timedelta(days=5)  # started before the lake, ended long ago
    end = start + timedelta(days=29)
    put(tmp_lake, "straddle.json", campaign_json("straddle", start))
    put(tmp_lake, "before.json", campaign_json("before", lake_first - timedelta(days=40)))
    with dg.instance_for_test() as instance:
        first = tick(tmp_lake, slack_alerts, instance)
        assert not first.run_requests
        skip = first.skip_reason.skip_message
        assert f"straddle (no curated/visits for {lake_first}, {end} yet)" in skip
        assert "before: ended before the lake's first day" in skip
        publish_visits(tmp_lake, lake_first)
        second = tick(tmp_lake, slack_alerts, instance, first.cursor)
        assert f"straddle (no curated/visits for {end} yet)" in second.skip_reason.skip_message
        publish_visits(tmp_lake, end)
        third = tick(tmp_lake, slack_alerts, instance, second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["straddle"]


# ---- science -------------------------------------------------------------------------------------


def simulate(seed: int, lift: float, n: int = 4000, areas: int = 12) -> pd.DataFrame:
    """A panel where the brand's share of visits differs by home area and the campaign targets the
    areas where the brand is strong (a naive exposed/unexposed comparison is biased), and exposure
    multiplies the chance that a place visit goes to the brand by ``1 + lift`` (the generator's
    mechanism)."""
    rng = np.random.default_rng(seed)
    area = rng.integers(0, areas, n)
    taste = rng.beta(2, 30, n) * (1 + 2 * area / areas)
    exposed = rng.random(n) < 0.1 + 0.6 * area / areas
    rows = []
    for period, mult in (("pre", np.ones(n)), ("win", np.where(exposed, 1 + lift, 1.0))):
        k = rng.poisson(25, n)
        b = rng.binomial(k, np.minimum(taste * mult, 1))
        dev = np.repeat(np.arange(n), k)
        rank = np.arange(len(dev)) - np.repeat(np.cumsum(k) - k, k)
        is_brand = rank < np.repeat(b, k)
        rows.append(
            pd.DataFrame(
                {
                    "device_id": [f"d{i}" for i in dev],
                    "poi_id": np.where(is_brand, "brand_poi", "other_poi"),
                    "period": period,
                }
            )
        )
    visits = pd.concat(rows)
    devices = pd.DataFrame({"device_id": [f"d{i}" for i in range(n)], "home_area_id": area})
    return build_panel(
        devices,
        devices["device_id"][exposed],
        visits[visits["period"] == "win"],
        visits[visits["period"] == "pre"],
        {"brand_poi"},
    )


def test_matched_lift_recovers_a_planted_effect_despite_targeting():
    panel = simulate(7, 0.30)
    est = matched_lift(panel)
    assert est.lift_low < 0.30 < est.lift_high
    assert est.significant and abs(est.lift - 0.30) < 0.08
    naive = matched_lift(panel, strata=("pre_brand",))
    assert naive.lift > est.lift + 0.1  # targeting biases a comparison that ignores home area
    assert est.lift_low <= est.lift <= est.lift_high
    assert 0 <= est.control_visit_rate <= 1 and 0 <= est.exposed_visit_rate <= 1


def test_matched_lift_without_effect_has_an_interval_around_zero():
    est = matched_lift(simulate(11, 0.0))
    assert est.lift_low < 0 < est.lift_high
    assert abs(est.lift) < 0.1


def test_home_areas_puts_each_home_in_its_polygon():
    areas = pd.DataFrame(
        {
            "area_id": ["west", "east"],
            "geometry_wkt": [
                "POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))",
                "POLYGON((1 0, 2 0, 2 1, 1 1, 1 0))",
            ],
        }
    )
    homes = pd.DataFrame({"device_id": ["a", "b", "c"], "lat": [0.5, 0.5, 5], "lon": [0.5, 1.5, 5]})
    out = home_areas(homes, areas).set_index("device_id")["home_area_id"].to_dict()
    assert out == {"a": "west", "b": "east"}


# ---- automation --------------------------------------------------------------------------------


def test_campaign_live_condition_selects_only_live_campaigns(tmp_lake, monkeypatch):
    monkeypatch.setenv("LAKE_ROOT", tmp_lake.root)
    monkeypatch.delenv("LAKE_BUCKET", raising=False)
    put(tmp_lake, "live.json", campaign_json("live", TODAY - timedelta(days=10)))
    put(tmp_lake, "done.json", campaign_json("done", TODAY - timedelta(days=60), days=20))
    put(tmp_lake, "soon.json", campaign_json("soon", TODAY + timedelta(days=3)))

    @dg.asset(partitions_def=campaign_partitions, automation_condition=CampaignLive())
    def probe() -> None: ...

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", ["live", "done", "soon"])
        result = dg.evaluate_automation_conditions(defs=[probe], instance=instance)
        requested = result.get_requested_partitions(probe.key)
    assert requested == {"live"}


def test_campaign_insights_condition_has_the_live_filter_and_a_daily_cron():
    condition = campaign_insights.automation_conditions_by_key[campaign_insights.key]
    labels = str(condition.get_snapshot())
    assert "campaign_live" in labels
    assert "on_cron" in labels


# ---- end to end on a small generated lake -------------------------------------------------------


def lake_with_upstream_tables(lake: LakeResource, devices: int = 200, days: int = 21) -> dict:
    """Generate a small lake, then publish ``curated/visits`` and ``curated/home_location`` in the
    CONTRACTS format from the generator's ground truth (a stand-in for the mobility assets, so this
    test exercises the campaign asset on real generated data without running the ping chain)."""
    from near_assets.synth.generator import generate

    summary = generate(lake, devices=devices, days=days, seed=3, progress=False)
    homes = lake.read_parquet("truth/homes")
    for day in summary["per_day"]:
        stays = lake.read_parquet(f"truth/stays/date={day}")
        v = stays[stays["kind"] == "poi"].copy()
        v["dwell_s"] = (v["end_ts"] - v["start_ts"]).dt.total_seconds()
        lake.write_parquet(
            v[["device_id", "poi_id", "start_ts", "end_ts", "dwell_s"]],
            f"curated/visits/date={day}",
        )
        lake.write_parquet(
            homes.rename(columns={"home_lat": "lat", "home_lon": "lon"}).assign(
                confidence=1.0, nights=7
            )[["device_id", "lat", "lon", "confidence", "nights"]],
            f"curated/home_location/date={day}",
        )
    return summary


def test_campaign_insights_materializes_and_publishes_through_wap(tmp_lake, monkeypatch):
    summary = lake_with_upstream_tables(tmp_lake)
    monkeypatch.setenv("LAKE_START_DATE", summary["start"])
    cid = summary["campaigns"][0]
    spec = tmp_lake.read_json(f"reference/campaigns/{cid}.json")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [cid])
        result = dg.materialize(
            [campaign_insights, campaign_truth],
            partition_key=cid,
            instance=instance,
            resources={"lake": tmp_lake, "alerts": AlertsResource(), "spark": SparkResource()},
            run_config={"ops": {"campaign_insights": {"config": {"as_of": spec["end_date"]}}}},
        )
    assert result.success
    out = tmp_lake.read_parquet(f"curated/campaign_insights/campaign_id={cid}")
    assert len(out) == 1
    row = out.iloc[0]
    for col in ("brand", "exposed_devices", "control_devices", "exposed_visit_rate"):
        assert col in out.columns
    assert row["lift_low"] <= row["lift"] <= row["lift_high"]
    assert bool(row["final"]) and str(row["as_of"].date()) == spec["end_date"]
    (mat,) = result.asset_materializations_for_node("campaign_insights")
    assert mat.metadata["precision_floor_pp"].value > 0
    assert mat.metadata["dagster/row_count"].value == 1
    assert "planted_lift" not in mat.metadata  # truth lives in the evaluation check
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) >= {"control_size", "interval_sanity", "campaign_insights_accuracy"}
    assert all(checks[name].passed for name in ("control_size", "interval_sanity"))
    truth = checks["campaign_insights_accuracy"]
    assert truth.partition == cid and not truth.blocking
    assert "planted_lift" in truth.metadata and "lift_error_pp" in truth.metadata
    assert truth.passed and "truth_in_interval" in truth.metadata


def test_campaign_insights_declares_what_it_reads():
    upstream = {k.to_user_string() for k in campaign_insights.dependency_keys}
    assert upstream == {
        "visits",
        "visit_history",  # read instead of the visits when it holds the spans (use_history)
        "home_location",
        "reference_campaigns",
        "raw_exposures",
        "reference_pois",
        "reference_areas",
    }
    spec = campaign_insights.specs_by_key[campaign_insights.key]
    assert spec.metadata["dagster/column_schema"] == CAMPAIGN_INSIGHTS.column_schema()


# ---- failures name their cause (issue 14) -----------------------------------------------------


def reference_for(lake: LakeResource, cid: str, brand: str, exposures: bool) -> None:
    square = "POLYGON ((-74 40.7, -73.99 40.7, -73.99 40.71, -74 40.71, -74 40.7))"
    lake.write_parquet(
        pd.DataFrame(
            {"poi_id": ["poi_1"], "name": ["a"], "brand": ["Acme"], "category": ["shop"],
             "geometry_wkt": [square]}
        ),
        "reference/pois",
    )  # fmt: skip
    lake.write_parquet(
        pd.DataFrame({"area_id": ["a1"], "geometry_wkt": [square], "population": [1000]}),
        "reference/areas",
    )
    put(lake, f"{cid}.json", campaign_json(cid, date(2024, 3, 1), days=15, brand=brand))
    if exposures:
        lake.write_parquet(
            pd.DataFrame({"device_id": ["d000001"], "ts": [pd.Timestamp("2024-03-02", tz="UTC")]}),
            f"raw/exposures/campaign_id={cid}",
        )
    for i in range(10):
        publish_visits(lake, date(2024, 3, 1) + timedelta(days=i))


@pytest.mark.parametrize(
    "brand, exposures, cause",
    [
        ("Zeta", True, "campaign c9: brand Zeta has no POI in reference_pois"),
        ("Acme", False, "no exposures under raw/exposures/campaign_id=c9 for campaign c9"),
    ],
)
def test_campaign_failures_name_their_cause_and_are_not_retried(tmp_lake, brand, exposures, cause):
    from near_assets.campaigns import load_campaign, load_inputs

    reference_for(tmp_lake, "c9", brand, exposures)
    spec = load_campaign(tmp_lake, "c9")
    with pytest.raises(dg.Failure) as failure:
        load_inputs(tmp_lake, spec, date(2024, 3, 10), pre_days=7)
    assert cause in failure.value.description
    assert failure.value.allow_retries is False

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", ["c9"])
        result = dg.materialize(
            [campaign_insights],
            partition_key="c9",
            instance=instance,
            resources={"lake": tmp_lake, "alerts": AlertsResource(), "spark": SparkResource()},
            run_config={"ops": {"campaign_insights": {"config": {"as_of": "2024-03-10"}}}},
            raise_on_error=False,
        )
    assert not result.success
    (step_failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert cause in step_failure.event_specific_data.error.message
    assert not tmp_lake.parquet_files("curated/campaign_insights")
