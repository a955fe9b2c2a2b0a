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

Borrowing strength from the trailing days (optional, :func:`blend_with_history`): a POI's
audience barely moves from one day to the next, while one day's panel sample is small (a POI
with 30 panel visitors has a sampling error of about 1/sqrt(30) = 18 %). Today's HT estimate is
therefore combined with the trailing days' mean by precision weighting, with a between-day
variance estimated from the data so that real changes keep today's weight.

All counts are people per UTC day. Functions are pure (pandas/numpy/scipy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

OUTPUT_COLUMNS = ["poi_id", "visitors", "estimate", "estimate_low", "estimate_high", "std_error"]


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
) -> tuple[pd.DataFrame, float]:
    """One day's HT sums per POI: ``visitors``, ``e`` (estimate) and ``var`` (its variance).

    Indexed by ``poi_id``; also returns the typical (median) area weight. See the module doc.
    """
    pairs = visits[["device_id", "poi_id"]].dropna().drop_duplicates()
    seen = pd.unique(pairs["device_id"])
    active = None if active_devices is None else set(active_devices) | set(seen)
    weights = area_weights(device_areas, areas, active)
    homes = device_areas[["device_id", "area_id"]].drop_duplicates("device_id")
    dev = pairs.merge(homes, on="device_id", how="left")
    w = dev["area_id"].map(weights.set_index("area_id")["weight"]).to_numpy(dtype=float)
    known = np.isfinite(w)
    dev["w"] = np.where(known, w, 0.0)
    dev["v"] = np.where(known, w * np.maximum(w - 1.0, 0.0), 0.0)
    per_poi = dev.groupby("poi_id").agg(
        visitors=("device_id", "size"), e=("w", "sum"), var=("v", "sum")
    )
    if pois is not None:
        index = pd.Index(pd.unique(pd.Series(list(pois), dtype=object)), name="poi_id")
        per_poi = per_poi.reindex(index.union(per_poi.index), fill_value=0)
    per_poi.index = per_poi.index.astype(str)
    finite = weights["weight"].dropna()
    return per_poi, float(finite.median()) if len(finite) else 1.0


def blend_with_history(
    today: pd.DataFrame, history: Sequence[pd.DataFrame], typical_weight: float
) -> pd.DataFrame:
    """Borrow strength from the trailing days (a random-effects composite estimator).

    ``today`` and each of ``history`` are :func:`daily_ht` frames. Per POI, the trailing days'
    mean ``M`` (variance ``S = sum var_d / k^2``) and today's ``E0`` (variance ``V0``) are
    combined by precision: ``E = (E0/V0 + M/(S+tau2)) / (1/V0 + 1/(S+tau2))`` with variance
    ``1/(1/V0 + 1/(S+tau2))``. ``tau2`` is the real day-to-day change of a POI's audience,
    estimated from the data as a share of ``M^2`` (median over POIs of the between-day variance
    in excess of the sampling variance), so a POI whose audience really moves leans on today.
    Every variance is floored at one typical panel visitor's ``w (w - 1)``, so a day without
    visitors still carries uncertainty. Returns ``today`` with ``e``/``var`` replaced.
    """
    if not history:
        return today
    floor = max(typical_weight * (typical_weight - 1.0), 1.0)
    e_h = np.column_stack([h["e"].reindex(today.index, fill_value=0.0) for h in history])
    v_h = np.column_stack([h["var"].reindex(today.index, fill_value=0.0) for h in history])
    v_h = np.maximum(v_h, floor)
    k = e_h.shape[1]
    mean = e_h.mean(axis=1)
    s = v_h.sum(axis=1) / k**2
    tau2 = np.zeros_like(mean)
    if k >= 2:
        excess = e_h.var(axis=1, ddof=1) - v_h.mean(axis=1)
        ok = mean > 0
        share = float(np.median(np.maximum(excess[ok], 0.0) / mean[ok] ** 2)) if ok.any() else 0.0
        tau2 = share * mean**2
    e0 = today["e"].to_numpy(dtype=float)
    v0 = np.maximum(today["var"].to_numpy(dtype=float), floor)
    p0, ph = 1.0 / v0, 1.0 / (s + tau2)
    out = today.copy()
    out["e"] = (e0 * p0 + mean * ph) / (p0 + ph)
    out["var"] = 1.0 / (p0 + ph)
    return out


def audience_estimates(
    visits: pd.DataFrame,
    device_areas: pd.DataFrame,
    areas: pd.DataFrame,
    pois: Iterable[str] | None = None,
    active_devices: Iterable[str] | None = None,
    confidence: float = 0.90,
    history: Sequence[pd.DataFrame] = (),
) -> pd.DataFrame:
    """Per POI: distinct panel visitors and the projected people count with an interval.

    ``visits``: ``device_id``, ``poi_id`` (one row per visit; repeats are counted once).
    ``device_areas``: ``device_id``, ``area_id``; ``areas``: ``area_id``, ``population``.
    ``pois``: every known POI id; POIs without visitors get a row (None: only visited POIs).
    ``history``: :func:`daily_ht` frames of trailing days to blend with
    (:func:`blend_with_history`; empty: today's HT alone). Returns :data:`OUTPUT_COLUMNS`,
    sorted by ``poi_id``; counts are int64.
    """
    per_poi, typical = daily_ht(visits, device_areas, areas, pois, active_devices)
    per_poi = blend_with_history(per_poi, history, typical)
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
