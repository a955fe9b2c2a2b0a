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
so lift estimators can be scored against both the planted and the realised effect.
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

    def record_day(self, observed: np.ndarray, brand_visitors: np.ndarray) -> None:
        """Track, per device, observation in the window and a brand visit on an observed day."""
        self.observed |= observed
        self.visited |= brand_visitors & observed

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
        return {
            **self.reference(),
            "planted_lift": self.planted_lift,
            "lift_applies_to": "per-visit probability of choosing the brand's POIs, whole window",
            "exposed_devices": int(self.exposed.sum()),
            "control_devices": int((~self.exposed).sum()),
            "realised_exposed_visit_rate": ev,
            "realised_control_visit_rate": cv,
            "realised_lift": (ev / cv - 1.0) if ev is not None and cv else None,
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
    first = np.r_[0, np.cumsum(n_each)[:-1]]
    offset = rng.uniform(0, length_s, len(dev))
    offset[first] = rng.uniform(0, 86_400, len(exposed))
    t0 = pd.Timestamp(campaign.start_date, tz="UTC")
    ts = t0 + pd.to_timedelta(np.round(offset * 1e6).astype(np.int64), unit="us")
    df = pd.DataFrame({"device_id": device_ids[dev].astype(str), "ts": ts})
    return df.sort_values("ts", kind="stable").reset_index(drop=True)
