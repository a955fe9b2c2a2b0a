"""Campaign planning for the synthetic lake: windows, exposed devices, exposures, planted lift.

Knobs (module constants, all recorded in ``truth/panel.json``):

- ``MIN_DAYS`` / ``MAX_DAYS``: campaign length bounds (CONTRACTS: 15 to 90 days). No campaign
  is planned when the generated range is shorter than ``MIN_DAYS``.
- ``EXPOSED_SHARE``: share of the panel exposed, drawn per campaign.
- ``LIFTED_SHARE`` / ``PLANTED_LIFT``: about half the campaigns get ``PLANTED_LIFT``, the rest 0.
- ``EXPOSURES_MEAN``: exposures per exposed device (1 + Poisson); the first one falls on the
  campaign's first day, the rest uniformly in the window.

Planted lift: on every day of the window, an exposed device's probability of choosing one of
the campaign brand's POIs for a visit is multiplied by ``1 + planted_lift`` (the other POIs
share the remainder, see ``panel.apply_brand_lift``). Control devices (the unexposed rest of
the panel) keep the baseline choice model. ``truth/campaigns/<id>.json`` also records the
realised visit rates (share of observed devices with at least one brand visit in the window)
and the realised daily visit rates (share of observed device-days with a brand visit), so lift
estimators can be scored against both the planted and the realised effect. Because a device
that visits often would visit anyway, the window-level visit-rate lift saturates below the
planted per-visit lift (about 0.06-0.08 for a planted 0.10 over 2-3 weeks); the daily rate
lift stays close to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

MIN_DAYS = 15
MAX_DAYS = 90
EXPOSED_SHARE = (0.30, 0.40)
LIFTED_SHARE = 0.5
PLANTED_LIFT = 0.10
EXPOSURES_MEAN = 3.0


@dataclass
class Campaign:
    campaign_id: str
    brand: str
    start_date: date
    end_date: date
    planted_lift: float
    exposed: np.ndarray  # bool per panel device
    visited: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    day_counts: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))

    def record_day(self, observed: np.ndarray, brand_visitors: np.ndarray) -> None:
        """Track observation and brand visits of each device on one day of the window."""
        self.observed |= observed
        seen = brand_visitors & observed
        self.visited |= seen
        self.day_counts += [
            (observed & self.exposed).sum(),
            (seen & self.exposed).sum(),
            (observed & ~self.exposed).sum(),
            (seen & ~self.exposed).sum(),
        ]

    def active(self, day: date) -> bool:
        return self.start_date <= day <= self.end_date

    def reference(self) -> dict:
        """``reference/campaigns/<id>.json`` (CONTRACTS)."""
        return {
            "campaign_id": self.campaign_id,
            "brand": self.brand,
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
        }

    def truth(self) -> dict:
        """``truth/campaigns/<id>.json``: planted lift plus the realised visit rates."""
        exp_obs = self.exposed & self.observed
        ctl_obs = ~self.exposed & self.observed
        ev = float(self.visited[exp_obs].mean()) if exp_obs.any() else None
        cv = float(self.visited[ctl_obs].mean()) if ctl_obs.any() else None
        e_days, e_visit_days, c_days, c_visit_days = (int(v) for v in self.day_counts)
        e_rate = e_visit_days / e_days if e_days else None
        c_rate = c_visit_days / c_days if c_days else None
        return {
            **self.reference(),
            "planted_lift": self.planted_lift,
            "lift_applies_to": "per-visit probability of choosing the brand's POIs, whole window",
            "exposed_devices": int(self.exposed.sum()),
            "control_devices": int((~self.exposed).sum()),
            "realised_exposed_visit_rate": ev,
            "realised_control_visit_rate": cv,
            "realised_lift": (ev / cv - 1.0) if ev is not None and cv else None,
            "realised_exposed_daily_visit_rate": e_rate,
            "realised_control_daily_visit_rate": c_rate,
            "realised_daily_lift": (e_rate / c_rate - 1.0)
            if e_rate is not None and c_rate
            else None,
        }


def plan_campaigns(
    seed: int, start: date, days: int, brands: list[str], n_devices: int, n_campaigns: int
) -> list[Campaign]:
    """Up to ``n_campaigns`` campaigns inside [start, start + days), each 15-90 days long."""
    if days < MIN_DAYS or n_campaigns <= 0:
        return []
    rng = np.random.default_rng([seed, 303])
    lifted = rng.permutation(n_campaigns) < round(n_campaigns * LIFTED_SHARE)
    chosen = rng.permutation(brands)
    out = []
    for k in range(n_campaigns):
        length = int(rng.integers(MIN_DAYS, min(MAX_DAYS, days) + 1))
        offset = int(rng.integers(0, days - length + 1))
        first = start + timedelta(days=offset)
        share = rng.uniform(*EXPOSED_SHARE)
        out.append(
            Campaign(
                campaign_id=f"C{k + 1:03d}",
                brand=str(chosen[k % len(chosen)]),
                start_date=first,
                end_date=first + timedelta(days=length - 1),
                planted_lift=PLANTED_LIFT if lifted[k] else 0.0,
                exposed=rng.random(n_devices) < share,
                visited=np.zeros(n_devices, dtype=bool),
                observed=np.zeros(n_devices, dtype=bool),
            )
        )
    return out


def exposures(seed: int, campaign: Campaign, device_ids: np.ndarray) -> pd.DataFrame:
    """Exposure events (device_id, ts UTC) of one campaign, sorted by time."""
    rng = np.random.default_rng([seed, 304, int(campaign.campaign_id[1:])])
    exposed = np.flatnonzero(campaign.exposed)
    n_each = 1 + rng.poisson(EXPOSURES_MEAN - 1.0, len(exposed))
    dev = np.repeat(exposed, n_each)
    length_s = ((campaign.end_date - campaign.start_date).days + 1) * 86_400
    first = np.cumsum(n_each) - n_each
    offset = rng.uniform(0, length_s, len(dev))
    offset[first] = rng.uniform(0, 86_400, len(exposed))
    t0 = pd.Timestamp(campaign.start_date, tz="UTC")
    ts = t0 + pd.to_timedelta(np.round(offset * 1e6).astype(np.int64), unit="us")
    df = pd.DataFrame(
        {"device_id": device_ids[dev].astype(str), "ts": ts.astype("datetime64[us, UTC]")}
    )
    return df.sort_values("ts", kind="stable").reset_index(drop=True)
