"""High-density points (HDPs), learnt from the pings themselves.

An HDP is a coordinate (or a cell of a few metres) that many unrelated devices report although
they are not there: a cell tower's position, an IP-geolocation centroid, an SDK's default
coordinate. A busy real place (a mall) also gathers many devices, but spread over its footprint
and with the varied accuracies of real fixes. The method, per UTC day (``day_cells``):

1. snap every ping to a grid cell of ``cell_deg`` degrees (1e-4: about 11 x 8 m) and count the
   distinct devices per cell;
2. for the cells with at least ``min_devices`` devices, the *local density* is the mean number
   of devices per cell over the ``(2 ring + 1)^2 - 1`` cells around it; the *concentration* is
   ``devices / (local density + 1)``: an HDP stands alone, a mall's cells have busy neighbours;
3. the *accuracy pattern*: the number of the cell's devices that report one identical
   ``accuracy_m`` value (a missing accuracy counts as one value): fake fixes share a constant,
   real fixes scatter. Beside a busy place the cell's devices mix the HDP's and the place's,
   so this count is what stands out: ``accuracy_devices / (local density + 1)``;
4. a cell is *flagged* that day when at least ``min_devices`` devices share one accuracy and
   that count is >= ``min_acc_ratio`` x (local density + 1), or when it is overwhelming
   (``strong_devices`` devices and concentration >= ``min_ratio``) whatever the accuracies.

The maintained list (``maintain_list``) holds the cells flagged on at least ``min_days`` of the
trailing ``window_days`` days (persistence: a one-day crowd is not an HDP; a real place is
not flagged day after day), each with its dominant exact point. An entry is ``exact_point``
when most devices of its accuracy pattern report that one exact coordinate (towers, SDK
defaults): then only pings on that coordinate are removed, so a real place's pings in the same
cell stay; otherwise (IP centroids rounded differently) the whole ~11 m cell is. ``on_hdp``
marks the pings a list removes; neighbouring cells are never touched.

Units: degrees (WGS84), metres, counts of distinct devices. Pure and vectorised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

LAT_SPAN = 4_000_000
"""Cell code = (lat index + LAT_SPAN / 2) * LAT_SPAN + (lon index + LAT_SPAN / 2)."""
CELL_COLUMNS = [
    "cell",
    "lat",
    "lon",
    "devices",
    "pings",
    "point_devices",
    "local_density",
    "concentration",
    "accuracy_share",
    "accuracy_devices",
    "flagged",
]
EXACT_SHARE = 0.8
"""An entry is an exact point when this share of its patterned devices report one coordinate."""
LIST_COLUMNS = [
    "cell",
    "lat",
    "lon",
    "days_flagged",
    "days_seen",
    "devices_median",
    "concentration_median",
    "accuracy_share_median",
    "first_flagged",
    "last_flagged",
    "exact_point",
]


@dataclass(frozen=True)
class HdpParams:
    cell_deg: float = 1e-4
    """Grid cell side in degrees (1e-4: ~11 m north-south)."""
    ring: int = 3
    """Neighbourhood half-width in cells for the local density (3: a 7 x 7 block)."""
    min_devices: int = 5
    """Cells with fewer distinct devices a day are never HDPs."""
    min_acc_ratio: float = 0.75
    """Devices sharing one accuracy / (local density + 1) a flagged cell needs."""
    strong_devices: int = 50
    """Devices that flag a concentrated cell whatever its accuracies ..."""
    min_ratio: float = 4.0
    """... when its concentration (devices / (local density + 1)) is at least this."""
    window_days: int = 7
    """Trailing days the list looks at."""
    min_days: int = 2
    """Days flagged within the window to be listed."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cell_codes(lat: np.ndarray, lon: np.ndarray, cell_deg: float) -> np.ndarray:
    """Grid cell of each coordinate (nearest cell centre, so 4-decimal fixes sit mid-cell)."""
    half = LAT_SPAN // 2
    iy = np.floor(np.asarray(lat, dtype=np.float64) / cell_deg + 0.5).astype(np.int64)
    ix = np.floor(np.asarray(lon, dtype=np.float64) / cell_deg + 0.5).astype(np.int64)
    return (iy + half) * LAT_SPAN + (ix + half)


def cell_centre(cell: np.ndarray, cell_deg: float) -> tuple[np.ndarray, np.ndarray]:
    half = LAT_SPAN // 2
    iy, ix = np.divmod(np.asarray(cell, dtype=np.int64), LAT_SPAN)
    return (iy - half) * cell_deg, (ix - half) * cell_deg


def empty_cells() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell": pd.Series(dtype=np.int64),
            **{c: pd.Series(dtype=np.float64) for c in ("lat", "lon")},
            **{
                c: pd.Series(dtype=np.int64)
                for c in ("devices", "pings", "point_devices", "accuracy_devices")
            },
            **{
                c: pd.Series(dtype=np.float64)
                for c in ("local_density", "concentration", "accuracy_share")
            },
            "flagged": pd.Series(dtype=bool),
        }
    )


def day_cells(pings: pd.DataFrame, params: HdpParams = HdpParams()) -> pd.DataFrame:
    """One day's dense cells with their figures and whether each is flagged (``CELL_COLUMNS``).

    ``pings``: device_id, lat, lon, accuracy_m (clean rows of one day). ``lat``/``lon`` of a
    cell are its dominant exact point (the coordinate most of the devices that share the cell's
    modal accuracy reported).
    """
    if pings.empty:
        return empty_cells()
    dev = pd.factorize(pings["device_id"])[0].astype(np.int64)
    lat = pings["lat"].to_numpy(dtype=np.float64)
    lon = pings["lon"].to_numpy(dtype=np.float64)
    cell = cell_codes(lat, lon, params.cell_deg)
    pairs = pd.DataFrame({"cell": cell, "dev": dev}).drop_duplicates()
    devices = pairs["cell"].value_counts()
    dense = devices[devices >= params.min_devices]
    if dense.empty:
        return empty_cells()
    codes = dense.index.to_numpy(dtype=np.int64)
    around = np.zeros(len(codes))
    r = params.ring
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy or dx:
                around += devices.reindex(codes + dy * LAT_SPAN + dx, fill_value=0).to_numpy()
    local = around / ((2 * r + 1) ** 2 - 1)

    inside = np.isin(cell, codes)
    acc = pings["accuracy_m"].to_numpy(dtype=np.float64)[inside]
    rows = pd.DataFrame(
        {
            "cell": cell[inside],
            "dev": dev[inside],
            "lat": lat[inside],
            "lon": lon[inside],
            "acc": np.where(np.isnan(acc), -1.0, acc),
        }
    )
    # the accuracy pattern: the value most devices of the cell share, and the exact point most
    # of those devices report (an HDP's own point even when a busy place shares its cell)
    by_acc = (
        rows.groupby(["cell", "acc"], sort=False)["dev"]
        .nunique()
        .reset_index()
        .sort_values(["cell", "dev", "acc"], ascending=[True, False, True])
        .drop_duplicates("cell")
        .set_index("cell")
    )
    acc_devices = by_acc["dev"]
    patterned = rows[rows["acc"].to_numpy() == by_acc["acc"].reindex(rows["cell"]).to_numpy()]
    point = (
        patterned.groupby(["cell", "lat", "lon"], sort=False)["dev"]
        .nunique()
        .reset_index()
        .sort_values(["cell", "dev", "lat", "lon"], ascending=[True, False, True, True])
        .drop_duplicates("cell")
        .set_index("cell")
    )
    n = dense.to_numpy(dtype=np.int64)
    out = pd.DataFrame(
        {
            "cell": codes,
            "lat": point["lat"].reindex(codes).to_numpy(),
            "lon": point["lon"].reindex(codes).to_numpy(),
            "devices": n,
            "pings": rows["cell"].value_counts().reindex(codes).to_numpy(dtype=np.int64),
            "point_devices": point["dev"].reindex(codes).to_numpy(dtype=np.int64),
            "local_density": local,
            "concentration": n / (local + 1.0),
            "accuracy_share": acc_devices.reindex(codes).to_numpy() / n,
            "accuracy_devices": acc_devices.reindex(codes).to_numpy(dtype=np.int64),
        }
    )
    patterned = (out["accuracy_devices"] >= params.min_devices) & (
        out["accuracy_devices"] >= params.min_acc_ratio * (local + 1.0)
    )
    strong = (out["devices"] >= params.strong_devices) & (out["concentration"] >= params.min_ratio)
    out["flagged"] = patterned | strong
    return out.sort_values("cell", ignore_index=True)[CELL_COLUMNS]


def maintain_list(cells: pd.DataFrame, day: str, params: HdpParams = HdpParams()) -> pd.DataFrame:
    """The HDP list as of ``day`` from the window's daily cells (``day_cells`` plus a ``date``
    column, the trailing ``window_days`` days ending with ``day``): cells flagged on at least
    ``min_days`` days (``LIST_COLUMNS``)."""
    if cells.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LIST_COLUMNS})
    window = cells[cells["date"] <= day]
    flagged = window[window["flagged"].astype(bool)]
    g = flagged.groupby("cell")
    listed = pd.DataFrame(
        {
            "days_flagged": g["date"].nunique(),
            "devices_median": g["devices"].median(),
            "concentration_median": g["concentration"].median(),
            "accuracy_share_median": g["accuracy_share"].median(),
            "first_flagged": g["date"].min(),
            "last_flagged": g["date"].max(),
            "exact_point": (flagged["point_devices"] / flagged["accuracy_devices"].clip(lower=1))
            .groupby(flagged["cell"])
            .median()
            >= EXACT_SHARE,
        }
    )
    listed = listed[listed["days_flagged"] >= params.min_days]
    seen = window[window["cell"].isin(listed.index)].groupby("cell")["date"].nunique()
    # the point most days agree on (ties: the latest day's)
    latest = (
        flagged[flagged["cell"].isin(listed.index)]
        .sort_values(["cell", "point_devices", "date"], ascending=[True, False, False])
        .drop_duplicates("cell")
        .set_index("cell")
    )
    out = listed.assign(
        days_seen=seen.reindex(listed.index).fillna(0).astype(np.int64),
        lat=latest["lat"].reindex(listed.index),
        lon=latest["lon"].reindex(listed.index),
    ).reset_index()
    return out.astype({"cell": np.int64, "days_flagged": np.int64})[LIST_COLUMNS].sort_values(
        "cell", ignore_index=True
    )


def on_hdp(
    lat: np.ndarray, lon: np.ndarray, hdps: pd.DataFrame, cell_deg: float = HdpParams.cell_deg
) -> np.ndarray:
    """True for each coordinate a listed HDP removes (``hdps``: the list; ``cell`` and, when
    present, ``exact_point``, ``lat``, ``lon``): on the exact point of an ``exact_point``
    entry, anywhere in the cell of the others."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if hdps is None or len(hdps) == 0 or len(lat) == 0:
        return np.zeros(len(lat), dtype=bool)
    listed = hdps.sort_values("cell")
    cells = listed["cell"].to_numpy(dtype=np.int64)
    code = cell_codes(lat, lon, cell_deg)
    at = np.minimum(np.searchsorted(cells, code), len(cells) - 1)
    inside = cells[at] == code
    if "exact_point" not in listed:
        return inside
    exact = listed["exact_point"].fillna(False).to_numpy(dtype=bool)[at]
    same = (listed["lat"].to_numpy(np.float64)[at] == lat) & (
        listed["lon"].to_numpy(np.float64)[at] == lon
    )
    return inside & (~exact | same)


# ---- scoring against planted truth (synthetic lakes) ----------------------------------------


def match_planted(
    listed: pd.DataFrame, planted: pd.DataFrame, within_m: float = 15.0
) -> tuple[np.ndarray, np.ndarray]:
    """(listed entry is within ``within_m`` of a planted HDP, planted HDP has such an entry)."""
    if len(listed) == 0 or len(planted) == 0:
        return np.zeros(len(listed), bool), np.zeros(len(planted), bool)
    la, lo = listed["lat"].to_numpy(float)[:, None], listed["lon"].to_numpy(float)[:, None]
    pa_, po = planted["lat"].to_numpy(float)[None, :], planted["lon"].to_numpy(float)[None, :]
    dy = (la - pa_) * 111_320.0
    dx = (lo - po) * 111_320.0 * np.cos(np.radians(pa_))
    near = np.hypot(dx, dy) <= within_m
    return near.any(axis=1), near.any(axis=0)


def planted_points(planted: pd.DataFrame, towers: np.ndarray | None = None) -> pd.DataFrame:
    """Every point a list should hold: the planted HDPs (``hdp_id``, ``kind``, ``lat``, ``lon``,
    optional ``near_poi_id``) and the dirt's legacy towers (``towers``: (lat, lon) rows, ids
    ``legacy-<i>``, kind ``legacy_tower``), planted first."""
    legacy = np.asarray(towers if towers is not None else np.empty((0, 2)), dtype=float)
    legacy = legacy.reshape(-1, 2)
    cols = [c for c in ("hdp_id", "kind", "lat", "lon", "near_poi_id") if c in planted]
    return pd.concat(
        [
            planted[cols],
            pd.DataFrame(
                {
                    "hdp_id": [f"legacy-{i}" for i in range(len(legacy))],
                    "kind": "legacy_tower",
                    "lat": legacy[:, 0],
                    "lon": legacy[:, 1],
                }
            ),
        ],
        ignore_index=True,
    )


def score_list(
    listed: pd.DataFrame,
    points: pd.DataFrame,
    active_days: dict[str, set[str]],
    window: list[str],
    min_days: int = HdpParams.min_days,
) -> dict[str, Any]:
    """Precision and recall of a list against ``planted_points``: precision is the share of
    listed entries within 15 m of a planted point; recall the share of the points the list
    could know (active on >= ``min_days`` days of ``window`` by ``active_days``; legacy towers
    always) that it holds, also per kind and for the planted points beside busy POIs."""
    precise, found = match_planted(listed, points)
    ids = points["hdp_id"].astype(str)
    eligible = np.array(
        [
            h.startswith("legacy") or len(active_days.get(h, set()) & set(window)) >= min_days
            for h in ids
        ],
        dtype=bool,
    )
    by_kind = points.assign(found=found)[eligible].groupby("kind")["found"].mean()
    out: dict[str, Any] = {
        "listed": len(listed),
        "planted": int(eligible.sum()),
        "precision": round(float(precise.mean()), 4) if len(precise) else None,
        "recall": round(float(found[eligible].mean()), 4) if eligible.any() else None,
        "recall_by_kind": {k: round(float(v), 4) for k, v in by_kind.items()},
    }
    if "near_poi_id" in points:
        near = points["near_poi_id"].notna().to_numpy() & ~ids.str.startswith("legacy").to_numpy()
        out["recall_beside_busy_pois"] = round(float(found[near].mean()), 4) if near.any() else None
    return out


def visit_ping_mask(pings: pd.DataFrame, stays: pd.DataFrame) -> np.ndarray:
    """Pings of a device that fall inside one of its true POI stays (``truth/stays``)."""
    poi = stays[stays["kind"] == "poi"][["device_id", "start_ts", "end_ts"]].copy()
    for c in ("start_ts", "end_ts"):
        poi[c] = pd.to_datetime(poi[c], utc=True).dt.as_unit("ns")
    p = pings[["device_id", "ts"]].reset_index(drop=True).reset_index()
    p["ts"] = pd.to_datetime(p["ts"], utc=True).dt.as_unit("ns")
    m = pd.merge_asof(
        p.sort_values("ts"),
        poi.sort_values("start_ts"),
        left_on="ts",
        right_on="start_ts",
        by="device_id",
        direction="backward",
    )
    inside = (m["end_ts"].notna() & (m["ts"] <= m["end_ts"])).to_numpy()
    out = np.zeros(len(pings), dtype=bool)
    out[m["index"].to_numpy()[inside]] = True
    return out


def ping_classes(
    pings: pd.DataFrame,
    planted_pings: pd.DataFrame,
    stays: pd.DataFrame,
    towers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ping of a day: planted (``truth/hdp_pings``: device_id, ts), genuine (neither planted
    nor on a legacy tower), genuine visit (genuine and inside a true POI stay)."""
    key = pd.MultiIndex.from_frame(pings[["device_id", "ts"]])
    planted = key.isin(pd.MultiIndex.from_frame(planted_pings[["device_id", "ts"]]))
    legacy = np.zeros(len(pings), bool)
    for la, lo in np.asarray(towers if towers is not None else [], dtype=float).reshape(-1, 2):
        legacy |= (pings["lat"].to_numpy() == la) & (pings["lon"].to_numpy() == lo)
    genuine = ~planted & ~legacy
    return planted, genuine, visit_ping_mask(pings, stays) & genuine


def removal_shares(
    removed: np.ndarray, planted: np.ndarray, genuine: np.ndarray, visit: np.ndarray
) -> dict[str, float | None]:
    """Shares of the planted, genuine and genuine visit pings a list removes (``ping_classes``)."""

    def share(mask: np.ndarray, digits: int) -> float | None:
        return round(float(removed[mask].mean()), digits) if mask.any() else None

    return {
        "planted_pings_removed": share(planted, 4),
        "genuine_visit_pings_removed": share(visit, 5),
        "genuine_pings_removed": share(genuine, 5),
    }
