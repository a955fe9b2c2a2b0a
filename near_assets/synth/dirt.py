"""Planted dirt: every dirty row has exactly one reason, counted in ``truth/dirt/date=D.json``.

Reasons (shares of the rows written, default total 6.8 %):

- ``null_field``: one of device_id, ts, lat, lon is null (accuracy_m may be null legitimately:
  CONTRACTS makes it nullable, and about ``LEGIT_NULL_ACCURACY`` of clean rows have it null);
- ``out_of_range``: |lat| > 90 or |lon| > 180;
- ``zero_zero``: lat and lon exactly 0.0;
- ``duplicate``: an exact copy of a clean row (the original stays clean);
- ``outside_day``: ts outside the folder's UTC day (late arrivals, a few absurd dates);
- ``low_accuracy``: accuracy_m > 1000;
- ``high_density``: the exact coordinate of a "cell tower / IP centroid" point, each point
  reported by at least ``HD_MIN_DEVICES`` distinct devices that day (or all of them when fewer).

Check precedence for a cleaner that wants to reproduce the counts exactly: null_field,
out_of_range, zero_zero, outside_day, low_accuracy, duplicate, high_density.
"""

from __future__ import annotations

import numpy as np

REASONS = (
    "null_field",
    "out_of_range",
    "zero_zero",
    "duplicate",
    "outside_day",
    "low_accuracy",
    "high_density",
)
DEFAULT_SHARES = {
    "null_field": 0.012,
    "out_of_range": 0.008,
    "zero_zero": 0.008,
    "duplicate": 0.015,
    "outside_day": 0.008,
    "low_accuracy": 0.007,
    "high_density": 0.010,
}
DEFAULT_DIRT_SHARE = sum(DEFAULT_SHARES.values())
LEGIT_NULL_ACCURACY = 0.005
HD_MIN_DEVICES = 50
NULL_FIELDS = ("device_id", "ts", "lat", "lon")


def reason_shares(total: float) -> dict[str, float]:
    """Per-reason shares scaled so they add up to ``total`` (0 <= total < 0.9)."""
    if not 0.0 <= total < 0.9:
        raise ValueError(f"dirt share must be in [0, 0.9), got {total}")
    return {r: s * total / DEFAULT_DIRT_SHARE for r, s in DEFAULT_SHARES.items()}


def hd_points(seed: int, region_m: float, n: int = 5) -> np.ndarray:
    """Fixed "cell tower" coordinates (local metres), the same every day."""
    rng = np.random.default_rng([seed, 404])
    return rng.uniform(0.1 * region_m, 0.9 * region_m, (n, 2))


def plant_dirt(
    rng: np.random.Generator,
    cols: dict[str, np.ndarray],
    *,
    share: float,
    day_start_ms: int,
    towers_latlon: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Return new columns with planted dirt and the count per reason.

    ``cols`` holds clean rows sorted by device: ``dev`` (int index), ``t_ms`` (epoch ms),
    ``lat``, ``lon``, ``accuracy`` (float, NaN = null) and null masks are produced as
    ``null_dev``, ``null_ts``, ``null_lat``, ``null_lon`` (bool).
    """
    n = len(cols["dev"])
    out = {k: v.copy() for k, v in cols.items()}
    for f in NULL_FIELDS:
        out[f"null_{f}"] = np.zeros(n, dtype=bool)
    legit = rng.random(n) < LEGIT_NULL_ACCURACY
    out["accuracy"][legit] = np.nan
    counts = dict.fromkeys(REASONS, 0)
    if share <= 0 or n == 0:
        return out, {"rows": n, **counts}

    shares = reason_shares(share)
    rows_total = n / (1.0 - shares["duplicate"])
    want = {r: round(s * rows_total) for r, s in shares.items()}
    taken = np.zeros(n, dtype=bool)

    # high density first: spread each tower's rows over many distinct devices
    dev = out["dev"]
    dev_start = np.r_[0, np.flatnonzero(dev[1:] != dev[:-1]) + 1]
    dev_count = np.diff(np.r_[dev_start, n])
    n_dev = len(dev_start)
    n_hd = want["high_density"]
    n_towers = int(np.clip(n_hd // 60, 1, len(towers_latlon)))
    hd_rows = []
    hd_point = []
    for k, rows_k in enumerate(np.array_split(np.arange(n_hd), n_towers)):
        r = len(rows_k)
        if r == 0:
            continue
        m = min(n_dev, max(HD_MIN_DEVICES, r // 3))
        devs = rng.permutation(n_dev)[:m][np.arange(r) % m]
        picked = dev_start[devs] + (rng.random(r) * dev_count[devs]).astype(np.int64)
        picked = np.unique(picked)
        hd_rows.append(picked)
        hd_point.append(np.full(len(picked), k))
    if hd_rows:
        rows = np.concatenate(hd_rows)
        pts = np.concatenate(hd_point)
        rows, first = np.unique(rows, return_index=True)
        pts = pts[first]
        out["lat"][rows] = towers_latlon[pts, 0]
        out["lon"][rows] = towers_latlon[pts, 1]
        out["accuracy"][rows] = np.round(rng.uniform(50, 900, len(rows)), 1)
        taken[rows] = True
        counts["high_density"] = len(rows)

    pool = rng.permutation(np.flatnonzero(~taken))
    pos = 0

    def take(k: int) -> np.ndarray:
        nonlocal pos
        sel = pool[pos : pos + k]
        pos += len(sel)
        return sel

    rows = take(want["null_field"])
    which = rng.integers(0, len(NULL_FIELDS), len(rows))
    for i, f in enumerate(NULL_FIELDS):
        out[f"null_{f}"][rows[which == i]] = True
    counts["null_field"] = len(rows)

    rows = take(want["out_of_range"])
    kind = rng.integers(0, 3, len(rows))
    bad_lat = rng.uniform(90.001, 180.0, len(rows)) * rng.choice([-1.0, 1.0], len(rows))
    bad_lon = rng.uniform(180.001, 360.0, len(rows)) * rng.choice([-1.0, 1.0], len(rows))
    out["lat"][rows] = np.where(kind != 1, bad_lat, out["lat"][rows])
    out["lon"][rows] = np.where(kind != 0, bad_lon, out["lon"][rows])
    counts["out_of_range"] = len(rows)

    rows = take(want["zero_zero"])
    out["lat"][rows] = 0.0
    out["lon"][rows] = 0.0
    counts["zero_zero"] = len(rows)

    rows = take(want["outside_day"])
    kind = rng.choice(3, len(rows), p=[0.7, 0.2, 0.1])
    late = day_start_ms - rng.integers(60_000, 36 * 3_600_000, len(rows))
    early = day_start_ms + 86_400_000 + rng.integers(0, 6 * 3_600_000, len(rows))
    absurd = rng.choice([0, 4_102_444_800_000], len(rows)) + rng.integers(0, 86_400_000, len(rows))
    out["t_ms"][rows] = np.select([kind == 0, kind == 1], [late, early], absurd)
    counts["outside_day"] = len(rows)

    rows = take(want["low_accuracy"])
    acc = rng.uniform(1000.5, 8000.0, len(rows))
    out["accuracy"][rows] = np.round(acc, 1)
    jitter = rng.normal(0.0, 1.0, (len(rows), 2)) * (acc / 3 / 111_320.0)[:, None]
    out["lat"][rows] += jitter[:, 0]
    out["lon"][rows] += jitter[:, 1]
    counts["low_accuracy"] = len(rows)

    rows = take(want["duplicate"])
    src = rows[~legit[rows]]
    counts["duplicate"] = len(src)
    if len(src):
        order = np.sort(np.r_[np.arange(n), src])
        out = {k: v[order] for k, v in out.items()}
    total = len(out["dev"])
    return out, {"rows": total, **counts}
