"""Home location (and stays) accuracy per generator profile, and the confidence calibration fit.

Each profile is simulated in memory with the generator (``build_world`` + ``simulate_day``,
dirt included), every day's pings go through the very science the assets run
(``clean_pings`` -> ``detect_stays``), and the homes as of the last day (the whole window)
come from ``infer_homes`` (stays + the window's clean pings, or stays only with
``--stays-only``). No lake, no Dagster. Scored against the generator's truth:

- home **precision** (share of published homes within 200 m of the true home), **coverage**
  (published homes / devices with stays in the window, as the ``home_location_accuracy``
  check counts them; ``coverage_pinged``: / devices with any clean ping), the best precision
  at >= 60 % coverage when cutting on ``confidence``, and **calibration**: per confidence
  decile (0-0.1, ..., 0.9-1) the share within 200 m against the mean confidence;
- the same per stratum: stationary ping rate, observed days, night shift, away sleepers and the
  method chosen;
- stays and visits precision / recall over the window (``accuracy.stay_accuracy``,
  ``accuracy.visit_accuracy``: recall over true stays the pings could reveal).

``real_holdout`` is never used by ``--fit`` and is reported on its own against the targets of
issue 13. ``--fit`` refits ``near_assets/science/home_calibration.json`` (logistic score + isotonic
map per method, on every other profile, stays+pings and stays-only evidence, windows as of the
3rd and the last day)::

    uv run python bench/home_accuracy.py                     # all profiles, 2,000 devices each
    uv run python bench/home_accuracy.py --profiles real_holdout --devices 4000
    uv run python bench/home_accuracy.py --fit --devices 3000   # refit the table, then report

Simulations are cached under ``--cache`` (default ``/tmp/home_accuracy_cache``) by
(profile, devices, seed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from near_assets.science import accuracy  # noqa: E402
from near_assets.science import home as home_model  # noqa: E402
from near_assets.synth.panel import FIT_PROFILES, HOLDOUT_PROFILE, PROFILES  # noqa: E402

START = "2026-03-02"  # a Monday
DAYS = 7
WITHIN_M = 200.0
FIT_SEEDS = (101, 102, 103)
EVAL_SEED = 7
TARGETS = {
    "precision": 0.92,
    "coverage": 0.95,
    "precision_at_60pct": 0.98,
    "calibration_gap": 0.10,
    "calibration_min_homes": 50,
    "stay_precision": 0.95,
}
RATE_BINS = [0.0, 1.0, 2.0, 4.0, 8.0, np.inf]
RATE_LABELS = ["<=1/h", "1-2/h", "2-4/h", "4-8/h", ">8/h"]


@dataclass
class Sample:
    """One simulated panel after cleaning and stay detection, with its truth."""

    profile: str
    seed: int
    timezone: str
    days: list[str]
    pings: pd.DataFrame  # clean pings: device_id, ts, lat, lon
    stays: pd.DataFrame  # detected stays
    truth_stays: pd.DataFrame
    truth_homes: pd.DataFrame
    pois: pd.DataFrame


def profile_tz(profile: str) -> str:
    return PROFILES[profile].timezone or "UTC"


def simulate(profile: str, devices: int, seed: int, cache: Path | None) -> Sample:
    """Generate, clean and detect stays for ``DAYS`` days (cached as parquet)."""
    import pyarrow as pa

    from near_assets.science.cleaning import clean_pings
    from near_assets.science.stays import detect_stays
    from near_assets.synth.dirt import DEFAULT_DIRT_SHARE
    from near_assets.synth.generator import build_world, pings_tables, simulate_day, truth_homes

    tz = profile_tz(profile)
    days = [(date.fromisoformat(START) + timedelta(days=i)).isoformat() for i in range(DAYS)]
    folder = cache / f"{profile}_{devices}_{seed}" if cache else None
    names = ("pings", "stays", "truth_stays", "truth_homes", "pois")
    if folder and all((folder / f"{n}.parquet").exists() for n in names):
        frames = {n: pd.read_parquet(folder / f"{n}.parquet") for n in names}
        return Sample(profile, seed, tz, days, **frames)
    world = build_world(seed, devices, START, DAYS, profile, 0, tz, audience=False)
    pings, stays, tstays = [], [], []
    for i, day in enumerate(world.dates()):
        res = simulate_day(world, i, DEFAULT_DIRT_SHARE)
        raw = pa.concat_tables(pings_tables(world, day, res.pings)).to_pandas()
        clean, _ = clean_pings(raw, day)
        clean = clean[["device_id", "ts", "lat", "lon"]]
        pings.append(clean)
        stays.append(detect_stays(clean))
        tstays.append(res.stays)
    frames = {
        "pings": pd.concat(pings, ignore_index=True),
        "stays": pd.concat(stays, ignore_index=True),
        "truth_stays": pd.concat(tstays, ignore_index=True),
        "truth_homes": truth_homes(world),
        "pois": world.city.pois,
    }
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        for n, df in frames.items():
            df.to_parquet(folder / f"{n}.parquet")
    return Sample(profile, seed, tz, days, **frames)


def window(sample: Sample, as_of: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stays and pings of the window ending with day index ``as_of`` (from the first day)."""
    end = pd.Timestamp(sample.days[as_of], tz="UTC") + pd.Timedelta(days=1)
    stays = sample.stays[sample.stays["start_ts"] < end]
    pings = sample.pings[sample.pings["ts"] < end]
    return stays, pings


def labelled(
    sample: Sample, frame: pd.DataFrame, stays: pd.DataFrame, pings: pd.DataFrame
) -> pd.DataFrame:
    """Per device with evidence in the window: the home found (if any), whether it is within
    200 m, and the truth strata."""
    truth = sample.truth_homes.set_index("device_id")
    devices = pd.Index(pd.unique(pings["device_id"])).union(pd.unique(stays["device_id"]))
    out = truth.loc[devices].rename_axis("device_id").reset_index()
    out["has_stays"] = out["device_id"].isin(pd.unique(stays["device_id"]))
    found = frame.set_index("device_id")
    out = out.join(found, on="device_id")
    err = accuracy.haversine_m(out["lat"], out["lon"], out["home_lat"], out["home_lon"])
    out["error_m"] = np.where(out["lat"].notna(), err, np.nan)
    out["correct"] = out["error_m"] <= WITHIN_M
    out["rate_bin"] = pd.cut(out["ping_rate_h"], RATE_BINS, labels=RATE_LABELS, right=True)
    out["method"] = out["method"].fillna("none")
    return out


def scored(
    sample: Sample, with_pings: bool, as_of: int | None = None, ping_hours: bool = False
) -> pd.DataFrame:
    """Every device of the window with its calibrated home (confidence 0 = no candidate).

    ``ping_hours``: pass the pings reduced by ``home.ping_hours`` (what ``home_location`` reads
    from ``home_ping_hours``) instead of the clean pings."""
    stays, pings = window(sample, DAYS - 1 if as_of is None else as_of)
    evidence = home_model.ping_hours(pings) if ping_hours and with_pings else pings
    homes = home_model.infer_homes(
        stays, timezone=sample.timezone, pings=evidence if with_pings else None, min_confidence=0.0
    )
    out = labelled(sample, homes, stays, pings)
    out["confidence"] = out["confidence"].fillna(0.0)
    return out


def summary(df: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Precision, coverage, best precision at >= 60 % coverage, over ``df`` (devices)."""
    eligible = df[df["has_stays"]]
    pub = eligible[eligible["confidence"] >= threshold]
    pub_all = df[df["confidence"] >= threshold]
    out: dict[str, Any] = {
        "devices": len(eligible),
        "homes": len(pub),
        "precision": _r(pub["correct"].mean()) if len(pub) else None,
        "coverage": _r(len(pub) / len(eligible)) if len(eligible) else None,
        "coverage_pinged": _r(len(pub_all) / len(df)) if len(df) else None,
        "mean_confidence": _r(pub["confidence"].mean()) if len(pub) else None,
    }
    cand = eligible[eligible["confidence"] > 0].sort_values("confidence", ascending=False)
    if len(cand) and len(eligible):
        prec = np.cumsum(cand["correct"].to_numpy()) / np.arange(1, len(cand) + 1)
        need = int(np.ceil(0.6 * len(eligible)))
        out["precision_at_60pct"] = _r(prec[need - 1]) if need <= len(cand) else None
    return out


def _r(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else round(float(x), 4)


def reliability(df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    pub = df[df["has_stays"] & (df["confidence"] >= threshold)]
    return accuracy.reliability_table(pub["confidence"], pub["correct"])


def calibration_ok(rel: pd.DataFrame) -> bool:
    big = rel[rel["homes"] >= TARGETS["calibration_min_homes"]]
    return bool((big["gap"].abs() <= TARGETS["calibration_gap"]).all())


def stays_figures(sample: Sample) -> dict[str, Any]:
    """Stays and visits precision / recall over the window (observable truth)."""
    from near_assets.science.visits import match_visits

    acc = accuracy.stay_accuracy(sample.stays, sample.truth_stays, pings=sample.pings)
    visits = match_visits(sample.stays, sample.pois)
    vis = accuracy.visit_accuracy(visits, sample.truth_stays, pings=sample.pings)
    return {
        "stay_precision": acc["stay_precision"],
        "stay_recall": acc["stay_recall"],
        "visit_precision": vis["visit_precision"],
        "visit_recall": vis["visit_recall"],
    }


def strata(df: pd.DataFrame, threshold: float) -> dict[str, pd.DataFrame]:
    """Per-stratum summaries (over devices with stays)."""
    obs = df["observed_days"].clip(upper=7).astype(int).astype(str)
    groups = {
        "density (stationary pings/h)": df["rate_bin"],
        "observed days": obs,
        "night shift": df["night_shift"].map({True: "night shift", False: "day"}),
        "sleeps away": df["sleeps_away"].map({True: "sleeps away", False: "always home"}),
        "method": df["method"],
    }
    out = {}
    for name, key in groups.items():
        rows = []
        for value, part in df.groupby(key, observed=True, sort=True):
            rows.append({name: value, **summary(part, threshold)})
        out[name] = pd.DataFrame(rows)
    return out


# ---- fit --------------------------------------------------------------------------------------


def _logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1.0) -> tuple[float, np.ndarray]:
    """L2-penalised logistic regression by Newton steps (x standardised)."""
    n, k = x.shape
    a = np.column_stack([np.ones(n), x])
    w = np.zeros(k + 1)
    pen = np.r_[0.0, np.full(k, ridge)]
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + pen * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), w[1:]


def _isotonic(score: np.ndarray, y: np.ndarray, min_bin: int = 100) -> tuple[np.ndarray, ...]:
    """Pool-adjacent-violators on bins of >= ``min_bin`` samples; returns (x, y) knots."""
    order = np.argsort(score, kind="stable")
    s, t = score[order], y[order].astype(float)
    nb = max(1, len(s) // min_bin)
    edges = np.linspace(0, len(s), nb + 1).astype(int)
    xs = np.array([s[a:b].mean() for a, b in itertools.pairwise(edges)])
    ks = np.array([t[a:b].sum() for a, b in itertools.pairwise(edges)])
    ns = np.diff(edges).astype(float)
    blocks: list[list[float]] = []  # [sum_x*n, k, n]
    for x, k, m in zip(xs, ks, ns, strict=True):
        blocks.append([x * m, k, m])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            b = blocks.pop()
            blocks[-1] = [blocks[-1][0] + b[0], blocks[-1][1] + b[1], blocks[-1][2] + b[2]]
    bx = np.array([b[0] / b[2] for b in blocks])
    by = np.array([(b[1] + 0.5) / (b[2] + 1.0) for b in blocks])  # a half-success prior
    by = np.maximum.accumulate(by)
    return np.r_[0.0, bx, 1.0], np.r_[by[0], by, by[-1]]


def fit_table(rows: pd.DataFrame, meta: dict[str, Any]) -> home_model.Calibration:
    """Logistic score + isotonic map per method on labelled candidates."""
    feats = list(home_model.FEATURES)
    methods = {}
    for method in home_model.METHODS:
        part = rows[rows["method"] == method]
        if len(part) < 50:
            part = rows  # too few to fit on their own: share the night fit's data
        x = part[feats].to_numpy(float)
        y = part["correct"].to_numpy(float)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        intercept, coef = _logistic((x - mean) / scale, y)
        m = home_model.MethodCalibration(intercept, coef, mean, scale, np.r_[0, 1.0], np.r_[0, 1.0])
        iso_x, iso_y = _isotonic(m.score(x), y, min_bin=max(20, min(200, len(part) // 40)))
        methods[method] = home_model.MethodCalibration(intercept, coef, mean, scale, iso_x, iso_y)
    version = time.strftime("%Y-%m-%d") + f"-{len(rows)}"
    return home_model.Calibration(version, tuple(feats), methods, meta)


def fit(devices: int, cache: Path | None) -> home_model.Calibration:
    frames = []
    for profile in (*FIT_PROFILES, "default", "sparse"):
        n = devices if profile.startswith("real_") else max(500, devices // 4)
        for seed in FIT_SEEDS:
            sample = simulate(profile, n, seed, cache)
            for as_of in (2, DAYS - 1):
                stays, pings = window(sample, as_of)
                for with_pings in (True, False):
                    cand = home_model.home_candidates(
                        stays, sample.timezone, pings if with_pings else None
                    )
                    lab = labelled(sample, cand, stays, pings)
                    lab = lab[lab["lat"].notna()]
                    frames.append(lab.assign(profile=profile, seed=seed))
            print(f"fit data: {profile} seed {seed}", file=sys.stderr)
    rows = pd.concat(frames, ignore_index=True)
    assert HOLDOUT_PROFILE not in set(rows["profile"])
    meta = {
        "meaning": "P(true home within 200 m of the published point)",
        "within_m": WITHIN_M,
        "default_min_confidence": home_model.DEFAULT_MIN_CONFIDENCE,
        "fitted_on": {
            "profiles": sorted(set(rows["profile"])),
            "seeds": list(FIT_SEEDS),
            "devices_per_real_profile": devices,
            "days": DAYS,
            "windows_as_of_day": [3, DAYS],
            "evidence": ["stays+pings", "stays"],
            "candidates": len(rows),
            "by_method": rows["method"].value_counts().to_dict(),
        },
        "held_back_profile": HOLDOUT_PROFILE,
        "refit": "uv run python bench/home_accuracy.py --fit",
    }
    return fit_table(rows, meta)


# ---- report -------------------------------------------------------------------------------------


def report_profile(
    sample: Sample, with_pings: bool, threshold: float, verbose: bool, ping_hours: bool = False
) -> dict[str, Any]:
    df = scored(sample, with_pings, ping_hours=ping_hours)
    head = {"profile": sample.profile, **summary(df, threshold), **stays_figures(sample)}
    rel = reliability(df, threshold)
    head["calibrated"] = calibration_ok(rel)
    head["max_gap"] = _r(rel.loc[rel["homes"] >= 50, "gap"].abs().max()) if len(rel) else None
    if verbose:
        print(f"\n== {sample.profile} ({'stays+pings' if with_pings else 'stays only'}) ==")
        print(pd.DataFrame([head]).to_string(index=False))
        for name, table in strata(df, threshold).items():
            print(f"-- by {name}")
            print(table.to_string(index=False))
        print("-- calibration of published homes (confidence bin vs share within 200 m)")
        print(rel.to_string(index=False))
        print("-- calibration of every candidate, published or not")
        print(reliability(df[df["confidence"] > 0], 0.0).to_string(index=False))
    return head


def check_targets(head: dict[str, Any]) -> dict[str, bool]:
    return {
        "precision>=0.92 at coverage>=0.95": bool(
            (head["precision"] or 0) >= TARGETS["precision"]
            and (head["coverage"] or 0) >= TARGETS["coverage"]
        ),
        ">=0.98 precision at >=60% coverage": bool(
            (head.get("precision_at_60pct") or 0) >= TARGETS["precision_at_60pct"]
        ),
        "calibration within 0.10 per decile (>=50 homes)": bool(head["calibrated"]),
        "stays precision>=0.95": bool((head["stay_precision"] or 0) >= TARGETS["stay_precision"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--profiles", nargs="*", default=list(PROFILES))
    ap.add_argument("--stays-only", action="store_true", help="homes from stays, no pings")
    ap.add_argument(
        "--ping-hours",
        action="store_true",
        help="pass the pings reduced to (device, cell, hour) rows, as home_location does",
    )
    ap.add_argument("--fit", action="store_true", help="refit the calibration table first")
    ap.add_argument("--threshold", type=float, default=home_model.DEFAULT_MIN_CONFIDENCE)
    ap.add_argument("--cache", default="/tmp/home_accuracy_cache")
    ap.add_argument("--quiet", action="store_true", help="per-profile table only")
    args = ap.parse_args(argv)
    cache = Path(args.cache) if args.cache else None
    started = time.perf_counter()
    if args.fit:
        table = fit(args.devices, cache)
        home_model.CALIBRATION_PATH.write_text(json.dumps(table.to_dict(), indent=1) + "\n")
        home_model.load_calibration.cache_clear()
        print(f"wrote {home_model.CALIBRATION_PATH} version {table.version}", file=sys.stderr)
    heads = []
    for profile in args.profiles:
        sample = simulate(profile, args.devices, args.seed, cache)
        heads.append(
            report_profile(
                sample, not args.stays_only, args.threshold, not args.quiet, args.ping_hours
            )
        )
    table = pd.DataFrame(heads)
    print(
        f"\n== per profile (threshold {args.threshold}, seed {args.seed}, {args.devices} devices,"
    )
    evidence = "stays+ping hours" if args.ping_hours else "stays+pings"
    print(f"   evidence {'stays only' if args.stays_only else evidence}) ==")
    print(table.to_string(index=False))
    hold = table[table["profile"] == HOLDOUT_PROFILE]
    if len(hold):
        print(f"\n== held-back profile {HOLDOUT_PROFILE}: targets ==")
        for name, ok in check_targets(hold.iloc[0].to_dict()).items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    load = os.getloadavg()
    print(
        f"\n{time.perf_counter() - started:.1f} s, calibration {home_model.calibration_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
