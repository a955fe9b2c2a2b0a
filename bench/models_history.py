"""Visit history: one day's incremental update against the history size and the day's visits.

Builds snapshots of H (device, POI) pairs from random visits (``history_from_visits``), then
times ``update_history`` (yesterday's snapshot + today's V visits - the visits leaving the
7/30/90-day windows) for growing H at fixed V and growing V at fixed H, beside the re-scan it
replaces (``history_from_visits`` over the 90 days) and the snapshot's Parquet write + read
(the lake I/O of a day, which does follow H: the snapshot is rewritten whole).

    uv run python bench/models_history.py [--histories 100000 400000 1600000]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import pandas as pd

from near_assets.science import history

DAY = "2024-06-30"


def random_visits(
    rng: np.random.Generator, n: int, devices: int, pois: int, days: int
) -> pd.DataFrame:
    """``n`` visits spread over the ``days`` days ending with DAY."""
    end = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(days=1)
    start = end - pd.to_timedelta(rng.uniform(0, days * 86_400, n), unit="s")
    dwell = rng.uniform(300, 7200, n)
    return pd.DataFrame(
        {
            "device_id": pd.Series(rng.integers(0, devices, n)).map("d{:08d}".format),
            "poi_id": pd.Series(rng.integers(0, pois, n)).map("p{:05d}".format),
            "start_ts": start,
            "end_ts": start + pd.to_timedelta(dwell, unit="s"),
            "dwell_s": dwell,
            "brand": "b",
        }
    )


def one_day(rng: np.random.Generator, n: int, devices: int, pois: int, day: str) -> pd.DataFrame:
    v = random_visits(rng, n, devices, pois, 1)
    shift = pd.Timestamp(day, tz="UTC") - pd.Timestamp(DAY, tz="UTC")
    return v.assign(start_ts=v["start_ts"] + shift, end_ts=v["end_ts"] + shift)


def timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def case(rng: np.random.Generator, pairs: int, day_visits: int, rescan: bool) -> dict:
    devices, pois = max(pairs // 4, 1000), 2000
    built = random_visits(rng, pairs, devices, pois, 89)
    yesterday = (pd.Timestamp(DAY) - pd.Timedelta(days=1)).date().isoformat()
    prev = history.history_from_visits(built, yesterday)
    today = one_day(rng, day_visits, devices, pois, DAY)
    leaving = {
        w: one_day(
            rng,
            day_visits,
            devices,
            pois,
            (pd.Timestamp(DAY) - pd.Timedelta(days=w)).date().isoformat(),
        )
        for w in history.WINDOWS
    }
    update_s = timed(lambda: history.update_history(prev, today, leaving, DAY))
    out = history.update_history(prev, today, leaving, DAY)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    out.to_parquet(buf, index=False)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pd.read_parquet(io.BytesIO(buf.getvalue()))
    read_s = time.perf_counter() - t0
    row = {
        "history_pairs": len(prev),
        "day_visits": day_visits,
        "leaving_visits": sum(len(v) for v in leaving.values()),
        "update_s": round(update_s, 4),
        "parquet_write_s": round(write_s, 3),
        "parquet_read_s": round(read_s, 3),
        "snapshot_mb": round(len(buf.getvalue()) / 1e6, 1),
    }
    if rescan:
        window = pd.concat([built, today], ignore_index=True)
        row["rescan_90d_s"] = round(timed(lambda: history.history_from_visits(window, DAY), 1), 3)
    return row


def loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--histories", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    ap.add_argument("--days-visits", type=int, nargs="+", default=[5_000, 20_000, 80_000])
    ap.add_argument("--fixed-visits", type=int, default=20_000)
    ap.add_argument("--fixed-history", type=int, default=400_000)
    args = ap.parse_args()
    rng = np.random.default_rng(5)
    load0 = loadavg()
    rows = [case(rng, h, args.fixed_visits, rescan=True) for h in args.histories]
    print(f"growing history, {args.fixed_visits} visits a day")
    print(pd.DataFrame(rows).to_string(index=False))
    rows_v = [case(rng, args.fixed_history, v, rescan=False) for v in args.days_visits]
    print(f"\ngrowing day, history of ~{args.fixed_history} pairs")
    print(pd.DataFrame(rows_v).to_string(index=False))
    print(json.dumps({"loadavg_start": load0, "loadavg_end": loadavg()}))


if __name__ == "__main__":
    main()
