"""Validation of the reference data delivered upstream (POIs, areas, campaign rows). Pure: no
Dagster, no lake.

Each ``validate_*`` takes the rows of one or more files (a ``source_file`` column, and the row's
position in its file as ``source_row``) and returns ``(good, bad)``: ``good`` the rows that pass,
``bad`` the others with a ``reason`` column. Rules:

- **required columns** (``POI_REQUIRED``, ``AREA_REQUIRED``): a file without one of them has every
  row rejected ("file lacks required column(s) [...]"); optional contract columns (``name``,
  ``brand``, ``category``, ``median_income``) are added as nulls when absent;
- **ids**: non-null and non-empty; a duplicated id is **never merged**: rows identical in every
  column (a file delivered twice) keep the first and reject the copies ("exact duplicate of ...");
  conflicting rows with the same id are all rejected ("duplicate poi_id: n rows disagree"), since
  nothing says which is right;
- **geometry**: ``geometry_wkt`` must parse (the GEOS message is kept in the reason) and be a
  valid, non-empty Polygon or MultiPolygon;
- **areas**: ``population`` present, numeric and >= 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import shapely

POI_REQUIRED = ("poi_id", "geometry_wkt")
POI_OPTIONAL = ("name", "brand", "category")
AREA_REQUIRED = ("area_id", "geometry_wkt", "population")
AREA_OPTIONAL = ("median_income",)
SOURCE_COLUMNS = ("source_file", "source_row")
QUARANTINE_COLUMNS = ("kind", "source_file", "source_row", "row_id", "reason")
POLYGONAL = ("Polygon", "MultiPolygon")


def _reject(reasons: pd.Series, mask: pd.Series, reason: str | pd.Series) -> None:
    """Record ``reason`` on the rows of ``mask`` that have no reason yet (first reason wins)."""
    fresh = mask & reasons.isna()
    if isinstance(reason, pd.Series):
        reasons[fresh] = reason[fresh]
    else:
        reasons[fresh] = reason


def geometry_problems(wkt: pd.Series) -> pd.Series:
    """Per row: None for a valid non-empty (Multi)Polygon WKT, else why not."""
    values = wkt.astype(object).where(wkt.notna(), None).to_numpy()
    text = np.array([v if isinstance(v, str) else None for v in values], dtype=object)
    geoms = shapely.from_wkt(text, on_invalid="ignore")
    out = pd.Series([None] * len(wkt), index=wkt.index, dtype=object)
    for i, (raw, geom) in enumerate(zip(values, geoms, strict=True)):
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            out.iloc[i] = "geometry_wkt is null"
        elif not isinstance(raw, str):
            out.iloc[i] = f"geometry_wkt is not text ({type(raw).__name__})"
        elif geom is None:
            try:
                shapely.from_wkt(raw)
                out.iloc[i] = "invalid WKT"
            except Exception as exc:  # shapely.errors.GEOSException: keep GEOS's words
                out.iloc[i] = f"invalid WKT: {exc}"
        elif geom.geom_type not in POLYGONAL:
            out.iloc[i] = f"geometry is a {geom.geom_type}, not a Polygon"
        elif geom.is_empty:
            out.iloc[i] = "empty polygon"
        elif not geom.is_valid:
            out.iloc[i] = f"invalid polygon: {shapely.is_valid_reason(geom)}"
    return out


def _validate(
    df: pd.DataFrame,
    kind: str,
    id_column: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    extra: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = df.reset_index(drop=True).copy()
    for c, default in (("source_file", "-"), ("source_row", None)):
        if c not in df.columns:
            df[c] = default if c == "source_file" else np.arange(len(df))
    for c in optional:
        if c not in df.columns:
            df[c] = None
    reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
    for c in required:
        if c not in df.columns:
            df[c] = None
    # a file without a required column (absent, or null on every row): every row of that file
    for rows in df.groupby("source_file", sort=False).groups.values():
        sub = df.loc[rows]
        lacking = [c for c in required if sub[c].isna().all()]
        if lacking:
            _reject(reasons, pd.Series(df.index.isin(rows), index=df.index),
                    f"file lacks required column(s) {lacking}")  # fmt: skip
    ids = df[id_column]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    _reject(reasons, blank, f"{id_column} is null or empty")
    geometry = geometry_problems(df["geometry_wkt"])
    _reject(reasons, geometry.notna(), geometry)
    if extra is not None:
        more = extra(df)
        _reject(reasons, more.notna(), more)
    # duplicates among the rows still standing: exact copies keep the first, conflicts go
    content = [c for c in df.columns if c not in SOURCE_COLUMNS]
    alive = reasons.isna()
    standing = df[alive]
    exact = standing.astype(str).duplicated(subset=content, keep="first")
    first_of = standing.drop_duplicates(subset=content).set_index(id_column)
    for i in standing.index[exact.to_numpy()]:
        orig = first_of.loc[[df.at[i, id_column]]].iloc[0]
        reasons[i] = (
            f"exact duplicate of {id_column} {df.at[i, id_column]} "
            f"({orig['source_file']} row {orig['source_row']}); first kept"
        )
    alive = reasons.isna()
    ids = df[id_column].astype(str)
    counts = ids[alive].value_counts()
    conflicting = alive & ids.isin(counts[counts > 1].index)
    if conflicting.any():
        n = ids[conflicting].map(counts)
        _reject(
            reasons,
            conflicting,
            f"duplicate {id_column}: " + n.astype(str) + " rows disagree, none kept",
        )
    bad = df[reasons.notna()].copy()
    bad.insert(0, "reason", reasons[reasons.notna()].astype(str))
    bad.insert(0, "row_id", bad[id_column].astype(str).where(bad[id_column].notna(), None))
    bad.insert(0, "kind", kind)
    good = df[reasons.isna()].drop(columns=list(SOURCE_COLUMNS)).reset_index(drop=True)
    good[id_column] = good[id_column].astype(str)
    return good, bad.reset_index(drop=True)


def validate_pois(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(good POIs, rejected rows with ``reason``); see the module docstring."""
    return _validate(df, "pois", "poi_id", POI_REQUIRED, POI_OPTIONAL)


def population_problems(df: pd.DataFrame) -> pd.Series:
    """Per row: None when ``population`` is a number >= 0, else why not."""
    population = pd.to_numeric(df["population"], errors="coerce")
    wrong = population.isna() | (population < 0)
    reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
    reasons[wrong] = "population missing or negative: " + df.loc[wrong, "population"].astype(str)
    return reasons


def validate_areas(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(good areas, rejected rows with ``reason``): POI rules plus population present, >= 0."""
    good, bad = _validate(
        df, "areas", "area_id", AREA_REQUIRED, AREA_OPTIONAL, extra=population_problems
    )
    good["population"] = pd.to_numeric(good["population"]).astype("int64")
    return good, bad


def validate_campaign_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Campaign rows (``campaign_id, brand, start_date, end_date``): id and brand present, dates
    parse and start <= end, ids unique (conflicting duplicates rejected, exact copies kept once)."""
    df = df.reset_index(drop=True).copy()
    for c in ("campaign_id", "brand", "start_date", "end_date"):
        if c not in df.columns:
            df[c] = None
    reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
    _reject(reasons, df["campaign_id"].isna(), "campaign_id is null")
    _reject(reasons, df["brand"].isna() | (df["brand"].astype(str).str.strip() == ""), "no brand")
    start = pd.to_datetime(df["start_date"], errors="coerce")
    end = pd.to_datetime(df["end_date"], errors="coerce")
    _reject(reasons, start.isna() | end.isna(), "start_date or end_date is not a date")
    _reject(reasons, start > end, "start_date after end_date")
    alive = reasons.isna()
    exact = alive & df.astype(str).duplicated(keep="first")
    _reject(reasons, exact, "exact duplicate campaign row; first kept")
    alive = reasons.isna()
    counts = df.loc[alive, "campaign_id"].astype(str).value_counts()
    _reject(
        reasons,
        alive & df["campaign_id"].astype(str).isin(counts[counts > 1].index),
        "duplicate campaign_id with different contents, none kept",
    )
    bad = df[reasons.notna()].copy()
    bad.insert(0, "reason", reasons[reasons.notna()].astype(str))
    return df[reasons.isna()].reset_index(drop=True), bad.reset_index(drop=True)


def quarantine_frame(bad: pd.DataFrame) -> pd.DataFrame:
    """The rejected rows in the quarantine layout: kind, file, row, id, reason, then the row's
    own columns as text (files of one kind may disagree on types)."""
    if bad.empty:
        return pd.DataFrame({c: pd.Series(dtype=str) for c in QUARANTINE_COLUMNS})
    out = bad.copy()
    rest = [c for c in out.columns if c not in QUARANTINE_COLUMNS]
    out["source_row"] = pd.to_numeric(out["source_row"], errors="coerce").astype("Int64")
    for c in ("kind", "source_file", "row_id", "reason", *rest):
        out[c] = out[c].astype(object).where(out[c].notna(), None).astype("string")
    return out[[*QUARANTINE_COLUMNS, *rest]]


def reason_summary(bad: pd.DataFrame, limit: int = 5) -> str:
    """``poi_id P7 (pois.parquet row 3): invalid WKT: ...; ...`` for the first ``limit``."""
    parts = [
        f"{r.row_id} ({r.source_file} row {r.source_row}): {r.reason}"
        for r in bad.head(limit).itertuples()
    ]
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return "; ".join(parts) + more
