"""demographics, brand_affinity, campaign_insights and aggregate_insights on both engines, via the CLI.

Generates a lake (``--devices`` x ``--days``, the generator's default profile), publishes
``visits`` (with brands) and ``home_location`` from its truth (a stand-in for the ping chain, as
in ``tests/test_profiles_spark.py``: these steps only read those tables), then, per engine
(``NEAR_ENGINE``), on its own copy of the lake and its own ``DAGSTER_HOME``, runs what a user
would run::

    dagster asset materialize -m near_assets.definitions --select demographics,brand_affinity \\
        --partition <last day>
    dagster asset materialize -m near_assets.definitions --select campaign_insights \\
        --partition <campaign>
    dagster job execute -m near_assets.definitions -j aggregate_insights_job -c request.yaml

sampling the process tree of each command (``bench/scale.py``'s ``TreeSampler``: Dagster, Spark
driver and JVM, PySpark workers). Per step: wall seconds, CPU-seconds (all processes, split
evenly between overlapping steps), the step's input rows (from Parquet footers) and CPU-seconds
per million input rows and per million raw pings of the days the step reads; the load average
before and after each command. Run it niced on a shared machine::

    nice -n 10 uv run python bench/profiles_engines.py --devices 3000 --days 16
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

START = "2024-03-01"
AFFINITY_WINDOW = 28


def scale_module() -> Any:
    """``bench/scale.py`` by path (its sampler and event reader)."""
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench/scale.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_lake(folder: Path, devices: int, days: int, seed: int) -> dict[str, Any]:
    """The generated lake with visits and homes published from truth (reused when present)."""
    from near_assets.synth import generate
    from resources.lake import LakeResource

    info_path = folder / "bench.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    lake = LakeResource(root=str(folder / "lake"))
    t0 = time.perf_counter()
    summary = generate(lake, devices=devices, start=START, days=days, seed=seed, progress=False)
    pois = lake.read_parquet("reference/pois")[["poi_id", "brand"]]
    homes = lake.read_parquet("truth/homes").rename(columns={"home_lat": "lat", "home_lon": "lon"})
    homes = homes.assign(confidence=0.9, nights=7, hours=20, method="truth")
    for day in summary["per_day"]:
        stays = lake.read_parquet(f"truth/stays/date={day}")
        v = stays[stays["kind"] == "poi"].merge(pois, on="poi_id", how="left")
        v["dwell_s"] = (v["end_ts"] - v["start_ts"]).dt.total_seconds()
        v["distance_m"] = 0.0
        cols = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s", "brand", "distance_m"]
        lake.write_parquet(v[cols], f"curated/visits/date={day}")
        cols = ["device_id", "lat", "lon", "confidence", "nights", "hours", "method"]
        lake.write_parquet(homes[cols], f"curated/home_location/date={day}")
    days_list = sorted(summary["per_day"])
    pings = {d: int(lake.parquet_rows(f"raw/pings/date={d}")) for d in days_list}
    cid = summary["campaigns"][0]
    info = {
        "devices": devices,
        "days": days_list,
        "pings": pings,
        "campaign": cid,
        "brand": lake.read_json(f"reference/campaigns/{cid}.json")["brand"],
        "campaign_spec": lake.read_json(f"reference/campaigns/{cid}.json"),
        "build_s": round(time.perf_counter() - t0, 1),
    }
    info_path.write_text(json.dumps(info))
    return info


def inputs(lake_root: Path, info: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per step: (input rows from footers, raw pings of the days it reads)."""
    from resources.lake import LakeResource

    lake = LakeResource(root=str(lake_root))
    days, last = info["days"], info["days"][-1]

    def visits(ds: list[str]) -> int:
        return sum(lake.parquet_rows(f"curated/visits/date={d}") for d in ds)

    def pings(ds: list[str]) -> int:
        return sum(info["pings"][d] for d in ds)

    window = days[-AFFINITY_WINDOW:]
    spec = info["campaign_spec"]
    camp = [d for d in days if d <= spec["end_date"]]
    exposures = lake.parquet_rows(f"raw/exposures/campaign_id={info['campaign']}")
    homes = lake.parquet_rows(f"curated/home_location/date={last}")
    return {
        "demographics": (homes, pings([last])),
        "brand_affinity": (visits(window), pings(window)),
        "campaign_insights": (visits(camp) + exposures + homes, pings(camp)),
        "aggregate_insights": (visits(days), pings(days)),
    }


def run_cli(
    scale: Any, cmd: list[str], env: dict[str, str], home: Path, log: Path
) -> dict[str, Any]:
    """One CLI command, its process tree sampled; per step wall, CPU, engine."""
    load_before = scale.load()
    with log.open("a") as out:
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        sampler = scale.TreeSampler(proc.pid)
        sampler.start()
        code = proc.wait()
        sampler.stop()
        wall = time.time() - t0
    status, steps = scale.step_events(home)
    cpu: dict[str, float] = defaultdict(float)
    for t, delta in sampler.samples:
        active = [s for s, e in steps.items() if e.get("start", 1e99) <= t <= e.get("end", 1e99)]
        for seconds in delta.values():
            for step in active or ["(outside steps)"]:
                cpu[step] += seconds / max(1, len(active))
    return {
        "exit_code": code,
        "status": status,
        "wall_s": wall,
        "steps": steps,
        "cpu": dict(cpu),
        "load": f"{load_before} -> {scale.load()}",
    }


def run_engine(
    scale: Any, engine: str, src: Path, work: Path, info: dict[str, Any], master: str, port: int
) -> dict[str, Any]:
    import dagster as dg
    import redis

    folder = work / engine
    if folder.exists():
        shutil.rmtree(folder)
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    shutil.copytree(src / "lake", folder / "lake")
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("campaigns", [info["campaign"]])
    instance.dispose()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LAKE_ROOT": str(folder / "lake"),
        "NEAR_ENGINE": engine,
        "SPARK_MASTER": master,
        "EMBEDDED_REDIS_PORT": str(port),
        "EMBEDDED_REDIS_DIR": str(folder / "redis"),
        "LAKE_START_DATE": START,
        "PYTHONWARNINGS": "ignore",
    }
    for var in ("LAKE_BUCKET", "LAKE_PREFIX", "REDIS_URL", "EMR_CLUSTER_ID"):
        env.pop(var, None)
    request = folder / "request.json"
    request.write_text(
        json.dumps(
            {
                "ops": {
                    "aggregate_insights": {
                        "config": {
                            "brand": info["brand"],
                            "start_date": info["days"][0],
                            "end_date": info["days"][-1],
                        }
                    }
                }
            }
        )
    )
    base = [sys.executable, "-m", "dagster"]
    module = ["-m", "near_assets.definitions"]
    commands = [
        [*base, "asset", "materialize", *module, "--select", "demographics,brand_affinity",
         "--partition", info["days"][-1]],
        [*base, "asset", "materialize", *module, "--select", "campaign_insights",
         "--partition", info["campaign"]],
        [*base, "job", "execute", *module, "-j", "aggregate_insights_job", "-c", str(request)],
    ]  # fmt: skip
    runs = []
    try:
        for cmd in commands:
            runs.append(run_cli(scale, cmd, env, home, folder / "run.log"))
    finally:
        with contextlib.suppress(redis.RedisError):  # the embedded Redis the runs started
            redis.Redis(port=port, socket_timeout=2).shutdown(nosave=True)
    return {"engine": engine, "runs": runs, "log": str(folder / "run.log")}


def report(result: dict[str, Any], sizes: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for run in result["runs"]:
        for step, e in run["steps"].items():
            name = step.split(".")[-1]
            if name not in sizes:
                continue
            rows_in, pings = sizes[name]
            cpu = run["cpu"].get(step, 0.0)
            rows.append(
                {
                    "step": name,
                    "engine_ran": e.get("engine", "-"),
                    "status": e.get("status", "?"),
                    "wall_s": round(e.get("end", 0) - e.get("start", 0), 1),
                    "cpu_s": round(cpu, 1),
                    "input_rows": rows_in,
                    "cpu_s_per_m_rows": round(cpu / rows_in * 1e6, 1) if rows_in else None,
                    "cpu_s_per_m_pings": round(cpu / pings * 1e6, 2) if pings else None,
                    "load": run["load"],
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=3000)
    parser.add_argument("--days", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--engines", default="pandas,spark")
    parser.add_argument("--root", default="/tmp/bench-profiles")
    parser.add_argument("--master", default=os.environ.get("SPARK_MASTER", "local[*]"))
    parser.add_argument("--redis-port", type=int, default=6398)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    scale = scale_module()
    root = Path(args.root)
    print(f"load average at start: {scale.load()}")
    src = root / f"lake-{args.devices}x{args.days}"
    info = build_lake(src, args.devices, args.days, args.seed)
    sizes = inputs(src / "lake", info)
    total = sum(info["pings"].values())
    print(
        f"{args.devices:,} devices x {args.days} days, {total:,} raw pings "
        f"({total / len(info['days']):,.0f} a day; built in {info['build_s']} s); "
        f"campaign {info['campaign']}; master {args.master}"
    )
    results = {}
    for engine in args.engines.split(","):
        result = run_engine(scale, engine, src, root / "runs", info, args.master, args.redis_port)
        results[engine] = report(result, sizes)
        print(f"\n{engine} (log {result['log']}):")
        for row in results[engine]:
            print(
                f"  {row['step']:<20} ran {row['engine_ran']:<7} {row['status']:<8} "
                f"wall {row['wall_s']:7.1f} s  CPU {row['cpu_s']:7.1f} s  "
                f"{row['input_rows']:>10,} rows in  {row['cpu_s_per_m_rows']} CPU-s/M rows  "
                f"{row['cpu_s_per_m_pings']} CPU-s/M pings  load {row['load']}"
            )
    print(f"\nload average at end: {scale.load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
