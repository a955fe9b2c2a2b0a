"""The whole location chain of one generated day through the Dagster CLI, per engine and step.

Generates one day of ``--pings`` pings with the generator (default profile, with dirt; reused
when the folder already holds it), then, for each engine (``NEAR_ENGINE=spark`` and
``NEAR_ENGINE=pandas``), copies that lake to its own folder, gives the run its own
``DAGSTER_HOME`` and embedded Redis, and runs what a user would run::

    dagster asset materialize -m near_assets.definitions \\
        --select raw_pings,clean_pings,stay_points,visits,home_ping_hours,home_location,\\
demographics,brand_affinity,audience_estimates --partition D

While the run goes, the process tree of that command is sampled every 0.2 s with psutil: CPU
times and RSS of the Dagster processes (the CLI run process and its step processes), the Spark
job drivers (the Pipes ``spark_jobs`` Python processes and their JVMs) and the PySpark Python
workers. Per step it prints wall seconds (STEP_START -> STEP_SUCCESS/FAILURE from the run's
event log in the instance), CPU-seconds per million raw pings (CPU of every sampled process,
attributed to the steps running at that instant, split evenly when steps overlap), the peak RSS
of the Dagster run process (the largest single Dagster process) and of the Spark driver
(driver Python + JVM), and the ``engine`` the step reports in its materialization metadata.
Then the whole chain's CPU-microseconds per ping and the EMR cost of a billion-ping day from
``deploy/emr/cost.py`` (cluster.json), the load average before and after each run, and a
spark-vs-pandas line per step.

Time here (2 shared cores, load average 5-13), measured on 2 M pings: generating ~2.5 s per
million pings; the chain ~2.5-4.5 min per million pings on Spark (318-548 s for 2 M, much of it
fixed: step processes, JVM start-up) and ~1.8 min on pandas (211 s). A 50 M-ping day is for a
big machine::

    uv run python bench/scale.py                       # 2 M pings, both engines
    uv run python bench/scale.py --pings 50e6 --engines spark
    uv run python bench/scale.py --pings 4e6 --engines spark --select mobility   # up to homes
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
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = "2024-03-04"
PINGS_PER_DEVICE_DAY = 186.0  # default profile (bench/near_throughput.py): ~186 raw pings a day
CHAIN = (
    "raw_pings",
    "clean_pings",
    "stay_points",
    "visits",
    "home_ping_hours",
    "home_location",
    "demographics",
    "brand_affinity",
    "audience_estimates",
)
KINDS = ("dagster", "spark driver", "spark JVM", "pyspark workers", "other")
OUTSIDE = "(outside steps)"


def classify(name: str, cmdline: list[str]) -> str:
    """Which part of the run a process of the tree is."""
    cmd = " ".join(cmdline)
    if "java" in name:
        return "spark JVM"
    if "pyspark.daemon" in cmd or "pyspark/worker" in cmd or "pyspark.worker" in cmd:
        return "pyspark workers"
    if "spark_jobs" in cmd:
        return "spark driver"
    if "python" in name or "dagster" in name:
        return "dagster"
    return "other"  # e.g. the embedded redis-server


class TreeSampler:
    """Samples CPU times and RSS of ``pid`` and its descendants every ``interval_s``.

    ``samples``: (time, {kind: CPU-seconds since the previous sample}); ``peak``: per kind the
    largest single-process RSS; ``peak_driver``: largest (driver Python + JVMs) RSS at one time;
    ``rss_at``: (time, {kind: largest single RSS}) to attribute peaks to steps.
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.cpu: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.rss_at: list[tuple[float, dict[str, int]]] = []
        self.peak: dict[str, int] = defaultdict(int)
        self.peak_driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        now = time.time()
        delta: dict[str, float] = defaultdict(float)
        rss: dict[str, int] = defaultdict(int)
        driver = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    # again each time: spark-submit's shell script execs the JVM (same pid)
                    if self.kind.get(proc.pid, "other") in ("other", "dagster"):
                        self.kind[proc.pid] = classify(proc.name(), proc.cmdline())
                    t = proc.cpu_times()
                    mem = proc.memory_info().rss
            except psutil.Error:
                continue
            kind = self.kind[proc.pid]
            total = t.user + t.system + t.children_user + t.children_system
            delta[kind] += max(0.0, total - self.cpu.get(proc.pid, 0.0))
            self.cpu[proc.pid] = total
            rss[kind] = max(rss[kind], mem)
            self.peak[kind] = max(self.peak[kind], mem)
            if kind in ("spark driver", "spark JVM"):
                driver += mem
        self.peak_driver = max(self.peak_driver, driver)
        self.samples.append((now, dict(delta)))
        self.rss_at.append((now, dict(rss)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def load_cost_model() -> Any:
    """``deploy/emr/cost.py`` by path (``deploy/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("emr_cost", ROOT / "deploy/emr/cost.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_day(folder: Path, pings: float, seed: int) -> dict[str, Any]:
    """One generated day in ``folder/lake`` (reused when ``folder/bench.json`` says so)."""
    from near_assets.synth import generate
    from resources.lake import LakeResource

    info_path = folder / "bench.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    lake = LakeResource(root=str(folder / "lake"))
    devices = max(1, round(pings / PINGS_PER_DEVICE_DAY))
    t0 = time.perf_counter()
    summary = generate(lake, seed=seed, devices=devices, start=DAY, days=1, progress=False)
    info = {
        "devices": devices,
        "raw_pings": int(summary["pings"]),
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    info_path.write_text(json.dumps(info))
    return info


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def step_events(home: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """(run status, per step: start, end, status, engine) from the instance in ``home``."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    runs = instance.get_runs(limit=1)
    if not runs:
        return "no run", {}
    run = runs[0]
    steps: dict[str, dict[str, Any]] = defaultdict(dict)
    kinds = {
        dg.DagsterEventType.STEP_START: "start",
        dg.DagsterEventType.STEP_SUCCESS: "success",
        dg.DagsterEventType.STEP_FAILURE: "failure",
        dg.DagsterEventType.ASSET_MATERIALIZATION: "materialization",
    }
    for event_type, what in kinds.items():
        records = instance.get_records_for_run(run.run_id, of_type=event_type, limit=10_000)
        for record in records.records:
            entry = record.event_log_entry
            step = entry.step_key or "?"
            if what == "start":
                steps[step]["start"] = entry.timestamp
            elif what in ("success", "failure"):
                steps[step]["end"] = entry.timestamp
                steps[step]["status"] = what
            else:
                mat = entry.asset_materialization
                meta = mat.metadata if mat else {}
                engine = meta.get("engine")
                steps[step]["engine"] = getattr(engine, "value", engine) or "-"
    instance.dispose()
    return run.status.value, dict(steps)


def run_engine(
    engine: str,
    src: Path,
    work: Path,
    pings: int,
    master: str,
    redis_port: int,
    select: tuple[str, ...] = CHAIN,
    driver_memory: str = "2g",
) -> dict[str, Any]:
    """The chain on ``engine`` through the CLI, on a copy of the lake; figures per step."""
    import redis

    folder = work / engine
    if folder.exists():
        shutil.rmtree(folder)
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    shutil.copytree(src / "lake", folder / "lake")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LAKE_ROOT": str(folder / "lake"),
        "NEAR_ENGINE": engine,
        "SPARK_MASTER": master,
        "SPARK_DRIVER_MEMORY": driver_memory,
        "EMBEDDED_REDIS_PORT": str(redis_port),
        "EMBEDDED_REDIS_DIR": str(folder / "redis"),
        "LAKE_START_DATE": os.environ.get("LAKE_START_DATE", "2024-01-01"),
        "PYTHONWARNINGS": "ignore",
    }
    for var in ("LAKE_BUCKET", "LAKE_PREFIX", "REDIS_URL", "EMR_CLUSTER_ID"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        "near_assets.definitions",
        "--select",
        ",".join(select),
        "--partition",
        DAY,
    ]
    load_before = load()
    log = (folder / "run.log").open("w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    code = proc.wait()
    sampler.stop()
    wall = time.time() - t0
    log.close()
    load_after = load()
    with contextlib.suppress(redis.RedisError):  # the embedded Redis the run started (ours)
        redis.Redis(port=redis_port, socket_timeout=2).shutdown(nosave=True)
    status, steps = step_events(home)

    cpu: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t, delta in sampler.samples:
        active = [s for s, e in steps.items() if e.get("start", 1e99) <= t <= e.get("end", 1e99)]
        for kind, seconds in delta.items():
            for step in active or [OUTSIDE]:
                cpu[step][kind] += seconds / max(1, len(active))
    peak_step: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t, rss in sampler.rss_at:
        for step, e in steps.items():
            if e.get("start", 1e99) <= t <= e.get("end", 1e99):
                for kind, mem in rss.items():
                    peak_step[step][kind] = max(peak_step[step][kind], mem)
    return {
        "engine": engine,
        "exit_code": code,
        "run_status": status,
        "wall_s": wall,
        "steps": steps,
        "cpu": {k: dict(v) for k, v in cpu.items()},
        "peak_step": {k: dict(v) for k, v in peak_step.items()},
        "peak": dict(sampler.peak),
        "peak_driver": sampler.peak_driver,
        "load_before": load_before,
        "load_after": load_after,
        "log": str(folder / "run.log"),
        "pings": pings,
    }


def short(step: str) -> str:
    """``visits_visits_accuracy`` (an evaluation check's step) -> ``check visits_accuracy``."""
    asset = next((a for a in CHAIN if step.startswith(f"{a}_{a}_")), None)
    return f"check {step[len(asset) + 1 :]}" if asset else step


def gib(n: float) -> str:
    return f"{n / 2**30:5.2f}" if n else "    -"


def report(result: dict[str, Any], cost_model: Any) -> dict[str, float]:
    """Prints one engine's table; returns CPU-seconds per million pings per step."""
    per_m = 1e6 / max(result["pings"], 1)
    print(
        f"\n== NEAR_ENGINE={result['engine']}: exit {result['exit_code']}, run "
        f"{result['run_status']}, wall {result['wall_s']:.0f} s; load average before "
        f"{result['load_before']}, after {result['load_after']} (log {result['log']})"
    )
    head = (
        f"{'step':<28}{'engine':>8}{'status':>9}{'wall s':>9}{'CPU-s/M':>9}{'dagster':>9}"
        f"{'spark':>8}{'other':>7}{'RSS run':>9}{'RSS drv':>9}{'RSS JVM':>9}"
    )
    print(head + "\n" + " " * 63 + "(CPU-s/M split)           (peak GiB)")
    per_step: dict[str, float] = {}
    order = sorted(result["steps"], key=lambda s: result["steps"][s].get("start", 0))
    for step in [*order, OUTSIDE]:
        e = result["steps"].get(step, {})
        kinds = result["cpu"].get(step, {})
        total = sum(kinds.values()) * per_m
        if step == OUTSIDE and not total:
            continue
        spark = sum(v for k, v in kinds.items() if k not in ("dagster", "other")) * per_m
        wall = e["end"] - e["start"] if "end" in e and "start" in e else float("nan")
        peak = result["peak_step"].get(step, {})
        per_step[step] = total
        print(
            f"{short(step):<28}{e.get('engine', '-'):>8}{e.get('status', '-'):>9}{wall:9.1f}"
            f"{total:9.2f}{kinds.get('dagster', 0) * per_m:9.2f}{spark:8.2f}"
            f"{kinds.get('other', 0) * per_m:7.2f}"
            f"{gib(peak.get('dagster', 0)):>9}{gib(peak.get('spark driver', 0)):>9}"
            f"{gib(peak.get('spark JVM', 0)):>9}"
        )
    chain_us = sum(v for k, v in per_step.items() if k != OUTSIDE)
    all_us = sum(per_step.values())
    peak = result["peak"]
    print(
        f"whole chain: {chain_us:.2f} CPU-µs per ping in steps ({all_us:.2f} with CLI start-up"
        f" and between steps); peak RSS: Dagster run process {gib(peak.get('dagster', 0))} GiB,"
        f" Spark driver (python + JVM) {gib(result['peak_driver'])} GiB, largest JVM "
        f"{gib(peak.get('spark JVM', 0))} GiB, PySpark worker {gib(peak.get('pyspark workers', 0))}"
        " GiB"
    )
    if chain_us:
        cost = cost_model.day_cost(chain_us)
        print(
            f"EMR, a billion-ping day at {chain_us:.2f} µs/ping (deploy/emr/cost.py, cluster.json,"
            f" {cost['effective_vcpus']} vCPUs): {cost['cpu_seconds']:,} CPU-s, "
            f"{cost['cluster_minutes_working']} cluster-min working = ${cost['usd_working']}; "
            f"cluster started daily ${cost['usd_day_cluster_started_daily']}, always on "
            f"${cost['usd_day_always_on']}"
        )
    return per_step


def main() -> int:
    parser = argparse.ArgumentParser(
        description="The location chain of one generated day through `dagster asset "
        "materialize`, per engine: wall, CPU-s per M pings, peak RSS, engine per step, EMR cost "
        "of a billion-ping day. Here (2 shared cores, load 5-13, 2 M pings): ~2.5 s per M pings "
        "to generate, then ~2.5-4.5 min per M pings on Spark and ~1.8 min on pandas; a 50 M-ping "
        "day needs a big machine.",
    )
    parser.add_argument("--pings", type=float, default=2e6, help="raw pings of the day (2e6)")
    parser.add_argument("--engines", default="spark,pandas")
    parser.add_argument("--root", default="/tmp/bench-scale", help="lakes and DAGSTER_HOMEs")
    parser.add_argument("--master", default=os.environ.get("SPARK_MASTER", "local[*]"))
    parser.add_argument(
        "--driver-memory",
        default=os.environ.get("SPARK_DRIVER_MEMORY"),
        help="local Spark driver heap (SPARK_DRIVER_MEMORY; default 2g, 6g above 10 M pings)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--redis-port", type=int, default=6397, help="embedded Redis of the runs")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--select",
        default="all",
        help="'all' (the chain), 'mobility' (raw pings to home_location) or comma-separated assets",
    )
    args = parser.parse_args()
    select = {"all": CHAIN, "mobility": CHAIN[: CHAIN.index("home_location") + 1]}.get(
        args.select, tuple(a.strip() for a in args.select.split(",") if a.strip())
    )

    root = Path(args.root)
    label = f"{args.pings / 1e6:g}M"
    driver_memory = args.driver_memory or ("6g" if args.pings > 10e6 else "2g")
    print(f"load average at start: {load()}")
    info = generate_day(root / f"day-{label}", args.pings, args.seed)
    print(
        f"day {DAY}: {info['raw_pings']:,} raw pings, {info['devices']:,} devices "
        f"(generated in {info['generate_s']} s); master {args.master}, driver memory "
        f"{driver_memory}"
    )
    cost_model = load_cost_model()
    results: dict[str, dict[str, Any]] = {}
    per_step: dict[str, dict[str, float]] = {}
    for engine in args.engines.split(","):
        result = run_engine(
            engine,
            root / f"day-{label}",
            root / f"run-{label}",
            info["raw_pings"],
            args.master,
            args.redis_port,
            select,
            driver_memory,
        )
        results[engine] = result
        per_step[engine] = report(result, cost_model)
    if {"spark", "pandas"} <= set(results):
        s, p = results["spark"]["steps"], results["pandas"]["steps"]
        print("\nspark vs pandas (wall s, CPU-s per M pings):")
        for step in sorted(set(s) | set(p), key=lambda x: s.get(x, p.get(x, {})).get("start", 0)):
            walls = [
                d[step]["end"] - d[step]["start"]
                if step in d and "end" in d[step]
                else float("nan")
                for d in (s, p)
            ]
            cpus = [per_step[e].get(step, float("nan")) for e in ("spark", "pandas")]
            print(
                f"  {short(step):<28} wall {walls[0]:7.1f} vs {walls[1]:7.1f}  "
                f"CPU {cpus[0]:7.2f} vs {cpus[1]:7.2f}  "
                + (f"(x{cpus[0] / cpus[1]:.2f})" if cpus[1] >= 0.05 else "")
            )
    print(f"load average at end: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["exit_code"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
