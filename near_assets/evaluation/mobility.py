"""Accuracy of the mobility assets against the generator's ground truth: non-blocking checks.

Each check scores the days its run materialized, from what the asset wrote and the lake's
``truth/``, with ``near_assets.science.accuracy``, and reports the figures as metadata (one day:
the figures; several: ``days`` and a ``per_day`` table). They inform, they do not gate:
``passed`` is False (severity WARN) only when scoring itself fails. ``near_assets.evaluation``
loads them only where the lake holds ``truth/``.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from near_assets import mobility, profiles
from near_assets.partitions import daily_partitions
from near_assets.science import accuracy
from near_assets.science.stays import STAY_COLUMNS, StayParams
from near_assets.science.visits import VISIT_COLUMNS, VisitParams
from near_assets.tables import (
    CLEAN_PINGS,
    DEMOGRAPHICS,
    HOME_LOCATION,
    STAY_POINTS,
    TRUTH_HOMES,
    TRUTH_STAYS,
    VISITS,
)
from publishing.tables import day_window, utc_days
from publishing.wap import clean_meta
from resources.lake import LakeResource

ScoreDay = Callable[[str], dict[str, Any] | None]
CALIBRATION_MIN_HOMES = 50
"""Confidence bins with fewer homes are left out of ``home_calibration_max_gap``."""


def evaluate(
    context: dg.AssetCheckExecutionContext, score_day: ScoreDay, markdown: Sequence[str] = ()
) -> dg.AssetCheckResult:
    """Score every partition of the run (days without truth are left out); the ``markdown``
    figures (strings) render as Markdown when one day is reported."""
    try:
        per_day = {
            d: clean_meta(figures)
            for d in context.partition_keys
            if (figures := score_day(d)) is not None
        }
    except Exception as exc:
        context.log.warning(f"scoring against truth failed: {exc!r}")
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"Scoring against truth failed: {exc!r}",
        )
    if not per_day:
        return dg.AssetCheckResult(passed=True, description="No day of the run has truth.")
    metadata = mobility.single_or_per_day(per_day)
    for key in markdown:
        if isinstance(metadata.get(key), str):
            metadata[key] = dg.MetadataValue.md(metadata[key])
    return dg.AssetCheckResult(passed=True, metadata=metadata)


def materialization_metadata(
    context: dg.AssetCheckExecutionContext, asset: dg.AssetKey, day: str
) -> dict:
    """The metadata of the materialization of ``asset``'s partition ``day`` that is checked."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[day]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        return {}
    return {k: v.value for k, v in materialization.metadata.items()}


def read_observed_pings(lake: LakeResource, day: str) -> pd.DataFrame | None:
    """When each device was seen that day: truth counts only what the panel could observe."""
    return CLEAN_PINGS.read(lake, day, ["device_id", "ts"], dictionary=["device_id"])


# ---- figures of one day ---------------------------------------------------------------------


def stay_figures(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, day: str
) -> dict[str, Any] | None:
    truth = TRUTH_STAYS.read(lake, day)
    pings = read_observed_pings(lake, day) if truth is not None else None
    if truth is None or pings is None:
        return None
    params = materialization_metadata(context, mobility.stay_points.key, day).get("params") or {}
    min_duration_s = params.get("min_duration_s", StayParams.min_duration_s)
    stays = STAY_POINTS.read_or_empty(lake, day, STAY_COLUMNS)
    return accuracy.stay_accuracy(stays, truth, day, min_duration_s=min_duration_s, pings=pings)


def visit_figures(
    context: dg.AssetCheckExecutionContext, lake: LakeResource, day: str
) -> dict[str, Any] | None:
    truth = TRUTH_STAYS.read(lake, day)
    if truth is None:
        return None
    params = materialization_metadata(context, mobility.visits.key, day).get("params") or {}
    min_dwell_s = params.get("min_dwell_s", VisitParams.min_dwell_s)
    visits = VISITS.read_or_empty(lake, day, VISIT_COLUMNS)
    return accuracy.visit_accuracy(visits, truth, day, min_dwell_s, read_observed_pings(lake, day))


def home_figures(
    context: dg.AssetCheckExecutionContext,
    lake: LakeResource,
    truth: pd.DataFrame | None,
    day: str,
) -> dict[str, Any] | None:
    homes = HOME_LOCATION.read(lake, day) if truth is not None else None
    if truth is None or homes is None or not len(homes):
        return None
    window_days = materialization_metadata(context, mobility.home_location.key, day).get(
        "window_days", mobility.HOME_WINDOW_DAYS
    )
    first = daily_partitions.start.date().isoformat()  # the asset reads no day before it
    window = [d for d in day_window(day, window_days) if d >= first]
    stays, _ = STAY_POINTS.read_many(lake, window, ["device_id", "start_ts"])
    stay_days = utc_days(stays["start_ts"]) if len(stays) else np.array([], dtype=object)
    eligible = mobility.devices_in_window(stays, stay_days, window)
    return {
        **accuracy.home_accuracy(homes, truth, eligible),
        **calibration_figures(accuracy.home_reliability(homes, truth)),
    }


def calibration_figures(table: pd.DataFrame) -> dict[str, Any]:
    """The reliability table as Markdown (confidence bin vs share within 200 m) and the largest
    |share - mean confidence| over bins holding at least ``CALIBRATION_MIN_HOMES`` homes."""
    header = "| confidence | homes | mean confidence | share within 200 m | gap |"
    lines = [header, "| --- | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r.bin} | {r.homes} | {r.mean_confidence:.3f} | {r.share_within:.3f} | {r.gap:+.3f} |"
        for r in table.itertuples()
    ]
    big = table[table["homes"] >= CALIBRATION_MIN_HOMES]
    return {
        "home_reliability": "\n".join(lines),
        "home_calibration_max_gap": round(float(big["gap"].abs().max()), 4) if len(big) else None,
    }


def area_figures(lake: LakeResource, truth: pd.DataFrame | None, day: str) -> dict[str, Any] | None:
    """Share of devices placed in their true home's area."""
    if truth is None or "home_area_id" not in truth:
        return None
    devices = DEMOGRAPHICS.read(lake, day)
    if devices is None or not len(devices):
        return None
    true_area = truth.set_index("device_id")["home_area_id"].astype(str)
    matched = devices["device_id"].map(true_area)
    return {"area_correct": round(float((matched == devices["area_id"].astype(str)).mean()), 4)}


# ---- checks ---------------------------------------------------------------------------------


@dg.asset_check(
    asset=mobility.stay_points,
    blocking=False,
    partitions_def=daily_partitions,
    additional_deps=["clean_pings"],
)
def stay_points_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    """Stay precision and recall against the generator's true stays (those the pings observe)."""
    return evaluate(context, partial(stay_figures, context, lake))


@dg.asset_check(
    asset=mobility.visits,
    blocking=False,
    partitions_def=daily_partitions,
    additional_deps=["clean_pings"],
)
def visits_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    """Visit precision and recall against the generator's true POI stays."""
    return evaluate(context, partial(visit_figures, context, lake))


@dg.asset_check(
    asset=mobility.home_location,
    blocking=False,
    partitions_def=daily_partitions,
    additional_deps=[dg.AssetDep("stay_points", partition_mapping=mobility.HOME_MAPPING)],
)
def home_location_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    """Share of homes within 200 m of the true home, coverage of the devices in the window, the
    confidence threshold that gives 98% precision, and the reliability table: per confidence
    bin, the share of homes within 200 m against the mean confidence (``confidence`` is a
    calibrated probability), with the largest gap over bins of at least 50 homes."""
    figures = partial(home_figures, context, lake, TRUTH_HOMES.read(lake))
    return evaluate(context, figures, markdown=["home_reliability"])


@dg.asset_check(asset=profiles.demographics, blocking=False, partitions_def=daily_partitions)
def demographics_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    """Share of devices placed in the area of their true home."""
    return evaluate(context, partial(area_figures, lake, TRUTH_HOMES.read(lake)))


checks = [stay_points_accuracy, visits_accuracy, home_location_accuracy, demographics_accuracy]
"""Loaded by ``near_assets.evaluation`` where the lake holds ``truth/``."""
