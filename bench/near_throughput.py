"""Throughput of the mobility chain: clean_pings -> stay_points -> visits -> home_location.

For each day size (default 2.5 M and 10 M pings) it generates a one-day lake with the synthetic
generator (or reuses it), runs the chain on each engine in a fresh child process and prints
seconds per stage, pings/s, peak memory and accuracy against truth. The in-process engine calls
the science functions directly; the Spark engine runs stay detection and home inference as
``apply_by_device.py`` jobs on local Spark (``--master``, default ``local[2]``), exactly the
job the Spark resource submits (``--spark-buckets``: ``auto``, the job's default, calls the
function once per bucket of many devices; ``0`` once per device, as before buckets existed).
trackintel 1.4.2 runs on a device sample of the same day in its
own interpreter (``--trackintel-python``; it is not a platform dependency)::

    uv venv /tmp/ti && uv pip install --python /tmp/ti trackintel==1.4.2 pandas pyarrow
    uv run python bench/near_throughput.py --sizes 2.5e6,10e6 --engines pandas,spark
    uv run python bench/near_throughput.py --sizes 2.5e6 --engines spark --spark-buckets 0

Without that interpreter the trackintel comparison is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = "2024-03-04"
PINGS_PER_DEVICE_DAY = 186.0  # default profile, measured: 2,000 devices -> ~372 k pings a day

TRACKINTEL_SCRIPT = r"""
import json, sys, time
import geopandas as gpd
import pandas as pd
import trackintel as ti

src, out_sp, out_home = sys.argv[1:4]
pf = pd.read_parquet(src)
t0 = time.perf_counter()
pfs = gpd.GeoDataFrame(
    {"user_id": pf["device_id"], "tracked_at": pf["ts"]},
    geometry=gpd.points_from_xy(pf["lon"], pf["lat"]), crs="EPSG:4326",
)
pfs = ti.Positionfixes(pfs)
pfs, sp = pfs.generate_staypoints(
    method="sliding", dist_threshold=100, time_threshold=5.0, gap_threshold=120.0,
    distance_metric="haversine", include_last=True, exclude_duplicate_pfs=True, n_jobs=1,
)
t_sp = time.perf_counter() - t0
sp, locs = sp.generate_locations(
    method="dbscan", epsilon=150, num_samples=1, distance_metric="haversine", agg_level="user"
)
sp = ti.analysis.location_identifier(sp, method="OSNA", pre_filter=False)
t_all = time.perf_counter() - t0
pd.DataFrame({
    "device_id": sp["user_id"].astype(str), "start_ts": sp["started_at"],
    "end_ts": sp["finished_at"], "lat": sp.geometry.y, "lon": sp.geometry.x,
}).to_parquet(out_sp)
home = sp[sp["purpose"] == "home"]
centre = locs.loc[home["location_id"].unique()] if len(home) else locs.iloc[:0]
per_user = home.drop_duplicates("user_id")[["user_id", "location_id"]].merge(
    centre.reset_index()[["id", "center"]], left_on="location_id", right_on="id"
)
pd.DataFrame({
    "device_id": per_user["user_id"].astype(str),
    "lat": gpd.GeoSeries(per_user["center"]).y, "lon": gpd.GeoSeries(per_user["center"]).x,
    "confidence": 1.0,
}).to_parquet(out_home)
print(json.dumps({"pings": len(pf), "staypoints_s": t_sp, "total_s": t_all, "staypoints": len(sp)}))
"""


def peak_mb() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "peak_child_rss_mb": round(kids, 1)}


def lake_for(root: Path, pings: float, seed: int) -> tuple[Any, dict]:
    from near_assets.synth import generate
    from resources.lake import LakeResource

    label = f"{pings / 1e6:g}M"
    lake = LakeResource(root=str(root / label))
    info_key = "bench.json"
    if lake.exists(info_key):
        return lake, lake.read_json(info_key)
    devices = round(pings / PINGS_PER_DEVICE_DAY)
    t0 = time.perf_counter()
    summary = generate(lake, seed=seed, devices=devices, start=DAY, days=1, progress=False)
    info = {
        "devices": devices,
        "raw_pings": summary["pings"],
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    lake.write_json(info_key, info)
    return lake, info


def spark_job(
    function: str, inputs: list[str], output: str, params: dict, master: str, buckets: str = "auto"
) -> dict:
    from near_assets.spark_jobs import APPLY_BY_DEVICE
    from resources.spark import LOCAL_CONF

    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
    }
    conf = {**LOCAL_CONF, "spark.sql.shuffle.partitions": "4", "spark.driver.memory": "2g"}
    cmd = [
        sys.executable,
        str(APPLY_BY_DEVICE),
        "--function",
        function,
        "--input",
        *inputs,
        "--output",
        output,
        "--params",
        json.dumps(params),
        "--buckets",
        buckets,
        "--master",
        master,
        "--spark-conf",
        json.dumps(conf),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    lines = [x for x in done.stderr.splitlines() if x.startswith('{"function"')]
    return json.loads(lines[-1])


def chain(lake_root: str, engine: str, master: str, buckets: str = "auto") -> dict[str, Any]:
    """One engine on one day; runs in a child process so peak memory is its own."""
    import numpy as np
    import pandas as pd

    from near_assets.science import accuracy
    from near_assets.science.cleaning import clean_pings
    from near_assets.science.home import infer_homes
    from near_assets.science.stays import detect_stays
    from near_assets.science.visits import PoiIndex, match_visits
    from near_assets.tables import CLEAN_PINGS
    from resources.lake import LakeResource

    lake = LakeResource(root=lake_root)
    detect_stays(pd.DataFrame({"device_id": ["w"] * 3, "ts": [0, 1, 2], "lat": 0.0, "lon": 0.0}))
    stages: dict[str, float] = {}
    t = time.perf_counter()
    raw = lake.read_parquet(f"raw/pings/date={DAY}")
    clean, _ = clean_pings(raw, date.fromisoformat(DAY))
    del raw
    clean_key = lake.write_parquet(clean, f"work/clean_pings/date={DAY}")
    stages["clean_pings"] = time.perf_counter() - t
    pings = len(clean)

    t = time.perf_counter()
    if engine == "pandas":
        day = CLEAN_PINGS.read(lake, DAY, dictionary=["device_id"])
        t_detect = time.perf_counter()
        stays = detect_stays(day)
        extra: dict[str, Any] = {
            "detect_pings_per_s": round(pings / (time.perf_counter() - t_detect))
        }
        del day
    else:
        out = lake.uri("work/bench_spark_stays")
        summary = spark_job(
            "near_assets.science.stays:detect_stays",
            [lake.uri(clean_key)],
            out,
            {},
            master,
            buckets,
        )
        stays = lake.read_parquet("work/bench_spark_stays")
        extra = {
            "spark_buckets": summary.get("buckets"),
            "spark_stays_job_s": summary["seconds"],
            "spark_session_s": summary["session_start_s"],
        }
    stages["stay_points"] = time.perf_counter() - t

    t = time.perf_counter()
    pois = PoiIndex(lake.read_parquet("reference/pois"))
    visits = match_visits(stays, pois)
    stages["visits"] = time.perf_counter() - t

    t = time.perf_counter()
    if engine == "pandas":
        homes = infer_homes(stays)
    else:
        key = lake.write_parquet(stays, "work/bench_stays")
        out = lake.uri("work/bench_spark_homes")
        summary = spark_job(
            "near_assets.science.home:homes_by_day",
            [lake.uri(key)],
            out,
            {"as_of": [DAY], "window_days": 14},
            master,
            buckets,
        )
        homes = lake.read_parquet("work/bench_spark_homes")
        extra["spark_home_job_s"] = summary["seconds"]
    stages["home_location"] = time.perf_counter() - t

    total = sum(stages.values())
    truth = lake.read_parquet(f"truth/stays/date={DAY}")
    observed = clean[["device_id", "ts"]]
    result = {
        "engine": engine,
        "pings": pings,
        "stays": len(stays),
        "visits": len(visits),
        "homes": len(homes),
        "seconds": {k: round(v, 3) for k, v in stages.items()},
        "total_s": round(total, 3),
        "chain_pings_per_s": round(pings / total),
        "stay_pings_per_s": round(pings / stages["stay_points"]),
        **accuracy.stay_accuracy(stays, truth, DAY, min_duration_s=300, pings=observed),
        **accuracy.visit_accuracy(visits, truth, DAY, 300, observed),
        **accuracy.home_accuracy(
            homes, lake.read_parquet("truth/homes"), np.unique(stays["device_id"])
        ),
        **extra,
        **peak_mb(),
    }
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in result.items()}


def run_child(lake, engine: str, master: str, buckets: str = "auto") -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", lake.root, "--engine", engine, "--master", master]
    cmd += ["--spark-buckets", buckets]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        return {"engine": engine, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def trackintel(lake, python: str, devices: int, seed: int) -> dict[str, Any]:
    """trackintel on a device sample of the day, and our detector on the same sample."""
    import numpy as np
    import pandas as pd

    from near_assets.science import accuracy
    from near_assets.science.home import infer_homes
    from near_assets.science.stays import detect_stays

    if not Path(python).exists():
        return {
            "skipped": f"no trackintel interpreter at {python}: uv venv /tmp/ti && "
            "uv pip install --python /tmp/ti trackintel==1.4.2 pandas pyarrow"
        }
    clean = lake.read_parquet(f"work/clean_pings/date={DAY}")
    ids = np.random.default_rng(seed).choice(clean["device_id"].unique(), devices, replace=False)
    sample = clean[clean["device_id"].isin(ids)].reset_index(drop=True)
    truth = lake.read_parquet(f"truth/stays/date={DAY}")
    truth_homes = lake.read_parquet("truth/homes")
    with tempfile.TemporaryDirectory() as tmp:
        src, sp_out, home_out, script = (
            f"{tmp}/{n}" for n in ("pings.parquet", "sp.parquet", "home.parquet", "ti.py")
        )
        sample.to_parquet(src)
        Path(script).write_text(TRACKINTEL_SCRIPT)
        done = subprocess.run(
            [python, script, src, sp_out, home_out], capture_output=True, text=True, check=False
        )
        if done.returncode:
            return {"error": done.stderr[-2000:]}
        ti_run = json.loads(done.stdout.strip().splitlines()[-1])
        ti_sp = pd.read_parquet(sp_out)
        ti_home = pd.read_parquet(home_out)
    detect_stays(sample.head(100))  # compile (or load the numba cache) before timing
    t = time.perf_counter()
    ours = detect_stays(sample)
    ours_s = time.perf_counter() - t
    ours_home = infer_homes(ours)
    obs = sample[["device_id", "ts"]]
    ti_sp["start_ts"] = pd.to_datetime(ti_sp["start_ts"], utc=True)
    ti_sp["end_ts"] = pd.to_datetime(ti_sp["end_ts"], utc=True)
    ti_pps = len(sample) / ti_run["staypoints_s"]
    ours_pps = len(sample) / ours_s
    return {
        "sample_devices": devices,
        "sample_pings": len(sample),
        "trackintel_staypoints_s": round(ti_run["staypoints_s"], 2),
        "trackintel_pings_per_s": round(ti_pps),
        "trackintel_stays": accuracy.stay_accuracy(ti_sp, truth, DAY, 150, 300, obs),
        "trackintel_home": accuracy.home_accuracy(ti_home, truth_homes, ids),
        "ours_pings_per_s": round(ours_pps),
        "ours_stays": accuracy.stay_accuracy(ours, truth, DAY, 150, 300, obs),
        "ours_home": accuracy.home_accuracy(ours_home, truth_homes, ids),
        "speed_ratio": round(ours_pps / ti_pps, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2.5e6,10e6", help="pings per day, comma-separated")
    parser.add_argument("--engines", default="pandas,spark")
    parser.add_argument("--root", default="/tmp/near_bench", help="where the bench lakes live")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--spark-buckets", default="auto", help="apply_by_device --buckets: auto, N, 0 = per device"
    )
    parser.add_argument("--no-trackintel", action="store_true", help="skip the trackintel run")
    parser.add_argument("--trackintel-python", default="/tmp/ti/bin/python")
    parser.add_argument("--trackintel-devices", type=int, default=200)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="pandas", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(chain(args.child, args.engine, args.master, args.spark_buckets)))
        return 0
    report: dict[str, Any] = {}
    for size in (float(s) for s in args.sizes.split(",")):
        lake, info = lake_for(Path(args.root), size, args.seed)
        label = f"{size / 1e6:g}M"
        print(f"== {label} pings/day: {info}", flush=True)
        report[label] = {"lake": info}
        for engine in filter(None, args.engines.split(",")):
            result = run_child(lake, engine, args.master, args.spark_buckets)
            report[label][engine] = result
            print(json.dumps(result), flush=True)
        if not args.no_trackintel and label == f"{float(args.sizes.split(',')[0]) / 1e6:g}M":
            ti = trackintel(lake, args.trackintel_python, args.trackintel_devices, args.seed)
            report[label]["trackintel"] = ti
            print(json.dumps({"trackintel": ti}, default=str), flush=True)
    Path(args.root, "report.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
