"""``identity_graph``: devices linked into people and households (cross identity), daily.

Day D reads the stay points of the trailing ``window_days`` (D-6 .. D by default) and the
published ``home_location`` of D (optional: without it each device's home is its median night
stay), links devices by co-location (``near_assets.science.identity.link_devices``) and
publishes one row per device seen in the window through write-audit-publish.

Engine (``engine`` config, default ``$NEAR_ENGINE``): ``pandas`` in-process; ``spark`` one job
of ``near_assets/spark_jobs/models.py --task identity`` for every day of the run: candidate stay
pairs, co-location and the per-pair evidence in Spark, the (small) edge list scored and cut
into components on the job's driver, the graph of every device written by Spark into the
run's staging folder with its audit figures (published unread).
"""

import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import dagster as dg
import pandas as pd

from near_assets import tables
from near_assets.engine import EngineConfig
from near_assets.models import GROUP, RETRY
from near_assets.models.spark import SPARK_KINDS, StageSpec, run_models_job
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import identity
from near_assets.spark_jobs.models import GRAPH_DDL
from near_assets.spark_jobs.profiles_launch import engine_metadata, spark_places
from near_assets.tables import HOME_LOCATION, IDENTITY_GRAPH, STAY_POINTS, published_asset_args
from publishing.tables import day_window, publish_pool
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
from resources.settings import lake_timezone
from resources.spark import SparkResource

WINDOW_DAYS = 7
WINDOW_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)
STAY_COLUMNS = ["device_id", "start_ts", "end_ts", "lat", "lon"]
TRUTH_IDENTITY = tables.TRUTH_IDENTITY.key()
"""The generator's people and households (synthetic lakes only)."""


class IdentityGraphConfig(EngineConfig):
    window_days: int = WINDOW_DAYS
    """Days of stay points linked together (D - window_days + 1 .. D; at most 7)."""
    min_nights: int = identity.IdentityParams.min_nights
    """Evenings together (at night anywhere, or at one of the two homes) an edge needs."""
    min_score: float = identity.IdentityParams.min_score
    """Edge score an edge needs (0..1)."""
    use_home_location: bool = True
    """Read ``home_location`` of D for the devices' homes (else their median night stays)."""
    max_household_devices: int = 20
    """Audit: no household larger than this (a runaway chain of neighbours is blocked)."""


def graph_audits(max_household_devices: int) -> list:
    def household_size(df: pd.DataFrame) -> pd.Series:
        size = df.groupby("household_id")["device_id"].transform("size")
        return size <= max_household_devices

    return [
        has_columns(*identity.GRAPH_COLUMNS),
        no_nulls("device_id", "person_id", "household_id", "confidence"),
        unique_keys("device_id"),
        rows_satisfy(
            "graph_consistent",
            "Confidence in [0, 1], every person inside one household, devices_in_person >= 1.",
            identity.graph_invariants,
            # the Spark job adds the cross-row facts as columns beside the row
            sql="confidence BETWEEN 0 AND 1 AND devices_in_person >= 1 AND __person_households = 1",
        ),
        rows_satisfy(
            "household_size",
            f"No household holds more than {max_household_devices} devices.",
            household_size,
            sql=f"__household_size <= {int(max_household_devices)}",
        ),
    ]


def describe(
    graph: pd.DataFrame, edges: pd.DataFrame, truth: pd.DataFrame | None, figures: dict[str, Any]
) -> dict[str, Any]:
    linked = graph["confidence"] > 0
    out = {
        **figures,
        "devices": len(graph),
        "devices_linked": int(linked.sum()),
        "people": int(graph["person_id"].nunique()),
        "households": int(graph["household_id"].nunique()),
        "edges_person": int((edges["kind"] == "person").sum()),
        "edges_household": int((edges["kind"] == "household").sum()),
        "largest_household": int(graph.groupby("household_id").size().max()) if len(graph) else 0,
    }
    if truth is not None:
        for level in ("household_id", "person_id"):
            acc = identity.pairwise_accuracy(graph, truth, level)
            name = level.removesuffix("_id")
            out[f"truth_{name}_precision"] = acc["precision"]
            out[f"truth_{name}_recall"] = acc["recall"]
    return clean_meta(out)


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[
        dg.AssetDep("stay_points", partition_mapping=WINDOW_MAPPING),
        dg.AssetDep("home_location"),
    ],
    check_specs=audit_specs(IDENTITY_GRAPH.name, graph_audits(20)),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=SPARK_KINDS,
    pool=publish_pool(IDENTITY_GRAPH.name),
    **published_asset_args(IDENTITY_GRAPH),
)
def identity_graph(
    context: dg.AssetExecutionContext,
    config: IdentityGraphConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Cross identity: every device seen in the trailing 7 days with the person and household
    it belongs to and a confidence.

    Devices are linked when their stay points overlap in space (<= 50 m) and time on several
    evenings at one home (household); a pair also together by day away from home is one person.
    Candidate pairs come from a (grid cell x hour) join of the stays, crowded cells left out;
    people and households are the connected components of the linked pairs
    (``near_assets.science.identity``). Published to ``curated/identity_graph/date=D``.
    """
    started = time.perf_counter()
    if config.engine == "spark":
        frames, metadata, engine_meta = identity_spark(context, lake, spark, config)
    else:
        frames, metadata = identity_pandas(context, lake, config)
        engine_meta = {"engine": "pandas"}
    if not frames:
        raise dg.Failure(
            description="no data: stay points missing for every day of the run; nothing published",
            allow_retries=False,
        )
    run_meta = {"seconds": round(time.perf_counter() - started, 3), **engine_meta}
    yield from publish_days(
        context,
        lake,
        alerts,
        IDENTITY_GRAPH,
        frames,
        lambda d: graph_audits(config.max_household_devices),
        metadata,
        run_meta,
    )


def _params(config: IdentityGraphConfig) -> identity.IdentityParams:
    return replace(
        identity.IdentityParams(), min_nights=config.min_nights, min_score=config.min_score
    )


def _window(config: IdentityGraphConfig) -> int:
    return max(1, min(config.window_days, WINDOW_DAYS))


def _skip(context: dg.AssetExecutionContext, day: str, empty: bool = False) -> None:
    why = f"no stay point in the window ending {day}" if empty else f"no stay points for {day}"
    context.add_asset_metadata(
        {"input": "empty" if empty else "missing", "skipped": f"{why}: not published"},
        partition_key=day,
    )


def identity_pandas(
    context: dg.AssetExecutionContext, lake: LakeResource, config: IdentityGraphConfig
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Each day of the run in-process."""
    params = _params(config)
    truth_table = lake.read_arrow(TRUTH_IDENTITY)
    truth = None if truth_table is None else truth_table.to_pandas()
    frames: dict[str, pd.DataFrame] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for day in sorted(context.partition_keys):
        stays, found = STAY_POINTS.read_many(lake, day_window(day, _window(config)), STAY_COLUMNS)
        if day not in found:
            _skip(context, day)
            continue
        if stays.empty:  # nothing to link (both engines skip the day)
            _skip(context, day, empty=True)
            continue
        homes = None
        if config.use_home_location:
            homes = HOME_LOCATION.read(lake, day, ["device_id", "lat", "lon"])
        t0 = time.perf_counter()
        graph, edges = identity.link_devices(stays, homes, lake_timezone(), params)
        figures = {
            "window_days_found": len(found),
            "stays": len(stays),
            "homes_from": "home_location" if homes is not None else "night stays",
            "seconds_science": round(time.perf_counter() - t0, 3),
        }
        frames[day], metadata[day] = graph, describe(graph, edges, truth, figures)
    return frames, metadata


def identity_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    config: IdentityGraphConfig,
) -> tuple[dict[str, Staged], dict[str, dict[str, Any]], dict[str, Any]]:
    """Every day of the run from one Spark job that stages each day's graph with its audit
    figures (the run process loads no rows)."""
    items: list[dict[str, Any]] = []
    with spark_places(lake, spark) as places:
        for day in sorted(context.partition_keys):
            found = STAY_POINTS.present(lake, day_window(day, _window(config)))
            if day not in found:
                _skip(context, day)
                continue
            if not sum(STAY_POINTS.rows(lake, d) for d in found):  # footers only
                _skip(context, day, empty=True)
                continue
            homes = config.use_home_location and HOME_LOCATION.exists(lake, day)
            items.append(
                {
                    "day": day,
                    "stays": [places.input(STAY_POINTS.key(d)) for d in found],
                    "homes": places.input(HOME_LOCATION.key(day)) if homes else None,
                }
            )
        if not items:
            return {}, {}, {"engine": "spark"}
        stage = StageSpec(
            context,
            IDENTITY_GRAPH,
            [i["day"] for i in items],
            GRAPH_DDL,
            identity.GRAPH_COLUMNS,
            ["device_id"],
            graph_audits(config.max_household_devices),
            duplicates=["device_id"],
        )
        params = {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(_params(config)).items()
        }
        spec = {
            "params": params,
            "timezone": lake_timezone(),
            "truth": places.input(TRUTH_IDENTITY) if lake.exists(TRUTH_IDENTITY) else None,
            "days": items,
            "stage": stage.spec(places),
        }
        summary = run_models_job(context, lake, spark, places, "identity", spec)
    reported = summary.get("days") or {}
    staged = stage.staged(reported)
    metadata = {}
    for item in items:
        d = item["day"]
        fig = {k: v for k, v in reported[d].items() if k != "staged"}
        fig["homes_from"] = "home_location" if item["homes"] else "night stays"
        metadata[d] = clean_meta({k: fig[k] for k in METADATA_ORDER if k in fig})
    return staged, metadata, engine_metadata(summary)


METADATA_ORDER = ["window_days_found", "stays", "homes_from", "seconds_science", "devices",
                  "devices_linked", "people", "households", "edges_person", "edges_household",
                  "largest_household", "truth_household_precision", "truth_household_recall",
                  "truth_person_precision", "truth_person_recall"]  # fmt: skip


defs = dg.Definitions(assets=[identity_graph])
