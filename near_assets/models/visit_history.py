"""``visit_history``: per-device, per-POI rolling history, updated incrementally every day.

Day D reads the published history of D-1 (or the one this run just computed), the visits of D
and the visits of D-7, D-30 and D-90 (those leaving the 7/30/90-day windows) and publishes the
snapshot of D through write-audit-publish. Without a history of D-1 (the lake's first day, a
gap) the day is re-computed from the trailing 90 days of visits (``mode: rebuild``).

Engine (``engine`` config, default ``$NEAR_ENGINE``): ``pandas`` in-process; ``spark`` one job
of ``near_assets/spark_jobs/models.py --task history`` for every day of the run (Spark SQL: the
previous snapshot full-outer-joined with the day's signed per-pair totals), which writes each
day's stamped object into the run's staging folder with its audit figures: the run process
publishes snapshots it never loads.
"""

import itertools
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.engine import EngineConfig
from near_assets.models import GROUP, RETRY
from near_assets.models.spark import SPARK_KINDS, StageSpec, run_models_job
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import history
from near_assets.science.visits import VISIT_COLUMNS
from near_assets.spark_jobs.models import HISTORY_DDL
from near_assets.spark_jobs.profiles_launch import engine_metadata, spark_places
from near_assets.tables import VISIT_HISTORY, VISITS, published_asset_args
from publishing.tables import day_window, publish_pool, trailing_days
from publishing.wap import (
    Staged,
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
from resources.spark import SparkResource

LONGEST = max(history.WINDOWS)
VISITS_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-LONGEST, allow_nonexistent_upstream_partitions=True
)
"""Day D reads visits of D, D-7, D-30, D-90 (and D-89 .. D when it rebuilds)."""
PREVIOUS_DAY = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
)


class VisitHistoryConfig(EngineConfig):
    retention_days: int = history.DEFAULT_RETENTION_DAYS
    """Pairs whose last visit is older than this many days are dropped (>= 90)."""


def _invariants_sql() -> str:
    """``history.history_invariants`` in SQL (the Spark job judges the rows it writes)."""
    terms = ["first_seen <= last_seen", "visits_total >= 1"]
    for chain, tol in (
        ([*(f"visits_{w}d" for w in history.WINDOWS), "visits_total"], ""),
        ([*(f"dwell_{w}d_s" for w in history.WINDOWS), "dwell_total_s"], " + 0.001D"),
    ):
        terms.append(f"{chain[0]} >= 0")
        terms += [f"{a} <= {b}{tol}" for a, b in itertools.pairwise(chain)]
    return " AND ".join(terms)


INVARIANTS_SQL = _invariants_sql()


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
            sql=INVARIANTS_SQL,
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
    kinds=SPARK_KINDS,
    pool=publish_pool(VISIT_HISTORY.name),
    **published_asset_args(VISIT_HISTORY),
)
def visit_history(
    context: dg.AssetExecutionContext,
    config: VisitHistoryConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Per-device, per-POI visit history: first/last seen, lifetime visits and dwell, and visits
    and dwell over the trailing 7, 30 and 90 days.

    Incremental: the snapshot of day D is the snapshot of D-1 plus the visits of D minus the
    visits leaving each window (those of D-7, D-30, D-90); only the pairs they touch are updated
    (``near_assets.science.history.update_history``), so a day's work follows that day's visits.
    Without a snapshot of D-1 the day is rebuilt from the trailing 90 days of visits. Published
    to ``curated/visit_history/date=D``. In-process or, with ``engine: spark``, Spark SQL (one
    job for every day of the run).
    """
    started = time.perf_counter()
    if config.engine == "spark":
        frames, metadata, engine_meta = history_spark(context, lake, spark, config)
    else:
        frames, metadata = history_pandas(context, lake, config)
        engine_meta = {"engine": "pandas"}
    if not frames:
        raise dg.Failure(
            description="no data: visits missing for every day of the run; nothing published",
            allow_retries=False,
        )
    run_meta = {"seconds": round(time.perf_counter() - started, 3), **engine_meta}
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


def history_pandas(
    context: dg.AssetExecutionContext, lake: LakeResource, config: VisitHistoryConfig
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Each day of the run in-process, in order (the previous day's snapshot kept in memory)."""
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
    return frames, metadata


def history_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    config: VisitHistoryConfig,
) -> tuple[dict[str, Staged], dict[str, dict[str, Any]], dict[str, Any]]:
    """Every day of the run from one Spark job that stages each day's snapshot with its audit
    figures (the same modes as in-process: a day continues the run's previous day, else the
    published snapshot of D-1, else it is rebuilt from the trailing 90 days of visits)."""
    items: list[dict[str, Any]] = []
    chained = False
    with spark_places(lake, spark) as places:
        for day in sorted(context.partition_keys):
            if not VISITS.exists(lake, day):
                context.add_asset_metadata(
                    {"input": "missing", "skipped": f"no visits for {day}: not published"},
                    partition_key=day,
                )
                chained = False
                continue
            (yesterday,) = trailing_days(day, 1)
            item: dict[str, Any] = {"day": day, "today": places.input(VISITS.key(day))}
            if chained or VISIT_HISTORY.exists(lake, yesterday):
                item["mode"] = "incremental"
                if not chained:
                    item["previous"] = places.input(VISIT_HISTORY.key(yesterday))
                item["leaving"] = {
                    str(w): places.input(VISITS.key(d))
                    for w in history.WINDOWS
                    if VISITS.exists(lake, d := trailing_days(day, w)[-1])
                }
            else:
                item["mode"] = "rebuild"
                present = VISITS.present(lake, day_window(day, LONGEST))
                item["visits"] = [places.input(VISITS.key(d)) for d in present]
            items.append(item)
            chained = True
        if not items:
            return {}, {}, {"engine": "spark"}
        stage = StageSpec(
            context,
            VISIT_HISTORY,
            [i["day"] for i in items],
            HISTORY_DDL,
            history.HISTORY_COLUMNS,
            history.KEY,
            history_audits(),
            duplicates=[",".join(history.KEY)],
        )
        spec = {
            "params": {"retention_days": config.retention_days},
            "days": items,
            "stage": stage.spec(places),
        }
        summary = run_models_job(context, lake, spark, places, "history", spec)
    reported = summary.get("days") or {}
    staged = stage.staged(reported)
    metadata = {}
    for d in staged:
        figures = {k: v for k, v in reported[d].items() if k != "staged"}
        keys = ["mode", "visits_leaving", "previous_pairs", "rebuild_days_found", "visits_today",
                "update_s", "pairs", "devices", "pois", "pairs_active_7d", "pairs_active_30d"]  # fmt: skip
        metadata[d] = clean_meta({k: figures[k] for k in keys if k in figures})
    return staged, metadata, engine_metadata(summary)


defs = dg.Definitions(assets=[visit_history])
