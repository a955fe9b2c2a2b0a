"""``visit_history``: per-device, per-POI rolling history, updated incrementally every day.

Day D reads the published history of D-1 (or the one this run just computed), the visits of D
and the visits of D-7, D-30 and D-90 (those leaving the 7/30/90-day windows) and publishes the
snapshot of D through write-audit-publish. Without a history of D-1 (the lake's first day, a
gap) the day is re-computed from the trailing 90 days of visits (``mode: rebuild``).
"""

import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.models import GROUP, KINDS, RETRY
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import history
from near_assets.science.visits import VISIT_COLUMNS
from near_assets.tables import VISIT_HISTORY, VISITS, published_asset_args
from publishing.tables import day_window, publish_pool, trailing_days
from publishing.wap import (
    audit_specs,
    clean_meta,
    has_columns,
    no_nulls,
    publish_days,
    rows_satisfy,
    unique_keys,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource

LONGEST = max(history.WINDOWS)
VISITS_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-LONGEST, allow_nonexistent_upstream_partitions=True
)
"""Day D reads visits of D, D-7, D-30, D-90 (and D-89 .. D when it rebuilds)."""
PREVIOUS_DAY = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
)


class VisitHistoryConfig(dg.Config):
    retention_days: int = history.DEFAULT_RETENTION_DAYS
    """Pairs whose last visit is older than this many days are dropped (>= 90)."""


def history_audits() -> list:
    return [
        has_columns(*history.HISTORY_COLUMNS),
        no_nulls("device_id", "poi_id", "first_seen", "last_seen"),
        unique_keys(*history.KEY),
        rows_satisfy(
            "history_consistent",
            "At least one visit, first_seen <= last_seen, and 0 <= 7d <= 30d <= 90d <= total "
            "for visits and dwell.",
            history.history_invariants,
        ),
    ]


def _visits(lake: LakeResource, day: str, cache: dict[str, pd.DataFrame | None]):
    if day not in cache:
        cache[day] = VISITS.read(lake, day, VISIT_COLUMNS)
    return cache[day]


def describe(df: pd.DataFrame, figures: dict[str, Any]) -> dict[str, Any]:
    return clean_meta(
        {
            **figures,
            "pairs": len(df),
            "devices": int(df["device_id"].nunique()),
            "pois": int(df["poi_id"].nunique()),
            "pairs_active_7d": int((df["visits_7d"] > 0).sum()),
            "pairs_active_30d": int((df["visits_30d"] > 0).sum()),
        }
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[
        dg.AssetDep("visits", partition_mapping=VISITS_MAPPING),
        dg.AssetDep("visit_history", partition_mapping=PREVIOUS_DAY),
    ],
    check_specs=audit_specs(VISIT_HISTORY.name, history_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=KINDS,
    pool=publish_pool(VISIT_HISTORY.name),
    **published_asset_args(VISIT_HISTORY),
)
def visit_history(
    context: dg.AssetExecutionContext,
    config: VisitHistoryConfig,
    lake: LakeResource,
    alerts: AlertsResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Per-device, per-POI visit history: first/last seen, lifetime visits and dwell, and visits
    and dwell over the trailing 7, 30 and 90 days.

    Incremental: the snapshot of day D is the snapshot of D-1 plus the visits of D minus the
    visits leaving each window (those of D-7, D-30, D-90); only the pairs they touch are updated
    (``near_assets.science.history.update_history``), so a day's work follows that day's visits.
    Without a snapshot of D-1 the day is rebuilt from the trailing 90 days of visits. Published
    to ``curated/visit_history/date=D``.
    """
    started = time.perf_counter()
    cache: dict[str, pd.DataFrame | None] = {}
    frames: dict[str, pd.DataFrame] = {}
    metadata: dict[str, dict[str, Any]] = {}
    previous: pd.DataFrame | None = None
    for day in sorted(context.partition_keys):
        today = _visits(lake, day, cache)
        if today is None:
            context.add_asset_metadata(
                {"input": "missing", "skipped": f"no visits for {day}: not published"},
                partition_key=day,
            )
            previous = None
            continue
        (yesterday,) = trailing_days(day, 1)
        if previous is None:
            previous = VISIT_HISTORY.read(lake, yesterday, history.HISTORY_COLUMNS)
        t0 = time.perf_counter()
        if previous is not None:
            leaving = {w: _visits(lake, trailing_days(day, w)[-1], cache) for w in history.WINDOWS}
            leaving = {w: v for w, v in leaving.items() if v is not None}
            t0 = time.perf_counter()
            df = history.update_history(previous, today, leaving, day, config.retention_days)
            figures = {
                "mode": "incremental",
                "visits_leaving": int(sum(len(v) for v in leaving.values())),
                "previous_pairs": len(previous),
            }
        else:
            window = day_window(day, LONGEST)
            visits, found = VISITS.read_many(lake, window, VISIT_COLUMNS)
            t0 = time.perf_counter()
            df = history.history_from_visits(visits, day, config.retention_days)
            figures = {"mode": "rebuild", "rebuild_days_found": len(found)}
        figures |= {"visits_today": len(today), "update_s": round(time.perf_counter() - t0, 4)}
        frames[day], metadata[day] = df, describe(df, figures)
        previous = df
        for old in [d for d in cache if d < trailing_days(day, LONGEST - 1)[-1]]:
            del cache[old]  # keep the cache to the 90 days a later day may still need
    if not frames:
        raise dg.Failure(
            description="no data: visits missing for every day of the run; nothing published",
            allow_retries=False,
        )
    run_meta = {"seconds": round(time.perf_counter() - started, 3), "engine": "pandas"}
    yield from publish_days(
        context,
        lake,
        alerts,
        VISIT_HISTORY,
        frames,
        lambda d: history_audits(),
        metadata,
        run_meta,
    )


defs = dg.Definitions(assets=[visit_history])
