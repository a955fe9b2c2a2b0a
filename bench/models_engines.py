"""The models on both engines: wall and CPU seconds of one day of each (issue 16).

Generates a small lake (planted HDPs, people and households), publishes stay points and visits
in pandas and the models' earlier days (so the measured day is a normal daily run: visit
history incremental from the day before, the HDP window's earlier cells present), then runs
``visit_history``, ``high_density_points`` and ``identity_graph`` for the last day on each
engine and prints wall seconds, CPU seconds of the whole process tree (the run process, the
job's Python and its JVM and Python workers, sampled with psutil) and the load average.

    uv run python bench/models_engines.py --devices 1000 --days 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from near_assets import mobility
from near_assets.models import high_density_points as hd
from near_assets.models import identity_graph as ig
from near_assets.models import visit_history as vh
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource


class TreeCpu:
    """CPU seconds (user + system) of this process and every descendant seen while running."""

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self.psutil, self.interval = psutil, interval
        self.seen: dict[tuple[int, float], float] = {}
        self.stop = threading.Event()
        self.root = psutil.Process()

    def _sample(self) -> None:
        procs = [self.root, *self.root.children(recursive=True)]
        for p in procs:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system
            except self.psutil.Error:
                pass

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeCpu:
        self._sample()
        self.start = dict(self.seen)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(v - self.start.get(k, 0.0) for k, v in self.seen.items())


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(lake: LakeResource, asset: Any, first: str, last: str, config: dict[str, Any]) -> Any:
    name = asset.key.to_user_string()
    result = dg.materialize(
        [asset],
        resources={
            "lake": lake,
            "alerts": AlertsResource(),
            "spark": SparkResource(master="local[2]"),
        },
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        run_config={"ops": {name: {"config": config}}},
    )
    assert result.success
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--lake", help="a lake this bench built before (default: build one)")
    ap.add_argument("--models", nargs="*", default=["visit_history", "high_density_points",
                                                     "identity_graph"])  # fmt: skip
    args = ap.parse_args()
    start = "2024-05-06"
    os.environ.setdefault("LAKE_START_DATE", start)
    dates = [str(d.date()) for d in pd.date_range(start, periods=args.days)]
    root = args.lake or str(Path(tempfile.mkdtemp(prefix="bench-models-")) / "lake")
    lake = LakeResource(root=root)
    assets = {"visit_history": vh.visit_history, "high_density_points": hd.high_density_points,
              "identity_graph": ig.identity_graph}  # fmt: skip
    extra = {"high_density_points": {"max_removed_share": 0.1}}
    if not args.lake:
        generate(lake, seed=args.seed, devices=args.devices, start=start, days=args.days,
                 progress=False, dirt=False, hdp=True, people=True)  # fmt: skip
        for day in dates:
            raw = lake.read_parquet(f"raw/pings/date={day}")
            raw["ts"] = to_utc(raw["ts"])  # stand-in for clean_pings
            lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
        resources = {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource()}
        tags = {
            "dagster/asset_partition_range_start": dates[0],
            "dagster/asset_partition_range_end": dates[-1],
        }
        assert dg.materialize(
            [mobility.stay_points, mobility.visits], resources=resources, tags=tags
        ).success
        for name in args.models:  # the days before the measured one, in pandas
            run(
                lake, assets[name], dates[0], dates[-2], {"engine": "pandas", **extra.get(name, {})}
            )
        print(f"lake: {root}", flush=True)
    rows = []
    for name in args.models:
        for engine in ("pandas", "spark"):
            before = loadavg()
            t0 = time.perf_counter()
            with TreeCpu() as cpu:
                result = run(lake, assets[name], dates[-1], dates[-1],
                             {"engine": engine, **extra.get(name, {})})  # fmt: skip
            wall = time.perf_counter() - t0
            (mat,) = result.asset_materializations_for_node(name)
            rows.append(
                {
                    "model": name,
                    "engine": engine,
                    "rows": mat.metadata["dagster/row_count"].value,
                    "wall_s": round(wall, 1),
                    "cpu_s": round(cpu.seconds, 1),
                    "load_before": before,
                    "load_after": loadavg(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
