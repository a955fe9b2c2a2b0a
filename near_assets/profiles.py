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
from typing import Any, Literal

import dagster as dg
import numpy as np
import pandas as pd

from near_assets.engine import EngineConfig, arrow_schema
from near_assets.mobility import GROUP, RETRY, single_or_per_day
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.people import IDENTITY_DEP, Graphs, graph_day
from near_assets.people import IGNORE as IGNORE_IDENTITY
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
    IDENTITY_GRAPH,
    VISIT_HISTORY,
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
    dwell: Literal["median", "mean"] = "median"
    """Dwell ratio on median dwells (per visit) or on mean dwells (dwell sum / visits)."""
    count: Literal["devices", "people"] = "devices"
    """Score devices, or people (devices mapped to ``person_id`` by the latest
    ``identity_graph`` of D-6 .. D; per (person, POI) the visits of its device with the most;
    one row per person under its ``person_id``, the smallest device id of its devices)."""
    use_history: bool = False
    """Read ``visit_history`` of the day instead of the window of visits when it holds what the
    score needs (``dwell: mean`` and a window of 7, 30 or 90 days) and is published; else (or
    without it) the window of daily visits. Same rows as long as the history is current: a
    snapshot is not re-derived when an earlier day's visits are re-published (opt-in)."""


HISTORY_WINDOWS = (7, 30, 90)


def history_holds(config: AffinityConfig) -> bool:
    """``visit_history`` holds what this configuration's score needs (see ``AffinityConfig``)."""
    window = min(config.window_days, AFFINITY_WINDOW_DAYS)
    return config.use_history and config.dwell == "mean" and window in HISTORY_WINDOWS


def affinity_sources(
    lake: LakeResource, config: AffinityConfig, days: Sequence[str]
) -> dict[str, str]:
    """Per day ``history`` (its ``visit_history`` partition is read) or ``visits`` (the window)."""
    holds = history_holds(config)
    return {d: "history" if holds and VISIT_HISTORY.exists(lake, d) else "visits" for d in days}


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


def affinity_of_window(
    visits: pd.DataFrame, config: AffinityConfig, graph: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, int]:
    """Brand affinity of the window's visits (none without branded visits) and the distinct
    devices with a branded visit (``config.dwell`` and ``config.count``, ``graph`` the identity
    graph counting people)."""
    if visits.empty or "brand" not in visits:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in AFFINITY_CONTRACT}), 0
    if config.dwell == "mean":
        return score_pairs(affinity.pairs_of_visits(visits), config, graph)
    devices = int(visits.loc[visits["brand"].notna(), "device_id"].nunique())
    if config.count == "people":
        visits = affinity.people_visits(visits, graph)
    return affinity.brand_affinity(visits, config.alpha, config.beta, config.clip), devices


def describe_affinity(
    df: pd.DataFrame, visits: int, window: Sequence[str], found: Sequence[str]
) -> dict[str, Any]:
    return clean_meta(
        {
            "visits_in_window": visits,
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
    deps=[
        dg.AssetDep("visits", partition_mapping=AFFINITY_MAPPING),
        dg.AssetDep("visit_history"),
        IDENTITY_DEP,
    ],
    check_specs=audit_specs(BRAND_AFFINITY.name, affinity_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    # visit_history and identity_graph are read only when configured and published: the
    # window of visits gives the same rows, so automation waits for neither
    automation_condition=eager_any_day.ignore(
        dg.AssetSelection.assets("visit_history") | IGNORE_IDENTITY
    ).with_label("eager (any day)"),
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

    Config: ``dwell: mean`` compares mean instead of median dwells; with it and a window of 7,
    30 or 90 days the day's ``visit_history`` (per device x POI counts and dwell) is read
    instead of the window of visits when published (same rows; metadata ``source``).
    ``count: people`` scores people (``identity_graph``): per (person, POI) the visits of the
    person's device with the most, one row per person under its ``person_id``.
    """
    started = time.perf_counter()
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    upstream = list(context.asset_partition_keys_for_input("visits"))
    sources = affinity_sources(lake, config, context.partition_keys)
    if config.engine == "spark" and (
        (present := VISITS.present(lake, upstream)) or "history" in sources.values()
    ):
        frames, metadata, engine_meta = affinity_spark(
            context, lake, spark, config, present, sources
        )
    else:
        frames, metadata = affinity_pandas(context, lake, config, upstream, sources)
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
    sources: dict[str, str],
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]:
    """Each day's affinity in-process from its ``visit_history`` or the loaded window of visits
    (``sources``)."""
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    graphs = Graphs(lake) if config.count == "people" else None
    if "visits" in sources.values():
        all_visits, found = VISITS.read_many(lake, upstream)
    else:
        all_visits, found = pd.DataFrame(), [d for d in upstream if VISITS.rows(lake, d) > 0]
    visit_days = utc_days(all_visits["start_ts"]) if len(all_visits) else np.array([])
    frames, metadata = {}, {}
    for d in context.partition_keys:
        window = day_window(d, window_days)
        graph, graph_part = graphs.of(d) if graphs is not None else (None, None)
        if sources[d] == "history":
            history = VISIT_HISTORY.read(lake, d, HISTORY_READ[window_days])
            pairs = affinity.pairs_of_history(history, window_days)
            frames[d], scored = score_pairs(pairs, config, graph)
            in_window = int(history[f"visits_{window_days}d"].sum())
        else:
            in_window = all_visits[np.isin(visit_days, window)] if len(all_visits) else all_visits
            frames[d], scored = affinity_of_window(in_window, config, graph)
            in_window = len(in_window)
        metadata[d] = {
            **describe_affinity(frames[d], in_window, window, found),
            **describe_source(
                config, sources[d], graph_part, scored, int(frames[d]["device_id"].nunique())
            ),
        }
    return frames, metadata


HISTORY_READ = {
    w: ["device_id", "poi_id", "brand", f"visits_{w}d", f"dwell_{w}d_s"] for w in HISTORY_WINDOWS
}


def score_pairs(
    pairs: pd.DataFrame, config: AffinityConfig, graph: pd.DataFrame | None
) -> tuple[pd.DataFrame, int]:
    """Mean-dwell affinity of per (device, POI) pairs (people: deduplicated first); the frame and
    the distinct devices scored before they became people."""
    devices = int(pairs["device_id"].nunique())
    if config.count == "people":
        pairs = affinity.dedupe_people(pairs, graph)
    return affinity.brand_affinity_from_pairs(
        pairs, config.alpha, config.beta, config.clip
    ), devices


def describe_source(
    config: AffinityConfig, source: str, graph_part: str | None, devices: int, people: int
) -> dict[str, Any]:
    """Where the day's visits came from and, counting people, the graph read and the devices
    scored per person scored."""
    meta: dict[str, Any] = {"source": source, "dwell": config.dwell, "count_unit": config.count}
    if config.count == "people":
        meta |= {
            "identity_graph_day": graph_part or "none (every device its own person)",
            "devices_scored": devices,
            "devices_per_person": round(devices / people, 4) if people else None,
        }
    return meta


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
    sources: dict[str, str],
) -> tuple[dict[str, Staged], dict[str, dict[str, Any]], dict[str, Any]]:
    """Each day's affinity from one Spark job (Spark SQL) that writes each day's object, stamped,
    into this run's staging folder with its audit figures: the run process loads no rows
    (``publish_days`` audits the figures and publishes the ``Staged`` objects). A day whose
    source is ``history`` reads its ``visit_history`` partition instead of the window."""
    window_days = min(config.window_days, AFFINITY_WINDOW_DAYS)
    days = list(context.partition_keys)
    windows = {d: day_window(d, window_days) for d in days}
    from_visits = {v for d in days if sources[d] == "visits" for v in windows[d]}
    graphs = {d: graph_day(lake, d) if config.count == "people" else None for d in days}
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
        graph_uris = {g: places.input(IDENTITY_GRAPH.key(g)) for g in set(graphs.values()) if g}
        spec = {
            "params": params,
            "dwell": config.dwell,
            "count": config.count,
            "window_days": window_days,
            "visits": [places.input(VISITS.key(v)) for v in present if v in from_visits],
            "days": [
                {
                    "day": d,
                    "window": windows[d],
                    "history": (
                        places.input(VISIT_HISTORY.key(d)) if sources[d] == "history" else None
                    ),
                    "graph": graph_uris.get(graphs[d] or ""),
                }
                for d in days
            ],
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
                **describe_source(
                    config,
                    sources[d],
                    graphs[d],
                    int(fig.get("devices_scored") or 0),
                    int(fig["devices"]),
                ),
            }
        )
    return staged, metadata, engine_metadata(summary)


defs = dg.Definitions(assets=[demographics, brand_affinity])
