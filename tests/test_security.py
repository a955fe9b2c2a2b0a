"""Security: local-only UI, no secrets in the repository or in run logs, validated ids."""

import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from resources.alerts import AlertsResource
from resources.validation import (
    validate_campaign_id,
    validate_daily_partition_key,
    validate_device_id,
    validate_partition_key,
    validate_user_id,
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
            starts_ui = re.search(r"\b(dagster dev|dagster-webserver)\s+-", line)
            if starts_ui and not line.lstrip().startswith("#"):
                lines.append((str(path.relative_to(REPO)), line.strip()))
    return lines


def test_the_ui_binds_to_localhost_unless_told_otherwise():
    dev = REPO / "scripts" / "dev.sh"
    if not dev.exists():
        pytest.skip("scripts/dev.sh has not landed yet")
    assert re.search(r"dagster dev .*-h \"?\$\{DAGSTER_HOST:-127\.0\.0\.1\}\"?", dev.read_text())
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


# --- validators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["c-2024_spring", "CAMP01", "nike.q3"])
def test_campaign_ids_that_are_one_safe_segment_pass(value: str):
    assert validate_campaign_id(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("../../etc", "path separator"),
        ("..", "'..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("camp 1", "whitespace"),
        ("camp\n1", "whitespace"),
        ("camp\x001", "control characters"),
        ("", "empty"),
        ("camp:1", "Redis key separator"),
        ("-rf", "allowed set"),
        ("x" * 65, "longer than 64"),
        (42, "expected a string"),
        (None, "expected a string"),
    ],
)
def test_unsafe_campaign_ids_are_rejected_with_a_clear_reason(value: object, reason: str):
    with pytest.raises(ValueError, match="invalid campaign id") as err:
        validate_campaign_id(value)
    assert reason in str(err.value)


@pytest.mark.parametrize("value", ["user-1", "u_42", "jane.doe@example.com", "a+b@x.io"])
def test_user_ids_pass(value: str):
    assert validate_user_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["user 1", "user\n1", " user1", "user1\n", "../../etc/passwd", "u/1", "u:1", "\tuser"],
)
def test_user_ids_with_spaces_newlines_or_slashes_are_rejected(value: str):
    with pytest.raises(ValueError, match=r"invalid user id .*: it "):
        validate_user_id(value)


def test_error_message_shows_the_value_and_what_is_allowed():
    with pytest.raises(ValueError) as err:
        validate_user_id("bob smith\n")
    message = str(err.value)
    assert "'bob smith\\n'" in message
    assert "allowed:" in message


def test_device_ids():
    assert validate_device_id("d000123") == "d000123"
    with pytest.raises(ValueError, match="invalid device id"):
        validate_device_id("d/../1")


@pytest.mark.parametrize("value", ["2024-01-01", "2024-02-29"])
def test_daily_partition_keys_pass(value: str):
    assert validate_daily_partition_key(value) == value
    assert validate_partition_key(value) == value


@pytest.mark.parametrize("value", ["2024-02-30", "2024-1-1", "../2024-01-01", "2024-01-01 ", ""])
def test_bad_daily_partition_keys_are_rejected(value: str):
    with pytest.raises(ValueError, match="invalid partition key"):
        validate_daily_partition_key(value)


@pytest.mark.parametrize("value", ["2024-13-01", "../../etc", "a b", "x/y"])
def test_partition_keys_of_any_kind_are_validated(value: str):
    with pytest.raises(ValueError, match="invalid partition key"):
        validate_partition_key(value)
    assert validate_partition_key("applicant-7") == "applicant-7"
