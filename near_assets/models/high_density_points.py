"""``high_density_points``: the list of high-density points, learnt from the pings every day.

Day D reads the raw pings of D (not ``clean_pings``: once ``clean_pings`` drops the listed cells
their pings would vanish from the evidence and the list would forget them the next day), drops
the rows that are dirt for every other reason (``near_assets.science.cleaning.clean_pings``
without its high-density rule), scores the day's dense cells
(``near_assets.science.hdp.day_cells``, kept under ``work/hdp_cells/date=D``) and publishes the
cells flagged on enough days of the trailing window (``maintain_list``) to
``curated/high_density_points/date=D``. ``clean_pings`` of day D+1 may drop the pings in those
cells (``near_assets.science.cleaning.clean_pings(hdps=...)``).
"""

import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.models import GROUP, KINDS, RETRY
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import hdp
from near_assets.science.cleaning import clean_pings
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

WINDOW_DAYS = hdp.HdpParams.window_days
PREVIOUS_DAYS = dg.TimeWindowPartitionMapping(
    start_offset=-(WINDOW_DAYS - 1), end_offset=-1, allow_nonexistent_upstream_partitions=True
)
"""The daily cells of the window's earlier days (``work/hdp_cells``, this asset's own output)."""
MAX_REMOVED_SHARE = 0.02
NO_HDP_RULE = 10**9


class HdpConfig(dg.Config):
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


def describe(
    listed: pd.DataFrame, previous: pd.DataFrame | None, cells: pd.DataFrame, figures: dict
) -> dict[str, Any]:
    before = set(previous["cell"]) if previous is not None else set()
    now = set(listed["cell"])
    return clean_meta(
        {
            **figures,
            "listed": len(listed),
            "added": len(now - before) if previous is not None else None,
            "dropped": len(before - now) if previous is not None else None,
            "dense_cells_today": len(cells),
            "flagged_today": int(cells["flagged"].sum()) if len(cells) else 0,
        }
    )


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
    kinds=KINDS,
    pool=publish_pool(HIGH_DENSITY_POINTS.name),
    **published_asset_args(HIGH_DENSITY_POINTS),
)
def high_density_points(
    context: dg.AssetExecutionContext,
    config: HdpConfig,
    lake: LakeResource,
    alerts: AlertsResource,
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
    frames: dict[str, pd.DataFrame] = {}
    metadata: dict[str, dict[str, Any]] = {}
    audits: dict[str, list] = {}
    for day in sorted(context.partition_keys):
        raw = RAW_PINGS.read(lake, day)
        if raw is None or raw.empty:
            context.add_asset_metadata(
                {"input": "missing", "skipped": f"no raw pings for {day}: not published"},
                partition_key=day,
            )
            continue
        t0 = time.perf_counter()
        pings, _ = clean_pings(raw, date.fromisoformat(day), hdp_min_devices=NO_HDP_RULE)
        cells = hdp.day_cells(pings, params)
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
        previous = HIGH_DENSITY_POINTS.read(lake, window[-2]) if len(window) > 1 else None
        frames[day] = listed
        audits[day] = hdp_audits(params.min_days, share, config.max_removed_share)
        metadata[day] = describe(
            listed,
            previous,
            cells,
            {
                "window_days_found": len(found) + 1,
                "pings": len(pings),
                "removed_share": round(share, 6),
                "seconds_science": round(time.perf_counter() - t0, 3),
            },
        )
    if not frames:
        raise dg.Failure(
            description="no data: raw pings missing for every day of the run; nothing published",
            allow_retries=False,
        )
    run_meta = {
        "seconds": round(time.perf_counter() - started, 3),
        "engine": "pandas",
        "params": dg.MetadataValue.json(params.as_dict()),
    }
    yield from publish_days(
        context,
        lake,
        alerts,
        HIGH_DENSITY_POINTS,
        frames,
        lambda d: audits[d],
        metadata,
        run_meta,
    )


defs = dg.Definitions(assets=[high_density_points])
