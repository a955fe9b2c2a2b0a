"""Visit history: a per-device, per-POI rolling history kept up to date one day at a time.

Method. The history of day ``D`` is a snapshot with one row per (device, POI) pair seen within
the retention horizon: first and last time seen, lifetime visits and dwell, and visits and dwell
over the trailing 7, 30 and 90 days (``D-6 .. D``, ``D-29 .. D``, ``D-89 .. D``). It is
*incremental*: ``history(D) = history(D-1) + visits(D) - visits(D-w)`` for each window ``w``,
where ``visits(D-w)`` are the visits leaving the ``w``-day window that day. Only the pairs
touched by those few day-sized inputs are looked up (a hash index over the previous snapshot)
and updated in place; the rest of the snapshot is carried over as it is, so the arithmetic of a
day grows with that day's visits, not with the history. ``history_from_visits`` computes the
same snapshot from scratch (a re-scan of the windows): the bootstrap when no previous snapshot
exists, and the oracle the tests compare the incremental path with.

A visit belongs to the UTC day of its ``start_ts`` (as the daily ``visits`` partitions do).
Dwell is in seconds; timestamps are ``datetime64[ns, UTC]``. Pairs whose last visit is older
than ``retention_days`` are dropped and start afresh when seen again (so the two paths agree
whenever no pair goes unseen for longer than that). Snapshots are sorted by (device_id,
poi_id): the lookup relies on it, and every snapshot returned here is.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import date, timedelta

import numpy as np
import pandas as pd

WINDOWS = (7, 30, 90)
"""Trailing windows (days, the day itself included)."""
KEY = ["device_id", "poi_id"]
COUNT_COLUMNS = [
    "visits_total",
    *(f"visits_{w}d" for w in WINDOWS),
]
DWELL_COLUMNS = [
    "dwell_total_s",
    *(f"dwell_{w}d_s" for w in WINDOWS),
]
HISTORY_COLUMNS = [
    *KEY,
    "brand",
    "first_seen",
    "last_seen",
    "visits_total",
    "dwell_total_s",
    *(c for w in WINDOWS for c in (f"visits_{w}d", f"dwell_{w}d_s")),
]
DEFAULT_RETENTION_DAYS = 365


def empty_history() -> pd.DataFrame:
    """A history without rows, typed like a real one."""
    ts = pd.Series(pd.DatetimeIndex([], tz="UTC"))
    cols: dict[str, pd.Series] = {
        "device_id": pd.Series(dtype=object),
        "poi_id": pd.Series(dtype=object),
        "brand": pd.Series(dtype=object),
        "first_seen": ts,
        "last_seen": ts.copy(),
    }
    for c in HISTORY_COLUMNS:
        if c not in cols:
            cols[c] = pd.Series(dtype=np.int64 if c.startswith("visits") else np.float64)
    return pd.DataFrame(cols)[HISTORY_COLUMNS]


def day_totals(visits: pd.DataFrame) -> pd.DataFrame:
    """One day's visits summed per (device, POI): visits, dwell_s, first start, last end, brand."""
    if visits.empty:
        return pd.DataFrame(
            {
                **{k: pd.Series(dtype=object) for k in KEY},
                "visits": pd.Series(dtype=np.int64),
                "dwell_s": pd.Series(dtype=np.float64),
                "first_seen": pd.Series(pd.DatetimeIndex([], tz="UTC")),
                "last_seen": pd.Series(pd.DatetimeIndex([], tz="UTC")),
                "brand": pd.Series(dtype=object),
            }
        )
    v = visits.assign(
        start_ts=pd.to_datetime(visits["start_ts"], utc=True),
        end_ts=pd.to_datetime(visits["end_ts"], utc=True),
        brand=visits.get("brand", None),
    )
    out = v.groupby(KEY, sort=False, observed=True).agg(
        visits=("dwell_s", "size"),
        dwell_s=("dwell_s", "sum"),
        first_seen=("start_ts", "min"),
        last_seen=("end_ts", "max"),
        brand=("brand", "first"),
    )
    return out.reset_index().astype({"visits": np.int64, "dwell_s": np.float64})


def _cutoff(day: str, retention_days: int) -> pd.Timestamp:
    return pd.Timestamp(date.fromisoformat(day) - timedelta(days=retention_days - 1), tz="UTC")


def update_history(
    previous: pd.DataFrame,
    today: pd.DataFrame,
    leaving: Mapping[int, pd.DataFrame],
    day: str,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> pd.DataFrame:
    """``history(day)`` from ``history(day - 1)``, the day's visits and the visits leaving each window.

    ``previous``: the snapshot of the day before (``HISTORY_COLUMNS``); ``today``: the visits of
    ``day``; ``leaving[w]``: the visits of ``day - w`` (the day that leaves the ``w``-day window;
    missing or empty when that day had none). Returns the snapshot of ``day``, sorted by key.
    """
    if retention_days < max(WINDOWS):
        raise ValueError(f"retention_days must be >= {max(WINDOWS)}, got {retention_days}")
    add = day_totals(today)
    # one row per touched pair, one column per (measure, window): today's totals in every
    # window and the lifetime, minus the visits leaving each window
    parts = [_signed(add, {"total": 1, **{f"{w}d": 1 for w in WINDOWS}})]
    for w in WINDOWS:
        parts.append(_signed(day_totals(leaving.get(w, pd.DataFrame())), {f"{w}d": -1}))
    delta = pd.concat(parts, ignore_index=True).groupby(KEY, sort=False).sum()

    delta = delta.sort_index()
    dev = previous["device_id"].to_numpy(dtype=object)
    poi = previous["poi_id"].to_numpy(dtype=object)
    q_dev = delta.index.get_level_values(0).to_numpy(dtype=object)
    q_poi = delta.index.get_level_values(1).to_numpy(dtype=object)
    pos, insert_at = locate(dev, poi, q_dev, q_poi)
    old = pos >= 0

    out: dict[str, np.ndarray] = {}
    for c in [*COUNT_COLUMNS, *DWELL_COLUMNS]:
        values = previous[c].to_numpy(dtype=np.int64 if c in COUNT_COLUMNS else np.float64)
        out[c] = values.copy()
        out[c][pos[old]] += delta[c].to_numpy()[old].astype(out[c].dtype)
    out["brand"] = previous["brand"].to_numpy(dtype=object).copy()
    for c in ("first_seen", "last_seen"):
        out[c] = _ns(previous[c]).copy()
    seen = add.set_index(KEY).reindex(delta.index)  # today's first/last/brand per touched pair
    today_first, today_last = _ns(seen["first_seen"]), _ns(seen["last_seen"])
    hit = old & ~np.isnat(today_first)
    at = pos[hit]
    out["first_seen"][at] = np.minimum(out["first_seen"][at], today_first[hit])
    out["last_seen"][at] = np.maximum(out["last_seen"][at], today_last[hit])
    new_brand = seen["brand"].to_numpy(dtype=object)
    known = hit & ~pd.isna(new_brand)
    out["brand"][pos[known]] = new_brand[known]

    # pairs first seen today go in at their sorted place (a pair that only leaves a window
    # was seen before by definition); the rest of the snapshot is carried over as it is
    fresh = ~old & ~np.isnat(today_first)
    out = {"device_id": dev, "poi_id": poi, **out}
    if fresh.any():
        values = {
            "device_id": q_dev[fresh],
            "poi_id": q_poi[fresh],
            "brand": new_brand[fresh],
            "first_seen": today_first[fresh],
            "last_seen": today_last[fresh],
            **{c: delta[c].to_numpy()[fresh] for c in [*COUNT_COLUMNS, *DWELL_COLUMNS]},
        }
        at = insert_at[fresh]
        out = {c: np.insert(v, at, values[c].astype(v.dtype)) for c, v in out.items()}
    keep = out["last_seen"] >= _cutoff(day, retention_days).to_datetime64()
    if not keep.all():
        out = {c: v[keep] for c, v in out.items()}
    for c in DWELL_COLUMNS:  # float sums of additions and removals: no -1e-12 dwell
        out[c] = np.maximum(out[c], 0.0).round(3)
    for c in ("first_seen", "last_seen"):
        out[c] = pd.DatetimeIndex(out[c]).tz_localize("UTC")
    return pd.DataFrame(out)[HISTORY_COLUMNS]


def _ns(ts: pd.Series) -> np.ndarray:
    """UTC timestamps as naive ``datetime64[ns]`` (NaT kept)."""
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = pd.to_datetime(ts, utc=True)
    return ts.to_numpy(dtype="datetime64[ns]")


def locate(
    dev: np.ndarray, poi: np.ndarray, q_dev: np.ndarray, q_poi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of sorted (``dev``, ``poi``) keys holding each query pair (-1 when absent) and where
    an absent pair would be inserted to keep the order: binary search on the device, then a
    scan of that device's few POIs, so the cost follows the queries, not the table."""
    lo = np.searchsorted(dev, q_dev, "left")
    hi = np.searchsorted(dev, q_dev, "right")
    n = hi - lo
    query = np.repeat(np.arange(len(q_dev)), n)
    rows = np.repeat(lo, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    qp = q_poi[query]
    before = np.bincount(query, weights=(poi[rows] < qp), minlength=len(q_dev)).astype(np.int64)
    equal = np.bincount(query, weights=(poi[rows] == qp), minlength=len(q_dev)) > 0
    insert_at = lo + before
    return np.where(equal, insert_at, -1), insert_at


def history_from_visits(
    visits: pd.DataFrame, day: str, retention_days: int = DEFAULT_RETENTION_DAYS
) -> pd.DataFrame:
    """The snapshot of ``day`` re-computed from scratch from ``visits`` (every visit up to and
    including ``day``; visits after it are ignored). The bootstrap of ``update_history``."""
    if visits.empty:
        return empty_history()
    start = pd.to_datetime(visits["start_ts"], utc=True)
    end_of_day = pd.Timestamp(date.fromisoformat(day) + timedelta(days=1), tz="UTC")
    v = visits[start < end_of_day]
    start = start[start < end_of_day]
    frames = {"total": v}
    for w in WINDOWS:
        frames[f"{w}d"] = v[start >= end_of_day - pd.Timedelta(days=w)]
    base = day_totals(v).set_index(KEY)
    cols = {}
    for name, f in frames.items():
        t = day_totals(f).set_index(KEY).reindex(base.index)
        cols[f"visits_{name}"] = t["visits"].fillna(0).astype(np.int64)
        cols[f"dwell_{name}_s"] = t["dwell_s"].fillna(0.0)
    history = base[["brand", "first_seen", "last_seen"]].assign(**cols).reset_index()
    history = history[history["last_seen"] >= _cutoff(day, retention_days)]
    return _typed(history)


def _typed(history: pd.DataFrame) -> pd.DataFrame:
    out = history[HISTORY_COLUMNS].astype(
        {**dict.fromkeys(COUNT_COLUMNS, np.int64), **dict.fromkeys(DWELL_COLUMNS, np.float64)}
    )
    for c in DWELL_COLUMNS:
        out[c] = out[c].round(3)
    return out.sort_values(KEY, ignore_index=True)


def _signed(totals: pd.DataFrame, signs: Mapping[str, int]) -> pd.DataFrame:
    """``totals`` (``day_totals``) as delta columns: ``sign`` x visits/dwell in each named
    measure (``total``, ``7d``, ...), 0 in the others."""
    names = ["total", *(f"{w}d" for w in WINDOWS)]
    visits, dwell = totals["visits"].to_numpy(), totals["dwell_s"].to_numpy()
    cols = {k: totals[k].to_numpy() for k in KEY}
    for name in names:
        s = signs.get(name, 0)
        cols[f"visits_{name}"] = visits * s
        cols[f"dwell_{name}_s"] = dwell * float(s)
    return pd.DataFrame(cols)


def history_invariants(df: pd.DataFrame) -> pd.Series:
    """Per row: at least one visit, first <= last seen, and for visits and dwell
    0 <= 7d <= 30d <= 90d <= total."""
    ok = (df["first_seen"] <= df["last_seen"]) & (df["visits_total"] >= 1)
    for chain, tol in (
        ([*(f"visits_{w}d" for w in WINDOWS), "visits_total"], 0.0),
        ([*(f"dwell_{w}d_s" for w in WINDOWS), "dwell_total_s"], 1e-3),
    ):
        ok &= df[chain[0]] >= 0
        for a, b in itertools.pairwise(chain):
            ok &= df[a] <= df[b] + tol
    return ok
