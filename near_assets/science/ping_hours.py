"""``home.ping_hours`` as a per-device function for the Spark engine (``home_ping_hours``).

The same reduction (one row per device, ~100 m cell and UTC hour; ``ts`` the hour's start,
lat/lon the mean of its pings), with the cell kept as ``cell_y``/``cell_x`` so that the Spark
writer can order each day's rows exactly as ``home.ping_hours`` does (device, hour, cell),
and ``date`` (the clean-pings partition a ping came from) so that each day's hours come from
that day's pings only, as when the in-process asset reduces one day at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from near_assets.science.engine import per_device
from near_assets.science.home import HOUR_NS, HomeParams, _cells, empty_pings
from near_assets.science.stays import epoch_ns

PING_HOURS_SCHEMA = (
    "date string, device_id string, ts timestamp, lat double, lon double, cell_y bigint, "
    "cell_x bigint"
)
PING_HOURS_SORT = ["device_id", "ts", "cell_y", "cell_x"]


@per_device(PING_HOURS_SCHEMA)
def ping_hours_by_day(pings: pd.DataFrame, cell_m: float = HomeParams.cell_m) -> pd.DataFrame:
    """``home.ping_hours`` of each ``date`` of ``pings`` (device_id, ts, lat, lon, date), plus
    the cell of each row (``cell_y``, ``cell_x``)."""
    if pings.empty:
        out = empty_pings()
        return out.assign(
            date=pd.Series(dtype=object),
            cell_y=pd.Series(dtype="int64"),
            cell_x=pd.Series(dtype="int64"),
        )
    lat = pings["lat"].to_numpy(np.float64)
    lon = pings["lon"].to_numpy(np.float64)
    cy, cx = _cells(lat, lon, cell_m)
    frame = pd.DataFrame(
        {
            "date": pings["date"].to_numpy(object),
            "device_id": pings["device_id"].to_numpy(object),
            "hour": epoch_ns(pings["ts"]) // HOUR_NS,
            "cy": cy,
            "cx": cx,
            "lat": lat,
            "lon": lon,
        }
    )
    keys = ["date", "device_id", "hour", "cy", "cx"]
    out = frame.groupby(keys, sort=True)[["lat", "lon"]].mean().reset_index()
    return pd.DataFrame(
        {
            "date": out["date"].to_numpy(object),
            "device_id": out["device_id"].to_numpy(object),
            "ts": pd.to_datetime(out["hour"].to_numpy() * HOUR_NS, utc=True),
            "lat": out["lat"].to_numpy(),
            "lon": out["lon"].to_numpy(),
            "cell_y": out["cy"].to_numpy(np.int64),
            "cell_x": out["cx"].to_numpy(np.int64),
        }
    )
