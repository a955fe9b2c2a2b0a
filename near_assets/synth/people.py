"""People with several devices and households (option ``people``): the cross-identity truth.

Consecutive panel devices are grouped into people of 1-3 devices (never across a simulation
block of ``CHUNK_DEVICES``) and consecutive people into households of 1-4 people. A household
shares one home (the first member's home point, so its devices sleep at the same place); a
person's extra devices (tablet, work phone) copy the stays of the person's first device every day
(same places, same times) but keep their own observation days, ping rates and noise. Members of
one household keep their own work places and day routines. Truth: ``truth/identity``
(device_id, person_id, household_id, devices_in_person). Draws use the key 620, so the other
options' output is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from near_assets.synth.mobility import DayStays
from near_assets.synth.panel import Panel

DEVICES_P = (0.55, 0.30, 0.15)
"""P(a person carries 1, 2, 3 panel devices)."""
PEOPLE_P = (0.35, 0.30, 0.20, 0.15)
"""P(a household holds 1, 2, 3, 4 panel people)."""


@dataclass
class PeoplePlan:
    primary: np.ndarray
    """Per device: the index of its person's first device (itself for a first device)."""
    table: pd.DataFrame
    """``truth/identity``: device_id, person_id, household_id, devices_in_person."""


def plan_people(seed: int, n: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per device: person index and household index (consecutive devices, people in blocks)."""
    rng = np.random.default_rng([seed, 620])
    person = np.empty(n, dtype=np.int64)
    i = p = 0
    while i < n:
        k = int(rng.choice(3, p=DEVICES_P)) + 1
        k = min(k, n - i, block - i % block)
        person[i : i + k] = p
        i, p = i + k, p + 1
    sizes = rng.choice(4, size=p, p=PEOPLE_P) + 1
    household_of_person = np.repeat(np.arange(p), sizes)[:p]
    return person, household_of_person[person]


def apply_people(seed: int, panel: Panel, block: int) -> tuple[Panel, PeoplePlan]:
    """The panel with shared homes and people's devices aligned, and the plan."""
    n = panel.n
    person, household = plan_people(seed, n, block)
    idx = np.arange(n)
    first_of_person = np.r_[True, person[1:] != person[:-1]]
    primary = np.maximum.accumulate(np.where(first_of_person, idx, 0))
    first_of_household = np.r_[True, household[1:] != household[:-1]]
    head = np.maximum.accumulate(np.where(first_of_household, idx, 0))
    home_area = panel.home_area[head]
    out = replace(
        panel,
        home_xy=panel.home_xy[head].copy(),
        home_area=home_area,
        work_xy=panel.work_xy[primary].copy(),
        night_shift=panel.night_shift[primary].copy(),
        speed_mps=panel.speed_mps[primary].copy(),
        area_devices=np.bincount(home_area, minlength=len(panel.area_devices)),
    )
    if panel.away_xy is not None and panel.sleeps_away is not None:
        out.away_xy = panel.away_xy[head].copy()
        out.sleeps_away = panel.sleeps_away[head].copy()
    ids = panel.device_ids.astype(str)
    counts = np.bincount(person)
    table = pd.DataFrame(
        {
            "device_id": ids,
            "person_id": pd.array(ids[primary], dtype="string"),
            "household_id": pd.array(ids[head], dtype="string"),
            "devices_in_person": counts[person].astype(np.int64),
        }
    )
    table["device_id"] = table["device_id"].astype("string")
    return out, PeoplePlan(primary=primary, table=table)


def share_stays(stays: DayStays, primary: np.ndarray) -> DayStays:
    """A block's stays where every device takes its person's first device's stays.

    ``primary`` is indexed by the block's local device index (values local too).
    """
    own = primary[stays.dev] == stays.dev
    base = {f: getattr(stays, f)[own] for f in DayStays.__dataclass_fields__}
    local = np.arange(len(primary))
    extra = local[primary != local]
    # every extra device repeats the rows of its primary
    order = np.argsort(base["dev"], kind="stable")
    sorted_dev = base["dev"][order]
    lo = np.searchsorted(sorted_dev, primary[extra], side="left")
    hi = np.searchsorted(sorted_dev, primary[extra], side="right")
    n_rows = hi - lo
    rows = order[
        np.repeat(lo, n_rows)
        + (np.arange(n_rows.sum()) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows))
    ]
    cols = {f: np.r_[v, v[rows]] for f, v in base.items()}
    cols["dev"] = np.r_[base["dev"], np.repeat(extra, n_rows)].astype(base["dev"].dtype)
    sort = np.lexsort((cols["start"], cols["dev"]))
    return DayStays(**{f: v[sort] for f, v in cols.items()})
