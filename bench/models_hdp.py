"""High-density points: detection precision/recall and genuine visit pings removed (issue 16).

Generates a lake with planted HDPs (``near-synth --hdp``: cell towers, IP centroids, SDK
defaults, half of them beside the busiest POIs, genuine coordinates rounded per device SDK),
then per day: cleans the raw pings of every other dirt, scores the dense cells, maintains the
list (``near_assets.science.hdp``) and applies the list of the day before to the day's pings,
as ``clean_pings`` would. Prints, for the last day's list and over the days:

- precision: listed cells within 15 m of a planted HDP (the dirt's legacy towers included);
- recall: planted HDPs active on >= min_days days of the window that are listed, per kind;
- planted pings removed, and genuine visit pings removed (pings of a device inside one of its
  true POI stays, not planted) -- beside the fixed 50-device rule for comparison.

    uv run python bench/models_hdp.py --devices 4000 --days 7
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from near_assets.science import hdp
from near_assets.science.cleaning import clean_pings
from near_assets.synth import generate
from resources.lake import LakeResource


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--lake", help="existing lake generated with --hdp (default: generate one)")
    args = ap.parse_args()
    params = hdp.HdpParams()
    root = args.lake or str(Path(tempfile.mkdtemp(prefix="bench-hdp-")) / "lake")
    lake = LakeResource(root=root)
    if not args.lake:
        t0 = time.perf_counter()
        generate(
            lake,
            seed=args.seed,
            devices=args.devices,
            start="2024-05-06",
            days=args.days,
            progress=False,
            hdp=True,
        )
        print(
            f"generated {args.devices} devices x {args.days} days in "
            f"{time.perf_counter() - t0:.1f} s -> {root}"
        )
    planted = lake.read_parquet("truth/hdp")
    towers = np.array(lake.read_json("truth/panel.json")["high_density_points"])
    everything = hdp.planted_points(planted, towers)
    days = sorted(v.split("=", 1)[1] for v in lake.list_dirs("raw/pings"))
    cells, rows, listed_prev, active = [], [], None, {}
    for d in days:
        raw = lake.read_parquet(f"raw/pings/date={d}")
        pings, _ = clean_pings(raw, date.fromisoformat(d), hdp_min_devices=10**9)
        t0 = time.perf_counter()
        c = hdp.day_cells(pings, params)
        t_cells = time.perf_counter() - t0
        cells.append(c.assign(date=d))
        window = [x for x in days if x <= d][-params.window_days :]
        all_cells = pd.concat(cells, ignore_index=True)
        all_cells = all_cells[all_cells["date"].isin(window)]
        listed = hdp.maintain_list(all_cells, d, params)

        truth_rows = lake.read_parquet(f"truth/hdp_pings/date={d}")
        for h in truth_rows["hdp_id"].unique():
            active.setdefault(h, set()).add(d)
        stays = lake.read_parquet(f"truth/stays/date={d}")
        is_planted, genuine, visit = hdp.ping_classes(pings, truth_rows, stays, towers)
        fixed, _ = clean_pings(raw, date.fromisoformat(d))  # the 50-device rule
        fixed_kept = pd.MultiIndex.from_frame(fixed[["device_id", "ts", "lat"]])
        fixed_removed = ~pd.MultiIndex.from_frame(pings[["device_id", "ts", "lat"]]).isin(
            fixed_kept
        )
        row = {
            "date": d,
            "pings": len(pings),
            "dense_cells": len(c),
            "flagged": int(c["flagged"].sum()),
            "listed": len(listed),
            "day_cells_s": round(t_cells, 3),
        }
        if listed_prev is not None:  # clean_pings of day D applies the list of D-1
            removed = hdp.on_hdp(pings["lat"], pings["lon"], listed_prev, params.cell_deg)
            row |= hdp.removal_shares(removed, is_planted, genuine, visit)
        row |= {
            "fixed_rule_planted_removed": round(float(fixed_removed[is_planted].mean()), 4),
            "fixed_rule_genuine_visit_removed": round(float(fixed_removed[visit].mean()), 5),
        }
        rows.append(row)
        listed_prev = listed

    score = hdp.score_list(
        listed_prev, everything, active, days[-params.window_days :], params.min_days
    )
    summary = {
        "devices": args.devices,
        "days": len(days),
        "params": params.as_dict(),
        **score,
        "genuine_visit_pings_removed_mean": round(
            float(np.mean([r["genuine_visit_pings_removed"] for r in rows[1:]])), 5
        ),
        "planted_pings_removed_mean": round(
            float(np.mean([r["planted_pings_removed"] for r in rows[1:]])), 4
        ),
        "fixed_rule_planted_removed_mean": round(
            float(np.mean([r["fixed_rule_planted_removed"] for r in rows])), 4
        ),
        "loadavg": loadavg() if os.path.exists("/proc/loadavg") else None,
    }
    print(pd.DataFrame(rows).to_string(index=False))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
