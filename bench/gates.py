"""Benchmark: false blocks and catches of the calendar-aware baseline (``publishing.baselines``).

    uv run python bench/gates.py [--seeds 200] [--noise 0.03]

Generates 4 weeks (28 days, from a Monday) of a daily gated metric (e.g. an audience's panel
visitors): weekends x1.6, 2 % weekly panel growth, a public holiday (a Thursday at Sunday
level), multiplicative day-to-day noise (log-normal, ``--noise``). The days are "published" one
after the other, each audited against the days published before it (the first days have no
history: not enforced). Counts per seed, then in total:

- normal days: passed / WARN / blocked (false blocks), with the holiday calendar known
  (``PLATFORM_HOLIDAYS``) and unknown, and the same for the old flat band
  (``publishing.wap.value_band``: 0.6-1.6x the median of the 7 trailing days);
- planted breakages on each day from the second week on (the breakage replaces that day's value;
  history stays normal): half the devices (x0.5), a duplicated upload (x2), a lost city of POIs
  (x0.7), a unit change (x1000), an emptied day (0), a moderate shift (x1.3): blocked / WARN /
  missed.

Prints one JSON object with the figures and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from publishing.baselines import DayValue, calendar_band
from publishing.wap import value_band

MONDAY = date(2024, 3, 4)
DAYS = 28
HOLIDAY = MONDAY + timedelta(days=17)  # a Thursday
BREAKAGES = {
    "half_devices": 0.5,
    "duplicated_upload": 2.0,
    "lost_city_of_pois": 0.7,
    "unit_change": 1000.0,
    "emptied_day": 0.0,
    "moderate_shift": 1.3,
}


def generate(rng: np.random.Generator, noise: float, level: float = 3340.0) -> list[DayValue]:
    out = []
    for i in range(DAYS):
        d = MONDAY + timedelta(days=i)
        weekend = d.weekday() >= 5 or d == HOLIDAY
        value = level * (1.6 if weekend else 1.0) * 1.02 ** (i / 7) * np.exp(rng.normal(0, noise))
        out.append(DayValue(d.isoformat(), float(round(value))))
    return out


def outcome(audit) -> str:
    if not audit.passed:
        return "block"
    return "warn" if audit.figures.get("severity") == "WARN" else "pass"


def frame(value: float) -> pd.DataFrame:
    return pd.DataFrame({"v": [value]})


def calendar(history, day, holidays):
    return calendar_band("b", "b", lambda df: df["v"].sum(), history, day, holidays=holidays)


def flat(history, day, holidays):
    trailing = [p.value for p in history if p.day and p.day >= _minus(day, 7)]
    return value_band("b", "b", lambda df: df["v"].sum(), trailing, 0.6, 1.6)


def _minus(day: str, n: int) -> str:
    return (date.fromisoformat(day) - timedelta(days=n)).isoformat()


def run(seeds: int, noise: float) -> dict:
    gates = {
        "calendar_with_holidays": (calendar, {HOLIDAY.isoformat()}),
        "calendar_without_holidays": (calendar, set()),
        "flat_band_0.6_1.6": (flat, set()),
    }
    normal = {g: {"pass": 0, "warn": 0, "block": 0, "not_enforced": 0} for g in gates}
    blocked_days = {g: {} for g in gates}
    planted = {g: {b: {"block": 0, "warn": 0, "pass": 0} for b in BREAKAGES} for g in gates}
    for seed in range(seeds):
        series = generate(np.random.default_rng(seed), noise)
        for i, today in enumerate(series):
            history = series[:i]
            for g, (factory, holidays) in gates.items():
                audit = factory(history, today.day, holidays)(frame(today.value))
                result = outcome(audit)
                if "not enforced" in audit.detail:
                    normal[g]["not_enforced"] += 1
                normal[g][result] += 1
                if result == "block":
                    blocked_days[g][today.day] = blocked_days[g].get(today.day, 0) + 1
                if i < 7:
                    continue
                for b, factor in BREAKAGES.items():
                    broken = factory(history, today.day, holidays)(frame(today.value * factor))
                    planted[g][b][outcome(broken)] += 1
    return {
        "seeds": seeds,
        "days_per_seed": DAYS,
        "noise_sigma": noise,
        "holiday": HOLIDAY.isoformat(),
        "normal_days": normal,
        "false_block_rate": {g: round(n["block"] / (seeds * DAYS), 4) for g, n in normal.items()},
        "blocked_normal_days": {g: dict(sorted(d.items())) for g, d in blocked_days.items()},
        "planted_days_per_breakage": seeds * (DAYS - 7),
        "planted": planted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.03)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.time()
    figures = run(args.seeds, args.noise)
    figures["seconds"] = round(time.time() - t0, 2)
    figures["load_average_before"] = [round(x, 2) for x in load_before]
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
