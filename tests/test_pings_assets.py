"""raw_pings / clean_pings materialised on a real temporary lake, and the raw_pings sensor."""

import json
import warnings
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets.partitions import daily_partitions
from near_assets.pings import clean_pings, pings_job, raw_pings, raw_pings_sensor
from near_assets.science.cleaning import REASONS
from near_assets.science.hdp import HdpParams, cell_codes
from near_assets.tables import CLEAN_PINGS, HIGH_DENSITY_POINTS, QUARANTINED_PINGS
from resources.lake import LakeResource
from resources.spark import SparkResource

warnings.filterwarnings("ignore", category=dg.BetaWarning)

DAY = "2024-03-05"
DAY_MS = 1_709_596_800_000  # 2024-03-05T00:00:00Z
ASSETS = [raw_pings, clean_pings]


def good_pings(n: int, *, seed: int = 0, day_ms: int = DAY_MS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "device_id": [f"dev-{i % 40:03d}" for i in range(n)],
            "ts": day_ms + rng.integers(0, 86_400_000, n),
            "lat": 40.4 + rng.normal(0, 0.05, n),
            "lon": -3.7 + rng.normal(0, 0.05, n),
            "accuracy_m": rng.uniform(5, 80, n),
        }
    )


def malformed_day() -> tuple[pd.DataFrame, dict[str, int]]:
    """700 good rows + 300 malformed ones (60 of each row-level kind) + 20 duplicates."""
    good = good_pings(700)
    bad = good_pings(300, seed=1)
    kinds = np.repeat(
        ["null_field", "out_of_range", "zero_zero", "outside_day", "low_accuracy"], 60
    )
    bad.loc[kinds == "null_field", "lat"] = np.nan
    bad.loc[kinds == "out_of_range", "lon"] = 200.0
    bad.loc[kinds == "zero_zero", ["lat", "lon"]] = 0.0
    bad.loc[kinds == "outside_day", "ts"] -= 86_400_000
    bad.loc[kinds == "low_accuracy", "accuracy_m"] = 4000.0
    frame = pd.concat([good, bad, good.iloc[:20]], ignore_index=True)
    expected = {**dict.fromkeys(REASONS, 0), **dict.fromkeys(kinds, 60), "duplicate": 20}
    return frame, expected


def write_raw(lake: LakeResource, day: str, df: pd.DataFrame, name: str = "part-0") -> None:
    lake.write_parquet(df, f"raw/pings/date={day}/{name}.parquet")


def resources(lake: LakeResource) -> dict[str, Any]:
    return {"lake": lake, "spark": SparkResource(master="local[2]")}


def materialize(lake: LakeResource, partition_key: str | None = DAY, **kwargs: Any):
    return dg.materialize(
        kwargs.pop("assets", ASSETS),
        partition_key=partition_key,
        resources=resources(lake),
        raise_on_error=False,
        **kwargs,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def dropped(meta: dict[str, Any]) -> dict[str, int]:
    return {r: meta[f"dropped/{r}"] for r in REASONS}


def test_clean_day_passes_the_check(tmp_lake: LakeResource) -> None:
    first = good_pings(600)
    second = good_pings(400, seed=2).assign(
        ts=lambda d: pd.to_datetime(d["ts"], unit="ms", utc=True).astype("datetime64[us, UTC]")
    )
    write_raw(tmp_lake, DAY, first, "part-0")
    write_raw(tmp_lake, DAY, second, "part-1")

    result = materialize(tmp_lake)

    assert result.success
    raw = metadata(result, "raw_pings")
    assert (raw["status"], raw["files"], raw["rows"], raw["devices"]) == ("present", 2, 1000, 40)
    assert raw["ts_min"].startswith(DAY) and raw["ts_max"].startswith(DAY)
    clean = metadata(result, "clean_pings")
    assert (clean["rows_in"], clean["rows_out"], clean["bad_share"]) == (1000, 1000, 0.0)
    assert clean["engine"] == "pandas"
    assert dropped(clean) == dict.fromkeys(REASONS, 0)
    assert clean["hdp_list_cells"] == 0  # no list published for the day before
    assert "| device_id | ts |" in clean["preview"]
    assert check(result, "bad_share_below_threshold").passed
    assert check(result, "day_delivered").passed
    out = tmp_lake.read_parquet(CLEAN_PINGS.key(DAY))
    assert len(out) == 1000
    assert str(out["ts"].dtype) == "datetime64[ns, UTC]"
    assert len(tmp_lake.read_parquet(QUARANTINED_PINGS.key(DAY))) == 0


def test_day_with_30_percent_malformed_rows_fails_the_blocking_check(
    tmp_lake: LakeResource,
) -> None:
    frame, expected = malformed_day()
    write_raw(tmp_lake, DAY, frame)

    @dg.asset(
        partitions_def=clean_pings.partitions_def,
        deps=[clean_pings],
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def downstream() -> None:
        """Stands for stay_points: must not run on a broken day."""

    result = materialize(tmp_lake, assets=[*ASSETS, downstream])

    clean = metadata(result, "clean_pings")
    assert dropped(clean) == expected
    assert clean["rows_in"] == 1020
    assert clean["bad_share"] == pytest.approx(300 / 1020, abs=1e-6)
    evaluation = check(result, "bad_share_below_threshold")
    assert not evaluation.passed
    assert evaluation.blocking
    figures = {k: v.value for k, v in evaluation.metadata.items()}
    assert figures["max_bad_share"] == 0.2
    assert figures["bad_rows"] == 300
    assert figures["dropped/zero_zero"] == 60
    assert not result.asset_materializations_for_node("downstream")
    quarantine = tmp_lake.read_parquet(QUARANTINED_PINGS.key(DAY))
    assert quarantine["reason"].value_counts().to_dict() == {r: n for r, n in expected.items() if n}
    assert len(tmp_lake.read_parquet(CLEAN_PINGS.key(DAY))) == 700


def test_threshold_comes_from_env_and_run_config(
    tmp_lake: LakeResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = good_pings(900)
    frame.loc[:99, "lat"] = 0.0
    frame.loc[:99, "lon"] = 0.0  # 10 % bad
    write_raw(tmp_lake, DAY, frame)

    assert check(materialize(tmp_lake), "bad_share_below_threshold").passed
    monkeypatch.setenv("PINGS_MAX_BAD_SHARE", "0.05")
    assert not check(materialize(tmp_lake), "bad_share_below_threshold").passed
    config = dg.RunConfig(ops={"clean_pings": {"config": {"max_bad_share": 0.5}}})
    assert check(materialize(tmp_lake, run_config=config), "bad_share_below_threshold").passed
    monkeypatch.setenv("PINGS_MAX_BAD_SHARE", "lots")
    (failure,) = materialize(tmp_lake).get_step_failure_events()
    assert "PINGS_MAX_BAD_SHARE='lots'" in failure.step_failure_data.user_failure_data.description


def test_missing_day_is_reported_not_a_crash(tmp_lake: LakeResource) -> None:
    result = materialize(tmp_lake)

    assert result.success
    raw = metadata(result, "raw_pings")
    assert (raw["status"], raw["rows"], raw["files"]) == ("missing", 0, 0)
    delivered = check(result, "day_delivered")
    assert not delivered.passed
    assert delivered.severity == dg.AssetCheckSeverity.WARN
    clean = metadata(result, "clean_pings")
    assert (clean["status"], clean["rows_in"], clean["rows_out"]) == ("missing", 0, 0)
    assert check(result, "bad_share_below_threshold").passed
    assert tmp_lake.read_parquet(CLEAN_PINGS.key(DAY)).empty


def test_file_without_a_required_column_fails_with_its_name(tmp_lake: LakeResource) -> None:
    write_raw(tmp_lake, DAY, good_pings(50), "part-0")
    write_raw(tmp_lake, DAY, good_pings(50).drop(columns=["lat"]), "part-1")

    result = materialize(tmp_lake)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert "part-1.parquet" in description
    assert "missing required column 'lat'" in description
    assert not result.asset_materializations_for_node("clean_pings")


def test_generated_dirty_day_counts_match_the_planted_truth(tmp_lake: LakeResource) -> None:
    from near_assets.synth import dirty_day

    planted = dirty_day(tmp_lake, DAY, share=0.3, devices=200)

    result = materialize(tmp_lake)

    clean = metadata(result, "clean_pings")
    assert dropped(clean) == {r: planted[r] for r in REASONS}
    assert clean["rows_in"] == planted["rows"]
    assert metadata(result, "raw_pings")["rows"] == planted["rows"]
    assert not check(result, "bad_share_below_threshold").passed


def test_range_run_keeps_metadata_per_day(tmp_lake: LakeResource) -> None:
    days = ["2024-03-05", "2024-03-06", "2024-03-07"]
    for i, day in enumerate(days[:2]):
        write_raw(tmp_lake, day, good_pings(100 * (i + 1), day_ms=DAY_MS + i * 86_400_000))
    tags = {
        "dagster/asset_partition_range_start": days[0],
        "dagster/asset_partition_range_end": days[-1],
    }
    with dg.instance_for_test() as instance:
        result = materialize(tmp_lake, partition_key=None, tags=tags, instance=instance)
        assert result.success
        rows = {}
        for day in days:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("clean_pings"), asset_partitions=[day]),
                limit=1,
            ).records
            meta = records[0].asset_materialization.metadata
            rows[day] = (meta["status"].value, meta["rows_out"].value)
    assert rows == {days[0]: ("present", 100), days[1]: ("present", 200), days[2]: ("missing", 0)}
    assert check(result, "day_delivered").description == f"no pings for {days[2]}"


def test_new_raw_day_triggers_clean_pings_automation(tmp_lake: LakeResource) -> None:
    write_raw(tmp_lake, DAY, good_pings(50))
    defs = dg.Definitions(assets=ASSETS, resources=resources(tmp_lake))
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0
        result = materialize(tmp_lake, assets=[raw_pings], instance=instance)
        assert result.success
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
    requested = second.get_requested_partitions(dg.AssetKey("clean_pings"))
    assert requested == {DAY}


def publish_hdp_list(lake: LakeResource, day: str, entries: list[tuple[float, float, bool]]):
    """A ``HIGH_DENSITY_POINTS`` list for ``day``, as ``high_density_points`` publishes it."""
    lat, lon = np.array([e[0] for e in entries]), np.array([e[1] for e in entries])
    listed = pd.DataFrame(
        {
            "cell": cell_codes(lat, lon, HdpParams.cell_deg),
            "lat": lat,
            "lon": lon,
            "days_flagged": 2,
            "days_seen": 2,
            "devices_median": 20.0,
            "concentration_median": 8.0,
            "accuracy_share_median": 0.9,
            "first_flagged": "2024-03-03",
            "last_flagged": day,
            "exact_point": [e[2] for e in entries],
        }
    )
    lake.write_parquet(listed, HIGH_DENSITY_POINTS.key(day))


@pytest.mark.parametrize("use_list", [True, False])
def test_pings_on_the_learnt_list_of_the_day_before_are_dropped(
    tmp_lake: LakeResource, use_list: bool
) -> None:
    tower, centroid = (40.51234, -3.61234), (40.30003, -3.80003)
    on_list = pd.DataFrame(
        {
            "device_id": [f"hdp-{i:02d}" for i in range(30)],
            "ts": DAY_MS + np.arange(30) * 60_000,
            # 12 on the tower's exact point, 3 beside it in its cell (kept), 15 in the
            # centroid's cell (whole cell listed)
            "lat": [tower[0]] * 12 + [tower[0] + 0.00002] * 3 + [centroid[0] + 0.00001] * 15,
            "lon": [tower[1]] * 15 + [centroid[1] - 0.00002] * 15,
            "accuracy_m": 20.0,
        }
    )
    write_raw(tmp_lake, DAY, pd.concat([good_pings(300), on_list], ignore_index=True))
    publish_hdp_list(tmp_lake, "2024-03-04", [(*tower, True), (*centroid, False)])
    publish_hdp_list(tmp_lake, DAY, [(40.4, -3.7, False)])  # today's list: not used today

    result = materialize(
        tmp_lake,
        run_config={"ops": {"clean_pings": {"config": {"use_learnt_hdps": use_list}}}},
    )

    assert result.success
    meta = metadata(result, "clean_pings")
    expected = 27 if use_list else 0
    assert dropped(meta) == {**dict.fromkeys(REASONS, 0), "high_density": expected}
    assert meta["hdp_list_cells"] == (2 if use_list else 0)
    assert (meta["rows_in"], meta["rows_out"]) == (330, 330 - expected)
    dirt = tmp_lake.read_parquet(QUARANTINED_PINGS.key(DAY))
    assert len(dirt) == expected and set(dirt["reason"]) <= {"high_density"}
    kept = set(tmp_lake.read_parquet(CLEAN_PINGS.key(DAY))["device_id"])
    assert {"hdp-12", "hdp-13", "hdp-14"} <= kept  # beside the exact point
    assert ("hdp-00" in kept) is not use_list


def test_clean_pings_automation_does_not_wait_for_a_missing_hdp_list(
    tmp_lake: LakeResource,
) -> None:
    """``high_density_points`` never materialised (a new lake): ``clean_pings`` still follows
    a new raw day, and it declares the list of the day before as a dependency."""

    @dg.asset(name="high_density_points", partitions_def=daily_partitions, deps=[raw_pings])
    def high_density_points() -> None:
        return None

    write_raw(tmp_lake, DAY, good_pings(50))
    defs = dg.Definitions(assets=[*ASSETS, high_density_points], resources=resources(tmp_lake))
    graph = defs.resolve_asset_graph()
    parents = graph.get_parents_partitions(dg.AssetKey("clean_pings"), DAY).parent_partitions
    found = {(p.asset_key.to_user_string(), p.partition_key) for p in parents}
    assert found == {("raw_pings", DAY), ("high_density_points", "2024-03-04")}
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert materialize(tmp_lake, assets=[raw_pings], instance=instance).success
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
    assert second.get_requested_partitions(dg.AssetKey("clean_pings")) == {DAY}


def sensor_tick(lake: LakeResource, instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake})
    return raw_pings_sensor(context)


def test_sensor_requests_runs_for_new_and_changed_days(tmp_lake: LakeResource) -> None:
    for day in ["2024-03-05", "2024-03-06", "2024-03-07", "2024-03-10"]:
        write_raw(tmp_lake, day, good_pings(10))
    write_raw(tmp_lake, "2019-06-01", good_pings(10))  # before LAKE_START_DATE: ignored
    tmp_lake.write_json("raw/pings/_manifest.json", {"ignored": True})

    with dg.instance_for_test() as instance:
        first = sensor_tick(tmp_lake, instance, None)
        spans = {
            r.partition_key
            or (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in first.run_requests
        }
        assert spans == {("2024-03-05", "2024-03-07"), "2024-03-10"}
        assert all(r.tags["platform/lane"] == "batch" for r in first.run_requests)
        assert set(json.loads(first.cursor)) == {
            "2024-03-05",
            "2024-03-06",
            "2024-03-07",
            "2024-03-10",
        }

        assert isinstance(sensor_tick(tmp_lake, instance, first.cursor), dg.SkipReason)

        write_raw(tmp_lake, "2024-03-06", good_pings(5), "part-1")
        third = sensor_tick(tmp_lake, instance, first.cursor)
        assert [r.partition_key for r in third.run_requests] == ["2024-03-06"]
        assert third.run_requests[0].run_key != first.run_requests[0].run_key


def test_sensor_run_request_executes_the_pings_job(tmp_lake: LakeResource) -> None:
    for i, day in enumerate(["2024-03-05", "2024-03-06"]):
        write_raw(tmp_lake, day, good_pings(30, day_ms=DAY_MS + i * 86_400_000))
    defs = dg.Definitions(assets=ASSETS, jobs=[pings_job], resources=resources(tmp_lake))
    with dg.instance_for_test() as instance:
        (request,) = sensor_tick(tmp_lake, instance, None).run_requests
        result = defs.resolve_job_def("pings_daily").execute_in_process(
            instance=instance, tags=request.tags
        )
    assert result.success
    assert result.dagster_run.tags["platform/lane"] == "batch"
    assert len(result.asset_materializations_for_node("clean_pings")) == 2
    assert len(tmp_lake.read_parquet(CLEAN_PINGS.key("2024-03-06"))) == 30


def test_sensor_with_a_lost_cursor_skips_days_already_registered(tmp_lake: LakeResource) -> None:
    days = ["2024-03-05", "2024-03-06"]
    for i, day in enumerate(days):
        write_raw(tmp_lake, day, good_pings(10, day_ms=DAY_MS + i * 86_400_000))
    with dg.instance_for_test() as instance:
        for day in days[:1]:
            assert materialize(tmp_lake, assets=[raw_pings], partition_key=day, instance=instance)
        tick = sensor_tick(tmp_lake, instance, None)  # e.g. a fresh DAGSTER_HOME's sensor
        assert [r.partition_key for r in tick.run_requests] == [days[1]]
        assert set(json.loads(tick.cursor)) == set(days)

        write_raw(tmp_lake, days[0], good_pings(5), "part-1")  # new file for a registered day
        again = sensor_tick(tmp_lake, instance, None)
        (request,) = again.run_requests  # both days again, as one range
        assert (
            request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"],
        ) == tuple(days)


def test_the_learnt_list_reaches_the_spark_job_in_small_arguments() -> None:
    from near_assets.pings import HDP_ARG_CHARS, hdp_args, hdp_records
    from near_assets.spark_jobs.clean_pings import hdp_lists, parse_args

    lat = 40.0 + np.arange(500) * 1e-3 + 1.3e-5  # 500 entries: several arguments
    lon = np.full(500, -3.7000123456789)
    listed = pd.DataFrame(
        {
            "cell": cell_codes(lat, lon, HdpParams.cell_deg),
            "lat": lat,
            "lon": lon,
            "exact_point": pd.array([True, False, None, True] * 125, dtype="boolean"),
        }
    )
    args = ["--day", "{}", *hdp_args(DAY, hdp_records(listed)), *hdp_args("2024-03-06", [])]
    values = args[3::2]
    assert len(values) > 1 and all(len(v) <= HDP_ARG_CHARS + 200 for v in values)
    (rows,) = hdp_lists(parse_args(args).hdps).values()
    back = pd.DataFrame(rows)
    assert back["cell"].tolist() == listed["cell"].tolist()
    assert (back["lat"].to_numpy() == lat).all() and (back["lon"].to_numpy() == lon).all()
    assert back["exact_point"].tolist() == [True, False, False, True] * 125
    assert hdp_records(None) == [] and hdp_args(DAY, []) == []
