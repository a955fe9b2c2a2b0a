"""Profile assets: demographics (per device, from its home's area) and brand affinity.

Daily-partitioned, in group ``mobility`` (the daily mobility job runs them after homes and
visits). Demographics joins each day's homes to the reference areas; brand affinity scores the
trailing window of visits per device and brand. Accuracy against the generator's truth is scored
in ``near_assets.evaluation.mobility``.

Engine (``engine`` config, default ``$NEAR_ENGINE``): ``pandas`` in-process; ``spark`` one job
of ``near_assets/spark_jobs/profiles.py`` per asset and run. Under Spark, demographics and area
coverage are written by the job (point-in-polygon per batch of homes with the same function);
brand affinity is Spark SQL whose job writes each day's stamped object into the run's staging
folder with its audit figures, so the run process publishes objects it never loads.
"""

import base64
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from near_assets.engine import EngineConfig, arrow_schema
from near_assets.mobility import GROUP, RETRY, single_or_per_day
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.reference import load_reference_areas
from near_assets.science import affinity
from near_assets.science.affinity import AFFINITY_COLUMNS
from near_assets.science.demographics import area_coverage, device_demographics
from near_assets.science.home import HOME_COLUMNS
from near_assets.spark_jobs.profiles import DAY as SPARK_DAY
from near_assets.spark_jobs.profiles import FINITE_SQL, NEG_AFFINITY
from near_assets.spark_jobs.profiles_launch import (
    engine_metadata,
    run_profiles_job,
    scratch,
    spark_places,
)
from near_assets.tables import (
    AREA_COVERAGE,
    BRAND_AFFINITY,
    DEMOGRAPHICS,
    HOME_LOCATION,
    VISITS,
    internal_asset_args,
    published_asset_args,
)
from publishing import journal
from publishing.tables import PART_FILE, day_window, publish_pool, run_staging_key, utc_days
from publishing.wap import (
    Figures,
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
from resources.spark import SparkResource

AFFINITY_WINDOW_DAYS = int(os.environ.get("NEAR_AFFINITY_WINDOW_DAYS", "28"))
AFFINITY_CONTRACT = ["device_id", "brand", "affinity"]
AFFINITY_RULE = "affinity_finite"
AFFINITY_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(AFFINITY_WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)


SPARK_KINDS = {"pandas", "spark", "parquet"}


class AffinityConfig(EngineConfig):
    """Brand affinity: in-process (pandas) or Spark SQL (``engine``)."""

    window_days: int = AFFINITY_WINDOW_DAYS
    """Trailing days of visits (at most $NEAR_AFFINITY_WINDOW_DAYS)."""
    alpha: float = affinity.AffinityParams.alpha
    beta: float = affinity.AffinityParams.beta
    clip: float = affinity.AffinityParams.clip


def affinity_audits() -> list:
    return [
        has_columns(*AFFINITY_CONTRACT),
        no_nulls("device_id", "brand", "affinity"),
        rows_satisfy(
            AFFINITY_RULE,
            "Affinity is finite and each (device, brand) appears once.",
            lambda df: (
                np.isfinite(df["affinity"].astype(float)) & ~df.duplicated(["device_id", "brand"])
            ),
            # the Spark job flags non-finite rows by this SQL and adds the repeated keys itself
            sql=FINITE_SQL,
        ),
    ]


def describe_demographics(
    homes: pd.DataFrame, devices: pd.DataFrame, cover: pd.DataFrame
) -> dict[str, Any]:
    return clean_meta(
        {
            "devices": len(devices),
            "homes_outside_areas": len(homes) - len(devices),
            "areas": len(cover),
            "areas_without_panel": int((cover["panel_devices"] == 0).sum()),
            "median_area_coverage": round(float(cover["coverage"].median()), 5)
            if len(cover)
            else None,
        }
    )


def affinity_of_window(visits: pd.DataFrame, config: AffinityConfig) -> pd.DataFrame:
    """Brand affinity of the window's visits (none without branded visits)."""
    if visits.empty or "brand" not in visits:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in AFFINITY_CONTRACT})
    return affinity.brand_affinity(visits, config.alpha, config.beta, config.clip)


def describe_affinity(
    df: pd.DataFrame, visits: pd.DataFrame, window: Sequence[str], found: Sequence[str]
) -> dict[str, Any]:
    return clean_meta(
        {
            "visits_in_window": len(visits),
            "window_days_found": len(set(window) & set(found)),
            "devices": int(df["device_id"].nunique()),
            "brands": int(df["brand"].nunique()),
            "share_positive": round(float((df["affinity"] > 0).mean()), 4) if len(df) else None,
        }
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("home_location"), "reference_areas"],
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=SPARK_KINDS,
    **internal_asset_args(DEMOGRAPHICS),
)
def demographics(
    context: dg.AssetExecutionContext,
    config: EngineConfig,
    lake: LakeResource,
    spark: SparkResource,
) -> dg.MaterializeResult:
    """Demographics per device (attributes of its home's area) and panel coverage per area.

    Writes ``work/demographics/date=D`` (device_id, confidence, area_id, population and the
    area's attributes) and ``work/area_coverage/date=D`` (area_id, population, panel_devices,
    coverage = panel devices / population), which audience projection divides by. In-process or,
    with ``engine: spark``, one Spark job that writes both tables (point-in-polygon per bucket of
    homes, the same function).
    """
    started = time.perf_counter()
    areas = load_reference_areas(lake, log=context.log)
    days = list(context.partition_keys)
    with_homes = (
        [d for d in days if HOME_LOCATION.exists(lake, d)] if config.engine == "spark" else []
    )
    per_day, rows, run_meta = {}, 0, {"engine": "pandas"}
    if with_homes:
        figures, run_meta = demographics_spark(context, lake, spark, areas, with_homes)
        for d, fig in figures.items():
            per_day[d] = describe_demographics_figures(fig)
            rows += fig["devices"]
    for d in days:
        if d in per_day:
            continue
        homes = HOME_LOCATION.read_or_empty(lake, d, HOME_COLUMNS)
        devices = device_demographics(homes, areas)
        cover = area_coverage(devices, areas)
        for table in (DEMOGRAPHICS, AREA_COVERAGE):  # Spark may have written other part files
            lake.delete(table.key(d))
        DEMOGRAPHICS.write(lake, devices, d)
        AREA_COVERAGE.write(lake, cover, d)
        per_day[d] = describe_demographics(homes, devices, cover)
        rows += len(devices)
    metadata = {
        **single_or_per_day(dict(sorted(per_day.items()))),
        "dagster/row_count": rows,
        "seconds": round(time.perf_counter() - started, 3),
        **run_meta,
    }
    return dg.MaterializeResult(metadata=metadata)


def describe_demographics_figures(fig: dict[str, Any]) -> dict[str, Any]:
    """``describe_demographics`` from the Spark job's figures of one day."""
    median = fig.get("median_area_coverage")
    return clean_meta(
        {
            "devices": int(fig["devices"]),
            "homes_outside_areas": int(fig["homes"]) - int(fig["devices"]),
            "areas": int(fig["areas"]),
            "areas_without_panel": int(fig["areas_without_panel"]),
            "median_area_coverage": round(float(median), 5) if median is not None else None,
        }
    )


def demographics_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    areas: pd.DataFrame,
    days: Sequence[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Both tables of ``days`` written by one Spark job; its figures per day and run metadata."""
    with scratch(context, lake, {"areas": areas}) as side, spark_places(lake, spark) as places:
        spec = {
            "areas": places.input(side["areas"]),
            "days": [
                {
                    "day": d,
                    "homes": places.input(HOME_LOCATION.key(d)),
                    "demographics": places.output(DEMOGRAPHICS.key(d)),
                    "coverage": places.output(AREA_COVERAGE.key(d)),
                }
                for d in days
            ],
        }
        summary = run_profiles_job(context, spark, "demographics", spec)
    reported = summary.get("days") or {}
    if missing := [d for d in days if d not in reported]:
        raise dg.Failure(description=f"the Spark job reported no figures for {missing}")
    return {d: reported[d] for d in days}, engine_metadata(summary)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("visits", partition_mapping=AFFINITY_MAPPING)],
    check_specs=audit_specs(BRAND_AFFINITY.name, affinity_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=SPARK_KINDS,
    pool=publish_pool(BRAND_AFFINITY.name),
    **published_asset_args(BRAND_AFFINITY),
)
def brand_affinity(
    context: dg.AssetExecutionContext,
    config: AffinityConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Brand affinity per device and brand over the trailing window of visits.

    ``affinity = log(smoothed visit share of the brand / population share) + 0.5 * log(dwell
    ratio)`` (see ``near_assets.science.affinity``): 0 is "like everyone", higher means more
    drawn to the brand; sort descending to pick an audience. Published to
    ``curated/brand_affinity`` (plus visits, dwell_s, lift). In-process or, with ``engine:
    spark``, Spark SQL over the window (one job for every day of the run).
    """
    started = time.perf_counter()
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    upstream = list(context.asset_partition_keys_for_input("visits"))
    if config.engine == "spark" and (present := VISITS.present(lake, upstream)):
        frames, metadata, engine_meta = affinity_spark(context, lake, spark, config, present)
    else:
        frames, metadata = affinity_pandas(context, lake, config, upstream)
        engine_meta = {"engine": "pandas"}
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        "window_days": window_days,
        **engine_meta,
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        BRAND_AFFINITY.name,
        frames,
        lambda d: affinity_audits(),
        metadata,
        run_meta,
    )


def affinity_pandas(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    config: AffinityConfig,
    upstream: Sequence[str],
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Each day's affinity in-process from the loaded window of visits."""
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    all_visits, found = VISITS.read_many(lake, upstream)
    visit_days = utc_days(all_visits["start_ts"]) if len(all_visits) else np.array([])
    frames, metadata = {}, {}
    for d in context.partition_keys:
        window = day_window(d, window_days)
        in_window = all_visits[np.isin(visit_days, window)] if len(all_visits) else all_visits
        frames[d] = affinity_of_window(in_window, config)
        metadata[d] = describe_affinity(frames[d], in_window, window, found)
    return frames, metadata


AFFINITY_DDL = (
    "device_id string, brand string, affinity double, visits int, dwell_s double, lift double"
)
"""``brand_affinity``'s columns as the in-process path writes them (``visits`` int32)."""


def affinity_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    config: AffinityConfig,
    present: Sequence[str],
) -> tuple[dict[str, Staged], dict[str, dict[str, Any]], dict[str, Any]]:
    """Each day's affinity from one Spark job (Spark SQL) that writes each day's object, stamped,
    into this run's staging folder with its audit figures: the run process loads no rows
    (``publish_days`` audits the figures and publishes the ``Staged`` objects)."""
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    days = list(context.partition_keys)
    windows = {d: day_window(d, window_days) for d in days}
    folders = {
        d: run_staging_key(BRAND_AFFINITY.name, BRAND_AFFINITY.folder(d), context.run_id)
        for d in days
    }
    versions = {d: journal.new_version() for d in days}
    needs = audit_needs(affinity_audits())
    schema = arrow_schema(AFFINITY_DDL, AFFINITY_COLUMNS)
    params = {"alpha": config.alpha, "beta": config.beta, "clip": config.clip}
    with spark_places(lake, spark) as places:
        stage = {
            "day": SPARK_DAY,
            "sort": ["brand", NEG_AFFINITY, "device_id"],
            "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
            "targets": {
                d: {
                    "uri": f"{places.output(folder)}/{PART_FILE}",
                    "stamp": {"version": versions[d], "run_id": context.run_id},
                }
                for d, folder in folders.items()
            },
            "rules": needs["rules"],
            "nulls": needs["nulls"],
            "duplicates": [],  # (device, brand) repeats are counted by the job (not sort-adjacent)
            "distinct": [],
            "medians": [],
            "value_counts": [],
        }
        spec = {
            "params": params,
            "visits": [places.input(VISITS.key(v)) for v in present],
            "days": [{"day": d, "window": windows[d]} for d in days],
            "stage": stage,
        }
        summary = run_profiles_job(context, spark, "affinity", spec)
    reported = summary.get("days") or {}
    staged, metadata = {}, {}
    for d in days:
        fig = reported.get(d) or {}
        if "staged" not in fig:
            raise dg.Failure(description=f"the Spark job wrote no object for {d} ({folders[d]})")
        result = fig["staged"]
        figures = dict(result["figures"])
        violations = dict(figures.get("violations", {}))
        violations[AFFINITY_RULE] = violations.get(AFFINITY_RULE, 0) + int(
            fig["audit"]["repeated_keys"]
        )
        figures["violations"] = violations
        staged[d] = Staged(
            key=folders[d],
            version=versions[d],
            content=result["content"],
            size=int(result["size"]),
            figures=Figures.from_dict(figures),
        )
        share = fig.get("share_positive")
        metadata[d] = clean_meta(
            {
                "visits_in_window": int(fig["visits_in_window"]),
                "window_days_found": len(set(windows[d]) & set(present)),
                "devices": int(fig["devices"]),
                "brands": int(fig["brands"]),
                "share_positive": round(float(share), 4) if fig["rows"] else None,
            }
        )
    return staged, metadata, engine_metadata(summary)


defs = dg.Definitions(assets=[demographics, brand_affinity])
