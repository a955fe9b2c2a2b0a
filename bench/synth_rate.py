"""Generator throughput: pings/s for the reference panel and for a 10 M-ping run.

    uv run python bench/synth_rate.py [--skip-10m]

Writes to temporary local lakes (deleted afterwards) and prints one line per run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from near_assets.synth import generate
from resources.lake import LakeResource

RUNS = {
    "reference panel (2000 devices x 7 days)": {"devices": 2000, "days": 7},
    "10 M pings (8000 devices x 7 days)": {"devices": 8000, "days": 7},
}


def run(label: str, devices: int, days: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        lake = LakeResource(root=tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = generate(
            lake, seed=7, devices=devices, days=days, start="2026-01-05", progress=False
        )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rate = summary["pings"] / seconds
    print(
        f"{label}: {summary['pings']:,} pings in {seconds:.1f} s wall = {rate:,.0f} pings/s "
        f"(process CPU {cpu:.1f} s = {summary['pings'] / cpu:,.0f} pings/CPU-s; "
        f"{summary['pings'] / devices / days:.0f} rows/device/day; load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return {"pings": summary["pings"], "seconds": seconds, "cpu": cpu, "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-10m", action="store_true")
    args = parser.parse_args()
    for label, kw in RUNS.items():
        if args.skip_10m and kw["devices"] > 2000:
            continue
        run(label, **kw)


if __name__ == "__main__":
    main()
