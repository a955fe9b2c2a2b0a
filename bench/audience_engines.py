"""Cost of ``audience_estimates`` per engine on one generated day, through the Dagster CLI.

Generates one day of ``--pings`` pings (default profile, with dirt; ``bench/scale.py``'s
generator, reused when the folder holds it), runs the upstream chain once with the pandas
engine (``raw_pings`` .. ``demographics``), then, for each engine, copies that lake and runs::

    dagster asset materialize -m near_assets.definitions --select audience_estimates --partition D

with ``NEAR_ENGINE=<engine>``, sampling the process tree (``bench/scale.py``'s ``TreeSampler``).
Prints per engine: the step's wall seconds, CPU-seconds per million raw pings inside the step
(split Dagster processes / Spark driver + JVM + Python workers), peak RSS of the Dagster run
process and of the Spark driver, the engine the step reports, the load average before and after,
the accuracy figures against the generator's truth (``score_against_truth``), and whether both
engines published the same estimates (keys and counts exact, ``std_error`` within 1e-9)::

    nice -n 10 uv run python bench/audience_engines.py --pings 2e6

Measured 2026-12-01 (2 shared cores, load 14-35; CPU-s per million raw pings inside the step):
2.01 M pings: Spark 36.2 (72.8 CPU-s), pandas 2.4, pandas before the stratified kernel 16.0;
4.02 M pings: Spark 20.4 (82.1 CPU-s), pandas 2.6, before 11.1. Spark is ~63 CPU-s per job
(JVM, ~20 small Spark jobs) plus ~4.6 CPU-s per million pings; its run process peaks at
0.36 GiB at both sizes (pandas: 0.80 / 1.20 GiB). Same estimates on both engines.
"""

from __future__ import annotations

import argparse
import contextlib
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
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402  (bench/scale.py: generator, sampler, event reader)

UPSTREAM = "raw_pings,clean_pings,stay_points,visits,home_ping_hours,home_location,demographics"


def env_for(folder: Path, engine: str, master: str, port: int) -> dict[str, str]:
    home = folder / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LAKE_ROOT": str(folder / "lake"),
        "NEAR_ENGINE": engine,
        "SPARK_MASTER": master,
        "EMBEDDED_REDIS_PORT": str(port),
        "EMBEDDED_REDIS_DIR": str(folder / "redis"),
        "LAKE_START_DATE": os.environ.get("LAKE_START_DATE", "2024-01-01"),
        "PYTHONWARNINGS": "ignore",
    }
    for var in ("LAKE_BUCKET", "LAKE_PREFIX", "REDIS_URL", "EMR_CLUSTER_ID"):
        env.pop(var, None)
    return env


def stop_redis(port: int) -> None:
    """Stop the embedded Redis the run started (ours: its own port)."""
    import redis

    with contextlib.suppress(redis.RedisError):
        redis.Redis(port=port, socket_timeout=2).shutdown(nosave=True)


def materialize(select: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m"]
    cmd += ["near_assets.definitions", "--select", select, "--partition", scale.DAY]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def upstream(base: Path, master: str, port: int) -> None:
    """The chain up to ``demographics`` once, with pandas (marker ``upstream.done``)."""
    if (base / "upstream.done").exists():
        return
    env = env_for(base, "pandas", master, port)
    t0 = time.perf_counter()
    proc = materialize(UPSTREAM, env, base / "upstream.log")
    code = proc.wait()
    stop_redis(port)
    if code != 0:
        raise SystemExit(f"upstream chain failed: see {base / 'upstream.log'}")
    (base / "upstream.done").write_text(f"{time.perf_counter() - t0:.1f}\n")


def run_engine(engine: str, base: Path, work: Path, pings: int, master: str, port: int) -> dict:
    folder = work / engine
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(base / "lake", folder / "lake")
    env = env_for(folder, engine, master, port)
    before = scale.load()
    proc = materialize("audience_estimates", env, folder / "run.log")
    sampler = scale.TreeSampler(proc.pid)
    sampler.start()
    code = proc.wait()
    sampler.stop()
    stop_redis(port)
    after = scale.load()
    status, steps = scale.step_events(folder / "dagster_home")
    step = steps.get("audience_estimates", {})
    start, end = step.get("start", 0.0), step.get("end", 0.0)
    cpu: dict[str, float] = defaultdict(float)
    for t, delta in sampler.samples:
        if start <= t <= end + sampler.interval_s:
            for kind, s in delta.items():
                cpu[kind] += s
    rss: dict[str, int] = defaultdict(int)
    for t, peaks in sampler.rss_at:
        if start <= t <= end:
            for kind, b in peaks.items():
                rss[kind] = max(rss[kind], b)
    per_m = {k: round(v / (pings / 1e6), 2) for k, v in cpu.items() if v}
    return {
        "engine": engine,
        "exit": code,
        "status": status,
        "reported_engine": step.get("engine"),
        "wall_s": round(end - start, 1) if end else None,
        "cpu_s": round(sum(cpu.values()), 1),
        "cpu_s_per_m_pings": round(sum(cpu.values()) / (pings / 1e6), 2),
        "cpu_s_per_m_by_kind": per_m,
        "peak_rss_run_process_gib": round(rss.get("dagster", 0) / 2**30, 3),
        "peak_rss_spark_driver_gib": round(
            (rss.get("spark driver", 0) + rss.get("spark JVM", 0)) / 2**30, 3
        ),
        "load_before": before,
        "load_after": after,
        "lake": str(folder / "lake"),
    }


def published(lake: str) -> Any:
    import pandas as pd

    from near_assets.tables import AUDIENCE_ESTIMATES
    from resources.lake import LakeResource

    df = AUDIENCE_ESTIMATES.read(LakeResource(root=lake), scale.DAY)
    return df.sort_values("poi_id", ignore_index=True) if len(df) else pd.DataFrame()


def accuracy(lake: str) -> dict[str, Any]:
    from near_assets.science.audience import score_against_truth
    from near_assets.tables import TRUTH_POI_VISITORS
    from resources.lake import LakeResource

    truth = TRUTH_POI_VISITORS.read(LakeResource(root=lake), scale.DAY)
    return {k: round(v, 3) for k, v in score_against_truth(published(lake), truth, 30).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=float, default=2e6)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--engines", default="spark,pandas")
    ap.add_argument("--root", default="/tmp/bench-audience")
    ap.add_argument("--master", default=os.environ.get("SPARK_MASTER", "local[*]"))
    ap.add_argument("--redis-port", type=int, default=6417)
    args = ap.parse_args()
    base = Path(args.root) / f"day_{int(args.pings)}_{args.seed}"
    info = scale.generate_day(base, args.pings, args.seed)
    upstream(base, args.master, args.redis_port)
    pings = info["raw_pings"]
    print(f"day {scale.DAY}: {pings:,} raw pings, {info['devices']:,} devices", flush=True)
    results = []
    for engine in args.engines.split(","):
        result = run_engine(
            engine, base, Path(args.root) / "runs", pings, args.master, args.redis_port
        )
        result["accuracy"] = accuracy(result["lake"])
        results.append(result)
        print(json.dumps(result), flush=True)
    if len(results) == 2:
        import numpy as np

        a, b = (published(r["lake"]) for r in results)
        counts = ["poi_id", "visitors", "estimate", "estimate_low", "estimate_high"]
        same = len(a) == len(b) and a[counts].equals(b[counts])
        close = same and bool(np.allclose(a["std_error"], b["std_error"], rtol=1e-9))
        print(json.dumps({"same_estimates": same, "std_error_close": close, "rows": len(a)}))


if __name__ == "__main__":
    main()
