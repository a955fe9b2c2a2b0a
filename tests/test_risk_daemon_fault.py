"""Fault test: the daemon is killed (SIGKILL, whole process group) in the middle of a stream of
signups and started again on the same instance; every valid signup gets exactly one decision
and every malformed one exactly one dead letter. Then the instance is thrown away
(a fresh ``DAGSTER_HOME``) and nothing is replayed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = {
    "business_name": "Acme",
    "industry": "retail",
    "years_in_business": 3,
    "annual_revenue": 400000,
    "requested_amount": 20000,
    "country": "US",
}


def start_daemon(home: Path, env: dict, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("dagster-daemon")
    return subprocess.Popen(
        [str(exe), "run", "-m", "risk_assets.definitions"],
        cwd=REPO,
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    proc.wait(30)


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def decided(client: redis.Redis) -> Counter:
    return Counter(f["signup_id"] for _, f in client.xrange("decisions"))


def dead(client: redis.Redis) -> Counter:
    return Counter(f["signup_id"] for _, f in client.xrange("signups:dead"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_daemon_killed_mid_stream_decides_each_signup_exactly_once(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "LAKE_ROOT": str(tmp_path / "lake"),
        "ONBOARDING_STALL_SECONDS": "10",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "daemon.log"
    valid, malformed = [], []

    def push(i: int) -> None:
        if i % 5 == 4:
            malformed.append(redis_client.xadd("signups", {"user_id": f"u{i}", "payload": "{"}))
        else:
            fields = {"user_id": f"u{i}", "payload": json.dumps(PAYLOAD)}
            valid.append(redis_client.xadd("signups", fields))

    daemon = start_daemon(home, env, log)
    try:
        for i in range(10):
            push(i)
        assert wait_for(lambda: decided(redis_client), 300), log.read_text()[-3000:]
        for i in range(10, 20):
            push(i)
            time.sleep(0.2)
        # kill while signups are in flight: delivered to the sensor, run requested, undecided
        in_flight = lambda: redis_client.xpending("signups", "onboarding")["pending"] > 0  # noqa: E731
        assert wait_for(in_flight, 300), log.read_text()[-3000:]
        kill_group(daemon)
        for i in range(20, 30):
            push(i)
        daemon = start_daemon(home, env, log)
        assert wait_for(
            lambda: (
                set(valid) <= set(decided(redis_client))
                and set(malformed) <= set(dead(redis_client))
            ),
            300,
        ), log.read_text()[-3000:]
        kill_group(daemon, signal.SIGTERM)

        fresh = tmp_path / "fresh_home"
        fresh.mkdir()
        shutil.copy(REPO / "dagster.yaml", fresh / "dagster.yaml")
        daemon = start_daemon(fresh, env, log)
        push(30)
        assert wait_for(lambda: valid[-1] in decided(redis_client), 300), log.read_text()[-3000:]
    finally:
        kill_group(daemon)

    decisions, letters = decided(redis_client), dead(redis_client)
    assert set(decisions) == set(valid)
    assert all(n == 1 for n in decisions.values()), decisions
    assert set(letters) == set(malformed)
    assert all(n == 1 for n in letters.values()), letters
    assert redis_client.xpending("signups", "onboarding")["pending"] == 0
