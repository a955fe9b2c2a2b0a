"""Mobility assets: stay points, visits, home location, demographics and brand affinity.

Daily-partitioned, thin: load from the lake, call the science in ``near_assets.science``, publish
through write-audit-publish (``curated/<table>/date=D/``) and report rows, devices, timing and,
when the lake holds the generator's ``truth/``, accuracy. Every asset has an ``engine`` config
(``pandas`` | ``spark``; default ``$NEAR_ENGINE`` or ``pandas``): the per-device science (stay
detection, home inference) then runs through ``SparkResource.run_per_device`` around the same
functions. Visits, demographics and brand affinity work on stays and homes (thousands of rows,
not millions), so their joins run in-process under both engines.

All assets use a single-run backfill policy and process every partition key of the run: a month
backfill is one run (and one Spark job per Spark-backed asset), not thirty.
"""

import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import accuracy
from near_assets.science.affinity import AffinityParams, brand_affinity
from near_assets.science.demographics import area_coverage, device_demographics
from near_assets.science.home import HOME_COLUMNS, HomeParams, homes_by_day
from near_assets.science.stays import STAY_COLUMNS, StayParams, detect_stays, stays_per_device
from near_assets.science.visits import VISIT_COLUMNS, PoiIndex, VisitParams, match_visits
from resources.lake import LakeResource
from resources.settings import lake_timezone
from resources.wap import (
    AuditFn,
    audit_specs,
    has_columns,
    no_nulls,
    row_count_band,
    rows_satisfy,
    trailing_days,
    value_band,
    write_audit_publish,
)

GROUP = "mobility"
HOME_WINDOW_DAYS = int(os.environ.get("NEAR_HOME_WINDOW_DAYS", "14"))
AFFINITY_WINDOW_DAYS = int(os.environ.get("NEAR_AFFINITY_WINDOW_DAYS", "28"))
NORM_HISTORY_DAYS = 7
RETRY = dg.RetryPolicy(
    max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
RESOURCES = {"lake", "alerts", "spark"}
KINDS = {"pandas", "spark", "parquet"}


def default_engine() -> str:
    return os.environ.get("NEAR_ENGINE", "pandas")


class EngineConfig(dg.Config):
    engine: str = default_engine()
    """``pandas`` (in-process) or ``spark`` (``SparkResource.run_per_device``)."""


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


class VisitsConfig(EngineConfig):
    max_distance_m: float = VisitParams.max_distance_m
    min_dwell_s: float = VisitParams.min_dwell_s


class HomeConfig(EngineConfig):
    window_days: int = HOME_WINDOW_DAYS
    """Trailing days of stay points (at most the partition mapping's $NEAR_HOME_WINDOW_DAYS)."""
    cell_m: float = HomeParams.cell_m
    night_start_h: int = HomeParams.night_start_h
    night_end_h: int = HomeParams.night_end_h
    day_rest_ratio: float = HomeParams.day_rest_ratio
    hours_scale: float = HomeParams.hours_scale
    min_confidence: float = HomeParams.min_confidence


class AffinityConfig(EngineConfig):
    window_days: int = AFFINITY_WINDOW_DAYS
    alpha: float = AffinityParams.alpha
    beta: float = AffinityParams.beta
    clip: float = AffinityParams.clip


# ---- lake helpers ---------------------------------------------------------------------------


def day_key(prefix: str, day: str) -> str:
    return f"{prefix}/date={day}"


def read_day(
    lake: LakeResource, key: str, columns: list[str] | None = None, dictionary: Sequence[str] = ()
) -> pd.DataFrame | None:
    """Every Parquet file under ``key`` (None when the folder is missing or empty)."""
    files = lake.parquet_files(key)
    if not files:
        return None
    tables = [
        pq.read_table(
            io.BytesIO(lake.read_bytes(f)), columns=columns, read_dictionary=list(dictionary)
        )
        for f in files
    ]
    frames = [t.to_pandas() for t in tables]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def read_days(lake: LakeResource, prefix: str, days: Sequence[str]) -> tuple[pd.DataFrame, list]:
    """Concatenate the days that exist; also return the list of days found."""
    frames, found = [], []
    for d in days:
        df = read_day(lake, day_key(prefix, d))
        if df is not None and len(df):
            frames.append(df)
            found.append(d)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), found


def truth_day(lake: LakeResource, table: str, day: str) -> pd.DataFrame | None:
    return read_day(lake, f"truth/{table}/date={day}")


def truth_homes(lake: LakeResource) -> pd.DataFrame | None:
    return read_day(lake, "truth/homes")


def utc_day(ts: pd.Series) -> np.ndarray:
    return pd.to_datetime(ts, utc=True).dt.strftime("%Y-%m-%d").to_numpy()


def window(day: str, days: int) -> list[str]:
    """The ``days`` UTC days ending with ``day``, oldest first."""
    return [*reversed(trailing_days(day, days - 1)), day]


# ---- engines --------------------------------------------------------------------------------


def check_engine(engine: str) -> str:
    if engine not in ("pandas", "spark"):
        raise dg.Failure(f"engine must be 'pandas' or 'spark', got {engine!r}")
    return engine


def run_per_device(
    context: dg.AssetExecutionContext,
    engine: str,
    fn: Callable[..., pd.DataFrame],
    inputs: list[str],
    params: dict[str, Any],
    load: Callable[[], pd.DataFrame],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run ``fn`` on the ``inputs`` lake keys: in-process on ``load()``, or as one Spark job."""
    lake: LakeResource = context.resources.lake
    if check_engine(engine) == "pandas" or not inputs:
        return fn(load(), **params), {"engine": "pandas"}
    output = f"work/_engine/{context.asset_key.to_python_identifier()}/run={context.run_id}"
    lake.delete(output)
    summary = context.resources.spark.run_per_device(
        context,
        function=fn,
        inputs=inputs,
        output=output,
        params=params,
        group_by=["device_id"],
        lake=lake,
    )
    out = lake.read_parquet(output)
    lake.delete(output)
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
            out[col]
        ):
            out[col] = pd.to_datetime(out[col], utc=True).dt.as_unit("ns")
    meta = {"engine": "spark"}
    meta.update(
        {f"spark_{k}": v for k, v in (summary or {}).items() if isinstance(v, int | float | str)}
    )
    return out, meta


# ---- publishing many partitions in one run --------------------------------------------------


def publish_days(
    context: dg.AssetExecutionContext,
    table: str,
    frames: dict[str, pd.DataFrame],
    audits: Callable[[str], list[AuditFn]],
    metadata: dict[str, dict[str, Any]],
    run_meta: dict[str, Any],
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write-audit-publish each day; one check result per audit and one materialization.

    A run over several partitions (a backfill) publishes day by day; each check reports the
    worst day, and the step fails on the first day whose audits fail (earlier days stay
    published, that day and later ones are untouched).
    """
    lake, alerts = context.resources.lake, context.resources.alerts
    checks: dict[str, list[dg.AssetCheckResult]] = {}
    published: dict[str, dict[str, Any]] = {}
    failure: dg.Failure | None = None
    for day, df in frames.items():
        events = write_audit_publish(
            context, lake, alerts, table, f"date={day}", df, audits(day), metadata.get(day)
        )
        try:
            for ev in events:
                if isinstance(ev, dg.AssetCheckResult):
                    checks.setdefault(ev.check_name, []).append(ev)
                else:
                    published[day] = dict(ev.metadata or {})
        except dg.Failure as exc:
            failure = exc
            break
    for name, results in checks.items():
        worst = next((r for r in results if not r.passed), results[-1])
        yield dg.AssetCheckResult(
            asset_key=context.asset_key,
            check_name=name,
            passed=all(r.passed for r in results),
            severity=dg.AssetCheckSeverity.ERROR,
            description=worst.description,
            metadata={**dict(worst.metadata or {}), "days_checked": len(results)},
        )
    if failure is not None:
        raise dg.Failure(
            description=failure.description,
            metadata=failure.metadata,
            allow_retries=False,
        )
    if len(published) == 1:
        (meta,) = published.values()
    else:
        meta = {
            "days": len(published),
            "rows": int(sum(len(df) for df in frames.values())),
            "per_day": dg.MetadataValue.json(
                {d: {k: _plain(v) for k, v in m.items()} for d, m in published.items()}
            ),
        }
    yield dg.MaterializeResult(metadata={**meta, **run_meta})


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, dg.MetadataValue) else v


def clean_meta(figures: dict[str, Any]) -> dict[str, Any]:
    """Drop missing figures; numpy scalars become plain Python numbers."""
    return {
        k: v.item() if isinstance(v, np.generic) else v for k, v in figures.items() if v is not None
    }


# ---- audits ---------------------------------------------------------------------------------

STAY_CONTRACT = ["device_id", "start_ts", "end_ts", "lat", "lon", "n_pings"]
VISIT_CONTRACT = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s"]
HOME_CONTRACT = ["device_id", "lat", "lon", "confidence", "nights"]
AFFINITY_CONTRACT = ["device_id", "brand", "affinity"]


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


def affinity_audits() -> list:
    return [
        has_columns(*AFFINITY_CONTRACT),
        no_nulls("device_id", "brand", "affinity"),
        rows_satisfy(
            "affinity_finite",
            "Affinity is finite and each (device, brand) appears once.",
            lambda df: (
                np.isfinite(df["affinity"].astype(float)) & ~df.duplicated(["device_id", "brand"])
            ),
        ),
    ]


def trailing_stays_per_device(lake: LakeResource, day: str) -> list[float]:
    """Stays per device of the published ``stay_points`` days before ``day`` (newest first)."""
    out = []
    for d in trailing_days(day, NORM_HISTORY_DAYS):
        df = read_day(lake, day_key("curated/stay_points", d), columns=["device_id"])
        if df is not None and len(df):
            out.append(_stays_per_device(df))
    return out


def parquet_rows(lake: LakeResource, key: str) -> int:
    """Rows of the Parquet files under ``key``, from their footers (0 when missing)."""
    return sum(
        pq.ParquetFile(io.BytesIO(lake.read_bytes(f))).metadata.num_rows
        for f in lake.parquet_files(key)
    )


def trailing_rows(lake: LakeResource, table: str, day: str) -> list[int]:
    """Row counts of the published days of ``table`` before ``day``."""
    counts = [parquet_rows(lake, day_key(f"curated/{table}", d)) for d in trailing_days(day, 7)]
    return [c for c in counts if c]


# ---- assets ---------------------------------------------------------------------------------


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("clean_pings")],
    check_specs=audit_specs("stay_points", stay_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    required_resource_keys=RESOURCES,
    kinds=KINDS,
)
def stay_points(
    context: dg.AssetExecutionContext, config: StayPointsConfig
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Stay points: where each device stood still (radius + minimum duration), per UTC day.

    From ``clean_pings``: a stay is a run of pings within ``radius_m`` of their centroid lasting
    at least ``min_duration_s``, from its first to its last ping inside the radius (a travel
    ping followed by a long sampling gap is not a stay). Published to ``curated/stay_points``;
    a blocking audit fails a day whose stays per device leave the trailing norm. With
    ``truth/`` in the lake the metadata carries stay precision and recall.
    """
    lake: LakeResource = context.resources.lake
    started = time.perf_counter()
    days = list(context.partition_keys)
    inputs = [day_key("work/clean_pings", d) for d in days]
    present = [k for k in inputs if lake.parquet_files(k)]
    params = StayParams(
        config.radius_m,
        config.min_duration_s,
        config.max_gap_s,
        config.min_pings,
        config.max_outliers,
    ).as_dict()
    pings_n = {d: parquet_rows(lake, day_key("work/clean_pings", d)) for d in days}
    loaded: dict[str, pd.DataFrame] = {}

    def load_day(d: str, columns: list[str]) -> pd.DataFrame | None:
        if d not in loaded:
            df = read_day(lake, day_key("work/clean_pings", d), columns, dictionary=["device_id"])
            if df is None:
                return None
            loaded[d] = df
        return loaded[d]

    def load() -> pd.DataFrame:
        cols = ["device_id", "ts", "lat", "lon"]
        frames = [f for d in days if (f := load_day(d, cols)) is not None]
        if not frames:
            return pd.DataFrame(columns=cols)
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    stays, engine_meta = run_per_device(context, config.engine, detect_stays, present, params, load)
    seconds = round(time.perf_counter() - started, 3)
    by_day = utc_day(stays["start_ts"]) if len(stays) else np.array([], dtype=object)
    frames: dict[str, pd.DataFrame] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for d in days:
        df = stays[by_day == d][STAY_COLUMNS].sort_values(["device_id", "start_ts"])
        df = df.reset_index(drop=True)
        frames[d] = df
        figures: dict[str, Any] = {
            "input_pings": pings_n[d],
            "input": "present" if pings_n[d] else "missing or empty",
            "devices": int(df["device_id"].nunique()),
            "stays_per_device": round(_stays_per_device(df), 3),
            "median_duration_min": round(float(df["duration_s"].median() / 60), 1)
            if len(df)
            else None,
        }
        truth = truth_day(lake, "stays", d)
        pings = load_day(d, ["device_id", "ts"]) if truth is not None else None
        if truth is not None and pings is not None:
            figures.update(
                accuracy.stay_accuracy(
                    df, truth, d, min_duration_s=config.min_duration_s, pings=pings
                )
            )
        metadata[d] = clean_meta(figures)
        loaded.pop(d, None)

    def audits(d: str) -> list:
        history = trailing_stays_per_device(lake, d) if pings_n[d] else []
        return stay_audits(history, config.norm_low, config.norm_high)

    run_meta = {
        "seconds": seconds,
        "pings_per_s": round(sum(pings_n.values()) / max(seconds, 1e-9)),
        "params": dg.MetadataValue.json(params),
        **engine_meta,
    }
    yield from publish_days(context, "stay_points", frames, audits, metadata, run_meta)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("stay_points")],
    check_specs=audit_specs("visits", visit_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    required_resource_keys=RESOURCES,
    kinds=KINDS,
)
def visits(
    context: dg.AssetExecutionContext, config: VisitsConfig
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Visits: stay points matched to POI polygons (STRtree on stay centroids), with dwell time.

    A stay whose centroid lies in (or within ``max_distance_m`` of) a place's polygon and that
    lasts at least ``min_dwell_s`` is a visit to the nearest such place. Published to
    ``curated/visits`` (plus ``brand`` and ``distance_m``); with ``truth/`` the metadata
    carries visit precision and recall.
    """
    lake: LakeResource = context.resources.lake
    check_engine(config.engine)
    started = time.perf_counter()
    pois = lake.read_parquet("reference/pois")
    index = PoiIndex(pois)
    frames, metadata = {}, {}
    for d in context.partition_keys:
        stays = read_day(lake, day_key("curated/stay_points", d))
        if stays is None or stays.empty:
            df = pd.DataFrame({c: pd.Series(dtype=object) for c in VISIT_COLUMNS})
        else:
            df = match_visits(stays, index, config.max_distance_m, config.min_dwell_s)
        frames[d] = df[VISIT_COLUMNS]
        figures: dict[str, Any] = {
            "stays": 0 if stays is None else len(stays),
            "devices": int(df["device_id"].nunique()),
            "pois_visited": int(df["poi_id"].nunique()),
            "median_dwell_min": round(float(df["dwell_s"].median() / 60), 1) if len(df) else None,
        }
        truth = truth_day(lake, "stays", d)
        if truth is not None:
            pings = read_day(
                lake, day_key("work/clean_pings", d), ["device_id", "ts"], dictionary=["device_id"]
            )
            figures.update(accuracy.visit_accuracy(df, truth, d, config.min_dwell_s, pings))
        metadata[d] = clean_meta(figures)
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        "pois": len(pois),
        "engine": config.engine,
    }
    yield from publish_days(
        context,
        "visits",
        frames,
        lambda d: visit_audits(trailing_rows(lake, "visits", d)),
        metadata,
        run_meta,
    )


HOME_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(HOME_WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)
AFFINITY_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(AFFINITY_WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("stay_points", partition_mapping=HOME_MAPPING)],
    check_specs=audit_specs("home_location", home_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    required_resource_keys=RESOURCES,
    kinds=KINDS,
)
def home_location(
    context: dg.AssetExecutionContext, config: HomeConfig
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Home location as of each day, from the trailing window of stay points.

    The window (``window_days``, default 14, through a time-window partition mapping; days
    before the lake's first day are skipped) is expanded to distinct hours per ~150 m cell; the
    home is the cell with most night-time (22-07 local, ``LAKE_TIMEZONE``) hours, or the
    day-time rest cell for night-shift workers, with a ``confidence`` in 0..1. Devices below
    ``min_confidence`` are left out. With ``truth/`` the metadata carries the share of homes
    within 200 m, coverage, and the confidence threshold that gives 98% precision.
    """
    lake: LakeResource = context.resources.lake
    started = time.perf_counter()
    days = list(context.partition_keys)
    upstream = list(context.asset_partition_keys_for_input("stay_points"))
    window_days = min(config.window_days, HOME_WINDOW_DAYS)
    present = [d for d in upstream if lake.parquet_files(day_key("curated/stay_points", d))]
    inputs = [day_key("curated/stay_points", d) for d in present]
    params = {
        "as_of": days,
        "window_days": window_days,
        "timezone": lake_timezone(),
        "cell_m": config.cell_m,
        "night_start_h": config.night_start_h,
        "night_end_h": config.night_end_h,
        "day_rest_ratio": config.day_rest_ratio,
        "hours_scale": config.hours_scale,
        "min_confidence": config.min_confidence,
    }
    cols = ["device_id", "start_ts", "end_ts", "lat", "lon"]
    all_stays, _ = read_days(lake, "curated/stay_points", present)
    all_stays = all_stays[cols] if len(all_stays) else pd.DataFrame(columns=cols)
    homes, engine_meta = run_per_device(
        context, config.engine, homes_by_day, inputs, params, lambda: all_stays
    )
    seconds = round(time.perf_counter() - started, 3)
    stay_day = utc_day(all_stays["start_ts"]) if len(all_stays) else np.array([], dtype=object)
    truth = truth_homes(lake)
    frames, metadata = {}, {}
    for d in days:
        df = homes[homes["date"] == d][HOME_COLUMNS].sort_values("device_id", ignore_index=True)
        df["nights"] = df["nights"].astype(np.int32)
        df["hours"] = df["hours"].astype(np.int32)
        frames[d] = df
        span = set(window(d, window_days))
        eligible = pd.unique(all_stays["device_id"][np.isin(stay_day, list(span))])
        figures: dict[str, Any] = {
            "window_days_found": len(span & set(present)),
            "devices_in_window": len(eligible),
            "homes": len(df),
            "coverage": round(len(df) / len(eligible), 4) if len(eligible) else None,
            "night_shift_fallbacks": int((df["method"] == "day_rest").sum()),
            "median_confidence": round(float(df["confidence"].median()), 3) if len(df) else None,
        }
        if truth is not None and len(df):
            figures.update(accuracy.home_accuracy(df, truth, eligible))
        metadata[d] = clean_meta(figures)
    run_meta = {"seconds": seconds, "window_days": window_days, **engine_meta}
    yield from publish_days(
        context, "home_location", frames, lambda d: home_audits(), metadata, run_meta
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("home_location")],
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    required_resource_keys=RESOURCES,
    kinds=KINDS,
)
def demographics(context: dg.AssetExecutionContext, config: EngineConfig) -> dg.MaterializeResult:
    """Demographics per device (attributes of its home's area) and panel coverage per area.

    Writes ``work/demographics/date=D`` (device_id, confidence, area_id, population and the
    area's attributes) and ``work/area_coverage/date=D`` (area_id, population, panel_devices,
    coverage = panel devices / population), which audience projection divides by.
    """
    lake: LakeResource = context.resources.lake
    check_engine(config.engine)
    started = time.perf_counter()
    areas = lake.read_parquet("reference/areas")
    truth = truth_homes(lake)
    per_day: dict[str, dict[str, Any]] = {}
    for d in context.partition_keys:
        homes = read_day(lake, day_key("curated/home_location", d))
        if homes is None:
            homes = pd.DataFrame(columns=HOME_COLUMNS)
        devices = device_demographics(homes, areas)
        cover = area_coverage(devices, areas)
        lake.write_parquet(devices, day_key("work/demographics", d))
        lake.write_parquet(cover, day_key("work/area_coverage", d))
        figures: dict[str, Any] = {
            "devices": len(devices),
            "homes_outside_areas": len(homes) - len(devices),
            "areas": len(cover),
            "areas_without_panel": int((cover["panel_devices"] == 0).sum()),
            "median_area_coverage": round(float(cover["coverage"].median()), 5)
            if len(cover)
            else None,
        }
        if truth is not None and len(devices) and "home_area_id" in truth:
            t = truth.set_index("device_id")["home_area_id"].astype(str)
            matched = devices["device_id"].map(t)
            figures["area_correct"] = round(
                float((matched == devices["area_id"].astype(str)).mean()), 4
            )
        per_day[d] = clean_meta(figures)
    meta: dict[str, Any] = (
        next(iter(per_day.values()))
        if len(per_day) == 1
        else {"days": len(per_day), "per_day": dg.MetadataValue.json(per_day)}
    )
    return dg.MaterializeResult(
        metadata={**meta, "seconds": round(time.perf_counter() - started, 3)}
    )


@dg.asset(
    name="brand_affinity",
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("visits", partition_mapping=AFFINITY_MAPPING)],
    check_specs=audit_specs("brand_affinity", affinity_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    required_resource_keys=RESOURCES,
    kinds=KINDS,
)
def brand_affinity_scores(
    context: dg.AssetExecutionContext, config: AffinityConfig
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Brand affinity per device and brand over the trailing window of visits.

    ``affinity = log(smoothed visit share of the brand / population share) + 0.5 * log(dwell
    ratio)`` (see ``near_assets.science.affinity``): 0 is "like everyone", higher means more
    drawn to the brand; sort descending to pick an audience. Published to
    ``curated/brand_affinity`` (plus visits, dwell_s, lift).
    """
    lake: LakeResource = context.resources.lake
    check_engine(config.engine)
    started = time.perf_counter()
    upstream = list(context.asset_partition_keys_for_input("visits"))
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    all_visits, found = read_days(lake, "curated/visits", upstream)
    visit_day = utc_day(all_visits["start_ts"]) if len(all_visits) else np.array([])
    frames, metadata = {}, {}
    for d in context.partition_keys:
        span = window(d, window_days)
        sel = all_visits[np.isin(visit_day, span)] if len(all_visits) else all_visits
        if sel.empty or "brand" not in sel:
            df = pd.DataFrame(
                {c: pd.Series(dtype=object) for c in ["device_id", "brand", "affinity"]}
            )
        else:
            df = brand_affinity(sel, config.alpha, config.beta, config.clip)
        frames[d] = df
        metadata[d] = clean_meta(
            {
                "visits_in_window": len(sel),
                "window_days_found": len(set(span) & set(found)),
                "devices": int(df["device_id"].nunique()),
                "brands": int(df["brand"].nunique()),
                "share_positive": round(float((df["affinity"] > 0).mean()), 4) if len(df) else None,
            }
        )
    run_meta = {"seconds": round(time.perf_counter() - started, 3), "window_days": window_days}
    yield from publish_days(
        context, "brand_affinity", frames, lambda d: affinity_audits(), metadata, run_meta
    )


mobility_job = dg.define_asset_job(
    "mobility_daily",
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=daily_partitions,
    tags={"platform/lane": "batch"},
    description="Stay points -> visits -> home -> demographics -> brand affinity for a day.",
)

defs = dg.Definitions(
    assets=[stay_points, visits, home_location, demographics, brand_affinity_scores],
    jobs=[mobility_job],
)
