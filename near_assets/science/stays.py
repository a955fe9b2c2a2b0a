"""Stay points: where a device stood still.

A device *stays* while its pings remain within ``radius_m`` metres of the running centroid of
the pings collected so far, for at least ``min_duration_s`` seconds. The stay runs from the
first to the **last ping inside the radius** (never up to the next ping: one travel ping
followed by a long sampling gap is a zero-length group, not a stay). Two consecutive pings
further apart in time than ``max_gap_s`` close the stay, and a single outlying ping (a GPS
jump) between two pings inside the radius is skipped rather than ending the stay.

The scan is one pass over pings sorted by (device, time), compiled with numba: no Python loop
over rows. Units: metres, seconds, UTC.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd

from near_assets.science.engine import per_device

EARTH_M_PER_DEG = 111_320.0
DAY_NS = 86_400 * 10**9

STAY_COLUMNS = ["device_id", "start_ts", "end_ts", "lat", "lon", "n_pings", "duration_s"]
STAY_SCHEMA = (
    "device_id string, start_ts timestamp, end_ts timestamp, lat double, lon double, "
    "n_pings int, duration_s double"
)


@dataclass(frozen=True)
class StayParams:
    """Stay detection parameters.

    - ``radius_m`` (100): how far (metres) a ping may be from the stay's running centroid.
    - ``min_duration_s`` (300): shortest stay, first to last ping inside the radius.
    - ``max_gap_s`` (7200): a longer silence between two pings inside the radius ends the
      stay (sparse panels sample about 2 pings/h, so an hour-long gap is normal).
    - ``min_pings`` (2): fewest pings in a stay.
    - ``max_outliers`` (1): consecutive outlying pings tolerated inside a stay when the next
      ping is back inside the radius.
    - ``split_days`` (True): stays end at UTC midnight, so a day's stays depend on that
      day's pings only, however many days one call (or one Spark job) processes.
    """

    radius_m: float = 100.0
    min_duration_s: float = 300.0
    max_gap_s: float = 7200.0
    min_pings: int = 2
    max_outliers: int = 1
    split_days: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@numba.njit(cache=True, nogil=True)
def _dist2_m(lat0: float, lon0: float, lat1: float, lon1: float, kx: float) -> float:
    dx = (lon1 - lon0) * kx
    dy = (lat1 - lat0) * EARTH_M_PER_DEG
    return dx * dx + dy * dy


@numba.njit(cache=True, nogil=True)
def _scan(
    dev: np.ndarray,
    t: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    radius_m: float,
    min_duration_s: float,
    max_gap_s: float,
    min_pings: int,
    max_outliers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stays over pings sorted by (dev, t); t in seconds. Returns first/last row, lat, lon, n."""
    n = t.shape[0]
    first = np.empty(n // 2 + 1, np.int64)
    last = np.empty(n // 2 + 1, np.int64)
    clat = np.empty(n // 2 + 1, np.float64)
    clon = np.empty(n // 2 + 1, np.float64)
    count = np.empty(n // 2 + 1, np.int64)
    r2 = radius_m * radius_m
    k = 0
    i = 0
    while i < n:
        d = dev[i]
        kx = np.cos(np.radians(lat[i])) * EARTH_M_PER_DEG
        slat = lat[i]
        slon = lon[i]
        cnt = 1
        end = i
        j = i + 1
        while j < n and dev[j] == d and t[j] - t[end] <= max_gap_s:
            mlat = slat / cnt
            mlon = slon / cnt
            if _dist2_m(mlat, mlon, lat[j], lon[j], kx) <= r2:
                slat += lat[j]
                slon += lon[j]
                cnt += 1
                end = j
                j += 1
                continue
            back = -1
            m = j + 1
            while m < n and m - j <= max_outliers and dev[m] == d and t[m] - t[end] <= max_gap_s:
                if _dist2_m(mlat, mlon, lat[m], lon[m], kx) <= r2:
                    back = m
                    break
                m += 1
            if back < 0:
                break
            j = back
        if cnt >= min_pings and t[end] - t[i] >= min_duration_s:
            first[k] = i
            last[k] = end
            clat[k] = slat / cnt
            clon[k] = slon / cnt
            count[k] = cnt
            k += 1
            i = end + 1
        else:
            i += 1
    return first[:k], last[:k], clat[:k], clon[:k], count[:k]


def to_utc(ts: pd.Series) -> pd.Series:
    """Timestamps as ``datetime64[ns, UTC]`` (naive values are UTC, integers epoch ms)."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype) and str(ts.dtype.tz) == "UTC":
        return ts.dt.as_unit("ns") if ts.dtype.unit != "ns" else ts
    if pd.api.types.is_integer_dtype(ts.dtype):
        return pd.to_datetime(ts, unit="ms", utc=True).dt.as_unit("ns")
    return pd.to_datetime(ts, utc=True).dt.as_unit("ns")


def epoch_ns(ts: pd.Series) -> np.ndarray:
    """UTC epoch nanoseconds (int64) of a timestamp column."""
    return to_utc(ts).to_numpy(dtype="datetime64[ns]").view(np.int64)


@numba.njit(cache=True, nogil=True)
def _is_sorted(dev: np.ndarray, t: np.ndarray) -> bool:
    for i in range(1, dev.shape[0]):
        if dev[i] < dev[i - 1] or (dev[i] == dev[i - 1] and t[i] < t[i - 1]):
            return False
    return True


def sort_pings(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Device codes, device labels, epoch-ns times and the row order sorting by (device, ts).

    Already grouped and time-sorted input (as ``clean_pings`` writes it) skips the sort.
    """
    ids = df["device_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype):
        codes, labels = ids.cat.codes.to_numpy(), ids.cat.categories.to_numpy()
    else:
        codes, labels = pd.factorize(ids, sort=False)
    codes = codes.astype(np.int64)
    t = epoch_ns(df["ts"])
    order = np.arange(len(df)) if _is_sorted(codes, t) else np.lexsort((t, codes))
    return codes, np.asarray(labels, dtype=object), t, order


def empty_stays() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": pd.Series(dtype=object),
            "start_ts": pd.Series(dtype="datetime64[ns, UTC]"),
            "end_ts": pd.Series(dtype="datetime64[ns, UTC]"),
            "lat": pd.Series(dtype="float64"),
            "lon": pd.Series(dtype="float64"),
            "n_pings": pd.Series(dtype="int32"),
            "duration_s": pd.Series(dtype="float64"),
        }
    )


@per_device(STAY_SCHEMA)
def detect_stays(
    pings: pd.DataFrame,
    radius_m: float = StayParams.radius_m,
    min_duration_s: float = StayParams.min_duration_s,
    max_gap_s: float = StayParams.max_gap_s,
    min_pings: int = StayParams.min_pings,
    max_outliers: int = StayParams.max_outliers,
    split_days: bool = StayParams.split_days,
) -> pd.DataFrame:
    """Stay points of every device in ``pings`` (columns device_id, ts, lat, lon).

    Returns one row per stay: device_id, start_ts, end_ts (UTC, first and last ping inside the
    radius), lat, lon (centroid of the stay's pings, degrees), n_pings, duration_s; sorted by
    device and start.
    """
    if pings.empty:
        return empty_stays()
    codes, labels, t_ns, order = sort_pings(pings)
    t_ns = t_ns[order]
    lat = pings["lat"].to_numpy(dtype=np.float64)[order]
    lon = pings["lon"].to_numpy(dtype=np.float64)[order]
    dev = codes[order]
    group = dev * 1_000_000 + t_ns // DAY_NS if split_days else dev
    first, last, clat, clon, count = _scan(
        group,
        t_ns / 1e9,
        lat,
        lon,
        float(radius_m),
        float(min_duration_s),
        float(max_gap_s),
        int(min_pings),
        int(max_outliers),
    )
    start = t_ns[first]
    end = t_ns[last]
    out = pd.DataFrame(
        {
            "device_id": labels[dev[first]],
            "start_ts": pd.to_datetime(start, utc=True),
            "end_ts": pd.to_datetime(end, utc=True),
            "lat": clat,
            "lon": clon,
            "n_pings": count.astype(np.int32),
            "duration_s": (end - start) / 1e9,
        }
    )
    return out.sort_values(["device_id", "start_ts"], kind="stable", ignore_index=True)


def stays_per_device(stays: pd.DataFrame, devices: int) -> float:
    """Mean stays per observed device (0 when no device was observed)."""
    return float(len(stays) / devices) if devices else 0.0
