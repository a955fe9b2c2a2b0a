"""On-demand aggregate insights: an analyst launches ``aggregate_insights_job`` with run config.

From the UI (Jobs -> aggregate_insights_job -> Launchpad) or the CLI::

    dagster job execute -m near_assets.definitions -j aggregate_insights_job -c request.yaml

with ``request.yaml``::

    ops:
      aggregate_insights:
        config:
          brand: FreshMart            # or category: grocery, or poi_ids: [p1, p2]
          start_date: "2024-01-01"
          end_date: "2024-01-30"
          home_areas: [A012, A013]    # optional segment
          affinity_brand: FreshMart   # optional segment: devices with affinity >= min_affinity
          min_affinity: 0.5

Results go to ``insights/<request-hash>/`` in the lake (Parquet tables, ``summary.md``,
``summary.json``, ``chart.png``); the same request always lands under the same key.
"""

import base64
import json
import math
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field, model_validator

from near_assets.engine import EngineConfig
from near_assets.partitions import daily_partitions
from near_assets.reference import load_reference_areas, load_reference_pois
from near_assets.science.demographics import home_areas
from near_assets.science.insights import (
    InsightFigures,
    Insights,
    assemble_insights,
    chart_png,
    compute_insights,
    people_factors,
    request_hash,
    segment_devices,
    select_pois,
    summary_markdown,
)
from near_assets.spark_jobs.profiles_launch import (
    engine_metadata,
    run_profiles_job,
    scratch,
    spark_places,
)
from near_assets.tables import (
    AREA_COVERAGE,
    BRAND_AFFINITY,
    DEMOGRAPHICS,
    HOME_LOCATION,
    VISITS,
    insights_key,
    internal_asset_args,
)
from publishing.tables import day_range
from resources.lake import LakeResource
from resources.spark import SparkResource

MAX_RANGE_DAYS = 366
INLINE_CHART_MAX_BYTES = 120_000


class AggregateInsightsConfig(EngineConfig):
    """One insights request. Exactly one of ``brand``, ``category``, ``poi_ids``."""

    brand: str | None = Field(None, description="Brand of the places (reference_pois.brand).")
    category: str | None = Field(None, description="Category of the places, e.g. grocery.")
    poi_ids: list[str] | None = Field(None, description="Explicit place ids.")
    start_date: str = Field(description="First day, YYYY-MM-DD (UTC).")
    end_date: str = Field(description="Last day, YYYY-MM-DD (UTC), inclusive.")
    home_areas: list[str] | None = Field(None, description="Segment: visitors living in these.")
    affinity_brand: str | None = Field(
        None, description="Segment: brand for min_affinity (default: the requested brand)."
    )
    min_affinity: float | None = Field(
        None, ge=-5, le=5, description="Segment: visitors with brand affinity >= this (-5..5)."
    )

    @model_validator(mode="after")
    def check_request(self) -> "AggregateInsightsConfig":
        chosen = [n for n in ("brand", "category", "poi_ids") if getattr(self, n)]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of brand, category or poi_ids"
                + (f" (got {', '.join(chosen)})" if chosen else " (got none)")
            )
        try:
            start, end = date.fromisoformat(self.start_date), date.fromisoformat(self.end_date)
        except ValueError as exc:
            raise ValueError(f"start_date/end_date must be YYYY-MM-DD ({exc})") from None
        if end < start:
            raise ValueError(f"end_date {end} is before start_date {start}")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise ValueError(f"date range longer than {MAX_RANGE_DAYS} days")
        if end > datetime.now(UTC).date():
            raise ValueError(f"end_date {end} is in the future")
        if self.min_affinity is not None and not (self.affinity_brand or self.brand):
            raise ValueError("min_affinity needs affinity_brand (or a brand request)")
        if self.home_areas is not None and not self.home_areas:
            raise ValueError("home_areas, when given, must list at least one area")
        return self

    def request(self) -> dict[str, Any]:
        """The request's identity (hashed into its output key; the engine is not part of it)."""
        return {
            "brand": self.brand,
            "category": self.category,
            "poi_ids": sorted(self.poi_ids) if self.poi_ids else None,
            "start_date": self.start_date,
            "end_date": self.end_date,
            "home_areas": sorted(self.home_areas) if self.home_areas else None,
            "affinity_brand": (self.affinity_brand or self.brand)
            if self.min_affinity is not None
            else None,
            "min_affinity": self.min_affinity,
        }


def request_days(config: AggregateInsightsConfig) -> list[str]:
    """The request's days inside the daily partitions (``LAKE_START_DATE`` onwards)."""
    first_day = date.fromisoformat(daily_partitions.get_first_partition_key())
    start = max(date.fromisoformat(config.start_date), first_day)
    return day_range(start, date.fromisoformat(config.end_date))


def load_visits(
    lake: LakeResource, days: list[str], poi_ids: set[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Visits to ``poi_ids`` on ``days`` and the days without published visits."""
    visits, found = VISITS.read_many(lake, days, columns=["device_id", "poi_id", "dwell_s"])
    missing = [d for d in days if d not in set(found)]
    return visits[visits["poi_id"].astype(str).isin(poi_ids)].reset_index(drop=True), missing


def load_homes_and_coverage(
    lake: LakeResource, days: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Home areas and area coverage from ``demographics`` (its device and area-coverage tables);
    without them, from ``home_location`` and the reference areas' population."""
    day = AREA_COVERAGE.latest(lake, days)
    if day:
        devices = DEMOGRAPHICS.read_or_empty(lake, day, columns=["device_id", "area_id"])
        cover = AREA_COVERAGE.read(lake, day, columns=["area_id", "population", "panel_devices"])
        return devices, cover, f"demographics {day}"
    areas = load_reference_areas(lake, columns=["area_id", "geometry_wkt", "population"])
    day = HOME_LOCATION.latest(lake, days)
    homes = (
        HOME_LOCATION.read(lake, day, columns=["device_id", "lat", "lon"])
        if day
        else pd.DataFrame(columns=["device_id", "lat", "lon"])
    )
    devices = home_areas(homes, areas).rename(columns={"home_area_id": "area_id"})
    counts = devices.groupby("area_id").size()
    cover = areas[["area_id", "population"]].assign(
        area_id=areas["area_id"].astype(str),
        panel_devices=lambda d: d["area_id"].map(counts).fillna(0).astype("int64"),
    )
    return devices, cover, f"home_location {day}" if day else "none"


def load_affinity(lake: LakeResource, days: list[str]) -> tuple[pd.DataFrame, str | None]:
    """Brand affinity of the last day of ``days`` that has it, and that day."""
    columns = ["device_id", "brand", "affinity"]
    day = BRAND_AFFINITY.latest(lake, days)
    if day is None:
        return pd.DataFrame(columns=columns), None
    return BRAND_AFFINITY.read(lake, day, columns=columns), day


def insights_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    config: AggregateInsightsConfig,
    key: str,
    days: list[str],
    poi_ids: set[str],
) -> tuple[Insights, list[str], str, str | None, dict[str, Any]]:
    """``compute_insights`` as one Spark job: the same inputs (chosen here from listings), the
    per-visitor table written by Spark to ``<key>/visitors.parquet/``, the aggregates back."""
    request = config.request()
    present = VISITS.present(lake, days)
    missing = [d for d in days if d not in set(present)]
    cover_day = AREA_COVERAGE.latest(lake, days)
    side: dict[str, pd.DataFrame] = {"pois": pd.DataFrame({"poi_id": sorted(poi_ids)})}
    region: float | None = None
    homes_day = None
    if cover_day:
        coverage = AREA_COVERAGE.read(
            lake, cover_day, columns=["area_id", "population", "panel_devices"]
        )
        home_source = f"demographics {cover_day}"
        per_area, region_factor = people_factors(coverage)
        side["factors"] = per_area.rename("people").rename_axis("area_id").reset_index()
        region = None if math.isnan(region_factor) else region_factor
    else:  # the job locates the homes and derives the factors from the areas' population
        areas = load_reference_areas(lake, columns=["area_id", "geometry_wkt", "population"])
        homes_day = HOME_LOCATION.latest(lake, days)
        home_source = f"home_location {homes_day}" if homes_day else "none"
        side["areas"] = areas
    affinity_day = BRAND_AFFINITY.latest(lake, days)
    visitors_key = f"{key}/visitors.parquet"
    lake.delete(visitors_key)
    with scratch(context, lake, side) as keys, spark_places(lake, spark) as places:
        if cover_day:
            devices: dict[str, Any] = {"demographics": places.input(DEMOGRAPHICS.key(cover_day))}
            factors = {"factors": places.input(keys["factors"]), "region": region}
        else:
            devices = {
                "homes": places.input(HOME_LOCATION.key(homes_day)) if homes_day else None,
                "areas": places.input(keys["areas"]),
            }
            factors = {}
        spec = {
            "pois": places.input(keys["pois"]),
            "visits": [places.input(VISITS.key(d)) for d in present],
            "devices": devices,
            **factors,
            "affinity": places.input(BRAND_AFFINITY.key(affinity_day)) if affinity_day else None,
            "segment": {
                "home_areas": config.home_areas,
                "affinity_brand": request["affinity_brand"],
                "min_affinity": config.min_affinity,
            },
            "visitors": places.output(visitors_key),
        }
        summary = run_profiles_job(context, spark, "insights", spec)
    figures = summary["figures"]
    figures["dwell_quantiles"] = {float(k): v for k, v in figures["dwell_quantiles"].items()}
    ins = assemble_insights(
        InsightFigures(**figures),
        pd.DataFrame(summary["mix"]),
        pd.DataFrame(summary["brands"]),
        None,
    )
    return ins, missing, home_source, affinity_day, engine_metadata(summary)


def write_outputs(
    lake: LakeResource,
    key: str,
    request: dict[str, Any],
    ins: Insights,
    png: bytes,
    summary: dict[str, Any],
    visitors_written: bool = False,
) -> None:
    """The request's tables, chart, report and summary under ``key`` (``insights_key``);
    ``visitors.parquet`` is already there (a folder of parts) when the Spark job wrote it."""
    lake.write_json(f"{key}/request.json", request)
    if not visitors_written:
        lake.delete(f"{key}/visitors.parquet")  # a folder of parts if Spark wrote it before
        lake.write_parquet(ins.visitors, f"{key}/visitors.parquet")
    lake.write_parquet(ins.dwell, f"{key}/dwell.parquet")
    lake.write_parquet(ins.home_mix, f"{key}/home_area_mix.parquet")
    lake.write_parquet(ins.affinity, f"{key}/brand_affinity.parquet")
    lake.write_bytes(f"{key}/chart.png", png)
    md = summary_markdown(request, ins, None)
    lake.write_bytes(f"{key}/summary.md", (md + "\n![chart](chart.png)\n").encode())
    lake.write_json(f"{key}/summary.json", summary)


def chart_title(config: AggregateInsightsConfig, places: int) -> str:
    what = config.brand or config.category or f"{places} places"
    return f"{what} {config.start_date}..{config.end_date}"


def describe(
    lake: LakeResource, key: str, ins: Insights, png: bytes, summary: dict[str, Any]
) -> dict[str, Any]:
    """Materialization metadata: the headline figures and the report (chart inline when small)."""
    request = summary["request"]
    inline = base64.b64encode(png).decode() if len(png) <= INLINE_CHART_MAX_BYTES else None
    return {
        "request_hash": key.rsplit("/", 1)[-1],
        "request": dg.MetadataValue.json(request),
        "dagster/row_count": ins.summary["visitors"],
        "visitors": ins.summary["visitors"],
        "visits": ins.summary["visits"],
        "estimated_people": ins.summary["estimated_people"],
        "median_dwell_s": ins.summary["dwell_s_quantiles"].get("p50"),
        "places": summary["places"],
        "days_read": summary["days"] - len(summary["missing_days"]),
        "days_missing": len(summary["missing_days"]),
        "home_source": summary["home_source"],
        "summary": dg.MetadataValue.md(summary_markdown(request, ins, inline)),
        "chart": dg.MetadataValue.path(lake.uri(f"{key}/chart.png")),
        "output": dg.MetadataValue.path(lake.uri(key)),
        "summary_json": dg.MetadataValue.json(json.loads(json.dumps(summary, default=str))),
    }


@dg.asset(
    deps=[
        "visits",
        "demographics",
        "home_location",
        "brand_affinity",
        "reference_pois",
        "reference_areas",
    ],
    group_name="insights",
    kinds={"pandas", "spark", "matplotlib"},
    op_tags={"platform/lane": "batch"},
    **internal_asset_args(tags={"trigger": "on-demand"}),
)
def aggregate_insights(
    context: dg.AssetExecutionContext,
    config: AggregateInsightsConfig,
    lake: LakeResource,
    spark: SparkResource,
) -> dg.MaterializeResult:
    """Visitors, estimated people, dwell distribution, home-area mix and brand affinity of the
    visitors of a brand, a category or a list of places over a date range, optionally for a
    segment (home areas, minimum brand affinity). On demand: launched with run config from the
    launchpad or the CLI; each request is written to ``insights/<request-hash>/``.

    The config is validated before any data is read: exactly one place selector, ISO dates,
    start <= end <= today, at most 366 days. Days before ``LAKE_START_DATE`` are left out;
    missing days are reported, not fatal. In-process or, with ``engine: spark``, one Spark job
    that writes the per-visitor table and returns the small aggregates.
    """
    request = config.request()
    key = insights_key(request_hash(request))
    days = request_days(config)
    pois = select_pois(load_reference_pois(lake), config.brand, config.category, config.poi_ids)
    if pois.empty:
        raise dg.Failure(f"no places match {request}", allow_retries=False)
    poi_ids = set(pois["poi_id"].astype(str))
    if config.engine == "spark":
        ins, missing, home_source, affinity_day, engine_meta = insights_spark(
            context, lake, spark, config, key, days, poi_ids
        )
    else:
        visits, missing = load_visits(lake, days, poi_ids)
        devices, coverage, home_source = load_homes_and_coverage(lake, days)
        affinity, affinity_day = load_affinity(lake, days)
        segment = segment_devices(
            devices, affinity, config.home_areas, request["affinity_brand"], config.min_affinity
        )
        ins = compute_insights(visits, devices, coverage, affinity, segment)
        engine_meta = {"engine": "pandas"}
    png = chart_png(ins, chart_title(config, len(poi_ids)))
    summary = {
        **ins.summary,
        "request": request,
        "places": len(poi_ids),
        "days": len(days),
        "missing_days": missing,
        "home_source": home_source,
        "affinity_day": affinity_day,
        "generated_at": datetime.now(UTC).isoformat(),
    }
    write_outputs(lake, key, request, ins, png, summary, engine_meta["engine"] == "spark")
    context.log.info(f"insights for {request} written to {lake.uri(key)}")
    return dg.MaterializeResult(metadata={**describe(lake, key, ins, png, summary), **engine_meta})


aggregate_insights_job = dg.define_asset_job(
    "aggregate_insights_job",
    selection=[aggregate_insights],
    tags={"platform/lane": "batch"},
    description="On-demand aggregate insights; launch with run config (see near_assets/insights.py).",
)

defs = dg.Definitions(assets=[aggregate_insights], jobs=[aggregate_insights_job])
