"""Profile assets: demographics (per device, from its home's area) and brand affinity.

Daily-partitioned, in group ``mobility`` (the daily mobility job runs them after homes and
visits). Demographics joins each day's homes to the reference areas; brand affinity scores the
trailing window of visits per device and brand. Accuracy against the generator's truth is scored
in ``near_assets.evaluation.mobility``.
"""

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from near_assets.engine import EngineConfig
from near_assets.mobility import GROUP, PANDAS_KINDS, RETRY, single_or_per_day
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.reference import load_reference_areas
from near_assets.science import affinity
from near_assets.science.demographics import area_coverage, device_demographics
from near_assets.science.home import HOME_COLUMNS
from near_assets.tables import (
    AREA_COVERAGE,
    BRAND_AFFINITY,
    DEMOGRAPHICS,
    HOME_LOCATION,
    VISITS,
    internal_asset_args,
    published_asset_args,
)
from publishing.tables import day_window, publish_pool, utc_days
from publishing.wap import (
    audit_specs,
    clean_meta,
    has_columns,
    no_nulls,
    publish_days,
    rows_satisfy,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource

AFFINITY_WINDOW_DAYS = int(os.environ.get("NEAR_AFFINITY_WINDOW_DAYS", "28"))
AFFINITY_CONTRACT = ["device_id", "brand", "affinity"]
AFFINITY_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(AFFINITY_WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)


class AffinityConfig(EngineConfig):
    """Brand affinity is computed in-process under both engines."""

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
            "affinity_finite",
            "Affinity is finite and each (device, brand) appears once.",
            lambda df: (
                np.isfinite(df["affinity"].astype(float)) & ~df.duplicated(["device_id", "brand"])
            ),
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
    kinds=PANDAS_KINDS,
    **internal_asset_args(DEMOGRAPHICS),
)
def demographics(
    context: dg.AssetExecutionContext, config: EngineConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Demographics per device (attributes of its home's area) and panel coverage per area.

    Writes ``work/demographics/date=D`` (device_id, confidence, area_id, population and the
    area's attributes) and ``work/area_coverage/date=D`` (area_id, population, panel_devices,
    coverage = panel devices / population), which audience projection divides by.
    """
    started = time.perf_counter()
    areas = load_reference_areas(lake, log=context.log)
    per_day, rows = {}, 0
    for d in context.partition_keys:
        homes = HOME_LOCATION.read_or_empty(lake, d, HOME_COLUMNS)
        devices = device_demographics(homes, areas)
        cover = area_coverage(devices, areas)
        DEMOGRAPHICS.write(lake, devices, d)
        AREA_COVERAGE.write(lake, cover, d)
        per_day[d] = describe_demographics(homes, devices, cover)
        rows += len(devices)
    metadata = {
        **single_or_per_day(per_day),
        "dagster/row_count": rows,
        "seconds": round(time.perf_counter() - started, 3),
        "engine": "pandas",
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("visits", partition_mapping=AFFINITY_MAPPING)],
    check_specs=audit_specs(BRAND_AFFINITY.name, affinity_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=PANDAS_KINDS,
    pool=publish_pool(BRAND_AFFINITY.name),
    **published_asset_args(BRAND_AFFINITY),
)
def brand_affinity(
    context: dg.AssetExecutionContext,
    config: AffinityConfig,
    lake: LakeResource,
    alerts: AlertsResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Brand affinity per device and brand over the trailing window of visits.

    ``affinity = log(smoothed visit share of the brand / population share) + 0.5 * log(dwell
    ratio)`` (see ``near_assets.science.affinity``): 0 is "like everyone", higher means more
    drawn to the brand; sort descending to pick an audience. Published to
    ``curated/brand_affinity`` (plus visits, dwell_s, lift).
    """
    started = time.perf_counter()
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    upstream = list(context.asset_partition_keys_for_input("visits"))
    all_visits, found = VISITS.read_many(lake, upstream)
    visit_days = utc_days(all_visits["start_ts"]) if len(all_visits) else np.array([])
    frames, metadata = {}, {}
    for d in context.partition_keys:
        window = day_window(d, window_days)
        in_window = all_visits[np.isin(visit_days, window)] if len(all_visits) else all_visits
        frames[d] = affinity_of_window(in_window, config)
        metadata[d] = describe_affinity(frames[d], in_window, window, found)
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        "window_days": window_days,
        "engine": "pandas",
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


defs = dg.Definitions(assets=[demographics, brand_affinity])
