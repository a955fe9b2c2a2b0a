"""Home location: where a device rests, from a trailing window of stays and (optionally) pings.

Evidence is counted in *distinct hours*: every stay is expanded to the UTC clock hours it
covers, every ping counts for its hour (a sparse night yields pings but no stay), and each
(device, place, hour) counts once however many stays or pings cover it. Places are
``cell_m`` grid cells, scored over their 3 x 3 neighbourhood (a home on a cell border is not
split) and described by the evidence inside that block. Local time is ``timezone``
(``LAKE_TIMEZONE``): *night* is ``night_start_h``..``night_end_h`` (22-07), *evening*
``evening_start_h``..``night_start_h`` (19-22), *day* the rest (07-19). For each device:

1. **night**: the place with most night hours (``N``) is the home;
2. **day_rest** (night-shift workers), only on positive evidence: another place ``D`` (the
   one with most day and evening hours outside ``N``'s block) holds day-time rest on at least
   ``day_rest_min_days`` local days and more evening hours than ``N``, while ``N`` is
   work-like (never seen there by day) and ``D``'s day and evening hours reach
   ``day_rest_ratio`` x ``N``'s night hours. Then ``D`` is the home;
3. **evening**: a device without any night evidence but seen in the evening is placed where
   it spends most evening hours (weaker evidence: its calibrated confidence is lower); a device
   with neither abstains. The place where a device spends its *days* is never a fallback: it
   is its workplace as often as its home;
4. the home point is the median of the evidence points of the chosen kind (night hours for
   ``night``, day and evening hours for ``day_rest``, evening hours for ``evening``) inside the
   block;
5. ``confidence`` is the calibrated probability that the true home lies within 200 m of the
   point: a logistic score of the evidence (:data:`FEATURES`) mapped through an isotonic
   curve, both fitted per method on the synthetic generator's truth across its realistic
   profiles (``bench/home_accuracy.py --fit``) and shipped in ``home_calibration.json``
   (versioned; the held-back profile is never used to fit it). Devices below
   ``min_confidence`` (default :data:`DEFAULT_MIN_CONFIDENCE`) are left out rather than
   guessed.

``nights`` is the number of distinct local nights (a night belongs to the local date on which
it starts) with night evidence at the home (``day_rest``: distinct local days of rest there;
``evening``: distinct evenings there); ``hours`` the distinct hours of evidence at the home.
See ``docs/HOME-MODEL.md`` for the figures per profile and stratum.

Pings are optional (``pings=``, columns device_id, ts, lat, lon): without them only stays
count, which is what the calibration's ``stays`` mode covers. :func:`ping_hours` reduces a
day's pings to one row per (device, cell, hour) so callers can store and pass that instead.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from near_assets.science.engine import per_device
from near_assets.science.stays import EARTH_M_PER_DEG, epoch_ns

HOUR_NS = 3_600 * 10**9
DAY_NS = 86_400 * 10**9
CALIBRATION_PATH = Path(__file__).with_name("home_calibration.json")
DEFAULT_MIN_CONFIDENCE = 0.5
"""Homes whose calibrated probability of being within 200 m is below this are left out:
a published home is more likely right than wrong."""

HOME_COLUMNS = ["device_id", "lat", "lon", "confidence", "nights", "hours", "method"]
HOME_SCHEMA = (
    "device_id string, lat double, lon double, confidence double, nights int, hours int, "
    "method string"
)
METHODS = ("night", "day_rest", "evening")
FEATURES = (
    "log_home_night_hours",
    "log_home_nights",
    "home_night_share",
    "home_nights_share",
    "log_home_evening_hours",
    "log_home_day_days",
    "log_home_hours",
    "log_other_night_hours",
    "log_other_evening_hours",
    "log_other_day_days",
    "rival_night_share",
    "log_device_hours",
    "log_device_nights",
    "log_device_days",
    "with_pings",
)
"""Evidence features of a chosen home (see :func:`home_candidates`): *home* is the chosen
place, *other* the alternative place of the other method (``N`` or ``D``), *rival* the best
night place outside the home's block."""


@dataclass(frozen=True)
class HomeParams:
    """Home inference parameters.

    - ``window_days`` (14): trailing days of evidence (including the day itself).
    - ``cell_m`` (100): grid cell size, metres (places are 3 x 3 cells).
    - ``night_start_h`` (22) / ``night_end_h`` (7): local night hours [start, 24) + [0, end).
    - ``evening_start_h`` (19): local evening hours [evening_start_h, night_start_h).
    - ``day_rest_ratio`` (1.0) / ``day_rest_min_days`` (2): the day-rest place's day and
      evening hours must reach this many times the night place's night hours, on at least
      this many local days.
    - ``hours_scale``: unused since confidence is calibrated (accepted so that older run
      configurations still load).
    - ``min_confidence`` (0.5): below this calibrated probability the device is left out.
    - ``max_stay_hours`` (36): longer stays are clipped (a device parked for days).
    """

    window_days: int = 14
    cell_m: float = 100.0
    night_start_h: int = 22
    night_end_h: int = 7
    evening_start_h: int = 19
    day_rest_ratio: float = 1.0
    day_rest_min_days: int = 2
    hours_scale: float = 4.0
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    max_stay_hours: int = 36

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodCalibration:
    """Logistic score then isotonic map (piecewise linear through ``iso_x``, ``iso_y``)."""

    intercept: float
    coef: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    iso_x: np.ndarray
    iso_y: np.ndarray

    def score(self, x: np.ndarray) -> np.ndarray:
        # A row-wise sum, not a matrix product: each device's score must not depend on how
        # many other devices share the call (Spark buckets, in-process runs give equal bytes).
        z = self.intercept + (((x - self.mean) / self.scale) * self.coef).sum(axis=1)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))

    def probability(self, x: np.ndarray) -> np.ndarray:
        return np.interp(self.score(x), self.iso_x, self.iso_y)

    def as_dict(self) -> dict[str, Any]:
        return {
            "intercept": round(float(self.intercept), 6),
            "coef": [round(float(v), 6) for v in self.coef],
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "iso_x": [round(float(v), 6) for v in self.iso_x],
            "iso_y": [round(float(v), 6) for v in self.iso_y],
        }


@dataclass(frozen=True)
class Calibration:
    """The versioned calibration table (``home_calibration.json``)."""

    version: str
    features: tuple[str, ...]
    methods: dict[str, MethodCalibration]
    meta: dict[str, Any]

    def probability(self, method: np.ndarray, x: np.ndarray) -> np.ndarray:
        """P(home within 200 m) for rows of features ``x`` (columns :data:`FEATURES`)."""
        out = np.zeros(len(method))
        for name, fit in self.methods.items():
            rows = method == name
            if rows.any():
                out[rows] = fit.probability(x[rows])
        return np.clip(out, 0.0, 1.0)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        methods = {
            name: MethodCalibration(
                intercept=float(m["intercept"]),
                coef=np.asarray(m["coef"], float),
                mean=np.asarray(m["mean"], float),
                scale=np.asarray(m["scale"], float),
                iso_x=np.asarray(m["iso_x"], float),
                iso_y=np.asarray(m["iso_y"], float),
            )
            for name, m in doc["methods"].items()
        }
        meta = {k: v for k, v in doc.items() if k not in ("version", "features", "methods")}
        return cls(str(doc["version"]), tuple(doc["features"]), methods, meta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            **self.meta,
            "features": list(self.features),
            "methods": {name: fit.as_dict() for name, fit in self.methods.items()},
        }


@functools.lru_cache(maxsize=4)
def load_calibration(path: str | None = None) -> Calibration:
    """The calibration table shipped with the code (or the JSON file at ``path``).

    Read as package data, so it also loads from a zipped package (Spark ``--py-files``)."""
    if path is None:
        text = resources.files(__package__).joinpath(CALIBRATION_PATH.name).read_text()
    else:
        text = Path(path).read_text()
    doc = json.loads(text)
    cal = Calibration.from_dict(doc)
    if cal.features != FEATURES:
        raise ValueError(f"{path or CALIBRATION_PATH}: features {cal.features} != {FEATURES}")
    return cal


def calibration_version() -> str:
    return load_calibration().version


# ---- evidence ----------------------------------------------------------------------------------


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


PING_COLUMNS = ["device_id", "ts", "lat", "lon"]


def empty_pings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": pd.Series(dtype=object),
            "ts": pd.Series(dtype="datetime64[ns, UTC]"),
            "lat": pd.Series(dtype="float64"),
            "lon": pd.Series(dtype="float64"),
        }
    )


def _cells(lat: np.ndarray, lon: np.ndarray, cell_m: float) -> tuple[np.ndarray, np.ndarray]:
    cy = np.floor(lat * EARTH_M_PER_DEG / cell_m).astype(np.int64)
    row_lat = (cy + 0.5) * cell_m / EARTH_M_PER_DEG
    cx = np.floor(lon * np.cos(np.radians(row_lat)) * EARTH_M_PER_DEG / cell_m).astype(np.int64)
    return cy, cx


def ping_hours(pings: pd.DataFrame, cell_m: float = HomeParams.cell_m) -> pd.DataFrame:
    """One row per (device, cell, UTC hour) of ``pings`` (device_id, ts, lat, lon): ts = the
    hour's start, lat/lon = the mean of its pings. Passing the result as ``pings`` gives the
    same homes, methods and confidences as passing the pings themselves (the point may move by
    a few metres), from a fraction of the rows: a day's clean pings can be reduced once and
    stored."""
    if pings.empty:
        return empty_pings()
    lat = pings["lat"].to_numpy(np.float64)
    lon = pings["lon"].to_numpy(np.float64)
    cy, cx = _cells(lat, lon, cell_m)
    frame = pd.DataFrame(
        {
            "device_id": pings["device_id"].to_numpy(object),
            "hour": epoch_ns(pings["ts"]) // HOUR_NS,
            "cy": cy,
            "cx": cx,
            "lat": lat,
            "lon": lon,
        }
    )
    out = frame.groupby(["device_id", "hour", "cy", "cx"], sort=True)[["lat", "lon"]].mean()
    out = out.reset_index()
    return pd.DataFrame(
        {
            "device_id": out["device_id"].to_numpy(object),
            "ts": pd.to_datetime(out["hour"].to_numpy() * HOUR_NS, utc=True),
            "lat": out["lat"].to_numpy(),
            "lon": out["lon"].to_numpy(),
        }
    )


@dataclass
class Evidence:
    """Distinct (device, cell, hour) evidence rows, devices as codes into ``labels``."""

    labels: np.ndarray
    dev: np.ndarray
    hour: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    night: np.ndarray
    evening: np.ndarray
    day: np.ndarray
    night_id: np.ndarray
    local_day: np.ndarray
    with_pings: bool

    @property
    def n_devices(self) -> int:
        return len(self.labels)


def evidence(
    stays: pd.DataFrame,
    pings: pd.DataFrame | None = None,
    timezone: str = "UTC",
    cell_m: float = HomeParams.cell_m,
    night_start_h: int = HomeParams.night_start_h,
    night_end_h: int = HomeParams.night_end_h,
    evening_start_h: int = HomeParams.evening_start_h,
    max_stay_hours: int = HomeParams.max_stay_hours,
) -> Evidence:
    """Stays expanded to the UTC hours they cover plus pings' hours, one row per distinct
    (device, cell, hour), with the local-time class of each hour."""
    start_h = epoch_ns(stays["start_ts"]) // HOUR_NS
    end_h = epoch_ns(stays["end_ts"]) // HOUR_NS
    n = np.clip(end_h - start_h + 1, 1, max_stay_hours)
    idx = np.repeat(np.arange(len(stays)), n)
    offset = np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n)
    ids = [stays["device_id"].to_numpy(object)[idx]]
    hours = [start_h[idx] + offset]
    lats = [stays["lat"].to_numpy(np.float64)[idx]]
    lons = [stays["lon"].to_numpy(np.float64)[idx]]
    with_pings = pings is not None
    if pings is not None and len(pings):
        ids.append(pings["device_id"].to_numpy(object))
        hours.append(epoch_ns(pings["ts"]) // HOUR_NS)
        lats.append(pings["lat"].to_numpy(np.float64))
        lons.append(pings["lon"].to_numpy(np.float64))
    codes, labels = pd.factorize(np.concatenate(ids), sort=True)
    dev = codes.astype(np.int64)
    hour = np.concatenate(hours).astype(np.int64)
    lat, lon = np.concatenate(lats), np.concatenate(lons)
    cy, cx = _cells(lat, lon, cell_m)
    # lat/lon last: which of several rows of one (device, cell, hour) is kept must not depend on
    # the input's row order (Spark buckets and in-process runs give the same bytes)
    order = np.lexsort((lon, lat, hour, cx, cy, dev))
    dev, hour, cy, cx, lat, lon = (a[order] for a in (dev, hour, cy, cx, lat, lon))
    first = np.ones(len(dev), dtype=bool)
    first[1:] = (
        (dev[1:] != dev[:-1]) | (cy[1:] != cy[:-1]) | (cx[1:] != cx[:-1]) | (hour[1:] != hour[:-1])
    )
    dev, hour, cy, cx, lat, lon = (a[first] for a in (dev, hour, cy, cx, lat, lon))

    uniq, inverse = np.unique(hour, return_inverse=True)
    local = pd.DatetimeIndex(pd.to_datetime(uniq * HOUR_NS, utc=True)).tz_convert(timezone)
    local_hour = local.hour.to_numpy()
    naive = local.tz_localize(None)
    local_day = naive.normalize().to_numpy().view(np.int64) // DAY_NS
    night_id = (naive - pd.Timedelta(hours=12)).normalize().to_numpy().view(np.int64) // DAY_NS
    lh = local_hour[inverse]
    night = (lh >= night_start_h) | (lh < night_end_h)
    evening = (lh >= evening_start_h) & (lh < night_start_h)
    return Evidence(
        labels=np.asarray(labels, dtype=object),
        dev=dev,
        hour=hour,
        cy=cy,
        cx=cx,
        lat=lat,
        lon=lon,
        night=night,
        evening=evening,
        day=~night & ~evening,
        night_id=night_id[inverse],
        local_day=local_day[inverse],
        with_pings=with_pings,
    )


def _place_scores(ev: Evidence) -> pd.DataFrame:
    """Per (device, cell): night, evening, day + evening (``rest``) and all hours, summed over
    the cell's 3 x 3 block."""
    cells = pd.DataFrame(
        {
            "dev": ev.dev,
            "cy": ev.cy,
            "cx": ev.cx,
            "night": ev.night.astype(np.int64),
            "evening": ev.evening.astype(np.int64),
            "rest": (ev.day | ev.evening).astype(np.int64),
            "all": np.ones(len(ev.dev), dtype=np.int64),
        }
    )
    own = cells.groupby(["dev", "cy", "cx"], sort=False).sum().reset_index()
    shifted = pd.concat(
        [
            own.assign(cy=own["cy"] + dy, cx=own["cx"] + dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ],
        ignore_index=True,
    )
    block = shifted.groupby(["dev", "cy", "cx"], sort=False)[
        ["night", "evening", "rest", "all"]
    ].sum()
    return own[["dev", "cy", "cx"]].join(block, on=["dev", "cy", "cx"])


def _best(
    scores: pd.DataFrame,
    column: str,
    n_devices: int,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per device the cell with the largest block ``column`` (> 0), ties to more evidence then
    the smaller cell; cells within one cell of ``exclude`` (cy, cx per device) are skipped.
    Returns (found, cy, cx) arrays indexed by device code."""
    s = scores[scores[column] > 0]
    if exclude is not None:
        ey, ex = exclude[0][s["dev"].to_numpy()], exclude[1][s["dev"].to_numpy()]
        far = (np.abs(s["cy"].to_numpy() - ey) > 1) | (np.abs(s["cx"].to_numpy() - ex) > 1)
        s = s[far]
    s = s.sort_values(
        ["dev", column, "all", "cy", "cx"],
        ascending=[True, False, False, True, True],
        kind="stable",
    ).drop_duplicates("dev")
    found = np.zeros(n_devices, dtype=bool)
    cy = np.full(n_devices, np.iinfo(np.int64).min // 4, dtype=np.int64)
    cx = cy.copy()
    d = s["dev"].to_numpy()
    found[d] = True
    cy[d], cx[d] = s["cy"].to_numpy(), s["cx"].to_numpy()
    return found, cy, cx


def _count(dev: np.ndarray, n: int, keys: np.ndarray | None = None) -> np.ndarray:
    """Rows (or distinct ``keys``) per device code."""
    if keys is not None and len(dev):
        pairs = np.unique(dev * (1 << 32) + (keys - keys.min()))
        dev = pairs >> 32
    return np.bincount(dev, minlength=n).astype(np.float64)


def _block_stats(ev: Evidence, cy0: np.ndarray, cx0: np.ndarray) -> dict[str, np.ndarray]:
    """Evidence of each device inside the 3 x 3 block around (cy0, cx0), distinct hours."""
    n = ev.n_devices
    inside = (np.abs(ev.cy - cy0[ev.dev]) <= 1) & (np.abs(ev.cx - cx0[ev.dev]) <= 1)
    rows = np.flatnonzero(inside)
    key = ev.dev[rows] * (1 << 32) + (ev.hour[rows] - (ev.hour.min() if len(ev.hour) else 0))
    _, keep = np.unique(key, return_index=True)
    rows = rows[keep]
    dev = ev.dev[rows]
    night, evening, day = ev.night[rows], ev.evening[rows], ev.day[rows]
    return {
        "rows": rows,
        "hours": _count(dev, n),
        "night_hours": _count(dev[night], n),
        "nights": _count(dev[night], n, ev.night_id[rows][night]),
        "evening_hours": _count(dev[evening], n),
        "evening_days": _count(dev[evening], n, ev.night_id[rows][evening]),
        "day_hours": _count(dev[day], n),
        "day_days": _count(dev[day], n, ev.local_day[rows][day]),
        "rest_days": _count(dev[day | evening], n, ev.local_day[rows][day | evening]),
    }


def _median_point(ev: Evidence, rows: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median lat/lon per device of the evidence ``rows`` where ``use`` (per row) holds."""
    r = rows[use]
    frame = pd.DataFrame({"dev": ev.dev[r], "lat": ev.lat[r], "lon": ev.lon[r]})
    med = frame.groupby("dev")[["lat", "lon"]].median()
    lat = np.full(ev.n_devices, np.nan)
    lon = np.full(ev.n_devices, np.nan)
    lat[med.index.to_numpy()] = med["lat"].to_numpy()
    lon[med.index.to_numpy()] = med["lon"].to_numpy()
    return lat, lon


def home_candidates(
    stays: pd.DataFrame,
    timezone: str = "UTC",
    pings: pd.DataFrame | None = None,
    cell_m: float = HomeParams.cell_m,
    night_start_h: int = HomeParams.night_start_h,
    night_end_h: int = HomeParams.night_end_h,
    evening_start_h: int = HomeParams.evening_start_h,
    day_rest_ratio: float = HomeParams.day_rest_ratio,
    day_rest_min_days: int = HomeParams.day_rest_min_days,
    max_stay_hours: int = HomeParams.max_stay_hours,
) -> pd.DataFrame:
    """The chosen home of every device with night or evening evidence, before calibration.

    Columns: device_id, lat, lon, nights, hours, method and the :data:`FEATURES` (what the
    calibration is fitted on, see ``bench/home_accuracy.py --fit``).
    """
    if stays.empty and (pings is None or pings.empty):
        return pd.DataFrame(columns=[*HOME_COLUMNS[:3], "nights", "hours", "method", *FEATURES])
    ev = evidence(
        stays, pings, timezone, cell_m, night_start_h, night_end_h, evening_start_h, max_stay_hours
    )
    n = ev.n_devices
    scores = _place_scores(ev)
    has_night, ny, nx = _best(scores, "night", n)
    has_evening, ey, ex = _best(scores, "evening", n)
    evening_only = ~has_night & has_evening
    py, px = np.where(has_night, ny, ey), np.where(has_night, nx, ex)
    primary = _block_stats(ev, py, px)  # N, or the evening place without night evidence
    has_rest, dy, dx = _best(scores, "rest", n, exclude=(py, px))
    rest = _block_stats(ev, dy, dx)
    rival_found, ry, rx = _best(scores, "night", n, exclude=(py, px))
    rival = _block_stats(ev, ry, rx)

    dev_night = _count(ev.dev[ev.night], n, ev.hour[ev.night])
    dev_nights = _count(ev.dev[ev.night], n, ev.night_id[ev.night])
    dev_hours = _count(ev.dev, n, ev.hour)
    dev_days = _count(ev.dev, n, ev.local_day)

    day_rest = (
        has_night
        & has_rest
        & (primary["day_days"] == 0)
        & (rest["day_days"] >= day_rest_min_days)
        & (rest["evening_days"] >= 1)
        & (rest["evening_hours"] > primary["evening_hours"])
        & (rest["day_hours"] + rest["evening_hours"] >= day_rest_ratio * primary["night_hours"])
    )
    keys = [k for k in primary if k != "rows"]
    home = {k: np.where(day_rest, rest[k], primary[k]) for k in keys}
    other = {k: np.where(day_rest, primary[k], rest[k]) for k in keys}
    rival_night = np.where(rival_found, rival["night_hours"], 0.0)

    pr = primary["rows"]
    p_lat, p_lon = _median_point(
        ev, pr, np.where(has_night[ev.dev[pr]], ev.night[pr], ev.evening[pr])
    )
    rr = rest["rows"]
    d_lat, d_lon = _median_point(ev, rr, ev.day[rr] | ev.evening[rr])
    lat = np.where(day_rest, d_lat, p_lat)
    lon = np.where(day_rest, d_lon, p_lon)

    feats = {
        "log_home_night_hours": np.log1p(home["night_hours"]),
        "log_home_nights": np.log1p(home["nights"]),
        "home_night_share": home["night_hours"] / np.maximum(dev_night, 1.0),
        "home_nights_share": home["nights"] / np.maximum(dev_nights, 1.0),
        "log_home_evening_hours": np.log1p(home["evening_hours"]),
        "log_home_day_days": np.log1p(home["day_days"]),
        "log_home_hours": np.log1p(home["hours"]),
        "log_other_night_hours": np.log1p(other["night_hours"]),
        "log_other_evening_hours": np.log1p(other["evening_hours"]),
        "log_other_day_days": np.log1p(other["day_days"]),
        "rival_night_share": rival_night / np.maximum(rival_night + primary["night_hours"], 1),
        "log_device_hours": np.log1p(dev_hours),
        "log_device_nights": np.log1p(dev_nights),
        "log_device_days": np.log1p(dev_days),
        "with_pings": np.full(n, float(ev.with_pings)),
    }
    nights = np.where(
        day_rest, rest["rest_days"], np.where(has_night, primary["nights"], primary["evening_days"])
    )
    out = pd.DataFrame(
        {
            "device_id": ev.labels,
            "lat": lat,
            "lon": lon,
            "nights": nights,
            "hours": home["hours"],
            "method": np.where(day_rest, "day_rest", np.where(has_night, "night", "evening")),
            **feats,
        }
    )
    keep = (has_night | evening_only) & np.isfinite(lat)
    return out[keep].reset_index(drop=True)


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
    pings: pd.DataFrame | None = None,
    evening_start_h: int = HomeParams.evening_start_h,
    day_rest_min_days: int = HomeParams.day_rest_min_days,
    calibration: str | None = None,
) -> pd.DataFrame:
    """Home of every device in ``stays`` (device_id, start_ts, end_ts, lat, lon); see module doc.

    ``pings`` (device_id, ts, lat, lon; raw clean pings or :func:`ping_hours`) add the hours of
    sparse nights that left no stay. Returns device_id, lat, lon (degrees), confidence (the
    calibrated probability that the true home is within 200 m), nights, hours and method
    (``night`` | ``day_rest`` | ``evening``), sorted by device; devices below ``min_confidence`` are left
    out. ``window_days`` and ``hours_scale`` are accepted for configuration symmetry (the caller
    chooses the window; confidence no longer has a scale). ``calibration``: path of another
    table (default: the one shipped with the code).
    """
    del hours_scale, window_days
    cand = home_candidates(
        stays,
        timezone,
        pings,
        cell_m,
        night_start_h,
        night_end_h,
        evening_start_h,
        day_rest_ratio,
        day_rest_min_days,
        max_stay_hours,
    )
    if cand.empty:
        return empty_homes()
    cal = load_calibration(calibration)
    cand["confidence"] = cal.probability(
        cand["method"].to_numpy(), cand[list(FEATURES)].to_numpy(np.float64)
    )
    out = cand[cand["confidence"] >= min_confidence][HOME_COLUMNS]
    out = out.astype({"nights": np.int32, "hours": np.int32})
    return out.sort_values("device_id", ignore_index=True)


HOMES_BY_DAY_SCHEMA = "date string, " + HOME_SCHEMA


def _start_day(ts: pd.Series) -> np.ndarray:
    return epoch_ns(ts) // DAY_NS if len(ts) else np.zeros(0, dtype=np.int64)


@per_device(HOMES_BY_DAY_SCHEMA)
def homes_by_day(
    stays: pd.DataFrame,
    as_of: list[str],
    window_days: int = HomeParams.window_days,
    pings: pd.DataFrame | None = None,
    ping_rows: bool = False,
    **params: Any,
) -> pd.DataFrame:
    """Homes as of each UTC day in ``as_of`` (YYYY-MM-DD) from the evidence of its trailing window.

    The window of day D is the ``window_days`` UTC days ending with D (stays by start, pings by
    ts). One call serves a whole backfill (one Spark job for a month). Columns: date +
    ``infer_homes``. ``ping_rows``: ``stays`` also holds the pings (or ping hours), as the rows
    with a ``ts`` (a Spark job reading both tables as one union); they are passed as ``pings``.
    """
    if ping_rows:
        is_ping = stays["ts"].notna().to_numpy() if "ts" in stays else np.zeros(len(stays), bool)
        pings = stays.loc[is_ping, PING_COLUMNS] if is_ping.any() else empty_pings()
        stays = stays[~is_ping]
    stay_day = _start_day(stays["start_ts"]) if len(stays) else np.zeros(0, dtype=np.int64)
    ping_day = _start_day(pings["ts"]) if pings is not None and len(pings) else None
    frames = []
    for day in as_of:
        d = pd.Timestamp(day).value // DAY_NS
        window = stays[(stay_day > d - window_days) & (stay_day <= d)]
        window_pings = pings
        if pings is not None and ping_day is not None:
            window_pings = pings[(ping_day > d - window_days) & (ping_day <= d)]
        homes = infer_homes(window, pings=window_pings, **params)
        frames.append(homes.assign(date=day)[["date", *HOME_COLUMNS]])
    if not frames:
        return empty_homes().assign(date=pd.Series(dtype=object))[["date", *HOME_COLUMNS]]
    return pd.concat(frames, ignore_index=True)
