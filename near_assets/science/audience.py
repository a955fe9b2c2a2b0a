"""Audience estimates: project a POI's panel visitors to the whole population.

Method (Horvitz-Thompson with post-stratification by home area):

- The panel is a sample of each home area's population with its own sampling rate
  ``pi_a = n_a / N_a`` where ``N_a`` is the area's population and ``n_a`` the panel devices
  living there that were *active* that day (a device that sent no ping could not have been
  seen visiting, so it is not part of that day's sample).
- Every panel visitor of POI ``p`` living in area ``a`` stands for ``w_a = N_a / n_a`` people:
  ``estimate_p = sum_a v_pa * w_a`` with ``v_pa`` the distinct panel visitors of ``p`` from
  ``a``. Visitors whose home is unknown are not weighted (their area's weight already stands
  for them, assuming a missing home is random within the area); they still count in
  ``visitors``, and ``estimate >= visitors`` always (every panel visitor is a person).
- Variance: under Poisson sampling of people with probability ``pi_a`` the unbiased variance
  estimator of the HT total is ``V_p = sum_a v_pa * w_a * (w_a - 1)``.
- 90% interval: the weighted count is approximated by a scaled Poisson count (the gamma
  method of Fay & Feuer, 1997): effective weight ``w* = V / E``, effective count
  ``k = E^2 / V``, and the Garwood bounds ``[w* G^-1(0.05; k), w* G^-1(0.95; k + 1)]`` with
  ``G`` the unit-scale gamma distribution. This keeps the interval right-skewed and sensible
  for small counts, unlike a normal interval. The lower bound is never below ``visitors``.
  A POI with no panel visitor gets ``[0, w_typ G^-1(0.95; 1)]`` with ``w_typ`` the median
  area weight (three typical panel visitors' worth of people could have gone unseen).

Visit-detection correction (:func:`detection_rates`): ``visits`` only holds the visits
during which the device pinged often enough to form a stay (two pings at least
``min_span_s`` apart inside the visit). With sparse, bursty sampling and the silence that
often follows a move, about half of the true visits of a default-profile panel are missed,
so the plain HT above counts about half the people. Each detected panel visitor is therefore
also divided by the probability ``p`` that a visit of a typical dwell would have been detected
given the device's own sampling that day (two-phase sampling: the person is in the panel with
probability ``1/w_a``, the visit is seen with probability ``p``; HT weight ``w_a / p``).
``p`` is estimated from the day's data only (no truth):

1. *Arrivals.* The device's own stays of at least ``anchor_min_s`` (home, work: long enough to
   be found whatever the sampling at arrival) are the templates of how its pings look after
   it arrives somewhere. The arrival time is not observed; if the ping before the stay was a
   moving ping (outside every stay, ``moving_min_m`` away from the ping before it) the device
   was travelling then, and it arrived ``distance / speed`` later (``speed`` is the day's
   median speed between consecutive moving pings); otherwise the departure is unseen and the
   arrival is uniform between ``that ping + distance / speed`` and the stay's first ping.
   Templates are weighted to bring their UTC hours to the hours of the day's detected visits
   (phones sample differently at night). Placing hypothetical visits at random times of the
   day instead ignores that phones often fall silent right after a move, and overstates
   detection by ~20 % on the generator.
2. *Detection kernel.* Each template gives ``placements`` arrivals ``A`` at the stratified
   points ``(j + 0.5) / placements`` of its arrival window (one arrival when the device was
   moving), each weighing ``hour weight / arrivals``; for every dwell ``D`` on a grid
   (``dwell_step_s`` .. ``max_dwell_s``), the device's real pings inside ``[A, A + D]`` give
   whether the visit would have been detected and with which observed span (first to last
   ping). Devices are pooled in ``groups`` by their number of pings that day (a stable,
   low-noise kernel ``K_g(D)`` and span matrix ``M_g(span | D)`` per group: the weighted
   detections over the group's total template weight). Deterministic quadrature, not random
   draws: a device's contribution depends on its own pings and a few day-wide figures only
   (speed, hour weights, its group), so the Spark engine computes it on device buckets and
   sums, with the same result (until 2026-12 the arrivals were 64 random draws per device
   from the group's templates; the figures below were measured then, and a re-run of the
   chain on an 8,000-device day gave median error 10.86 % vs 10.99 %, bias +1.4 % vs +1.5 %,
   coverage unchanged).
3. *Dwell distribution.* The true dwell distribution ``f`` is not observed either (short
   visits are rarely detected, and an observed span is shorter than the dwell). It is
   estimated by EM for truncated data (the missing visits are latent): each detected visit
   of span ``s`` from group ``g`` has posterior ``f(D) M_g(s | D) / sum f M_g`` over ``D`` and
   stands for ``1 / K_g(D)`` visits; ``f`` is the normalised sum.
4. ``p_g = sum_D f(D) K_g(D)``, floored at ``min_p`` (a device that almost never forms stays
   would otherwise get an enormous weight; the floor caps the variance at a small bias).

The variance uses the same HT formula with the combined weight ``W = w_a / p``:
``sum W (W - 1)`` (the visit-detection phase adds its Bernoulli variance), plus a
``model_rel_error`` share of the estimate, squared, for the error of ``p`` itself (the
kernel and dwell distribution are estimates, the same for every POI of the day). The error of
``p`` has two parts. Its day-specific statistical part is small and measured: the day-to-day
relative s.d. of the mean detection rate on the bench is 2.8 % (per ping group 1-13 %, the
sparse group the noisiest, and a POI's visitors span groups); it shifts every POI of a day by
the same factor, so across days it shows up as between-day variance proportional to ``level^2``,
which the blend estimates (``tau2`` below). The systematic part (the template and dwell models'
assumptions, which no resampling of the day can reveal) is bounded with the generator's truth:
estimated mean rate 0.50 vs true 0.47-0.50, i.e. up to ~6 %. ``model_rel_error`` (6 %) is this
allowance; the blend treats it as common to all days (slightly conservative, as the
day-specific part is also in ``tau2``).

Measured on the real chain (``bench/audience_accuracy.py --devices 10000``: generator default
profile, 7 days, clean -> stays -> visits -> homes -> demographics -> audience; POIs with >= 30
true panel visitors, days 2-7): today's HT alone, detected visits -49 % bias, median abs error
49 %, coverage 0.09; with the correction bias +4 % (the same +4 % as HT on the true visits),
median 16 % (true visits: 11 %), coverage 0.91. Blended with 6 trailing days (the asset's
default) by the random-effects BLUP below: bias +0.4 %, median abs error 9.9 % (per day 12.2,
12.4, 10.3, 8.8, 8.4, 7.1 with 1..6 trailing days), coverage 0.91 (per day 0.89-0.94; true
visits: median 6.8 %, coverage 0.93). The former blend (independent days, ``tau2`` as the median
of per-POI truncated moments, the trailing mean's own error and the common model error
ignored) gave median 10.2 %, bias -1 %, coverage 0.84 (true visits 0.86, some days 0.82). Mean
detection rate 0.50 (truth: 0.47-0.50).

Borrowing strength from the trailing days (optional, :func:`blend_with_history`): a POI's
audience barely moves from one day to the next, while one day's panel sample is small (a POI
with 30 panel visitors has a sampling error of about 1/sqrt(30) = 18 %). Today's audience is
therefore predicted from today's and the trailing days' HT estimates by a random-effects model
(the POI's usual level, real day-to-day changes of variance ``tau2`` estimated from the data so
that real changes keep today's weight, sampling errors correlated across days through the
shared panel) and the interval uses the prediction's error variance, which counts the
uncertainty of the estimated usual level, the correlation between days and the detection
model's error that averaging days cannot remove.

All counts are people per UTC day. Functions are pure (pandas/numpy/scipy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

OUTPUT_COLUMNS = ["poi_id", "visitors", "estimate", "estimate_low", "estimate_high", "std_error"]
DETECTION_COLUMNS = ["device_id", "p_detect", "ping_group"]
EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class DetectionParams:
    """Visit-detection correction parameters (see the module doc).

    - ``anchor_min_s`` (3600): shortest stay used as an arrival template.
    - ``min_span_s`` (300): a visit is detected when its pings span at least this (the stay
      detector's ``min_duration_s`` and the visit matcher's ``min_dwell_s``).
    - ``dwell_step_s`` (300) / ``max_dwell_s`` (4 h): the dwell grid of the kernel and of the
      estimated dwell distribution.
    - ``placements`` (16): arrivals per template (stratified over its arrival window).
    - ``groups`` (10): devices pooled by ping-count quantile.
    - ``min_p`` (0.1): floor of the detection rate.
    - ``default_speed_mps`` (5): travel speed when the day has too few moving pings to measure.
    - ``moving_min_m`` (100): the ping before an arrival counts as moving when it lies
      outside every stay and at least this far from the ping before it.
    - ``em_iterations`` (200) / ``em_smooth_bins`` (2): EMS iterations and smoothing width
      (dwell bins) for the dwell distribution.
    - ``max_hour_weight`` (20): cap of the time-of-day reweighting of arrival templates.
    - ``model_rel_error`` (0.06): relative (systematic) error of the correction itself,
      added to the variance of every estimate; common to all days when blending (module doc).
    - ``seed`` (0): unused (kept for stored parameters; the placements are deterministic).
    """

    anchor_min_s: float = 3600.0
    min_span_s: float = 300.0
    dwell_step_s: float = 300.0
    max_dwell_s: float = 4 * 3600.0
    placements: int = 16
    groups: int = 10
    min_p: float = 0.1
    default_speed_mps: float = 5.0
    moving_min_m: float = 100.0
    em_iterations: int = 200
    em_smooth_bins: float = 2.0
    max_hour_weight: float = 20.0
    model_rel_error: float = 0.06
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _epoch_s(ts: pd.Series) -> np.ndarray:
    from near_assets.science.stays import epoch_ns

    return epoch_ns(ts) / 1e9


def _distance_m(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    p1, p2 = np.radians(np.asarray(lat1, float)), np.radians(np.asarray(lat2, float))
    dlmb = np.radians(np.asarray(lon2, float) - np.asarray(lon1, float))
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _smooth(f: np.ndarray, width: float) -> np.ndarray:
    """``f`` convolved with a Gaussian of ``width`` bins (mass kept inside the grid)."""
    if width <= 0:
        return f
    idx = np.arange(len(f))
    kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / width) ** 2)
    kernel /= kernel.sum(axis=0, keepdims=True)
    return kernel @ f


def _dwell_em(
    m: np.ndarray, k: np.ndarray, obs: np.ndarray, iterations: int, smooth_bins: float = 0.0
) -> np.ndarray:
    """EMS for the dwell distribution from truncated observations (module doc, step 3).

    ``m``: (groups, dwell bins, span bins) P(detected with span s | D); ``k``: (groups, dwell
    bins) P(detected | D); ``obs``: (groups, span bins) detected visits. Each EM step is
    followed by a Gaussian smoothing of ``smooth_bins`` (EMS, Silverman et al. 1990): the plain
    NPMLE puts spikes on short dwells, where ``1 / K`` amplifies sampling noise. Returns ``f``.
    """
    n_d = m.shape[1]
    f = np.full(n_d, 1.0 / n_d)
    ratio = np.divide(m, k[:, :, None], out=np.zeros_like(m), where=k[:, :, None] > 0)
    for _ in range(iterations):
        den = np.einsum("d,gds->gs", f, m)
        share = np.divide(obs, den, out=np.zeros_like(den), where=den > 0)
        counts = _smooth(f * np.einsum("gds,gs->d", ratio, share), smooth_bins)
        counts[k.max(axis=0) <= 0] = 0.0
        total = counts.sum()
        if total <= 0:
            break
        f = counts / total
    return f


def _hour_weights(anchor_hours: np.ndarray, visit_hours: np.ndarray, cap: float) -> np.ndarray:
    """Per UTC hour: share of detected visit starts / share of arrival templates (<= ``cap``).

    ``anchor_hours`` / ``visit_hours``: counts per UTC hour (24) of the arrival templates and of
    the detected visits' starts. Reweights the templates to the hours when visits happen (home
    and work arrivals cluster in the morning and late evening, when phones sample differently).
    Ones without visits or templates.
    """
    a, v = np.asarray(anchor_hours, float), np.asarray(visit_hours, float)
    if not v.sum() or not a.sum():
        return np.ones(24)
    v_share = (v + 0.5) / (v.sum() + 12.0)
    a_share = (a + 0.5) / (a.sum() + 12.0)
    return np.minimum(v_share / a_share, cap)


def epoch_us(ts: pd.Series) -> np.ndarray:
    """UTC epoch microseconds (int64, floored) of a timestamp column."""
    from near_assets.science.stays import epoch_ns

    return epoch_ns(ts) // 1000


def dwell_bins(dwell_s: np.ndarray, params: DetectionParams) -> np.ndarray:
    """Dwell-grid bin (0 .. bins - 1) of durations in seconds (kernel, spans and visits)."""
    n_b = int(params.max_dwell_s // params.dwell_step_s)
    return np.clip(
        (np.asarray(dwell_s, float) // params.dwell_step_s).astype(np.int64) - 1, 0, n_b - 1
    )


def _sorted_pings(pings: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """(labels, codes, t_us, lat, lon) of pings (``device_id``, ``t_us``, ``lat``, ``lon``) sorted
    by device, time, lat, lon (a total order: the result never depends on the input order)."""
    codes, labels = pd.factorize(pings["device_id"].astype(str), sort=True)
    t = pings["t_us"].to_numpy(np.int64)
    lat = pings["lat"].to_numpy(float)
    lon = pings["lon"].to_numpy(float)
    order = np.lexsort((lon, lat, t, codes))
    return labels, codes[order].astype(np.int64), t[order], lat[order], lon[order]


MOTION_KINDS = ("device", "speed", "anchor")
"""Row kinds of :func:`device_motion` flattened for Spark (``kind`` column)."""


def device_motion(
    pings: pd.DataFrame, stays: pd.DataFrame, params: DetectionParams = DetectionParams()
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Per device, from its pings and stays (module doc, step 1; works on whole devices).

    ``pings``: ``device_id``, ``t_us`` (UTC epoch microseconds), ``lat``, ``lon``; ``stays``:
    ``device_id``, ``start_us``, ``end_us``, ``lat``, ``lon``. Returns ``devices``
    (``device_id``, ``n_pings``), the speeds (m/s) between consecutive moving pings, and the
    arrival templates ``anchors``: ``device_id``, ``a_first_us`` (first ping of a stay of at least
    ``anchor_min_s``), ``prev_us`` (the ping before it), ``dist_m`` (from that ping to the stay),
    ``was_moving``. Rows of one device never depend on other devices.
    """
    anchors_empty = pd.DataFrame(
        {
            "device_id": pd.Series(dtype=object),
            "a_first_us": pd.Series(dtype=np.int64),
            "prev_us": pd.Series(dtype=np.int64),
            "dist_m": pd.Series(dtype=float),
            "was_moving": pd.Series(dtype=bool),
        }
    )
    if pings.empty:
        devices = pd.DataFrame(
            {"device_id": pd.Series(dtype=object), "n_pings": pd.Series(dtype=np.int64)}
        )
        return devices, np.zeros(0), anchors_empty
    labels, codes, t, lat, lon = _sorted_pings(pings)
    n_dev = len(labels)
    t0 = int(t.min())
    span = int(t.max()) - t0 + int(params.max_dwell_s * 1e6) + 1
    key = codes * span + (t - t0)

    sd = pd.Index(labels).get_indexer(stays["device_id"].astype(str))
    ok = sd >= 0
    st = stays[ok]
    sd = sd[ok].astype(np.int64)
    s_start = st["start_us"].to_numpy(np.int64)
    s_end = st["end_us"].to_numpy(np.int64)
    first = np.searchsorted(key, sd * span + (s_start - t0), side="left")
    after = np.searchsorted(key, sd * span + (s_end - t0), side="right")
    depth = np.zeros(len(key) + 1, dtype=np.int64)
    np.add.at(depth, first, 1)
    np.add.at(depth, after, -1)
    in_stay = np.cumsum(depth[:-1]) > 0

    same = codes[1:] == codes[:-1]
    moving = same & ~in_stay[1:] & ~in_stay[:-1]
    dt = (t[1:] - t[:-1]) / 1e6
    dd = _distance_m(lat[1:], lon[1:], lat[:-1], lon[:-1])
    sel = moving & (dt > 30) & (dt < 1200) & (dd > 200)
    speeds = dd[sel] / dt[sel]

    long = ((s_end - s_start) >= params.anchor_min_s * 1e6) & (first > 0)
    prev = first - 1
    long &= codes[np.maximum(prev, 0)] == sd
    a_dev, prev = sd[long], prev[long]
    dist = _distance_m(
        lat[prev], lon[prev], st["lat"].to_numpy(float)[long], st["lon"].to_numpy(float)[long]
    )
    before = np.maximum(prev - 1, 0)
    step_m = _distance_m(lat[before], lon[before], lat[prev], lon[prev])
    was_moving = (
        ~in_stay[prev] & (prev > 0) & (codes[before] == a_dev) & (step_m > params.moving_min_m)
    )
    devices = pd.DataFrame(
        {"device_id": labels.astype(object), "n_pings": np.bincount(codes, minlength=n_dev)}
    )
    anchors = pd.DataFrame(
        {
            "device_id": labels.astype(object)[a_dev],
            "a_first_us": s_start[long],
            "prev_us": t[prev],
            "dist_m": dist,
            "was_moving": was_moving,
        }
    )
    return devices, speeds, anchors


def day_speed(speeds: np.ndarray, params: DetectionParams = DetectionParams()) -> float:
    """The day's travel speed (m/s): median of the moving speeds (the default below 20)."""
    return float(np.median(speeds)) if len(speeds) >= 20 else params.default_speed_mps


def arrival_windows(anchors: pd.DataFrame, speed: float) -> pd.DataFrame:
    """``anchors`` plus ``earliest_s`` (earliest arrival, UTC epoch seconds) and its UTC ``hour``.

    The device left the ping before the stay and travelled ``dist_m`` at ``speed`` (module doc)."""
    a_first = anchors["a_first_us"].to_numpy(np.int64) / 1e6
    earliest = np.minimum(
        anchors["prev_us"].to_numpy(np.int64) / 1e6
        + anchors["dist_m"].to_numpy(float) / max(speed, 0.5),
        a_first,
    )
    out = anchors.assign(earliest_s=earliest)
    out["hour"] = ((earliest % 86_400.0) // 3600.0).astype(np.int64)
    return out


def ping_groups(devices: pd.DataFrame, groups: int) -> pd.DataFrame:
    """Devices (``device_id``, ``n_pings``) pooled into ``groups`` equal groups by ping count
    (ties by ``device_id``): ``device_id``, ``ping_group``."""
    n_dev = len(devices)
    ranked = devices.sort_values(["n_pings", "device_id"], kind="stable", ignore_index=True)
    n_groups = max(1, min(groups, n_dev))
    rank = np.arange(n_dev, dtype=np.int64)
    group = np.minimum(rank * n_groups // max(n_dev, 1), n_groups - 1)
    return pd.DataFrame({"device_id": ranked["device_id"].to_numpy(object), "ping_group": group})


def kernel_sums(
    pings: pd.DataFrame, anchors: pd.DataFrame, params: DetectionParams = DetectionParams()
) -> pd.DataFrame:
    """The detection kernel's weighted counts from whole devices (module doc, step 2).

    ``pings`` as in :func:`device_motion`; ``anchors``: :func:`arrival_windows` rows with
    ``hour_w`` (template weight) and ``ping_group``. Each template gives ``placements``
    arrivals at the stratified points ``(j + 0.5) / placements`` of its arrival window (one
    when the device was moving: the arrival is then known), each of weight
    ``hour_w / arrivals``; for each dwell ``D`` of the grid the device's real pings in
    ``[A, A + D]`` detect the visit with span ``s`` (first to last ping) when ``s >=
    min_span_s``. Returns ``ping_group``, ``dwell_bin``, ``span_bin``, ``weight``: the summed
    weights of detections, plus one row per group with ``dwell_bin = span_bin = -1`` holding the
    templates' total weight (the normaliser). Deterministic, additive over devices.
    """
    cols = ["ping_group", "dwell_bin", "span_bin", "weight"]
    if pings.empty or anchors.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=float if c == "weight" else np.int64) for c in cols}
        )
    labels, codes, t, _, _ = _sorted_pings(pings)
    t0 = int(t.min())
    span = int(t.max()) - t0 + int(params.max_dwell_s * 1e6) + 1
    key = codes * span + (t - t0)
    a_code = pd.Index(labels).get_indexer(anchors["device_id"].astype(str))
    keep = a_code >= 0
    anchors, a_code = anchors[keep], a_code[keep].astype(np.int64)
    r = max(int(params.placements), 1)
    moving = anchors["was_moving"].to_numpy(bool)
    n_arr = np.where(moving, 1, r)
    idx = np.repeat(np.arange(len(anchors)), n_arr)
    j = np.arange(len(idx)) - np.repeat(np.cumsum(n_arr) - n_arr, n_arr)
    u = (j + 0.5) / r
    earliest = anchors["earliest_s"].to_numpy(float)[idx]
    a_first = anchors["a_first_us"].to_numpy(np.int64)[idx] / 1e6
    arrive = np.where(moving[idx], earliest, earliest + u * (a_first - earliest))
    arrive_us = np.floor(arrive * 1e6).astype(np.int64)
    weight = (anchors["hour_w"].to_numpy(float) / n_arr)[idx]
    group = anchors["ping_group"].to_numpy(np.int64)
    n_groups = int(group.max()) + 1
    g = group[idx]
    n_b = int(params.max_dwell_s // params.dwell_step_s)
    base = a_code[idx] * span + (arrive_us - t0)
    lo = np.searchsorted(key, base, side="left")
    sums = np.zeros(n_groups * n_b * n_b)
    min_span_us = int(params.min_span_s * 1e6)
    step_us = int(params.dwell_step_s * 1e6)
    for b in range(n_b):
        hi = np.searchsorted(key, base + (b + 1) * step_us, side="right") - 1
        has = hi > lo
        sp = np.zeros(len(base), dtype=np.int64)
        sp[has] = key[hi[has]] - key[lo[has]]
        hit = sp >= min_span_us
        s_bin = np.clip(sp[hit] // step_us - 1, 0, n_b - 1)
        flat = (g[hit] * n_b + b) * n_b + s_bin
        sums += np.bincount(flat, weights=weight[hit], minlength=len(sums))
    nz = np.flatnonzero(sums)
    gi, rest = np.divmod(nz, n_b * n_b)
    bi, si = np.divmod(rest, n_b)
    totals = np.bincount(group, weights=anchors["hour_w"].to_numpy(float), minlength=n_groups)
    tg = np.flatnonzero(totals > 0)
    return pd.DataFrame(
        {
            "ping_group": np.concatenate([gi, tg]).astype(np.int64),
            "dwell_bin": np.concatenate([bi, np.full(len(tg), -1)]).astype(np.int64),
            "span_bin": np.concatenate([si, np.full(len(tg), -1)]).astype(np.int64),
            "weight": np.concatenate([sums[nz], totals[tg]]),
        }
    )


def group_rates(
    kernel: pd.DataFrame,
    visit_counts: pd.DataFrame,
    group_sizes: np.ndarray,
    params: DetectionParams = DetectionParams(),
) -> tuple[np.ndarray, np.ndarray]:
    """Detection rate per ping group and the dwell distribution (module doc, steps 3-4).

    ``kernel``: :func:`kernel_sums` rows (summed over every device); ``visit_counts``:
    ``ping_group``, ``dwell_bin``, ``n`` (the day's detected visits); ``group_sizes``: devices
    per group. A group without arrival templates borrows the nearest measured group's rate.
    Returns ``(p_group, f)``.
    """
    n_groups = len(group_sizes)
    n_b = int(params.max_dwell_s // params.dwell_step_s)
    kg = kernel.groupby(["ping_group", "dwell_bin", "span_bin"], as_index=False)["weight"].sum()
    norm = np.zeros(n_groups)
    tot = kg[kg["dwell_bin"] < 0]
    norm[tot["ping_group"].to_numpy(np.int64)] = tot["weight"].to_numpy(float)
    m = np.zeros((n_groups, n_b, n_b))
    hits = kg[kg["dwell_bin"] >= 0]
    m[
        hits["ping_group"].to_numpy(np.int64),
        hits["dwell_bin"].to_numpy(np.int64),
        hits["span_bin"].to_numpy(np.int64),
    ] = hits["weight"].to_numpy(float)
    measured = np.flatnonzero(norm > 0)
    m[measured] /= norm[measured][:, None, None]
    k = m.sum(axis=2)
    obs = np.zeros((n_groups, n_b))
    if len(visit_counts):
        np.add.at(
            obs,
            (
                visit_counts["ping_group"].to_numpy(np.int64),
                visit_counts["dwell_bin"].to_numpy(np.int64),
            ),
            visit_counts["n"].to_numpy(float),
        )
    f = _dwell_em(m, k, obs, params.em_iterations, params.em_smooth_bins)
    p_group = np.clip(k @ f, params.min_p, 1.0)
    if not len(measured):
        p_group[:] = 1.0
    else:
        nearest = measured[np.abs(np.arange(n_groups)[:, None] - measured[None, :]).argmin(1)]
        p_group = p_group[nearest]
    return p_group, f


def detection_summary(
    p_group: np.ndarray,
    f: np.ndarray,
    group_sizes: np.ndarray,
    speed: float,
    anchors: int,
    params: DetectionParams = DetectionParams(),
) -> dict[str, Any]:
    """The summary :func:`detection_rates` reports (from small figures only)."""
    grid = np.arange(1, int(params.max_dwell_s // params.dwell_step_s) + 1) * params.dwell_step_s
    cdf = np.cumsum(f)
    sizes = np.asarray(group_sizes, float)
    return {
        "speed_mps": round(speed, 2),
        "anchors": int(anchors),
        "mean_detection_rate": round(float((p_group * sizes).sum() / max(sizes.sum(), 1)), 4),
        "group_rates": [round(float(x), 3) for x in p_group],
        "median_dwell_s": float(grid[min(np.searchsorted(cdf, 0.5), len(grid) - 1)]),
        "mean_dwell_s": round(float(grid @ f), 1),
    }


def visit_hours(visits: pd.DataFrame) -> np.ndarray:
    """Detected visits per UTC start hour (24 zeros without ``start_ts``)."""
    if "start_ts" not in visits or visits.empty:
        return np.zeros(24, dtype=np.int64)
    return np.bincount((epoch_us(visits["start_ts"]) // 3_600_000_000) % 24, minlength=24)


def detection_rates(
    pings: pd.DataFrame,
    stays: pd.DataFrame,
    visits: pd.DataFrame,
    params: DetectionParams = DetectionParams(),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per active device: the probability that one of its visits that day was detected.

    ``pings``: the day's clean pings (device_id, ts, lat, lon); ``stays``: its stay points
    (device_id, start_ts, end_ts, lat, lon); ``visits``: its visits (device_id, dwell_s and,
    for the time-of-day weighting, start_ts).
    Returns :data:`DETECTION_COLUMNS` (one row per device with pings) and a summary:
    ``speed_mps``, ``anchors``, ``mean_detection_rate`` (over devices), ``group_rates``,
    ``median_dwell_s`` and ``mean_dwell_s`` of the estimated dwell distribution. Method: module
    doc. The steps are :func:`device_motion`, :func:`day_speed`, :func:`arrival_windows`,
    :func:`ping_groups`, :func:`_hour_weights`, :func:`kernel_sums` and :func:`group_rates`:
    the Spark engine (``near_assets/spark_jobs/audience.py``) runs the per-device ones on
    device buckets and sums their outputs.
    """
    empty = pd.DataFrame(
        {
            "device_id": pd.Series(dtype=object),
            "p_detect": pd.Series(dtype=float),
            "ping_group": pd.Series(dtype=np.int64),
        }
    )
    if pings.empty:
        return empty, {"mean_detection_rate": None}
    p = pd.DataFrame(
        {
            "device_id": pings["device_id"].astype(str).to_numpy(object),
            "t_us": epoch_us(pings["ts"]),
            "lat": pings["lat"].to_numpy(float),
            "lon": pings["lon"].to_numpy(float),
        }
    )
    s = pd.DataFrame(
        {
            "device_id": stays["device_id"].astype(str).to_numpy(object),
            "start_us": epoch_us(stays["start_ts"]),
            "end_us": epoch_us(stays["end_ts"]),
            "lat": stays["lat"].to_numpy(float),
            "lon": stays["lon"].to_numpy(float),
        }
    )
    devices, speeds, anchors = device_motion(p, s, params)
    speed = day_speed(speeds, params)
    groups = ping_groups(devices, params.groups)
    n_groups = int(groups["ping_group"].max()) + 1
    anchors = arrival_windows(anchors, speed).merge(groups, on="device_id", how="left")
    hour_w = _hour_weights(
        np.bincount(anchors["hour"].to_numpy(np.int64), minlength=24),
        visit_hours(visits),
        params.max_hour_weight,
    )
    anchors["hour_w"] = hour_w[anchors["hour"].to_numpy(np.int64)]
    kernel = kernel_sums(p, anchors, params)
    dwell = visits["dwell_s"].to_numpy(float) if "dwell_s" in visits else np.zeros(len(visits))
    seen = pd.DataFrame({"device_id": visits["device_id"].astype(str).to_numpy(object)})
    seen["dwell_bin"] = dwell_bins(dwell, params)
    seen = seen.merge(groups, on="device_id", how="inner")
    counts = (
        seen.groupby(["ping_group", "dwell_bin"], as_index=False)
        .size()
        .rename(columns={"size": "n"})
    )
    sizes = np.bincount(groups["ping_group"].to_numpy(np.int64), minlength=n_groups)
    p_group, f = group_rates(kernel, counts, sizes, params)
    out = groups.sort_values("device_id", ignore_index=True)
    out = pd.DataFrame(
        {
            "device_id": out["device_id"].to_numpy(object),
            "p_detect": p_group[out["ping_group"].to_numpy(np.int64)],
            "ping_group": out["ping_group"].to_numpy(np.int64),
        }
    )
    return out, detection_summary(p_group, f, sizes, speed, len(anchors), params)


def area_weights(
    device_areas: pd.DataFrame,
    areas: pd.DataFrame,
    active_devices: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Per area: ``area_id``, ``population``, ``panel_devices`` (active, home there), ``weight``.

    ``device_areas`` has ``device_id``, ``area_id`` (one row per device with a known home);
    ``areas`` has ``area_id``, ``population``. ``weight = population / panel_devices`` (NaN for
    an area without an active panel device). ``active_devices``: the devices seen that day
    (None: every device in ``device_areas``).
    """
    homes = device_areas[["device_id", "area_id"]].drop_duplicates("device_id")
    if active_devices is not None:
        homes = homes[homes["device_id"].isin(pd.Index(list(active_devices)))]
    counts = homes.groupby("area_id").size().rename("panel_devices")
    out = areas[["area_id", "population"]].merge(
        counts, left_on="area_id", right_index=True, how="left"
    )
    out["panel_devices"] = out["panel_devices"].fillna(0).astype(np.int64)
    pop = out["population"].astype(float)
    n = out["panel_devices"].astype(float)
    out["weight"] = np.where(n > 0, np.maximum(pop, n) / n.where(n > 0, 1.0), np.nan)
    return out


def gamma_interval(
    estimate: np.ndarray, variance: np.ndarray, zero_weight: float, confidence: float = 0.90
) -> tuple[np.ndarray, np.ndarray]:
    """Fay-Feuer style gamma interval for weighted counts (see module doc)."""
    alpha = 1.0 - confidence
    e = np.asarray(estimate, dtype=float)
    v = np.asarray(variance, dtype=float)
    pos = (e > 0) & (v > 0)
    w = np.where(pos, v / np.where(pos, e, 1.0), max(zero_weight, 1.0))
    k = np.where(pos, e / w, 0.0)
    low = np.where(pos, w * stats.gamma.ppf(alpha / 2, np.where(pos, k, 1.0)), e)
    high = np.where(pos, w * stats.gamma.ppf(1 - alpha / 2, k + 1.0), e)
    zero = e <= 0
    high = np.where(zero, w * stats.gamma.ppf(1 - alpha / 2, 1.0), high)
    return low, high


def daily_ht(
    visits: pd.DataFrame,
    device_areas: pd.DataFrame,
    areas: pd.DataFrame,
    pois: Iterable[str] | None = None,
    active_devices: Iterable[str] | None = None,
    detection: pd.DataFrame | None = None,
    model_rel_error: float = DetectionParams.model_rel_error,
) -> tuple[pd.DataFrame, float, pd.DataFrame]:
    """One day's HT sums per POI: ``visitors``, ``e`` (estimate) and ``var`` (its variance).

    Indexed by ``poi_id``; ``var`` includes ``model_var``, the detection model's share
    ``(model_rel_error e)^2``. Also returns the typical (median) area weight and the weighted
    panel visitors (``poi_id``, ``device_id``, ``w`` the HT weight ``w_a / p``,
    ``area_weight`` ``w_a``; visitors with a known home), from which
    :func:`blend_with_history` estimates how the sampling errors of two days co-vary.
    ``detection``: the day's :func:`detection_rates` (None: every visit is assumed
    detected); a visitor missing from it gets the median rate. See the module doc.
    """
    pairs = visits[["device_id", "poi_id"]].dropna().drop_duplicates()
    seen = pd.unique(pairs["device_id"])
    active = None if active_devices is None else set(active_devices) | set(seen)
    weights = area_weights(device_areas, areas, active)
    homes = device_areas[["device_id", "area_id"]].drop_duplicates("device_id")
    dev = pairs.merge(homes, on="device_id", how="left")
    w = dev["area_id"].map(weights.set_index("area_id")["weight"]).to_numpy(dtype=float)
    known = np.isfinite(w)
    rel = 0.0
    if detection is not None and len(detection):
        rates = detection.drop_duplicates("device_id").set_index("device_id")["p_detect"]
        p = dev["device_id"].map(rates).fillna(float(rates.median())).to_numpy(dtype=float)
        w = w / np.clip(p, 1e-6, 1.0)
        rel = model_rel_error
    dev["w"] = np.where(known, w, 0.0)
    dev["v"] = np.where(known, w * np.maximum(w - 1.0, 0.0), 0.0)
    per_poi = dev.groupby("poi_id").agg(
        visitors=("device_id", "size"), e=("w", "sum"), var=("v", "sum")
    )
    per_poi["model_var"] = (rel * per_poi["e"]) ** 2
    per_poi["var"] += per_poi["model_var"]
    if pois is not None:
        index = pd.Index(pd.unique(pd.Series(list(pois), dtype=object)), name="poi_id")
        per_poi = per_poi.reindex(index.union(per_poi.index), fill_value=0)
    per_poi.index = per_poi.index.astype(str)
    area_w = dev["area_id"].map(weights.set_index("area_id")["weight"]).to_numpy(dtype=float)
    pairs = pd.DataFrame(
        {
            "poi_id": dev["poi_id"].astype(str),
            "device_id": dev["device_id"].astype(str),
            "w": dev["w"].to_numpy(dtype=float),
            "area_weight": area_w,
        }
    )[known].reset_index(drop=True)
    finite = weights["weight"].dropna()
    return per_poi, float(finite.median()) if len(finite) else 1.0, pairs


def day_covariance(
    pairs_a: pd.DataFrame, pairs_b: pd.DataFrame, index: pd.Index | None = None
) -> pd.Series:
    """Per POI: the estimated covariance of two days' HT estimates through the shared panel.

    ``pairs_a``/``pairs_b``: :func:`daily_ht` weighted visitors of the two days. A person who
    visits on both days is in the panel (probability ``1 / w_a``) on both; the visits are
    detected independently (``p_a``, ``p_b``). Covariance of the two HT terms: ``w_a - 1``;
    its HT estimate over the panel devices seen at the POI on both days:
    ``sum W_a W_b (w_a - 1) / w_a`` (``W = w_a / p``). Indexed by ``poi_id`` (``index``: 0 for
    the POIs without a repeat visitor).
    """
    both = pairs_a.merge(pairs_b, on=["poi_id", "device_id"], suffixes=("_a", "_b"))
    wa = both["area_weight_a"].to_numpy(dtype=float)
    c = both["w_a"] * both["w_b"] * np.maximum(wa - 1.0, 0.0) / np.maximum(wa, 1.0)
    out = c.groupby(both["poi_id"]).sum()
    return out if index is None else out.reindex(index, fill_value=0.0)


def covariance_sums(pairs: Sequence[pd.DataFrame], index: pd.Index) -> np.ndarray:
    """``(n, n)``: entry ``[a, b]`` (``a < b``) is the summed :func:`day_covariance` of days
    ``a`` and ``b`` over the POIs of ``index`` (the only figure of the pairs the blend needs)."""
    n = len(pairs)
    out = np.zeros((n, n))
    for a in range(n):
        for b in range(a + 1, n):
            out[a, b] = float(day_covariance(pairs[a], pairs[b], index).sum())
    return out


def blend_with_history(
    today: pd.DataFrame,
    history: Sequence[pd.DataFrame],
    typical_weight: float,
    pairs: Sequence[pd.DataFrame] | None = None,
    day_cov: np.ndarray | None = None,
) -> pd.DataFrame:
    """Borrow strength from the trailing days: the BLUP of today's audience (random effects).

    ``today`` and each of ``history`` are :func:`daily_ht` frames; ``pairs`` (optional): their
    weighted panel visitors, today's first (the third item of :func:`daily_ht`), to estimate
    the correlation of the days' sampling errors (None: days independent). Model, per POI,
    days ``d = 0`` (today) .. ``k``:

    ``e_d = mu + delta_d + eps_d``: ``mu`` the POI's usual audience (unknown, no prior),
    ``delta_d`` the real change of day ``d`` (independent, variance ``tau2``), ``eps_d`` the
    sampling error with covariance ``C``. The target is today's ``mu + delta_0``.

    - *Sampling variances* ``C_dd``: the POI's effective weight ``var_d / e_d`` averaged over
      the days it was visited, times its mean level over all the days, the same for every
      day. Not each day's own ``var_d``: that one grows with ``e_d``, so precision weights
      would favour the days that happened to count low and bias the blend down. Not a per-day
      effective weight either: ``var_d / e_d`` is the visitors' mean weight ``W``, higher on
      a day whose visitors happen to have low detection rates, i.e. on a day that counts
      high (on the bench, day-specific weights gave a -2.7 % bias, the common one +0.4 %).
      Floored at one typical panel visitor's ``w (w - 1)`` so a day without visitors still
      carries uncertainty. The detection model's error (``model_var``) is left out here.
    - *Correlation between days* ``C_dd' = rho sqrt(C_dd C_d'd')``: the panel is the same
      people every day and many visitors come back, so the days' sampling errors are
      positively correlated (a panel that happens to hold many of a POI's regulars counts
      high every day): averaging days does not shrink that shared part. ``rho`` is pooled
      over POIs and day pairs, ``sum cov / sum sqrt(var_d var_d')`` with the per-POI
      covariance of :func:`day_covariance` (a ratio of HT sums: stable, nearly unbiased).
    - *Between-day variance* ``tau2 = share mu^2``, method of moments over all ``k + 1``
      days (today included, so one trailing day is enough): with the unbiased day-to-day
      variance ``s2`` (ddof 1) of a POI, ``E[s2] = tau2 + (tr C - 1'C1 / n) / (n - 1)``
      exactly, whatever the correlation, so ``share = sum (s2 - that) / sum level^2`` over
      POIs (a pooled moment estimator in the spirit of DerSimonian-Laird, truncated at 0
      once, after pooling; the former median of per-POI values truncated at 0 was biased low
      with few days, to 0 with one trailing day). On the bench ``share`` is 0.002-0.005 (real
      day-to-day changes of ~5-7 %); forcing ``tau2 = 0`` (full pooling) raises the median
      error from 9.9 to 10.1 % (12.2 -> 13.2 % with one trailing day).
    - *Estimate and its error*: with ``S = C + tau2 I``, ``mu`` by GLS and today's BLUP
      ``mu^ + tau2 (S^-1 (e - mu^))_0``; its prediction error variance (Henderson / Harville)
      ``tau2 - tau2^2 (S^-1)_00 + (1 - tau2 (S^-1 1)_0)^2 / (1'S^-1 1)`` includes the
      uncertainty of the estimated ``mu`` (the trailing mean's own error) and of today's
      deviation from it. ``tau2`` -> inf gives today's HT alone, ``tau2 = 0`` the GLS mean.
    - *Detection model error*: the same method on the same kind of data every day, its error
      (``model_rel_error``) is common to the days, so averaging does not reduce it: today's
      share, rescaled to the blended estimate, is added to the variance after blending
      (averaged like a sampling error instead, coverage drops from 0.91 to 0.86, some days
      0.82). The pooled ``rho`` on the bench is ~0.02 (few panel visitors of a POI come
      back the next day in the generator), so the day correlation matters little there, but
      it is what keeps a panel of regulars from looking ``k`` times more precise.

    ``day_cov`` (instead of ``pairs``): :func:`covariance_sums` of the days, computed
    elsewhere (the Spark engine sums them in Spark SQL).

    Returns ``today`` with ``e``/``var`` replaced.
    """
    if not history:
        return today
    floor = max(typical_weight * (typical_weight - 1.0), 1.0)
    frames = [today, *history]
    n = len(frames)
    e_all = np.column_stack(
        [h["e"].reindex(today.index, fill_value=0.0).to_numpy(dtype=float) for h in frames]
    )

    def sampling_var(h: pd.DataFrame) -> np.ndarray:
        v = h["var"].reindex(today.index, fill_value=0.0).to_numpy(dtype=float)
        if "model_var" in h:
            v = v - h["model_var"].reindex(today.index, fill_value=0.0).to_numpy(dtype=float)
        return np.maximum(v, 0.0)

    v_all = np.column_stack([sampling_var(h) for h in frames])
    visited = e_all > 0
    eff = np.where(visited, v_all / np.where(visited, e_all, 1.0), 0.0)
    n_visited = visited.sum(axis=1)
    eff_poi = np.where(
        n_visited > 0, eff.sum(axis=1) / np.maximum(n_visited, 1), max(typical_weight, 1.0)
    )
    level = e_all.mean(axis=1)
    v_model = np.maximum(np.repeat((eff_poi * level)[:, None], n, axis=1), floor)

    rho = 0.0
    if day_cov is None and pairs is not None and len(pairs) == n:
        day_cov = covariance_sums(pairs, today.index)
    if day_cov is not None and len(day_cov) == n:
        cov_sum = scale = 0.0
        for a in range(n):
            for b in range(a + 1, n):
                cov_sum += float(day_cov[a][b])
                scale += float(np.sqrt(v_all[:, a] * v_all[:, b]).sum())
        rho = float(np.clip(cov_sum / scale, 0.0, 0.95)) if scale > 0 else 0.0
    sd = np.sqrt(v_model)
    cmat = rho * sd[:, :, None] * sd[:, None, :]
    idx = np.arange(n)
    cmat[:, idx, idx] = v_model

    s2 = e_all.var(axis=1, ddof=1)
    trace = v_model.sum(axis=1)
    expected = (trace - cmat.sum(axis=(1, 2)) / n) / (n - 1)
    ok = level > 0
    denom = float((level[ok] ** 2).sum())
    share = max(float((s2[ok] - expected[ok]).sum()) / denom, 0.0) if denom > 0 else 0.0
    tau2 = share * level**2

    sigma = cmat + tau2[:, None, None] * np.eye(n)[None]
    inv = np.linalg.inv(sigma)
    inv_one = inv.sum(axis=2)  # S^-1 1
    total = inv_one.sum(axis=1)  # 1' S^-1 1
    mu = (inv_one * e_all).sum(axis=1) / total
    resid = e_all - mu[:, None]
    blended = mu + tau2 * (inv[:, 0, :] * resid).sum(axis=1)
    mse = tau2 - tau2**2 * inv[:, 0, 0] + (1.0 - tau2 * inv_one[:, 0]) ** 2 / total
    out = today.copy()
    out["e"] = np.maximum(blended, 0.0)
    model_share = 0.0  # model_rel_error^2 (0 without the detection correction)
    if "model_var" in today:
        e0 = today["e"].to_numpy(dtype=float)
        mv = today["model_var"].to_numpy(dtype=float)
        if (e0 > 0).any():
            model_share = float(np.max(mv[e0 > 0] / e0[e0 > 0] ** 2))
    out["var"] = np.maximum(mse, 0.0) + model_share * out["e"].to_numpy(dtype=float) ** 2
    out.attrs = {"rho": rho, "tau2_share": share}
    return out


def project_audience(
    visits: pd.DataFrame,
    device_areas: pd.DataFrame,
    areas: pd.DataFrame,
    pois: Iterable[str] | None = None,
    active_devices: Iterable[str] | None = None,
    confidence: float = 0.90,
    history: Sequence[pd.DataFrame] = (),
    detection: pd.DataFrame | None = None,
    history_pairs: Sequence[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Per POI: distinct panel visitors and the projected people count with an interval.

    ``visits``: ``device_id``, ``poi_id`` (one row per visit; repeats are counted once).
    ``device_areas``: ``device_id``, ``area_id``; ``areas``: ``area_id``, ``population``.
    ``pois``: every known POI id; POIs without visitors get a row (None: only visited POIs).
    ``history``: :func:`daily_ht` frames of trailing days to blend with
    (:func:`blend_with_history`; empty: today's HT alone), ``history_pairs`` their weighted
    panel visitors (the third item of :func:`daily_ht`; None: days treated as independent
    samples). ``detection``: the day's
    :func:`detection_rates` (None: no visit-detection correction). Returns
    :data:`OUTPUT_COLUMNS`, sorted by ``poi_id``; counts are int64.
    """
    per_poi, typical, pairs = daily_ht(visits, device_areas, areas, pois, active_devices, detection)
    all_pairs = None if history_pairs is None else [pairs, *history_pairs]
    return project_from_sums(per_poi, typical, history, all_pairs, confidence=confidence)


def project_from_sums(
    per_poi: pd.DataFrame,
    typical: float,
    history: Sequence[pd.DataFrame] = (),
    pairs: Sequence[pd.DataFrame] | None = None,
    day_cov: np.ndarray | None = None,
    confidence: float = 0.90,
) -> pd.DataFrame:
    """:func:`project_audience` from the days' HT sums (:func:`daily_ht` frames, today's
    ``per_poi`` first, and their ``pairs`` or ``day_cov``, see :func:`blend_with_history`)."""
    per_poi = blend_with_history(per_poi, history, typical, pairs, day_cov)
    e = per_poi["e"].to_numpy(dtype=float)
    var = per_poi["var"].to_numpy(dtype=float)
    low, high = gamma_interval(e, var, typical, confidence)
    visitors = per_poi["visitors"].to_numpy(dtype=np.int64)
    estimate = np.maximum(np.rint(e), visitors).astype(np.int64)
    out = pd.DataFrame(
        {
            "poi_id": per_poi.index.astype(str),
            "visitors": visitors,
            "estimate": estimate,
            "estimate_low": np.minimum(np.maximum(np.floor(low), visitors), estimate).astype(
                np.int64
            ),
            "estimate_high": np.maximum(np.ceil(high), estimate).astype(np.int64),
            "std_error": np.sqrt(var),
        }
    )
    return out.sort_values("poi_id", ignore_index=True)


def score_against_truth(
    estimates: pd.DataFrame, truth: pd.DataFrame, min_panel_visitors: int = 30
) -> dict[str, float | int]:
    """Compare estimates with the generator's ``truth/poi_visitors`` (``true_people``).

    Returns: ``pois_scored`` (truth ``panel_visitors >= min_panel_visitors``),
    ``median_abs_pct_error`` and ``mean_pct_error`` (bias) of ``estimate`` vs ``true_people``
    on those POIs, ``interval_coverage`` (share with ``low <= true <= high``) on those POIs and
    ``interval_coverage_all`` on every POI with ``true_people > 0``, and
    ``visitors_median_abs_pct_error`` (our panel visitors vs the true panel visitors: the
    visit detector's share of the error).
    """
    m = estimates.merge(truth, on="poi_id", how="right").fillna(
        {"visitors": 0, "estimate": 0, "estimate_low": 0, "estimate_high": 0}
    )
    true = m["true_people"].astype(float)
    inside = (m["estimate_low"] <= true) & (true <= m["estimate_high"])
    big = m["panel_visitors"] >= min_panel_visitors
    pct = (m["estimate"] - true) / true.where(true > 0)
    vis = (m["visitors"] - m["panel_visitors"]) / m["panel_visitors"].where(big)
    nan = float("nan")
    return {
        "pois_scored": int(big.sum()),
        "median_abs_pct_error": float(pct[big].abs().median() * 100) if big.any() else nan,
        "mean_pct_error": float(pct[big].mean() * 100) if big.any() else nan,
        "interval_coverage": float(inside[big].mean()) if big.any() else nan,
        "interval_coverage_all": float(inside[true > 0].mean()) if (true > 0).any() else nan,
        "visitors_median_abs_pct_error": float(vis[big].abs().median() * 100) if big.any() else nan,
    }


# ---- counting people instead of devices -------------------------------------------------------

COUNT_UNITS = ("devices", "people")
"""What a distinct visitor is: a panel device (the default) or a person (devices linked by the
identity graph, ``curated/identity_graph``)."""


def person_of(devices: pd.Series, graph: pd.DataFrame | None) -> pd.Series:
    """Each device's ``person_id`` in ``graph`` (``device_id``, ``person_id``); a device the graph
    does not hold is its own person. ``graph`` None: every device is its own person."""
    ids = devices.astype(object)
    if graph is None or graph.empty:
        return ids
    mapping = graph.drop_duplicates("device_id").set_index("device_id")["person_id"]
    return ids.map(mapping).fillna(ids)


def as_people(
    visits: pd.DataFrame,
    device_areas: pd.DataFrame,
    active_devices: Iterable[str] | None,
    detection: pd.DataFrame | None,
    graph: pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None, pd.DataFrame | None]:
    """:func:`daily_ht`'s inputs with persons in place of devices (``device_id`` holds the
    ``person_id``), so distinct visitors become distinct people.

    A person's home area is the smallest ``area_id`` among its devices' homes; a person is
    active when one of its devices is; its visit-detection rate is the highest of its devices'
    (a visit is seen when any of its devices reveals it; the best device is a lower bound of
    that probability, which keeps the weights conservative). The Spark engine applies the same
    rules (``near_assets/spark_jobs/audience.py``).
    """
    v = visits.assign(device_id=person_of(visits["device_id"], graph))
    homes = (
        device_areas[["device_id", "area_id"]]
        .dropna()
        .assign(device_id=lambda d: person_of(d["device_id"], graph))
        .groupby("device_id", as_index=False, sort=True)["area_id"]
        .min()
    )
    active = None
    if active_devices is not None:
        active = pd.unique(person_of(pd.Series(list(active_devices), dtype=object), graph))
    rates = None
    if detection is not None:
        rates = (
            detection[["device_id", "p_detect"]]
            .assign(device_id=lambda d: person_of(d["device_id"], graph))
            .groupby("device_id", as_index=False, sort=True)["p_detect"]
            .max()
        )
    return v, homes, active, rates
