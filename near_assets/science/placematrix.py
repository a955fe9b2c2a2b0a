"""PlaceMatrix: refined place boundaries from where visitors actually stay.

Delivered POI polygons are often wrong: shifted off the building, drawn around the whole parcel,
shrunk to the entrance, or overlapping a neighbour's in a shared building. Visitors' stay
points show where the place really is. Method (:func:`refine_boundaries`), in a local metric
projection:

1. **Evidence**: visit-like stays (``min_dwell_s`` .. ``max_dwell_s``: homes and work places,
   long, are left out) whose centroid lies within ``search_m`` of a delivered polygon.
2. **Split between adjacent POIs**: each stay goes to ONE POI: the nearest delivered polygon,
   ties (a stay inside several overlapping polygons) to the POI whose polygon centroid is
   nearest, so two shops drawn over one building share it at the middle of their centroids.
3. **Density**: each stay's density is the number of stays of the same POI within
   ``density_radius_m`` (a flat kernel, counted on a k-d tree); the core is the stays whose
   density is at least ``core_share`` of the POI's 90th percentile density (and >= 3). Core
   stays closer than ``density_radius_m`` are linked; of the connected clusters the POI keeps
   the one with the most distinct devices (a home or a neighbour's crowd next to the place is
   another cluster, so it is dropped).
4. **Footprint**: a rectangle in the delivered polygon's orientation (its minimum rotated
   rectangle: outlines are more often wrong in place and size than in angle). Per axis the
   cluster's ``quantile`` and ``1 - quantile`` give the extent of a uniform spread
   ((q_hi - q_lo) / (1 - 2 q)), times ``expand`` (visitors keep off the walls), centred on
   the middle of the two quantiles.
5. **Plausible sizes**: each side is clipped to ``min_side_m`` .. ``max_side_m`` and the area to
   ``max_area_m2``. Two refined footprints that overlap are cut at the perpendicular bisector
   of their centres (each keeps its own side of the overlap).
6. **Thin evidence**: a POI whose cluster has fewer than ``min_stays`` stays or ``min_devices``
   distinct devices keeps its delivered polygon (``source = 'delivered'``).

Everything is deterministic (no random draw) and vectorised over stays; per-POI work is numpy
group operations and shapely array functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from near_assets.science.stays import EARTH_M_PER_DEG

BOUNDARY_COLUMNS = [
    "poi_id",
    "geometry_wkt",
    "source",
    "stays_used",
    "devices_used",
    "area_m2",
    "delivered_area_m2",
    "iou_with_delivered",
    "shift_m",
]
SOURCES = ("placematrix", "delivered")


@dataclass(frozen=True)
class PlaceMatrixParams:
    """Parameters of :func:`refine_boundaries` (see the module doc for the method).

    ``quantile`` and ``expand`` were chosen on the generator's seed 11 (``bench/
    models_placematrix.py``; seed 23 held out): the generator's visitors stand within the
    central 75 % of each side, so a uniform extent times 1.35 restores the walls. On real data
    re-calibrate ``expand`` against a sample of surveyed footprints.
    """

    search_m: float = 70.0
    min_dwell_s: float = 300.0
    max_dwell_s: float = 4 * 3600.0
    density_radius_m: float = 8.0
    core_share: float = 0.25
    quantile: float = 0.05
    expand: float = 1.35
    min_stays: int = 20
    min_devices: int = 8
    min_side_m: float = 8.0
    max_side_m: float = 150.0
    max_area_m2: float = 15_000.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Projection:
    """Equirectangular projection to metres around ``lat0`` (exact to < 1 m over a city)."""

    lat0: float

    @property
    def kx(self) -> float:
        return float(np.cos(np.radians(self.lat0)) * EARTH_M_PER_DEG)

    def forward(self, coords: np.ndarray) -> np.ndarray:
        return np.column_stack([coords[:, 0] * self.kx, coords[:, 1] * EARTH_M_PER_DEG])

    def inverse(self, coords: np.ndarray) -> np.ndarray:
        return np.column_stack([coords[:, 0] / self.kx, coords[:, 1] / EARTH_M_PER_DEG])

    @classmethod
    def of(cls, geoms: np.ndarray) -> Projection:
        b = shapely.bounds(geoms)
        return cls(float(np.nanmean((b[:, 1] + b[:, 3]) / 2)) if len(geoms) else 0.0)


def polygons_m(wkt: Any, proj: Projection) -> np.ndarray:
    """WKT polygons (lon lat) to shapely polygons in metres."""
    return shapely.transform(shapely.from_wkt(np.asarray(wkt, dtype=object)), proj.forward)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise intersection over union of two arrays of polygons (same projection)."""
    inter = shapely.area(shapely.intersection(a, b))
    union = shapely.area(a) + shapely.area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass(frozen=True)
class PoiIndex:
    """The delivered polygons in metres and what every step needs of them (projection, centroid,
    orientation), built from the WHOLE POI list: the same arrays in-process and in every Spark
    worker, so the steps below give the same numbers on any subset of stays or POIs."""

    pois: pd.DataFrame
    proj: Projection
    delivered: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    tree: shapely.STRtree
    centroids: np.ndarray

    @classmethod
    def of(cls, pois: pd.DataFrame) -> PoiIndex:
        pois = pois.reset_index(drop=True)
        raw = shapely.from_wkt(pois["geometry_wkt"].to_numpy(object))
        proj = Projection.of(raw)
        delivered = shapely.transform(raw, proj.forward)
        angle = _angles(delivered)
        return cls(
            pois,
            proj,
            delivered,
            np.cos(angle),
            np.sin(angle),
            shapely.STRtree(delivered),
            shapely.centroid(delivered),
        )

    def __len__(self) -> int:
        return len(self.pois)


ASSIGNED_COLUMNS = ["poi", "device_id", "x", "y"]
""":func:`assign_stays`' output: the POI (row of the ``PoiIndex``), the device, metres."""
STAT_COLUMNS = ["poi", "stays", "devices", "cu", "cv", "wu", "wv"]
""":func:`cluster_stats`' output: one row per POI with a kept cluster (rotated frame, metres)."""


def _assign(xy: np.ndarray, index: PoiIndex, search_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(stay row, POI row) for each stay within ``search_m`` of a polygon: nearest polygon,
    ties to the nearest polygon centroid."""
    if len(xy) == 0 or len(index) == 0:
        e = np.array([], dtype=np.int64)
        return e, e
    pts = shapely.points(xy)
    pt, poi = index.tree.query(pts, predicate="dwithin", distance=search_m)
    d_poly = np.round(shapely.distance(pts[pt], index.delivered[poi]), 1)
    d_cent = shapely.distance(pts[pt], index.centroids[poi])
    order = np.lexsort((poi, d_cent, d_poly, pt))
    pt, poi = pt[order], poi[order]
    first = np.r_[True, pt[1:] != pt[:-1]]
    return pt[first].astype(np.int64), poi[first].astype(np.int64)


def visit_like(stays: pd.DataFrame, p: PlaceMatrixParams) -> np.ndarray:
    """Stays whose dwell is ``min_dwell_s`` .. ``max_dwell_s`` with a position (step 1)."""
    dwell = (stays["end_ts"] - stays["start_ts"]).dt.total_seconds().to_numpy()
    ok = (dwell >= p.min_dwell_s) & (dwell <= p.max_dwell_s)
    return ok & stays["lat"].notna().to_numpy() & stays["lon"].notna().to_numpy()


def assign_stays(
    stays: pd.DataFrame,
    index: PoiIndex,
    params: PlaceMatrixParams | None = None,
    carry: Sequence[str] = (),
) -> pd.DataFrame:
    """Steps 1-2 for any batch of stays (each stay on its own: batches give the same rows):
    the visit-like stays within ``search_m`` of a delivered polygon, each given to ONE POI
    (``ASSIGNED_COLUMNS``, then the ``carry`` columns of the stay; stays near no POI are
    dropped)."""
    p = params or PlaceMatrixParams()
    s = stays.loc[visit_like(stays, p), ["device_id", "lat", "lon", *carry]]
    xy = index.proj.forward(s[["lon", "lat"]].to_numpy(np.float64))
    pt, poi = _assign(xy, index, p.search_m)
    out = {
        "poi": poi,
        "device_id": s["device_id"].astype(str).to_numpy(object)[pt],
        "x": xy[pt, 0] if len(pt) else np.array([], np.float64),
        "y": xy[pt, 1] if len(pt) else np.array([], np.float64),
    }
    out.update({c: s[c].to_numpy()[pt] for c in carry})
    return pd.DataFrame(out)


def _clusters(xy: np.ndarray, group: np.ndarray, device: np.ndarray, p: PlaceMatrixParams):
    """Density per stay and the kept cluster (True) of each group (see module doc, step 3)."""
    n = len(xy)
    pairs = cKDTree(xy).query_pairs(p.density_radius_m, output_type="ndarray")
    if len(pairs):
        pairs = pairs[group[pairs[:, 0]] == group[pairs[:, 1]]]
    density = np.ones(n, dtype=np.int64)
    np.add.at(density, pairs[:, 0], 1)
    np.add.at(density, pairs[:, 1], 1)
    d90 = pd.Series(density).groupby(group).quantile(0.9)
    d90 = d90.reindex(np.arange(group.max() + 1 if n else 0)).to_numpy()[group]
    core = (density >= p.core_share * d90) & (density >= 3)
    link = pairs[core[pairs[:, 0]] & core[pairs[:, 1]]] if len(pairs) else pairs
    graph = coo_matrix((np.ones(len(link)), (link[:, 0], link[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    frame = pd.DataFrame({"g": group, "label": label, "dev": device})[core]
    devices = frame.groupby(["g", "label"])["dev"].nunique().rename("devs").reset_index()
    stays = frame.groupby(["g", "label"]).size().rename("stays").reset_index()
    best = devices.merge(stays, on=["g", "label"]).sort_values(
        ["g", "devs", "stays", "label"], ascending=[True, False, False, True]
    )
    best = best.drop_duplicates("g")
    keep = core & np.isin(label, best["label"].to_numpy())
    return density, keep


def cluster_stats(
    assigned: pd.DataFrame, index: PoiIndex, params: PlaceMatrixParams | None = None
) -> pd.DataFrame:
    """Steps 3-4 per POI, for the assigned stays of any set of WHOLE POIs (``STAT_COLUMNS``).

    The stays are first put in a canonical order (POI, device, position), so a POI's result
    does not depend on the other POIs of the call nor on the order the rows came in (the
    cluster labels break ties between equally large clusters)."""
    p = params or PlaceMatrixParams()
    a = assigned.sort_values(["poi", "device_id", "x", "y"], kind="stable", ignore_index=True)
    if a.empty:
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in STAT_COLUMNS}).astype(
            {"poi": np.int64, "stays": np.int64, "devices": np.int64}
        )
    xy = a[["x", "y"]].to_numpy(np.float64)
    group = a["poi"].to_numpy(np.int64)
    device = pd.factorize(a["device_id"].to_numpy(object))[0]
    _, keep = _clusters(xy, group, device, p)
    g, cxy, cdev = group[keep], xy[keep], device[keep]
    cos, sin = index.cos[g], index.sin[g]
    u = cxy[:, 0] * cos + cxy[:, 1] * sin
    v = -cxy[:, 0] * sin + cxy[:, 1] * cos
    by = pd.DataFrame({"g": g, "u": u, "v": v, "dev": cdev}).groupby("g")
    q = p.quantile
    lo, hi = by[["u", "v"]].quantile(q), by[["u", "v"]].quantile(1 - q)
    stat = pd.DataFrame(
        {
            "stays": by.size(),
            "devices": by["dev"].nunique(),
            "cu": (lo["u"] + hi["u"]) / 2,
            "cv": (lo["v"] + hi["v"]) / 2,
            "wu": (hi["u"] - lo["u"]) / (1 - 2 * q) * p.expand,
            "wv": (hi["v"] - lo["v"]) / (1 - 2 * q) * p.expand,
        }
    )
    stat = stat.rename_axis("poi").reset_index()
    return stat.astype({"poi": np.int64, "stays": np.int64, "devices": np.int64})[STAT_COLUMNS]


def _angles(geoms: np.ndarray) -> np.ndarray:
    """Angle (radians) of the first edge of each polygon's minimum rotated rectangle."""
    env = shapely.oriented_envelope(geoms)
    coords, index = shapely.get_coordinates(env, return_index=True)
    first = np.r_[True, index[1:] != index[:-1]]
    start = np.flatnonzero(first)
    out = np.zeros(len(geoms))
    ok = start + 1 < len(coords)
    s = start[ok]
    d = coords[s + 1] - coords[s]
    out[index[s]] = np.arctan2(d[:, 1], d[:, 0])
    return out


def _split_overlaps(polys: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """Cut every overlap between two refined footprints at the bisector of their centres
    (pairs in POI order)."""
    original, polys = polys, polys.copy()
    idx = np.flatnonzero(refined)
    if len(idx) < 2:
        return polys
    tree = shapely.STRtree(polys[idx])
    a, b = tree.query(polys[idx], predicate="intersects")
    keep = a < b
    a, b = idx[a[keep]], idx[b[keep]]
    order = np.lexsort((b, a))
    for i, j in zip(a[order].tolist(), b[order].tolist(), strict=True):
        inter = shapely.intersection(polys[i], polys[j])
        if shapely.area(inter) <= 1e-6:
            continue
        ci = np.array(shapely.get_coordinates(shapely.centroid(polys[i]))[0])
        cj = np.array(shapely.get_coordinates(shapely.centroid(polys[j]))[0])
        mid, nrm = (ci + cj) / 2, cj - ci
        if not np.any(nrm):
            continue
        nrm = nrm / np.hypot(*nrm)
        tan = np.array([-nrm[1], nrm[0]]) * 1e4
        far = nrm * 1e4
        side_i = shapely.Polygon([mid + tan, mid - tan, mid - tan - far, mid + tan - far])
        polys[i] = shapely.difference(polys[i], shapely.difference(inter, side_i))
        polys[j] = shapely.difference(polys[j], shapely.intersection(inter, side_i))
    bad = (shapely.get_type_id(polys) != 3) | shapely.is_empty(polys) | ~shapely.is_valid(polys)
    polys[bad] = original[bad]  # a cut that leaves no single polygon: keep the rectangle
    return polys


def footprints(
    index: PoiIndex, stats: pd.DataFrame, params: PlaceMatrixParams | None = None
) -> pd.DataFrame:
    """Steps 5-6 over ALL POIs from the per-POI ``stats`` (``STAT_COLUMNS``, any row order):
    the rectangles, their plausible sizes, the cuts between overlapping neighbours, thin
    evidence kept delivered; the output of :func:`refine_boundaries`."""
    p = params or PlaceMatrixParams()
    pois, delivered, n_poi = index.pois, index.delivered, len(index)
    stat = stats.sort_values("poi", ignore_index=True)
    polys = delivered.copy()
    stays_used = np.zeros(n_poi, dtype=np.int64)
    devices_used = np.zeros(n_poi, dtype=np.int64)
    refined = np.zeros(n_poi, dtype=bool)
    rows = stat["poi"].to_numpy(np.int64)
    stays_used[rows] = stat["stays"].to_numpy(np.int64)
    devices_used[rows] = stat["devices"].to_numpy(np.int64)
    good = ((stat["stays"] >= p.min_stays) & (stat["devices"] >= p.min_devices)).to_numpy()
    stat, rows = stat[good], rows[good]
    if len(rows):
        wu = np.clip(stat["wu"].to_numpy(np.float64), p.min_side_m, p.max_side_m)
        wv = np.clip(stat["wv"].to_numpy(np.float64), p.min_side_m, p.max_side_m)
        shrink = np.sqrt(np.minimum(1.0, p.max_area_m2 / (wu * wv)))
        wu, wv = wu * shrink, wv * shrink
        c, si = index.cos[rows], index.sin[rows]
        cu, cv = stat["cu"].to_numpy(np.float64), stat["cv"].to_numpy(np.float64)
        corners = []
        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)):
            uu, vv = cu + su * wu / 2, cv + sv * wv / 2
            corners.append(np.column_stack([uu * c - vv * si, uu * si + vv * c]))
        ring = np.stack(corners, axis=1)  # (k, 5, 2)
        polys[rows] = shapely.polygons(ring)
        refined[rows] = True
        polys = _split_overlaps(polys, refined)

    poly_wkt = np.where(
        refined,
        shapely.to_wkt(shapely.transform(polys, index.proj.inverse), rounding_precision=7),
        pois["geometry_wkt"].to_numpy(object),  # the delivered polygon, verbatim
    )
    shift = shapely.distance(shapely.centroid(polys), shapely.centroid(delivered))
    return pd.DataFrame(
        {
            "poi_id": pois["poi_id"].astype(str).to_numpy(object),
            "geometry_wkt": poly_wkt.astype(object),
            "source": np.where(refined, SOURCES[0], SOURCES[1]).astype(object),
            "stays_used": stays_used,
            "devices_used": devices_used,
            "area_m2": shapely.area(polys).round(1),
            "delivered_area_m2": shapely.area(delivered).round(1),
            "iou_with_delivered": iou(polys, delivered).round(4),
            "shift_m": np.round(shift, 1),
        }
    )[BOUNDARY_COLUMNS]


def refine_boundaries(
    stays: pd.DataFrame, pois: pd.DataFrame, params: PlaceMatrixParams | None = None
) -> pd.DataFrame:
    """Refined footprint of every POI of ``pois`` (poi_id, geometry_wkt) from ``stays``
    (device_id, start_ts, end_ts, lat, lon; a trailing window of days).

    Returns one row per POI (``BOUNDARY_COLUMNS``, in ``pois`` order): the footprint as WKT
    (WGS84), ``source`` ('placematrix' or 'delivered' when the evidence is thin), the stays and
    devices of the kept cluster, areas in m2, the IoU with the delivered polygon and the shift
    of the centroid (metres).

    The three steps (:func:`assign_stays` per stay, :func:`cluster_stats` per POI,
    :func:`footprints` over all POIs) are what the Spark engine runs on batches of stays and
    buckets of POIs (``near_assets/spark_jobs/placematrix.py``): the same rows either way.
    """
    p = params or PlaceMatrixParams()
    index = PoiIndex.of(pois)
    return footprints(index, cluster_stats(assign_stays(stays, index, p), index, p), p)


def boundary_invariants(df: pd.DataFrame) -> pd.Series:
    """Per row: a valid, non-empty polygon, a known source, IoU in [0, 1], counts >= 0."""
    geoms = shapely.from_wkt(df["geometry_wkt"].to_numpy(object), on_invalid="ignore")
    polygon = shapely.get_type_id(geoms) == 3
    valid = polygon & shapely.is_valid(geoms) & ~shapely.is_empty(geoms)
    return pd.Series(
        valid
        & df["source"].isin(SOURCES).to_numpy()
        & df["iou_with_delivered"].between(0, 1).to_numpy()
        & (df["stays_used"] >= 0).to_numpy()
        & (df["area_m2"] > 0).to_numpy(),
        index=df.index,
    )


def boundary_iou(found: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per POI of ``truth`` (poi_id, geometry_wkt): IoU of ``found``'s polygon with it."""
    merged = truth[["poi_id", "geometry_wkt"]].merge(
        found[["poi_id", "geometry_wkt"]], on="poi_id", suffixes=("_true", "")
    )
    t = shapely.from_wkt(merged["geometry_wkt_true"].to_numpy(object))
    proj = Projection.of(t)
    score = iou(
        shapely.transform(t, proj.forward), polygons_m(merged["geometry_wkt"].to_numpy(), proj)
    )
    return pd.DataFrame({"poi_id": merged["poi_id"].to_numpy(), "iou": score})


def with_boundaries(pois: pd.DataFrame, boundaries: pd.DataFrame | None) -> pd.DataFrame:
    """``pois`` with each polygon replaced by its refined boundary where one is given (the
    visits science matches against ``geometry_wkt``); POIs without one keep theirs."""
    if boundaries is None or boundaries.empty:
        return pois
    refined = boundaries.set_index("poi_id")["geometry_wkt"]
    new = pois["poi_id"].astype(str).map(refined)
    return pois.assign(geometry_wkt=new.fillna(pois["geometry_wkt"]).to_numpy(object))
