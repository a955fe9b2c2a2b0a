"""No secret value in the UI (GraphQL) or in the logs of a full onboarding run.

The platform is started the way production starts it: ``REDIS_URL`` with a password against a
real password-protected ``redis-server``, ``BANK_API_URL`` carrying an API key (a local bank API
that refuses calls without it), ``SLACK_BOT_TOKEN`` (a local Slack API). Both code locations are
loaded from ``workspace.yaml`` by code servers in subprocesses (as the webserver loads them) and
the UI's GraphQL ``allTopLevelResourceDetails.configuredValues`` is read; then a real onboarding
run decides a signup through those secrets and its event log, run config, tags and compute logs
are scanned.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import redis as redis_lib

from resources import shared_resources
from resources.bank import BankDataResource, simulate_bank_summary
from resources.redis_store import RedisResource, redis_server_binary
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
REDIS_PASSWORD = "r3dis-Pw-" + "9f8e7d6c5b4a"
BANK_KEY = "bank-key-" + "0a1b2c3d4e5f6789"
SLACK_TOKEN = "xoxb-" + "123456789012-123456789012-SecretsTestTokenAbCd"
SECRETS = {"redis password": REDIS_PASSWORD, "bank key": BANK_KEY, "slack token": SLACK_TOKEN}

RESOURCES_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          __typename
          ... on PythonError { message }
          ... on RepositoryLocation {
            repositories {
              name
              allTopLevelResourceDetails { name configuredValues { key value type } }
            }
          }
        }
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def secret_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server that refuses clients without the password."""
    port = free_port()
    data = tmp_path_factory.mktemp("secret-redis")
    proc = subprocess.Popen(
        [
            *(redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"),
            *("--dir", str(data), "--save", "", "--appendonly", "no"),
            *("--requirepass", REDIS_PASSWORD),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis_lib.Redis.from_url(url, socket_connect_timeout=0.2).ping()
                break
            except redis_lib.exceptions.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def bank_api() -> Iterator[tuple[str, list[str]]]:
    """A bank API that answers only under ``/<key>/``; returns (BANK_API_URL, paths served)."""
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            prefix = f"/{BANK_KEY}/accounts/"
            if not self.path.startswith(prefix):
                self.send_response(401)
                self.end_headers()
                return
            served.append(self.path)
            user = self.path[len(prefix) :].split("/")[0]
            body = json.dumps(simulate_bank_summary(user)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{BANK_KEY}", served
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def production_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret_redis, bank_api, slack_server
) -> None:
    monkeypatch.setenv("REDIS_URL", secret_redis)
    monkeypatch.setenv("BANK_API_URL", bank_api[0])
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_TOKEN)
    monkeypatch.setenv("SLACK_API_URL", slack_server.url)
    monkeypatch.setenv("LAKE_ROOT", str(tmp_path / "lake"))
    for name in ("LAKE_BUCKET", "EMR_CLUSTER_ID"):
        monkeypatch.delenv(name, raising=False)


def leaks(text: str) -> list[str]:
    return [what for what, value in SECRETS.items() if value in text]


def test_secrets_really_guard_the_services(secret_redis, bank_api) -> None:
    """The fixtures are real: without the password / key the services refuse."""
    with pytest.raises(redis_lib.exceptions.AuthenticationError):
        redis_lib.Redis.from_url(secret_redis.replace(f":{REDIS_PASSWORD}@", "")).set("k", 1)
    with pytest.raises(Exception, match="401"):
        import urllib.request

        urllib.request.urlopen(bank_api[0].replace(BANK_KEY, "nokey") + "/accounts/u/summary")


def test_resources_hold_secrets_as_env_vars(production_env) -> None:
    res = shared_resources()
    assert isinstance(res["redis"].url, dg.EnvVar) and str.__str__(res["redis"].url) == "REDIS_URL"
    assert isinstance(res["alerts"].token, dg.EnvVar)
    bank = BankDataResource.from_env()
    assert isinstance(bank.api_url, dg.EnvVar)
    # usable outside a run too (scripts): the value is resolved on use
    assert RedisResource.from_env().get_client().ping()
    assert REDIS_PASSWORD not in RedisResource.from_env().describe()


@pytest.mark.slow
def test_ui_graphql_shows_variable_names_never_values(production_env) -> None:
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    with (
        dg.instance_for_test() as instance,
        WorkspaceProcessContext(
            instance, WorkspaceFileTarget([str(REPO / "workspace.yaml")])
        ) as process_context,
    ):
        result = execute_dagster_graphql(process_context.create_request_context(), RESOURCES_QUERY)
    assert not result.errors, result.errors
    text = json.dumps(result.data)
    entries = result.data["workspaceOrError"]["locationEntries"]
    loaded = {e["name"]: e["locationOrLoadError"] for e in entries}
    assert set(loaded) == {"near_assets", "risk_assets"}
    configured: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for name, location in loaded.items():
        assert location["__typename"] == "RepositoryLocation", location
        for repo in location["repositories"]:
            for res in repo["allTopLevelResourceDetails"]:
                configured[(name, res["name"])] = {
                    v["key"]: (v["type"], v["value"]) for v in res["configuredValues"]
                }
    assert not leaks(text), f"secrets in the UI's GraphQL: {leaks(text)}"
    for location in ("near_assets", "risk_assets"):
        assert configured[(location, "redis")]["url"] == ("ENV_VAR", "REDIS_URL")
        assert configured[(location, "alerts")]["token"] == ("ENV_VAR", "SLACK_BOT_TOKEN")
    assert configured[("risk_assets", "bank")]["api_url"] == ("ENV_VAR", "BANK_API_URL")


def test_a_full_onboarding_run_logs_no_secret(
    production_env, secret_redis, bank_api, caplog: pytest.LogCaptureFixture, capfd
) -> None:
    from risk_assets.onboarding import ONBOARDING_ASSETS
    from risk_assets.signups import RUN_KEY_TAG, build_signup_sensor

    client = redis_lib.Redis.from_url(secret_redis, decode_responses=True)
    client.flushdb()
    payload = {
        "business_name": "Acme Tiles",
        "industry": "construction",
        "years_in_business": 4,
        "annual_revenue": 850000,
        "requested_amount": 60000,
        "country": "US",
    }
    signup_id = client.xadd(
        "signups", {"user_id": "secret-test-user", "payload": json.dumps(payload)}
    )
    resources = {**shared_resources(), "bank": BankDataResource.from_env()}
    with dg.instance_for_test() as instance:
        tick = build_signup_sensor(listen_s=0)(
            dg.build_sensor_context(instance=instance, resources={"redis": resources["redis"]})
        )
        [request] = tick.run_requests
        result = dg.materialize(
            ONBOARDING_ASSETS,
            instance=instance,
            resources=resources,
            partition_key=request.partition_key,
            tags={**request.tags, RUN_KEY_TAG: request.run_key},
        )
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        texts = [repr(run.run_config), repr(run.tags)]
        texts += [repr(entry) for entry in instance.all_logs(result.run_id)]
        for path in Path(instance.root_directory).rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("latin-1"))
    decided = [f for _, f in client.xrange("decisions")]
    assert [d["signup_id"] for d in decided] == [signup_id]  # decided through the secret Redis
    assert any("secret-test-user" in p for p in bank_api[1])  # the bank API was really called
    captured = capfd.readouterr()
    everything = "\n".join(texts) + caplog.text + captured.out + captured.err
    assert "secret-test-user" in everything  # the scan sees the run's logs
    assert not leaks(everything), f"secrets in the run's logs: {leaks(everything)}"
