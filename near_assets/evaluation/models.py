"""Scoring of Near's models (high-density points, cross identity) against the generator's truth.

Non-blocking checks, partitioned like the assets they score, loaded by ``near_assets.evaluation``
only where the lake holds ``truth/``. They read what the asset published and the truth the
generator planted (``near-synth --hdp``: ``truth/hdp``, ``truth/hdp_pings``; ``--people``:
``truth/identity``); a day without that truth is left out, and a lake without it scores nothing
(the check passes and says so). The scoring is the science's (``hdp.score_list``,
``hdp.ping_classes``, ``hdp.removal_shares``, ``identity.pairwise_accuracy``), the same
functions ``bench/models_hdp.py`` and ``bench/models_identity.py`` print.
"""

from datetime import date
from functools import partial
from typing import Any

import dagster as dg
import numpy as np

from near_assets import tables
from near_assets.evaluation.mobility import evaluate
from near_assets.models import high_density_points as hd
from near_assets.models import identity_graph as ig
from near_assets.partitions import daily_partitions
from near_assets.science import hdp, identity
from near_assets.science.cleaning import clean_pings
from near_assets.tables import (
    HIGH_DENSITY_POINTS,
    IDENTITY_GRAPH,
    RAW_PINGS,
    TRUTH_PANEL,
    TRUTH_STAYS,
)
from publishing.tables import day_window, trailing_days
from resources.lake import LakeResource

TRUTH_HDP = tables.TRUTH_HDP.key()
"""The planted HDPs: hdp_id, kind, lat, lon, near_poi_id (``near_assets.synth.hdp``)."""
TRUTH_HDP_PINGS = tables.TRUTH_HDP_PINGS
"""The planted pings of one day: device_id, ts, hdp_id."""
TRUTH_IDENTITY = ig.TRUTH_IDENTITY


def _truth_frame(lake: LakeResource, key: str):
    table = lake.read_arrow(key)
    return None if table is None else table.to_pandas()


def hdp_figures(lake: LakeResource, day: str) -> dict[str, Any] | None:
    """Precision and recall of the list published for ``day``, and the shares of the day's
    planted, genuine and genuine visit pings removed by the list of the day before (the one
    ``clean_pings`` applies to ``day``)."""
    planted = _truth_frame(lake, TRUTH_HDP)
    listed = HIGH_DENSITY_POINTS.read(lake, day)
    if planted is None or listed is None:
        return None
    panel = TRUTH_PANEL.read_if_exists(lake, "panel") or {}
    # the dirt's legacy towers are planted only when the lake has dirt
    legacy = panel.get("high_density_points") if panel.get("dirt_share") else None
    towers = np.asarray(legacy or [], dtype=float)
    points = hdp.planted_points(planted, towers)
    params = hdp.HdpParams()
    window = day_window(day, params.window_days)
    active: dict[str, set[str]] = {}
    for d in window:
        rows = _truth_frame(lake, TRUTH_HDP_PINGS.key(d))
        if rows is not None:
            for h in rows["hdp_id"].astype(str).unique():
                active.setdefault(h, set()).add(d)
    figures = hdp.score_list(listed, points, active, window, params.min_days)
    (yesterday,) = trailing_days(day, 1)
    before = HIGH_DENSITY_POINTS.read(lake, yesterday)
    raw = RAW_PINGS.read(lake, day)
    planted_today = _truth_frame(lake, TRUTH_HDP_PINGS.key(day))
    stays = TRUTH_STAYS.read(lake, day)
    if before is not None and raw is not None and planted_today is not None and stays is not None:
        pings, _ = clean_pings(raw, date.fromisoformat(day), hdp_min_devices=hd.NO_HDP_RULE)
        classes = hdp.ping_classes(pings, planted_today, stays, towers)
        removed = hdp.on_hdp(pings["lat"], pings["lon"], before, params.cell_deg)
        figures |= hdp.removal_shares(removed, *classes)
    return figures


def identity_figures(lake: LakeResource, truth, day: str) -> dict[str, Any] | None:
    """Pairwise precision and recall of households and people (devices of the published day)."""
    graph = IDENTITY_GRAPH.read(lake, day)
    if truth is None or graph is None:
        return None
    out: dict[str, Any] = {}
    for level in ("household_id", "person_id"):
        acc = identity.pairwise_accuracy(graph, truth, level)
        name = level.removesuffix("_id")
        out |= {f"{name}_{k}": v for k, v in acc.items()}
    return out


@dg.asset_check(
    asset=hd.high_density_points,
    blocking=False,
    partitions_def=daily_partitions,
    additional_deps=["raw_pings"],
)
def high_density_points_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    """Precision and recall of the list against the planted high-density points (per kind and
    beside busy POIs), and the share of the day's planted, genuine and genuine visit pings the
    list of the day before removes."""
    return evaluate(context, partial(hdp_figures, lake))


@dg.asset_check(asset=ig.identity_graph, blocking=False, partitions_def=daily_partitions)
def identity_graph_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    """Pairwise precision and recall of the households and people against the generator's."""
    return evaluate(context, partial(identity_figures, lake, _truth_frame(lake, TRUTH_IDENTITY)))


checks = [high_density_points_accuracy, identity_graph_accuracy]
"""Loaded by ``near_assets.evaluation`` where the lake holds ``truth/``."""
