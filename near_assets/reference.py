"""Data the location graph reads but does not produce: reference tables and campaign exposures.

Upstream systems deliver them into the lake (``../shared/CONTRACTS.md``, "Inputs"); here they are
``dg.AssetSpec`` external assets, so lineage shows where every table an asset reads comes from.
The platform never materializes them: automation conditions ignore them
(``near_assets.partitions.external_assets``). ``near_assets.monitors`` checks ``reference_pois``.

``raw_exposures`` is one folder per campaign (``campaign_id=<id>``) but left unpartitioned here:
``campaign_insights`` reads the folder of its own campaign partition.

Reference data is validated where it enters: assets read POIs and areas through
``load_reference_pois(lake)`` / ``load_reference_areas(lake)``, which apply
``near_assets.science.reference`` (required columns, unique ids, valid polygons, population >= 0),
write the rejected rows with file, row, id and reason to ``quarantine/reference/kind=<kind>/``
(``QUARANTINED_REFERENCE``; cleared when a delivery is clean) and return the good rows. A duplicated
id is never merged: identical copies keep the first, conflicting rows are all quarantined. When no
good row remains the read raises ``dg.Failure(allow_retries=False)`` naming the causes: a retry
would read the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.science.reference import (
    quarantine_frame,
    reason_summary,
    validate_areas,
    validate_pois,
)
from near_assets.tables import (
    PLATFORM_OWNERS,
    QUARANTINED_REFERENCE,
    RAW_EXPOSURES,
    REFERENCE_AREAS,
    REFERENCE_CAMPAIGNS,
    REFERENCE_POIS,
    TAGS,
)
from publishing.tables import LakeTable
from resources.lake import LakeResource

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

# ---- validated reads ----------------------------------------------------------------------------


def _read_files(lake: LakeResource, table: LakeTable) -> pd.DataFrame:
    """Every file of an unpartitioned reference table, with ``source_file`` / ``source_row``."""
    frames = []
    for f in table.files(lake):
        df = lake.read_parquet(f)
        frames.append(df.assign(source_file=f, source_row=range(len(df))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_validated(
    lake: LakeResource,
    table: LakeTable,
    kind: str,
    validate: Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]],
    columns: Sequence[str] | None = None,
    log: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(good rows, quarantined rows) of a reference table; the quarantine is written (or cleared
    when the delivery is clean). Raises a non-retried ``dg.Failure`` when nothing good remains."""
    raw = _read_files(lake, table)
    if raw.empty:
        raise dg.Failure(
            description=f"{table.name}: no rows under {table.prefix}", allow_retries=False
        )
    good, bad = validate(raw)
    if bad.empty:
        if QUARANTINED_REFERENCE.exists(lake, kind):
            lake.delete(QUARANTINED_REFERENCE.key(kind))
    else:
        QUARANTINED_REFERENCE.write(lake, quarantine_frame(bad), kind)
        message = (
            f"{table.name}: {len(bad)} of {len(raw)} rows quarantined to "
            f"{QUARANTINED_REFERENCE.key(kind)}: {reason_summary(bad)}"
        )
        if log is not None:
            log.warning(message)
    if good.empty:
        raise dg.Failure(
            description=f"{table.name}: every row rejected: {reason_summary(bad)}",
            metadata={"quarantined": len(bad), "quarantine": QUARANTINED_REFERENCE.key(kind)},
            allow_retries=False,
        )
    if columns is not None:
        good = good[list(columns)]
    return good, bad


def load_reference_pois(
    lake: LakeResource, columns: Sequence[str] | None = None, log: Any = None
) -> pd.DataFrame:
    """The valid reference POIs (``columns`` of them); bad rows quarantined with their reason."""
    return load_validated(lake, REFERENCE_POIS, "pois", validate_pois, columns, log)[0]


def load_reference_areas(
    lake: LakeResource, columns: Sequence[str] | None = None, log: Any = None
) -> pd.DataFrame:
    """The valid reference areas (``columns`` of them); bad rows quarantined with their reason."""
    return load_validated(lake, REFERENCE_AREAS, "areas", validate_areas, columns, log)[0]


defs = dg.Definitions(assets=[reference_pois, reference_areas, reference_campaigns, raw_exposures])
