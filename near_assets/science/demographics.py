"""Demographics: what the census-like area around a device's home says about it.

Per device: the attributes (``population``, ``median_income``, age-band shares, ...) of the
area polygon that contains its home (STRtree point-in-polygon; a home outside every area is
left out). Per area: ``panel_devices`` (devices whose home is there), ``population`` and
``coverage`` = panel_devices / population, the panel's sampling rate that audience projection
divides by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

AREA_KEY_COLUMNS = ["area_id", "geometry_wkt"]


def area_attributes(areas: pd.DataFrame) -> list[str]:
    """Attribute columns of ``areas`` (everything but the id and the geometry)."""
    return [c for c in areas.columns if c not in AREA_KEY_COLUMNS]


def locate_areas(lat: np.ndarray, lon: np.ndarray, areas: pd.DataFrame) -> np.ndarray:
    """Row index into ``areas`` of the polygon containing each point (-1 when none)."""
    out = np.full(len(lat), -1, dtype=np.int64)
    if len(lat) == 0 or areas.empty:
        return out
    tree = shapely.STRtree(shapely.from_wkt(areas["geometry_wkt"].to_numpy()))
    pt, area = tree.query(shapely.points(np.asarray(lon), np.asarray(lat)), predicate="within")
    first = np.unique(pt, return_index=True)[1]
    out[pt[first]] = area[first]
    return out


def home_areas(homes: pd.DataFrame, areas: pd.DataFrame) -> pd.DataFrame:
    """``device_id, home_area_id``: the area polygon containing each home (lat/lon, WGS84).

    Homes outside every area are left out; a device listed twice keeps its first home.
    """
    if homes.empty or areas.empty:
        return pd.DataFrame({"device_id": [], "home_area_id": []}, dtype="object")
    idx = locate_areas(homes["lat"].to_numpy(float), homes["lon"].to_numpy(float), areas)
    found = idx >= 0
    out = pd.DataFrame(
        {
            "device_id": homes["device_id"].to_numpy()[found].astype(str),
            "home_area_id": areas["area_id"].to_numpy()[idx[found]].astype(str),
        }
    )
    return out.drop_duplicates("device_id").reset_index(drop=True)


def device_demographics(homes: pd.DataFrame, areas: pd.DataFrame) -> pd.DataFrame:
    """Per device with a home: device_id, area_id, home confidence and the area's attributes."""
    idx = locate_areas(homes["lat"].to_numpy(), homes["lon"].to_numpy(), areas)
    found = idx >= 0
    attrs = areas.drop(columns=["geometry_wkt"]).iloc[idx[found]].reset_index(drop=True)
    base = homes.loc[found, ["device_id", "confidence"]].reset_index(drop=True)
    return pd.concat([base, attrs], axis=1).sort_values("device_id", ignore_index=True)


def area_coverage(devices: pd.DataFrame, areas: pd.DataFrame) -> pd.DataFrame:
    """Per area: area_id, population, panel_devices and coverage (panel share of population)."""
    return coverage_from_counts(devices.groupby("area_id").size(), areas)


def coverage_from_counts(counts: pd.Series, areas: pd.DataFrame) -> pd.DataFrame:
    """``area_coverage`` from the panel devices per area (``counts``, indexed by area_id)."""
    out = areas[["area_id", "population"]].merge(
        counts.rename("panel_devices"), left_on="area_id", right_index=True, how="left"
    )
    out["panel_devices"] = out["panel_devices"].fillna(0).astype(np.int64)
    pop = out["population"].astype(float)
    out["coverage"] = np.where(pop > 0, out["panel_devices"] / pop.where(pop > 0, 1.0), np.nan)
    return out.sort_values("area_id", ignore_index=True)
