"""Mobility assets: stay points, visits, home ping hours, home location, demographics, affinity.

Daily-partitioned and thin: load from the lake (``near_assets.tables``), call the science in
``near_assets.science``, publish through write-audit-publish and describe each day. Stay
detection, visit matching and home inference run on the engine of the asset's ``engine`` config
(``near_assets.engine``: ``pandas`` in-process or one ``spark`` job; visits get the POIs as a
side table); demographics and brand affinity work on homes and visits (thousands of rows, not
millions) and run in-process under both settings. Accuracy against the generator's ground truth
is scored by asset checks in ``near_assets.evaluation.mobility``.

Every asset uses a single-run backfill policy and processes every partition key of its run: a
month backfill is one run (and one Spark job per Spark-backed asset), not thirty.
"""

import os
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from near_assets.engine import EngineConfig, run_per_device
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.reference import load_reference_pois
from near_assets.science import home
from near_assets.science.home import HOME_COLUMNS, METHODS, HomeParams, homes_by_day
from near_assets.science.stays import STAY_COLUMNS, StayParams, detect_stays, stays_per_device
from near_assets.science.visits import VISIT_COLUMNS, VisitParams, visits_per_device
from near_assets.tables import (
    CLEAN_PINGS,
    HOME_LOCATION,
    HOME_PING_HOURS,
    STAY_POINTS,
    VISITS,
    internal_asset_args,
    published_asset_args,
)
from publishing.tables import day_window, publish_pool, trailing_days, utc_days
from publishing.wap import (
    AuditFn,
    audit_specs,
    clean_meta,
    has_columns,
    no_nulls,
    publish_days,
    row_count_band,
    rows_satisfy,
    value_band,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.settings import lake_timezone
from resources.spark import SparkResource

GROUP = "mobility"
HOME_WINDOW_DAYS = int(os.environ.get("NEAR_HOME_WINDOW_DAYS", "14"))
NORM_HISTORY_DAYS = 7
RETRY = dg.RetryPolicy(
    max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
ENGINE_KINDS = {"pandas", "spark", "parquet"}
PANDAS_KINDS = {"pandas", "parquet"}
PING_COLUMNS = ["device_id", "ts", "lat", "lon"]
HOME_STAY_COLUMNS = ["device_id", "start_ts", "end_ts", "lat", "lon"]
PING_HOUR_COLUMNS = ["device_id", "ts", "lat", "lon"]

# The trailing windows are declared as time-window partition mappings so that lineage and
# automation see them; a mapping cannot be configured per run, so the config's window_days may
# only shrink the window (min(config, mapping)). Days before the partitions' first day do not
# exist upstream and are skipped (allow_nonexistent_upstream_partitions).
HOME_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(HOME_WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)


class StayPointsConfig(EngineConfig):
    radius_m: float = StayParams.radius_m
    min_duration_s: float = StayParams.min_duration_s
    max_gap_s: float = StayParams.max_gap_s
    min_pings: int = StayParams.min_pings
    max_outliers: int = StayParams.max_outliers
    norm_low: float = 0.5
    """Fail the day when stays per device fall below this x the trailing median ..."""
    norm_high: float = 2.0
    """... or rise above this x the trailing median (7 published days, at least 3)."""

    def params(self) -> dict[str, Any]:
        return StayParams(
            self.radius_m, self.min_duration_s, self.max_gap_s, self.min_pings, self.max_outliers
        ).as_dict()


class VisitsConfig(EngineConfig):
    """Visits run on the configured engine (Spark: per device bucket, the POIs read once per
    worker)."""

    max_distance_m: float = VisitParams.max_distance_m
    min_dwell_s: float = VisitParams.min_dwell_s


class HomeConfig(EngineConfig):
    window_days: int = HOME_WINDOW_DAYS
    """Trailing days of stay points and ping hours (at most $NEAR_HOME_WINDOW_DAYS)."""
    cell_m: float = HomeParams.cell_m
    night_start_h: int = HomeParams.night_start_h
    night_end_h: int = HomeParams.night_end_h
    evening_start_h: int = HomeParams.evening_start_h
    day_rest_ratio: float = HomeParams.day_rest_ratio
    day_rest_min_days: int = HomeParams.day_rest_min_days
    min_confidence: float = HomeParams.min_confidence
    """Devices whose calibrated P(home within 200 m) is below this are left out."""
    use_pings: bool = True
    """Add the window's ``home_ping_hours`` to the stays (evidence of sparse nights)."""
    hours_scale: float = HomeParams.hours_scale
    """Ignored (confidence is calibrated); accepted so that older run configurations load."""

    def params(self, days: Sequence[str], window_days: int) -> dict[str, Any]:
        return {
            "as_of": list(days),
            "window_days": window_days,
            "timezone": lake_timezone(),
            "cell_m": self.cell_m,
            "night_start_h": self.night_start_h,
            "night_end_h": self.night_end_h,
            "evening_start_h": self.evening_start_h,
            "day_rest_ratio": self.day_rest_ratio,
            "day_rest_min_days": self.day_rest_min_days,
            "min_confidence": self.min_confidence,
        }


# ---- loading and splitting ----------------------------------------------------------------


def read_pings(lake: LakeResource, days: Sequence[str]) -> pd.DataFrame:
    """The clean pings of ``days`` (position columns only; device ids dictionary-encoded)."""
    frames = [
        df
        for d in days
        if (df := CLEAN_PINGS.read(lake, d, PING_COLUMNS, dictionary=["device_id"])) is not None
    ]
    if not frames:
        return pd.DataFrame(columns=PING_COLUMNS)
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def split_days(df: pd.DataFrame, column: str, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The rows of each of ``days`` by the UTC day of ``column``."""
    day_of = utc_days(df[column]) if len(df) else np.array([], dtype=object)
    return {d: df[day_of == d] for d in days}


def devices_in_window(
    stays: pd.DataFrame, stay_days: np.ndarray, days: Sequence[str]
) -> np.ndarray:
    """Devices with a stay (or ping hour) starting on one of ``days`` (``stay_days``: each row's
    UTC day)."""
    return pd.unique(stays["device_id"][np.isin(stay_days, list(days))])


def single_or_per_day(per_day: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One day's figures as they are; several days as a count and a JSON table."""
    if len(per_day) == 1:
        return next(iter(per_day.values()))
    return {"days": len(per_day), "per_day": dg.MetadataValue.json(per_day)}


# ---- audits ---------------------------------------------------------------------------------

STAY_CONTRACT = ["device_id", "start_ts", "end_ts", "lat", "lon", "n_pings"]
VISIT_CONTRACT = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s"]
HOME_CONTRACT = ["device_id", "lat", "lon", "confidence", "nights"]


def _stays_per_device(df: pd.DataFrame) -> float:
    return stays_per_device(df, df["device_id"].nunique()) if len(df) else 0.0


def stays_norm(history: Sequence[float] = (), low: float = 0.5, high: float = 2.0) -> AuditFn:
    """Stays per device within [low, high] x the trailing median of published days."""
    return value_band(
        "stays_per_device_within_norm",
        "Stays per device within the band around the trailing 7 published days' median.",
        _stays_per_device,
        history,
        low,
        high,
    )


def stay_audits(history: Sequence[float] = (), low: float = 0.5, high: float = 2.0) -> list:
    return [
        has_columns(*STAY_CONTRACT),
        no_nulls("device_id", "start_ts", "end_ts", "lat", "lon"),
        rows_satisfy(
            "stay_order",
            "Every stay ends at or after it starts and has at least one ping.",
            lambda df: (df["end_ts"] >= df["start_ts"]) & (df["n_pings"] >= 1),
        ),
        stays_norm(history, low, high),
    ]


def visit_audits(history: Sequence[int] = ()) -> list:
    return [
        has_columns(*VISIT_CONTRACT),
        no_nulls("device_id", "poi_id", "start_ts", "end_ts"),
        rows_satisfy(
            "dwell_positive",
            "Dwell time is positive and equals end - start.",
            lambda df: (
                (df["dwell_s"] > 0)
                & ((df["end_ts"] - df["start_ts"]).dt.total_seconds().sub(df["dwell_s"]).abs() < 1)
            ),
        ),
        row_count_band(history, low=0.3, high=3.0),
    ]


def home_audits() -> list:
    return [
        has_columns(*HOME_CONTRACT),
        no_nulls("device_id", "lat", "lon", "confidence"),
        rows_satisfy(
            "confidence_in_unit_interval",
            "Confidence lies in 0..1 and each device has one home.",
            lambda df: df["confidence"].between(0, 1) & ~df["device_id"].duplicated(),
        ),
    ]


def trailing_stays_per_device(lake: LakeResource, day: str) -> list[float]:
    """Stays per device of the published ``stay_points`` days before ``day`` (newest first)."""
    out = []
    for d in trailing_days(day, NORM_HISTORY_DAYS):
        df = STAY_POINTS.read(lake, d, columns=["device_id"])
        if df is not None and len(df):
            out.append(_stays_per_device(df))
    return out


def trailing_visit_rows(lake: LakeResource, day: str) -> list[int]:
    """Row counts of the published ``visits`` days before ``day`` (empty or missing: left out)."""
    counts = [VISITS.rows(lake, d) for d in trailing_days(day, NORM_HISTORY_DAYS)]
    return [c for c in counts if c]


# ---- per-day results and figures ----------------------------------------------------------


def stays_of_days(stays: pd.DataFrame, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each day's stays (by start, UTC) in contract order."""
    return {
        d: df[STAY_COLUMNS].sort_values(["device_id", "start_ts"]).reset_index(drop=True)
        for d, df in split_days(stays, "start_ts", days).items()
    }


def describe_stays(df: pd.DataFrame, input_pings: int) -> dict[str, Any]:
    return clean_meta(
        {
            "input_pings": input_pings,
            "input": "present" if input_pings else "missing or empty",
            "devices": int(df["device_id"].nunique()),
            "stays_per_device": round(_stays_per_device(df), 3),
            "median_duration_min": round(float(df["duration_s"].median() / 60), 1)
            if len(df)
            else None,
        }
    )


def visits_of_days(visits: pd.DataFrame, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each day's visits (by the stay's start, UTC) in contract order."""
    if visits.empty:
        visits = pd.DataFrame({c: pd.Series(dtype=object) for c in VISIT_COLUMNS})
    return {
        d: df[VISIT_COLUMNS].sort_values(["device_id", "start_ts"], ignore_index=True)
        for d, df in split_days(visits, "start_ts", days).items()
    }


def describe_visits(df: pd.DataFrame, stays: int) -> dict[str, Any]:
    return clean_meta(
        {
            "stays": stays,
            "devices": int(df["device_id"].nunique()),
            "pois_visited": int(df["poi_id"].nunique()),
            "median_dwell_min": round(float(df["dwell_s"].median() / 60), 1) if len(df) else None,
        }
    )


def homes_of_days(homes: pd.DataFrame, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each day's homes (``date`` = as of) in contract order."""
    return {
        d: homes[homes["date"] == d][HOME_COLUMNS]
        .sort_values("device_id", ignore_index=True)
        .astype({"nights": np.int32, "hours": np.int32})
        for d in days
    }


def describe_ping_hours(df: pd.DataFrame, input_pings: int) -> dict[str, Any]:
    return {
        "input_pings": input_pings,
        "rows": len(df),
        "devices": int(df["device_id"].nunique()),
        "dagster/row_count": len(df),
    }


def describe_homes(
    df: pd.DataFrame,
    eligible: np.ndarray,
    window: Sequence[str],
    present: Sequence[str],
    evidence: str,
    min_confidence: float,
) -> dict[str, Any]:
    by_method = df["method"].value_counts()
    return clean_meta(
        {
            "window_days_found": len(set(window) & set(present)),
            "devices_in_window": len(eligible),
            "homes": len(df),
            "coverage": round(len(df) / len(eligible), 4) if len(eligible) else None,
            "homes_by_method": dg.MetadataValue.json(
                {m: int(by_method.get(m, 0)) for m in METHODS}
            ),
            "evidence": evidence,
            "min_confidence": min_confidence,
            "calibration_version": home.calibration_version(),
            "median_confidence": round(float(df["confidence"].median()), 3) if len(df) else None,
        }
    )


# ---- assets ---------------------------------------------------------------------------------


def days_with_input(
    context: dg.AssetExecutionContext, rows: dict[str, int], upstream: str
) -> list[str]:
    """The run's days whose input holds rows; every other day is *no data*, not zero rows.

    A day without input is not published (its published partition, if any, stays as it is) and
    says so in its materialization's metadata; a run where no day has input fails with that
    reason instead of publishing empty partitions over good ones.
    """
    present = [d for d in context.partition_keys if rows.get(d)]
    missing = [d for d in context.partition_keys if not rows.get(d)]
    if not present:
        raise dg.Failure(
            description=f"no data: {upstream} is missing or empty for {', '.join(missing)}; "
            "nothing published (published partitions left as they were)",
            metadata={"missing_input_days": dg.MetadataValue.json(missing)},
            allow_retries=False,
        )
    for d in missing:
        context.add_asset_metadata(
            {"input": "missing or empty", "skipped": f"no {upstream} for {d}: not published"},
            partition_key=d,
        )
    if missing:
        context.log.warning(f"no {upstream} for {', '.join(missing)}: those days not published")
    return present


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("clean_pings")],
    check_specs=audit_specs(STAY_POINTS.name, stay_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=ENGINE_KINDS,
    pool=publish_pool(STAY_POINTS.name),
    **published_asset_args(STAY_POINTS),
)
def stay_points(
    context: dg.AssetExecutionContext,
    config: StayPointsConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Stay points: where each device stood still (radius + minimum duration), per UTC day.

    From ``clean_pings``: a stay is a run of pings within ``radius_m`` of their centroid lasting
    at least ``min_duration_s``, from its first to its last ping inside the radius (a travel
    ping followed by a long sampling gap is not a stay). Published to ``curated/stay_points``;
    a blocking audit fails a day whose stays per device leave the trailing norm.
    """
    started = time.perf_counter()
    days = list(context.partition_keys)
    params = config.params()
    input_pings = {d: CLEAN_PINGS.rows(lake, d) for d in days}
    present = days_with_input(context, input_pings, CLEAN_PINGS.name)
    inputs = [CLEAN_PINGS.key(d) for d in present]
    load = partial(read_pings, lake, days)
    stays, engine_meta = run_per_device(
        context, lake, spark, config.engine, detect_stays, inputs, params, load
    )
    seconds = round(time.perf_counter() - started, 3)
    frames = {d: df for d, df in stays_of_days(stays, days).items() if d in present}
    metadata = {d: describe_stays(df, input_pings[d]) for d, df in frames.items()}

    def audits(d: str) -> list:
        history = trailing_stays_per_device(lake, d) if input_pings[d] else []
        return stay_audits(history, config.norm_low, config.norm_high)

    run_meta = {
        "seconds": seconds,
        "pings_per_s": round(sum(input_pings.values()) / max(seconds, 1e-9)),
        "params": dg.MetadataValue.json(params),
        **engine_meta,
    }
    yield from publish_days(
        context, lake, alerts, STAY_POINTS.name, frames, audits, metadata, run_meta
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("stay_points"), "reference_pois"],
    check_specs=audit_specs(VISITS.name, visit_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=ENGINE_KINDS,
    pool=publish_pool(VISITS.name),
    **published_asset_args(VISITS),
)
def visits(
    context: dg.AssetExecutionContext,
    config: VisitsConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Visits: stay points matched to POI polygons (STRtree on stay centroids), with dwell time.

    A stay whose centroid lies in (or within ``max_distance_m`` of) a place's polygon and that
    lasts at least ``min_dwell_s`` is a visit to the nearest such place. Published to
    ``curated/visits`` (plus ``brand`` and ``distance_m``). Runs on the ``engine`` of its
    config (Spark: per device bucket, the POI index built once per worker).
    """
    started = time.perf_counter()
    days = list(context.partition_keys)
    pois = load_reference_pois(lake, log=context.log)
    published = {d: int(STAY_POINTS.exists(lake, d)) for d in days}
    present = days_with_input(context, published, STAY_POINTS.name)
    params = VisitParams(config.max_distance_m, config.min_dwell_s).as_dict()
    inputs = [STAY_POINTS.key(d) for d in present]

    def load() -> pd.DataFrame:
        return STAY_POINTS.read_many(lake, present, HOME_STAY_COLUMNS)[0]

    visits_all, engine_meta = run_per_device(
        context, lake, spark, config.engine, visits_per_device, inputs, params, load, {"pois": pois}
    )
    frames = visits_of_days(visits_all, present)
    metadata = {d: describe_visits(df, STAY_POINTS.rows(lake, d)) for d, df in frames.items()}
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        "pois": len(pois),
        "params": dg.MetadataValue.json(params),
        **engine_meta,
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        VISITS.name,
        frames,
        lambda d: visit_audits(trailing_visit_rows(lake, d)),
        metadata,
        run_meta,
    )


class PingHoursConfig(dg.Config):
    cell_m: float = HomeParams.cell_m
    """Grid cell size, metres (the cell size home_location scores its places on)."""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("clean_pings")],
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=PANDAS_KINDS,
    **internal_asset_args(HOME_PING_HOURS),
)
def home_ping_hours(
    context: dg.AssetExecutionContext, config: PingHoursConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """A day's clean pings reduced to one row per device, ~100 m cell and UTC hour.

    ``home_location``'s ping evidence: a sparse night (a ping every hour or two) leaves pings
    but no stay. ``ts`` is the start of the hour, lat/lon the mean of the hour's pings in the
    cell (``near_assets.science.home.ping_hours``); a fraction of the day's pings.
    """
    started = time.perf_counter()
    rows = 0
    for d in context.partition_keys:
        pings = CLEAN_PINGS.read(lake, d, PING_COLUMNS)
        if pings is None:
            pings = pd.DataFrame(columns=PING_COLUMNS)
        hours = home.ping_hours(pings, config.cell_m)
        HOME_PING_HOURS.write(lake, hours, d)
        rows += len(hours)
        context.add_asset_metadata(describe_ping_hours(hours, len(pings)), partition_key=d)
    context.log.info(f"{rows:,} ping hours in {time.perf_counter() - started:.1f} s")
    return dg.MaterializeResult()


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[
        dg.AssetDep("stay_points", partition_mapping=HOME_MAPPING),
        dg.AssetDep("home_ping_hours", partition_mapping=HOME_MAPPING),
    ],
    check_specs=audit_specs(HOME_LOCATION.name, home_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=ENGINE_KINDS,
    pool=publish_pool(HOME_LOCATION.name),
    **published_asset_args(HOME_LOCATION),
)
def home_location(
    context: dg.AssetExecutionContext,
    config: HomeConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Home location as of each day, from the trailing window of stay points and ping hours.

    The window (``window_days``, default 14) is counted in distinct hours per device and ~100 m
    place (stays expanded to the hours they cover, plus the ``home_ping_hours`` of the window:
    a sparse night leaves pings but no stay). Local time is ``LAKE_TIMEZONE``. Method
    ``night``: the place with most night hours (22-07 local); ``day_rest``: a night-shift
    worker's place of day-time rest, only on positive evidence (rest by day on several days
    while the night place is never seen by day); ``evening``: without any night evidence, the
    place of most evening hours (19-22). A device with neither night nor evening evidence is
    left out (its daytime place is as often its workplace).

    ``confidence`` is the calibrated probability that the true home lies within 200 m of the
    published point (see CONTRACTS; calibration table ``home_calibration.json``, its version in
    the metadata). Devices below ``min_confidence`` (default 0.5) are left out rather than
    guessed.
    """
    started = time.perf_counter()
    days = list(context.partition_keys)
    window_days = min(config.window_days, HOME_WINDOW_DAYS)
    upstream = list(context.asset_partition_keys_for_input("stay_points"))
    present = STAY_POINTS.present(lake, upstream)
    stays, _ = STAY_POINTS.read_many(lake, present, HOME_STAY_COLUMNS)
    inputs = [STAY_POINTS.key(d) for d in present]
    params = config.params(days, window_days)
    ping_days = HOME_PING_HOURS.present(lake, upstream) if config.use_pings else []
    evidence = "stays+pings" if ping_days else "stays"
    shown = {**params, "as_of": len(days)}
    if ping_days and config.engine == "spark" and inputs:
        # one Spark job reads both tables as one union: the ping-hour rows are those with a ts
        inputs += [HOME_PING_HOURS.key(d) for d in ping_days]
        params["ping_rows"] = True
    elif ping_days:
        params["pings"], _ = HOME_PING_HOURS.read_many(lake, ping_days, PING_HOUR_COLUMNS)
    homes, engine_meta = run_per_device(
        context, lake, spark, config.engine, homes_by_day, inputs, params, lambda: stays
    )
    seconds = round(time.perf_counter() - started, 3)
    frames = homes_of_days(homes, days)
    # eligible: devices with any evidence in the window (stays, and ping hours when used)
    seen = stays[["device_id", "start_ts"]]
    if ping_days:
        pings = params.get("pings")
        if pings is None:  # spark: the job read them
            pings, _ = HOME_PING_HOURS.read_many(lake, ping_days, ["device_id", "ts"])
        ping_rows = pings[["device_id", "ts"]].rename(columns={"ts": "start_ts"})
        seen = pd.concat([f for f in (seen, ping_rows) if len(f)] or [seen], ignore_index=True)
    seen_days = utc_days(seen["start_ts"]) if len(seen) else np.array([], dtype=object)
    metadata = {}
    for d, df in frames.items():
        window = day_window(d, window_days)
        eligible = devices_in_window(seen, seen_days, window)
        metadata[d] = describe_homes(df, eligible, window, present, evidence, config.min_confidence)
    run_meta = {
        "seconds": seconds,
        "window_days": window_days,
        "ping_days_found": len(ping_days),
        "params": dg.MetadataValue.json(shown),
        **engine_meta,
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        HOME_LOCATION.name,
        frames,
        lambda d: home_audits(),
        metadata,
        run_meta,
    )


mobility_job = dg.define_asset_job(
    "mobility_daily",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=daily_partitions,
    tags={"platform/lane": "batch"},
    description=(
        "Stay points -> visits, home ping hours -> home -> demographics -> brand affinity "
        "for a day."
    ),
)

defs = dg.Definitions(
    assets=[stay_points, visits, home_ping_hours, home_location],
    jobs=[mobility_job],
)
