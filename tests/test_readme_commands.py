"""The README's commands, run as written.

``test_everyday_commands`` takes every ```bash block of README.md's "Everyday commands" section
and runs each command in it, in order, exactly as written (through the shell, from the
repository root), on a temporary lake and instance: ``LAKE_ROOT`` and ``DAGSTER_HOME`` in a
temporary folder (the instance with the repository's ``dagster.yaml``, as ``scripts/dev.sh``
sets it up), ``REDIS_URL`` the tests' Redis server, ``LAKE_START_DATE=2024-01-01``. The README's
first command makes the sample lake; the month backfill, the re-run of one day, the restore, the
insights request and the daemon health check follow. A command added to the section is run
too (exit code 0 expected unless ``EXPECTED`` says otherwise).
``test_everyday_commands_cover_the_month_backfill`` (fast) checks the section still holds the
month backfill of the whole location chain and each command the slow test checks the outcome of.

``test_two_commands_exist`` checks that the two main commands name scripts that exist and parse
(``scripts/dev.sh`` starts servers: it is not run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MONTH = [f"2024-01-{d:02d}" for d in range(1, 32)]
COMMAND_TIMEOUT_S = 600

# Variables that would send the commands to real back ends (S3, Slack, EMR, a bank API).
UNSET = (
    "LAKE_BUCKET",
    "LAKE_PREFIX",
    "AWS_ENDPOINT_URL",
    "SLACK_BOT_TOKEN",
    "EMR_CLUSTER_ID",
    "EMR_SERVERLESS_APP_ID",
    "BANK_API_URL",
    "NEAR_ENGINE",
    "LAKE_TIMEZONE",
)


def section(text: str, title: str) -> str:
    """The body of the ``## <title>`` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def bash_commands(markdown: str) -> list[str]:
    """Each command of the ```bash blocks: a line plus its backslash continuations, no comments."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.M | re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line + "\n"
            if not line.rstrip().endswith("\\"):
                commands.append(pending.rstrip())
                pending = ""
        assert not pending, f"unterminated continuation in README: {pending!r}"
    return commands


@dataclass(frozen=True)
class Expected:
    exit_code: int = 0
    says: str | None = None
    """Text the command must print (stdout or stderr)."""


EXPECTED: dict[str, Expected] = {
    # No daemon heartbeats in a fresh instance: the health check must fail loudly.
    "uv run platform-health": Expected(exit_code=1, says="UNHEALTHY"),
}


def expected_for(command: str) -> Expected:
    return next((e for prefix, e in EXPECTED.items() if command.startswith(prefix)), Expected())


def run(command: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        command,
        shell=True,
        executable="/bin/bash",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    return proc, time.perf_counter() - t0


def tail(proc: subprocess.CompletedProcess, lines: int = 40) -> str:
    out = (proc.stdout + "\n" + proc.stderr).strip().splitlines()
    return "\n".join(out[-lines:])


def parquet_days(lake: Path, prefix: str) -> set[str]:
    folder = lake / prefix
    return {p.name.removeprefix("date=") for p in folder.glob("date=*") if any(p.glob("*.parquet"))}


# ---- what each kind of command must leave behind ---------------------------------------------


def after_synth(lake: Path, client: redis.Redis, out: str) -> None:
    assert parquet_days(lake, "raw/pings") >= set(MONTH), "no raw pings for January 2024"
    assert (lake / "truth").is_dir()


def after_backfill(lake: Path, client: redis.Redis, out: str) -> None:
    for table in ("stay_points", "visits", "home_location", "brand_affinity", "audience_estimates"):
        missing = sorted(set(MONTH) - parquet_days(lake, f"curated/{table}"))
        assert not missing, f"curated/{table} is missing {missing}"
    for table in ("clean_pings", "demographics"):
        missing = sorted(set(MONTH) - parquet_days(lake, f"work/{table}"))
        assert not missing, f"work/{table} is missing {missing}"
    assert client.hlen("audience:estimates") > 0


def after_rerun(lake: Path, client: redis.Redis, out: str) -> None:
    assert parquet_days(lake, "backup/audience_estimates") == {MONTH[-1]}


def after_restore(lake: Path, client: redis.Redis, out: str) -> None:
    restored = json.loads(out[out.index("{") :])
    assert restored["table"] == "audience_estimates"
    assert restored.get("redis_rows", 0) > 0, restored
    assert parquet_days(lake, "curated/audience_estimates") == set(MONTH)


def after_insights(lake: Path, client: redis.Redis, out: str) -> None:
    summaries = list((lake / "insights").glob("*/summary.json"))
    assert len(summaries) == 1, summaries
    summary = json.loads(summaries[0].read_text())
    assert summary["days"] == len(MONTH) and not summary["missing_days"], summary


CheckFn = Callable[[Path, redis.Redis, str], None]
CHECKS: list[tuple[str, CheckFn]] = [
    ("uv run near-synth", after_synth),
    ("--partition-range 2024-01-01...2024-01-31", after_backfill),
    (f"--partition {MONTH[-1]}", after_rerun),
    ("scripts/restore.py audience_estimates", after_restore),
    ("-j aggregate_insights_job", after_insights),
]


def checks_for(command: str) -> list[CheckFn]:
    return [fn for needle, fn in CHECKS if needle in command]


# ---- tests ---------------------------------------------------------------------------------------


def test_everyday_commands_cover_the_month_backfill() -> None:
    commands = bash_commands(section(README.read_text(), "Everyday commands"))
    backfill = [c for c in commands if "--partition-range 2024-01-01...2024-01-31" in c]
    assert len(backfill) == 1, commands
    selected = re.search(r"--select (\S+)", backfill[0])
    assert selected and "audience_estimates" in selected.group(1).split(",")
    assert "raw_pings" in selected.group(1).split(",")
    for needle, _ in CHECKS:
        assert any(needle in c for c in commands), f"no README command with {needle!r}"
    assert any(c.startswith("uv run platform-health") for c in commands)


@pytest.mark.slow
def test_everyday_commands(tmp_path: Path, redis_url: str) -> None:
    commands = bash_commands(section(README.read_text(), "Everyday commands"))
    lake, home = tmp_path / "lake", tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").symlink_to(ROOT / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if k not in UNSET and not k.startswith("EMR_")}
    env |= {
        "LAKE_ROOT": str(lake),
        "DAGSTER_HOME": str(home),
        "REDIS_URL": redis_url,
        "LAKE_START_DATE": "2024-01-01",
    }
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    timings = []
    try:
        for command in commands:
            proc, seconds = run(command, env)
            one_line = " ".join(command.replace("\\\n", " ").split())
            timings.append(f"{seconds:6.1f} s  {one_line[:110]}")
            want, code = expected_for(command), proc.returncode
            assert code == want.exit_code, (
                f"`{one_line}` exited {code} (expected {want.exit_code}):\n{tail(proc)}"
            )
            if want.says:
                assert want.says in proc.stdout + proc.stderr, tail(proc)
            for check in checks_for(command):
                check(lake, client, proc.stdout)
    finally:
        print("README everyday commands:\n" + "\n".join(timings))
        client.flushdb()


def test_two_commands_exist() -> None:
    commands = bash_commands(section(README.read_text(), "Two commands"))
    assert commands == ["bash scripts/dev.sh", "bash scripts/test.sh"], commands
    for command in commands:
        script = ROOT / command.split()[1]
        assert script.is_file(), script
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


NEAR_DAY = "2024-03-04"
NEAR_SECTION = "A Near-sized day, on Spark locally and on EMR"


def test_near_sized_day_commands_are_the_chain_on_spark() -> None:
    commands = bash_commands(section(README.read_text(), NEAR_SECTION))
    assert len(commands) == 2, commands
    assert "${NEAR_DEVICES:-268817}" in commands[0]
    assert commands[1].startswith("NEAR_ENGINE=spark ")
    selected = re.search(r"--select (\S+)", commands[1])
    assert selected and {"raw_pings", "audience_estimates"} <= set(selected.group(1).split(","))


@pytest.mark.slow
def test_near_sized_day_commands(tmp_path: Path, redis_url: str) -> None:
    """The section's commands as written, on a small day (``NEAR_DEVICES=40``): every step of
    the chain runs on local Spark and publishes the day."""
    import dagster as dg

    commands = bash_commands(section(README.read_text(), NEAR_SECTION))
    lake, home = tmp_path / "lake", tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k not in UNSET and not k.startswith("EMR_")}
    env |= {
        "LAKE_ROOT": str(lake),
        "DAGSTER_HOME": str(home),
        "REDIS_URL": redis_url,
        "LAKE_START_DATE": "2024-03-01",
        "NEAR_DEVICES": "40",
    }
    for command in commands:
        proc, _ = run(command, env)
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{tail(proc)}"
    for table in ("stay_points", "visits", "home_location", "brand_affinity", "audience_estimates"):
        assert NEAR_DAY in parquet_days(lake, f"curated/{table}"), table
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        engines = {}
        for key in ("clean_pings", "stay_points", "visits", "home_location", "audience_estimates"):
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            assert event and event.asset_materialization, key
            engines[key] = event.asset_materialization.metadata["engine"].value
    finally:
        instance.dispose()
    assert set(engines.values()) == {"spark"}, engines
