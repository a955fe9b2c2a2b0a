"""Campaign lift against the lift the generator planted (synthetic lakes only).

A non-blocking check, partitioned like ``campaign_insights`` (one campaign): it runs after the
asset in the same run and compares the published lift with ``planted_lift`` from
``truth/campaigns/<id>.json``: ``lift_error_pp`` (estimate - planted, percentage points) and
``truth_in_interval``. A measurement, not a gate: it passes whenever it can score (a 95%
interval misses the planted lift for about 1 campaign in 20, no reason to alert).
``bench/campaign_lift.py`` measures the estimator over many campaigns.
"""

import math
from typing import Any

import dagster as dg

from near_assets.campaigns import campaign_partitions
from near_assets.tables import CAMPAIGN_INSIGHTS, TRUTH_CAMPAIGNS
from resources.lake import LakeResource


def planted_lift(lake: LakeResource, campaign_id: str) -> float | None:
    """The generator's planted lift of a campaign (None without truth for it)."""
    truth = TRUTH_CAMPAIGNS.read_if_exists(lake, campaign_id)
    value = truth.get("planted_lift") if truth else None
    return None if value is None else float(value)


def lift_vs_truth(lake: LakeResource, campaign_id: str) -> dict[str, Any]:
    """``planted_lift``, ``lift_error_pp`` and ``truth_in_interval`` of the published figure."""
    truth = planted_lift(lake, campaign_id)
    published = CAMPAIGN_INSIGHTS.read(lake, campaign_id, columns=["lift", "lift_low", "lift_high"])
    if truth is None or published is None or published.empty:
        return {}
    lift, low, high = (float(published[c].iloc[0]) for c in ("lift", "lift_low", "lift_high"))
    figures: dict[str, Any] = {"planted_lift": truth}
    if math.isfinite(lift):
        figures["lift_error_pp"] = round(100 * (lift - truth), 2)
    figures["truth_in_interval"] = bool(low <= truth <= high)
    return figures


@dg.asset_check(
    asset=CAMPAIGN_INSIGHTS.name,
    name="campaign_insights_accuracy",
    blocking=False,
    partitions_def=campaign_partitions,
    description=(
        "Published lift vs the lift the generator planted (synthetic lakes): error in "
        "percentage points and whether the interval covers it. A measurement: it passes "
        "whenever it could score."
    ),
)
def campaign_truth(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    campaign_id = context.partition_key
    figures = lift_vs_truth(lake, campaign_id)
    if not figures:
        return dg.AssetCheckResult(
            passed=True, description=f"no planted lift or published figure for {campaign_id}"
        )
    return dg.AssetCheckResult(passed=True, metadata=figures)


checks = [campaign_truth]
