"""PlaceMatrix against the generator's true POI footprints (``near-synth --footprints``).

Generates a lake with true footprints (or reuses one), detects stay points per day
(``science.stays`` on the raw pings; no dirt), refines the POI boundaries from the stays of
every day but the last ``--score-days`` (``science.placematrix.refine_boundaries``) and prints:

- the median IoU with the true footprint of the delivered and of the refined polygons (overall
  and per kind of delivered error), and the share of POIs refined;
- visit precision / recall / F1 on the last ``--score-days`` days (scored like the
  ``visits_accuracy`` check: ``science.accuracy.visit_accuracy`` against ``truth/stays``) with
  the delivered and with the refined polygons.

    nice -n 10 uv run python bench/models_placematrix.py --seed 23 --devices 4000 --days 21
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from near_assets.science import accuracy, placematrix
from near_assets.science.stays import detect_stays, to_utc
from near_assets.science.visits import match_visits
from near_assets.synth import generate
from resources.lake import LakeResource

START = "2024-03-04"


def stays_of(lake: LakeResource, root: str, days: list[str]) -> tuple[pd.DataFrame, float]:
    """Stay points of ``days`` (cached under the lake folder: detection is the slow part)."""
    cache = os.path.join(root, "bench_stays.parquet")
    if os.path.exists(cache):
        stays = pd.read_parquet(cache)
        if set(days) <= set(stays["day"].unique()):
            return stays[stays["day"].isin(days)].reset_index(drop=True), 0.0
    t0, frames = time.perf_counter(), []
    for d in days:
        raw = lake.read_parquet(f"raw/pings/date={d}")
        raw["ts"] = to_utc(raw["ts"])
        found = detect_stays(raw.dropna(subset=["device_id", "ts", "lat", "lon"]))
        frames.append(found.assign(day=d))
    stays = pd.concat(frames, ignore_index=True)
    stays.to_parquet(cache)
    return stays, time.perf_counter() - t0


def f1(p: float | None, r: float | None) -> float | None:
    return None if not p or not r else round(2 * p * r / (p + r), 4)


def visit_scores(
    lake: LakeResource, stays: pd.DataFrame, pois: pd.DataFrame, days: list[str]
) -> dict[str, float | None]:
    precision, recall = [], []
    for d in days:
        day_stays = stays[stays["day"] == d]
        visits = match_visits(day_stays, pois)
        truth = lake.read_parquet(f"truth/stays/date={d}")
        pings = lake.read_parquet(f"raw/pings/date={d}", columns=["device_id", "ts"])
        pings["ts"] = to_utc(pings["ts"])
        acc = accuracy.visit_accuracy(visits, truth, d, 300.0, pings)
        precision.append(acc["visit_precision"])
        recall.append(acc["visit_recall"])
    p, r = float(np.mean(precision)), float(np.mean(recall))
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": f1(p, r)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--devices", type=int, default=4000)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--score-days", type=int, default=7)
    ap.add_argument("--root", default=None, help="lake folder (generated when missing)")
    ap.add_argument("--param", action="append", default=[], help="PlaceMatrixParams k=v")
    args = ap.parse_args()
    root = args.root or f"/tmp/placematrix_bench/seed{args.seed}_{args.devices}_{args.days}"
    lake = LakeResource(root=root)
    days = [str(d.date()) for d in pd.date_range(START, periods=args.days)]
    gen_s = 0.0
    if not os.path.exists(os.path.join(root, "truth", "poi_footprints")):
        t0 = time.perf_counter()
        generate(
            lake,
            seed=args.seed,
            devices=args.devices,
            start=START,
            days=args.days,
            dirt=False,
            campaigns=0,
            progress=False,
            footprints=True,
        )
        gen_s = time.perf_counter() - t0
    stays, stays_s = stays_of(lake, root, days)
    train, score = days[: -args.score_days], days[-args.score_days :]
    params = placematrix.PlaceMatrixParams()
    for kv in args.param:
        k, v = kv.split("=")
        params = replace(params, **{k: type(getattr(params, k))(v)})
    pois = lake.read_parquet("reference/pois")
    truth = lake.read_parquet("truth/poi_footprints")

    t0 = time.perf_counter()
    refined = placematrix.refine_boundaries(stays[stays["day"].isin(train)], pois, params)
    refine_s = time.perf_counter() - t0

    kinds = truth[["poi_id", "kind"]]
    iou_d = placematrix.boundary_iou(pois, truth).merge(kinds, on="poi_id")
    iou_r = placematrix.boundary_iou(refined, truth).merge(kinds, on="poi_id")
    src = refined.set_index("poi_id")["source"]
    per_kind = {
        k: {
            "pois": int((iou_d["kind"] == k).sum()),
            "delivered": round(float(iou_d.loc[iou_d["kind"] == k, "iou"].median()), 3),
            "refined": round(float(iou_r.loc[iou_r["kind"] == k, "iou"].median()), 3),
            "refined_share": round(
                float((src[iou_r.loc[iou_r["kind"] == k, "poi_id"]] == "placematrix").mean()), 3
            ),
        }
        for k in sorted(kinds["kind"].unique())
    }
    out = {
        "seed": args.seed,
        "devices": args.devices,
        "days": args.days,
        "train_days": len(train),
        "score_days": len(score),
        "params": params.as_dict(),
        "stays_train": int(stays["day"].isin(train).sum()),
        "pois": len(pois),
        "refined_share": round(float((refined["source"] == "placematrix").mean()), 3),
        "median_iou_delivered": round(float(iou_d["iou"].median()), 4),
        "median_iou_refined": round(float(iou_r["iou"].median()), 4),
        "iou_per_kind": per_kind,
        "visits_delivered": visit_scores(lake, stays, pois, score),
        "visits_refined": visit_scores(
            lake, stays, placematrix.with_boundaries(pois, refined), score
        ),
        "seconds": {
            "generate": round(gen_s, 1),
            "stays": round(stays_s, 1),
            "refine": round(refine_s, 2),
        },
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
