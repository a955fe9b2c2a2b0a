"""Signup -> decision latency of the running platform, as a user runs it.

Starts ``dagster dev`` (webserver + daemon, own process group) on a temporary ``DAGSTER_HOME``
with the repo's ``dagster.yaml``, a temporary lake and a private embedded Redis, or attaches to a
running platform (``--attach``: uses ``REDIS_URL`` / the embedded Redis and ``DAGSTER_HOME``).
Pushes signups at ``--rate`` per second for ``--duration`` seconds, a ``--malformed`` share of
them broken, then waits for every decision and dead letter and prints p50 / p95 / max latency,
lost, duplicated and dead-lettered counts, plus where the time went per run (from the instance's
run events). Latency is measured on Redis' own clock: decision entry id minus signup entry id.

    uv run python bench/signup_latency.py --rate 0.1 --duration 120
    uv run python bench/signup_latency.py --rate 2 --duration 180
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resources.redis_store import stop_redis_server  # noqa: E402

INDUSTRIES = ["construction", "retail", "software", "restaurant", "healthcare", "transport"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_signup(rng: random.Random, i: int, malformed: bool) -> dict[str, str]:
    revenue = round(rng.lognormvariate(12.5, 0.9), 2)
    payload = {
        "business_name": f"Business {i}",
        "industry": rng.choice(INDUSTRIES),
        "years_in_business": round(rng.expovariate(1 / 6), 1),
        "annual_revenue": revenue,
        "requested_amount": round(revenue * rng.uniform(0.02, 0.4), 2),
        "country": "US",
    }
    if not malformed:
        return {"user_id": f"bench-{i}", "payload": json.dumps(payload)}
    kind = i % 3
    if kind == 0:
        return {"payload": json.dumps(payload)}
    if kind == 1:
        return {"user_id": f"bench-{i}", "payload": "{broken"}
    return {"user_id": f"bench-{i}", "payload": json.dumps({**payload, "annual_revenue": "lots"})}


def ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Platform:
    """``dagster dev`` in its own process group, on temporary state."""

    def __init__(self, workspace: str | None, keep: bool) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="signup-bench-"))
        self.home = self.tmp / "dagster_home"
        self.home.mkdir()
        shutil.copy(REPO / "dagster.yaml", self.home / "dagster.yaml")
        self.redis_dir = self.tmp / "redis"
        self.redis_port = free_port()
        self.keep = keep
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "LAKE_ROOT": str(self.tmp / "lake"),
            "EMBEDDED_REDIS_PORT": str(self.redis_port),
            "EMBEDDED_REDIS_DIR": str(self.redis_dir),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("REDIS_URL", None)
        cmd = [str(Path(sys.executable).with_name("dagster")), "dev", "-p", str(free_port())]
        cmd += ["-w", workspace or str(REPO / "workspace.yaml")]
        self.log = open(self.tmp / "dagster-dev.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def redis_client(self) -> redis.Redis:
        from resources.redis_store import start_redis_server

        start_redis_server(self.redis_port, self.redis_dir)
        return redis.Redis(port=self.redis_port, decode_responses=True)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        stop_redis_server(self.redis_dir)
        self.log.close()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def wait_decided(client: redis.Redis, ids: set[str], dead: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        decided = {f["signup_id"] for _, f in client.xrange("decisions")}
        dead_now = {f["signup_id"] for _, f in client.xrange("signups:dead")}
        if ids <= decided and dead <= dead_now:
            return
        time.sleep(0.5)


def breakdown(home: str, signup_ms: dict[str, int]) -> list[str]:
    """Per-run phases from the instance's event log (seconds)."""
    os.environ["DAGSTER_HOME"] = home
    import dagster as dg

    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="onboarding"))
    phases: dict[str, list[float]] = {k: [] for k in ("tick", "queue", "launch", "init", "steps")}
    sizes = []
    for run in runs:
        times = {}
        for rec in instance.get_records_for_run(run.run_id).records:
            ev = rec.event_log_entry
            name = ev.dagster_event.event_type_value if ev.dagster_event else None
            if name and name not in times:
                times[name] = ev.timestamp
            if name == "STEP_START" and "first_step" not in times:
                times["first_step"] = ev.timestamp
        batch = run.tags.get("onboarding/batch")
        if not batch or batch not in signup_ms or "PIPELINE_ENQUEUED" not in times:
            continue
        sizes.append(int(run.tags.get("onboarding/size", 1)))
        enq = times["PIPELINE_ENQUEUED"]
        phases["tick"].append(enq - signup_ms[batch] / 1000)
        phases["queue"].append(times.get("PIPELINE_STARTING", enq) - enq)
        started = times.get("PIPELINE_START", enq)
        phases["launch"].append(started - times.get("PIPELINE_STARTING", enq))
        phases["init"].append(times.get("first_step", started) - started)
        phases["steps"].append(
            times.get("PIPELINE_SUCCESS", times.get("first_step", enq))
            - times.get("first_step", enq)
        )
    lines = [
        f"onboarding runs: {len(sizes)}, applicants per run mean {statistics.fmean(sizes):.1f}"
        f" max {max(sizes)}"
        if sizes
        else "onboarding runs: 0"
    ]
    labels = {
        "tick": "first signup of batch -> run enqueued (sensor wait + tick + submit)",
        "queue": "enqueued -> launched (run queue dequeue)",
        "launch": "launched -> run worker started (process spawn + imports)",
        "init": "run worker started -> first step (plan, resources)",
        "steps": "first step -> run success (6 steps, in-process)",
    }
    for key, label in labels.items():
        v = phases[key]
        if v:
            lines.append(
                f"  {label}: mean {statistics.fmean(v):.2f}s p95 {pct(v, 0.95):.2f}s max {max(v):.2f}s"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=0.1, help="signups per second")
    ap.add_argument("--duration", type=float, default=120, help="seconds of pushing")
    ap.add_argument("--malformed", type=float, default=0.1, help="share of malformed signups")
    ap.add_argument("--attach", action="store_true", help="use a running platform")
    ap.add_argument("--workspace", help="workspace.yaml (default: the repo's)")
    ap.add_argument("--drain-timeout", type=float, default=120)
    ap.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    platform = None
    try:
        if args.attach:
            from resources.redis_store import RedisResource

            client = RedisResource.from_env().get_client()
            home = os.environ.get("DAGSTER_HOME", "")
        else:
            platform = Platform(args.workspace, args.keep)
            client = platform.redis_client()
            home = str(platform.home)
        rng = random.Random(args.seed)
        print("warming up: one signup, waiting for its decision ...", flush=True)
        t0 = time.monotonic()
        warm = client.xadd("signups", make_signup(rng, -1, False))
        wait_decided(client, {warm}, set(), 300)
        print(f"platform ready after {time.monotonic() - t0:.1f}s", flush=True)
        valid, malformed = set(), set()
        n = round(args.rate * args.duration)
        start = time.monotonic()
        for i in range(n):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            bad = rng.random() < args.malformed
            sid = client.xadd("signups", make_signup(rng, i, bad))
            (malformed if bad else valid).add(sid)
        print(f"pushed {n} signups in {time.monotonic() - start:.1f}s; draining ...", flush=True)
        wait_decided(client, valid, malformed, args.drain_timeout)

        decisions = [(eid, f) for eid, f in client.xrange("decisions")]
        per_signup = Counter(f["signup_id"] for _, f in decisions)
        first = {}
        for eid, f in decisions:
            first.setdefault(f["signup_id"], eid)
        lat = [(ms(first[s]) - ms(s)) / 1000 for s in valid if s in first]
        dead = Counter(f["signup_id"] for _, f in client.xrange("signups:dead"))
        outcomes = Counter(f["decision"] for eid, f in decisions if f["signup_id"] in valid)
        print(f"\nrate {args.rate}/s for {args.duration:.0f}s, malformed share {args.malformed}")
        print(f"valid {len(valid)}  malformed {len(malformed)}  outcomes {dict(outcomes)}")
        print(
            f"latency signup->decision: p50 {pct(lat, 0.5):.2f}s  p95 {pct(lat, 0.95):.2f}s  "
            f"max {max(lat, default=float('nan')):.2f}s  mean "
            f"{statistics.fmean(lat) if lat else float('nan'):.2f}s"
        )
        print(
            f"lost {sum(1 for s in valid if s not in per_signup)}  "
            f"duplicated {sum(c - 1 for c in per_signup.values() if c > 1)}  "
            f"dead-lettered {sum(1 for s in malformed if s in dead)}/{len(malformed)}  "
            f"dead-letter duplicates {sum(c - 1 for c in dead.values() if c > 1)}  "
            f"decisions for malformed {sum(1 for s in malformed if s in per_signup)}"
        )
        if home:
            signup_ms = {s: ms(s) for s in valid | {warm}}
            for line in breakdown(home, signup_ms):
                print(line)
    finally:
        if platform:
            platform.stop()


if __name__ == "__main__":
    main()
