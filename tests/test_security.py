"""Security: local-only UI, no secrets in the repository or in run logs, validated ids."""

import json
import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from near_assets.science.campaigns import CampaignFileError, parse_campaign
from resources.alerts import AlertsResource
from resources.lake import LakeResource, validate_key
from risk_assets.validation import (
    PARTITION_KEY_RE,
    partition_key,
    signup_id_of,
    validate_signup,
)
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "xoxb-000000000000-1111111111111-SecretTestTokenDoNotLog42"

SECRET_PATTERNS = {
    "Slack token": re.compile(r"xox[abprs]-\d{6,}-\d{6,}-[A-Za-z0-9]{16,}"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "URL with a password": re.compile(r"\b[a-z+]+://[^/\s:@'\"]+:[^/\s:@'\"{}$]{6,}@[\w.-]+"),
    "literal password in config": re.compile(r"^\s*password:\s*['\"]?(?!\{)[^\s{'\"][^\s]*", re.M),
}


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    skip = {"uv.lock"}
    files = []
    for name in out:
        path = REPO / name
        if name in skip or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        if b"\0" in path.read_bytes()[:4096]:
            continue
        files.append(path)
    return files


def test_no_secret_is_committed_in_code_or_config():
    findings = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for what, pattern in SECRET_PATTERNS.items():
            if path.name == "test_security.py":
                continue
            for match in pattern.finditer(text):
                findings.append(f"{path.relative_to(REPO)}: {what}: {match.group(0)[:40]}")
    assert not findings, "secrets in the repository:\n" + "\n".join(findings)


def test_the_secret_scanner_finds_a_planted_token(tmp_path: Path):
    planted = f"token = '{TOKEN}'\npassword: hunter2hunter2\n"
    hits = [w for w, p in SECRET_PATTERNS.items() if p.search(planted)]
    assert "Slack token" in hits and "literal password in config" in hits
    assert not SECRET_PATTERNS["literal password in config"].search(
        "password: {env: DAGSTER_PG_PASSWORD}"
    )


def test_production_profile_takes_credentials_only_from_the_environment():
    profile = (REPO / "deploy" / "production" / "dagster.yaml").read_text()
    assert "password: {env: DAGSTER_PG_PASSWORD}" in profile


def ui_commands() -> list[tuple[str, str]]:
    """Every line that starts the web UI in scripts, docs and deploy files."""
    lines = []
    for path in tracked_text_files():
        if path.suffix not in {".sh", ".md", ".yaml", ".yml", ".service", ""}:
            continue
        for line in path.read_text(errors="replace").splitlines():
            # `dagster dev`, `"$PWD/.venv/bin/dagster" dev` (scripts/dev.sh), `dagster-webserver`
            starts_ui = re.search(r"\b(dagster\"?\s+dev|dagster-webserver)\s+-", line)
            if starts_ui and not line.lstrip().startswith("#"):
                lines.append((str(path.relative_to(REPO)), line.strip()))
    return lines


def test_the_ui_binds_to_localhost_unless_told_otherwise():
    dev = REPO / "scripts" / "dev.sh"
    assert re.search(r"dagster\"? dev .*-h \"?\$\{DAGSTER_HOST:-127\.0\.0\.1\}\"?", dev.read_text())
    commands = ui_commands()
    assert commands
    for where, line in commands:
        bound = re.search(r"(?:-h|--host)\s+(\S+)", line)
        assert bound, f"{where}: UI started without an explicit host: {line}"
        assert "127.0.0.1" in bound.group(1) or "DAGSTER_HOST" in bound.group(1), f"{where}: {line}"


def test_read_only_ui_mode_is_documented():
    readme = (REPO / "deploy" / "production" / "README.md").read_text()
    assert "dagster-webserver" in readme and "--read-only" in readme


# --- no token in the logs of a full run -------------------------------------------------------


@dg.asset
def alerting_asset(context: dg.AssetExecutionContext, alerts: AlertsResource) -> None:
    """Sends an alert, logs about it, and prints: everything a run can leave behind."""
    alerts.send("audience_estimates failed its audit", logger=context.log)
    context.log.info("alert sent for %s", context.run_id)
    print("stdout of the step")


def run_and_collect(instance: dg.DagsterInstance, resources: dict) -> str:
    result = dg.materialize([alerting_asset], instance=instance, resources=resources)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    texts = [repr(run.run_config), repr(run.tags)]
    texts += [repr(entry) for entry in instance.all_logs(result.run_id)]
    for path in Path(instance.root_directory).rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(texts)


def test_a_full_run_never_logs_the_slack_token(
    slack_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd
):
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_API_URL", slack_server.url)
    with dg.instance_for_test() as instance:
        logs = run_and_collect(instance, {"alerts": AlertsResource.from_env()})

    assert slack_server.messages() == ["audience_estimates failed its audit"]
    assert TOKEN in slack_server.calls[0][1]["_authorization"]  # the token was really used
    assert "alert sent" in logs
    assert TOKEN not in logs
    assert TOKEN not in caplog.text
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err


def test_a_failing_slack_call_does_not_log_the_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd
):
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api/")
    with dg.instance_for_test() as instance:
        logs = run_and_collect(instance, {"alerts": AlertsResource.from_env()})
    assert "could not post to Slack" in logs
    assert TOKEN not in logs
    assert TOKEN not in caplog.text
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err


# --- validators: the ones production uses before an outside value becomes a key or a path -------


def campaign_file(campaign_id: object) -> str:
    return json.dumps(
        {
            "campaign_id": campaign_id,
            "brand": "brand_a",
            "start_date": "2024-03-01",
            "end_date": "2024-03-20",
        }
    )


@pytest.mark.parametrize("value", ["c-2024_spring", "CAMP01", "c_1", "x" * 64])
def test_campaign_ids_that_are_one_safe_segment_pass(value: str):
    assert parse_campaign(campaign_file(value), value).campaign_id == value


@pytest.mark.parametrize(
    "value",
    [
        "../../etc",
        "..",
        "a/b",
        "a\\b",
        "camp 1",
        "camp\n1",
        "camp\x001",
        "camp:1",
        "nike.q3",
        "x" * 65,
    ],
)
def test_unsafe_campaign_ids_are_rejected_with_a_clear_reason(value: object):
    with pytest.raises(CampaignFileError, match="unsafe campaign_id") as err:
        parse_campaign(campaign_file(value))
    assert repr(value)[:20] in str(err.value)


@pytest.mark.parametrize("stem", ["../c_1", "c 1", "c_1.json", ""])
def test_a_campaign_file_name_that_is_not_a_safe_id_is_rejected(stem: str):
    with pytest.raises(CampaignFileError, match="unsafe file name"):
        parse_campaign(campaign_file("c_1"), stem)


@pytest.mark.parametrize("value", [42, None, ["c_1"]])
def test_a_campaign_id_that_is_not_a_string_is_rejected(value: object):
    with pytest.raises(CampaignFileError, match="campaign_id"):
        parse_campaign(campaign_file(value))


def test_empty_or_missing_campaign_id_is_rejected():
    with pytest.raises(CampaignFileError, match="missing field"):
        parse_campaign(campaign_file(""))


@pytest.mark.parametrize(
    "user_id",
    [
        "user 1",
        "user\n1",
        " user1",
        "user1\n",
        "../../etc/passwd",
        "u/1",
        "u:1",
        "\tuser",
        "a+b@x.io",
    ],
)
def test_any_user_id_becomes_one_safe_partition_key_segment(user_id: str):
    key = partition_key(user_id, "1700000000000-0")
    assert PARTITION_KEY_RE.fullmatch(key), key
    assert not any(c in key for c in " \t\n/\\:") and ".." not in key
    assert key.endswith("_1700000000000-0")


@pytest.mark.parametrize("signup_id", ["../etc", "1-1/..", "1-1\n", "", "abc"])
def test_a_partition_key_is_made_only_from_a_stream_entry_id(signup_id: str):
    with pytest.raises(ValueError, match="not a stream entry id"):
        partition_key("u", signup_id)


@pytest.mark.parametrize("partition", ["u_1-1\n", "u_../1-1", "u_1-1/x", "u"])
def test_a_partition_typed_by_hand_must_end_with_a_stream_entry_id(partition: str):
    with pytest.raises(ValueError, match="does not end with a signup id"):
        signup_id_of(partition)


@pytest.mark.parametrize("user_id", ["", "   "])
def test_a_signup_without_a_user_id_is_rejected(user_id: str):
    verdict = validate_signup("1-1", {"user_id": user_id, "payload": "{}"})
    assert not verdict.ok and "user_id" in (verdict.reason or "")


@pytest.mark.parametrize(
    "key",
    [
        "/etc/passwd",
        "../outside",
        "curated/../../outside",
        "curated/x/./y",
        "curated\\x",
        "curated/x\n/y",
        "curated/x\x00y",
    ],
)
def test_lake_keys_cannot_leave_the_lake(key: str, tmp_lake: LakeResource):
    with pytest.raises(ValueError, match="invalid lake key"):
        validate_key(key)
    with pytest.raises(ValueError, match="invalid lake key"):
        tmp_lake.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="invalid lake key"):
        tmp_lake.read_bytes(key)


def test_a_day_partition_with_a_path_in_it_never_reaches_the_lake(tmp_lake: LakeResource):
    with pytest.raises(ValueError, match="invalid lake key"):
        tmp_lake.write_bytes("curated/stay_points/date=../../../etc/part-0.parquet", b"x")
    assert validate_key("curated/stay_points/date=2024-01-01/") == (
        "curated/stay_points/date=2024-01-01"
    )
