"""Scoring of ``place_boundaries`` (PlaceMatrix) against the generator's true footprints.

A non-blocking check, partitioned like the asset: the published day's polygons and the
delivered ones (``reference/pois``) against ``truth/poi_footprints`` (``near-synth
--footprints``): median IoU with the true footprint of the published polygons (refined, or
delivered where the evidence was thin) and of the delivered ones, over all POIs, over the
refined POIs only, and per kind of delivered error. ``bench/models_placematrix.py`` measures the
same on a larger panel, with the visits' precision / recall.
"""

from typing import Any

import dagster as dg
import pandas as pd

from near_assets.partitions import daily_partitions
from near_assets.science.placematrix import boundary_iou
from near_assets.tables import PLACE_BOUNDARIES, REFERENCE_POIS, TRUTH_POI_FOOTPRINTS
from resources.lake import LakeResource


def _median(s: pd.Series) -> float | None:
    return round(float(s.median()), 4) if len(s) else None


def truth_figures(lake: LakeResource, day: str) -> dict[str, Any]:
    """``truth_*`` figures of a published day; empty without truth or boundaries for it."""
    if not TRUTH_POI_FOOTPRINTS.exists(lake):
        return {}
    found = PLACE_BOUNDARIES.read(lake, day)
    delivered = REFERENCE_POIS.read(lake, None, ["poi_id", "geometry_wkt"])
    truth = TRUTH_POI_FOOTPRINTS.read(lake)
    if found is None or delivered is None or truth is None:
        return {}
    scored = (
        boundary_iou(found, truth)
        .merge(
            boundary_iou(delivered.astype({"poi_id": str}), truth),
            on="poi_id",
            suffixes=("", "_delivered"),
        )
        .merge(found[["poi_id", "source"]], on="poi_id")
    )
    if "kind" in truth:
        scored = scored.merge(truth[["poi_id", "kind"]], on="poi_id")
    refined = scored[scored["source"] == "placematrix"]
    out: dict[str, Any] = {
        "truth_pois_scored": len(scored),
        "truth_refined": len(refined),
        "truth_median_iou_published": _median(scored["iou"]),
        "truth_median_iou_delivered": _median(scored["iou_delivered"]),
        "truth_median_iou_refined_pois": _median(refined["iou"]),
        "truth_median_iou_refined_pois_delivered": _median(refined["iou_delivered"]),
    }
    if "kind" in scored:
        per_kind = scored.groupby("kind")[["iou", "iou_delivered"]].median().round(4)
        out["truth_iou_per_kind"] = dg.MetadataValue.json(
            per_kind.rename(columns={"iou": "published", "iou_delivered": "delivered"}).to_dict(
                "index"
            )
        )
    return out


@dg.asset_check(
    asset=PLACE_BOUNDARIES.name,
    name="place_boundaries_accuracy",
    blocking=False,
    partitions_def=daily_partitions,
    description=(
        "Median IoU with the generator's true footprints (synthetic lakes, --footprints) of the "
        "published boundaries vs the delivered polygons, overall, on the refined POIs and per "
        "kind of delivered error. A measurement: it passes whenever it could score."
    ),
)
def place_boundaries_accuracy(
    context: dg.AssetCheckExecutionContext, lake: LakeResource
) -> dg.AssetCheckResult:
    try:
        figures = {day: truth_figures(lake, day) for day in context.partition_keys}
    except Exception as exc:
        context.log.warning(f"scoring against truth failed: {exc!r}")
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"Scoring against truth failed: {exc!r}",
        )
    scored = {day: f for day, f in figures.items() if f}
    if len(figures) == 1:
        metadata: dict[str, Any] = next(iter(figures.values()))
    else:
        plain = {
            d: {k: (v.value if isinstance(v, dg.JsonMetadataValue) else v) for k, v in f.items()}
            for d, f in scored.items()
        }
        metadata = {"days_scored": len(scored), "per_day": dg.MetadataValue.json(plain)}
    unscored = sorted(set(figures) - set(scored))
    return dg.AssetCheckResult(
        passed=True,
        metadata=metadata,
        description=f"no truth or boundaries for {', '.join(unscored)}" if unscored else None,
    )


checks = [place_boundaries_accuracy]
