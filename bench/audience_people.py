"""Audience estimates and brand affinity counting people instead of devices (``--people`` lake).

Generates a lake whose devices are grouped into people of 1-3 devices (``near-synth --people``),
runs the upstream science in-process (cleaning, stays, visits, homes, demographics), links
devices over the window (``science.identity.link_devices``, H3's model) and, for the last day,
prints the audience estimates (``near_assets.audience.estimate_day``) and the brand affinity of
the window (``near_assets.profiles.affinity_of_window``) counted as devices, as people of the
predicted graph and as people of the generator's truth: distinct visitors, projected people,
devices per person, affinity rows.

    nice -n 10 uv run python bench/audience_people.py --devices 2000 --days 7 --seed 47
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

from near_assets.audience import AudienceConfig, estimate_day
from near_assets.profiles import AffinityConfig, affinity_of_window
from near_assets.science import identity
from near_assets.science.cleaning import clean_pings
from near_assets.science.demographics import device_demographics
from near_assets.science.home import homes_by_day
from near_assets.science.stays import detect_stays
from near_assets.science.visits import PoiIndex, match_visits
from near_assets.synth import generate
from near_assets.tables import CLEAN_PINGS, DEMOGRAPHICS, IDENTITY_GRAPH, STAY_POINTS, VISITS
from resources.lake import LakeResource

START = "2024-03-04"


def build(lake: LakeResource, devices: int, days: int, seed: int) -> tuple[list[str], pd.DataFrame]:
    """The lake's upstream tables (in-process science) and the window's stay points."""
    summary = generate(
        lake, seed=seed, devices=devices, start=START, days=days, progress=False,
        timezone="UTC", people=True, dirt=False,
    )  # fmt: skip
    dates = sorted(summary["per_day"])
    index = PoiIndex(lake.read_parquet("reference/pois"))
    areas = lake.read_parquet("reference/areas")
    all_stays = []
    for day in dates:
        clean, _ = clean_pings(lake.read_parquet(f"raw/pings/date={day}"), date.fromisoformat(day))
        stays = detect_stays(clean)
        lake.write_parquet(clean, CLEAN_PINGS.key(day))
        lake.write_parquet(stays, STAY_POINTS.key(day))
        lake.write_parquet(match_visits(stays, index), VISITS.key(day))
        homes = homes_by_day(stays, [day]).drop(columns="date")
        lake.write_parquet(device_demographics(homes, areas), DEMOGRAPHICS.key(day))
        all_stays.append(stays)
    return dates, pd.concat(all_stays, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=47)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audience-people-") as tmp:
        truth_lake = LakeResource(root=os.path.join(tmp, "lake"))
        dates, stays = build(truth_lake, args.devices, args.days, args.seed)
        day = dates[-1]
        t0 = time.perf_counter()
        graph, _ = identity.link_devices(stays, None, "UTC")
        link_s = time.perf_counter() - t0
        truth = truth_lake.read_parquet("truth/identity")
        areas = truth_lake.read_parquet("reference/areas")[["area_id", "population"]]
        pois = truth_lake.read_parquet("reference/pois")["poi_id"].astype(str)
        window = pd.concat(
            [truth_lake.read_parquet(VISITS.key(d)) for d in dates], ignore_index=True
        )
        out: dict[str, dict] = {}
        for name, table in [("devices", None), ("people_predicted", graph), ("people_true", truth)]:
            for d in dates:  # the graph each day uses (the same one: the bench's window)
                truth_lake.delete(IDENTITY_GRAPH.key(d))
                if table is not None:
                    truth_lake.write_parquet(
                        table[["device_id", "person_id"]], IDENTITY_GRAPH.key(d)
                    )
            count = "devices" if table is None else "people"
            _, meta = estimate_day(truth_lake, day, AudienceConfig(count=count), areas, pois)
            aff, scored = affinity_of_window(window, AffinityConfig(count=count), table)
            out[name] = {
                "panel_visitors": meta["panel_visitors"],
                "projected_people": meta["projected_people"],
                "devices_per_person": meta.get("devices_per_person"),
                "active": meta.get("active_people", meta.get("active_devices")),
                "affinity_rows": len(aff),
                "affinity_units": int(aff["device_id"].nunique()),
                "affinity_devices_scored": scored,
            }
    print(json.dumps({
        "devices": args.devices, "days": args.days, "seed": args.seed, "day": day,
        "graph_devices_linked": int((graph["confidence"] > 0).sum()),
        "graph_people": int(graph["person_id"].nunique()),
        "true_people": int(truth["person_id"].nunique()),
        "link_s": round(link_s, 1), "total_s": round(time.perf_counter() - started, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3], **out,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
