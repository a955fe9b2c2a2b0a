"""Aggregate insights on demand: who visits a set of places over a date range.

Given the visits to the selected places, the panel devices' home areas and the per-area panel
coverage (panel devices / population), compute:

- ``visitors``: distinct panel devices with at least one visit; ``visits``: visit count;
- ``estimated_people``: each visitor stands for ``1 / coverage`` people of its home area
  (``population / panel_devices``); visitors without a known home area use the region-wide
  factor (total population / total panel devices);
- the dwell-time distribution (seconds): quantiles and a histogram;
- the home-area mix: visitors, share and estimated people per home area;
- the brand affinity of the visitors: per brand, mean affinity and share with affinity > 0,
  compared with the whole panel (``index`` = visitors' mean - panel mean, in affinity units).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

DWELL_EDGES_S = np.array([0, 300, 600, 900, 1800, 2700, 3600, 5400, 7200, 10800, np.inf])


def request_hash(request: dict[str, Any]) -> str:
    """A stable 16-hex key for a request (canonical JSON, sorted keys, ``None`` dropped)."""
    canon = json.dumps(
        {k: v for k, v in sorted(request.items()) if v is not None}, sort_keys=True, default=str
    )
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def select_pois(
    pois: pd.DataFrame,
    brand: str | None = None,
    category: str | None = None,
    poi_ids: list[str] | None = None,
) -> pd.DataFrame:
    """The places of the request (exactly one selector is expected to be set)."""
    if brand is not None:
        mask = pois["brand"] == brand
    elif category is not None:
        mask = pois["category"] == category
    else:
        mask = pois["poi_id"].astype(str).isin(poi_ids or [])
    return pois.loc[mask.fillna(False)].reset_index(drop=True)


def people_factors(coverage: pd.DataFrame) -> tuple[pd.Series, float]:
    """People per panel device per area (``population / panel_devices``) and the region factor."""
    cov = coverage[coverage["panel_devices"] > 0]
    per_area = (cov["population"] / cov["panel_devices"]).set_axis(cov["area_id"].astype(str))
    total_dev = float(coverage["panel_devices"].sum())
    region = float(coverage["population"].sum()) / total_dev if total_dev else float("nan")
    return per_area, region


def segment_devices(
    devices: pd.DataFrame,
    affinity: pd.DataFrame,
    home_areas: list[str] | None = None,
    affinity_brand: str | None = None,
    min_affinity: float | None = None,
) -> pd.Index | None:
    """Devices in the requested segment, or ``None`` when no segment is requested."""
    keep: pd.Index | None = None
    if home_areas:
        keep = pd.Index(
            devices.loc[devices["area_id"].astype(str).isin(home_areas), "device_id"].astype(str)
        )
    if min_affinity is not None and affinity_brand is not None:
        aff = affinity[
            (affinity["brand"] == affinity_brand) & (affinity["affinity"] >= min_affinity)
        ]
        ids = pd.Index(aff["device_id"].astype(str).unique())
        keep = ids if keep is None else keep.intersection(ids)
    return keep


@dataclass
class Insights:
    """The result of one request: headline figures and the tables behind them."""

    summary: dict[str, Any]
    dwell: pd.DataFrame
    home_mix: pd.DataFrame
    affinity: pd.DataFrame
    visitors: pd.DataFrame


def compute_insights(
    visits: pd.DataFrame,
    devices: pd.DataFrame,
    coverage: pd.DataFrame,
    affinity: pd.DataFrame,
    segment: pd.Index | None = None,
    top_brands: int = 15,
) -> Insights:
    """Aggregate the visits (``device_id, poi_id, dwell_s``) to the selected places.

    ``devices``: ``device_id, area_id`` (home area); ``coverage``: ``area_id, population,
    panel_devices``; ``affinity``: ``device_id, brand, affinity``; ``segment``: devices to keep.
    """
    v = visits.copy()
    v["device_id"] = v["device_id"].astype(str)
    if segment is not None:
        v = v[v["device_id"].isin(segment)]
    home = devices.assign(device_id=devices["device_id"].astype(str)).drop_duplicates("device_id")
    home = home.set_index("device_id")["area_id"].astype(str)
    per_area, region = people_factors(coverage)

    per_dev = v.groupby("device_id").agg(visits=("poi_id", "size"), dwell_s=("dwell_s", "sum"))
    per_dev["area_id"] = home.reindex(per_dev.index)
    per_dev["people"] = per_dev["area_id"].map(per_area).fillna(region)
    per_dev = per_dev.reset_index()

    dwell = v["dwell_s"].astype(float).dropna()
    hist, _ = np.histogram(dwell, bins=DWELL_EDGES_S)
    mix = (
        per_dev.assign(area_id=per_dev["area_id"].fillna("unknown"))
        .groupby("area_id")
        .agg(visitors=("device_id", "size"), estimated_people=("people", "sum"))
        .reset_index()
    )
    aff = affinity.assign(device_id=affinity["device_id"].astype(str))
    panel_mean = aff.groupby("brand")["affinity"].mean()
    vis_aff = aff[aff["device_id"].isin(per_dev["device_id"])]
    brands = (
        vis_aff.groupby("brand")
        .agg(
            visitors=("device_id", "nunique"),
            mean_affinity=("affinity", "mean"),
            share_positive=("affinity", lambda s: float((s > 0).mean())),
        )
        .reset_index()
    )
    brands["panel_mean_affinity"] = brands["brand"].map(panel_mean)
    q = dwell.quantile(DWELL_QUANTILES) if len(dwell) else pd.Series(dtype=float)
    figures = InsightFigures(
        visitors=len(per_dev),
        visits=len(v),
        people=float(per_dev["people"].sum()),
        visitors_with_home_area=int(per_dev["area_id"].notna().sum()),
        home_areas=int(per_dev["area_id"].nunique()),
        dwell_counts=[int(x) for x in hist],
        dwell_n=len(dwell),
        dwell_quantiles={float(k): float(x) for k, x in q.items()},
        dwell_mean=float(dwell.mean()) if len(dwell) else None,
    )
    return assemble_insights(figures, mix, brands, per_dev, top_brands)


DWELL_QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9]


@dataclass
class InsightFigures:
    """The scalar aggregates of one request (both engines compute these, then
    ``assemble_insights`` builds the same tables and summary from them)."""

    visitors: int
    visits: int
    people: float
    """Sum of the visitors' people factors (estimated people before rounding)."""
    visitors_with_home_area: int
    home_areas: int
    dwell_counts: list[int]
    """Visits per ``DWELL_EDGES_S`` bin (non-null dwell only)."""
    dwell_n: int
    """Visits with a dwell time."""
    dwell_quantiles: dict[float, float]
    """Linear-interpolation quantiles (``DWELL_QUANTILES``) of the non-null dwell; {} when none."""
    dwell_mean: float | None


def assemble_insights(
    figures: InsightFigures,
    mix: pd.DataFrame,
    brands: pd.DataFrame,
    visitors: pd.DataFrame | None,
    top_brands: int = 15,
) -> Insights:
    """``Insights`` from the aggregates: ``mix`` (area_id with "unknown" for no home area,
    visitors, estimated_people), ``brands`` (brand, visitors, mean_affinity, share_positive,
    panel_mean_affinity), ``visitors`` (per-device table, or None when it stays in the lake)."""
    labels = [
        f"{int(a // 60)}-{int(b // 60)} min" if np.isfinite(b) else f">= {int(a // 60)} min"
        for a, b in itertools.pairwise(DWELL_EDGES_S)
    ]
    hist = np.asarray(figures.dwell_counts, dtype="int64")
    dwell_df = pd.DataFrame(
        {
            "bin": labels,
            "low_s": DWELL_EDGES_S[:-1],
            "visits": hist,
            "share": hist / max(figures.dwell_n, 1),
        }
    )
    n_vis = figures.visitors
    mix = mix.sort_values(["visitors", "area_id"], ascending=[False, True]).reset_index(drop=True)
    mix["visitors"] = mix["visitors"].astype("int64")
    mix["share"] = mix["visitors"] / max(n_vis, 1)
    brands = brands.assign(index=brands["mean_affinity"] - brands["panel_mean_affinity"])
    brands["visitors"] = brands["visitors"].astype("int64")
    brands = brands.sort_values(
        ["mean_affinity", "visitors", "brand"], ascending=[False, False, True]
    ).head(top_brands)
    q = figures.dwell_quantiles
    summary = {
        "visitors": int(n_vis),
        "visits": int(figures.visits),
        "estimated_people": int(np.round(figures.people)) if n_vis else 0,
        "visitors_with_home_area": int(figures.visitors_with_home_area),
        "home_areas": int(figures.home_areas),
        "dwell_s_quantiles": {f"p{int(k * 100)}": round(float(x), 1) for k, x in q.items()},
        "dwell_s_mean": round(float(figures.dwell_mean), 1)
        if figures.dwell_mean is not None
        else None,
        "visits_per_visitor": round(figures.visits / n_vis, 3) if n_vis else None,
    }
    if visitors is None:
        visitors = pd.DataFrame(columns=VISITOR_COLUMNS)
    return Insights(summary, dwell_df, mix, brands.reset_index(drop=True), visitors)


VISITOR_COLUMNS = ["device_id", "visits", "dwell_s", "area_id", "people"]


def summary_markdown(request: dict[str, Any], ins: Insights, chart_b64: str | None = None) -> str:
    """A short analyst-facing report."""
    s = ins.summary
    sel = {k: v for k, v in request.items() if v not in (None, [], "")}
    lines = [
        "# Aggregate insights",
        "",
        "Request: " + ", ".join(f"`{k}={v}`" for k, v in sel.items()),
        "",
        "| figure | value |",
        "|---|---|",
        f"| visitors (panel devices) | {s['visitors']:,} |",
        f"| visits | {s['visits']:,} |",
        f"| estimated people | {s['estimated_people']:,} |",
        f"| median dwell | {s['dwell_s_quantiles'].get('p50', 0) / 60:.1f} min |",
        f"| home areas | {s['home_areas']} |",
        "",
        "## Home-area mix (top 10)",
        "",
        "| area | visitors | share | estimated people |",
        "|---|---|---|---|",
    ]
    for r in ins.home_mix.head(10).itertuples():
        lines.append(f"| {r.area_id} | {r.visitors} | {r.share:.1%} | {r.estimated_people:,.0f} |")
    lines += ["", "## Brand affinity of the visitors (top 10)", ""]
    lines += ["| brand | visitors | mean affinity | vs panel |", "|---|---|---|---|"]
    for r in ins.affinity.head(10).itertuples():
        lines.append(f"| {r.brand} | {r.visitors} | {r.mean_affinity:.2f} | {r.index:+.2f} |")
    if chart_b64:
        lines += ["", f"![chart](data:image/png;base64,{chart_b64})"]
    return "\n".join(lines) + "\n"


def chart_png(ins: Insights, title: str) -> bytes:
    """Dwell histogram and home-area mix, as a small PNG (matplotlib, Agg backend)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=80)
    ax1.bar(range(len(ins.dwell)), ins.dwell["visits"], color="#3b6ea5")
    ax1.set_xticks(range(len(ins.dwell)), ins.dwell["bin"], rotation=60, ha="right", fontsize=7)
    ax1.set_title("dwell time (visits)", fontsize=9)
    mix = ins.home_mix.head(10)
    ax2.barh(mix["area_id"].astype(str)[::-1], mix["visitors"][::-1], color="#d08c2c")
    ax2.set_title("home areas (visitors, top 10)", fontsize=9)
    ax2.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
