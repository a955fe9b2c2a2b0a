"""Campaign insights: one dynamic partition per campaign file, refreshed daily while it is live.

- ``campaign_sensor`` watches ``reference/campaigns/*.json`` in the lake (local or S3), adds a
  ``campaigns`` partition per valid file and requests its first run once ``curated/visits`` has
  the first day of the campaign window (until then the file is re-checked on every tick and the
  skip reason says it is waiting for visits); a malformed file is reported (skip reason, log, one
  Slack message per file version) and never blocks the others.
- ``campaign_insights`` measures the lift of exposed devices over a matched control group and
  publishes it through write-audit-publish to ``curated/campaign_insights/campaign_id=<id>/``.
- ``campaign_automation`` (declarative automation, evaluated in the code server because of the
  custom ``CampaignLive`` condition) refreshes each live campaign once a day after new visits land,
  and stops after the final figure.
"""

import hashlib
import json
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import shapely
from pydantic import Field

from near_assets.partitions import daily_partitions
from near_assets.science.campaigns import (
    CampaignFileError,
    CampaignSpec,
    build_panel,
    campaign_phase,
    day_range,
    insight_row,
    matched_lift,
    parse_campaign,
)
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.wap import Audit, audit_specs, has_columns, write_audit_publish

CAMPAIGNS_PREFIX = "reference/campaigns"
TABLE = "campaign_insights"
CONTRACT_COLUMNS = (
    "brand",
    "exposed_devices",
    "control_devices",
    "exposed_visit_rate",
    "control_visit_rate",
    "lift",
    "lift_low",
    "lift_high",
    "as_of",
)
MIN_CONTROL_DEVICES = 30
REFRESH_CRON = "0 6 * * *"

campaign_partitions = dg.DynamicPartitionsDefinition(name="campaigns")


# ---- reading the lake ---------------------------------------------------------------------------


def campaign_key(campaign_id: str) -> str:
    return f"{CAMPAIGNS_PREFIX}/{campaign_id}.json"


def load_campaign(lake: LakeResource, campaign_id: str) -> CampaignSpec:
    return parse_campaign(lake.read_bytes(campaign_key(campaign_id)), campaign_id)


def _utc(ts: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(ts):
        return pd.to_datetime(ts, unit="ms", utc=True)
    out = pd.to_datetime(ts, utc=True)
    return out


def load_exposed(lake: LakeResource, campaign_id: str, until: date) -> pd.Series:
    """Distinct devices exposed up to the end of ``until`` (later exposures are not yet known)."""
    df = lake.read_parquet(f"raw/exposures/campaign_id={campaign_id}", columns=["device_id", "ts"])
    if df.empty:
        return pd.Series([], dtype="object")
    df = df.dropna(subset=["device_id", "ts"])
    cutoff = pd.Timestamp(until + timedelta(days=1), tz="UTC")
    return pd.Series(df.loc[_utc(df["ts"]) < cutoff, "device_id"].astype(str).unique())


def load_visit_days(lake: LakeResource, days: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Concatenated ``curated/visits/date=D`` for ``days`` and the days that are missing."""
    frames, missing = [], []
    for day in days:
        df = lake.read_parquet(f"curated/visits/date={day}", columns=["device_id", "poi_id"])
        if df.empty:
            missing.append(day)
        else:
            frames.append(df)
    if not frames:
        return pd.DataFrame({"device_id": [], "poi_id": []}, dtype="object"), missing
    return pd.concat(frames, ignore_index=True), missing


def brand_poi_ids(lake: LakeResource, brand: str) -> pd.Index:
    pois = lake.read_parquet("reference/pois", columns=["poi_id", "brand"])
    return pd.Index(pois.loc[pois["brand"] == brand, "poi_id"].astype(str).unique())


def home_areas(homes: pd.DataFrame, areas: pd.DataFrame) -> pd.DataFrame:
    """``device_id, home_area_id``: the area polygon containing each home (lat/lon, WGS84)."""
    if homes.empty or areas.empty:
        return pd.DataFrame({"device_id": [], "home_area_id": []}, dtype="object")
    polys = shapely.from_wkt(areas["geometry_wkt"].to_numpy())
    tree = shapely.STRtree(polys)
    points = shapely.points(homes["lon"].to_numpy(float), homes["lat"].to_numpy(float))
    pt_idx, poly_idx = tree.query(points, predicate="within")
    out = pd.DataFrame(
        {
            "device_id": homes["device_id"].to_numpy()[pt_idx].astype(str),
            "home_area_id": areas["area_id"].to_numpy()[poly_idx].astype(str),
        }
    )
    return out.drop_duplicates("device_id").reset_index(drop=True)


def load_home_areas(lake: LakeResource, preferred: list[str]) -> tuple[pd.DataFrame, str | None]:
    """Home areas from the first ``home_location`` day in ``preferred`` that exists."""
    areas = lake.read_parquet("reference/areas", columns=["area_id", "geometry_wkt"])
    for day in preferred:
        homes = lake.read_parquet(
            f"curated/home_location/date={day}", columns=["device_id", "lat", "lon"]
        )
        if not homes.empty:
            return home_areas(homes, areas), day
    return home_areas(pd.DataFrame(), areas), None


def planted_lift(lake: LakeResource, campaign_id: str) -> float | None:
    key = f"truth/campaigns/{campaign_id}.json"
    if not lake.exists(key):
        return None
    value = lake.read_json(key).get("planted_lift")
    return None if value is None else float(value)


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


campaign_automation_condition = (
    CampaignLive() & dg.AutomationCondition.on_cron(REFRESH_CRON)
).with_label(f"campaign live and on_cron({REFRESH_CRON})")


# ---- asset --------------------------------------------------------------------------------------------


class CampaignInsightsConfig(dg.Config):
    pre_days: int = Field(28, ge=0, le=120, description="Pre-campaign days for matching.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Two-sided interval level.")
    as_of: str | None = Field(
        None, description="Compute as of this day (YYYY-MM-DD); default today, capped at the end."
    )


@dg.asset(
    partitions_def=campaign_partitions,
    deps=[
        dg.AssetDep("visits", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("home_location", partition_mapping=dg.AllPartitionMapping()),
    ],
    check_specs=audit_specs(TABLE, AUDITS),
    automation_condition=campaign_automation_condition,
    group_name="campaigns",
    kinds={"pandas", "parquet"},
    op_tags={"platform/lane": "batch"},
)
def campaign_insights(
    context: dg.AssetExecutionContext,
    config: CampaignInsightsConfig,
    lake: LakeResource,
    alerts: AlertsResource,
):
    """Lift of a campaign: exposed devices vs a matched control group, with a 95% interval.

    One partition per campaign (``reference/campaigns/<id>.json``). Visit rate = the brand's
    share of the place visits of a group during the campaign window (start .. as_of). Control =
    devices never exposed, matched exactly on home area x pre-campaign brand visits (bucketed),
    and standardised to the exposed group. Lift = exposed_rate / control_rate - 1 with a delta-method
    interval. Daily while the campaign is live (``final`` false), a final figure once ``as_of``
    reaches the end date. Metadata shows the estimated vs the planted lift when ``truth/`` exists.

    Multi-day window. ``visits`` and ``home_location`` are daily; this asset is partitioned by
    campaign (dynamic). Dagster 1.13 has no built-in mapping from a dynamic key to a date range:
    ``TimeWindowPartitionMapping`` needs time partitions on both sides, and custom
    ``PartitionMapping`` subclasses are deprecated and dropped from the asset graph the daemon
    sees (it would then infer an identity mapping, which is wrong). So the dependency is declared
    honestly as ``AllPartitionMapping`` (a campaign may need any day), and the asset reads exactly
    the daily partitions of its window, from ``pre_days`` before the start to ``as_of``, computed
    from the campaign file and bounded by the daily partitions definition (``LAKE_START_DATE``).
    It reads them by partition key (``curated/visits/date=D``), never by listing the lake; missing
    days are reported in the metadata. A (campaign x day) multi-partition would not help: a
    daily upstream can only map to the same day of a multi-partitioned downstream.
    """
    campaign_id = context.partition_key
    spec = load_campaign(lake, campaign_id)
    today = date.fromisoformat(config.as_of) if config.as_of else datetime.now(UTC).date()
    first_day = date.fromisoformat(daily_partitions.get_first_partition_key())
    if today < spec.start_date:
        raise dg.Failure(f"campaign {campaign_id} starts on {spec.start_date}; nothing to measure")
    window_days = day_range(max(spec.start_date, first_day), min(spec.end_date, today))
    pre_days = day_range(
        max(spec.start_date - timedelta(days=config.pre_days), first_day),
        spec.start_date - timedelta(days=1),
    )
    window, missing_window = load_visit_days(lake, window_days)
    present = [d for d in window_days if d not in set(missing_window)]
    if not present:
        raise dg.Failure(
            f"no visits yet in the window of {campaign_id} ({window_days[0] if window_days else '-'}"
            f" .. {window_days[-1] if window_days else '-'}); missing days: {len(missing_window)}"
        )
    as_of = date.fromisoformat(present[-1])
    pre, missing_pre = load_visit_days(lake, pre_days)
    home_days = [*reversed(pre_days), *present]
    devices, home_day = load_home_areas(lake, home_days)
    exposed = load_exposed(lake, campaign_id, as_of)
    brand_pois = brand_poi_ids(lake, spec.brand)

    panel = build_panel(devices, exposed, window, pre, brand_pois)
    est = matched_lift(panel, confidence=config.confidence)
    final = as_of >= spec.end_date
    row = insight_row(spec, est, as_of, final)

    truth = planted_lift(lake, campaign_id)
    # Poisson noise of the exposed group's brand visits: the standard error (pp) no estimator can
    # beat on this data; about half the interval's half-width when the control group is large
    brand_visits = (
        round(est.exposed_visit_rate * est.exposed_visits)
        if math.isfinite(est.exposed_visit_rate)
        else 0
    )
    floor_pp = 100 * (1 + est.lift) / math.sqrt(brand_visits) if brand_visits else math.nan
    metadata: dict[str, Any] = {
        "campaign_id": campaign_id,
        "brand": spec.brand,
        "window": f"{spec.start_date} .. {spec.end_date} ({spec.days} days)",
        "as_of": as_of.isoformat(),
        "final": final,
        "lift": _num(est.lift),
        "lift_interval": f"[{est.lift_low:.4f}, {est.lift_high:.4f}]",
        "significant": est.significant,
        "exposed_devices": est.exposed_devices,
        "exposed_in_exposures": len(exposed),
        "unmatched_exposed": est.unmatched_exposed,
        "control_devices": est.control_devices,
        "strata": est.strata,
        "exposed_visit_rate": _num(est.exposed_visit_rate),
        "control_visit_rate": _num(est.control_visit_rate),
        "exposed_brand_visits": brand_visits,
        "precision_floor_pp": _num(floor_pp),
        "brand_pois": len(brand_pois),
        "window_days_read": len(present),
        "window_days_missing": dg.MetadataValue.json(missing_window),
        "pre_days_read": len(pre_days) - len(missing_pre),
        "pre_days_missing": len(missing_pre),
        "home_location_day": home_day or "none",
    }
    if truth is not None:
        metadata["planted_lift"] = truth
        if math.isfinite(est.lift):
            metadata["lift_error_pp"] = round(100 * (est.lift - truth), 2)
        metadata["truth_in_interval"] = bool(est.lift_low <= truth <= est.lift_high)
    yield from write_audit_publish(
        context,
        lake,
        alerts,
        TABLE,
        f"campaign_id={campaign_id}",
        row,
        AUDITS,
        metadata=metadata,
    )


def _num(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


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
    """New or changed files under ``reference/campaigns``: (key, version, spec) for valid ones and
    (key, version, reason) for malformed ones. ``seen`` maps key -> version already handled."""
    good, bad = [], []
    for key in lake.list(CAMPAIGNS_PREFIX):
        name = key.rsplit("/", 1)[-1]
        if not name.endswith(".json") or "/" in key[len(CAMPAIGNS_PREFIX) + 1 :]:
            continue
        try:
            raw = lake.read_bytes(key)
        except Exception as exc:  # deleted between list and read
            bad.append((key, "unreadable", f"could not read ({exc})"))
            continue
        version = hashlib.sha256(raw).hexdigest()[:16]
        if seen.get(key) == version:
            continue
        try:
            good.append((key, version, parse_campaign(raw, name[: -len(".json")])))
        except CampaignFileError as exc:
            bad.append((key, version, str(exc)))
    return good, bad


def first_window_day(spec: CampaignSpec) -> date | None:
    """The first day of the campaign window inside the lake's daily range (``LAKE_START_DATE``);
    ``None`` when the whole campaign ended before the lake starts."""
    first = max(spec.start_date, date.fromisoformat(daily_partitions.get_first_partition_key()))
    return first if first <= spec.end_date else None


def needed_days(spec: CampaignSpec, first: date, today: date) -> list[date]:
    """Days whose visits a campaign's first run waits for: the window's first day; for a campaign
    that has ended (no daily refresh follows), also its last day, so its only figure covers the
    whole window."""
    if campaign_phase(spec, today) == "ended" and spec.end_date > first:
        return [first, spec.end_date]
    return [first]


def has_visits(lake: LakeResource, day: date) -> bool:
    """``curated/visits/date=<day>`` has been published (at least one Parquet file)."""
    return bool(lake.parquet_files(f"curated/visits/date={day.isoformat()}"))


def has_home_locations(lake: LakeResource, first: date, last: date) -> bool:
    """Some ``curated/home_location`` day the asset can use (it takes the latest of the
    pre-period, else the earliest window day): from ``pre_days`` (default) before ``first``
    to ``last``."""
    low = first - timedelta(days=CampaignInsightsConfig.model_fields["pre_days"].default)
    for name in lake.list_dirs("curated/home_location"):
        try:
            day = date.fromisoformat(name.removeprefix("date="))
        except ValueError:
            continue
        if low <= day <= last and has_parquet(lake, f"curated/home_location/{name}"):
            return True
    return False


def has_parquet(lake: LakeResource, key: str) -> bool:
    return bool(lake.parquet_files(key))


@dg.sensor(
    name="campaign_sensor",
    target=campaign_insights_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Adds a `campaigns` partition per valid reference/campaigns/<id>.json and "
    "requests its first run once curated/visits has the window's first day; reports malformed "
    "files (once per file version).",
)
def campaign_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource, alerts: AlertsResource
):
    """Each tick: list the campaign files, validate new or changed versions, add partitions.

    A valid file of a live or ended campaign gets its first run only when the lake has visits for
    the first day of its window (``curated/visits/date=<start>``, or the lake's first day when the
    campaign started earlier) and, for an ended campaign, for its last day too, and some
    ``curated/home_location`` day it can match on. Until then the file stays out of the cursor and is checked again on
    later ticks; the skip reason names the campaigns waiting for visits. Upcoming campaigns get
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
            waiting.append(f"{spec.campaign_id} (no curated/visits for {days} yet)")
        elif not has_home_locations(lake, first, spec.end_date):
            waiting.append(f"{spec.campaign_id} (no curated/home_location around {first} yet)")
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
