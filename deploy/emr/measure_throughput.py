"""Measure the Spark job's local overhead and ``apply_by_device`` throughput (for cluster sizing).

    uv run python deploy/emr/measure_throughput.py [--rows 2500000] [--devices 2000] [--master local[2]]

Prints JSON: the wall time of a tiny job run through ``SparkResource.run_per_device`` inside
``dg.materialize`` (JVM start, Pipes, read/write), and rows/s of ``count_pings`` over ``--rows``
pings (job time excluding Spark session start), next to the same function run in-process.
"""

import argparse
import json
import os
import tempfile
import threading
import time

import dagster as dg
import numpy as np
import pandas as pd
import psutil

from near_assets.spark_jobs import APPLY_BY_DEVICE
from near_assets.spark_jobs.examples import count_pings
from resources.lake import LakeResource
from resources.spark import SparkResource


def synthetic_pings(rows: int, devices: int, days: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for d in range(days):
        n = rows // days
        day = pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(days=d)
        out[day.strftime("%Y-%m-%d")] = pd.DataFrame(
            {
                "device_id": pd.Series(rng.integers(0, devices, n)).map("dev-{:05d}".format),
                "ts": day + pd.to_timedelta(rng.integers(0, 86_400_000, n), unit="ms"),
                "lat": rng.normal(40.4, 0.1, n),
                "lon": rng.normal(-3.7, 0.1, n),
                "accuracy_m": rng.uniform(3, 300, n).astype("float32"),
            }
        )
    return out


class TreeCpu:
    """CPU seconds used by this process's descendants (Spark driver, JVM, Python workers).

    CPU time, unlike wall time, hardly depends on how busy a shared machine is.
    """

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for child in me.children(recursive=True):
                try:
                    t = child.cpu_times()
                    self.seen[child.pid] = max(self.seen.get(child.pid, 0.0), t.user + t.system)
                except psutil.Error:
                    pass
            time.sleep(self.interval_s)

    def __enter__(self) -> "TreeCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return round(sum(self.seen.values()), 2)


def run_job(spark: SparkResource, lake: LakeResource, inputs: list[str], output: str) -> dict:
    summary: dict = {}

    @dg.asset(name="measured")
    def measured(context: dg.AssetExecutionContext) -> None:
        """One apply_by_device run."""
        started = time.perf_counter()
        summary.update(
            spark.run_per_device(
                context,
                script=APPLY_BY_DEVICE,
                function=count_pings,
                inputs=inputs,
                output=output,
                lake=lake,
            )
        )
        summary["asset_seconds"] = round(time.perf_counter() - started, 3)

    with TreeCpu() as cpu:
        dg.materialize([measured])
    summary["cpu_seconds"] = cpu.seconds
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_500_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    parser.add_argument("--driver-memory", default="3g")
    parser.add_argument("--skip-tiny", action="store_true", help="only the big job")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = SparkResource(
        master=args.master,
        shuffle_partitions=args.shuffle_partitions,
        driver_memory=args.driver_memory,
    )
    with tempfile.TemporaryDirectory() as tmp:
        lake = LakeResource(root=tmp)
        tiny: dict = {}
        if not args.skip_tiny:
            lake.write_parquet(synthetic_pings(200, 20, 1)["2024-01-01"], "tiny/date=2024-01-01")
            tiny = run_job(spark, lake, ["tiny/date=2024-01-01"], "tiny_out")

        frames = synthetic_pings(args.rows, args.devices, args.days)
        keys = []
        for day, frame in frames.items():
            keys.append(f"pings/date={day}")
            lake.write_parquet(frame, keys[-1])
        whole = pd.concat(frames.values(), ignore_index=True)
        started = time.perf_counter()
        count_pings(whole)
        pandas_s = time.perf_counter() - started
        big = run_job(spark, lake, keys, "big_out")

    job_s = big["seconds"] - big["session_start_s"]
    print(
        json.dumps(
            {
                "master": args.master,
                "load_average_1m": round(os.getloadavg()[0], 2),
                "tiny_job": {
                    k: tiny[k]
                    for k in ("asset_seconds", "seconds", "session_start_s", "cpu_seconds")
                    if k in tiny
                },
                "big_job": {
                    "input_rows": big["input_rows"],
                    "output_rows": big["rows"],
                    "asset_seconds": big["asset_seconds"],
                    "session_start_s": big["session_start_s"],
                    "job_seconds": round(job_s, 3),
                    "rows_per_s": round(big["input_rows"] / job_s),
                    "cpu_seconds": big["cpu_seconds"],
                    "rows_per_cpu_s": round(big["input_rows"] / big["cpu_seconds"]),
                },
                "pandas_in_process": {
                    "seconds": round(pandas_s, 3),
                    "rows_per_s": round(len(whole) / pandas_s),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
