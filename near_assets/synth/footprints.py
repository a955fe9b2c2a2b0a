"""True POI footprints that differ from the delivered polygons (option ``footprints``).

Real POI polygons are traced, geocoded or guessed: shifted off the building, drawn around the
whole parcel, reduced to a small box at the entrance, or one outline for several shops sharing a
building. With the option, the city's POI boxes become the TRUE footprints (where visitors
stand) and ``reference/pois`` delivers a distorted polygon per POI, one kind each:

- ``exact`` (20 %): the true box, a couple of metres off, +-10 % in size;
- ``offset`` (30 %): the true box's size, its centre 30-60 m away in a random direction;
- ``oversized`` (20 %): 1.6-2.5 times the true box per side, the true box inside it;
- ``undersized`` (10 %): 0.35-0.6 times the true box per side, inside it;
- ``shared`` (20 %, in pairs): a guest POI moves into a host's building; the building is split
  in two halves along its long side (the true footprints) and each delivered polygon runs from
  its own end of the building to 70-90 % of the way across (they overlap in the middle).

Every visit's stay spot is drawn uniformly inside the central 75 % (per side) of the true box and
its pings wander a little around that spot, so the visitors' pings fall inside the TRUE
footprint. Truth: ``truth/poi_footprints/part-0.parquet``. The draws use their own keys (630,
631): without the option the output is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from near_assets.synth.city import City, _polygon_wkt

KINDS = ("exact", "offset", "oversized", "undersized", "shared")
SHARES = (0.2, 0.3, 0.2, 0.1, 0.2)
SPOT_SHARE = 0.75
"""A visit's stay spot is uniform within this share of the true half-sides."""
PING_WANDER = 0.35
"""``sample_pings`` wanders pings within 0.6 x the half-sides it is given: given the true ones
times this, pings stay within 0.21 x half-sides of the spot (inside the footprint)."""
MIN_SHARED_HALF_M = 22.0


@dataclass
class FootprintPlan:
    """True footprints (local metres) and the truth table (WGS84 polygons)."""

    center: np.ndarray  # (pois, 2) true box centres, metres
    half: np.ndarray  # (pois, 2) true half-sides, metres
    table: pd.DataFrame


def _area_iou(c1: np.ndarray, h1: np.ndarray, c2: np.ndarray, h2: np.ndarray) -> np.ndarray:
    lo = np.maximum(c1 - h1, c2 - h2)
    hi = np.minimum(c1 + h1, c2 + h2)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(2 * h1, axis=1) + np.prod(2 * h2, axis=1) - inter
    return inter / union


def plan_footprints(seed: int, city: City) -> tuple[City, FootprintPlan]:
    """Draw each POI's kind, its true footprint and its delivered polygon.

    Returns the city with the delivered polygons in ``pois.geometry_wkt`` and the true boxes in
    ``poi_xy`` / ``poi_half`` (what the simulation uses), and the plan with the truth table.
    """
    rng = np.random.default_rng([seed, 630])
    n = len(city.pois)
    center = city.poi_xy.astype(np.float64).copy()
    half = city.poi_half.astype(np.float64).copy()
    kind = rng.choice(len(KINDS), n, p=np.array(SHARES) / sum(SHARES))
    partner = np.full(n, -1, dtype=np.int64)

    shared = np.flatnonzero(kind == KINDS.index("shared"))
    shared = shared[rng.permutation(len(shared))]
    if len(shared) % 2:  # an odd one out is delivered exactly
        kind[shared[-1]] = KINDS.index("exact")
        shared = shared[:-1]
    host, guest = shared[0::2], shared[1::2]
    partner[host], partner[guest] = guest, host

    d_center = center.copy()
    d_half = half.copy()
    # exact
    m = kind == KINDS.index("exact")
    d_center[m] += rng.normal(0.0, 2.0, (m.sum(), 2))
    d_half[m] *= rng.uniform(0.9, 1.1, (m.sum(), 2))
    # offset
    m = kind == KINDS.index("offset")
    r = rng.uniform(30.0, 60.0, m.sum())
    theta = rng.uniform(0, 2 * np.pi, m.sum())
    d_center[m] += np.column_stack([r * np.cos(theta), r * np.sin(theta)])
    d_half[m] *= rng.uniform(0.9, 1.1, (m.sum(), 2))
    # oversized: the true box inside a bigger one
    m = kind == KINDS.index("oversized")
    d_half[m] = half[m] * rng.uniform(1.6, 2.5, (m.sum(), 2))
    d_center[m] += rng.uniform(-1, 1, (m.sum(), 2)) * (d_half[m] - half[m])
    # undersized: a small box inside the true one
    m = kind == KINDS.index("undersized")
    d_half[m] = half[m] * rng.uniform(0.35, 0.6, (m.sum(), 2))
    d_center[m] += rng.uniform(-1, 1, (m.sum(), 2)) * (half[m] - d_half[m])
    # shared: the guest moves into the host's building, split along its long side
    if len(host):
        bc, bh = center[host].copy(), half[host].copy()
        axis = (bh[:, 1] > bh[:, 0]).astype(np.int64)  # 0: split along x
        rows = np.arange(len(host))
        bh[rows, axis] = np.maximum(bh[rows, axis], MIN_SHARED_HALF_M)
        step = np.zeros_like(bc)
        step[rows, axis] = bh[rows, axis] / 2
        sub = bh.copy()
        sub[rows, axis] = bh[rows, axis] / 2
        center[host], center[guest] = bc - step, bc + step
        half[host], half[guest] = sub, sub
        reach = rng.uniform(0.7, 0.9, (len(host), 2))  # share of the building each one covers
        for who, sign, f in ((host, -1.0, reach[:, 0]), (guest, 1.0, reach[:, 1])):
            dh = bh.copy()
            dh[rows, axis] = bh[rows, axis] * f
            dc = bc.copy()
            dc[rows, axis] = bc[rows, axis] + sign * bh[rows, axis] * (1 - f)
            d_center[who], d_half[who] = dc, dh

    frame = city.frame
    delivered = _polygon_wkt(*(d_center - d_half).T, *(d_center + d_half).T, frame)
    true_wkt = _polygon_wkt(*(center - half).T, *(center + half).T, frame)
    pois = city.pois.assign(geometry_wkt=delivered)
    ids = city.pois["poi_id"].to_numpy(object)
    table = pd.DataFrame(
        {
            "poi_id": ids.astype(str),
            "kind": np.array(KINDS, dtype=object)[kind].astype(str),
            "partner_poi_id": pd.array(
                np.where(partner >= 0, ids[np.maximum(partner, 0)], None), dtype="string"
            ),
            "geometry_wkt": true_wkt,
            "delivered_wkt": delivered,
            "area_m2": np.prod(2 * half, axis=1).round(1),
            "delivered_area_m2": np.prod(2 * d_half, axis=1).round(1),
            "iou_delivered": _area_iou(center, half, d_center, d_half).round(4),
        }
    )
    moved = replace(city, pois=pois, poi_xy=center, poi_half=half)
    return moved, FootprintPlan(center=center, half=half, table=table)


def spread_stays(
    rng: np.random.Generator, poi: np.ndarray, x: np.ndarray, y: np.ndarray, plan: FootprintPlan
) -> None:
    """Move each POI stay (``poi >= 0``) to a uniform spot inside its true footprint, in place."""
    at = np.flatnonzero(poi >= 0)
    u = rng.uniform(-SPOT_SHARE, SPOT_SHARE, (len(at), 2))
    x[at] = plan.center[poi[at], 0] + u[:, 0] * plan.half[poi[at], 0]
    y[at] = plan.center[poi[at], 1] + u[:, 1] * plan.half[poi[at], 1]
