"""Visits: stay points matched to places of interest.

Stays (not raw pings) are joined to POI polygons: the stay centroid is matched to the nearest
POI polygon within ``max_distance_m`` metres (0 when the centroid lies inside it), using a
shapely ``STRtree`` over the polygons projected to local metres. A stay shorter than
``min_dwell_s`` is not a visit. ``dwell_s`` is the stay's duration (first to last ping at the
place), in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely

from near_assets.science.engine import per_device
from near_assets.science.stays import EARTH_M_PER_DEG

VISIT_COLUMNS = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s", "brand", "distance_m"]
VISIT_SCHEMA = (
    "device_id string, poi_id string, start_ts timestamp, end_ts timestamp, dwell_s double, "
    "brand string, distance_m double"
)


@dataclass(frozen=True)
class VisitParams:
    """Visit matching parameters.

    - ``max_distance_m`` (25): a stay centroid this close to a polygon (GPS noise at the
      edge) still visits it; inside the polygon the distance is 0.
    - ``min_dwell_s`` (300): shortest visit, seconds.
    """

    max_distance_m: float = 25.0
    min_dwell_s: float = 300.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PoiIndex:
    """POI polygons in a local metric projection with an STRtree over them."""

    def __init__(self, pois: pd.DataFrame):
        self.pois = pois.reset_index(drop=True)
        geoms = shapely.from_wkt(self.pois["geometry_wkt"].to_numpy())
        bounds = shapely.bounds(geoms)
        self.lat0 = float(np.nanmean((bounds[:, 1] + bounds[:, 3]) / 2)) if len(geoms) else 0.0
        self.kx = np.cos(np.radians(self.lat0)) * EARTH_M_PER_DEG
        self.geoms = shapely.transform(geoms, self._project)
        self.tree = shapely.STRtree(self.geoms)

    def _project(self, coords: np.ndarray) -> np.ndarray:
        return np.column_stack([coords[:, 0] * self.kx, coords[:, 1] * EARTH_M_PER_DEG])

    def points(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return shapely.points(np.asarray(lon) * self.kx, np.asarray(lat) * EARTH_M_PER_DEG)

    def nearest(
        self, lat: np.ndarray, lon: np.ndarray, max_distance_m: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(point index, poi row, distance in metres) of the nearest polygon within reach."""
        if len(self.pois) == 0 or len(lat) == 0:
            empty = np.array([], dtype=np.int64)
            return empty, empty, np.array([], dtype=np.float64)
        (pt, poi), dist = self.tree.query_nearest(
            self.points(lat, lon),
            max_distance=max_distance_m,
            return_distance=True,
            all_matches=False,
        )
        return pt.astype(np.int64), poi.astype(np.int64), dist


def match_visits(
    stays: pd.DataFrame,
    pois: pd.DataFrame | PoiIndex,
    max_distance_m: float = VisitParams.max_distance_m,
    min_dwell_s: float = VisitParams.min_dwell_s,
) -> pd.DataFrame:
    """Visits of ``stays`` (device_id, start_ts, end_ts, lat, lon) to ``pois`` polygons.

    Returns device_id, poi_id, start_ts, end_ts, dwell_s (seconds), brand (nullable) and
    distance_m (0 inside the polygon), one row per matched stay.
    """
    index = pois if isinstance(pois, PoiIndex) else PoiIndex(pois)
    dwell = (stays["end_ts"] - stays["start_ts"]).dt.total_seconds().to_numpy()
    keep = np.flatnonzero(dwell >= min_dwell_s)
    cand = stays.iloc[keep]
    pt, poi, dist = index.nearest(
        cand["lat"].to_numpy(np.float64), cand["lon"].to_numpy(np.float64), max_distance_m
    )
    rows = cand.iloc[pt]
    brand = (
        index.pois["brand"].to_numpy(object)[poi]
        if "brand" in index.pois
        else np.full(len(poi), None, dtype=object)
    )
    out = pd.DataFrame(
        {
            "device_id": rows["device_id"].to_numpy(object),
            "poi_id": index.pois["poi_id"].to_numpy(object)[poi],
            "start_ts": rows["start_ts"].to_numpy(),
            "end_ts": rows["end_ts"].to_numpy(),
            "dwell_s": dwell[keep][pt],
            "brand": brand,
            "distance_m": dist,
        }
    )
    out["start_ts"] = pd.to_datetime(out["start_ts"], utc=True)
    out["end_ts"] = pd.to_datetime(out["end_ts"], utc=True)
    return out.sort_values(["device_id", "start_ts"], kind="stable", ignore_index=True)


_INDEX: list[tuple[pd.DataFrame, PoiIndex]] = []


def poi_index(pois: pd.DataFrame) -> PoiIndex:
    """The ``PoiIndex`` of ``pois``, built once per DataFrame object (the last one is kept)."""
    if not _INDEX or _INDEX[0][0] is not pois:
        _INDEX[:] = [(pois, PoiIndex(pois))]
    return _INDEX[0][1]


@per_device(VISIT_SCHEMA)
def visits_per_device(
    stays: pd.DataFrame,
    *,
    pois: pd.DataFrame,
    max_distance_m: float = VisitParams.max_distance_m,
    min_dwell_s: float = VisitParams.min_dwell_s,
) -> pd.DataFrame:
    """``match_visits`` for the stays of whole devices, in ``VISIT_COLUMNS`` order.

    ``pois`` is the whole (validated) POI table; its index is built once per table object, so
    a Spark worker that calls this once per device bucket builds it once.
    """
    if stays.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in VISIT_COLUMNS})
    return match_visits(stays, poi_index(pois), max_distance_m, min_dwell_s)[VISIT_COLUMNS]
