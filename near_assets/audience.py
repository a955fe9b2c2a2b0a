"""Audience estimates: people per POI per day, published to the lake and the serving Redis hash.

One write-audit-publish (``publishing/wap.py``) covers both copies: the lake partition of
``audience_estimates`` and the Redis hash ``audience:estimates`` (a ``RedisHashTarget``). Both
are staged, audited by the same blocking checks, and published only when every check passes; a
failing day leaves both production copies untouched and alerts. A run over several days (a
backfill) publishes them one after the other, in day order.
Restore: ``uv run python scripts/restore.py audience_estimates --date D``.
"""

import json
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, Literal

import dagster as dg
import numpy as np
import pandas as pd

from near_assets.engine import EngineConfig
from near_assets.partitions import daily_partitions, external_assets
from near_assets.people import IDENTITY_DEP, Graphs, graph_day
from near_assets.people import IGNORE as IGNORE_IDENTITY
from near_assets.reference import load_reference_areas, load_validated
from near_assets.science.audience import (
    DETECTION_COLUMNS,
    DetectionParams,
    as_people,
    daily_ht,
    detection_rates,
    project_audience,
    project_from_sums,
)
from near_assets.science.reference import validate_pois
from near_assets.spark_jobs import AUDIENCE
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.spark_jobs.profiles_launch import SparkPlaces, spark_places
from near_assets.tables import (
    AUDIENCE_ESTIMATES,
    AUDIENCE_REDIS_KEY,
    CLEAN_PINGS,
    DEMOGRAPHICS,
    ENGINE_OUTPUT,
    IDENTITY_GRAPH,
    RAW_PINGS,
    REFERENCE_POIS,
    STAY_POINTS,
    VISIT_DETECTION,
    VISITS,
    published_asset_args,
)
from publishing.baselines import DayValue, calendar_band, published_histories, published_rows
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
    unique_keys,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from resources.spark import SparkResource

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


AUDIENCE_JOB = AUDIENCE
"""The Spark engine's job script (``near_assets/spark_jobs/audience.py``)."""

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
        published_rows(lake, AUDIENCE_ESTIMATES, day),
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


class AudienceConfig(EngineConfig):
    """``engine``: ``pandas`` (in-process) or ``spark`` (the pings, stays and visits are read by
    one Spark job, ``near_assets/spark_jobs/audience.py``; only per-POI sums come back)."""

    history_days: int = HISTORY_DAYS
    """Trailing days blended with today's estimate (0: today's Horvitz-Thompson alone)."""
    detection_correction: bool = True
    """Divide each panel visitor by the estimated visit-detection rate of their device."""
    count: Literal["devices", "people"] = "devices"
    """What a distinct visitor is: a panel device, or a person (devices mapped to ``person_id``
    by the latest ``identity_graph`` of D-6 .. D; a device absent from it is its own person)."""


class PeopleMapper:
    """``science.audience.as_people`` with each day's graph (``near_assets.people``)."""

    def __init__(self, lake: LakeResource):
        self.graphs = Graphs(lake)

    def __call__(
        self,
        day: str,
        visits: pd.DataFrame,
        homes: pd.DataFrame,
        active: Any,
        detection: pd.DataFrame | None,
    ) -> tuple[pd.DataFrame, pd.DataFrame, Any, pd.DataFrame | None]:
        return as_people(visits, homes, active, detection, self.graphs.of(day)[0])


def people_meta(
    unit: str, graph: str | None, visitor_devices: int | None, visitors: int, active: Any
) -> dict[str, Any]:
    """The counted unit and, counting people, the graph used and the devices->people ratio."""
    if unit != "people":
        return {"count_unit": "devices"}
    return {
        "count_unit": "people",
        "identity_graph_day": graph or "none (every device its own person)",
        "panel_visitor_devices": visitor_devices,
        "devices_per_person": round(visitor_devices / visitors, 4) if visitors else None,
        "active_people": active,
    }


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
    people: PeopleMapper | None = None,
) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """``daily_ht`` estimates and weighted panel visitors of the trailing days that have data
    (``people``: persons counted, each day with its own graph)."""
    history, pairs = [], []
    for d in trailing_days(day, max(config.history_days, 0)):
        past = day_inputs(lake, d, quarantined)
        if past is not None:
            detection = day_detection(lake, d)[0] if config.detection_correction else None
            visits, homes, active = past
            if people is not None:
                visits, homes, active, detection = people(d, visits, homes, active, detection)
            per_poi, _, day_pairs = daily_ht(visits, homes, areas, pois, active, detection)
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
    people = PeopleMapper(lake) if config.count == "people" else None
    active_devices_n = None if active is None else len(active)
    devices_with_home = len(homes)  # devices, whatever the unit counted
    unit = {"count_unit": "devices"}
    if people is not None:
        visitor_devices = len(visits[["device_id", "poi_id"]].dropna().drop_duplicates())
        visits, homes, active, detection = people(day, visits, homes, active, detection)
        unit = people_meta(
            "people",
            people.graphs.of(day)[1],
            visitor_devices,
            len(visits[["device_id", "poi_id"]].dropna().drop_duplicates()),
            None if active is None else len(active),
        )
    history, history_pairs = trailing_history(lake, day, config, areas, pois, quarantined, people)
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
        "devices_with_home_area": devices_with_home,
        "quarantined_reference_pois": len(quarantined),
        "history_days_blended": len(history),
        "active_devices": active_devices_n,
        "detection_correction": detection is not None,
        "mean_detection_rate": detection_summary.get("mean_detection_rate"),
        "detection_speed_mps": detection_summary.get("speed_mps"),
        "detection_mean_dwell_s": detection_summary.get("mean_dwell_s"),
        **unit,
    }
    return df, clean_meta(metadata)


# ---- the Spark engine ------------------------------------------------------------------------


def _pings_key(lake: LakeResource, day: str) -> str | None:
    """The pings that tell a day's active devices (clean, else raw; ``active_devices``)."""
    for table in (CLEAN_PINGS, RAW_PINGS):
        if table.exists(lake, day):
            return table.key(day)
    return None


def spark_job_spec(
    lake: LakeResource,
    places: SparkPlaces,
    days: Sequence[str],
    config: AudienceConfig,
    sides: dict[str, str],
    output: str,
) -> dict[str, Any]:
    """The job spec of ``near_assets/spark_jobs/audience.py`` for the run's ``days``.

    Detection is computed for every run day (``day_detection(refresh=True)`` in pandas) and for
    each trailing day without cached rates; HT sums for every day of every window; covariance
    for every pair of days blended together (newer day first, as ``blend_with_history``).
    ``places`` tells where the job finds each key (staged first for local Spark on S3)."""
    staged: dict[str, str] = {}

    def uri(key: str) -> str:  # an input, staged once however often the spec names it
        if key not in staged:
            staged[key] = places.input(key)
        return staged[key]

    def has_data(d: str) -> bool:  # day_inputs is not None
        return d in days or VISITS.exists(lake, d) or DEMOGRAPHICS.exists(lake, d)

    windows = {
        d: [d, *(t for t in trailing_days(d, max(config.history_days, 0)) if has_data(t))]
        for d in days
    }
    needed = sorted({d for w in windows.values() for d in w}, reverse=True)
    detect = []
    if config.detection_correction:
        for d in needed:
            if (d in days or not VISIT_DETECTION.exists(lake, d)) and (
                CLEAN_PINGS.exists(lake, d) and STAY_POINTS.exists(lake, d)
            ):
                detect.append(
                    {
                        "day": d,
                        "pings": uri(CLEAN_PINGS.key(d)),
                        "rows": CLEAN_PINGS.rows(lake, d),
                        "stays": uri(STAY_POINTS.key(d)),
                        "visits": uri(VISITS.key(d)) if VISITS.exists(lake, d) else None,
                        "out": places.output(VISIT_DETECTION.key(d)),
                    }
                )
    detected = {item["day"] for item in detect}
    staged |= {VISIT_DETECTION.key(item["day"]): item["out"] for item in detect}
    specs = []
    for d in needed:
        pings = _pings_key(lake, d)
        has_rates = d in detected or VISIT_DETECTION.exists(lake, d)
        specs.append(
            {
                "day": d,
                "visits": uri(VISITS.key(d)) if VISITS.exists(lake, d) else None,
                "homes": uri(DEMOGRAPHICS.key(d)) if DEMOGRAPHICS.exists(lake, d) else None,
                "pings": uri(pings) if pings else None,
                "detection": (
                    uri(VISIT_DETECTION.key(d))
                    if config.detection_correction and has_rates
                    else None
                ),
                "graph": (
                    uri(IDENTITY_GRAPH.key(found))
                    if config.count == "people" and (found := graph_day(lake, d))
                    else None
                ),
            }
        )
    pairs = {
        (w[a], w[b]) for w in windows.values() for a in range(len(w)) for b in range(a + 1, len(w))
    }
    return {
        "params": DetectionParams().as_dict(),
        "correction": config.detection_correction,
        "areas": uri(sides["areas"]),
        "pois": uri(sides["pois"]),
        "output": places.output(output),
        "count": config.count,
        "detect": detect,
        "days": specs,
        "pairs": sorted(pairs, reverse=True),
    }


def estimate_days_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    config: AudienceConfig,
    areas: pd.DataFrame,
    pois: pd.Series,
    quarantined: frozenset[str],
) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, Any]], dict[str, Any]]:
    """``estimate_day`` for every run day with one Spark job (module doc of the job script).

    The run process only reads per-POI sums per day and blends them
    (``science.audience.project_from_sums``): the same science as the pandas engine."""
    days = list(context.partition_keys)
    base = f"{context.run_id}-audience"
    output = ENGINE_OUTPUT.key(base)
    sides = {n: ENGINE_OUTPUT.key(f"{base}-side-{n}") for n in ("areas", "pois")}
    lake.write_parquet(areas[["area_id", "population"]].astype({"area_id": str}), sides["areas"])
    lake.write_parquet(
        pd.DataFrame(
            {
                "poi_id": [*pois.astype(str), *sorted(quarantined)],
                "quarantined": [False] * len(pois) + [True] * len(quarantined),
            }
        ),
        sides["pois"],
    )
    spec_key = f"{ENGINE_OUTPUT.key(f'{base}-spec')}/spec.json"
    try:
        with spark_places(lake, spark) as places:
            spec = spark_job_spec(lake, places, days, config, sides, output)
            # the spec goes as a lake object: a month backfill's outgrows EMR's step arguments
            lake.write_bytes(spec_key, json.dumps(spec, sort_keys=True).encode())
            args = ["--spec", f"@{places.input(spec_key)}"]
            summary = spark.run_script(context, AUDIENCE_JOB, args, job_conf=BASE_CONF)
        per_day = summary.get("days") or {}
        sums = {
            d: lake.read_parquet(f"{output}/date={d}", columns=["poi_id", *HT_SUMS])
            for d in per_day
        }
        for d, figures in per_day.items():  # day_inputs: visit pairs and home rows
            figures["pairs"] = int(sums[d]["visitors"].sum())
            figures["homes"] = DEMOGRAPHICS.rows(lake, d)
    finally:
        for key in (output, spec_key, *sides.values()):
            lake.delete(key)
    detection = summary.get("detection") or {}
    cov = summary.get("covariance") or {}
    frames, metadata = {}, {}
    for day in days:
        if day not in per_day:
            raise dg.Failure(description=f"the Spark job reported no audience sums for {day}")
        today = ht_frame(sums[day], pois)
        window = [
            d
            for d in trailing_days(day, max(config.history_days, 0))
            if d in per_day and (per_day[d]["pairs"] or per_day[d]["homes"])
        ]
        history = [ht_frame(sums[d], pois) for d in window]
        blended = [day, *window]
        day_cov = np.zeros((len(blended), len(blended)))
        for a in range(len(blended)):
            for b in range(a + 1, len(blended)):
                c = cov.get(f"{blended[a]}|{blended[b]}") or {}
                other = c.get("other") or {}
                extra = sum(v for poi, v in other.items() if poi in today.index)
                day_cov[a, b] = float(c.get("ref", 0.0)) + extra
        frames[day] = project_from_sums(today, per_day[day]["typical"], history, day_cov=day_cov)
        found = detection.get(day) or {}
        metadata[day] = clean_meta(
            {
                "pois": len(frames[day]),
                "visited_pois": int((frames[day]["visitors"] > 0).sum()),
                "panel_visitors": int(frames[day]["visitors"].sum()),
                "projected_people": int(frames[day]["estimate"].sum()),
                "devices_with_home_area": per_day[day]["homes"],
                "quarantined_reference_pois": len(quarantined),
                "history_days_blended": len(history),
                "active_devices": per_day[day]["active_devices"],
                "detection_correction": day in detection,
                "mean_detection_rate": found.get("mean_detection_rate"),
                "detection_speed_mps": found.get("speed_mps"),
                "detection_mean_dwell_s": found.get("mean_dwell_s"),
                **people_meta(
                    config.count,
                    graph_day(lake, day) if config.count == "people" else None,
                    per_day[day].get("visitor_devices"),
                    int(frames[day]["visitors"].sum()),
                    per_day[day].get("active_people"),
                ),
            }
        )
    engine_meta = {
        "engine": "spark",
        "spark_seconds": summary.get("seconds"),
        "spark_session_start_s": summary.get("session_start_s"),
        "spark_version": summary.get("spark_version"),
        "spark_master": summary.get("master"),
        "spark_detection_days": sorted(detection),
        "spark_spec_bytes": len(json.dumps(spec, sort_keys=True)),
        **(summary.get("metadata") or {}),
    }
    return frames, metadata, clean_meta(engine_meta)


HT_SUMS = ("visitors", "e", "var", "model_var")


def ht_frame(sums: pd.DataFrame, pois: pd.Series) -> pd.DataFrame:
    """A day's per-POI HT sums (Spark output) as ``daily_ht``'s frame: every reference POI and
    every visited one, indexed by ``poi_id``."""
    per_poi = sums.astype({"poi_id": str}).set_index("poi_id")[list(HT_SUMS)].sort_index()
    per_poi["visitors"] = per_poi["visitors"].astype(np.int64)
    index = pd.Index(pd.unique(pd.Series(list(pois), dtype=object)), name="poi_id")
    per_poi = per_poi.reindex(index.union(per_poi.index), fill_value=0)
    per_poi.index = per_poi.index.astype(str)
    return per_poi


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
        IDENTITY_DEP,
        "reference_pois",
        "reference_areas",
    ],
    check_specs=audit_specs(AUDIENCE_ESTIMATES.name, audience_audits(), [REDIS_CHECK]),
    backfill_policy=dg.BackfillPolicy.single_run(),
    automation_condition=dg.AutomationCondition.eager().ignore(external_assets | IGNORE_IDENTITY),
    op_tags={"platform/lane": "batch"},
    kinds={"pandas", "spark", "redis"},
    **published_asset_args(AUDIENCE_ESTIMATES, freshness_policy=SERVING_FRESHNESS),
)
def audience_estimates(
    context: dg.AssetExecutionContext,
    config: AudienceConfig,
    lake: LakeResource,
    redis: RedisResource,
    alerts: AlertsResource,
    spark: SparkResource,
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
    validated on read (bad rows quarantined). Metadata: the mean detection rate and the
    ``engine`` that ran: with ``engine: spark`` (config; default ``NEAR_ENGINE``) one Spark job
    (``near_assets/spark_jobs/audience.py``) reads the pings, stays and visits, computes the
    detection rates and the per-POI Horvitz-Thompson sums of every day, and only those sums
    come back to be blended here (the same science and estimates as in-process pandas).

    ``count: people`` (config; default ``devices``) counts distinct people instead of devices:
    each device becomes its ``person_id`` in the latest ``identity_graph`` of D-6 .. D (a device
    absent from it is its own person); metadata ``count_unit``, ``identity_graph_day`` and
    ``devices_per_person`` (distinct visitor devices / distinct visitor people).
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
    engine_meta: dict[str, Any] = {"engine": "pandas"}
    if config.engine == "spark":
        frames, metadata, engine_meta = estimate_days_spark(
            context, lake, spark, config, areas, pois, quarantined
        )
    for day in context.partition_keys:  # day order: each is audited against those before it
        if day not in frames:
            frames[day], metadata[day] = estimate_day(lake, day, config, areas, pois, quarantined)
    yield from publish_days(
        context,
        lake,
        alerts,
        AUDIENCE_ESTIMATES,
        frames,
        lambda day: day_audits(lake, reference, day),
        metadata,
        engine_meta,  # the engine that ran
        targets=[redis_target(redis)],
    )


defs = dg.Definitions(assets=[audience_estimates])
