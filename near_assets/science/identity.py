"""Cross identity: link devices that belong to one person or one household (pure, no Dagster).

Method (``identity_graph``):

1. **Candidates** (no all-pairs): stay points are projected to local metres and cut into hour
   slots; each slot is registered in its own ``cell_m`` grid cell and probed from the 2 x 2 block
   of cells nearest to the stay, so two stays closer than ``cell_m / 2`` meet on at least one
   (cell, hour) key. Keys holding more than ``max_group`` devices (malls, stations) are dropped:
   a crowd is no evidence. A merge on (cell, hour) gives candidate stay pairs of two devices.
2. **Co-location**: a stay pair counts when the stays are within ``link_m`` and overlap by at
   least ``min_overlap_s``. An *evening together* is a pair overlapping inside the local night
   window (``night_hours``) anywhere, or at any hour within ``home_m`` of one of the two
   devices' homes (night-shift workers sleep by day), keyed by the local day the evening starts
   (the overlap's midpoint minus 12 h). Overlap inside the day window (``day_hours``) at a place
   farther than ``away_m`` from both devices' homes is a day together *elsewhere*. Homes:
   ``home_location`` if given, else each device's median night stay.
3. **Edge score** per device pair: ``(1 - 0.5 ** nights) * exp(-(d / dist_scale_m) ** 2)``
   where ``nights`` counts the evenings together and ``d`` is their median distance (one home:
   a few metres; a neighbour's flat: tens of metres). An edge needs ``min_nights`` evenings and
   ``min_score``; homes farther apart than ``home_m`` veto it unless the pair was together at
   one of the two homes (a trip together elsewhere is no household). An edge is a *person* edge
   when the pair was also together elsewhere by day on ``min_days_elsewhere`` days (one
   person's phone and tablet), else a *household* edge (same home, own day places).
4. **Components** (``scipy.sparse.csgraph.connected_components``): households from all edges,
   people from person edges only. ``person_id`` / ``household_id`` are the smallest device id of
   the component (stable from day to day while the component holds). ``confidence`` of a device
   is its strongest edge inside its household (0 for a device linked to nobody). A household
   above ``max_household`` devices (a chain of neighbours) keeps only its edges scoring at least
   the next of ``split_scores``; one still too large loses all its edges.

Units: metres, seconds; timestamps UTC; local hours in ``timezone``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

GRAPH_COLUMNS = ["device_id", "person_id", "household_id", "confidence", "devices_in_person"]
EDGE_COLUMNS = [
    "device_a",
    "device_b",
    "nights",
    "night_dist_m",
    "days_elsewhere",
    "home_dist_m",
    "score",
    "kind",
]
M_PER_DEG_LAT = 110_540.0
M_PER_DEG_LON = 111_320.0
HOUR_S = 3600
DAY_S = 86_400


@dataclass(frozen=True)
class IdentityParams:
    cell_m: float = 100.0
    link_m: float = 50.0
    max_group: int = 25
    min_overlap_s: float = 1800.0
    night_hours: tuple[int, int] = (0, 6)
    day_hours: tuple[int, int] = (9, 18)
    away_m: float = 300.0
    dist_scale_m: float = 15.0
    min_nights: int = 2
    min_score: float = 0.5
    min_days_elsewhere: int = 2
    home_m: float = 60.0
    max_slot_hours: int = 36
    max_household: int = 12
    split_scores: tuple[float, ...] = (0.7, 0.85, 0.95)


def _xy(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    return np.column_stack(
        [(lon - lon0) * M_PER_DEG_LON * np.cos(np.radians(lat0)), (lat - lat0) * M_PER_DEG_LAT]
    )


def _local_s(ts: pd.Series, timezone: str) -> np.ndarray:
    """Seconds since the epoch on the local wall clock (UTC seconds + the zone's offset)."""
    utc = pd.to_datetime(ts, utc=True)
    local = utc.dt.tz_convert(timezone).dt.tz_localize(None)
    return local.to_numpy(dtype="datetime64[s]").astype(np.int64)


def _window_overlap(
    start: np.ndarray, end: np.ndarray, hours: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of [start, end) (local seconds) inside the daily window ``hours``, and the local
    day (days since epoch) of the window holding most of them (first of two on a tie)."""
    h0, h1 = hours
    day0 = start // DAY_S - (1 if h1 <= h0 else 0)
    best_s = np.zeros(len(start), dtype=np.int64)
    best_d = day0.copy()
    for k in range(3):
        d = day0 + k
        w0 = d * DAY_S + h0 * HOUR_S
        w1 = (d + (1 if h1 <= h0 else 0)) * DAY_S + h1 * HOUR_S
        s = np.maximum(np.minimum(end, w1) - np.maximum(start, w0), 0)
        better = s > best_s
        best_s, best_d = np.where(better, s, best_s), np.where(better, d, best_d)
    return best_s, best_d


def _slots(xy: np.ndarray, start_h: np.ndarray, n_h: np.ndarray, cell_m: float, probe: bool):
    """(stay, hour, cell) rows: the stay's own cell, or the 2 x 2 block nearest to it."""
    stay = np.repeat(np.arange(len(start_h)), n_h)
    hour = np.repeat(start_h, n_h) + (np.arange(n_h.sum()) - np.repeat(np.cumsum(n_h) - n_h, n_h))
    g = xy[stay] / cell_m
    cx, cy = np.floor(g[:, 0]).astype(np.int64), np.floor(g[:, 1]).astype(np.int64)
    if not probe:
        return pd.DataFrame({"stay": stay, "hour": hour, "cx": cx, "cy": cy})
    sx = np.where(g[:, 0] - cx >= 0.5, 1, -1)
    sy = np.where(g[:, 1] - cy >= 0.5, 1, -1)
    parts = [
        pd.DataFrame({"stay": stay, "hour": hour, "cx": cx + ox * sx, "cy": cy + oy * sy})
        for ox in (0, 1)
        for oy in (0, 1)
    ]
    return pd.concat(parts, ignore_index=True)


def device_homes(
    stays: pd.DataFrame, timezone: str = "UTC", params: IdentityParams | None = None
) -> pd.DataFrame:
    """Per device, the median place of its night stays (>= 1 h inside the night window)."""
    p = params or IdentityParams()
    start, end = _local_s(stays["start_ts"], timezone), _local_s(stays["end_ts"], timezone)
    night_s, _ = _window_overlap(start, end, p.night_hours)
    nights = stays.loc[night_s >= HOUR_S, ["device_id", "lat", "lon"]]
    return nights.groupby("device_id", observed=True)[["lat", "lon"]].median().reset_index()


def prepare_stays(
    stays: pd.DataFrame, lat0: float, lon0: float, timezone: str, params: IdentityParams
) -> pd.DataFrame:
    """Per stay (row order kept): ``dev`` (str), ``x``, ``y`` (metres from ``lat0``/``lon0``),
    ``start``, ``end`` (local wall-clock seconds), ``start_h`` (local hour index), ``n_h``
    (hour slots it covers, at most ``max_slot_hours``) and ``night_s`` (seconds inside the
    local night window: a night stay has at least an hour). Row-wise: any batch of stays gives the
    same rows (the Spark engine runs it per batch)."""
    xy = _xy(stays["lat"].to_numpy(float), stays["lon"].to_numpy(float), lat0, lon0)
    start, end = _local_s(stays["start_ts"], timezone), _local_s(stays["end_ts"], timezone)
    start_h = start // HOUR_S
    n_h = np.clip((np.maximum(end - 1, start)) // HOUR_S - start_h + 1, 1, params.max_slot_hours)
    return pd.DataFrame(
        {
            "dev": stays["device_id"].astype(str).to_numpy(),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "start": start,
            "end": end,
            "start_h": start_h,
            "n_h": n_h.astype(np.int64),
            "night_s": _window_overlap(start, end, params.night_hours)[0].astype(np.int64),
        }
    )


def home_xy(homes: pd.DataFrame, lat0: float, lon0: float) -> pd.DataFrame:
    """``device_id`` (str), ``hx``, ``hy``: homes in the stays' local metres."""
    h = _xy(homes["lat"].to_numpy(float), homes["lon"].to_numpy(float), lat0, lon0)
    return pd.DataFrame(
        {"device_id": homes["device_id"].astype(str).to_numpy(), "hx": h[:, 0], "hy": h[:, 1]}
    )


def stay_pairs(prep: pd.DataFrame, params: IdentityParams) -> np.ndarray:
    """Candidate stay pairs (rows of ``prep``, ``dev_a < dev_b``, unique): the (cell x hour)
    join of the module doc, crowded keys left out."""
    xy = prep[["x", "y"]].to_numpy(float)
    dev = prep["dev"].to_numpy()
    start_h, n_h = prep["start_h"].to_numpy(), prep["n_h"].to_numpy()
    own = _slots(xy, start_h, n_h, params.cell_m, probe=False)
    own["dev"] = dev[own["stay"].to_numpy()]
    crowd = own.groupby(["hour", "cx", "cy"])["dev"].nunique()
    crowd = crowd[crowd <= params.max_group].reset_index()[["hour", "cx", "cy"]]
    own = own.merge(crowd, on=["hour", "cx", "cy"])
    probes = _slots(xy, start_h, n_h, params.cell_m, probe=True)
    pairs = own[["stay", "hour", "cx", "cy"]].merge(
        probes, on=["hour", "cx", "cy"], suffixes=("_a", "_b")
    )
    a, b = pairs["stay_a"].to_numpy(), pairs["stay_b"].to_numpy()
    keep = dev[a] < dev[b]
    return np.unique(np.column_stack([a[keep], b[keep]]), axis=0).reshape(-1, 2)


COLOCATION_COLUMNS = [
    "device_a",
    "device_b",
    "dist_m",
    "overlap_s",
    "night",
    "home_evening",
    "at_home",
    "day_elsewhere",
]
PAIR_COLUMNS = ["dev_a", "dev_b", "xa", "ya", "xb", "yb", "start_a", "end_a", "start_b", "end_b",
                "hxa", "hya", "hxb", "hyb"]  # fmt: skip
"""A candidate stay pair: both stays (``prepare_stays``) and both devices' homes (``home_xy``,
NaN when unknown)."""


def pair_colocations(pairs: pd.DataFrame, params: IdentityParams) -> pd.DataFrame:
    """The co-located rows of candidate stay pairs (``PAIR_COLUMNS``): within ``link_m``,
    overlapping ``min_overlap_s``, with their night / evening / day-elsewhere keys
    (``COLOCATION_COLUMNS``). Row-wise (the Spark engine runs it per batch of pairs)."""
    p = params
    xa, ya = pairs["xa"].to_numpy(float), pairs["ya"].to_numpy(float)
    xb, yb = pairs["xb"].to_numpy(float), pairs["yb"].to_numpy(float)
    dist = np.hypot(xa - xb, ya - yb)
    o0 = np.maximum(pairs["start_a"].to_numpy(np.int64), pairs["start_b"].to_numpy(np.int64))
    o1 = np.minimum(pairs["end_a"].to_numpy(np.int64), pairs["end_b"].to_numpy(np.int64))
    ok = (dist <= p.link_m) & (o1 - o0 >= p.min_overlap_s)
    dist, o0, o1 = dist[ok], o0[ok], o1[ok]
    night_s, night_d = _window_overlap(o0, o1, p.night_hours)
    day_s, day_d = _window_overlap(o0, o1, p.day_hours)
    hx = (xa[ok] + xb[ok]) / 2
    hy = (ya[ok] + yb[ok]) / 2
    away = np.ones(len(dist), dtype=bool)
    at_home = np.zeros(len(dist), dtype=bool)
    for cx, cy in (("hxa", "hya"), ("hxb", "hyb")):
        to_home = np.hypot(pairs[cx].to_numpy(float)[ok] - hx, pairs[cy].to_numpy(float)[ok] - hy)
        away &= ~(to_home <= p.away_m)  # NaN distance (no home) compares False: counts as away
        at_home |= to_home <= p.home_m
    # an evening at home: night together anywhere, or together at one of the two homes at any
    # hour (night-shift workers sleep by day); keyed by the local day the evening starts
    evening = ((o0 + o1) // 2 - DAY_S // 2) // DAY_S
    together = (night_s >= p.min_overlap_s) | at_home
    return pd.DataFrame(
        {
            "device_a": pairs["dev_a"].to_numpy()[ok],
            "device_b": pairs["dev_b"].to_numpy()[ok],
            "dist_m": dist,
            "overlap_s": (o1 - o0).astype(np.int64),
            "night": np.where(night_s >= p.min_overlap_s, night_d, -1),
            "home_evening": np.where(together, evening, -1),
            "at_home": at_home,
            "day_elsewhere": np.where((day_s >= p.min_overlap_s) & away, day_d, -1),
        }
    )


def colocations(
    stays: pd.DataFrame,
    homes: pd.DataFrame | None = None,
    timezone: str = "UTC",
    params: IdentityParams | None = None,
) -> pd.DataFrame:
    """Stay pairs of two devices close in space and overlapping in time, with night/day keys.

    ``stays``: device_id, start_ts, end_ts (UTC), lat, lon. ``homes``: device_id, lat, lon
    (e.g. ``home_location``); default the devices' median night stays. Returns one row per
    co-located stay pair (``COLOCATION_COLUMNS``): device_a < device_b, dist_m, overlap_s,
    night (local day or -1), home_evening (local day or -1), at_home, day_elsewhere (local day
    or -1).
    """
    p = params or IdentityParams()
    if stays.empty:
        return pd.DataFrame(columns=COLOCATION_COLUMNS)
    st = stays.reset_index(drop=True)
    lat0, lon0 = float(st["lat"].median()), float(st["lon"].median())
    prep = prepare_stays(st, lat0, lon0, timezone, p)
    sp = stay_pairs(prep, p)
    if len(sp) == 0:
        return pd.DataFrame(columns=COLOCATION_COLUMNS)
    if homes is None:
        homes = device_homes(st, timezone, p)
    hxy = home_xy(homes, lat0, lon0).set_index("device_id")
    a, b = prep.iloc[sp[:, 0]].reset_index(drop=True), prep.iloc[sp[:, 1]].reset_index(drop=True)
    ha, hb = hxy.reindex(a["dev"].to_numpy()), hxy.reindex(b["dev"].to_numpy())
    pairs = pd.DataFrame(
        {
            "dev_a": a["dev"].to_numpy(),
            "dev_b": b["dev"].to_numpy(),
            **{f"{c}a": a[c].to_numpy() for c in ("x", "y")},
            **{f"{c}b": b[c].to_numpy() for c in ("x", "y")},
            **{f"{c}_a": a[c].to_numpy() for c in ("start", "end")},
            **{f"{c}_b": b[c].to_numpy() for c in ("start", "end")},
            "hxa": ha["hx"].to_numpy(float),
            "hya": ha["hy"].to_numpy(float),
            "hxb": hb["hx"].to_numpy(float),
            "hyb": hb["hy"].to_numpy(float),
        }
    )
    return pair_colocations(pairs[PAIR_COLUMNS], p)


EVIDENCE_COLUMNS = ["device_a", "device_b", "nights", "night_dist_m", "at_home", "days_elsewhere"]


def pair_evidence(co: pd.DataFrame) -> pd.DataFrame:
    """Per device pair with evenings together: their number, median distance, whether one was
    at a home, and the days together elsewhere (``EVIDENCE_COLUMNS``)."""
    key = ["device_a", "device_b"]
    nights_rows = co[co["home_evening"] >= 0]
    nights = nights_rows.groupby(key).agg(
        nights=("home_evening", "nunique"),
        night_dist_m=("dist_m", "median"),
        at_home=("at_home", "max"),
    )
    days = co[co["day_elsewhere"] >= 0].groupby(key)["day_elsewhere"].nunique()
    e = nights.join(days.rename("days_elsewhere"), how="left").fillna({"days_elsewhere": 0})
    return e.reset_index()[EVIDENCE_COLUMNS]


def finish_edges(e: pd.DataFrame, params: IdentityParams | None = None) -> pd.DataFrame:
    """Edges from ``pair_evidence`` plus both devices' homes (``ha_lat``, ``ha_lon``,
    ``hb_lat``, ``hb_lon``; NaN when unknown): home distance, score, the rule, the kind."""
    p = params or IdentityParams()
    if e.empty:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    e = e.copy()
    ha = e[["ha_lat", "ha_lon"]].to_numpy(float)
    hb = e[["hb_lat", "hb_lon"]].to_numpy(float)
    lat0 = float(np.nanmedian(ha[:, 0])) if len(ha) and not np.isnan(ha[:, 0]).all() else 0.0
    dxy = _xy(ha[:, 0], ha[:, 1], lat0, 0.0) - _xy(hb[:, 0], hb[:, 1], lat0, 0.0)
    e["home_dist_m"] = np.hypot(dxy[:, 0], dxy[:, 1])
    e["nights"] = e["nights"].astype(np.int64)
    e["days_elsewhere"] = e["days_elsewhere"].astype(np.int64)
    e["score"] = (1.0 - 0.5 ** e["nights"]) * np.exp(-((e["night_dist_m"] / p.dist_scale_m) ** 2))
    # homes apart and never together at either of them (NaN: a home unknown, no veto)
    veto = (e["home_dist_m"] > p.home_m) & ~e["at_home"].astype(bool)
    e = e[(e["nights"] >= p.min_nights) & (e["score"] >= p.min_score) & ~veto]
    e["kind"] = np.where(e["days_elsewhere"] >= p.min_days_elsewhere, "person", "household")
    return e[EDGE_COLUMNS].reset_index(drop=True)


def score_edges(
    co: pd.DataFrame, homes: pd.DataFrame, params: IdentityParams | None = None
) -> pd.DataFrame:
    """Per device pair: nights together, their median distance, days together elsewhere, home
    distance, score and kind (``person`` / ``household``); only pairs passing the rule."""
    if co.empty:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    e = pair_evidence(co)
    h = homes.set_index(homes["device_id"].astype(str))[["lat", "lon"]]
    ha, hb = h.reindex(e["device_a"]).to_numpy(float), h.reindex(e["device_b"]).to_numpy(float)
    e = e.assign(ha_lat=ha[:, 0], ha_lon=ha[:, 1], hb_lat=hb[:, 0], hb_lon=hb[:, 1])
    return finish_edges(e, params)


def _components(devices: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per device (sorted ``devices``): the smallest device id of its connected component."""
    n = len(devices)
    ia, ib = np.searchsorted(devices, a), np.searchsorted(devices, b)
    graph = coo_matrix((np.ones(len(ia)), (ia, ib)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return devices[first[label]]


def split_large(
    devices: np.ndarray, edges: pd.DataFrame, params: IdentityParams | None = None
) -> pd.DataFrame:
    """Edges where no household component exceeds ``max_household`` devices (see the doc)."""
    p = params or IdentityParams()
    ids = np.unique(np.asarray(devices, dtype=str).astype(object))
    for cut in (*p.split_scores, np.inf):
        a, b = edges["device_a"].to_numpy(str), edges["device_b"].to_numpy(str)
        comp = pd.Series(_components(ids, a, b), index=ids)
        size = comp.map(comp.value_counts())
        big = set(comp[size > p.max_household].to_numpy())
        if not big:
            break
        inside = comp.reindex(edges["device_a"].to_numpy()).isin(big).to_numpy()
        edges = edges[~inside | (edges["score"].to_numpy() >= cut)]
    return edges.reset_index(drop=True)


def identity_graph(devices: np.ndarray | pd.Series, edges: pd.DataFrame) -> pd.DataFrame:
    """One row per device: person_id, household_id (components), confidence, devices_in_person."""
    ids = np.unique(np.asarray(devices, dtype=str).astype(object))
    a, b = edges["device_a"].to_numpy(str), edges["device_b"].to_numpy(str)
    person = edges["kind"].to_numpy() == "person"
    household_id = _components(ids, a, b)
    person_id = _components(ids, a[person], b[person])
    best = pd.concat(
        [
            pd.Series(edges["score"].to_numpy(float), index=a),
            pd.Series(edges["score"].to_numpy(float), index=b),
        ]
    )
    conf = best.groupby(level=0).max().reindex(ids).fillna(0.0).to_numpy()
    out = pd.DataFrame(
        {
            "device_id": pd.array(ids, dtype="string"),
            "person_id": pd.array(person_id, dtype="string"),
            "household_id": pd.array(household_id, dtype="string"),
            "confidence": conf.round(4),
        }
    )
    out["devices_in_person"] = out.groupby("person_id")["device_id"].transform("size")
    out["devices_in_person"] = out["devices_in_person"].astype(np.int64)
    return out[GRAPH_COLUMNS]


def link_devices(
    stays: pd.DataFrame,
    homes: pd.DataFrame | None = None,
    timezone: str = "UTC",
    params: IdentityParams | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stays of a window (+ optional homes) -> (identity graph, edges). See the module doc."""
    p = params or IdentityParams()
    night_homes = device_homes(stays, timezone, p)
    if homes is not None and not homes.empty:
        given = homes[["device_id", "lat", "lon"]].astype({"device_id": str})
        rest = night_homes[~night_homes["device_id"].astype(str).isin(given["device_id"])]
        night_homes = pd.concat([given, rest], ignore_index=True)
    co = colocations(stays, night_homes, timezone, p)
    devices = stays["device_id"].astype(str).unique()
    edges = split_large(devices, score_edges(co, night_homes, p), p)
    return identity_graph(devices, edges), edges


def graph_invariants(df: pd.DataFrame) -> pd.Series:
    """Per row: confidence in [0, 1], one household per person, at least one device a person."""
    households = df.groupby("person_id")["household_id"].transform("nunique")
    return df["confidence"].between(0.0, 1.0) & (households == 1) & (df["devices_in_person"] >= 1)


def _pairs(n: pd.Series) -> int:
    return int((n * (n - 1) // 2).sum())


def pairwise_accuracy(graph: pd.DataFrame, truth: pd.DataFrame, level: str) -> dict[str, float]:
    """Pairwise precision and recall of ``level`` (``person_id`` / ``household_id``) against the
    truth's column of the same name, over the devices present in ``graph``."""
    t = truth[["device_id", level]].astype(str)
    g = graph[["device_id", level]].astype(str).merge(t, on="device_id", suffixes=("", "_true"))
    tp = _pairs(g.groupby([level, f"{level}_true"]).size())
    pred = _pairs(g.groupby(level).size())
    true = _pairs(g.groupby(f"{level}_true").size())
    return {
        "precision": round(tp / pred, 4) if pred else float("nan"),
        "recall": round(tp / true, 4) if true else float("nan"),
        "pairs_predicted": pred,
        "pairs_true": true,
    }
