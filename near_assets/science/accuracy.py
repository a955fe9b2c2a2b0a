"""Accuracy of the mobility models against the synthetic generator's ground truth.

- **stays**: a detected stay is correct when a true stay of the same device overlaps it in
  time and lies within ``match_m`` metres; precision = correct detected / detected, recall =
  *observable* true stays matched by a detected one / observable true stays. A true stay is
  observable when the device's pings inside it span at least ``min_duration_s`` (no detector
  can see a stay its pings do not cover; without ``pings`` every true stay at least that long
  counts). ``stay_recall_all`` is the recall over every true stay of that length.
- **visits**: a detected visit is correct when a true POI stay of the same device at the
  same ``poi_id`` overlaps it in time; recall over observable true POI stays (as above, with
  ``min_dwell_s``).
- **home**: share of published homes within ``within_m`` (200) metres of the true home
  (precision), coverage = published homes / devices eligible (observed in the window), and
  the highest-coverage confidence threshold whose precision reaches ``target_precision``.
- **home reliability**: ``confidence`` is a calibrated probability of being within 200 m, so
  per confidence bin (0-0.1, ..., 0.9-1) the share of homes within 200 m should match the
  bin's mean confidence (``home_reliability``, ``reliability_table``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in metres (vectorised)."""
    p1, p2 = np.radians(np.asarray(lat1, float)), np.radians(np.asarray(lat2, float))
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2, float) - np.asarray(lon1, float))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _overlaps(
    found: pd.DataFrame, truth: pd.DataFrame, on: list[str]
) -> tuple[pd.DataFrame, np.ndarray]:
    f = found.reset_index(drop=True).assign(_f=lambda d: np.arange(len(d)))
    t = truth.reset_index(drop=True).assign(_t=lambda d: np.arange(len(d)))
    pairs = f.merge(t, on=on, suffixes=("", "_true"))
    ok = (pairs["start_ts"] <= pairs["end_ts_true"]) & (pairs["start_ts_true"] <= pairs["end_ts"])
    return pairs, ok.to_numpy()


def clip_to_day(truth: pd.DataFrame, day: str | None) -> pd.DataFrame:
    """True intervals clipped to the UTC ``day`` (YYYY-MM-DD), dropping those outside it."""
    if day is None or truth.empty:
        return truth
    lo = pd.Timestamp(day, tz="UTC")
    hi = lo + pd.Timedelta(days=1)
    out = truth.assign(
        start_ts=pd.to_datetime(truth["start_ts"], utc=True).clip(lower=lo),
        end_ts=pd.to_datetime(truth["end_ts"], utc=True).clip(upper=hi),
    )
    return out[out["end_ts"] > out["start_ts"]]


def observed_span_s(truth: pd.DataFrame, pings: pd.DataFrame) -> np.ndarray:
    """Seconds between the first and last ping of the device inside each true interval."""
    from near_assets.science.stays import epoch_ns

    cats = pd.Index(pd.unique(pd.concat([truth["device_id"], pings["device_id"]]).astype(str)))
    pc = cats.get_indexer(pings["device_id"].astype(str)).astype(np.int64)
    pt = epoch_ns(pings["ts"]) // 1_000_000
    t0 = int(pt.min()) if len(pt) else 0
    scale = 10**11
    keys = np.sort(pc * scale + (pt - t0))
    tc = cats.get_indexer(truth["device_id"].astype(str)).astype(np.int64)
    lo_t = epoch_ns(truth["start_ts"]) // 1_000_000 - t0
    hi_t = epoch_ns(truth["end_ts"]) // 1_000_000 - t0
    lo = np.searchsorted(keys, tc * scale + lo_t, side="left")
    hi = np.searchsorted(keys, tc * scale + hi_t, side="right") - 1
    has = hi > lo
    span = np.zeros(len(truth))
    span[has] = (keys[hi[has]] - keys[lo[has]]) / 1000.0
    return span


def _eligible(
    truth: pd.DataFrame, pings: pd.DataFrame | None, min_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(observable, long enough) true-row indexes; see module doc."""
    dur = (truth["end_ts"] - truth["start_ts"]).dt.total_seconds().to_numpy()
    long_enough = np.flatnonzero(dur >= min_s)
    if pings is None or pings.empty:
        return long_enough, long_enough
    observable = np.flatnonzero(observed_span_s(truth, pings) >= min_s)
    return observable, long_enough


def stay_accuracy(
    found: pd.DataFrame,
    truth: pd.DataFrame,
    day: str | None = None,
    match_m: float = 150.0,
    min_duration_s: float = 600.0,
    pings: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Precision and recall of detected stays against true stays (see module doc).

    ``pings`` (device_id, ts) are the day's input pings: true stays of devices without pings
    are ignored, and recall counts observable stays.
    """
    truth = clip_to_day(truth, day)
    if pings is not None and len(truth):
        truth = truth[truth["device_id"].isin(pd.unique(pings["device_id"].astype(str)))]
    if found.empty or truth.empty:
        return {"stay_precision": None, "stay_recall": None, "true_stays": len(truth)}
    pairs, ok = _overlaps(found, truth, ["device_id"])
    near = haversine_m(pairs["lat"], pairs["lon"], pairs["lat_true"], pairs["lon_true"])
    good = pairs[ok & (near <= match_m)]
    observable, long_enough = _eligible(truth, pings, min_duration_s)
    hit = good["_t"].to_numpy()
    return {
        "stay_precision": _ratio(good["_f"].nunique(), len(found)),
        "stay_recall": _ratio(int(np.isin(observable, hit).sum()), len(observable)),
        "stay_recall_all": _ratio(int(np.isin(long_enough, hit).sum()), len(long_enough)),
        "true_stays": len(long_enough),
        "observable_stays": len(observable),
    }


def visit_accuracy(
    found: pd.DataFrame,
    truth_stays: pd.DataFrame,
    day: str | None = None,
    min_dwell_s: float = 300.0,
    pings: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Precision and recall of detected visits against true POI stays (see module doc)."""
    truth = truth_stays[truth_stays["poi_id"].notna()] if len(truth_stays) else truth_stays
    truth = clip_to_day(truth, day)
    if pings is not None and len(truth):
        truth = truth[truth["device_id"].isin(pd.unique(pings["device_id"].astype(str)))]
    if truth.empty:
        return {"visit_precision": None, "visit_recall": None, "true_visits": 0}
    eligible, long_enough = _eligible(truth, pings, min_dwell_s)
    if found.empty:
        return {"visit_precision": None, "visit_recall": 0.0, "true_visits": len(eligible)}
    pairs, ok = _overlaps(
        found[["device_id", "poi_id", "start_ts", "end_ts"]],
        truth[["device_id", "poi_id", "start_ts", "end_ts"]],
        ["device_id", "poi_id"],
    )
    good = pairs[ok]
    hit = good["_t"].to_numpy()
    return {
        "visit_precision": _ratio(good["_f"].nunique(), len(found)),
        "visit_recall": _ratio(int(np.isin(eligible, hit).sum()), len(eligible)),
        "visit_recall_all": _ratio(int(np.isin(long_enough, hit).sum()), len(long_enough)),
        "true_visits": len(long_enough),
        "observable_visits": len(eligible),
    }


def home_accuracy(
    homes: pd.DataFrame,
    truth_homes: pd.DataFrame,
    eligible_devices: Any = None,
    within_m: float = 200.0,
    target_precision: float = 0.98,
) -> dict[str, Any]:
    """Home precision within ``within_m``, coverage, and a confidence threshold for a target.

    ``eligible_devices``: the devices that could have a home (observed in the window); by
    default the published ones plus none missing (coverage 1).
    """
    devices = pd.Index(
        eligible_devices if eligible_devices is not None else homes["device_id"]
    ).unique()
    truth = truth_homes.set_index("device_id")
    scored = homes[homes["device_id"].isin(truth.index)].copy()
    t = truth.loc[scored["device_id"]]
    scored["error_m"] = haversine_m(scored["lat"], scored["lon"], t["home_lat"], t["home_lon"])
    hit = (scored["error_m"] <= within_m).to_numpy()
    out: dict[str, Any] = {
        "home_within_200m": _ratio(int(hit.sum()), len(scored)),
        "home_coverage": _ratio(int(homes["device_id"].isin(devices).sum()), len(devices)),
        "home_median_error_m": round(float(scored["error_m"].median()), 1) if len(scored) else None,
        "homes_scored": len(scored),
    }
    if len(scored):
        order = np.argsort(-scored["confidence"].to_numpy(), kind="stable")
        conf = scored["confidence"].to_numpy()[order]
        prec = np.cumsum(hit[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero(prec >= target_precision)
        if len(ok):
            k = ok[-1]
            out["home_threshold_for_98pct"] = round(float(conf[k]), 4)
            out["home_coverage_at_98pct"] = _ratio(k + 1, len(devices))
    return out


def reliability_table(confidence: Any, correct: Any, bins: int = 10) -> pd.DataFrame:
    """Per confidence bin ([i/bins, (i+1)/bins), the last one closed): homes, mean confidence,
    share correct and ``gap`` = share - mean confidence. Empty bins are left out."""
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    b = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for i in np.unique(b):
        m = b == i
        mean_conf, share = float(conf[m].mean()), float(ok[m].mean())
        rows.append(
            {
                "bin": f"{i / bins:.1f}-{(i + 1) / bins:.1f}",
                "homes": int(m.sum()),
                "mean_confidence": round(mean_conf, 4),
                "share_within": round(share, 4),
                "gap": round(share - mean_conf, 4),
            }
        )
    columns = ["bin", "homes", "mean_confidence", "share_within", "gap"]
    return pd.DataFrame(rows, columns=columns)


def home_reliability(
    homes: pd.DataFrame, truth_homes: pd.DataFrame, within_m: float = 200.0, bins: int = 10
) -> pd.DataFrame:
    """Reliability table of published homes (device_id, lat, lon, confidence) against
    ``truth_homes`` (device_id, home_lat, home_lon): per confidence bin, homes, mean
    confidence, share within ``within_m`` and the gap between the two (see
    ``reliability_table``). Devices without truth are skipped."""
    truth = truth_homes.set_index("device_id")
    scored = homes[homes["device_id"].isin(truth.index)]
    t = truth.loc[scored["device_id"]]
    err = haversine_m(scored["lat"], scored["lon"], t["home_lat"], t["home_lon"])
    return reliability_table(scored["confidence"], err <= within_m, bins)
