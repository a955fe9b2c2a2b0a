"""Home location: where a device rests, from a trailing window of stay points.

Evidence is counted in *distinct hours*: every stay is expanded to the clock hours it covers
(UTC hour buckets, each counted once per device and place however many stays cover it), and
places are ~``cell_m`` metre grid cells. For each device:

1. **night mode**: the cell with the most distinct night hours (local time in
   ``timezone``, ``night_start_h``..``night_end_h``, by default 22-07);
2. **rest by day** (night-shift workers): the cell with the most distinct hours over the
   whole day. When it is not the night cell, holds at least ``day_rest_ratio`` times the
   night cell's hours, most of its evidence is by day and it has more evening hours (18-22
   local) than the night cell (people spend the evening at home, night shift or not), the
   device rests by day and that cell is its home. A device without any night evidence also
   falls back to it (with half the confidence);
3. the home point is the evidence-weighted mean of the stay centroids within ``cell_m`` of
   the chosen cell's centroid (so a home on a cell border is not split);
4. ``confidence`` in 0..1 = share of the device's rest evidence in the chosen cell x
   (1 - exp(-hours / ``hours_scale``)), halved for a device without night evidence;
   devices below ``min_confidence`` are left out (abstention) rather than guessed.

``nights`` is the number of distinct local nights (a night belongs to the local date on
which it starts) with evidence at home.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from near_assets.science.engine import per_device
from near_assets.science.stays import EARTH_M_PER_DEG, epoch_ns

HOUR_NS = 3_600 * 10**9

HOME_COLUMNS = ["device_id", "lat", "lon", "confidence", "nights", "hours", "method"]
HOME_SCHEMA = (
    "device_id string, lat double, lon double, confidence double, nights int, hours int, "
    "method string"
)


@dataclass(frozen=True)
class HomeParams:
    """Home inference parameters.

    - ``window_days`` (14): trailing days of stay points (including the day itself).
    - ``cell_m`` (150): grid cell size, metres.
    - ``night_start_h`` (22) / ``night_end_h`` (7): local night hours [start, 24) + [0, end).
    - ``day_rest_ratio`` (1.0): a day-time rest cell replaces the night cell when it has at
      least this many times the night cell's total hours (night-shift workers).
    - ``hours_scale`` (4): hours of evidence for confidence 1 - 1/e of its share.
    - ``min_confidence`` (0.05): below this the device is left out (abstains).
    - ``max_stay_hours`` (36): longer stays are clipped (a device parked for days).
    """

    window_days: int = 14
    cell_m: float = 150.0
    night_start_h: int = 22
    night_end_h: int = 7
    day_rest_ratio: float = 1.0
    hours_scale: float = 4.0
    min_confidence: float = 0.05
    max_stay_hours: int = 36

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def empty_homes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": pd.Series(dtype=object),
            "lat": pd.Series(dtype="float64"),
            "lon": pd.Series(dtype="float64"),
            "confidence": pd.Series(dtype="float64"),
            "nights": pd.Series(dtype="int32"),
            "hours": pd.Series(dtype="int32"),
            "method": pd.Series(dtype=object),
        }
    )


def hour_evidence(
    stays: pd.DataFrame,
    timezone: str = "UTC",
    cell_m: float = HomeParams.cell_m,
    night_start_h: int = HomeParams.night_start_h,
    night_end_h: int = HomeParams.night_end_h,
    max_stay_hours: int = HomeParams.max_stay_hours,
    evening_start_h: int = 18,
) -> pd.DataFrame:
    """One row per (device, stay, UTC hour bucket) covered by a stay.

    Columns: device_id, hour (UTC hour index), lat, lon, cy, cx (grid cell), night and
    evening (bool: local night hour; local hour from ``evening_start_h`` to the night), night_id (local date the night started, as days since epoch).
    """
    start_h = epoch_ns(stays["start_ts"]) // HOUR_NS
    end_h = epoch_ns(stays["end_ts"]) // HOUR_NS
    n = np.clip(end_h - start_h + 1, 1, max_stay_hours)
    idx = np.repeat(np.arange(len(stays)), n)
    offset = np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n)
    hour = start_h[idx] + offset
    local = pd.DatetimeIndex(pd.to_datetime(hour * HOUR_NS, utc=True)).tz_convert(timezone)
    local_hour = local.hour.to_numpy()
    night = (local_hour >= night_start_h) | (local_hour < night_end_h)
    evening = (local_hour >= evening_start_h) & (local_hour < night_start_h)
    night_id = (local - pd.Timedelta(hours=12)).tz_localize(None).normalize().to_numpy().view(
        np.int64
    ) // (86_400 * 10**9)
    lat = stays["lat"].to_numpy(np.float64)[idx]
    lon = stays["lon"].to_numpy(np.float64)[idx]
    cy = np.floor(lat * EARTH_M_PER_DEG / cell_m).astype(np.int64)
    row_lat = (cy + 0.5) * cell_m / EARTH_M_PER_DEG
    cx = np.floor(lon * np.cos(np.radians(row_lat)) * EARTH_M_PER_DEG / cell_m).astype(np.int64)
    return pd.DataFrame(
        {
            "device_id": stays["device_id"].to_numpy(object)[idx],
            "hour": hour,
            "lat": lat,
            "lon": lon,
            "cy": cy,
            "cx": cx,
            "night": night,
            "evening": evening,
            "night_id": night_id,
        }
    )


def _cell_table(ev: pd.DataFrame) -> pd.DataFrame:
    """Per (device, cell): distinct hours overall, at night and in the evening."""
    uniq = ev.drop_duplicates(["device_id", "cy", "cx", "hour"])
    return (
        uniq.groupby(["device_id", "cy", "cx"], sort=False)
        .agg(hours=("hour", "size"), night_hours=("night", "sum"), evening=("evening", "sum"))
        .reset_index()
    )


def _argmax(cells: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per device, the cell row with the largest ``column`` (ties: smallest cell index)."""
    ranked = cells.sort_values(
        ["device_id", column, "cy", "cx"], ascending=[True, False, True, True], kind="stable"
    )
    return ranked.drop_duplicates("device_id").set_index("device_id")


@per_device(HOME_SCHEMA)
def infer_homes(
    stays: pd.DataFrame,
    timezone: str = "UTC",
    cell_m: float = HomeParams.cell_m,
    night_start_h: int = HomeParams.night_start_h,
    night_end_h: int = HomeParams.night_end_h,
    day_rest_ratio: float = HomeParams.day_rest_ratio,
    hours_scale: float = HomeParams.hours_scale,
    min_confidence: float = HomeParams.min_confidence,
    max_stay_hours: int = HomeParams.max_stay_hours,
    window_days: int = HomeParams.window_days,
) -> pd.DataFrame:
    """Home of every device in ``stays`` (device_id, start_ts, end_ts, lat, lon); see module doc.

    Returns device_id, lat, lon (degrees), confidence (0..1), nights, hours (distinct hours of
    evidence at home) and method (``night`` | ``day_rest``), sorted by device; devices whose
    confidence is below ``min_confidence`` are left out. ``window_days`` is accepted for
    configuration symmetry (the caller chooses the window of stays).
    """
    if stays.empty:
        return empty_homes()
    ev = hour_evidence(stays, timezone, cell_m, night_start_h, night_end_h, max_stay_hours)
    cells = _cell_table(ev)
    totals = cells.groupby("device_id", sort=False)[["hours", "night_hours"]].sum()
    best_all = _argmax(cells, "hours")
    best_night = _argmax(cells[cells["night_hours"] > 0], "night_hours")
    dev = best_all.join(best_night, rsuffix="_n").join(totals, rsuffix="_total")
    has_night = dev["night_hours_n"].notna().to_numpy() & (dev["night_hours_n"].fillna(0) > 0)
    a_hours = dev["hours"].to_numpy(np.float64)
    n_cell_hours = dev["hours_n"].fillna(0).to_numpy(np.float64)
    same = (dev["cy"].to_numpy() == dev["cy_n"].to_numpy()) & (
        dev["cx"].to_numpy() == dev["cx_n"].to_numpy()
    )
    a_night = dev["night_hours"].to_numpy(np.float64)
    evening_more = dev["evening"].to_numpy(np.float64) > dev["evening_n"].fillna(0).to_numpy()
    by_day = (~has_night) | (
        ~same
        & (a_hours >= day_rest_ratio * n_cell_hours)
        & evening_more
        & (a_night < 0.5 * a_hours)
    )
    cy = np.where(by_day, dev["cy"], dev["cy_n"].fillna(0)).astype(np.int64)
    cx = np.where(by_day, dev["cx"], dev["cx_n"].fillna(0)).astype(np.int64)
    hours = np.where(by_day, a_hours, dev["night_hours_n"].fillna(0)).astype(np.float64)
    total = np.where(by_day, dev["hours_total"], dev["night_hours_total"].clip(lower=1)).astype(
        np.float64
    )
    confidence = (hours / total) * (1.0 - np.exp(-hours / hours_scale))
    confidence = np.where(has_night, confidence, 0.5 * confidence)
    choice = pd.DataFrame(
        {
            "device_id": dev.index.to_numpy(object),
            "cy": cy,
            "cx": cx,
            "hours": hours.astype(np.int32),
            "confidence": np.clip(confidence, 0.0, 1.0),
            "method": np.where(by_day, "day_rest", "night"),
        }
    )
    choice = choice[choice["confidence"] >= min_confidence]
    located = _locate(ev, choice, cell_m)
    return located[HOME_COLUMNS].sort_values("device_id", ignore_index=True)


def _locate(ev: pd.DataFrame, choice: pd.DataFrame, cell_m: float) -> pd.DataFrame:
    """Home point and nights for each chosen (device, cell)."""
    uniq = ev.drop_duplicates(["device_id", "cy", "cx", "hour"])
    in_cell = uniq.merge(choice[["device_id", "cy", "cx"]], on=["device_id", "cy", "cx"])
    centre = in_cell.groupby("device_id")[["lat", "lon"]].mean()
    near = uniq.merge(centre, left_on="device_id", right_index=True, suffixes=("", "_c"))
    kx = np.cos(np.radians(near["lat_c"].to_numpy())) * EARTH_M_PER_DEG
    d = np.hypot(
        (near["lon"].to_numpy() - near["lon_c"].to_numpy()) * kx,
        (near["lat"].to_numpy() - near["lat_c"].to_numpy()) * EARTH_M_PER_DEG,
    )
    near = near[d <= cell_m]
    point = near.groupby("device_id")[["lat", "lon"]].mean()
    nights = near[near["night"]].groupby("device_id")["night_id"].nunique().rename("nights")
    out = choice.set_index("device_id").join(point).join(nights)
    out["nights"] = out["nights"].fillna(0).astype(np.int32)
    return out.reset_index()


HOMES_BY_DAY_SCHEMA = "date string, " + HOME_SCHEMA


@per_device(HOMES_BY_DAY_SCHEMA)
def homes_by_day(
    stays: pd.DataFrame,
    as_of: list[str],
    window_days: int = HomeParams.window_days,
    **params: Any,
) -> pd.DataFrame:
    """Homes as of each UTC day in ``as_of`` (YYYY-MM-DD) from the stays of its trailing window.

    The window of day D is the ``window_days`` UTC days ending with D (by stay start). One
    call serves a whole backfill (one Spark job for a month). Columns: date + ``infer_homes``.
    """
    start_day = epoch_ns(stays["start_ts"]) // (86_400 * 10**9) if len(stays) else np.zeros(0)
    frames = []
    for day in as_of:
        d = pd.Timestamp(day).value // (86_400 * 10**9)
        window = stays[(start_day > d - window_days) & (start_day <= d)]
        homes = infer_homes(window, **params)
        frames.append(homes.assign(date=day)[["date", *HOME_COLUMNS]])
    if not frames:
        return empty_homes().assign(date=pd.Series(dtype=object))[["date", *HOME_COLUMNS]]
    return pd.concat(frames, ignore_index=True)
