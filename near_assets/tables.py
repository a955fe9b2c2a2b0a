"""Every lake table and Redis key of the location-intelligence location, declared once.

Assets read and write through these declarations (``STAY_POINTS.read(lake, day)``,
``CLEAN_PINGS.write(lake, df, day)``); no other module of ``near_assets`` formats a lake key.
Published tables (``curated/``) carry their contract columns (``../shared/CONTRACTS.md``), shown
in the UI as each asset's column schema. The generator (``near_assets.synth``) writes the inputs
and ``truth/`` with its own writers: it plays upstream, not the platform.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import dagster as dg

from publishing.tables import JsonObjects, LakeTable

# ---- owners and tags ----------------------------------------------------------------------------

OWNERS = ["team:location-intelligence"]
PLATFORM_OWNERS = ["team:data-platform"]
TAGS = {"domain": "location-intelligence"}

TS = "timestamp[ns, UTC]"
TS_ENGINE = "timestamp[ns or us, UTC]"
"""Written by pandas in ns, by Spark in us: readers normalise (``science.stays.to_utc``)."""

# ---- inputs (written upstream) -------------------------------------------------------------------

RAW_PINGS = LakeTable(
    "raw_pings",
    "raw/pings",
    columns={
        "device_id": "string",
        "ts": "timestamp (UTC, any unit) or int64 epoch ms",
        "lat": "float64",
        "lon": "float64",
        "accuracy_m": "float64 (nullable)",
    },
)
REFERENCE_POIS = LakeTable(
    "reference_pois",
    "reference/pois",
    partition=None,
    columns={
        "poi_id": "string",
        "name": "string",
        "brand": "string (nullable)",
        "category": "string",
        "geometry_wkt": "string (POLYGON, lon lat)",
    },
)
REFERENCE_AREAS = LakeTable(
    "reference_areas",
    "reference/areas",
    partition=None,
    columns={
        "area_id": "string",
        "geometry_wkt": "string (POLYGON, lon lat)",
        "population": "int64",
        "median_income": "float64 (optional)",
    },
)
REFERENCE_CAMPAIGNS = JsonObjects("reference_campaigns", "reference/campaigns")
RAW_EXPOSURES = LakeTable(
    "raw_exposures",
    "raw/exposures",
    partition="campaign_id",
    columns={"device_id": "string", "ts": "timestamp (UTC) or int64 epoch ms"},
)

# ---- intermediate tables (the platform's own, unpublished) ---------------------------------------

CLEAN_PINGS = LakeTable(
    "clean_pings",
    "work/clean_pings",
    columns={
        "device_id": "string",
        "ts": TS_ENGINE,
        "lat": "float64",
        "lon": "float64",
        "accuracy_m": "float64",
    },
)
QUARANTINED_PINGS = LakeTable(
    "quarantined_pings",
    "quarantine/pings",
    columns={
        "device_id": "string",
        "ts": TS_ENGINE,
        "lat": "float64",
        "lon": "float64",
        "reason": "string",
    },
)
DEMOGRAPHICS = LakeTable(
    "demographics",
    "work/demographics",
    columns={
        "device_id": "string",
        "confidence": "float64",
        "area_id": "string",
        "population": "int64",
    },
)
AREA_COVERAGE = LakeTable(
    "area_coverage",
    "work/area_coverage",
    columns={
        "area_id": "string",
        "population": "int64",
        "panel_devices": "int64",
        "coverage": "float64",
    },
)
VISIT_DETECTION = LakeTable(
    "visit_detection",
    "work/visit_detection",
    columns={"device_id": "string", "p_detect": "float64", "ping_group": "string"},
)
HOME_PING_HOURS = LakeTable(
    "home_ping_hours",
    "work/home_ping_hours",
    columns={"device_id": "string", "ts": TS, "lat": "float64", "lon": "float64"},
    descriptions={"ts": "start of the UTC hour", "lat": "mean of the hour's pings in the cell"},
)
"""Clean pings reduced to one row per device, ~100 m cell and hour: home location's ping
evidence (a sparse night yields pings but no stay)."""
ENGINE_OUTPUT = LakeTable("engine_output", "work/_engine", partition="run")
"""Scratch output of one Spark job (``run=<run id>``), read back and deleted by the engine."""

HDP_CELLS = LakeTable(
    "hdp_cells",
    "work/hdp_cells",
    columns={
        "cell": "int64 (grid cell code, near_assets.science.hdp.cell_codes)",
        "lat": "float64 (dominant exact point)",
        "lon": "float64",
        "devices": "int64",
        "pings": "int64",
        "point_devices": "int64 (devices on the exact point of the accuracy pattern)",
        "local_density": "float64 (mean devices per neighbouring cell)",
        "concentration": "float64",
        "accuracy_share": "float64",
        "accuracy_devices": "int64 (devices sharing the modal accuracy)",
        "flagged": "bool",
    },
)
"""``work/hdp_cells/date=D``: one day's dense cells and whether each was flagged (the evidence
the maintained list is built from)."""

# ---- published tables (curated/, write-audit-publish) --------------------------------------------

STAY_POINTS = LakeTable.curated(
    "stay_points",
    columns={
        "device_id": "string",
        "start_ts": TS,
        "end_ts": TS,
        "lat": "float64",
        "lon": "float64",
        "n_pings": "int32",
        "duration_s": "float64",
    },
    descriptions={"n_pings": "pings inside the stay's radius"},
)
VISITS = LakeTable.curated(
    "visits",
    columns={
        "device_id": "string",
        "poi_id": "string",
        "start_ts": TS,
        "end_ts": TS,
        "dwell_s": "float64",
        "brand": "string",
        "distance_m": "float64",
    },
)
HOME_LOCATION = LakeTable.curated(
    "home_location",
    columns={
        "device_id": "string",
        "lat": "float64",
        "lon": "float64",
        "confidence": "float64",
        "nights": "int32",
        "hours": "int32",
        "method": "string",
    },
    descriptions={
        "confidence": "calibrated probability that the true home lies within 200 m (CONTRACTS); "
        "devices below min_confidence (0.5) are left out",
        "nights": "distinct nights of evidence",
        "method": "night | day_rest | evening",
    },
)
BRAND_AFFINITY = LakeTable.curated(
    "brand_affinity",
    columns={
        "device_id": "string",
        "brand": "string",
        "affinity": "float64",
        "visits": "int64",
        "dwell_s": "float64",
        "lift": "float64",
    },
    descriptions={"affinity": "log propensity: 0 = like everyone, higher = more drawn"},
)
AUDIENCE_ESTIMATES = LakeTable.curated(
    "audience_estimates",
    columns={
        "poi_id": "string",
        "visitors": "int64",
        "estimate": "int64",
        "estimate_low": "int64",
        "estimate_high": "int64",
        "std_error": "float64",
    },
    descriptions={
        "visitors": "distinct panel devices visiting that day",
        "estimate": "projected people",
        "estimate_low": "90% interval, low",
        "estimate_high": "90% interval, high",
    },
)
CAMPAIGN_INSIGHTS = LakeTable.curated(
    "campaign_insights",
    partition="campaign_id",
    columns={
        "brand": "string",
        "exposed_devices": "int64",
        "control_devices": "int64",
        "exposed_visit_rate": "float64",
        "control_visit_rate": "float64",
        "lift": "float64",
        "lift_low": "float64",
        "lift_high": "float64",
        "as_of": "string (YYYY-MM-DD)",
    },
)

VISIT_HISTORY = LakeTable.curated(
    "visit_history",
    columns={
        "device_id": "string",
        "poi_id": "string",
        "brand": "string (nullable)",
        "first_seen": TS,
        "last_seen": TS,
        "visits_total": "int64",
        "dwell_total_s": "float64",
        "visits_7d": "int64",
        "dwell_7d_s": "float64",
        "visits_30d": "int64",
        "dwell_30d_s": "float64",
        "visits_90d": "int64",
        "dwell_90d_s": "float64",
    },
    descriptions={
        "first_seen": "start of the pair's first visit within the retention horizon",
        "last_seen": "end of the pair's latest visit up to the partition's day",
        "visits_total": "visits within the retention horizon (365 days)",
        "visits_7d": "visits starting D-6 .. D (UTC days)",
        "visits_30d": "visits starting D-29 .. D",
        "visits_90d": "visits starting D-89 .. D",
    },
)
"""``curated/visit_history/date=D``: the snapshot of every (device, POI) pair as of day D."""

IDENTITY_GRAPH = LakeTable.curated(
    "identity_graph",
    columns={
        "device_id": "string",
        "person_id": "string",
        "household_id": "string",
        "confidence": "float64",
        "devices_in_person": "int64",
    },
    descriptions={
        "person_id": "smallest device_id of the device's person (itself when unlinked)",
        "household_id": "smallest device_id of the device's household (itself when unlinked)",
        "confidence": "score of the device's strongest link inside its household, 0..1 "
        "(0: linked to nobody)",
    },
)
"""``curated/identity_graph/date=D``: devices linked into people and households (cross identity)."""

PLACE_BOUNDARIES = LakeTable.curated(
    "place_boundaries",
    columns={
        "poi_id": "string",
        "geometry_wkt": "string (WKT polygon, WGS84 lon lat)",
        "source": "string ('placematrix' | 'delivered')",
        "stays_used": "int64",
        "devices_used": "int64",
        "area_m2": "float64",
        "delivered_area_m2": "float64",
        "iou_with_delivered": "float64",
        "shift_m": "float64",
    },
    descriptions={
        "geometry_wkt": "the POI's footprint: refined from its visitors' stays, or the delivered "
        "polygon when the evidence is thin",
        "source": "'placematrix' (refined) or 'delivered' (fewer than min_stays stays or "
        "min_devices devices in the POI's densest cluster)",
        "stays_used": "stays in the POI's kept density cluster over the window",
        "devices_used": "distinct devices among those stays",
        "iou_with_delivered": "intersection over union of the footprint and the delivered polygon",
        "shift_m": "distance between the footprint's and the delivered polygon's centroids, m",
    },
)
"""``curated/place_boundaries/date=D``: PlaceMatrix footprints, one row per reference POI."""


HIGH_DENSITY_POINTS = LakeTable.curated(
    "high_density_points",
    columns={
        "cell": "int64",
        "lat": "float64",
        "lon": "float64",
        "days_flagged": "int64",
        "days_seen": "int64",
        "devices_median": "float64",
        "concentration_median": "float64",
        "accuracy_share_median": "float64",
        "first_flagged": "string (YYYY-MM-DD)",
        "last_flagged": "string (YYYY-MM-DD)",
        "exact_point": "bool",
    },
    descriptions={
        "cell": "grid cell (1e-4 degree, ~11 m) whose pings clean_pings drops",
        "lat": "the cell's dominant exact point (WGS84)",
        "days_flagged": "days of the trailing window (7) the cell was flagged",
        "days_seen": "days of the window the cell had >= min_devices devices",
        "devices_median": "median distinct devices a flagged day",
        "concentration_median": "devices / (local density + 1), median over flagged days",
        "accuracy_share_median": "share of devices reporting one identical accuracy",
        "exact_point": "true: only pings on (lat, lon) are dropped; false: the whole cell",
    },
)
"""``curated/high_density_points/date=D``: the HDP list maintained as of day D."""

# ---- on-demand outputs ---------------------------------------------------------------------------

INSIGHTS = "insights"
"""Root of the on-demand ``aggregate_insights`` outputs, one folder per request."""


def insights_key(request_hash: str, file: str | None = None) -> str:
    """``insights/<request-hash>[/<file>]``: one request's folder (or a file in it)."""
    folder = f"{INSIGHTS}/{request_hash}"
    return f"{folder}/{file}" if file else folder


# ---- Redis ---------------------------------------------------------------------------------------

AUDIENCE_REDIS_KEY = "audience:estimates"
"""Serving hash of ``audience_estimates`` (``:meta`` and ``:backup`` beside it; CONTRACTS)."""
REDIS_HASHES = {AUDIENCE_ESTIMATES.name: AUDIENCE_REDIS_KEY}
"""Published tables that also have a Redis serving hash (``scripts/restore.py``)."""

# ---- ground truth (synthetic lakes only) ---------------------------------------------------------

TRUTH = "truth"
"""Root of the generator's ground truth; present only in synthetic lakes."""
TRUTH_HOMES = LakeTable("truth_homes", "truth/homes", partition=None)
TRUTH_STAYS = LakeTable("truth_stays", "truth/stays")
TRUTH_POI_VISITORS = LakeTable("truth_poi_visitors", "truth/poi_visitors")
TRUTH_HDP = LakeTable("truth_hdp", "truth/hdp", partition=None)
"""The high-density points the generator planted (``near-synth --hdp``)."""
TRUTH_HDP_PINGS = LakeTable("truth_hdp_pings", "truth/hdp_pings")
"""The planted HDP pings of each day (device_id, ts)."""
TRUTH_IDENTITY = LakeTable("truth_identity", "truth/identity", partition=None)
"""Devices' true person and household (``near-synth --people``)."""
TRUTH_POI_FOOTPRINTS = LakeTable("truth_poi_footprints", "truth/poi_footprints", partition=None)
"""The generator's true footprints (``near-synth --footprints``); synthetic lakes only."""
TRUTH_CAMPAIGNS = JsonObjects("truth_campaigns", "truth/campaigns")
TRUTH_DIRT = JsonObjects("truth_dirt", "truth/dirt")
"""``truth/dirt/date=D.json``: ids are ``date=D``."""
TRUTH_PANEL = JsonObjects("truth_panel", "truth")
"""``truth/panel.json``: id ``panel``."""


# ---- asset arguments -----------------------------------------------------------------------------

FRESHNESS_DAILY = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=48), warn_window=timedelta(hours=30)
)
"""Daily tables: warn when the last materialization is over 30 h old, fail past 48 h."""


def published_asset_args(table: LakeTable, **extra: Any) -> dict[str, Any]:
    """Owners, tags, column schema and freshness policy of an asset that publishes ``table``."""
    metadata = {**table.metadata(), **extra.pop("metadata", {})}
    return {
        "owners": OWNERS,
        "tags": {**TAGS, "tier": "published", **extra.pop("tags", {})},
        "metadata": metadata,
        "freshness_policy": extra.pop("freshness_policy", FRESHNESS_DAILY),
        **extra,
    }


def internal_asset_args(table: LakeTable | None = None, **extra: Any) -> dict[str, Any]:
    """Owners, tags and column schema of an asset whose output stays inside the platform."""
    metadata = {**(table.metadata() if table else {}), **extra.pop("metadata", {})}
    return {
        "owners": OWNERS,
        "tags": {**TAGS, "tier": "internal", **extra.pop("tags", {})},
        "metadata": metadata,
        **extra,
    }


# ---- helper Q (issue 14): quarantined reference rows ---------------------------------------------

QUARANTINED_REFERENCE = LakeTable(
    "quarantined_reference",
    "quarantine/reference",
    partition="kind",
    columns={
        "kind": "string (pois | areas)",
        "source_file": "string (lake key of the delivered file)",
        "source_row": "int64 (row in that file, from 0)",
        "row_id": "string (poi_id / area_id, null when missing)",
        "reason": "string",
    },
)
"""``quarantine/reference/kind=<pois|areas>/part-0.parquet``: reference rows rejected where they
enter (``near_assets.reference.load_reference_pois``), the row's own columns as text after these."""
