"""Accuracy of ``audience_estimates`` against the generator's truth (synthetic lakes only).

A non-blocking check, partitioned like the asset: it runs after the asset in the same run and
scores the published day(s) against ``truth/poi_visitors`` (``score_against_truth``): the
figures ``truth_*`` (median absolute error %, bias, 90% interval coverage for POIs with at least
``MIN_PANEL_VISITORS`` true panel visitors, ...). ``bench/audience_accuracy.py`` measures the
same figures on a larger panel.
"""

from typing import Any

import dagster as dg

from near_assets.partitions import daily_partitions
from near_assets.science.audience import score_against_truth
from near_assets.tables import AUDIENCE_ESTIMATES, TRUTH_POI_VISITORS
from resources.lake import LakeResource

MIN_PANEL_VISITORS = 30


def truth_figures(lake: LakeResource, day: str) -> dict[str, Any]:
    """``truth_*`` figures of a published day; empty without truth or estimates for it."""
    truth = TRUTH_POI_VISITORS.read(lake, day)
    estimates = AUDIENCE_ESTIMATES.read(lake, day)
    if truth is None or estimates is None:
        return {}
    score = score_against_truth(estimates, truth, MIN_PANEL_VISITORS)
    return {f"truth_{k}": round(v, 4) for k, v in score.items() if v == v}


@dg.asset_check(
    asset=AUDIENCE_ESTIMATES.name,
    name="audience_estimates_accuracy",
    blocking=False,
    partitions_def=daily_partitions,
    description=(
        "Estimates vs the generator's true people per POI (synthetic lakes): median absolute "
        f"error %, bias and 90% interval coverage for POIs with >= {MIN_PANEL_VISITORS} true "
        "panel visitors. A measurement: it passes whenever it could score."
    ),
)
def audience_truth(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    figures = {day: truth_figures(lake, day) for day in context.partition_keys}
    scored = {day: f for day, f in figures.items() if f}
    if len(figures) == 1:
        metadata: dict[str, Any] = next(iter(figures.values()))
    else:
        metadata = {"days_scored": len(scored), "per_day": dg.MetadataValue.json(scored)}
    unscored = sorted(set(figures) - set(scored))
    return dg.AssetCheckResult(
        passed=True,
        metadata=metadata,
        description=f"no truth or estimates for {', '.join(unscored)}" if unscored else None,
    )


checks = [audience_truth]
