"""Data the location graph reads but does not produce: reference tables and campaign exposures.

Upstream systems deliver them into the lake (``../shared/CONTRACTS.md``, "Inputs"); here they are
``dg.AssetSpec`` external assets, so lineage shows where every table an asset reads comes from.
The platform never materializes them: automation conditions ignore them
(``near_assets.partitions.external_assets``). ``near_assets.monitors`` checks ``reference_pois``.

``raw_exposures`` is one folder per campaign (``campaign_id=<id>``) but left unpartitioned here:
``campaign_insights`` reads the folder of its own campaign partition.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from near_assets.tables import (
    PLATFORM_OWNERS,
    RAW_EXPOSURES,
    REFERENCE_AREAS,
    REFERENCE_CAMPAIGNS,
    REFERENCE_POIS,
    TAGS,
)

GROUP = "reference"


def reference_args(kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        "group_name": GROUP,
        "owners": PLATFORM_OWNERS,
        "tags": {**TAGS, "tier": "input"},
        "kinds": {kind},
        "metadata": metadata,
    }


reference_pois = dg.AssetSpec(
    REFERENCE_POIS.name,
    description=(
        "Places of interest (``reference/pois/*.parquet``): id, name, brand, category and the "
        "boundary polygon. Visits, audience estimates, insights and campaigns match against them."
    ),
    **reference_args("parquet", REFERENCE_POIS.metadata()),
)

reference_areas = dg.AssetSpec(
    REFERENCE_AREAS.name,
    description=(
        "Census-like areas covering the region (``reference/areas/*.parquet``): polygon, "
        "population and optional attributes (median income, age-band shares), for projections "
        "and demographics."
    ),
    **reference_args("parquet", REFERENCE_AREAS.metadata()),
)

reference_campaigns = dg.AssetSpec(
    REFERENCE_CAMPAIGNS.name,
    description=(
        "Advertising campaigns, one JSON object per campaign "
        "(``reference/campaigns/<campaign_id>.json``: campaign_id, brand, start_date, end_date). "
        "``campaign_sensor`` adds a ``campaigns`` partition for each new file."
    ),
    **reference_args("json", {"lake_prefix": REFERENCE_CAMPAIGNS.prefix}),
)

raw_exposures = dg.AssetSpec(
    RAW_EXPOSURES.name,
    description=(
        "Devices exposed to each campaign's ads (``raw/exposures/campaign_id=<id>/*.parquet``: "
        "device_id, ts), delivered by the ad server."
    ),
    **reference_args("parquet", RAW_EXPOSURES.metadata()),
)

defs = dg.Definitions(assets=[reference_pois, reference_areas, reference_campaigns, raw_exposures])
