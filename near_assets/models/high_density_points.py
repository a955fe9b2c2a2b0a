"""``high_density_points``: the list of high-density points, learnt from the pings every day.

Day D reads the raw pings of D (not ``clean_pings``: once ``clean_pings`` drops the listed cells
their pings would vanish from the evidence and the list would forget them the next day), drops
the rows that are dirt for every other reason (``near_assets.science.cleaning.clean_pings``
without its high-density rule), scores the day's dense cells
(``near_assets.science.hdp.day_cells``, kept under ``work/hdp_cells/date=D``) and publishes the
cells flagged on enough days of the trailing window (``maintain_list``) to
``curated/high_density_points/date=D``. ``clean_pings`` of day D+1 may drop the pings in those
cells (``near_assets.science.cleaning.clean_pings(hdps=...)``).

Engine (``engine`` config, default ``$NEAR_ENGINE``): ``pandas`` in-process; ``spark`` one job
of ``near_assets/spark_jobs/models.py --task hdp`` for every day of the run: the cleaning rules
and the cell figures in Spark SQL, the cells written by Spark; the list (tens of rows) comes
back through Pipes and is published from the run process like the in-process one.
"""

import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from near_assets.engine import EngineConfig
from near_assets.models import GROUP, RETRY
from near_assets.models.spark import SPARK_KINDS, run_models_job
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import hdp
from near_assets.science.cleaning import clean_pings
from near_assets.spark_jobs.profiles_launch import engine_metadata, spark_places
from near_assets.tables import HDP_CELLS, HIGH_DENSITY_POINTS, RAW_PINGS, published_asset_args
from publishing.tables import day_window, publish_pool
from publishing.wap import (
    Audit,
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

WINDOW_DAYS = hdp.HdpParams.window_days
PREVIOUS_DAYS = dg.TimeWindowPartitionMapping(
    start_offset=-(WINDOW_DAYS - 1), end_offset=-1, allow_nonexistent_upstream_partitions=True
)
"""The daily cells of the window's earlier days (``work/hdp_cells``, this asset's own output)."""
MAX_REMOVED_SHARE = 0.02
NO_HDP_RULE = 10**9


class HdpConfig(EngineConfig):
    cell_deg: float = hdp.HdpParams.cell_deg
    ring: int = hdp.HdpParams.ring
    min_devices: int = hdp.HdpParams.min_devices
    min_acc_ratio: float = hdp.HdpParams.min_acc_ratio
    strong_devices: int = hdp.HdpParams.strong_devices
    min_ratio: float = hdp.HdpParams.min_ratio
    window_days: int = WINDOW_DAYS
    """Trailing days of daily cells (at most the declared 7)."""
    min_days: int = hdp.HdpParams.min_days
    max_removed_share: float = MAX_REMOVED_SHARE
    """Block the publish when the list would drop more than this share of the day's pings."""

    def params(self) -> hdp.HdpParams:
        return hdp.HdpParams(
            cell_deg=self.cell_deg,
            ring=self.ring,
            min_devices=self.min_devices,
            min_acc_ratio=self.min_acc_ratio,
            strong_devices=self.strong_devices,
            min_ratio=self.min_ratio,
            window_days=min(self.window_days, WINDOW_DAYS),
            min_days=self.min_days,
        )


def removed_share(share: float | None = None, cap: float = MAX_REMOVED_SHARE):
    """The list drops at most ``cap`` of the day's (otherwise clean) pings."""

    def audit(df: pd.DataFrame) -> Audit:
        if share is None:
            return Audit("removed_share", True, "no pings measured")
        return Audit(
            "removed_share",
            share <= cap,
            f"the list drops {share:.3%} of the day's pings (cap {cap:.1%})",
            {"removed_share": round(share, 6), "cap": cap},
        )

    audit.__doc__ = "The list drops at most a small share of the day's clean pings."
    audit.audit_name = "removed_share"  # type: ignore[attr-defined]
    return audit


def hdp_audits(min_days: int = 1, share: float | None = None, cap: float = MAX_REMOVED_SHARE):
    return [
        has_columns(*hdp.LIST_COLUMNS),
        no_nulls("cell", "lat", "lon"),
        unique_keys("cell"),
        rows_satisfy(
            "listed_on_evidence",
            "Each listed cell was flagged on at least min_days days, its point lies in its cell.",
            lambda df: (
                (df["days_flagged"] >= min_days)
                & (hdp.cell_codes(df["lat"], df["lon"], hdp.HdpParams.cell_deg) == df["cell"])
            ),
        ),
        removed_share(share, cap),
    ]


def describe(listed: pd.DataFrame, previous: pd.DataFrame | None, figures: dict) -> dict[str, Any]:
    before = set(previous["cell"]) if previous is not None else set()
    now = set(listed["cell"])
    return clean_meta(
        {
            **figures,
            "listed": len(listed),
            "added": len(now - before) if previous is not None else None,
            "dropped": len(before - now) if previous is not None else None,
        }
    )


def cell_figures(cells: pd.DataFrame) -> dict[str, int]:
    return {
        "dense_cells_today": len(cells),
        "flagged_today": int(cells["flagged"].sum()) if len(cells) else 0,
    }


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[
        "raw_pings",
        dg.AssetDep("high_density_points", partition_mapping=PREVIOUS_DAYS),
    ],
    check_specs=audit_specs(HIGH_DENSITY_POINTS.name, hdp_audits()),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=eager_any_day,
    retry_policy=RETRY,
    kinds=SPARK_KINDS,
    pool=publish_pool(HIGH_DENSITY_POINTS.name),
    **published_asset_args(HIGH_DENSITY_POINTS),
)
def high_density_points(
    context: dg.AssetExecutionContext,
    config: HdpConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """High-density points (cell towers, IP-geolocation centroids, SDK defaults) learnt from the
    pings: cells of ~11 m where many devices report although their neighbourhood is quiet, with
    one identical accuracy, day after day.

    Each day's dense cells are scored (devices / (local density + 1), accuracy pattern) into
    ``work/hdp_cells/date=D``; the cells flagged on at least ``min_days`` of the trailing
    ``window_days`` days are the list, published to ``curated/high_density_points/date=D``
    (``near_assets.science.hdp``). Reads the raw pings, cleaned of every other kind of dirt.
    """
    started = time.perf_counter()
    params = config.params()
    if config.engine == "spark":
        frames, shares, metadata, engine_meta = hdp_spark(context, lake, spark, params)
    else:
        frames, shares, metadata = hdp_pandas(context, lake, params)
        engine_meta = {"engine": "pandas"}
    if not frames:
        raise dg.Failure(
            description="no data: raw pings missing for every day of the run; nothing published",
            allow_retries=False,
        )
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        **engine_meta,
        "params": dg.MetadataValue.json(params.as_dict()),
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        HIGH_DENSITY_POINTS,
        frames,
        lambda d: hdp_audits(params.min_days, shares[d], config.max_removed_share),
        metadata,
        run_meta,
    )


Results = tuple[dict[str, pd.DataFrame], dict[str, float], dict[str, dict[str, Any]]]


def _skip(context: dg.AssetExecutionContext, day: str) -> None:
    context.add_asset_metadata(
        {"input": "missing", "skipped": f"no raw pings for {day}: not published"},
        partition_key=day,
    )


def _previous(lake: LakeResource, window: list[str]) -> pd.DataFrame | None:
    return HIGH_DENSITY_POINTS.read(lake, window[-2]) if len(window) > 1 else None


def hdp_pandas(
    context: dg.AssetExecutionContext, lake: LakeResource, params: hdp.HdpParams
) -> Results:
    """Each day of the run in-process: cells written, the window's list, the share it drops."""
    frames: dict[str, pd.DataFrame] = {}
    shares: dict[str, float] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for day in sorted(context.partition_keys):
        raw = RAW_PINGS.read(lake, day)
        if raw is None or raw.empty:
            _skip(context, day)
            continue
        t0 = time.perf_counter()
        pings, _ = clean_pings(raw, date.fromisoformat(day), hdp_min_devices=NO_HDP_RULE)
        cells = hdp.day_cells(pings, params)
        lake.delete(HDP_CELLS.key(day))  # the Spark engine may have written other part files
        HDP_CELLS.write(lake, cells, day)
        window = day_window(day, params.window_days)
        earlier = {d: HDP_CELLS.read(lake, d) for d in window[:-1]}
        found = [d for d, c in earlier.items() if c is not None]
        all_cells = pd.concat(
            [*(earlier[d].assign(date=d) for d in found), cells.assign(date=day)],
            ignore_index=True,
        )
        listed = hdp.maintain_list(all_cells, day, params)
        share = float(hdp.on_hdp(pings["lat"], pings["lon"], listed, params.cell_deg).mean())
        frames[day], shares[day] = listed, share
        metadata[day] = describe(
            listed,
            _previous(lake, window),
            {
                "window_days_found": len(found) + 1,
                "pings": len(pings),
                "removed_share": round(share, 6),
                "seconds_science": round(time.perf_counter() - t0, 3),
                **cell_figures(cells),
            },
        )
    return frames, shares, metadata


def ts_kind(lake: LakeResource, key: str) -> str:
    """The ``ts`` encoding of a raw file from its footer, as ``clean_pings.py`` names it."""
    with lake.open_input(key) as fh:
        ts_type = pq.ParquetFile(fh).schema_arrow.field("ts").type
    if pa.types.is_timestamp(ts_type):
        return "ns" if ts_type.unit == "ns" else "timestamp"
    return "int"


LIST_TYPES = {"cell": np.int64, "days_flagged": np.int64, "days_seen": np.int64,
              "exact_point": bool, "lat": np.float64, "lon": np.float64,
              "devices_median": np.float64, "concentration_median": np.float64,
              "accuracy_share_median": np.float64}  # fmt: skip


def list_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The list the job returned, typed as ``hdp.maintain_list`` returns it."""
    df = pd.DataFrame.from_records(records, columns=hdp.LIST_COLUMNS)
    return df.astype(LIST_TYPES) if len(df) else df


def hdp_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    params: hdp.HdpParams,
) -> tuple[dict[str, pd.DataFrame], dict[str, float], dict[str, dict[str, Any]], dict[str, Any]]:
    """Every day of the run from one Spark job (see the module doc); the last item names the
    engine (and the job's figures)."""
    days = sorted(context.partition_keys)
    present = [d for d in days if RAW_PINGS.exists(lake, d)]
    for day in sorted(set(days) - set(present)):
        _skip(context, day)
    if not present:
        return {}, {}, {}, {"engine": "spark"}
    with spark_places(lake, spark) as places:
        items = []
        for day in present:
            window = day_window(day, params.window_days)
            folder = RAW_PINGS.key(day)
            files = RAW_PINGS.files(lake, day)
            items.append(
                {
                    "day": day,
                    "raw": places.input(folder),
                    "files": [[f[len(folder) + 1 :], ts_kind(lake, f)] for f in files],
                    "cells": places.output(HDP_CELLS.key(day)),
                    "window": window,
                    "earlier": {
                        d: places.input(HDP_CELLS.key(d))
                        for d in window[:-1]
                        if d not in present and HDP_CELLS.exists(lake, d)
                    },
                }
            )
        spec = {"params": params.as_dict(), "days": items}
        summary = run_models_job(context, lake, spark, places, "hdp", spec)
    reported = summary.get("days") or {}
    frames: dict[str, pd.DataFrame] = {}
    shares: dict[str, float] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for day in present:
        fig = reported.get(day)
        if fig is None:
            raise dg.Failure(description=f"the Spark job reported no figures for {day}")
        frames[day] = list_frame(fig["listed"])
        shares[day] = float(fig["removed_share"])
        keys = ["window_days_found", "pings", "removed_share", "seconds_science",
                "dense_cells_today", "flagged_today"]  # fmt: skip
        figures = {k: fig[k] for k in keys}
        figures["removed_share"] = round(shares[day], 6)
        window = day_window(day, params.window_days)
        metadata[day] = describe(frames[day], _previous(lake, window), figures)
    return frames, shares, metadata, engine_metadata(summary)


defs = dg.Definitions(assets=[high_density_points])
