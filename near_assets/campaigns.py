"""Campaign insights: one dynamic partition per campaign file, refreshed daily while it is live.

- ``campaign_sensor`` watches the campaign files (``reference_campaigns``: one JSON per campaign,
  in the lake, local or S3), adds a ``campaigns`` partition per valid file and requests its first
  run once ``visits`` are published for the first day of the campaign window (until then the
  file is re-checked on every tick and the skip reason says it is waiting for visits); a
  malformed file is reported (skip reason, log, one Slack message per file version) and never
  blocks the others.
- ``campaign_insights`` measures the lift of exposed devices over a matched control group and
  publishes it through write-audit-publish, one partition per campaign.
- ``campaign_automation`` (declarative automation, evaluated in the code server because of the
  custom ``CampaignLive`` condition) refreshes each live campaign once a day after new visits land,
  and stops after the final figure.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from near_assets.engine import EngineConfig
from near_assets.partitions import daily_partitions, external_assets
from near_assets.reference import load_reference_areas, load_reference_pois
from near_assets.science.campaigns import (
    HISTORY_READ,
    CampaignFileError,
    CampaignSpec,
    LiftEstimate,
    brand_poi_ids,
    build_panel,
    campaign_phase,
    exposed_until,
    insight_row,
    matched_lift,
    parse_campaign,
    visits_between,
)
from near_assets.science.demographics import home_areas
from near_assets.spark_jobs.profiles_launch import (
    engine_metadata,
    run_profiles_job,
    scratch,
    scratch_key,
    spark_places,
)
from near_assets.tables import (
    CAMPAIGN_INSIGHTS,
    HOME_LOCATION,
    RAW_EXPOSURES,
    REFERENCE_CAMPAIGNS,
    REFERENCE_POIS,
    VISIT_HISTORY,
    VISITS,
    published_asset_args,
)
from publishing.tables import day_range, publish_pool, trailing_days
from publishing.wap import Audit, audit_specs, has_columns, write_audit_publish
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

CONTRACT_COLUMNS = tuple(CAMPAIGN_INSIGHTS.columns)
MIN_CONTROL_DEVICES = 30
REFRESH_CRON = "0 6 * * *"

campaign_partitions = dg.DynamicPartitionsDefinition(name="campaigns")

# Freshness is judged on the latest materialization of any campaign. A live campaign is refreshed
# every day (REFRESH_CRON): none for 30 h warns (expected between campaigns, when none is live);
# none for a week fails (the refresh or the sensor is likely broken, or campaigns stopped coming).
CAMPAIGN_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=7), warn_window=timedelta(hours=30)
)


# ---- reading the lake ---------------------------------------------------------------------------


def load_campaign(lake: LakeResource, campaign_id: str) -> CampaignSpec:
    return parse_campaign(lake.read_bytes(REFERENCE_CAMPAIGNS.key(campaign_id)), campaign_id)


def lake_first_day() -> date:
    """The first day of the daily partitions (``LAKE_START_DATE``)."""
    return date.fromisoformat(daily_partitions.get_first_partition_key())


def load_home_areas(lake: LakeResource, preferred: list[str]) -> tuple[pd.DataFrame, str | None]:
    """Home areas from the first ``home_location`` day in ``preferred`` that has rows."""
    areas = load_reference_areas(lake, columns=["area_id", "geometry_wkt"])
    for day in preferred:
        homes = HOME_LOCATION.read(lake, day, columns=["device_id", "lat", "lon"])
        if homes is not None and not homes.empty:
            return home_areas(homes, areas), day
    return home_areas(pd.DataFrame(), areas), None


@dataclass(frozen=True)
class HistorySpans:
    """The ``visit_history`` snapshots whose differences give the visits of the window and of
    the pre-period: (end day, day before the span) each; ``pre`` None when the pre-period is
    empty."""

    window: tuple[str, str]
    pre: tuple[str, str] | None

    def days(self) -> list[str]:
        return sorted({*self.window, *(self.pre or ())})


@dataclass(frozen=True)
class CampaignInputs:
    """What one measurement of a campaign reads: visits of the window (up to ``as_of``, the last
    day with visits) and of the pre-period, the panel's home areas, the exposed devices and the
    brand's places."""

    as_of: date
    window: pd.DataFrame
    present_days: list[str]
    missing_window: list[str]
    pre: pd.DataFrame
    pre_days: list[str]
    missing_pre: list[str]
    devices: pd.DataFrame
    home_day: str | None
    exposed: pd.Series
    brand_pois: pd.Index
    exposed_count: int | None = None
    """Distinct devices exposed up to ``as_of`` when ``exposed`` is not loaded (Spark engine)."""
    history: HistorySpans | None = None
    """The ``visit_history`` snapshots read instead of the daily visits (None: the visits)."""


@dataclass(frozen=True)
class CampaignDays:
    """The days one measurement reads, decided from Parquet footers (both engines): the window
    (start, or the lake's first day, to ``today`` capped at the end) and the days of it with
    visits (``present``; ``as_of`` is the last), the ``pre_days`` before the start and those with
    visits, and the ``home_location`` days to try in order (latest pre-period day first, then the
    window's days with visits)."""

    window_days: list[str]
    present: list[str]
    pre_period: list[str]
    pre_found: list[str]

    @property
    def as_of(self) -> date:
        return date.fromisoformat(self.present[-1])

    @property
    def missing_window(self) -> list[str]:
        return [d for d in self.window_days if d not in set(self.present)]

    @property
    def missing_pre(self) -> list[str]:
        return [d for d in self.pre_period if d not in set(self.pre_found)]

    @property
    def home_candidates(self) -> list[str]:
        return [*reversed(self.pre_period), *self.present]


def campaign_days(
    lake: LakeResource, spec: CampaignSpec, today: date, pre_days: int
) -> CampaignDays:
    """``CampaignDays`` of a measurement; fails (not retried) when no window day has visits."""
    first_day = lake_first_day()
    window_days = day_range(max(spec.start_date, first_day), min(spec.end_date, today))
    pre_period = day_range(
        max(spec.start_date - timedelta(days=pre_days), first_day),
        spec.start_date - timedelta(days=1),
    )
    days = CampaignDays(
        window_days=window_days,
        present=[d for d in window_days if VISITS.rows(lake, d) > 0],
        pre_period=pre_period,
        pre_found=[d for d in pre_period if VISITS.rows(lake, d) > 0],
    )
    if not days.present:
        raise dg.Failure(
            f"no visits yet in the window of {spec.campaign_id} "
            f"({window_days[0] if window_days else '-'} .. "
            f"{window_days[-1] if window_days else '-'}); "
            f"missing days: {len(days.missing_window)}",
            allow_retries=False,
        )
    return days


def history_spans(lake: LakeResource, days: CampaignDays) -> HistorySpans | None:
    """``HistorySpans`` when the history holds the measurement: no window or pre-period day is
    missing its visits and the snapshots at the end of each span and on the day before it are
    published (so a window starting on the lake's first day reads the visits)."""
    if days.missing_window or days.missing_pre:
        return None
    (before_window,) = trailing_days(days.window_days[0], 1)
    window = (days.present[-1], before_window)
    pre = None
    if days.pre_period:
        (before_pre,) = trailing_days(days.pre_period[0], 1)
        pre = (days.pre_period[-1], before_pre)
    spans = HistorySpans(window=window, pre=pre)
    return spans if all(VISIT_HISTORY.exists(lake, d) for d in spans.days()) else None


def history_visits(lake: LakeResource, span: tuple[str, str] | None) -> pd.DataFrame:
    """``visits_between`` the two snapshots of ``span`` (no span: no visits)."""
    if span is None:
        return pd.DataFrame({"device_id": [], "poi_id": [], "visits": []})
    end, start = (VISIT_HISTORY.read(lake, d, HISTORY_READ) for d in span)
    return visits_between(end, start)


def load_inputs(
    lake: LakeResource, spec: CampaignSpec, today: date, pre_days: int, use_history: bool = True
) -> CampaignInputs:
    """The daily partitions of the window (from the start, or the lake's first day, to ``today``
    capped at the end) and of the ``pre_days`` before the start, read by partition key."""
    cid = spec.campaign_id
    if today < spec.start_date:
        raise dg.Failure(
            f"campaign {cid} starts on {spec.start_date}; nothing to measure", allow_retries=False
        )
    # the causes a measurement cannot survive, named before any science runs (not retried: a
    # retry reads the same lake)
    pois = load_reference_pois(lake, columns=["poi_id", "brand"])
    brand_pois = brand_poi_ids(pois, spec.brand)
    if brand_pois.empty:
        raise dg.Failure(
            f"campaign {cid}: brand {spec.brand} has no POI in {REFERENCE_POIS.name}",
            metadata={"brand": spec.brand, "reference_pois": len(pois)},
            allow_retries=False,
        )
    exposures = RAW_EXPOSURES.read_or_empty(lake, cid, columns=["device_id", "ts"])
    if exposures.empty:
        raise dg.Failure(
            f"campaign {cid}: no exposures under {RAW_EXPOSURES.key(cid)} for campaign {cid}",
            allow_retries=False,
        )
    days = campaign_days(lake, spec, today, pre_days)
    spans = history_spans(lake, days) if use_history else None
    if spans is not None:  # per (device, POI) counts from the history's snapshots
        window, pre = history_visits(lake, spans.window), history_visits(lake, spans.pre)
    else:
        columns = ["device_id", "poi_id"]
        window, _ = VISITS.read_many(lake, days.present, columns)
        pre, _ = VISITS.read_many(lake, days.pre_found, columns)
    as_of = days.as_of
    devices, home_day = load_home_areas(lake, days.home_candidates)
    exposed = exposed_until(exposures, as_of)
    if len(exposed) == 0:
        raise dg.Failure(
            f"campaign {cid}: no exposures up to {as_of} under {RAW_EXPOSURES.key(cid)} "
            f"({len(exposures)} exposures, all later)",
            allow_retries=False,
        )
    if devices.empty:
        raise dg.Failure(
            f"campaign {cid}: no home_location with rows around {spec.start_date}: no panel "
            "device has a home area to match on",
            allow_retries=False,
        )
    return CampaignInputs(
        as_of=as_of,
        window=window,
        present_days=days.present,
        missing_window=days.missing_window,
        pre=pre,
        pre_days=days.pre_period,
        missing_pre=days.missing_pre,
        devices=devices,
        home_day=home_day,
        exposed=exposed,
        brand_pois=brand_pois,
        history=spans,
    )


def campaign_panel_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    spec: CampaignSpec,
    today: date,
    pre_days: int,
    use_history: bool = True,
) -> tuple[CampaignInputs, pd.DataFrame, dict[str, Any]]:
    """``load_inputs`` + ``build_panel`` as one Spark job: the same days and failures (decided
    from listings and Parquet footers here), the panel compressed (``compress_panel``)."""
    cid = spec.campaign_id
    if today < spec.start_date:
        raise dg.Failure(
            f"campaign {cid} starts on {spec.start_date}; nothing to measure", allow_retries=False
        )
    pois = load_reference_pois(lake, columns=["poi_id", "brand"])
    brand_pois = brand_poi_ids(pois, spec.brand)
    if brand_pois.empty:
        raise dg.Failure(
            f"campaign {cid}: brand {spec.brand} has no POI in {REFERENCE_POIS.name}",
            metadata={"brand": spec.brand, "reference_pois": len(pois)},
            allow_retries=False,
        )
    exposures_rows = RAW_EXPOSURES.rows(lake, cid)
    if exposures_rows == 0:
        raise dg.Failure(
            f"campaign {cid}: no exposures under {RAW_EXPOSURES.key(cid)} for campaign {cid}",
            allow_retries=False,
        )
    days = campaign_days(lake, spec, today, pre_days)
    as_of, present, pre_found = days.as_of, days.present, days.pre_found
    spans = history_spans(lake, days) if use_history else None
    home_day = next((d for d in days.home_candidates if HOME_LOCATION.rows(lake, d) > 0), None)
    no_homes = dg.Failure(
        f"campaign {cid}: no home_location with rows around {spec.start_date}: no panel "
        "device has a home area to match on",
        allow_retries=False,
    )
    if home_day is None:
        raise no_homes
    areas = load_reference_areas(lake, columns=["area_id", "geometry_wkt"])
    cutoff = datetime.combine(as_of + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    panel_key = scratch_key(context, "panel")
    side_tables = {"areas": areas, "brand_pois": pd.DataFrame({"poi_id": list(brand_pois)})}
    try:
        with scratch(context, lake, side_tables) as side, spark_places(lake, spark) as places:
            job = {
                "exposures": places.input(RAW_EXPOSURES.key(cid)),
                "cutoff_ms": int(cutoff.timestamp() * 1000),
                "brand_pois": places.input(side["brand_pois"]),
                "window": [] if spans else [places.input(VISITS.key(d)) for d in present],
                "pre": [] if spans else [places.input(VISITS.key(d)) for d in pre_found],
                "homes": places.input(HOME_LOCATION.key(home_day)),
                "areas": places.input(side["areas"]),
                "panel": places.output(panel_key),
            }
            if spans is not None:  # the visits as differences of the history's snapshots
                job["history"] = {
                    name: [places.input(VISIT_HISTORY.key(d)) for d in span] if span else None
                    for name, span in (("window", spans.window), ("pre", spans.pre))
                }
            summary = run_profiles_job(context, spark, "campaign", job)
        panel = lake.read_parquet(panel_key)
    finally:
        lake.delete(panel_key)
    if int(summary.get("exposed_in_exposures", 0)) == 0:
        raise dg.Failure(
            f"campaign {cid}: no exposures up to {as_of} under {RAW_EXPOSURES.key(cid)} "
            f"({exposures_rows} exposures, all later)",
            allow_retries=False,
        )
    if int(summary.get("panel_devices", 0)) == 0:
        raise no_homes
    inputs = CampaignInputs(
        as_of=as_of,
        window=pd.DataFrame(),
        present_days=present,
        missing_window=days.missing_window,
        pre=pd.DataFrame(),
        pre_days=days.pre_period,
        missing_pre=days.missing_pre,
        devices=pd.DataFrame(),
        home_day=home_day,
        exposed=pd.Series([], dtype="object"),
        brand_pois=brand_pois,
        exposed_count=int(summary["exposed_in_exposures"]),
        history=spans,
    )
    meta = {
        **engine_metadata(summary),
        "panel_devices": int(summary["panel_devices"]),
        "panel_rows_read": len(panel),
    }
    return inputs, panel, meta


# ---- audits ---------------------------------------------------------------------------------------


def control_size(df: pd.DataFrame) -> Audit:
    """The matched control group has at least 30 devices."""
    n = int(df["control_devices"].min()) if len(df) else 0
    return Audit(
        "control_size",
        n >= MIN_CONTROL_DEVICES,
        f"{n} control devices (minimum {MIN_CONTROL_DEVICES})",
        {"control_devices": n, "minimum": MIN_CONTROL_DEVICES},
    )


def interval_sanity(df: pd.DataFrame) -> Audit:
    """The lift is finite and inside its interval: lift_low <= lift <= lift_high."""
    cols = df[["lift_low", "lift", "lift_high"]].astype(float)
    finite = bool(np.isfinite(cols.to_numpy()).all()) and len(df) > 0
    ordered = finite and bool(
        ((cols["lift_low"] <= cols["lift"]) & (cols["lift"] <= cols["lift_high"])).all()
    )
    row = cols.iloc[0].to_dict() if len(df) else {}
    return Audit(
        "interval_sanity",
        ordered,
        "lift_low <= lift <= lift_high" if ordered else f"interval not sane: {row}",
        {k: (round(v, 4) if math.isfinite(v) else None) for k, v in row.items()},
    )


def rates_in_unit_interval(df: pd.DataFrame) -> Audit:
    """Exposed and control visit rates are in 0..1."""
    rates = df[["exposed_visit_rate", "control_visit_rate"]].astype(float).to_numpy()
    ok = len(df) > 0 and bool(((rates >= 0) & (rates <= 1)).all())
    return Audit("rates_in_unit_interval", ok, "rates in 0..1" if ok else f"rates {rates.tolist()}")


AUDITS = [has_columns(*CONTRACT_COLUMNS), control_size, interval_sanity, rates_in_unit_interval]


# ---- automation -------------------------------------------------------------------------------------


class CampaignLive(dg.AutomationCondition):
    """True for campaign partitions whose campaign is live today (UTC): from its start date until
    two days after its end date, so the final figure is computed once the last day has landed.

    The dates come from the campaign files (``LakeResource.from_env()``: the same environment
    variables as the ``lake`` resource), which Dagster's built-in conditions cannot see.
    """

    @property
    def description(self) -> str:
        return "Campaign is live (start <= today <= end + 2 days)"

    @property
    def name(self) -> str:
        return "campaign_live"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        keys = context.candidate_subset.expensively_compute_partition_keys()
        lake = LakeResource.from_env()
        today = context.evaluation_time.astimezone(UTC).date()
        live = []
        for key in sorted(keys):
            try:
                if campaign_phase(load_campaign(lake, key), today) == "live":
                    live.append(key)
            except Exception:  # a vanished or broken file: the sensor reports it
                continue
        subset = context.candidate_subset.compute_intersection_with_partition_keys(set(live))
        return dg.AutomationResult(context=context, true_subset=subset)


# visit_history is read only when published for the days a measurement needs (else the visits,
# the same panel): the daily refresh does not wait for it
campaign_automation_condition = (
    CampaignLive()
    & dg.AutomationCondition.on_cron(REFRESH_CRON).ignore(
        external_assets | dg.AssetSelection.assets("visit_history")
    )
).with_label(f"campaign live and on_cron({REFRESH_CRON})")


# ---- asset --------------------------------------------------------------------------------------------


class CampaignInsightsConfig(EngineConfig):
    pre_days: int = Field(28, ge=0, le=120, description="Pre-campaign days for matching.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided interval level.")
    as_of: str | None = Field(
        None, description="Compute as of this day (YYYY-MM-DD); default today, capped at the end."
    )
    use_history: bool = Field(
        False,
        description="Count the window's and pre-period's visits from visit_history snapshots "
        "(differences of lifetime totals) when published for the spans' ends and the days "
        "before them and no visits day is missing; else read the daily visits (same panel). "
        "Opt-in: a snapshot is not re-derived when an earlier day's visits are re-published, "
        "and a history rebuilt from 90 days restarts lifetime totals, so use it only where "
        "visits are not restated and the history runs unbroken.",
    )


def _num(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def describe(
    spec: CampaignSpec, est: LiftEstimate, inputs: CampaignInputs, final: bool
) -> dict[str, Any]:
    """Materialization metadata: the estimate, its inputs and the precision floor."""
    return {
        "campaign_id": spec.campaign_id,
        "brand": spec.brand,
        "window": f"{spec.start_date} .. {spec.end_date} ({spec.days} days)",
        "as_of": inputs.as_of.isoformat(),
        "final": final,
        "lift": _num(est.lift),
        "lift_interval": f"[{est.lift_low:.4f}, {est.lift_high:.4f}]",
        "significant": est.significant,
        "exposed_devices": est.exposed_devices,
        "exposed_in_exposures": inputs.exposed_count
        if inputs.exposed_count is not None
        else len(inputs.exposed),
        "unmatched_exposed": est.unmatched_exposed,
        "control_devices": est.control_devices,
        "strata": est.strata,
        "exposed_visit_rate": _num(est.exposed_visit_rate),
        "control_visit_rate": _num(est.control_visit_rate),
        "exposed_brand_visits": est.exposed_brand_visits,
        "precision_floor_pp": _num(est.precision_floor_pp),
        "brand_pois": len(inputs.brand_pois),
        "window_days_read": len(inputs.present_days),
        "window_days_missing": dg.MetadataValue.json(inputs.missing_window),
        "pre_days_read": len(inputs.pre_days) - len(inputs.missing_pre),
        "pre_days_missing": len(inputs.missing_pre),
        "home_location_day": inputs.home_day or "none",
        "visits_source": "visit_history" if inputs.history else "visits",
        "history_snapshots": ", ".join(inputs.history.days()) if inputs.history else "none",
    }


# Dependencies: visits and home_location are daily, this asset is partitioned by campaign
# (dynamic). Dagster has no built-in mapping from a dynamic key to a date range
# (TimeWindowPartitionMapping needs time partitions on both sides; custom PartitionMapping
# subclasses are deprecated and dropped from the asset graph the daemon sees, which would then
# infer a wrong identity mapping; a daily upstream can only map to the same day of a
# (campaign x day) multi-partitioned downstream). So the dependency is declared as
# AllPartitionMapping (a campaign may need any day) and the asset reads exactly the daily
# partitions of its window by partition key (load_inputs), never by listing the lake.
#
@dg.asset(
    pool=publish_pool(CAMPAIGN_INSIGHTS.name),
    partitions_def=campaign_partitions,
    deps=[
        dg.AssetDep("visits", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("home_location", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("visit_history", partition_mapping=dg.AllPartitionMapping()),
        "reference_campaigns",
        "raw_exposures",
        "reference_pois",
        "reference_areas",
    ],
    check_specs=audit_specs(CAMPAIGN_INSIGHTS.name, AUDITS),
    automation_condition=campaign_automation_condition,
    group_name="campaigns",
    kinds={"pandas", "spark", "parquet"},
    op_tags={"platform/lane": "batch"},
    **published_asset_args(CAMPAIGN_INSIGHTS, freshness_policy=CAMPAIGN_FRESHNESS),
)
def campaign_insights(
    context: dg.AssetExecutionContext,
    config: CampaignInsightsConfig,
    lake: LakeResource,
    alerts: AlertsResource,
    spark: SparkResource,
):
    """Lift of a campaign: exposed devices vs a matched control group, with a 95% interval.

    One partition per campaign file (``reference_campaigns``). Visit rate = the brand's share of
    the place visits of a group during the campaign window (start .. as_of). Control = devices
    never exposed, matched exactly on home area x pre-campaign brand visits (bucketed), and
    standardised to the exposed group. Lift = exposed_rate / control_rate - 1 with a
    delta-method interval. Daily while the campaign is live (``final`` false), a final figure
    once ``as_of`` reaches the end date.

    Reads the daily ``visits`` of its window, from ``pre_days`` before the start to ``as_of``
    (from ``LAKE_START_DATE`` at the earliest); missing days are reported in the metadata.
    When ``visit_history`` is published for the end of the window and of the pre-period and for
    the days before them (and no visits day is missing), the per-device counts are differences
    of its lifetime totals instead (``visits_source``; same panel, config ``use_history``).
    Reference POIs and areas are validated on read (bad rows quarantined). Publishes nothing and
    fails, naming the cause, when the campaign file is malformed, the brand has no POI in
    ``reference_pois``, the campaign has no exposures, or no visits / home areas exist yet.
    In-process or, with ``engine: spark``, the matched panel is built by Spark SQL (one job) and
    only its compressed form (one row per stratum, exposure and visit counts) is read back.
    """
    try:
        spec = load_campaign(lake, context.partition_key)
    except CampaignFileError as exc:
        raise dg.Failure(
            f"campaign file {REFERENCE_CAMPAIGNS.key(context.partition_key)}: {exc}",
            allow_retries=False,
        ) from exc
    today = date.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC).date()
    if config.engine == "spark":
        inputs, panel, engine_meta = campaign_panel_spark(
            context, lake, spark, spec, today, config.pre_days, config.use_history
        )
    else:
        inputs = load_inputs(lake, spec, today, config.pre_days, config.use_history)
        panel = build_panel(
            inputs.devices, inputs.exposed, inputs.window, inputs.pre, inputs.brand_pois
        )
        engine_meta = {"engine": "pandas"}
    est = matched_lift(panel, confidence=config.confidence)
    final = inputs.as_of >= spec.end_date
    yield from write_audit_publish(
        context,
        lake,
        alerts,
        CAMPAIGN_INSIGHTS,
        CAMPAIGN_INSIGHTS.folder(spec.campaign_id),
        insight_row(spec, est, inputs.as_of, final),
        AUDITS,
        metadata={**describe(spec, est, inputs, final), **engine_meta},
    )


campaign_insights_job = dg.define_asset_job(
    "campaign_insights_job",
    selection=[campaign_insights],
    partitions_def=campaign_partitions,
    tags={"platform/lane": "batch"},
)


# ---- sensor ---------------------------------------------------------------------------------------------


def scan_campaign_files(
    lake: LakeResource, seen: dict[str, str]
) -> tuple[list[tuple[str, str, CampaignSpec]], list[tuple[str, str, str]]]:
    """New or changed campaign files: (key, version, spec) for valid ones and (key, version,
    reason) for malformed ones. ``seen`` maps key -> version already handled."""
    good, bad = [], []
    for campaign_id in REFERENCE_CAMPAIGNS.ids(lake):
        key = REFERENCE_CAMPAIGNS.key(campaign_id)
        try:
            raw = lake.read_bytes(key)
        except Exception as exc:  # deleted between list and read
            bad.append((key, "unreadable", f"could not read ({exc})"))
            continue
        version = hashlib.sha256(raw).hexdigest()[:16]
        if seen.get(key) == version:
            continue
        try:
            good.append((key, version, parse_campaign(raw, campaign_id)))
        except CampaignFileError as exc:
            bad.append((key, version, str(exc)))
    return good, bad


def first_window_day(spec: CampaignSpec) -> date | None:
    """The first day of the campaign window inside the lake's daily range (``LAKE_START_DATE``);
    ``None`` when the whole campaign ended before the lake starts."""
    first = max(spec.start_date, lake_first_day())
    return first if first <= spec.end_date else None


def needed_days(spec: CampaignSpec, first: date, today: date) -> list[date]:
    """Days whose visits a campaign's first run waits for: the window's first day; for a campaign
    that has ended (no daily refresh follows), also its last day, so its only figure covers the
    whole window."""
    if campaign_phase(spec, today) == "ended" and spec.end_date > first:
        return [first, spec.end_date]
    return [first]


def has_visits(lake: LakeResource, day: date) -> bool:
    """``visits`` of ``day`` have been published (at least one Parquet file)."""
    return VISITS.exists(lake, day.isoformat())


def has_home_locations(lake: LakeResource, first: date, last: date) -> bool:
    """Some ``home_location`` day the asset can use (it takes the latest of the pre-period, else
    the earliest window day): from ``pre_days`` (default) before ``first`` to ``last``."""
    low = first - timedelta(days=CampaignInsightsConfig.model_fields["pre_days"].default)
    for value in HOME_LOCATION.values(lake):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            continue
        if low <= day <= last and HOME_LOCATION.exists(lake, value):
            return True
    return False


@dg.sensor(
    name="campaign_sensor",
    target=campaign_insights_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Adds a `campaigns` partition per valid campaign file (reference_campaigns) and "
    "requests its first run once visits are published for the window's first day; reports "
    "malformed files (once per file version).",
)
def campaign_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource, alerts: AlertsResource
):
    """Each tick: list the campaign files, validate new or changed versions, add partitions.

    A valid file of a live or ended campaign gets its first run only when the lake has visits for
    the first day of its window (its start, or the lake's first day when the campaign started
    earlier) and, for an ended campaign, for its last day too, and some ``home_location`` day it
    can match on. Until then the file stays out of the cursor and is checked again on later ticks; the skip reason names the campaigns waiting for visits. Upcoming campaigns get
    their partition only: ``campaign_automation`` refreshes them once they are live. A campaign
    that ended before the lake's first day can never be measured: reported, no run.
    """
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = cursor.get("files", {})
    good, bad = scan_campaign_files(lake, seen)
    today = datetime.now(UTC).date()
    existing = set(context.instance.get_dynamic_partitions(campaign_partitions.name))
    new_ids = sorted({s.campaign_id for _, _, s in good} - existing)
    requests, waiting, done, notes = [], [], [], []
    for key, version, spec in good:
        first = first_window_day(spec)
        if campaign_phase(spec, today) == "upcoming":
            done.append((key, version))
        elif first is None:
            notes.append(f"{spec.campaign_id}: ended before the lake's first day")
            done.append((key, version))
        elif missing := [d for d in needed_days(spec, first, today) if not has_visits(lake, d)]:
            days = ", ".join(str(d) for d in missing)
            waiting.append(f"{spec.campaign_id} (no {VISITS.prefix} for {days} yet)")
        elif not has_home_locations(lake, first, spec.end_date):
            waiting.append(f"{spec.campaign_id} (no {HOME_LOCATION.prefix} around {first} yet)")
        else:
            requests.append(
                dg.RunRequest(
                    run_key=f"{spec.campaign_id}:{version}",
                    partition_key=spec.campaign_id,
                    tags={"platform/lane": "batch", "campaign/file_version": version},
                )
            )
            done.append((key, version))
    for key, version, reason in bad:
        message = f"campaign file `{lake.uri(key)}` skipped: {reason}"
        context.log.warning(message)
        alerts.send(f":warning: {message} (version {version})", context.log)
        done.append((key, version))
    for key, version in done:
        seen[key] = version
    new_cursor = json.dumps({"files": seen}, sort_keys=True)
    dynamic_requests = [campaign_partitions.build_add_request(new_ids)] if new_ids else []
    if waiting:
        context.log.info(f"waiting for visits: {', '.join(waiting)}")
    if requests:
        return dg.SensorResult(
            run_requests=requests, dynamic_partitions_requests=dynamic_requests, cursor=new_cursor
        )
    parts = []
    if waiting:
        parts.append(f"waiting for visits: {', '.join(waiting)}")
    if bad:
        skip = "; ".join(f"{k.rsplit('/', 1)[-1]}: {reason}" for k, _, reason in bad)
        parts.append(f"malformed campaign file(s) skipped: {skip}")
    if notes:
        parts.append(f"not measurable: {'; '.join(notes)}")
    upcoming = [s.campaign_id for _, _, s in good if campaign_phase(s, today) == "upcoming"]
    if upcoming:
        parts.append(f"added {len(upcoming)} upcoming campaign(s): {', '.join(upcoming)}")
    reason_text = "; ".join(parts) or "no new or changed campaign files"
    return dg.SensorResult(
        skip_reason=reason_text, dynamic_partitions_requests=dynamic_requests, cursor=new_cursor
    )


campaign_automation = dg.AutomationConditionSensorDefinition(
    "campaign_automation",
    target=dg.AssetSelection.assets(campaign_insights),
    use_user_code_server=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    run_tags={"platform/lane": "batch"},
    description="Daily refresh of live campaigns (custom CampaignLive condition & on_cron).",
)

defs = dg.Definitions(
    assets=[campaign_insights],
    jobs=[campaign_insights_job],
    sensors=[campaign_sensor, campaign_automation],
)
