"""Audience estimates: people per POI per day, published to the lake and the serving Redis hash.

One write-audit-publish (``resources/wap.py``) covers both copies: the lake partition
``curated/audience_estimates/date=D`` and the Redis hash ``audience:estimates`` (a
``RedisHashTarget``). Both are staged, audited by the same blocking checks, and published only
when every check passes; a failing day leaves both production copies untouched and alerts.
Restore: ``uv run python scripts/restore.py audience_estimates --date D``.
"""

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.partitions import daily_partitions
from near_assets.science.audience import (
    DETECTION_COLUMNS,
    DetectionParams,
    daily_ht,
    detection_rates,
    score_against_truth,
)
from near_assets.science.audience import audience_estimates as project_audience
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.redis_publish import RedisHashTarget, json_rows
from resources.redis_store import RedisResource
from resources.wap import (
    AuditFn,
    audit_specs,
    covers_known,
    has_columns,
    no_nulls,
    row_count_band,
    rows_satisfy,
    table_keys,
    trailing_days,
    trailing_published,
    trailing_published_rows,
    unique_keys,
    value_band,
    write_audit_publish,
)

TABLE = "audience_estimates"
REDIS_KEY = "audience:estimates"
CONTRACT_COLUMNS = ("poi_id", "visitors", "estimate", "estimate_low", "estimate_high")
REDIS_CHECK = ("redis_staged_complete", f"The staged Redis hash {REDIS_KEY} holds every row.")
ROW_BAND = (0.9, 1.1)
VISITED_BAND = (0.6, 1.6)
MIN_PANEL_VISITORS = 30

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
    visited_history: Sequence[float] = (),
    visitors_history: Sequence[float] = (),
    known_pois: Sequence[str] | None = None,
) -> list[AuditFn]:
    """The blocking audits of ``audience_estimates`` (declared with empty history)."""
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
        value_band(
            "visited_pois_band",
            "POIs with at least one panel visitor: within {:g}-{:g}x the trailing median.".format(
                *VISITED_BAND
            ),
            _visited,
            visited_history,
            *VISITED_BAND,
        ),
        value_band(
            "total_visitors_band",
            "Panel visitors summed over POIs: within {:g}-{:g}x the trailing median.".format(
                *VISITED_BAND
            ),
            _total_visitors,
            visitors_history,
            *VISITED_BAND,
        ),
    ]


def known_pois(lake: LakeResource, reference: pd.DataFrame, day: str) -> list[str]:
    """Reference POIs plus those of the latest published day (a POI does not vanish overnight)."""
    known = set(reference["poi_id"].astype(str)) if "poi_id" in reference else set()
    for d in trailing_days(day, 7):
        _, production, _ = table_keys(TABLE, f"date={d}")
        if lake.exists(production):
            known |= set(lake.read_parquet(production, columns=["poi_id"])["poi_id"].astype(str))
            break
    return sorted(known)


def active_devices(lake: LakeResource, day: str) -> pd.Series | None:
    """Devices that sent at least one (clean, else raw) ping that day."""
    for prefix in ("work/clean_pings", "raw/pings"):
        key = f"{prefix}/date={day}"
        if lake.parquet_files(key):
            return lake.read_parquet(key, columns=["device_id"])["device_id"].dropna().unique()
    return None


class AudienceConfig(dg.Config):
    history_days: int = 6
    """Trailing days blended with today's estimate (0: today's Horvitz-Thompson alone)."""
    detection_correction: bool = True
    """Divide each panel visitor by the estimated visit-detection rate of their device."""


DETECTION_KEY = "work/visit_detection"


def day_detection(
    lake: LakeResource, day: str, refresh: bool = False
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The day's visit-detection rates (``science.audience.detection_rates``), cached.

    Computed from the day's clean pings, stay points and visits and kept under
    ``work/visit_detection/date=D`` so the trailing days blended later reuse them; ``refresh``
    recomputes. None when the day has no clean pings or no stay points.
    """
    key = f"{DETECTION_KEY}/date={day}"
    if not refresh and lake.parquet_files(key):
        return lake.read_parquet(key, columns=DETECTION_COLUMNS), {}
    pings_key, stays_key = f"work/clean_pings/date={day}", f"curated/stay_points/date={day}"
    if not lake.parquet_files(pings_key) or not lake.parquet_files(stays_key):
        return None, {}
    pings = lake.read_parquet(pings_key, columns=["device_id", "ts", "lat", "lon"])
    stays = lake.read_parquet(stays_key, columns=["device_id", "start_ts", "end_ts", "lat", "lon"])
    visits = lake.read_parquet(
        f"curated/visits/date={day}", columns=["device_id", "start_ts", "dwell_s"]
    )
    if visits.empty:
        visits = pd.DataFrame(
            {"device_id": pd.Series(dtype=str), "dwell_s": pd.Series(dtype=float)}
        )
    rates, summary = detection_rates(pings, stays, visits, DetectionParams())
    del pings
    lake.write_parquet(rates, key)
    return rates, summary


def day_inputs(lake: LakeResource, day: str) -> tuple[pd.DataFrame, pd.DataFrame, Any] | None:
    """(visits, device home areas, active devices) of one day; None without visits or homes."""
    visits = lake.read_parquet(f"curated/visits/date={day}", columns=["device_id", "poi_id"])
    homes = lake.read_parquet(f"work/demographics/date={day}", columns=["device_id", "area_id"])
    if visits.empty and homes.empty:
        return None
    if visits.empty:
        visits = pd.DataFrame({"device_id": pd.Series(dtype=str), "poi_id": pd.Series(dtype=str)})
    if homes.empty:
        homes = pd.DataFrame({"device_id": pd.Series(dtype=str), "area_id": pd.Series(dtype=str)})
    return visits, homes, active_devices(lake, day)


def redis_target(redis: RedisResource) -> RedisHashTarget:
    return RedisHashTarget(
        redis.get_client(), REDIS_KEY, encode_for_redis, meta_extra={"table": TABLE}
    )


@dg.asset(
    name=TABLE,
    group_name="audience",
    partitions_def=daily_partitions,
    deps=[dg.AssetDep("visits"), dg.AssetDep("demographics")],
    check_specs=audit_specs(TABLE, audience_audits(), [REDIS_CHECK]),
    automation_condition=dg.AutomationCondition.eager(),
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30)),
    op_tags={"platform/lane": "batch"},
    kinds={"pandas", "parquet", "redis"},
)
def audience_estimates(
    context: dg.AssetExecutionContext,
    config: AudienceConfig,
    lake: LakeResource,
    redis: RedisResource,
    alerts: AlertsResource,
) -> Any:
    """People per POI for the day, projected from the panel by home-area coverage.

    Horvitz-Thompson: each panel visitor stands for population / active panel devices of
    their home area, divided by the estimated probability that their device's sampling that
    day would have revealed a visit (visits without pings are missed; the rate is estimated
    from the day's pings, stays and visits, no truth, and cached under
    ``work/visit_detection/date=D``), blended with the trailing ``history_days`` days'
    estimates by a random-effects predictor (a POI's audience moves little day to day, a day's
    panel sample is small; the interval counts the real day-to-day change, the days' shared
    panel and the detection model's error); 90% interval
    from the gamma (scaled Poisson) method on the variance (``near_assets/science/audience.py``
    documents the method). Every reference POI gets a row. Published through one write-audit-publish to
    ``curated/audience_estimates/date=D`` and the Redis hash ``audience:estimates`` (+ ``:meta``,
    ``:backup``): blocking checks (row count and visited-POI bands vs the trailing published
    days, no null keys, estimate >= visitors, interval contains estimate, coverage of known
    POIs, the staged Redis hash complete) gate both; a failure alerts and changes nothing.
    Metadata: the mean detection rate, and with the generator's ``truth/poi_visitors`` the
    median absolute error % and the 90% interval coverage for POIs with >= 30 panel visitors.
    """
    day = context.partition_key
    areas = lake.read_parquet("reference/areas", columns=["area_id", "population"])
    reference = lake.read_parquet("reference/pois", columns=["poi_id"])
    poi_ids = reference["poi_id"].astype(str)
    inputs = day_inputs(lake, day)
    if inputs is None:
        empty = pd.Series(dtype=str)
        inputs = (
            pd.DataFrame({"device_id": empty, "poi_id": empty}),
            pd.DataFrame({"device_id": empty, "area_id": empty}),
            None,
        )
    visits, homes, active = inputs
    detection, detection_summary = (
        day_detection(lake, day, refresh=True) if config.detection_correction else (None, {})
    )
    history, history_pairs = [], []
    for d in trailing_days(day, max(config.history_days, 0)):
        past = day_inputs(lake, d)
        if past is not None:
            past_detection = day_detection(lake, d)[0] if config.detection_correction else None
            per_poi, _, pairs = daily_ht(past[0], past[1], areas, poi_ids, past[2], past_detection)
            history.append(per_poi)
            history_pairs.append(pairs)
    df = project_audience(
        visits,
        homes,
        areas,
        pois=poi_ids,
        active_devices=active,
        history=history,
        detection=detection,
        history_pairs=history_pairs,
    )
    metadata: dict[str, Any] = {
        "pois": len(df),
        "visited_pois": int((df["visitors"] > 0).sum()),
        "panel_visitors": int(df["visitors"].sum()),
        "projected_people": int(df["estimate"].sum()),
        "devices_with_home_area": len(homes),
        "history_days_blended": len(history),
        "active_devices": None if active is None else len(active),
        "detection_correction": detection is not None,
        "mean_detection_rate": detection_summary.get("mean_detection_rate"),
        "detection_speed_mps": detection_summary.get("speed_mps"),
        "detection_mean_dwell_s": detection_summary.get("mean_dwell_s"),
    }
    truth_key = f"truth/poi_visitors/date={day}"
    if lake.parquet_files(truth_key):
        score = score_against_truth(df, lake.read_parquet(truth_key), MIN_PANEL_VISITORS)
        metadata |= {f"truth_{k}": round(v, 4) for k, v in score.items() if v == v}
    audits = audience_audits(
        trailing_published_rows(lake, TABLE, day),
        trailing_published(lake, TABLE, day, _visited, columns=["visitors"]),
        trailing_published(lake, TABLE, day, _total_visitors, columns=["visitors"]),
        known_pois(lake, reference, day),
    )
    yield from write_audit_publish(
        context,
        lake,
        alerts,
        TABLE,
        f"date={day}",
        df,
        audits,
        metadata={k: v for k, v in metadata.items() if v is not None},
        targets=[redis_target(redis)],
    )


defs = dg.Definitions(assets=[audience_estimates])
