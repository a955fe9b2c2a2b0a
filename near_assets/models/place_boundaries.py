"""``place_boundaries``: PlaceMatrix, refined POI footprints from where visitors stay, daily.

Day D reads the stay points of the trailing ``window_days`` (D-27 .. D by default: a small
place needs weeks of visits) and the reference POIs, refines every POI's polygon from the
density of the stays around it (``near_assets.science.placematrix.refine_boundaries``) and
publishes one row per POI through write-audit-publish, beside the delivered polygons (a POI
with thin evidence keeps its delivered polygon, ``source = 'delivered'``). ``visits`` may match
against these polygons instead of the delivered ones (its config).

Engine (``engine`` config, default ``$NEAR_ENGINE``): ``pandas`` in-process; ``spark`` one job of
``near_assets/spark_jobs/placematrix.py`` for all the days of the run: Spark reads the stay points
of every day any window needs once, keeps the visit-like stays near a delivered polygon
(``mapInPandas`` with the POIs broadcast), puts each into the windows it belongs to, runs the
per-POI science on buckets of whole POIs per day (``applyInPandas``) and the finishing step over
all POIs on the driver; the rows (one per POI and day) come back through Pipes and are audited
and published here as the in-process ones. Both engines publish the same rows.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from near_assets.engine import EngineConfig
from near_assets.models import GROUP, KINDS, RETRY
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.reference import load_reference_pois
from near_assets.science import placematrix
from near_assets.spark_jobs import PLACEMATRIX as PLACEMATRIX_JOB
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.spark_jobs.profiles_launch import engine_metadata, scratch, spark_places
from near_assets.tables import (
    PLACE_BOUNDARIES,
    STAY_POINTS,
    TRUTH_POI_FOOTPRINTS,
    published_asset_args,
)
from publishing.tables import day_window, publish_pool
from publishing.wap import (
    audit_specs,
    clean_meta,
    covers_known,
    has_columns,
    no_nulls,
    publish_days,
    rows_satisfy,
    unique_keys,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

WINDOW_DAYS = 28
WINDOW_MAPPING = dg.TimeWindowPartitionMapping(
    start_offset=-(WINDOW_DAYS - 1), allow_nonexistent_upstream_partitions=True
)
STAY_COLUMNS = ["device_id", "start_ts", "end_ts", "lat", "lon"]
ROW_TYPES = {"stays_used": np.int64, "devices_used": np.int64, "area_m2": np.float64,
             "delivered_area_m2": np.float64, "iou_with_delivered": np.float64,
             "shift_m": np.float64}  # fmt: skip


class PlaceBoundariesConfig(EngineConfig):
    window_days: int = WINDOW_DAYS
    """Days of stay points used (D - window_days + 1 .. D; at most 28)."""
    min_stays: int = placematrix.PlaceMatrixParams.min_stays
    """Stays a POI's densest cluster needs to be refined (else the delivered polygon)."""
    min_devices: int = placematrix.PlaceMatrixParams.min_devices
    """Distinct devices that cluster needs."""
    search_m: float = placematrix.PlaceMatrixParams.search_m
    """Stays within this many metres of a delivered polygon are evidence for it."""
    max_side_m: float = placematrix.PlaceMatrixParams.max_side_m
    """Longest plausible side of a footprint, metres."""


def boundary_audits(known: Any = None) -> list:
    return [
        has_columns(*placematrix.BOUNDARY_COLUMNS),
        no_nulls("poi_id", "geometry_wkt", "source"),
        unique_keys("poi_id"),
        rows_satisfy(
            "valid_polygons",
            "A valid, non-empty polygon, a known source, IoU in [0, 1], area > 0.",
            placematrix.boundary_invariants,
        ),
        covers_known("poi_id", known, min_share=1.0),
    ]


def describe(
    found: pd.DataFrame, truth: pd.DataFrame | None, pois: pd.DataFrame, figures: dict[str, Any]
) -> dict[str, Any]:
    refined = found["source"] == "placematrix"
    out = {
        **figures,
        "pois": len(found),
        "refined": int(refined.sum()),
        "delivered_kept": int((~refined).sum()),
        "median_iou_with_delivered": float(found.loc[refined, "iou_with_delivered"].median())
        if refined.any()
        else None,
        "median_shift_m": float(found.loc[refined, "shift_m"].median()) if refined.any() else None,
    }
    if truth is not None:
        out["truth_median_iou_refined"] = float(
            placematrix.boundary_iou(found, truth)["iou"].median()
        )
        out["truth_median_iou_delivered"] = float(
            placematrix.boundary_iou(pois, truth)["iou"].median()
        )
    return clean_meta({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()})


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("stay_points", partition_mapping=WINDOW_MAPPING), "reference_pois"],
    check_specs=audit_specs(PLACE_BOUNDARIES.name, boundary_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=KINDS | {"spark"},
    pool=publish_pool(PLACE_BOUNDARIES.name),
    **published_asset_args(PLACE_BOUNDARIES),
)
def place_boundaries(
    context: dg.AssetExecutionContext,
    config: PlaceBoundariesConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """PlaceMatrix: every reference POI's footprint refined from where its visitors stay over
    the trailing 28 days.

    Visit-like stays near each delivered polygon are given to one POI (nearest polygon, ties to
    the nearest centroid: neighbours sharing a building split it), the POI's densest cluster of
    stays (flat-kernel density, connected core, most distinct devices) gives a rectangle in the
    delivered polygon's orientation, clipped to plausible sizes; thin evidence keeps the
    delivered polygon (``near_assets.science.placematrix``). Published to
    ``curated/place_boundaries/date=D``, one row per POI. ``engine: spark`` runs the same
    science as one Spark job (``near_assets/spark_jobs/placematrix.py``): the same rows.
    """
    started = time.perf_counter()
    window = max(1, min(config.window_days, WINDOW_DAYS))
    params = replace(
        placematrix.PlaceMatrixParams(),
        min_stays=config.min_stays,
        min_devices=config.min_devices,
        search_m=config.search_m,
        max_side_m=config.max_side_m,
    )
    pois = load_reference_pois(lake, log=context.log)
    truth = TRUTH_POI_FOOTPRINTS.read(lake) if TRUTH_POI_FOOTPRINTS.exists(lake) else None
    known = pois["poi_id"].astype(str).to_numpy()
    if config.engine == "spark":
        frames, metadata, engine_meta = boundaries_spark(
            context, lake, spark, pois, truth, params, window
        )
    else:
        frames, metadata = boundaries_pandas(context, lake, pois, truth, params, window)
        engine_meta = {"engine": "pandas"}
    if not frames:
        raise dg.Failure(
            description="no data: stay points missing for every day of the run; nothing published",
            allow_retries=False,
        )
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        **engine_meta,
        "params": dg.MetadataValue.json(params.as_dict()),
        "pois": int(np.size(known)),
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        PLACE_BOUNDARIES,
        frames,
        lambda d: boundary_audits(known),
        metadata,
        run_meta,
    )


Results = tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]]]


def _skip(context: dg.AssetExecutionContext, day: str) -> None:
    context.add_asset_metadata(
        {"input": "missing", "skipped": f"no stay points for {day}: not published"},
        partition_key=day,
    )


def boundaries_pandas(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    pois: pd.DataFrame,
    truth: pd.DataFrame | None,
    params: placematrix.PlaceMatrixParams,
    window: int,
) -> Results:
    """Every day of the run in-process: its window of stay points loaded, the science called."""
    frames: dict[str, pd.DataFrame] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for day in sorted(context.partition_keys):
        stays, found = STAY_POINTS.read_many(lake, day_window(day, window), STAY_COLUMNS)
        if day not in found:
            _skip(context, day)
            continue
        t0 = time.perf_counter()
        boundaries = placematrix.refine_boundaries(stays, pois, params)
        figures = {
            "window_days_found": len(found),
            "stays": len(stays),
            "seconds_science": round(time.perf_counter() - t0, 3),
        }
        frames[day], metadata[day] = boundaries, describe(boundaries, truth, pois, figures)
    return frames, metadata


def rows_frame(rows: list[list[Any]]) -> pd.DataFrame:
    """The rows the job returned, typed as ``placematrix.refine_boundaries`` returns them."""
    df = pd.DataFrame.from_records(rows, columns=placematrix.BOUNDARY_COLUMNS)
    for col in ("poi_id", "geometry_wkt", "source"):
        df[col] = df[col].astype(object)
    return df.astype(ROW_TYPES)


def boundaries_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    pois: pd.DataFrame,
    truth: pd.DataFrame | None,
    params: placematrix.PlaceMatrixParams,
    window: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]], dict[str, Any]]:
    """Every day of the run from one Spark job (see the module doc); the last item names the
    engine (and the job's figures)."""
    days, items, rows = sorted(context.partition_keys), {}, {}
    for day in days:
        for d in day_window(day, window):
            if d not in rows:
                rows[d] = STAY_POINTS.rows(lake, d)  # Parquet footers
        found = [d for d in day_window(day, window) if rows[d]]
        if day not in found:
            _skip(context, day)
            continue
        items[day] = {"found": found, "rows": sum(rows[d] for d in found)}
    if not items:
        return {}, {}, {"engine": "spark"}
    with (
        scratch(context, lake, {"pois": pois[["poi_id", "geometry_wkt"]]}) as side,
        spark_places(lake, spark) as places,
    ):
        present = sorted({d for item in items.values() for d in item["found"]})
        for d in present:
            places.input(STAY_POINTS.key(d))  # staged once when the job reads a local copy
        spec = {  # compact (EMR's argument limit): the job derives each window from ``present``
            "params": params.as_dict(),
            "pois": places.input(side["pois"]),
            "stays_root": places.uri(STAY_POINTS.key()),
            "partition": STAY_POINTS.partition,
            "present": present,
            "window_days": window,
            "days": list(items),
        }
        args = ["--spec", json.dumps(spec, sort_keys=True)]
        summary = spark.run_script(context, PLACEMATRIX_JOB, args, job_conf=BASE_CONF)
    reported = summary.get("days") or {}
    frames: dict[str, pd.DataFrame] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for day, item in items.items():
        fig = reported.get(day)
        if fig is None:
            raise dg.Failure(description=f"the Spark job reported no figures for {day}")
        frames[day] = rows_frame(fig["rows"])
        figures = {
            "window_days_found": len(item["found"]),
            "stays": item["rows"],  # from the Parquet footers
        }
        metadata[day] = describe(frames[day], truth, pois, figures)
    meta = engine_metadata(summary)
    meta["spark_session_start_s"] = float(summary.get("session_start_s", 0.0))
    meta["spark_buckets"] = int(summary.get("buckets", 0))
    meta["spark_seconds_science"] = float(summary.get("seconds_science", 0.0))  # all days
    return frames, metadata, meta


defs = dg.Definitions(assets=[place_boundaries])
