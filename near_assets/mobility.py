"""Mobility assets: stay points, visits, home ping hours, home location, demographics, affinity.

Daily-partitioned and thin: load from the lake (``near_assets.tables``), call the science in
``near_assets.science``, publish through write-audit-publish and describe each day. Stay
detection, visit matching, ping hours and home inference run on the engine of the asset's
``engine`` config (``near_assets.engine``): ``pandas`` loads the inputs and computes in-process;
``spark`` is one job per asset that writes each day's object itself (published tables: into
the run's staging folder, stamped) and reports the day's audit figures, so the run process
audits and publishes objects it never loads (``run_per_device_days``, ``publishing.wap.Staged``).
Accuracy against the generator's ground truth is scored by asset checks in
``near_assets.evaluation.mobility``.

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

from near_assets.engine import EngineConfig, run_per_device, run_per_device_days
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.reference import load_reference_pois
from near_assets.science import home
from near_assets.science.home import HOME_COLUMNS, METHODS, HomeParams, homes_by_day
from near_assets.science.ping_hours import PING_HOURS_SORT, ping_hours_by_day
from near_assets.science.placematrix import with_boundaries
from near_assets.science.stays import STAY_COLUMNS, StayParams, detect_stays, stays_per_device
from near_assets.science.visits import VISIT_COLUMNS, VisitParams, visits_per_device
from near_assets.tables import (
    CLEAN_PINGS,
    HOME_LOCATION,
    HOME_PING_HOURS,
    PLACE_BOUNDARIES,
    STAY_POINTS,
    VISITS,
    internal_asset_args,
    published_asset_args,
)
from publishing.baselines import DayValue, calendar_band, published_histories, published_history
from publishing.tables import day_window, publish_pool, run_staging_key, trailing_days, utc_days
from publishing.wap import (
    AuditFn,
    Figures,
    Rows,
    Staged,
    audit_needs,
    audit_specs,
    clean_meta,
    has_columns,
    no_nulls,
    publish_days,
    rows_satisfy,
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
    """Ignored: stays per device are judged against the calendar-aware baseline
    (``publishing.baselines.calendar_band``); accepted so that older run configurations load."""
    norm_high: float = 2.0
    """Ignored (see ``norm_low``)."""

    def params(self) -> dict[str, Any]:
        return StayParams(
            self.radius_m, self.min_duration_s, self.max_gap_s, self.min_pings, self.max_outliers
        ).as_dict()


PLACE_BOUNDARIES_DEP = dg.AssetDep(
    "place_boundaries",
    partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
    ),
)
"""Visits of D may match the footprints published for D-1 (place_boundaries reads stay points)."""


class VisitsConfig(EngineConfig):
    """Visits run on the configured engine (Spark: per device bucket, the POIs read once per
    worker)."""

    max_distance_m: float = VisitParams.max_distance_m
    min_dwell_s: float = VisitParams.min_dwell_s
    place_boundaries: bool = False
    """Match against the PlaceMatrix footprints (``curated/place_boundaries``) published for the
    day before the run's first day (else the latest of the 7 days before) instead of the delivered
    polygons; POIs without one, or no published day, keep the delivered polygons."""


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


def rows_of(df: pd.DataFrame | Staged) -> Rows:
    """A day's rows, or the figures of the object the Spark job staged."""
    return df.figures if isinstance(df, Staged) else df


def _distinct(df: Rows, column: str) -> int:
    """Distinct values of ``column`` (from the job's figures under Spark)."""
    if isinstance(df, Figures):
        return int(df.figure("distinct", column))
    return int(df[column].nunique())


def _median(df: Rows, column: str) -> float | None:
    if not len(df):
        return None
    if isinstance(df, Figures):
        value = df.figure("medians", column)
        return None if value is None else float(value)
    return float(df[column].median())


def _stays_per_device(df: Rows) -> float:
    return stays_per_device(df, _distinct(df, "device_id")) if len(df) else 0.0  # type: ignore[arg-type]


def _rows(df: Rows) -> float:
    return float(len(df))


def stays_norm(history: Sequence[DayValue | float] = (), day: str | None = None) -> AuditFn:
    """Stays per device against the calendar-aware baseline of ``day``."""
    return calendar_band(
        "stays_per_device_within_norm",
        "Stays per device (stays / distinct devices) of the day, against its calendar-aware "
        "baseline of published stay_points days.",
        _stays_per_device,
        history,
        day,
    )


def stay_audits(history: Sequence[DayValue | float] = (), day: str | None = None) -> list:
    return [
        has_columns(*STAY_CONTRACT),
        no_nulls("device_id", "start_ts", "end_ts", "lat", "lon"),
        rows_satisfy(
            "stay_order",
            "Every stay ends at or after it starts and has at least one ping.",
            lambda df: (df["end_ts"] >= df["start_ts"]) & (df["n_pings"] >= 1),
            sql="end_ts >= start_ts AND n_pings >= 1",
        ),
        stays_norm(history, day),
    ]


def visit_audits(history: Sequence[DayValue | float] = (), day: str | None = None) -> list:
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
            sql="dwell_s > 0 AND "
            "abs((unix_micros(end_ts) - unix_micros(start_ts)) / 1000000.0 - dwell_s) < 1",
        ),
        calendar_band(
            "row_count_band",
            "Visits (rows) of the day, against its calendar-aware baseline of published visits "
            "days.",
            _rows,
            history,
            day,
        ),
    ]


def home_audits() -> list:
    return [
        has_columns(*HOME_CONTRACT),
        no_nulls("device_id", "lat", "lon", "confidence"),
        rows_satisfy(
            "confidence_in_unit_interval",
            "Confidence lies in 0..1 and each device has one home.",
            lambda df: df["confidence"].between(0, 1) & ~df["device_id"].duplicated(),
            sql="confidence BETWEEN 0 AND 1",
            unique=["device_id"],
        ),
    ]


def stays_history(lake: LakeResource, day: str) -> list[DayValue]:
    """Stays per device of the published ``stay_points`` days of the 4 weeks before ``day``
    (one column of one day at a time)."""
    return published_histories(
        lake, STAY_POINTS, day, {"spd": _stays_per_device}, columns=["device_id"]
    )["spd"]


def visits_history(lake: LakeResource, day: str) -> list[DayValue]:
    """Row counts (Parquet footers) of the published ``visits`` days of the 4 weeks before
    ``day``."""
    return published_history(lake, VISITS, day)


def day_of(column: str) -> str:
    """Spark SQL: the UTC day (``YYYY-MM-DD``) of a timestamp column (sessions run in UTC)."""
    return f"date_format({column}, 'yyyy-MM-dd')"


def staging_folders(table: Any, context: dg.AssetExecutionContext, days: Sequence[str]) -> dict:
    """Where the Spark job stages each day of a published table: this run's staging folder."""
    return {d: run_staging_key(table.name, table.folder(d), context.run_id) for d in days}


# ---- per-day results and figures ----------------------------------------------------------


def stays_of_days(stays: pd.DataFrame, days: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each day's stays (by start, UTC) in contract order."""
    return {
        d: df[STAY_COLUMNS].sort_values(["device_id", "start_ts"]).reset_index(drop=True)
        for d, df in split_days(stays, "start_ts", days).items()
    }


def describe_stays(df: Rows, input_pings: int) -> dict[str, Any]:
    median = _median(df, "duration_s")
    return clean_meta(
        {
            "input_pings": input_pings,
            "input": "present" if input_pings else "missing or empty",
            "devices": _distinct(df, "device_id"),
            "stays_per_device": round(_stays_per_device(df), 3),
            "median_duration_min": round(median / 60, 1) if median is not None else None,
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


def describe_visits(df: Rows, stays: int) -> dict[str, Any]:
    median = _median(df, "dwell_s")
    return clean_meta(
        {
            "stays": stays,
            "devices": _distinct(df, "device_id"),
            "pois_visited": _distinct(df, "poi_id"),
            "median_dwell_min": round(median / 60, 1) if median is not None else None,
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


def describe_ping_hours(df: Rows, input_pings: int) -> dict[str, Any]:
    return {
        "input_pings": input_pings,
        "rows": len(df),
        "devices": _distinct(df, "device_id"),
        "dagster/row_count": len(df),
    }


def describe_homes(
    df: Rows,
    eligible: int,
    window: Sequence[str],
    present: Sequence[str],
    evidence: str,
    min_confidence: float,
) -> dict[str, Any]:
    if isinstance(df, Figures):
        by_method = pd.Series(df.figure("value_counts", "method"), dtype="int64")
    else:
        by_method = df["method"].value_counts()
    median = _median(df, "confidence")
    return clean_meta(
        {
            "window_days_found": len(set(window) & set(present)),
            "devices_in_window": eligible,
            "homes": len(df),
            "coverage": round(len(df) / eligible, 4) if eligible else None,
            "homes_by_method": dg.MetadataValue.json(
                {m: int(by_method.get(m, 0)) for m in METHODS}
            ),
            "evidence": evidence,
            "min_confidence": min_confidence,
            "calibration_version": home.calibration_version(),
            "median_confidence": round(median, 3) if median is not None else None,
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
    frames: dict[str, Any]
    if config.engine == "spark":  # the job stages each day; the run process loads none
        frames, engine_meta = run_per_device_days(
            context,
            lake,
            spark,
            detect_stays,
            inputs,
            params,
            targets=staging_folders(STAY_POINTS, context, present),
            columns=STAY_COLUMNS,
            day=day_of("start_ts"),
            sort=["device_id", "start_ts"],
            needs={
                **audit_needs(stay_audits()),
                "distinct": ["device_id"],
                "medians": ["duration_s"],
            },
        )
    else:
        load = partial(read_pings, lake, days)
        stays, engine_meta = run_per_device(
            context, lake, spark, config.engine, detect_stays, inputs, params, load
        )
        frames = {d: df for d, df in stays_of_days(stays, days).items() if d in present}
    seconds = round(time.perf_counter() - started, 3)
    metadata = {d: describe_stays(rows_of(df), input_pings[d]) for d, df in frames.items()}

    def audits(d: str) -> list:
        return stay_audits(stays_history(lake, d) if input_pings[d] else [], d)

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
    deps=[dg.AssetDep("stay_points"), "reference_pois", PLACE_BOUNDARIES_DEP],
    check_specs=audit_specs(VISITS.name, visit_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day.ignore(dg.AssetSelection.assets("place_boundaries")),
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
    boundaries_day = None
    if config.place_boundaries:
        pois, boundaries_day = refined_pois(lake, pois, min(days))
    published = {d: int(STAY_POINTS.exists(lake, d)) for d in days}
    present = days_with_input(context, published, STAY_POINTS.name)
    params = VisitParams(config.max_distance_m, config.min_dwell_s).as_dict()
    inputs = [STAY_POINTS.key(d) for d in present]

    def load() -> pd.DataFrame:
        return STAY_POINTS.read_many(lake, present, HOME_STAY_COLUMNS)[0]

    frames: dict[str, Any]
    if config.engine == "spark":  # the job stages each day; the run process loads none
        frames, engine_meta = run_per_device_days(
            context,
            lake,
            spark,
            visits_per_device,
            inputs,
            params,
            targets=staging_folders(VISITS, context, present),
            columns=VISIT_COLUMNS,
            day=day_of("start_ts"),
            sort=["device_id", "start_ts"],
            needs={
                **audit_needs(visit_audits()),
                "distinct": ["device_id", "poi_id"],
                "medians": ["dwell_s"],
            },
            sides={"pois": pois},
        )
    else:
        visits_all, engine_meta = run_per_device(
            context, lake, spark, config.engine, visits_per_device, inputs, params, load,
            {"pois": pois},
        )  # fmt: skip
        frames = visits_of_days(visits_all, present)
    metadata = {
        d: describe_visits(rows_of(df), STAY_POINTS.rows(lake, d)) for d, df in frames.items()
    }
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        "pois": len(pois),
        "polygons": f"place_boundaries {boundaries_day}" if boundaries_day else "delivered",
        "params": dg.MetadataValue.json(params),
        **engine_meta,
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        VISITS.name,
        frames,
        lambda d: visit_audits(visits_history(lake, d), d),
        metadata,
        run_meta,
    )


def refined_pois(
    lake: LakeResource, pois: pd.DataFrame, first_day: str
) -> tuple[pd.DataFrame, str | None]:
    """``pois`` with the PlaceMatrix footprints of the latest published day of the 7 before
    ``first_day`` (and that day), or unchanged (and None)."""
    for d in trailing_days(first_day, 7):
        if PLACE_BOUNDARIES.exists(lake, d):
            found = PLACE_BOUNDARIES.read(lake, d, ["poi_id", "geometry_wkt"])
            return with_boundaries(pois, found), d
    return pois, None


class PingHoursConfig(EngineConfig):
    cell_m: float = HomeParams.cell_m
    """Grid cell size, metres (the cell size home_location scores its places on)."""


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("clean_pings")],
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=ENGINE_KINDS,
    **internal_asset_args(HOME_PING_HOURS),
)
def home_ping_hours(
    context: dg.AssetExecutionContext,
    config: PingHoursConfig,
    lake: LakeResource,
    spark: SparkResource,
) -> dg.MaterializeResult:
    """A day's clean pings reduced to one row per device, ~100 m cell and UTC hour.

    ``home_location``'s ping evidence: a sparse night (a ping every hour or two) leaves pings
    but no stay. ``ts`` is the start of the hour, lat/lon the mean of the hour's pings in the
    cell (``near_assets.science.home.ping_hours``); a fraction of the day's pings. Runs on the
    ``engine`` of its config (Spark: one job writes every day's partition).
    """
    started = time.perf_counter()
    days = list(context.partition_keys)
    inputs = [CLEAN_PINGS.key(d) for d in days if CLEAN_PINGS.exists(lake, d)]
    if config.engine == "spark" and inputs:
        written, engine_meta = run_per_device_days(
            context,
            lake,
            spark,
            ping_hours_by_day,
            inputs,
            {"cell_m": config.cell_m},
            targets={d: HOME_PING_HOURS.key(d) for d in days},
            columns=PING_HOUR_COLUMNS,
            day="date",
            sort=PING_HOURS_SORT,
            needs={"distinct": ["device_id"]},
            stamped=False,
        )
        for d, out in written.items():
            meta = describe_ping_hours(out.figures, CLEAN_PINGS.rows(lake, d))
            context.add_asset_metadata(meta, partition_key=d)
        rows = sum(len(out) for out in written.values())
        context.log.info(f"{rows:,} ping hours in {time.perf_counter() - started:.1f} s (Spark)")
        return dg.MaterializeResult(metadata=engine_meta)
    rows = 0
    for d in days:
        pings = CLEAN_PINGS.read(lake, d, PING_COLUMNS)
        if pings is None:
            pings = pd.DataFrame(columns=PING_COLUMNS)
        hours = home.ping_hours(pings, config.cell_m)
        HOME_PING_HOURS.write(lake, hours, d)
        rows += len(hours)
        context.add_asset_metadata(describe_ping_hours(hours, len(pings)), partition_key=d)
    context.log.info(f"{rows:,} ping hours in {time.perf_counter() - started:.1f} s")
    return dg.MaterializeResult(metadata={"engine": "pandas"})


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
    inputs = [STAY_POINTS.key(d) for d in present]
    params = config.params(days, window_days)
    ping_days = HOME_PING_HOURS.present(lake, upstream) if config.use_pings else []
    evidence = "stays+pings" if ping_days else "stays"
    shown = {**params, "as_of": len(days)}
    frames: dict[str, Any]
    if config.engine == "spark" and inputs:
        # one Spark job reads both tables as one union (the ping-hour rows are those with a ts),
        # stages each day's homes and counts each window's devices with evidence
        if ping_days:
            inputs += [HOME_PING_HOURS.key(d) for d in ping_days]
            params["ping_rows"] = True
        seen_ts = "coalesce(start_ts, ts)" if ping_days else "start_ts"
        frames, engine_meta = run_per_device_days(
            context,
            lake,
            spark,
            homes_by_day,
            inputs,
            params,
            targets=staging_folders(HOME_LOCATION, context, days),
            columns=HOME_COLUMNS,
            day="date",
            sort=["device_id"],
            needs={
                **audit_needs(home_audits()),
                "medians": ["confidence"],
                "value_counts": ["method"],
            },
            input_windows={d: day_window(d, window_days) for d in days},
            input_day=day_of(seen_ts),
        )
        eligible = {d: int(n) for d, n in engine_meta.pop("input_distinct").items()}
    else:
        stays, _ = STAY_POINTS.read_many(lake, present, HOME_STAY_COLUMNS)
        if ping_days:
            params["pings"], _ = HOME_PING_HOURS.read_many(lake, ping_days, PING_HOUR_COLUMNS)
        homes, engine_meta = run_per_device(
            context, lake, spark, config.engine, homes_by_day, inputs, params, lambda: stays
        )
        frames = homes_of_days(homes, days)
        # eligible: devices with any evidence in the window (stays, and ping hours when used)
        seen = stays[["device_id", "start_ts"]]
        if ping_days:
            ping_rows = params["pings"][["device_id", "ts"]].rename(columns={"ts": "start_ts"})
            seen = pd.concat([f for f in (seen, ping_rows) if len(f)] or [seen], ignore_index=True)
        seen_days = utc_days(seen["start_ts"]) if len(seen) else np.array([], dtype=object)
        eligible = {
            d: len(devices_in_window(seen, seen_days, day_window(d, window_days))) for d in days
        }
    seconds = round(time.perf_counter() - started, 3)
    metadata = {
        d: describe_homes(
            rows_of(df),
            eligible[d],
            day_window(d, window_days),
            present,
            evidence,
            config.min_confidence,
        )
        for d, df in frames.items()
    }
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
