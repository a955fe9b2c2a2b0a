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

Variants (``brand_affinity_from_pairs``): with ``dwell="mean"`` the dwell ratio compares mean
dwells (``dwell sum / visits`` of the pair over that of the brand) instead of medians; the score
then needs only per (device, POI) visit counts and dwell sums, which the per-device visit history
(``visit_history``: 7/30/90-day counts and dwell) holds, so a window of 7, 30 or 90 days is read
from one history partition instead of the window of daily visits, with the same result.
Counting people (``dedupe_people``): a person's devices see the same visits, so per (person,
POI) only the device with the most visits in the window counts (ties: the smallest
``device_id``), and the person (``person_id``, the smallest device id of its devices) is the
unit of the score.
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


PAIR_COLUMNS = ["device_id", "poi_id", "brand", "visits", "dwell_s"]
"""Per (device, POI) visits and dwell sum (s) over a window: what the mean variant reads."""


def pairs_of_visits(visits: pd.DataFrame) -> pd.DataFrame:
    """``PAIR_COLUMNS`` of a window's visits (``device_id``, ``poi_id``, ``brand``, ``dwell_s``;
    branded visits only). ``visits`` counts rows; ``dwell_s`` sums (missing dwell as 0)."""
    branded = visits[visits["brand"].notna()]
    out = (
        branded.groupby(["device_id", "poi_id"], sort=True)
        .agg(brand=("brand", "min"), visits=("brand", "size"), dwell_s=("dwell_s", "sum"))
        .reset_index()
    )
    return out.astype({"visits": np.int64, "dwell_s": np.float64})[PAIR_COLUMNS]


def pairs_of_history(history: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """``PAIR_COLUMNS`` of a ``visit_history`` snapshot over its trailing ``window_days`` (7, 30
    or 90): the branded pairs with a visit in that window."""
    if window_days not in (7, 30, 90):
        raise ValueError(f"visit_history holds 7, 30 and 90-day windows, not {window_days}")
    v, d = f"visits_{window_days}d", f"dwell_{window_days}d_s"
    rows = history[(history[v] > 0) & history["brand"].notna()]
    out = rows[["device_id", "poi_id", "brand", v, d]].rename(columns={v: "visits", d: "dwell_s"})
    out = out.astype({"visits": np.int64, "dwell_s": np.float64})
    return out.sort_values(["device_id", "poi_id"], ignore_index=True)[PAIR_COLUMNS]


def persons(devices: pd.Series, graph: pd.DataFrame | None) -> np.ndarray:
    """Each device's ``person_id`` in ``graph`` (``device_id``, ``person_id``); a device absent
    from it is its own person."""
    ids = devices.astype(object)
    if graph is not None and len(graph):
        mapping = graph.drop_duplicates("device_id").set_index("device_id")["person_id"]
        ids = ids.map(mapping).fillna(ids)
    return ids.to_numpy(dtype=object)


def kept_devices(counts: pd.DataFrame, graph: pd.DataFrame | None) -> pd.DataFrame:
    """Per (person, POI) the device whose visits count (module doc): ``device_id``, ``poi_id``,
    ``person`` from per (device, POI) ``visits`` counts."""
    ranked = counts[["device_id", "poi_id", "visits"]].assign(
        person=persons(counts["device_id"], graph)
    )
    ranked = ranked.sort_values(
        ["person", "poi_id", "visits", "device_id"], ascending=[True, True, False, True]
    )
    return ranked.drop_duplicates(["person", "poi_id"])[["device_id", "poi_id", "person"]]


def dedupe_people(pairs: pd.DataFrame, graph: pd.DataFrame | None) -> pd.DataFrame:
    """Per (device, POI) ``PAIR_COLUMNS`` with persons in place of devices: per (person, POI) the
    row of the device with the most visits (ties: the smallest ``device_id``), its ``device_id``
    replaced by the person's."""
    kept = pairs.merge(kept_devices(pairs, graph), on=["device_id", "poi_id"])
    out = kept.assign(device_id=kept["person"]).drop(columns="person")
    return out.sort_values(["device_id", "poi_id"], ignore_index=True)[list(pairs.columns)]


def people_visits(visits: pd.DataFrame, graph: pd.DataFrame | None) -> pd.DataFrame:
    """A window's branded visits counted by people (median variant): the visits of the device
    ``dedupe_people`` keeps per (person, POI), the person's id as ``device_id``."""
    branded = visits[visits["brand"].notna()]
    counts = branded.groupby(["device_id", "poi_id"]).size().rename("visits").reset_index()
    out = branded.merge(kept_devices(counts, graph), on=["device_id", "poi_id"])
    return out.assign(device_id=out["person"]).drop(columns="person")


def brand_affinity_from_pairs(
    pairs: pd.DataFrame,
    alpha: float = AffinityParams.alpha,
    beta: float = AffinityParams.beta,
    clip: float = AffinityParams.clip,
) -> pd.DataFrame:
    """Affinity per (device, brand) from per (device, POI) ``PAIR_COLUMNS``, the dwell ratio on
    mean dwells (module doc); the same columns and order as ``brand_affinity``."""
    branded = pairs[pairs["brand"].notna()]
    if branded.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in AFFINITY_COLUMNS})
    pair = (
        branded.groupby(["device_id", "brand"], sort=False)
        .agg(visits=("visits", "sum"), dwell_s=("dwell_s", "sum"))
        .reset_index()
    )
    brand = pair.groupby("brand")[["visits", "dwell_s"]].sum()
    p = (brand["visits"] / brand["visits"].sum()).reindex(pair["brand"]).to_numpy()
    brand_mean = (brand["dwell_s"] / brand["visits"]).reindex(pair["brand"]).to_numpy()
    visits = pair["visits"].to_numpy(np.float64)
    n_dev = pair.groupby("device_id")["visits"].transform("sum").to_numpy(np.float64)
    share = (visits + alpha * p) / (n_dev + alpha)
    lift = share / p
    mean = pair["dwell_s"].to_numpy(np.float64) / visits
    ratio = np.clip(mean, 1.0, None) / np.clip(brand_mean, 1.0, None)
    score = np.clip(np.log(lift) + beta * np.log(ratio), -clip, clip)
    out = pair.assign(affinity=score, lift=lift)[AFFINITY_COLUMNS]
    out["visits"] = out["visits"].astype(np.int32)
    return out.sort_values(
        ["brand", "affinity", "device_id"], ascending=[True, False, True], ignore_index=True
    )
