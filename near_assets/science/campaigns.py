"""Campaign science: campaign file validation and matched-control lift with a confidence interval.

Estimand. The generator (and, we assume, a real campaign) changes how likely an exposed device is
to *choose* the brand's places when it goes out. The visit rate we measure is therefore the
**brand share of place visits**: brand visits / all place visits of a group of devices during the
window (a number in 0..1). Lift is ``exposed_rate / control_rate - 1``. The share of devices with at
least one brand visit (``reach``) is reported beside it; it saturates over long windows, so it
understates a lift in choice probability and is not the headline figure.

Control. Devices never exposed, matched exactly on home area x pre-campaign brand visits
(bucketed count of brand visits in the ``pre_days`` before the start: 0, 1, 2, 3-4, 5-7, 8-12,
13+; a finer version of the "pre-period brand visitor" flag, so targeting of brand fans does not
pass for lift). The control rate is standardised to the
exposed group: per stratum control share, weighted by the exposed group's place visits in that
stratum. Exposed devices in a stratum without control visits are left out (``unmatched_exposed``).

Interval. Delta method on ``log(exposed_rate / control_rate)`` with device-level linearisation
(a device's visits are correlated, devices are the independent units), then exponentiated:
``lift_low, lift_high = exp(log_ratio -+ z * se) - 1``.

Precision (``bench/campaign_lift.py``, 30 seeds of the generator's default 2,000-device panel,
720 campaigns). Whatever the estimator, the exposed group's brand visits are Poisson-like draws:
the lift cannot be known better than ``(1 + lift) / sqrt(exposed brand visits)`` (the *floor*,
4.3 pp RMS here; about 1,000 exposed brand visits per campaign). This estimator's RMSE is 5.6 pp,
1.3x the floor, the excess being the control group's own noise. Variance reductions tried on the
same data: CUPED on the pre-period brand-visit residual (``theta`` ~ 0.007: within a home area,
past brand visits do not predict future ones beyond the area's rate, so nothing to remove),
home-area strata alone (5.4 pp, but no protection against targeting of brand fans), and a
log-linear area + pre-bin main-effects model instead of exact matching (5.5 pp, -0.7 pp bias).
None is worth the robustness it costs. The outcome is already the count-based brand share of
place visits (reach, the binary outcome, saturates). So +-2 pp per campaign needs more brand
visits, i.e. a bigger panel or longer campaigns (the figures are in the bench docstring); the
asset reports the floor as ``precision_floor_pp``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUIRED_FIELDS = ("campaign_id", "brand", "start_date", "end_date")
MIN_DAYS, MAX_DAYS = 15, 90
SMALL_STRATUM = 5
PRE_BINS = [0, 1, 2, 3, 5, 8, 13, np.inf]
PRE_LABELS = ["0", "1", "2", "3-4", "5-7", "8-12", "13+"]


class CampaignFileError(ValueError):
    """A campaign file that cannot become a partition, with the reason."""


@dataclass(frozen=True)
class CampaignSpec:
    """A validated ``reference/campaigns/<id>.json``; dates are UTC days, both inclusive."""

    campaign_id: str
    brand: str
    start_date: date
    end_date: date

    @property
    def days(self) -> int:
        return (self.end_date - self.start_date).days + 1

    def to_dict(self) -> dict[str, str]:
        return {
            "campaign_id": self.campaign_id,
            "brand": self.brand,
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
        }


def is_safe_campaign_id(value: object) -> bool:
    """Only ``[A-Za-z0-9_-]{1,64}``: the id becomes a partition key and a lake path segment."""
    return isinstance(value, str) and CAMPAIGN_ID.fullmatch(value) is not None


def parse_campaign(raw: bytes | str, file_stem: str | None = None) -> CampaignSpec:
    """Validate one campaign file; raise ``CampaignFileError`` with a human reason otherwise.

    Checks: valid JSON object, required fields present and strings, safe id equal to the file
    name, ISO dates, end not before start, and 15 to 90 days inclusive.
    """
    if file_stem is not None and not is_safe_campaign_id(file_stem):
        raise CampaignFileError(f"unsafe file name {file_stem!r}: ids are [A-Za-z0-9_-]{{1,64}}")
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CampaignFileError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CampaignFileError("not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in obj or obj[f] in (None, "")]
    if missing:
        raise CampaignFileError(f"missing field(s) {', '.join(missing)}")
    wrong = [f for f in REQUIRED_FIELDS if not isinstance(obj[f], str)]
    if wrong:
        raise CampaignFileError(f"field(s) {', '.join(wrong)} must be strings")
    cid = obj["campaign_id"]
    if not is_safe_campaign_id(cid):
        raise CampaignFileError(f"unsafe campaign_id {cid!r}: ids are [A-Za-z0-9_-]{{1,64}}")
    if file_stem is not None and cid != file_stem:
        raise CampaignFileError(f"campaign_id {cid!r} does not match the file name {file_stem!r}")
    try:
        start = date.fromisoformat(obj["start_date"])
        end = date.fromisoformat(obj["end_date"])
    except ValueError as exc:
        raise CampaignFileError(f"bad date ({exc}); expected YYYY-MM-DD") from None
    if end < start:
        raise CampaignFileError(f"end_date {end} is before start_date {start}")
    days = (end - start).days + 1
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise CampaignFileError(f"runs {days} days; campaigns run {MIN_DAYS} to {MAX_DAYS} days")
    return CampaignSpec(cid, obj["brand"], start, end)


def campaign_phase(spec: CampaignSpec, today: date, grace_days: int = 2) -> str:
    """``upcoming`` before the start, ``live`` from the start until ``grace_days`` after the end
    (so the last day's visits can land and the final figure be computed), then ``ended``."""
    if today < spec.start_date:
        return "upcoming"
    if today <= spec.end_date + timedelta(days=grace_days):
        return "live"
    return "ended"


# ---- panel ------------------------------------------------------------------------------------


def _utc(ts: pd.Series) -> pd.Series:
    """Timestamps as UTC (an integer column is epoch milliseconds)."""
    if pd.api.types.is_integer_dtype(ts):
        return pd.to_datetime(ts, unit="ms", utc=True)
    return pd.to_datetime(ts, utc=True)


def exposed_until(exposures: pd.DataFrame, until: date) -> pd.Series:
    """Distinct devices exposed up to the end of ``until`` (later exposures are not yet known).

    ``exposures``: ``device_id, ts`` (UTC timestamps or epoch milliseconds).
    """
    if exposures.empty:
        return pd.Series([], dtype="object")
    df = exposures.dropna(subset=["device_id", "ts"])
    cutoff = pd.Timestamp(until + timedelta(days=1), tz="UTC")
    return pd.Series(df.loc[_utc(df["ts"]) < cutoff, "device_id"].astype(str).unique())


def brand_poi_ids(pois: pd.DataFrame, brand: str) -> pd.Index:
    """Ids of the places of ``brand`` (``pois``: ``poi_id, brand``)."""
    return pd.Index(pois.loc[pois["brand"] == brand, "poi_id"].astype(str).unique())


def device_visit_counts(visits: pd.DataFrame, brand_pois: set[str] | pd.Index) -> pd.DataFrame:
    """Per device: ``brand_visits`` and ``poi_visits`` (all place visits) in ``visits``."""
    if visits.empty:
        return pd.DataFrame(
            {"brand_visits": pd.Series(dtype="int64"), "poi_visits": pd.Series(dtype="int64")},
            index=pd.Index([], name="device_id", dtype="object"),
        )
    is_brand = visits["poi_id"].isin(list(brand_pois)).astype("int64")
    if "visits" in visits:  # per (device, POI) counts (``visits_between``), not one row a visit
        n = visits["visits"].to_numpy(np.int64)
        out = (
            pd.DataFrame(
                {"device_id": visits["device_id"].to_numpy(), "b": is_brand.to_numpy() * n, "n": n}
            )
            .groupby("device_id")
            .agg(brand_visits=("b", "sum"), poi_visits=("n", "sum"))
        )
        return out.astype("int64")
    out = (
        pd.DataFrame({"device_id": visits["device_id"].to_numpy(), "b": is_brand.to_numpy()})
        .groupby("device_id")["b"]
        .agg(brand_visits="sum", poi_visits="size")
    )
    return out.astype("int64")


HISTORY_READ = ["device_id", "poi_id", "first_seen", "visits_total"]
"""The ``visit_history`` columns ``visits_between`` reads."""


def visits_between(end: pd.DataFrame, start: pd.DataFrame | None) -> pd.DataFrame:
    """Per (device, POI) visits after the ``start`` snapshot up to the ``end`` one (two
    ``visit_history`` partitions, ``HISTORY_READ``): ``visits_total`` of ``end`` minus that of
    ``start`` when the pair was already followed then (same ``first_seen``; a pair dropped by
    the history's retention and seen again starts afresh). ``start`` None: everything of
    ``end``. Returns ``device_id``, ``poi_id``, ``visits`` (> 0), for ``device_visit_counts``."""
    e = end[HISTORY_READ].reset_index(drop=True)
    n = e["visits_total"].to_numpy(np.int64)
    if start is not None and len(start):
        before = start[HISTORY_READ].rename(
            columns={"first_seen": "start_first", "visits_total": "start_total"}
        )
        e = e.merge(before, on=["device_id", "poi_id"], how="left")
        same = (e["start_first"] == e["first_seen"]).to_numpy()
        n = n - np.where(same, e["start_total"].fillna(0).to_numpy(np.int64), 0)
    out = pd.DataFrame({"device_id": e["device_id"], "poi_id": e["poi_id"], "visits": n})
    return out[out["visits"] > 0].reset_index(drop=True)


def build_panel(
    devices: pd.DataFrame,
    exposed_ids: pd.Series | set[str] | list[str],
    window_visits: pd.DataFrame,
    pre_visits: pd.DataFrame,
    brand_pois: set[str] | pd.Index,
) -> pd.DataFrame:
    """One row per panel device: ``device_id, home_area_id, exposed, pre_brand, pre_brand_bin,
    brand_visits, poi_visits`` (window visits; ``pre_brand_bin`` buckets the brand visits of the
    pre-period: 0, 1, 2, 3-4, 5-7, 8-12, 13+).

    ``devices`` (``device_id``, ``home_area_id``) is the panel universe: devices whose home area is
    known. Exposed devices outside it cannot be matched on area and are left out.
    """
    panel = devices[["device_id", "home_area_id"]].drop_duplicates("device_id").copy()
    panel["device_id"] = panel["device_id"].astype(str)
    exposed = pd.Index(pd.Series(list(exposed_ids), dtype="object").astype(str).unique())
    panel["exposed"] = panel["device_id"].isin(exposed)
    pre = device_visit_counts(pre_visits, brand_pois)
    win = device_visit_counts(window_visits, brand_pois)
    panel = panel.join(pre["brand_visits"].rename("pre_brand_visits"), on="device_id")
    pre_n = panel["pre_brand_visits"].fillna(0).astype("int64")
    panel["pre_brand"] = pre_n.gt(0)
    panel["pre_brand_bin"] = pd.cut(pre_n, PRE_BINS, right=False, labels=PRE_LABELS).astype(str)
    panel = panel.drop(columns="pre_brand_visits").join(win, on="device_id")
    panel[["brand_visits", "poi_visits"]] = (
        panel[["brand_visits", "poi_visits"]].fillna(0).astype("int64")
    )
    return panel.reset_index(drop=True)


# ---- estimator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiftEstimate:
    """Matched-control lift of the brand visit share, with a ``confidence`` interval."""

    exposed_devices: int
    control_devices: int
    exposed_visit_rate: float
    control_visit_rate: float
    lift: float
    lift_low: float
    lift_high: float
    exposed_reach: float
    control_reach: float
    exposed_visits: int
    control_visits: int
    unmatched_exposed: int
    strata: int
    confidence: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return bool(self.lift_low > 0 or self.lift_high < 0)

    @property
    def exposed_brand_visits(self) -> int:
        """Brand visits of the exposed group in the window."""
        if not math.isfinite(self.exposed_visit_rate):
            return 0
        return round(self.exposed_visit_rate * self.exposed_visits)

    @property
    def precision_floor_pp(self) -> float:
        """Poisson noise of the exposed group's brand visits: the standard error (pp) no
        estimator can beat on this data, ``(1 + lift) / sqrt(exposed brand visits)``; about half
        the interval's half-width when the control group is large."""
        visits = self.exposed_brand_visits
        return 100 * (1 + self.lift) / math.sqrt(visits) if visits else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PANEL_WEIGHT = "devices"
"""Optional panel column: how many devices a row stands for (a compressed panel, one row per
distinct stratum x exposure x counts, as the Spark engine returns it); 1 when absent."""


def compress_panel(panel: pd.DataFrame) -> pd.DataFrame:
    """The panel as one row per distinct (home_area_id, pre_brand_bin, exposed, brand_visits,
    poi_visits) with ``devices`` = how many devices share it (``matched_lift`` gives the same
    estimate on both forms; the compressed one is small whatever the panel's size)."""
    keys = ["home_area_id", "pre_brand_bin", "exposed", "brand_visits", "poi_visits"]
    out = panel.groupby(keys, sort=True).size().rename(PANEL_WEIGHT).reset_index()
    out[PANEL_WEIGHT] = out[PANEL_WEIGHT].astype("int64")
    return out


def _ratio_var(b: np.ndarray, v: np.ndarray, n: np.ndarray | None = None) -> float:
    """Variance of ``sum(b) / sum(v)`` by linearisation over independent devices (``n``: devices
    per row, 1 each by default)."""
    n = np.ones(len(b)) if n is None else n
    devices = float(n.sum())
    total = float((n * v).sum())
    if devices < 2 or total <= 0:
        return math.nan
    r = float((n * b).sum()) / total
    z = (b - r * v) / total
    return float((n * z**2).sum() * devices / (devices - 1))


def matched_lift(
    panel: pd.DataFrame,
    strata: tuple[str, ...] = ("home_area_id", "pre_brand_bin"),
    confidence: float = 0.95,
) -> LiftEstimate:
    """Lift of the brand visit share of exposed devices over their matched controls.

    ``panel`` comes from ``build_panel`` (one row per device) or ``compress_panel`` (a
    ``devices`` column counts the devices of each row). Devices without a place visit in the
    window carry no information on the share and only count for reach. See the module docstring
    for the method.
    """
    df = panel.copy()
    if PANEL_WEIGHT not in df:
        df[PANEL_WEIGHT] = 1
    df[PANEL_WEIGHT] = df[PANEL_WEIGHT].astype("int64")
    df["stratum"] = df[list(strata)].astype(str).agg("|".join, axis=1)
    n_col = PANEL_WEIGHT
    df["_v"] = df[n_col] * df["poi_visits"]
    df["_b"] = df[n_col] * df["brand_visits"]
    active = df[df["poi_visits"] > 0]
    ctl_visits = active[~active["exposed"]].groupby("stratum")["_v"].sum()
    matched_strata = ctl_visits[ctl_visits > 0].index
    exp_all = df[df["exposed"]]
    exp = exp_all[exp_all["stratum"].isin(matched_strata)]
    ctl = df[~df["exposed"] & df["stratum"].isin(exp["stratum"].unique())]
    exp_act = exp[exp["poi_visits"] > 0]
    ctl_act = ctl[ctl["poi_visits"] > 0]
    n_exp, n_ctl, n_exp_all = (int(x[n_col].sum()) for x in (exp, ctl, exp_all))

    nan = math.nan
    ve = float(exp_act["_v"].sum())
    if ve <= 0 or ctl_act.empty:
        return LiftEstimate(
            n_exp, n_ctl, nan, nan, nan, nan, nan, nan, nan,
            int(ve), int(ctl_act["_v"].sum()), n_exp_all - n_exp, 0, confidence,
        )  # fmt: skip

    rate_e = exp_act["_b"].sum() / ve
    var_e = _ratio_var(
        exp_act["brand_visits"].to_numpy(float),
        exp_act["poi_visits"].to_numpy(float),
        exp_act[n_col].to_numpy(float),
    )

    w = exp_act.groupby("stratum")["_v"].sum() / ve
    g = ctl_act.groupby("stratum")
    sums = g[["_b", "_v"]].sum()
    r_s = sums["_b"] / sums["_v"]
    # within-stratum linearised variance; strata with fewer than SMALL_STRATUM devices borrow a
    # pooled residual variance per place visit (their own spread is too noisy to trust)
    resid = ctl_act["brand_visits"] - ctl_act["stratum"].map(r_s) * ctl_act["poi_visits"]
    sq = resid**2 * ctl_act[n_col]
    ss = sq.groupby(ctl_act["stratum"]).sum()
    n_s = g[n_col].sum()
    own = ss * n_s / (n_s - 1).clip(lower=1) / sums["_v"] ** 2
    n_ctl_act = int(ctl_act[n_col].sum())
    dof = max(n_ctl_act - len(n_s), 1)
    per_visit = float(sq.sum()) / float(ctl_act["_v"].sum()) * n_ctl_act / dof
    borrowed = per_visit / sums["_v"]
    var_s = own.where(n_s >= SMALL_STRATUM, borrowed)
    w = w.reindex(r_s.index).fillna(0.0)
    rate_c = float((w * r_s).sum())
    var_c = float((w**2 * var_s).sum())

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    if rate_e > 0 and rate_c > 0:
        log_ratio = math.log(rate_e / rate_c)
        se = math.sqrt(var_e / rate_e**2 + var_c / rate_c**2)
        lift, low, high = (
            math.exp(log_ratio) - 1,
            math.exp(log_ratio - z * se) - 1,
            math.exp(log_ratio + z * se) - 1,
        )
    else:
        lift = low = high = nan

    n_e = exp.groupby("stratum")[n_col].sum()
    reached = ctl[n_col] * (ctl["brand_visits"] > 0)
    reach_c_s = reached.groupby(ctl["stratum"]).sum() / ctl.groupby("stratum")[n_col].sum()
    reach_e = float((exp[n_col] * (exp["brand_visits"] > 0)).sum() / n_exp) if n_exp else nan
    reach_c = float((n_e / n_e.sum() * reach_c_s.reindex(n_e.index)).sum()) if n_exp else nan

    return LiftEstimate(
        exposed_devices=n_exp,
        control_devices=n_ctl,
        exposed_visit_rate=float(rate_e),
        control_visit_rate=rate_c,
        lift=lift,
        lift_low=low,
        lift_high=high,
        exposed_reach=reach_e,
        control_reach=reach_c,
        exposed_visits=int(ve),
        control_visits=int(ctl_act["_v"].sum()),
        unmatched_exposed=n_exp_all - n_exp,
        strata=len(w),
        confidence=confidence,
    )


def insight_row(spec: CampaignSpec, est: LiftEstimate, as_of: date, final: bool) -> pd.DataFrame:
    """The published ``campaign_insights`` row (CONTRACTS columns first, then extras)."""
    row = {
        "campaign_id": spec.campaign_id,
        "brand": spec.brand,
        "exposed_devices": est.exposed_devices,
        "control_devices": est.control_devices,
        "exposed_visit_rate": est.exposed_visit_rate,
        "control_visit_rate": est.control_visit_rate,
        "lift": est.lift,
        "lift_low": est.lift_low,
        "lift_high": est.lift_high,
        "as_of": pd.Timestamp(as_of),
        "final": final,
        "start_date": pd.Timestamp(spec.start_date),
        "end_date": pd.Timestamp(spec.end_date),
        "confidence": est.confidence,
        "exposed_reach": est.exposed_reach,
        "control_reach": est.control_reach,
        "exposed_visits": est.exposed_visits,
        "control_visits": est.control_visits,
        "unmatched_exposed": est.unmatched_exposed,
        "strata": est.strata,
    }
    return pd.DataFrame([row])
