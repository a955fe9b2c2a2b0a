"""Planted high-density points (the generator's ``hdp`` option; off by default).

An HDP is a place that many unrelated devices report although they are not there: a cell
tower's coordinate, an IP-geolocation centroid, an SDK's default coordinate. Each planted HDP
is fixed for the whole lake, active on a day with probability ``ACTIVE_P``, and takes over a
few pings of a Poisson number of random devices that day (their coordinate and accuracy are
replaced):

- ``cell_tower``: the exact coordinate; one accuracy value per tower (300, 500 or 750 m);
- ``ip_centroid``: within ``IP_JITTER_M`` of the centroid (providers round differently);
  accuracy null;
- ``sdk_default``: the exact coordinate; one accuracy value per SDK (5, 65 or 100 m).

Half the HDPs of each kind lie 15-40 m from one of the busiest POIs (a mall is not an HDP,
but an HDP may sit beside one); the others anywhere in the region, some with few devices.
The option also makes genuine coordinates realistic: each device's SDK reports 4 decimals
(~11 m, ``ROUND_SHARES``), 5 decimals or full precision, so busy places show devices sharing
exact coordinates too.

Truth: ``truth/hdp/part-0.parquet`` (hdp_id, kind, lat, lon, near_poi_id, devices_per_day,
accuracy_m, jitter_m) and ``truth/hdp_pings/date=D/part-0.parquet`` (device_id, ts, hdp_id:
the planted rows, before other dirt; a row dirt later changed may be missing from the clean
pings). Random draws use keys 720-723 only, so the other profiles' output is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from near_assets.synth.city import REGION_M, City

KINDS = ("cell_tower", "ip_centroid", "sdk_default")
PER_KIND = 4
ACTIVE_P = 0.9
IP_JITTER_M = 2.5
DEVICES_PER_DAY = {"cell_tower": (8, 40), "ip_centroid": (12, 50), "sdk_default": (6, 25)}
"""Range of each HDP's mean distinct devices a day (drawn once per HDP; a share of the panel
for small panels: at most ``MAX_PANEL_SHARE``)."""
MAX_PANEL_SHARE = 0.1
ACCURACY = {
    "cell_tower": (300.0, 500.0, 750.0),
    "ip_centroid": (np.nan,),
    "sdk_default": (5.0, 65.0, 100.0),
}
ROUND_SHARES = {4: 0.35, 5: 0.25}
"""Share of devices whose SDK rounds coordinates to 4 / 5 decimals (the rest: full precision)."""


@dataclass
class HdpPlan:
    table: pd.DataFrame
    """One row per HDP: hdp_id, kind, lat, lon, near_poi_id, devices_per_day, accuracy_m, jitter_m."""
    decimals: np.ndarray
    """Per device: decimals its SDK reports (4, 5, or -1 for full precision)."""


def plan_hdps(seed: int, city: City, devices: int) -> HdpPlan:
    """Where the HDPs are, how busy and how they report; and each device's coordinate rounding."""
    rng = np.random.default_rng([seed, 720])
    busiest = np.argsort(-city.poi_attract)[: max(8, PER_KIND * len(KINDS))]
    rows = []
    for kind in KINDS:
        lo, hi = DEVICES_PER_DAY[kind]
        for i in range(PER_KIND):
            near = i % 2 == 0
            if near:
                poi = int(rng.choice(busiest))
                angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(15.0, 40.0)
                x = city.poi_xy[poi, 0] + dist * np.cos(angle)
                y = city.poi_xy[poi, 1] + dist * np.sin(angle)
            else:
                poi = -1
                x, y = rng.uniform(0.1 * REGION_M, 0.9 * REGION_M, 2)
            lat, lon = city.frame.to_latlon(np.array([x]), np.array([y]))
            rows.append(
                {
                    "hdp_id": f"hdp-{kind}-{i}",
                    "kind": kind,
                    "lat": round(float(lat[0]), 6),
                    "lon": round(float(lon[0]), 6),
                    "near_poi_id": str(city.pois["poi_id"].iloc[poi]) if near else None,
                    "devices_per_day": float(
                        min(rng.uniform(lo, hi), max(3.0, MAX_PANEL_SHARE * devices))
                    ),
                    "accuracy_m": float(rng.choice(ACCURACY[kind])),
                    "jitter_m": IP_JITTER_M if kind == "ip_centroid" else 0.0,
                }
            )
    draw = np.random.default_rng([seed, 721]).random(devices)
    decimals = np.where(
        draw < ROUND_SHARES[4], 4, np.where(draw < sum(ROUND_SHARES.values()), 5, -1)
    )
    return HdpPlan(pd.DataFrame(rows), decimals)


def round_coordinates(cols: dict[str, np.ndarray], decimals: np.ndarray) -> None:
    """Round each ping's coordinate to its device's SDK precision (in place)."""
    d = decimals[cols["dev"]]
    for k in (4, 5):
        rows = d == k
        cols["lat"][rows] = np.round(cols["lat"][rows], k)
        cols["lon"][rows] = np.round(cols["lon"][rows], k)


def plant_hdps(seed: int, day_ordinal: int, cols: dict[str, np.ndarray], plan: HdpPlan) -> None:
    """Move a few pings of random devices onto each active HDP (in place); ``cols["hdp"]`` gets
    the HDP's row number (-1 elsewhere). ``cols`` are sorted by device."""
    rng = np.random.default_rng([seed, 722, day_ordinal])
    n = len(cols["dev"])
    cols["hdp"] = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return
    dev = cols["dev"]
    dev_start = np.r_[0, np.flatnonzero(dev[1:] != dev[:-1]) + 1]
    dev_count = np.diff(np.r_[dev_start, n])
    table = plan.table
    for h, row in enumerate(table.itertuples()):
        if rng.random() >= ACTIVE_P:
            continue
        m = int(min(len(dev_start), max(2, rng.poisson(row.devices_per_day))))
        devs = rng.permutation(len(dev_start))[:m]
        per = rng.integers(1, 5, m)
        picks = np.repeat(dev_start[devs], per) + (
            rng.random(per.sum()) * np.repeat(dev_count[devs], per)
        ).astype(np.int64)
        picks = np.unique(picks[cols["hdp"][picks] < 0])
        lat = np.full(len(picks), row.lat)
        lon = np.full(len(picks), row.lon)
        if row.jitter_m > 0:
            j = rng.uniform(-row.jitter_m, row.jitter_m, (len(picks), 2))
            lat = lat + j[:, 0] / 111_320.0
            lon = lon + j[:, 1] / (111_320.0 * np.cos(np.radians(row.lat)))
        cols["lat"][picks] = lat
        cols["lon"][picks] = lon
        cols["accuracy"][picks] = row.accuracy_m
        cols["hdp"][picks] = h


def planted_rows(
    cols: dict[str, np.ndarray], device_ids: np.ndarray, plan: HdpPlan
) -> pd.DataFrame:
    """``truth/hdp_pings`` of a day: device_id, ts (UTC), hdp_id of every planted row left."""
    rows = np.flatnonzero(cols["hdp"] >= 0)
    return pd.DataFrame(
        {
            "device_id": device_ids[cols["dev"][rows]].astype(str),
            "ts": pd.to_datetime(cols["t_ms"][rows], unit="ms", utc=True),
            "hdp_id": plan.table["hdp_id"].to_numpy()[cols["hdp"][rows]].astype(str),
        }
    ).drop_duplicates(["device_id", "ts"], ignore_index=True)
