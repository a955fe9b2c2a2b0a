"""Audience estimates: people per POI per day, published to the lake and the serving Redis hash.

One write-audit-publish (``publishing/wap.py``) covers both copies: the lake partition of
``audience_estimates`` and the Redis hash ``audience:estimates`` (a ``RedisHashTarget``). Both
are staged, audited by the same blocking checks, and published only when every check passes; a
failing day leaves both production copies untouched and alerts. A run over several days (a
backfill) publishes them one after the other, in day order.
Restore: ``uv run python scripts/restore.py audience_estimates --date D``.
"""

from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.partitions import daily_partitions, external_assets
from near_assets.reference import load_reference_areas, load_validated
from near_assets.science.audience import (
    DETECTION_COLUMNS,
    DetectionParams,
    daily_ht,
    detection_rates,
    project_audience,
)
from near_assets.science.reference import validate_pois
from near_assets.tables import (
    AUDIENCE_ESTIMATES,
    AUDIENCE_REDIS_KEY,
    CLEAN_PINGS,
    DEMOGRAPHICS,
    RAW_PINGS,
    REFERENCE_POIS,
    STAY_POINTS,
    VISIT_DETECTION,
    VISITS,
    published_asset_args,
)
from publishing.baselines import DayValue, calendar_band, published_histories
from publishing.redis_hash import RedisHashTarget, json_rows
from publishing.tables import publish_pool, trailing_days
from publishing.wap import (
    AuditFn,
    audit_specs,
    clean_meta,
    covers_known,
    has_columns,
    no_nulls,
    publish_days,
    row_count_band,
    rows_satisfy,
    trailing_published_rows,
    unique_keys,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource

CONTRACT_COLUMNS = ("poi_id", "visitors", "estimate", "estimate_low", "estimate_high")
REDIS_CHECK = (
    "redis_staged_complete",
    f"The staged Redis hash {AUDIENCE_REDIS_KEY} holds every row.",
)
ROW_BAND = (0.9, 1.1)
HISTORY_DAYS = 6
"""Trailing days blended with a day's estimate by default (``AudienceConfig.history_days``)."""

# A day's estimate reads that day and its HISTORY_DAYS trailing days of pings (active devices:
# clean, else raw), visits and home areas, and of stay points when a trailing day's
# visit-detection rates are not cached yet. The dependencies are declared day to day (identity
# mapping): a trailing mapping would make eager automation wait for every trailing day, so one
# missing raw day would hold the estimates back for a week. The trailing reads use what exists.
UPSTREAM = ("raw_pings", "clean_pings", "stay_points", "visits", "demographics")

# The serving hash answers live requests: stricter than the daily tables' FRESHNESS_DAILY.
SERVING_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30))

encode_for_redis = json_rows(
    "poi_id",
    {
        "visitors": "visitors",
        "estimate": "estimate",
        "estimate_low": "estimate_low",
        "estimate_high": "estimate_high",
    },
)


def _visited(df: pd.DataFrame) -> float:
    return float((df["visitors"] > 0).sum())


def _total_visitors(df: pd.DataFrame) -> float:
    return float(df["visitors"].sum())


def audience_audits(
    rows_history: Sequence[int] = (),
    visited_history: Sequence[DayValue | float] = (),
    visitors_history: Sequence[DayValue | float] = (),
    known_pois: Sequence[str] | None = None,
    day: str | None = None,
) -> list[AuditFn]:
    """The blocking audits of ``audience_estimates`` (declared with empty history).

    Contract breaks (columns, null or duplicate keys, estimate < visitors, interval order, the
    POI count, unknown POIs) block. The visited-POI and panel-visitor counts follow the calendar
    (``publishing.baselines``): compared with the same weekday of the previous weeks (public
    holidays as Sundays), else with all published days in a wider band; a moderate shift
    publishes with a WARN, a shift far outside the band blocks."""
    return [
        has_columns(*CONTRACT_COLUMNS),
        no_nulls(*CONTRACT_COLUMNS),
        unique_keys("poi_id"),
        row_count_band(rows_history, *ROW_BAND),
        covers_known("poi_id", known_pois, min_share=0.99),
        rows_satisfy(
            "estimate_at_least_visitors",
            "Every estimate is at least the panel visitors (each panel visitor is a person).",
            lambda df: df["estimate"] >= df["visitors"],
        ),
        rows_satisfy(
            "interval_contains_estimate",
            "visitors <= estimate_low <= estimate <= estimate_high.",
            lambda df: (
                (df["estimate_low"] <= df["estimate"])
                & (df["estimate"] <= df["estimate_high"])
                & (df["estimate_low"] >= df["visitors"])
            ),
        ),
        calendar_band(
            "visited_pois_band",
            "POIs with a panel visitor vs the same weekday of the last 4 weeks (else all "
            "published days); WARN outside the warn band, blocks outside the block band.",
            _visited,
            visited_history,
            day,
        ),
        calendar_band(
            "total_visitors_band",
            "Panel visitors over POIs vs the same weekday of the last 4 weeks (else all "
            "published days); WARN outside the warn band, blocks outside the block band.",
            _total_visitors,
            visitors_history,
            day,
        ),
    ]


def known_pois(lake: LakeResource, reference: pd.DataFrame, day: str) -> list[str]:
    """Reference POIs plus those of the latest published day (a POI does not vanish overnight)."""
    known = set(reference["poi_id"].astype(str)) if "poi_id" in reference else set()
    latest = AUDIENCE_ESTIMATES.latest(lake, trailing_days(day, 7)[::-1])
    if latest:
        known |= set(
            AUDIENCE_ESTIMATES.read(lake, latest, columns=["poi_id"])["poi_id"].astype(str)
        )
    return sorted(known)


def day_audits(lake: LakeResource, reference: pd.DataFrame, day: str) -> list[AuditFn]:
    """``audience_audits`` with the history of the days published before ``day``."""
    history = published_histories(
        lake,
        AUDIENCE_ESTIMATES,
        day,
        {"visited": _visited, "visitors": _total_visitors},
        columns=["visitors"],
    )
    return audience_audits(
        trailing_published_rows(lake, AUDIENCE_ESTIMATES, day),
        history["visited"],
        history["visitors"],
        known_pois(lake, reference, day),
        day,
    )


def missing_input(lake: LakeResource, day: str) -> str | None:
    """Why ``day`` has no data to estimate from (visits or device home areas missing or empty),
    or None. An empty upstream day is "no data", never zero visitors."""
    lacking = [
        f"{table.name} {'empty' if table.exists(lake, day) else 'missing'}"
        for table in (VISITS, DEMOGRAPHICS)
        if table.rows(lake, day) == 0
    ]
    return f"no data for {day} ({', '.join(lacking)})" if lacking else None


def _frame(*columns: str, **dtypes: str) -> pd.DataFrame:
    """An empty frame with typed columns (``str`` unless given)."""
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, str)) for c in columns})


def active_devices(lake: LakeResource, day: str) -> Any:
    """Devices that sent at least one (clean, else raw) ping that day; None without pings."""
    for table in (CLEAN_PINGS, RAW_PINGS):
        if table.exists(lake, day):
            return table.read(lake, day, columns=["device_id"])["device_id"].dropna().unique()
    return None


class AudienceConfig(dg.Config):
    history_days: int = HISTORY_DAYS
    """Trailing days blended with today's estimate (0: today's Horvitz-Thompson alone)."""
    detection_correction: bool = True
    """Divide each panel visitor by the estimated visit-detection rate of their device."""


def day_detection(
    lake: LakeResource, day: str, refresh: bool = False
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The day's visit-detection rates (``science.audience.detection_rates``), cached.

    Computed from the day's clean pings, stay points and visits and kept in ``VISIT_DETECTION``
    so the trailing days blended later reuse them; ``refresh`` recomputes. None when the day has
    no clean pings or no stay points.
    """
    if not refresh and VISIT_DETECTION.exists(lake, day):
        return VISIT_DETECTION.read(lake, day, columns=DETECTION_COLUMNS), {}
    if not (CLEAN_PINGS.exists(lake, day) and STAY_POINTS.exists(lake, day)):
        return None, {}
    pings = CLEAN_PINGS.read(lake, day, columns=["device_id", "ts", "lat", "lon"])
    stays = STAY_POINTS.read(lake, day, columns=["device_id", "start_ts", "end_ts", "lat", "lon"])
    visits = VISITS.read_or_empty(lake, day, columns=["device_id", "start_ts", "dwell_s"])
    if visits.empty:
        visits = _frame("device_id", "dwell_s", dwell_s="float")
    rates, summary = detection_rates(pings, stays, visits, DetectionParams())
    del pings
    VISIT_DETECTION.write(lake, rates, day)
    return rates, summary


def day_inputs(
    lake: LakeResource, day: str, quarantined: frozenset[str] = frozenset()
) -> tuple[pd.DataFrame, pd.DataFrame, Any] | None:
    """(visits, device home areas, active devices) of one day; None without visits or homes.

    Visits to ``quarantined`` POIs (rejected reference rows, e.g. a duplicated ``poi_id``) are
    left out: their place is unknown until the reference is fixed."""
    visits = VISITS.read_or_empty(lake, day, columns=["device_id", "poi_id"])
    if quarantined and len(visits):
        visits = visits[~visits["poi_id"].astype(str).isin(quarantined)]
    homes = DEMOGRAPHICS.read_or_empty(lake, day, columns=["device_id", "area_id"])
    if visits.empty and homes.empty:
        return None
    if visits.empty:
        visits = _frame("device_id", "poi_id")
    if homes.empty:
        homes = _frame("device_id", "area_id")
    return visits, homes, active_devices(lake, day)


def trailing_history(
    lake: LakeResource,
    day: str,
    config: AudienceConfig,
    areas: pd.DataFrame,
    pois: pd.Series,
    quarantined: frozenset[str] = frozenset(),
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """``daily_ht`` estimates and weighted panel visitors of the trailing days that have data."""
    history, pairs = [], []
    for d in trailing_days(day, max(config.history_days, 0)):
        past = day_inputs(lake, d, quarantined)
        if past is not None:
            detection = day_detection(lake, d)[0] if config.detection_correction else None
            per_poi, _, day_pairs = daily_ht(past[0], past[1], areas, pois, past[2], detection)
            history.append(per_poi)
            pairs.append(day_pairs)
    return history, pairs


def estimate_day(
    lake: LakeResource,
    day: str,
    config: AudienceConfig,
    areas: pd.DataFrame,
    pois: pd.Series,
    quarantined: frozenset[str] = frozenset(),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One day's estimates (every valid reference POI) and their metadata."""
    visits, homes, active = day_inputs(lake, day, quarantined) or (
        _frame("device_id", "poi_id"),
        _frame("device_id", "area_id"),
        None,
    )
    detection, detection_summary = (
        day_detection(lake, day, refresh=True) if config.detection_correction else (None, {})
    )
    history, history_pairs = trailing_history(lake, day, config, areas, pois, quarantined)
    df = project_audience(
        visits,
        homes,
        areas,
        pois=pois,
        active_devices=active,
        history=history,
        detection=detection,
        history_pairs=history_pairs,
    )
    metadata = {
        "pois": len(df),
        "visited_pois": int((df["visitors"] > 0).sum()),
        "panel_visitors": int(df["visitors"].sum()),
        "projected_people": int(df["estimate"].sum()),
        "devices_with_home_area": len(homes),
        "quarantined_reference_pois": len(quarantined),
        "history_days_blended": len(history),
        "active_devices": None if active is None else len(active),
        "detection_correction": detection is not None,
        "mean_detection_rate": detection_summary.get("mean_detection_rate"),
        "detection_speed_mps": detection_summary.get("speed_mps"),
        "detection_mean_dwell_s": detection_summary.get("mean_dwell_s"),
    }
    return df, clean_meta(metadata)


def redis_target(redis: RedisResource) -> RedisHashTarget:
    return RedisHashTarget(
        redis.get_client(),
        AUDIENCE_REDIS_KEY,
        encode_for_redis,
        meta_extra={"table": AUDIENCE_ESTIMATES.name},
    )


@dg.asset(
    pool=publish_pool(AUDIENCE_ESTIMATES.name),
    group_name="audience",
    partitions_def=daily_partitions,
    deps=[
        *UPSTREAM,
        "reference_pois",
        "reference_areas",
    ],
    check_specs=audit_specs(AUDIENCE_ESTIMATES.name, audience_audits(), [REDIS_CHECK]),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=dg.AutomationCondition.eager().ignore(external_assets),
    op_tags={"platform/lane": "batch"},
    kinds={"pandas", "parquet", "redis"},
    **published_asset_args(AUDIENCE_ESTIMATES, freshness_policy=SERVING_FRESHNESS),
)
def audience_estimates(
    context: dg.AssetExecutionContext,
    config: AudienceConfig,
    lake: LakeResource,
    redis: RedisResource,
    alerts: AlertsResource,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """People per POI for the day, projected from the panel by home-area coverage.

    Horvitz-Thompson: each panel visitor stands for population / active panel devices of
    their home area, divided by the estimated probability that their device's sampling that
    day would have revealed a visit (visits without pings are missed; the rate is estimated
    from the day's pings, stays and visits, no truth, and cached in ``visit_detection``),
    blended with the trailing ``history_days`` days' estimates by a random-effects predictor
    (a POI's audience moves little day to day, a day's panel sample is small; the interval
    counts the real day-to-day change, the days' shared panel and the detection model's
    error); 90% interval from the gamma (scaled Poisson) method on the variance
    (``near_assets/science/audience.py`` documents the method). Every reference POI gets a row.

    Published through one write-audit-publish to the lake and the Redis hash
    ``audience:estimates`` (+ ``:meta``, ``:backup``): blocking checks (row count vs the
    trailing published days, no null keys, estimate >= visitors, interval contains estimate,
    coverage of known POIs, the staged Redis hash complete; visited-POI and panel-visitor counts
    vs the same weekday of the previous weeks, a moderate shift passing with a WARN) gate
    both; a failure alerts and changes nothing. A day whose visits or home areas are missing or
    empty fails with "no data for D" and publishes nothing. Reference POIs and areas are
    validated on read (bad rows quarantined). Metadata: the mean detection rate.
    """
    no_data = [why for day in context.partition_keys if (why := missing_input(lake, day))]
    if no_data:
        raise dg.Failure(
            description=f"{'; '.join(no_data)}: nothing published, production left untouched",
            allow_retries=False,
        )
    areas = load_reference_areas(lake, columns=["area_id", "population"], log=context.log)
    reference, rejected = load_validated(
        lake, REFERENCE_POIS, "pois", validate_pois, ["poi_id"], context.log
    )
    pois = reference["poi_id"].astype(str)
    quarantined = frozenset(rejected["row_id"].dropna().astype(str)) - set(pois)
    frames, metadata = {}, {}
    for day in context.partition_keys:  # day order: each is audited against those before it
        frames[day], metadata[day] = estimate_day(lake, day, config, areas, pois, quarantined)
    yield from publish_days(
        context,
        lake,
        alerts,
        AUDIENCE_ESTIMATES,
        frames,
        lambda day: day_audits(lake, reference, day),
        metadata,
        {"engine": "pandas"},  # no Spark path yet (issue 12): say what ran
        targets=[redis_target(redis)],
    )


defs = dg.Definitions(assets=[audience_estimates])
