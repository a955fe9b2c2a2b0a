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
    uv run python bench/signup_latency.py --age 1000000 --rate 0.2 --duration 40

``--age N`` ages the instance before it starts: N earlier applicants, one a second back from an
hour ago, each registered as an ``applicants`` partition (bulk SQL insert into the instance's
dynamic partitions table, the rows ``instance.add_dynamic_partitions`` writes) and decided in
Redis (``onboarding:decided:<signup id>`` guard, ``onboarding:assigned`` entry), as an instance
that has run for N seconds at 1 signup/s would hold them before anything retires them.
``--age-mode``: ``retired`` (default; the steady state of the platform, whose retire sensor
deletes decided applicants' partitions minutes after their decision: the bench runs that retire
pass, ``sensors.housekeeping.retire_partitions``, before the platform starts and prints its
time), ``live`` (the old model: every earlier applicant stays a live partition and nothing is
retired during the measurement) or ``upgrade`` (all N live when the platform starts, retired by
its sensor during the measurement).
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
from types import SimpleNamespace

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


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Platform:
    """``dagster dev`` in its own process group, on temporary state."""

    def __init__(self, workspace: str | None, keep: bool, extra_env: dict[str, str]) -> None:
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
            **extra_env,
        }
        self.env.pop("REDIS_URL", None)
        self.workspace = workspace
        self.proc: subprocess.Popen | None = None
        self.log = open(self.tmp / "dagster-dev.log", "w")  # noqa: SIM115

    def start(self) -> None:
        workspace = self.workspace
        cmd = [str(Path(sys.executable).with_name("dagster")), "dev", "-p", str(free_port())]
        cmd += ["-w", workspace or str(REPO / "workspace.yaml")]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def cpu_seconds(self) -> float:
        """CPU time of the platform's processes (webserver, daemon, code servers, warm parents
        and the run workers they reaped), a figure that does not depend on the machine's load."""
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> Counter:
        """CPU seconds per kind of platform process (see :meth:`cpu_seconds`)."""
        import psutil

        out: Counter = Counter()
        if self.proc is None:
            return out
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return out
        for proc in procs:
            try:
                t = proc.cpu_times()
                cmd = " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            kind = next(
                (
                    label
                    for needle, label in (
                        ("warm_worker", "warm parent + run workers"),
                        ("_daemon", "daemon"),
                        ("dagster_webserver", "webserver"),
                        ("near_assets", "near_assets code server + its runs"),
                        ("risk_assets", "risk_assets code server + its runs"),
                        ("api grpc", "code server + its runs"),
                        ("code-server", "code server + its runs"),
                    )
                    if needle in cmd
                ),
                "dagster dev",
            )
            out[kind] += t.user + t.system + t.children_user + t.children_system
        return out

    def redis_client(self) -> redis.Redis:
        from resources.redis_store import start_redis_server

        start_redis_server(self.redis_port, self.redis_dir)
        return redis.Redis(port=self.redis_port, decode_responses=True)

    def stop(self) -> None:
        try:
            if self.proc is None:
                raise ProcessLookupError
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


def age_instance(home: Path, client: redis.Redis, n: int, chunk: int = 50_000) -> None:
    """Register ``n`` earlier, decided applicants (see the module docstring)."""
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable

    from risk_assets.streams import ASSIGNED, DECIDED_PREFIX
    from risk_assets.validation import partition_key

    t0 = time.monotonic()
    first_ms = int(time.time() * 1000) - 3_600_000 - n * 1000
    instance = dg.DagsterInstance.get()
    storage = instance.event_log_storage
    for start in range(0, n, chunk):
        ids = [f"{first_ms + i * 1000}-0" for i in range(start, min(n, start + chunk))]
        keys = [partition_key(f"aged-{first_ms + i}", sid) for i, sid in enumerate(ids, start)]
        with storage.index_connection() as conn:
            conn.execute(
                DynamicPartitionsTable.insert(),
                [{"partitions_def_name": "applicants", "partition": k} for k in keys],
            )
        pipe = client.pipeline(transaction=False)
        pipe.mset({DECIDED_PREFIX + sid: f"{sid}" for sid in ids})
        pipe.hset(ASSIGNED, mapping={sid: f"aged-{sid}" for sid in ids})
        pipe.execute()
    instance.dispose()
    print(f"aged the instance: {n} applicants in {time.monotonic() - t0:.1f}s", flush=True)


def retire_aged(home: Path, redis_port: int) -> None:
    """The retire pass the platform's sensor makes, over every aged applicant at once."""
    import dagster as dg

    from resources.redis_store import RedisResource
    from risk_assets.definitions import RETIRE_APPLICANTS
    from sensors.housekeeping import retire_partitions

    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    t0 = time.monotonic()
    resources = SimpleNamespace(redis=RedisResource(url=f"redis://127.0.0.1:{redis_port}/0"))
    retired, kept = retire_partitions(instance, RETIRE_APPLICANTS, 0, resources=resources)
    left = len(instance.get_dynamic_partitions("applicants"))
    instance.dispose()
    print(
        f"retired {retired} aged partitions in {time.monotonic() - t0:.1f}s "
        f"(kept {kept} not done, {left} live); load average {load_average()}",
        flush=True,
    )


def seen(client: redis.Redis, stream: str, after: str) -> set[str]:
    return {f["signup_id"] for _, f in client.xrange(stream, min=f"({after}")}


def wait_decided(
    client: redis.Redis, ids: set[str], dead: set[str], timeout_s: float, after: str = "0-0"
) -> None:
    """Wait for every id's decision / dead letter (entries newer than ``after`` only)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ids <= seen(client, "decisions", after) and dead <= seen(client, "signups:dead", after):
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
        # runs of a direct lane go NOT_STARTED -> STARTING (no queue, no ENQUEUED event)
        enq = times.get("PIPELINE_ENQUEUED", times.get("PIPELINE_STARTING"))
        if not batch or batch not in signup_ms or enq is None:
            continue
        sizes.append(int(run.tags.get("onboarding/size", 1)))
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
        "tick": "first signup of batch -> run enqueued or launched (sensor wait + tick + submit)",
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
    ap.add_argument("--age", type=int, default=0, help="earlier applicants to register first")
    ap.add_argument(
        "--age-mode",
        choices=["retired", "live", "upgrade"],
        default="retired",
        help="aged partitions: retired before start, kept live (old model), or live at start",
    )
    ap.add_argument("--idle", type=float, default=0, help="first measure idle CPU this long")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the platform")
    args = ap.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    if args.age and args.age_mode == "live":
        extra_env["PLATFORM_RETIRE_AFTER_SECONDS"] = "-1"

    platform = None
    try:
        if args.attach:
            from resources.redis_store import RedisResource

            client = RedisResource.from_env().get_client()
            home = os.environ.get("DAGSTER_HOME", "")
        else:
            platform = Platform(args.workspace, args.keep, extra_env)
            client = platform.redis_client()
            home = str(platform.home)
            if args.age:
                age_instance(platform.home, client, args.age)
                if args.age_mode == "retired":
                    retire_aged(platform.home, platform.redis_port)
            platform.start()
        rng = random.Random(args.seed)
        print("warming up: one signup, waiting for its decision ...", flush=True)
        t0 = time.monotonic()
        last = (
            client.xinfo_stream("decisions")["last-generated-id"]
            if client.exists("decisions")
            else "0-0"
        )
        warm = client.xadd("signups", make_signup(rng, -1, False))
        wait_decided(client, {warm}, set(), 300, last)
        print(f"platform ready after {time.monotonic() - t0:.1f}s", flush=True)
        if platform and args.idle > 0:
            idle0 = platform.cpu_by_process()
            time.sleep(args.idle)
            idle = platform.cpu_by_process()
            idle.subtract(idle0)
            print(
                f"idle platform over {args.idle:.0f}s: {sum(idle.values()) / args.idle:.2f} "
                "CPU-s/s: " + ", ".join(f"{k} {v:.1f}" for k, v in idle.most_common()),
                flush=True,
            )
        valid, malformed = set(), set()
        n = round(args.rate * args.duration)
        cpu0 = platform.cpu_by_process() if platform else Counter()
        start = time.monotonic()
        for i in range(n):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            bad = rng.random() < args.malformed
            sid = client.xadd("signups", make_signup(rng, i, bad))
            (malformed if bad else valid).add(sid)
        print(f"pushed {n} signups in {time.monotonic() - start:.1f}s; draining ...", flush=True)
        wait_decided(client, valid, malformed, args.drain_timeout, last)
        drained = time.monotonic() - start
        cpu_by = platform.cpu_by_process() if platform else Counter()
        cpu_by.subtract(cpu0)
        cpu = sum(cpu_by.values()) if platform else float("nan")

        decisions = [(eid, f) for eid, f in client.xrange("decisions", min=f"({last}")]
        per_signup = Counter(f["signup_id"] for _, f in decisions)
        first = {}
        for eid, f in decisions:
            first.setdefault(f["signup_id"], eid)
        lat = [(ms(first[s]) - ms(s)) / 1000 for s in valid if s in first]
        dead = Counter(f["signup_id"] for _, f in client.xrange("signups:dead", min=f"({last}"))
        outcomes = Counter(f["decision"] for eid, f in decisions if f["signup_id"] in valid)
        print(f"\nrate {args.rate}/s for {args.duration:.0f}s, malformed share {args.malformed}")
        print(f"valid {len(valid)}  malformed {len(malformed)}  outcomes {dict(outcomes)}")
        print(
            f"first push -> last decision: {drained:.1f}s "
            f"({len(valid) / drained:.1f} signups/s); load average {load_average()}"
        )
        print(
            f"platform CPU over that time: {cpu:.1f} CPU-s, "
            f"{1000 * cpu / max(1, len(valid) + len(malformed)):.0f} CPU-ms per signup "
            "(all its processes; idle loops included): "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu_by.most_common())
        )
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
