"""``clean_pings`` on both engines over one generated day: wall and CPU seconds per million pings.

Generates (or reuses) one day of the generator's default profile with dirt, then materializes
``clean_pings`` with ``engine: pandas`` (in the run process) and ``engine: spark`` (one local
Spark job under Pipes, ``--master``). CPU-seconds are summed over this process and every
descendant (the Pipes subprocess and the Spark JVM), sampled every 0.2 s; the load average is
printed beside the figures (the machine may be shared). Checks that both engines agree on the
per-reason counts::

    uv run python bench/clean_pings_engines.py --devices 8000   # ~1.5 M pings
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = "2024-03-04"


class CpuMeter:
    """CPU-seconds of this process and all its descendants (dead ones: last sample)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval_s = interval_s
        self.seen: dict[int, float] = {}
        self.peak_rss: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        for proc in self.me.children(recursive=True):
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    rss = proc.memory_info().rss
                    name = "java" if "java" in proc.name() else "python"
            except psutil.Error:
                continue
            self.seen[proc.pid] = t.user + t.system
            self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
        self.peak_rss["run process"] = max(
            self.peak_rss.get("run process", 0), self.me.memory_info().rss
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuMeter:
        t = self.me.cpu_times()
        self.start_self = t.user + t.system
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        t = self.me.cpu_times()
        self.wall_s = time.perf_counter() - self.started
        self.self_cpu_s = t.user + t.system - self.start_self
        self.children_cpu_s = sum(self.seen.values())
        self.cpu_s = self.self_cpu_s + self.children_cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8000)
    parser.add_argument("--lake", default="/tmp/bench-clean-pings/lake")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--engines", default="pandas,spark")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import dagster as dg

    from near_assets.pings import clean_pings
    from near_assets.science.cleaning import REASONS
    from near_assets.synth import generate
    from near_assets.tables import RAW_PINGS
    from resources.lake import LakeResource
    from resources.spark import SparkResource

    lake = LakeResource(root=args.lake)
    if not RAW_PINGS.exists(lake, DAY):
        t0 = time.perf_counter()
        generate(lake, seed=11, devices=args.devices, start=DAY, days=1, progress=False)
        print(f"generated {args.devices} devices in {time.perf_counter() - t0:.1f} s")
    pings = RAW_PINGS.rows(lake, DAY)
    print(f"day {DAY}: {pings:,} raw pings in {len(RAW_PINGS.files(lake, DAY))} files")

    results: dict[str, dict[str, Any]] = {}
    for engine in args.engines.split(","):
        with CpuMeter() as meter:
            result = dg.materialize(
                [clean_pings],
                partition_key=DAY,
                resources={"lake": lake, "spark": SparkResource(master=args.master)},
                run_config={"ops": {"clean_pings": {"config": {"engine": engine}}}},
            )
        (event,) = result.asset_materializations_for_node("clean_pings")
        meta = {k: v.value for k, v in event.metadata.items()}
        results[engine] = meta
        per_m = 1e6 / max(pings, 1)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rss = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in meter.peak_rss.items())
        print(
            f"{engine:>6}: engine ran={meta['engine']}, wall {meter.wall_s:6.1f} s "
            f"({meter.wall_s * per_m:5.2f} s per M pings), CPU {meter.cpu_s:6.1f} s "
            f"({meter.cpu_s * per_m:5.2f} CPU-s per M pings = {meter.cpu_s * per_m:.2f} µs/ping;"
            f" run process {meter.self_cpu_s:.1f}, children {meter.children_cpu_s:.1f}); "
            f"peak RSS: {rss}; load average {load}"
        )
        print(
            f"        rows out {meta['rows_out']:,}, dropped "
            + ", ".join(f"{r} {meta[f'dropped/{r}']:,}" for r in REASONS)
        )
    if len(results) == 2:
        a, b = results.values()
        same = all(a[f"dropped/{r}"] == b[f"dropped/{r}"] for r in REASONS)
        same = same and a["rows_out"] == b["rows_out"]
        print(f"engines agree on rows out and per-reason counts: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
