"""One UTC day of movement for a block of panel devices: true stays, travel, and sampled pings.

A device-day is a fixed sequence of up to eight slots, laid out in UTC clock time:

    W0 work (night shift, after a work night) | H1 home | W2 work (day shift) |
    V3 V4 V5 POI visits | H6 home | W7 work (night shift, on work nights)

Each slot is either valid or not for a device; start = end of the previous valid slot + travel
time, end = a target clock time or start + dwell. The first valid slot starts at 00:00 and the
last ends at 24:00, so stays and travel cover the day without holes. Everything is vectorised
over devices; Python only loops over the eight slots. On an *away night* (realistic profiles) the
evening home slot H6 of that day and the morning slot H1 of the next are at the device's second
place (kind ``away``) instead of its home.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from near_assets.synth.panel import VISITS_PER_DAY_P, Profile

DAY_S = 86_400.0
HOME, WORK, POI, AWAY = 0, 1, 2, 3
KIND_NAMES = np.array(["home", "work", "poi", "away"], dtype=object)
MIN_STAY_S = 300.0
TRAVEL_OVERHEAD_S = 180.0
HOUR_WEIGHT = np.array([0.35] * 6 + [0.8] * 2 + [1.0] * 14 + [0.6] * 2)
NIGHT_HOURS = (23, 0, 1, 2, 3, 4, 5)
HALF_NIGHT_HOURS = (22, 6)
N_SLOTS = 8
VISIT_SLOTS = (3, 4, 5)


@dataclass
class DayStays:
    """Stays of a block of devices for one day (seconds since 00:00 UTC, local metres)."""

    dev: np.ndarray
    start: np.ndarray
    end: np.ndarray
    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    poi: np.ndarray


@dataclass
class DayPings:
    dev: np.ndarray
    t_ms: np.ndarray
    x: np.ndarray
    y: np.ndarray
    accuracy: np.ndarray


def _travel_s(a: np.ndarray, b: np.ndarray, speed: np.ndarray) -> np.ndarray:
    dist = np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])
    return np.where(dist > 1.0, TRAVEL_OVERHEAD_S + dist / speed, 0.0)


def _hours(rng: np.random.Generator, mean_h: float, sd_h: float, lo: float, hi: float, n: int):
    return np.clip(rng.normal(mean_h, sd_h, n), lo, hi) * 3600.0


def schedule_day(
    rng: np.random.Generator,
    *,
    home_xy: np.ndarray,
    work_xy: np.ndarray,
    night: np.ndarray,
    speed: np.ndarray,
    choice_p: np.ndarray,
    poi_xy: np.ndarray,
    workday: bool,
    prev_workday: bool,
    away_xy: np.ndarray | None = None,
    away_morning: np.ndarray | None = None,
    away_evening: np.ndarray | None = None,
) -> DayStays:
    """The true stays of every device of the block on one day (all devices, observed or not).

    ``away_morning`` / ``away_evening`` (bool per device): the night before / after this day
    is spent at ``away_xy``.
    """
    n = len(home_xy)
    day_shift = ~night
    k_visits = rng.choice(len(VISITS_PER_DAY_P), n, p=VISITS_PER_DAY_P)
    cdf = np.cumsum(choice_p, axis=1)
    u = rng.random((n, 3)) * cdf[:, -1:]
    picks = np.minimum((cdf[:, None, :] < u[:, :, None]).sum(axis=2), choice_p.shape[1] - 1)
    dwell_v = rng.uniform(10, 120, (n, 3)) * 60.0

    day_off = rng.random(n) < 0.05
    work_day = day_shift & workday & ~day_off
    t_leave = _hours(rng, 7.75, 0.5, 5.5, 10.0, n)
    t_work_end = _hours(rng, 17.25, 0.67, 14.0, 20.0, n)
    t_out = rng.uniform(10.0, 13.0, n) * 3600.0
    t_shift_end = _hours(rng, 6.0, 0.33, 5.0, 7.0, n)
    t_aft = rng.uniform(14.5, 16.5, n) * 3600.0
    t_depart = _hours(rng, 21.3, 0.25, 20.5, 21.8, n)
    has_v = k_visits > 0

    loc = np.zeros((n, N_SLOTS, 2))
    loc[:, [0, 2, 7]] = work_xy[:, None, :]
    loc[:, [1, 6]] = home_xy[:, None, :]
    loc[:, 3:6] = poi_xy[picks]
    kind = np.array([WORK, HOME, WORK, POI, POI, POI, HOME, WORK])
    kinds = np.broadcast_to(kind, (n, N_SLOTS))
    if away_xy is not None and away_morning is not None and away_evening is not None:
        loc[away_morning, 1] = away_xy[away_morning]
        loc[away_evening, 6] = away_xy[away_evening]
        kinds = kinds.copy()
        kinds[away_morning, 1] = AWAY
        kinds[away_evening, 6] = AWAY
    poi = np.full((n, N_SLOTS), -1)
    poi[:, 3:6] = picks

    valid = np.zeros((n, N_SLOTS), dtype=bool)
    valid[:, 0] = night & prev_workday
    valid[:, 1] = True
    valid[:, 2] = work_day
    valid[:, 3:6] = np.arange(3)[None, :] < k_visits[:, None]
    valid[:, 6] = np.where(night, has_v, work_day | has_v)
    valid[:, 7] = night & workday

    dwell = np.zeros((n, N_SLOTS))
    dwell[:, 3:6] = dwell_v
    last_slot, last_poi = np.full(n, -1), np.full(n, -1)
    for k in VISIT_SLOTS:
        same = valid[:, k] & (poi[:, k] == last_poi)
        rows = np.flatnonzero(same)
        dwell[rows, last_slot[rows]] += dwell[rows, k]
        valid[same, k] = False
        fresh = valid[:, k]
        last_slot[fresh], last_poi[fresh] = k, poi[fresh, k]

    chain_start = np.where(night, t_aft, np.where(work_day, t_work_end, t_out))
    limit = np.where(night & workday, t_depart - 600.0, 23.0 * 3600.0)
    prev = np.where(work_day[:, None], work_xy, home_xy)
    travel_sum = np.zeros(n)
    for k in VISIT_SLOTS:
        v = valid[:, k]
        travel_sum += np.where(v, _travel_s(prev, loc[:, k], speed), 0.0)
        prev = np.where(v[:, None], loc[:, k], prev)
    travel_sum += _travel_s(prev, home_xy, speed)
    total = (dwell[:, 3:6] * valid[:, 3:6]).sum(axis=1)
    available = limit - chain_start - travel_sum
    scale = np.where(total > available, np.maximum(available, 0.0) / np.maximum(total, 1.0), 1.0)
    dwell[:, 3:6] = np.maximum(dwell[:, 3:6] * scale[:, None], 600.0)

    target = np.full((n, N_SLOTS), np.nan)
    target[:, 0] = t_shift_end
    target[:, 1] = np.where(
        night,
        np.where(has_v, t_aft, np.where(workday, t_depart, DAY_S)),
        np.where(work_day, t_leave, np.where(has_v, t_out, DAY_S)),
    )
    target[:, 2] = t_work_end
    target[:, 6] = np.where(night & workday, t_depart, DAY_S)
    target[:, 7] = DAY_S
    min_dwell = np.array([0, 600, 3600, 0, 0, 0, 600, 0], dtype=float)

    start = np.zeros((n, N_SLOTS))
    end = np.zeros((n, N_SLOTS))
    cur_end = np.zeros(n)
    cur_loc = home_xy.copy()
    started = np.zeros(n, dtype=bool)
    for k in range(N_SLOTS):
        v = valid[:, k]
        arrival = np.where(started, cur_end + _travel_s(cur_loc, loc[:, k], speed), 0.0)
        if k in VISIT_SLOTS:
            stop = arrival + dwell[:, k]
        else:
            stop = np.maximum(arrival + min_dwell[k], target[:, k])
        start[v, k], end[v, k] = arrival[v], stop[v]
        cur_end = np.where(v, stop, cur_end)
        cur_loc = np.where(v[:, None], loc[:, k], cur_loc)
        started |= v

    valid &= start < DAY_S - MIN_STAY_S
    end = np.minimum(end, DAY_S)
    last = N_SLOTS - 1 - np.argmax(valid[:, ::-1], axis=1)
    end[np.arange(n), last] = DAY_S

    rows, slots = np.nonzero(valid)
    return DayStays(
        dev=rows,
        start=start[rows, slots],
        end=end[rows, slots],
        x=loc[rows, slots, 0],
        y=loc[rows, slots, 1],
        kind=kinds[rows, slots],
        poi=poi[rows, slots],
    )


def stitch_local_days(parts: list[tuple[DayStays, float, float]]) -> DayStays:
    """Join local-day schedules into one UTC day.

    ``parts`` holds, in time order, each local day's stays with its UTC window
    ``[lo, hi)`` in seconds from the UTC day's midnight (schedule time 0 maps to ``lo``).
    Stays are shifted, clipped to the window and to [0, 24 h); each local day's last stay is
    stretched to the window's end (DST days are 23 or 25 h long); a stay that continues across
    local midnight (home, night-shift work) becomes one stay again.
    """
    cols: dict[str, list[np.ndarray]] = {f: [] for f in DayStays.__dataclass_fields__}
    for stays, lo, hi in parts:
        start = np.clip(stays.start + lo, lo, hi)
        end = np.clip(stays.end + lo, lo, hi)
        last = np.r_[stays.dev[1:] != stays.dev[:-1], True] if len(stays.dev) else np.zeros(0, bool)
        end[last] = hi
        start, end = np.clip(start, 0.0, DAY_S), np.clip(end, 0.0, DAY_S)
        keep = end > start
        for f in cols:
            value = {"start": start, "end": end}.get(f, getattr(stays, f))
            cols[f].append(value[keep])
    merged = {f: np.concatenate(v) for f, v in cols.items()}
    order = np.lexsort((merged["start"], merged["dev"]))
    merged = {f: v[order] for f, v in merged.items()}
    dev, start, end = merged["dev"], merged["start"], merged["end"]
    cont = np.zeros(len(dev), dtype=bool)
    cont[1:] = (
        (dev[1:] == dev[:-1])
        & (start[1:] == end[:-1])
        & (merged["x"][1:] == merged["x"][:-1])
        & (merged["y"][1:] == merged["y"][:-1])
    )
    heads = np.flatnonzero(~cont)
    if len(heads) == 0:
        return DayStays(**merged)
    out = {f: v[heads] for f, v in merged.items()}
    out["end"] = np.maximum.reduceat(end, heads)
    return DayStays(**out)


def _tod_times(rng: np.random.Generator, n: int, weight: np.ndarray = HOUR_WEIGHT) -> np.ndarray:
    hour = rng.choice(24, n, p=weight / weight.sum())
    return (hour + rng.random(n)) * 3600.0


def local_hour_weight(night_damping: float, utc_offset_s: float) -> np.ndarray:
    """Sampling weight of each UTC hour of the day: 1 by day, ``night_damping`` in the local
    night (23-06 h), half-way at 22 h and 06 h; ``utc_offset_s`` is local minus UTC."""
    local = np.ones(24)
    local[list(NIGHT_HOURS)] = night_damping
    local[list(HALF_NIGHT_HOURS)] = (1.0 + night_damping) / 2
    utc_hour_mid = np.arange(24) * 3600.0 + 1800.0
    return local[((utc_hour_mid + utc_offset_s) // 3600.0).astype(np.int64) % 24]


def _remove_in_windows(key: np.ndarray, w_start: np.ndarray, w_end: np.ndarray) -> np.ndarray:
    """Mask of sorted ``key`` values that fall in none of the [start, end) windows."""
    lo = np.searchsorted(key, w_start, side="left")
    hi = np.searchsorted(key, w_end, side="left")
    diff = np.zeros(len(key) + 1, dtype=np.int64)
    np.add.at(diff, lo, 1)
    np.add.at(diff, hi, -1)
    return np.cumsum(diff[:-1]) == 0


def sample_pings(
    rng: np.random.Generator,
    stays: DayStays,
    *,
    observed: np.ndarray,
    rate: np.ndarray,
    poi_half: np.ndarray,
    profile: Profile,
    hour_weight: np.ndarray = HOUR_WEIGHT,
) -> DayPings:
    """Irregularly sampled, noisy pings of the observed devices along their true day.

    ``rate``: expected pings per device-day; ``hour_weight``: relative sampling rate of each
    UTC hour (the historical profiles use :data:`HOUR_WEIGHT`).
    """
    # Segments: every stay, and the travel between consecutive stays of a device.
    same_next = stays.dev[1:] == stays.dev[:-1]
    ti = np.flatnonzero(same_next)
    seg_dev = np.r_[stays.dev, stays.dev[ti]]
    seg_start = np.r_[stays.start, stays.end[ti]]
    seg_end = np.r_[stays.end, stays.start[ti + 1]]
    x0 = np.r_[stays.x, stays.x[ti]]
    y0 = np.r_[stays.y, stays.y[ti]]
    x1 = np.r_[stays.x, stays.x[ti + 1]]
    y1 = np.r_[stays.y, stays.y[ti + 1]]
    is_stay = np.r_[np.ones(len(stays.dev), bool), np.zeros(len(ti), bool)]
    half = np.zeros((len(seg_dev), 2))
    stay_poi = stays.poi >= 0
    half[: len(stays.dev)][stay_poi] = poi_half[stays.poi[stay_poi]] * 0.6
    half[: len(stays.dev)][~stay_poi] = 8.0
    order = np.lexsort((seg_start, seg_dev))
    seg_dev, seg_start, seg_end = seg_dev[order], seg_start[order], seg_end[order]
    x0, y0, x1, y1, is_stay, half = (
        x0[order],
        y0[order],
        x1[order],
        y1[order],
        is_stay[order],
        half[order],
    )
    seg_key = seg_dev * DAY_S + seg_start

    obs_dev = np.flatnonzero(observed)
    day_rate = rate[obs_dev] * rng.gamma(4.0, 0.25, len(obs_dev))
    n_single = rng.poisson(day_rate * (1 - profile.burst_share))
    n_burst = rng.poisson(day_rate * profile.burst_share / profile.burst_mean)
    single_dev = np.repeat(obs_dev, n_single)
    burst_dev = np.repeat(obs_dev, n_burst)
    burst_size = 1 + rng.poisson(profile.burst_mean - 1.0, len(burst_dev))
    centre = _tod_times(rng, len(burst_dev), hour_weight)
    bp_dev = np.repeat(burst_dev, burst_size)
    bp_first = np.cumsum(burst_size) - burst_size
    steps = rng.exponential(profile.burst_gap_s, len(bp_dev))
    steps[bp_first] = 0.0
    csum = np.cumsum(steps)
    bp_t = np.repeat(centre, burst_size) + csum - np.repeat(csum[bp_first], burst_size)
    dev = np.r_[single_dev, bp_dev]
    t = np.r_[_tod_times(rng, len(single_dev), hour_weight), bp_t]
    keep = t < DAY_S
    dev, t = dev[keep], t[keep]
    key = dev * DAY_S + t
    order = np.argsort(key, kind="stable")
    dev, t, key = dev[order], t[order], key[order]

    # Sampling gaps: random ones, and a travel ping followed by a long silence past arrival.
    n_gaps = rng.poisson(profile.random_gaps_per_day, len(obs_dev))
    g_dev = np.repeat(obs_dev, n_gaps)
    g_start = rng.uniform(0, DAY_S, len(g_dev))
    g_end = np.minimum(g_start + rng.uniform(1800, 3 * 3600, len(g_dev)), DAY_S)
    trav = ~is_stay & observed[seg_dev] & (seg_end - seg_start >= 240)
    trav &= rng.random(len(seg_dev)) < profile.travel_gap_prob
    tp_dev = seg_dev[trav]
    tp_t = seg_start[trav] + rng.uniform(0.2, 0.8, trav.sum()) * (seg_end - seg_start)[trav]
    tg_end = np.minimum(seg_end[trav] + rng.uniform(1200, 5400, trav.sum()), DAY_S)
    w_dev = np.r_[g_dev, tp_dev]
    w_start = np.r_[g_start, tp_t]
    w_end = np.r_[g_end, tg_end]
    keep = _remove_in_windows(key, w_dev * DAY_S + w_start, w_dev * DAY_S + w_end)
    dev, t = np.r_[dev[keep], tp_dev], np.r_[t[keep], tp_t]

    t_ms = np.floor(t * 1000.0).astype(np.int64)
    order = np.lexsort((t_ms, dev))
    dev, t_ms = dev[order], t_ms[order]
    fresh = np.ones(len(dev), dtype=bool)
    fresh[1:] = (dev[1:] != dev[:-1]) | (t_ms[1:] != t_ms[:-1])
    dev, t_ms = dev[fresh], t_ms[fresh]
    t = t_ms / 1000.0

    seg = np.searchsorted(seg_key, dev * DAY_S + t, side="right") - 1
    span = np.maximum(seg_end[seg] - seg_start[seg], 1e-9)
    frac = np.where(is_stay[seg], 0.0, np.clip((t - seg_start[seg]) / span, 0.0, 1.0))
    n = len(dev)
    wander = rng.uniform(-1.0, 1.0, (n, 2)) * half[seg]
    x = x0[seg] + frac * (x1[seg] - x0[seg]) + wander[:, 0]
    y = y0[seg] + frac * (y1[seg] - y0[seg]) + wander[:, 1]
    acc = np.clip(rng.lognormal(np.log(12.0), 0.45, n), 4.0, 30.0)
    outlier = rng.random(n) < 0.03
    acc[outlier] = rng.uniform(30.0, 150.0, outlier.sum())
    noise = rng.normal(0.0, 1.0, (n, 2)) * (acc / 1.5)[:, None]
    return DayPings(
        dev=dev, t_ms=t_ms, x=x + noise[:, 0], y=y + noise[:, 1], accuracy=np.round(acc, 1)
    )
