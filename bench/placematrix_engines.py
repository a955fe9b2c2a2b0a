"""``place_boundaries`` (PlaceMatrix) on both engines: wall and CPU seconds of one day.

Generates the lake of ``tests/test_place_boundaries.py`` by default (seed 6, 800 devices, 7
days, true footprints, no dirt), publishes the stay points of every day in pandas, then runs
``place_boundaries`` for the last day (its window: every generated day) on each engine and
prints wall seconds, CPU seconds of the whole process tree (the run process, the job's Python,
its JVM and Python workers: ``models_engines.TreeCpu``), the load average before and after,
and whether both engines published the same rows.

    nice -n 10 uv run python bench/placematrix_engines.py --devices 800 --days 7
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd
from models_engines import TreeCpu, loadavg  # bench/ is the script's folder

from near_assets import mobility
from near_assets.models import place_boundaries as pb
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

START = "2024-03-04"


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


def build(lake: LakeResource, seed: int, devices: int, days: list[str]) -> None:
    generate(
        lake,
        seed=seed,
        devices=devices,
        start=days[0],
        days=len(days),
        dirt=False,
        campaigns=0,
        progress=False,
        footprints=True,
    )
    for day in days:
        raw = lake.read_parquet(f"raw/pings/date={day}")
        raw["ts"] = to_utc(raw["ts"])  # stand-in for clean_pings (no dirt)
        lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
    tags = {
        "dagster/asset_partition_range_start": days[0],
        "dagster/asset_partition_range_end": days[-1],
    }
    assert dg.materialize([mobility.stay_points], resources=resources(lake), tags=tags).success


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--devices", type=int, default=800)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--min-stays", type=int, default=10)
    parser.add_argument("--min-devices", type=int, default=6)
    args = parser.parse_args()
    days = [str(d.date()) for d in pd.date_range(START, periods=args.days)]
    with tempfile.TemporaryDirectory(prefix="placematrix-engines-") as tmp:
        lake = LakeResource(root=str(Path(tmp, "lake")))
        t0 = time.perf_counter()
        build(lake, args.seed, args.devices, days)
        print(json.dumps({"lake_seconds": round(time.perf_counter() - t0, 1)}))
        published = {}
        for engine in ("pandas", "spark"):
            config = {
                "engine": engine,
                "min_stays": args.min_stays,
                "min_devices": args.min_devices,
            }
            before = loadavg()
            started = time.perf_counter()
            with TreeCpu() as cpu:
                result = dg.materialize(
                    [pb.place_boundaries],
                    resources=resources(lake),
                    partition_key=days[-1],
                    run_config={"ops": {"place_boundaries": {"config": config}}},
                )
            wall = time.perf_counter() - started
            assert result.success, engine
            meta = result.asset_materializations_for_node("place_boundaries")[-1].metadata
            published[engine] = pb.PLACE_BOUNDARIES.read(lake, days[-1])
            print(
                json.dumps(
                    {
                        "engine": meta["engine"].value,
                        "wall_s": round(wall, 1),
                        "cpu_s": round(cpu.seconds, 1),
                        "stays": meta["stays"].value,
                        **{
                            k: meta[k].value
                            for k in (
                                "spark_seconds",
                                "spark_session_start_s",
                                "spark_seconds_science",
                            )
                            if k in meta
                        },
                        "pois": meta["pois"].value,
                        "refined": meta["refined"].value,
                        "truth_median_iou_refined": meta["truth_median_iou_refined"].value,
                        "load_before": before,
                        "load_after": loadavg(),
                    }
                )
            )
        same = published["pandas"].equals(published["spark"])
        print(json.dumps({"same_rows": bool(same), "rows": len(published["pandas"])}))


if __name__ == "__main__":
    main()
