"""Every code location in workspace.yaml loads, with the default and the production environment.

Each location is imported in a fresh interpreter (as ``dagster dev`` and the daemon do). An audit
hook records every network connection, DNS lookup and process start during import and
resolution: loading definitions must not touch Redis, S3, Slack or EMR, even when production
variables point at them (here: at closed local ports).
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = ROOT / "workspace.yaml"
PRODUCTION_ENV = {
    "LAKE_BUCKET": "prod-lake",
    "LAKE_PREFIX": "x",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "SLACK_BOT_TOKEN": "xoxb-test",
    "EMR_CLUSTER_ID": "j-TEST",
}
ENVIRONMENTS = {"default": {}, "production": PRODUCTION_ENV}
REFERENCE = ["reference_pois", "reference_areas", "reference_campaigns", "raw_exposures"]
MARKER = "DEFINITIONS-LOAD-REPORT "
SIDE_EFFECTS = (
    "socket.connect",
    "socket.getaddrinfo",
    "subprocess.Popen",
    "os.system",
    "os.posix_spawn",
    "os.exec",
    "os.fork",
)

PROBE = f"""
import importlib, json, sys

events = []
watched = {SIDE_EFFECTS!r}

def hook(event, args):
    # platform.architecture() (dagster's vendored croniter) runs `file -b python`: local, harmless
    if event == "subprocess.Popen" and list(args[1])[:2] == ["file", "-b"]:
        return
    if event in watched:
        events.append([event, repr(args)[:300]])

sys.addaudithook(hook)
import dagster as dg

module = importlib.import_module(sys.argv[1])
defs = module.defs
dg.Definitions.validate_loadable(defs)
jobs = sorted(job.name for job in defs.resolve_all_job_defs())
repo = defs.get_repository_def()
report = {{
    "jobs": jobs,
    "assets": sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()),
    "sensors": sorted(s.name for s in repo.sensor_defs),
    "resources": sorted(repo.get_top_level_resources()),
    "side_effects": events,
}}
print({MARKER!r} + json.dumps(report))
"""


def code_locations() -> list[str]:
    entries = yaml.safe_load(WORKSPACE.read_text())["load_from"]
    return [entry["python_module"]["module_name"] for entry in entries]


def clean_environment(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    env.update(
        DAGSTER_HOME=str(tmp_path),
        LAKE_ROOT=str(tmp_path / "lake"),
        PYTHONPATH=str(ROOT),
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def run(args: list[str], home: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        cwd=ROOT,
        env=clean_environment(home, env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def load_report(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}\n{proc.stderr[-4000:]}"}
    return json.loads(lines[-1][len(MARKER) :])


@pytest.fixture(scope="module")
def loads(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every (location, environment) load and the dagster CLI, in parallel fresh processes."""
    cases: dict = {
        (module, env_name): ([sys.executable, "-c", PROBE, module], ENVIRONMENTS[env_name])
        for module in code_locations()
        for env_name in ENVIRONMENTS
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    cases["cli"] = ([dagster, "definitions", "validate", "-w", str(WORKSPACE)], {})

    def start(item: tuple) -> subprocess.CompletedProcess:
        key, (args, env) = item
        name = "cli" if key == "cli" else f"{key[0].split('.')[0]}-{key[1]}"
        home = tmp_path_factory.mktemp(name)
        # a busy machine can take minutes to import a location: don't let the CLI give up first
        (home / "dagster.yaml").write_text(
            "telemetry:\n  enabled: false\ncode_servers:\n  local_startup_timeout: 900\n"
        )
        return run(args, home, env)

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        return dict(zip(cases, pool.map(start, cases.items()), strict=True))


@pytest.fixture(scope="module")
def reports(loads: dict) -> dict[tuple[str, str], dict]:
    return {key: load_report(proc) for key, proc in loads.items() if key != "cli"}


def test_workspace_declares_both_code_locations() -> None:
    assert code_locations() == ["near_assets.definitions", "risk_assets.definitions"]


@pytest.mark.parametrize("env_name", list(ENVIRONMENTS))
@pytest.mark.parametrize("module", code_locations())
def test_code_location_loads_without_touching_the_network(
    reports: dict[tuple[str, str], dict], module: str, env_name: str
) -> None:
    report = reports[(module, env_name)]
    assert "error" not in report, report.get("error")
    assert report["side_effects"] == []
    assert report["assets"] or report["jobs"]
    assert {"lake", "redis", "alerts"} <= set(report["resources"])


def test_near_assets_location_has_the_pings_graph(reports: dict[tuple[str, str], dict]) -> None:
    for env_name in ENVIRONMENTS:
        report = reports[("near_assets.definitions", env_name)]
        assert {"raw_pings", "clean_pings", *REFERENCE} <= set(report["assets"])
        assert "pings_daily" in report["jobs"]
        assert "raw_pings_sensor" in report["sensors"]


def test_dagster_cli_validates_the_workspace(loads: dict) -> None:
    proc = loads["cli"]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "near_assets" in output
    assert "risk_assets" in output
