"""The lineage UI as people use it: `dagster dev` the README way, looked at in headless Chromium.

Starts ``dagster dev -w workspace.yaml -h 127.0.0.1 -p <free port>`` in its own process group
with a temporary DAGSTER_HOME (the repo's dagster.yaml) and a small generated lake, after
materializing two days of ``raw_pings``/``clean_pings`` into that instance with
``dagster asset materialize``. Screenshots go to ``artifacts/`` (gitignored); the assertions
use the webserver's GraphQL API and Chromium's rendered DOM.
"""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is not installed (apt-get install -y chromium); .ci/run installs it",
    ),
]

LINEAGE_CHAIN = ["raw_pings", "clean_pings", "stay_points", "visits", "audience_estimates"]
AUDIENCE_INPUTS = ["demographics", "reference_pois"]  # beside the chain, upstream of audience
ONBOARDING = [
    "application",
    "bank_features",
    "fraud_features",
    "credit_features",
    "risk_score",
    "decision",
]
PARTITIONED = "clean_pings"

ASSET_NODES = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"
PARTITIONS = """
query ($path: [String!]!, $partitions: [String!]) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      assetMaterializations(partitions: $partitions) { partition }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startKey endKey } }
      }
    }
  }
}
"""
LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename } } } } }
"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--window-size=1400,900",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(port: int, path: str, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    out = ARTIFACTS / name
    out.unlink(missing_ok=True)
    result = chromium(f"--screenshot={out}", f"http://127.0.0.1:{port}{path}")
    assert out.exists() and out.stat().st_size > 20_000, result.stderr[-2000:]
    return out


def rendered_dom(port: int, path: str) -> str:
    return chromium("--dump-dom", f"http://127.0.0.1:{port}{path}").stdout


def wait_until_loaded(port: int, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "dagster dev exited early"
        try:
            entries = graphql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]
        except OSError:
            time.sleep(1)
            continue
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [
                e["name"]
                for e in entries
                if e["locationOrLoadError"]["__typename"] == "PythonError"
            ]
            assert not errors, f"code locations failed to load: {errors}"
            return
        time.sleep(1)
    raise AssertionError(f"dagster dev did not load its code locations in {timeout_s} s")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory):
    """A running `dagster dev` on a generated lake, with two days of pings materialized."""
    tmp = tmp_path_factory.mktemp("ui")
    home, lake = tmp / "dagster_home", tmp / "lake"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LAKE_ROOT": str(lake),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("LAKE_BUCKET", None)
    days = ["2024-01-01", "2024-01-02"]
    if shutil.which("near-synth", path=env["PATH"]):
        subprocess.run(
            [
                "near-synth",
                "--devices",
                "20",
                "--days",
                "2",
                "--start",
                days[0],
                "--campaigns",
                "1",
                "--no-progress",
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
    env["LAKE_START_DATE"] = days[0]
    subprocess.run(
        [
            "dagster",
            "asset",
            "materialize",
            "-m",
            "near_assets.definitions",
            "--select",
            f"raw_pings,{PARTITIONED}",
            "--partition-range",
            f"{days[0]}...{days[1]}",
            "--config-json",
            json.dumps({"execution": {"config": {"in_process": {}}}}),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )

    port = free_port()
    log = (tmp / "dagster-dev.log").open("w")
    proc = subprocess.Popen(
        ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_loaded(port, proc)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_global_lineage_shows_the_location_chain_and_onboarding_assets(platform: int):
    shot = screenshot(platform, "/asset-groups", "lineage.png")
    nodes = graphql(platform, ASSET_NODES)["assetNodes"]
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    missing = [k for k in LINEAGE_CHAIN + ONBOARDING if k not in keys]
    assert not missing, f"missing from the lineage: {missing} (screenshot: {shot})"

    upstream = {"/".join(n["assetKey"]["path"]): n["dependencyKeys"] for n in nodes}
    for parent, child in itertools.pairwise(LINEAGE_CHAIN):
        deps = {"/".join(d["path"]) for d in upstream[child]}
        assert parent in deps or any(parent in d for d in deps), f"{parent} -> {child} missing"

    dom = rendered_dom(platform, "/asset-groups")
    for group in ("reference", "pings", "mobility", "audience", "onboarding"):
        assert f">{group}<" in dom, f"group {group} not rendered on /asset-groups"

    chain = "/assets/audience_estimates?view=lineage&lineageScope=upstream&lineageDepth=5"
    screenshot(platform, chain, "lineage_audience_estimates.png")
    dom = rendered_dom(platform, chain)
    for key in LINEAGE_CHAIN + AUDIENCE_INPUTS:
        assert key in dom, f"{key} not rendered upstream of audience_estimates"


def test_partitioned_asset_page_shows_materialized_partitions(platform: int):
    days = ["2024-01-01", "2024-01-02"]
    data = graphql(platform, PARTITIONS, {"path": [PARTITIONED], "partitions": days})
    node = data["assetNodeOrError"]
    assert sorted({m["partition"] for m in node["assetMaterializations"]}) == days
    # the pings sensor (fresh cursor) sees those days already registered and does not re-run them
    ranges = node["assetPartitionStatuses"]["ranges"]
    assert any(
        r["startKey"] <= days[0] and r["endKey"] >= days[1] and r["status"] == "MATERIALIZED"
        for r in ranges
    ), ranges

    page = f"/assets/{PARTITIONED}?view=partitions"
    shot = screenshot(platform, page, "partitions.png")
    dom = rendered_dom(platform, page)
    assert "Materialized" in dom or "materialized" in dom, f"no partition status shown ({shot})"
