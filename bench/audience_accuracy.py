"""Accuracy of ``audience_estimates`` on the real chain against the generator's truth.

Generates (or reuses) a synthetic lake, runs clean_pings -> stays -> visits -> homes ->
demographics -> audience in-process with the science functions (the same ones the assets
call), and scores each day's estimates against ``truth/poi_visitors``: median and p90 absolute
error % for POIs with >= 30 true panel visitors, bias, and 90% interval coverage. Three
variants: the plain HT on detected visits (``uncorrected``), with the visit-detection
correction (``corrected``, what the asset publishes) and the plain HT on the generator's true
visits (``perfect_visits``, the ceiling)::

    uv run python bench/audience_accuracy.py --devices 2000 --days 7
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = "2024-03-04"


def day_inputs(lake: Any, day: str, pois: Any) -> dict[str, Any]:
    """Clean pings, stays and visits of one day (the assets' science, in-process)."""
    from near_assets.science.cleaning import clean_pings
    from near_assets.science.stays import detect_stays
    from near_assets.science.visits import match_visits

    raw = lake.read_parquet(f"raw/pings/date={day}")
    clean, _ = clean_pings(raw, date.fromisoformat(day))
    stays = detect_stays(clean)
    visits = match_visits(stays, pois)
    return {"clean": clean[["device_id", "ts", "lat", "lon"]], "stays": stays, "visits": visits}


def score_rows(est: pd.DataFrame, truth: pd.DataFrame, min_visitors: int = 30) -> dict:
    from near_assets.science.audience import score_against_truth

    s = score_against_truth(est, truth, min_visitors)
    m = est.merge(truth, on="poi_id")
    big = m[m["panel_visitors"] >= min_visitors]
    err = ((big["estimate"] - big["true_people"]) / big["true_people"]).abs() * 100
    s["p90_abs_pct_error"] = float(err.quantile(0.9)) if len(err) else float("nan")
    return s


def run(lake: Any, days: list[str], history_days: int, verbose: bool = False) -> dict[str, Any]:
    from near_assets.science.audience import daily_ht, detection_rates, project_audience
    from near_assets.science.demographics import device_demographics
    from near_assets.science.home import homes_by_day
    from near_assets.science.visits import PoiIndex

    pois_df = lake.read_parquet("reference/pois")
    pois = PoiIndex(pois_df)
    poi_ids = pois_df["poi_id"].astype(str)
    areas = lake.read_parquet("reference/areas")
    per_day = {d: day_inputs(lake, d, pois) for d in days}
    all_stays = pd.concat([per_day[d]["stays"] for d in days], ignore_index=True)
    homes = homes_by_day(all_stays[["device_id", "start_ts", "end_ts", "lat", "lon"]], days)
    results: dict[str, list[dict]] = {"uncorrected": [], "corrected": [], "perfect_visits": []}
    hist: dict[str, list[pd.DataFrame]] = {k: [] for k in results}
    hist_pairs: dict[str, list[pd.DataFrame]] = {k: [] for k in results}
    rates = []
    for d in days:
        inp = per_day[d]
        demo = device_demographics(homes[homes["date"] == d].drop(columns="date"), areas)
        home_areas = demo[["device_id", "area_id"]]
        active = pd.unique(inp["clean"]["device_id"])
        truth = lake.read_parquet(f"truth/poi_visitors/date={d}")
        tstays = lake.read_parquet(f"truth/stays/date={d}")
        tvis = tstays[tstays["poi_id"].notna()][["device_id", "poi_id"]]
        p, summary = detection_rates(inp["clean"], inp["stays"], inp["visits"])
        rates.append(float(p["p_detect"].mean()))
        if verbose:
            print(d, json.dumps(summary), file=sys.stderr)
        variants = {
            "uncorrected": (inp["visits"], None),
            "corrected": (inp["visits"], p),
            "perfect_visits": (tvis, None),
        }
        for name, (vis, det) in variants.items():
            h = hist[name][-history_days:] if history_days else []
            hp = hist_pairs[name][-history_days:] if history_days else []
            est = project_audience(
                vis,
                home_areas,
                areas,
                pois=poi_ids,
                active_devices=active,
                history=h,
                detection=det,
                history_pairs=hp,
            )
            results[name].append({"day": d, **score_rows(est, truth)})
            per_poi, _, pairs = daily_ht(vis, home_areas, areas, poi_ids, active, detection=det)
            hist[name].append(per_poi)
            hist_pairs[name].append(pairs)
    out: dict[str, Any] = {"mean_detection_rate": round(float(np.mean(rates)), 4)}
    for name, rows in results.items():
        df = pd.DataFrame(rows)
        scored = df.iloc[min(len(df) - 1, 1) :]  # day 1+ (homes need a night or two)
        out[name] = {
            "median_abs_pct_error": round(float(scored["median_abs_pct_error"].mean()), 2),
            "p90_abs_pct_error": round(float(scored["p90_abs_pct_error"].mean()), 2),
            "mean_pct_error": round(float(scored["mean_pct_error"].mean()), 2),
            "interval_coverage": round(float(scored["interval_coverage"].mean()), 3),
            "pois_scored": int(scored["pois_scored"].mean()),
            "per_day": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                for r in rows
            ],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from near_assets.synth import generate
    from resources.lake import LakeResource

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=10_000, help="the generator's default panel")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--history-days", type=int, default=0)
    ap.add_argument("--root", default="/tmp/bench_audience")
    ap.add_argument("--per-day", action="store_true")
    args = ap.parse_args(argv)
    root = Path(args.root) / f"{args.profile}_{args.devices}_{args.days}_{args.seed}"
    lake = LakeResource(root=str(root))
    if not lake.exists("truth/panel.json"):
        t0 = time.perf_counter()
        generate(
            lake,
            seed=args.seed,
            devices=args.devices,
            start=START,
            days=args.days,
            profile=args.profile,
            progress=False,
            timezone="UTC",
        )
        print(f"generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    days = [str(d.date()) for d in pd.date_range(START, periods=args.days)]
    t0 = time.perf_counter()
    out = run(lake, days, args.history_days, args.per_day)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if not args.per_day:
        for v in out.values():
            if isinstance(v, dict):
                v.pop("per_day", None)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
