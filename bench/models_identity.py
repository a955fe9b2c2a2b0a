"""Cross identity against the generator's people and households (``near-synth --people``).

Generates a lake (or reuses one), detects stay points per day (``science.stays``), links devices
over the whole window (``science.identity.link_devices``) and prints pairwise precision/recall
at the household and person level, the edge kinds, a ``min_score`` sweep, and the effect on
audience counts: distinct POI visitors per day counted as devices, as predicted people and as
true people (POI visits from ``truth/stays``).

    nice -n 10 uv run python bench/models_identity.py --seed 23 --devices 2000 --days 7
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import pandas as pd

from near_assets.science import identity
from near_assets.science.stays import detect_stays, to_utc
from near_assets.synth import generate
from resources.lake import LakeResource

START = "2024-03-04"


def stays_of(lake: LakeResource, days: list[str]) -> pd.DataFrame:
    frames = []
    for d in days:
        raw = lake.read_parquet(f"raw/pings/date={d}")
        raw["ts"] = to_utc(raw["ts"])
        frames.append(detect_stays(raw.dropna(subset=["device_id", "ts", "lat", "lon"])))
    return pd.concat(frames, ignore_index=True)


def audience_effect(lake: LakeResource, days: list[str], graph: pd.DataFrame) -> dict:
    truth = lake.read_parquet("truth/identity").astype({"device_id": str})
    visits = pd.concat(
        [lake.read_parquet(f"truth/stays/date={d}").assign(day=d) for d in days], ignore_index=True
    ).dropna(subset=["poi_id"])
    visits = visits.astype({"device_id": str}).merge(
        graph[["device_id", "person_id"]].astype(str), on="device_id"
    )
    visits = visits.merge(
        truth[["device_id", "person_id"]].astype(str), on="device_id", suffixes=("", "_true")
    )
    per = visits.groupby(["day", "poi_id"]).agg(
        devices=("device_id", "nunique"),
        people=("person_id", "nunique"),
        people_true=("person_id_true", "nunique"),
    )
    tot = per.sum()
    return {
        "poi_day_visitors_devices": int(tot["devices"]),
        "poi_day_visitors_people_predicted": int(tot["people"]),
        "poi_day_visitors_people_true": int(tot["people_true"]),
        "overcount_devices_vs_true": round(tot["devices"] / tot["people_true"] - 1, 4),
        "overcount_predicted_vs_true": round(tot["people"] / tot["people_true"] - 1, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--root", default=None, help="lake folder (generated when missing)")
    args = ap.parse_args()
    root = args.root or f"/tmp/identity_bench/seed{args.seed}_{args.devices}_{args.days}"
    lake = LakeResource(root=root)
    days = [str(d.date()) for d in pd.date_range(START, periods=args.days)]
    if not os.path.exists(os.path.join(root, "truth", "identity")):
        generate(
            lake,
            seed=args.seed,
            devices=args.devices,
            start=START,
            days=args.days,
            dirt=False,
            progress=False,
            people=True,
        )
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    t0 = time.perf_counter()
    stays = stays_of(lake, days)
    t_stays = time.perf_counter() - t0
    truth = lake.read_parquet("truth/identity")
    t0 = time.perf_counter()
    graph, edges = identity.link_devices(stays)
    t_link = time.perf_counter() - t0
    out = {
        "seed": args.seed,
        "devices": args.devices,
        "days": args.days,
        "stays": len(stays),
        "load_avg": load,
        "stays_s": round(t_stays, 2),
        "link_s": round(t_link, 2),
        "edges": edges["kind"].value_counts().to_dict(),
        "household": identity.pairwise_accuracy(graph, truth, "household_id"),
        "person": identity.pairwise_accuracy(graph, truth, "person_id"),
        "max_household_devices": int(graph.groupby("household_id").size().max()),
    }
    sweep = {}
    for s in (0.3, 0.5, 0.7, 0.85):
        p = replace(identity.IdentityParams(), min_score=s)
        g, _ = identity.link_devices(stays, params=p)
        sweep[s] = identity.pairwise_accuracy(g, truth, "household_id")
    out["household_by_min_score"] = sweep
    out["audience"] = audience_effect(lake, days, graph)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
