"""Brand affinity: how much more a device favours a brand than the population does.

For device ``d`` and brand ``b`` over a window of visits (branded POIs only):

- ``v_db`` visits of d to b, ``n_d`` branded visits of d;
- the population baseline share ``p_b = V_b / V`` (all devices' visits to b over all visits);
- a smoothed visit share ``s_db = (v_db + alpha * p_b) / (n_d + alpha)`` (``alpha`` pseudo
  visits drawn from the baseline, so one visit from a light user is not a certainty);
- a dwell ratio ``r_db = median dwell of d at b / median dwell of everyone at b``.

``affinity = log(s_db / p_b) + beta * log(r_db)``, clipped to ``[-clip, clip]``: 0 means
"like everyone else", +1 means about e (2.7) times the baseline share. It grows with repeat
visits and longer stays, shrinks toward 0 for devices with little evidence, and sorts
descending into the devices most likely to respond to the brand. ``lift`` (s_db / p_b),
``visits`` and ``dwell_s`` are kept next to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

AFFINITY_COLUMNS = ["device_id", "brand", "affinity", "visits", "dwell_s", "lift"]


@dataclass(frozen=True)
class AffinityParams:
    """Brand affinity parameters.

    - ``window_days`` (28): trailing days of visits.
    - ``alpha`` (5): pseudo visits from the population baseline (smoothing).
    - ``beta`` (0.5): weight of the dwell ratio.
    - ``clip`` (5): scores are clipped to [-clip, clip].
    """

    window_days: int = 28
    alpha: float = 5.0
    beta: float = 0.5
    clip: float = 5.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def brand_affinity(
    visits: pd.DataFrame,
    alpha: float = AffinityParams.alpha,
    beta: float = AffinityParams.beta,
    clip: float = AffinityParams.clip,
) -> pd.DataFrame:
    """Affinity per (device, brand) from ``visits`` (device_id, brand, dwell_s); see module doc.

    Only device-brand pairs with at least one visit are returned, sorted by brand then
    descending affinity.
    """
    branded = visits[visits["brand"].notna()]
    if branded.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in AFFINITY_COLUMNS})
    pair = (
        branded.groupby(["device_id", "brand"], sort=False)
        .agg(visits=("dwell_s", "size"), dwell_s=("dwell_s", "sum"), med=("dwell_s", "median"))
        .reset_index()
    )
    brand_visits = pair.groupby("brand")["visits"].sum()
    p = (brand_visits / brand_visits.sum()).reindex(pair["brand"]).to_numpy()
    brand_dwell = branded.groupby("brand")["dwell_s"].median().reindex(pair["brand"]).to_numpy()
    n_dev = pair.groupby("device_id")["visits"].transform("sum").to_numpy(np.float64)
    share = (pair["visits"].to_numpy(np.float64) + alpha * p) / (n_dev + alpha)
    lift = share / p
    ratio = np.clip(pair["med"].to_numpy(np.float64), 1.0, None) / np.clip(brand_dwell, 1.0, None)
    score = np.clip(np.log(lift) + beta * np.log(ratio), -clip, clip)
    out = pair.assign(affinity=score, lift=lift)[AFFINITY_COLUMNS]
    out["visits"] = out["visits"].astype(np.int32)
    return out.sort_values(
        ["brand", "affinity", "device_id"], ascending=[True, False, True], ignore_index=True
    )
