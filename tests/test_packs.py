"""Packs: every pack loads and is wired; YAML mistakes give clear messages; the scaffold command
and docs/PACKS.md work as written; a migrated script runs through Pipes with its stdout in the run
log and its exit code failing the run.

Tests that add or break a pack work on a copy of ``risk_assets/packs/defs`` (an importable package
in a temporary folder), never on the repository's folder.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from resources.redis_store import RedisResource
from risk_assets.packs import PACKS_DIR, build_defs, load_packs
from risk_assets.packs.component import PackError
from risk_assets.tables import BANK_FEATURES, LATEST, pack_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import new_pack  # noqa: E402

PACKS = {
    "fraud_distributions",
    "risk_model",
    "industry_default_rates",
    "device_ip_velocity",
    "bank_statement_baseline",
}


@pytest.fixture
def packs_copy(tmp_path: Path) -> Path:
    """A copy of the packs folder, importable under a unique module name."""
    root = tmp_path / "src"
    folder = root / f"packs_{uuid.uuid4().hex[:10]}"
    shutil.copytree(PACKS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(root))
    yield folder
    sys.path.remove(str(root))


def spec_of(defs: dg.Definitions, name: str) -> dg.AssetSpec:
    return next(s for a in defs.assets or [] for s in a.specs if s.key.to_user_string() == name)


def load_error(folder: Path) -> str:
    with pytest.raises(Exception) as caught:
        load_packs(folder.name)
    return new_pack.pack_error(caught.value)


def edit_pack(folder: Path, pack: str, **changes) -> None:
    path = folder / pack / "defs.yaml"
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            doc["attributes"].pop(key, None)
        else:
            doc["attributes"][key] = value
    path.write_text(yaml.safe_dump(doc))


# ---- every pack -------------------------------------------------------------------------------


def test_every_pack_loads_with_its_wiring():
    defs = build_defs()
    specs = {s.key.to_user_string(): s for a in defs.assets or [] for s in a.specs}
    assert set(specs) == PACKS
    for name, spec in specs.items():
        assert spec.owners == ["team:risk"], name
        assert spec.description, name
        assert spec.metadata["lake_prefix"] == pack_output(name).prefix
        refs = spec.metadata["dagster/code_references"].code_references
        assert {Path(r.file_path).parent.name for r in refs} == {name}
        assert spec.automation_condition is not None
    # lineage between packs, as declared in their YAML
    deps = {n: {d.asset_key.to_user_string() for d in s.deps} for n, s in specs.items()}
    assert deps["industry_default_rates"] == {"risk_model"}
    assert deps["device_ip_velocity"] == {"fraud_distributions"}
    assert "*/5 * * * *" in str(specs["fraud_distributions"].automation_condition)
    assert "0 3 * * *" in str(specs["risk_model"].automation_condition)
    assert specs["bank_statement_baseline"].kinds >= {"python", "pipes"}
    # retries and run-time limits
    assets = {a.key.to_user_string(): a for a in defs.assets or []}
    assert assets["risk_model"].op.retry_policy.max_retries == 2
    limits = {
        k.to_user_string(): s.run_tags["dagster/max_runtime"]
        for s in defs.sensors or []
        for k in s.asset_selection.resolve(list(assets.values()))
    }
    assert limits == {
        "fraud_distributions": "5400",
        "risk_model": "7200",
        "industry_default_rates": "1800",
        "device_ip_velocity": "600",
        "bank_statement_baseline": "1200",
    }


def test_check_command_lists_every_pack(capsys):
    assert new_pack.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert all(f"ok  {name}" in out for name in PACKS)


# ---- clear messages for YAML mistakes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"schedule": "*/5 * * *"},
            "pack 'fraud_distributions': schedule '*/5 * * *' is not a valid cron expression: "
            "five fields",
        ),
        ({"schedule": "61 * * * *"}, "schedule '61 * * * *' is not a valid cron expression"),
        (
            {"inputs": ["recent_signup"]},
            "pack 'fraud_distributions': unknown input 'recent_signup'; an input is another pack "
            "or a source: bank_statement_baseline, device_ip_velocity",
        ),
        ({"owner": None}, "pack 'fraud_distributions': owner is missing; every pack names who"),
        ({"owner": "jane"}, "owner 'jane' is neither an e-mail nor 'team:<name>'"),
        ({"schedule": None}, "needs a schedule (cron, e.g. '*/5 * * * *') or a trigger"),
        ({"trigger": ["risk_model"]}, "give a schedule or a trigger, not both"),
        ({"timeout": "soon"}, "timeout 'soon' is not a duration like '90m'"),
        ({"name": "fraud_dist"}, "pack 'fraud_dist': lives in folder 'fraud_distributions'"),
    ],
)
def test_yaml_mistakes_are_named_with_their_fix(packs_copy: Path, changes, message):
    edit_pack(packs_copy, "fraud_distributions", **changes)
    assert message in load_error(packs_copy)


def test_unknown_trigger_and_mismatched_function_are_named(packs_copy: Path):
    edit_pack(packs_copy, "device_ip_velocity", trigger=["fraud_distribution"])
    assert "pack 'device_ip_velocity': unknown trigger 'fraud_distribution'; a trigger is " in (
        load_error(packs_copy)
    )
    edit_pack(packs_copy, "device_ip_velocity", trigger=["fraud_distributions"])
    edit_pack(packs_copy, "risk_model", inputs=["loan_history", "recent_signups"])
    assert (
        "pack 'risk_model': run(loan_history) must take exactly the declared inputs, in order: "
        "run(loan_history, recent_signups)"
    ) in load_error(packs_copy)


def test_check_command_prints_the_first_error(packs_copy: Path, capsys):
    edit_pack(packs_copy, "risk_model", owner=None)
    assert new_pack.main(["--check", "--packs-dir", str(packs_copy)]) == 1
    assert "FAILED: pack 'risk_model': owner is missing" in capsys.readouterr().out


def test_pack_error_is_a_value_error():
    assert issubclass(PackError, ValueError)


# ---- scaffolding and the docs page --------------------------------------------------------------


def test_scaffolded_pack_appears_after_a_reload_and_runs(
    packs_copy: Path, tmp_lake, redis_client, redis_url
):
    before = build_defs(packs_copy.name)
    assert len(before.assets) == len(PACKS)
    assert (
        new_pack.main(
            [
                "merchant_velocity",
                "--owner",
                "jane.doe@bluevine.com",
                "--schedule",
                "*/15 * * * *",
                "--inputs",
                "recent_signups",
                "--packs-dir",
                str(packs_copy),
            ]
        )
        == 0
    )
    folder = packs_copy / "merchant_velocity"
    assert {p.name for p in folder.iterdir()} >= {
        "defs.yaml",
        "run.py",
        "test_merchant_velocity.py",
    }
    # the scaffolded test passes as it is
    spec = importlib.util.spec_from_file_location("t_mv", folder / "test_merchant_velocity.py")
    test_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_module)
    test_module.test_merchant_velocity_returns_the_declared_outputs()

    after = build_defs(packs_copy.name)  # the reload
    pack = spec_of(after, "merchant_velocity")
    assert pack.owners == ["jane.doe@bluevine.com"]
    assert pack.metadata["schedule"] == "*/15 * * * *"
    assert "*/15 * * * *" in str(pack.automation_condition)
    refs = pack.metadata["dagster/code_references"].code_references
    assert {Path(r.file_path).name for r in refs} == {"run.py", "defs.yaml"}
    assert any(
        "merchant_velocity" in [k.to_user_string() for k in s.asset_selection.resolve(after.assets)]
        for s in after.sensors
    )

    redis_client.xadd("signups", {"user_id": "u1", "payload": json.dumps(_payload())})
    asset = next(a for a in after.assets if a.key.to_user_string() == "merchant_velocity")
    result = dg.materialize(
        [asset], resources={"lake": tmp_lake, "redis": RedisResource(url=redis_url)}
    )
    assert result.success
    assert pack_output("merchant_velocity").read(tmp_lake, LATEST)["n"] == 1


def _docs_commands() -> list[str]:
    text = (ROOT / "docs" / "PACKS.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_docs_page_steps_work_as_written(packs_copy: Path):
    commands = _docs_commands()
    assert len(commands) == 3
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["uv", "run"]
        argv = [sys.executable, *(["-m", "pytest"] if argv[2] == "pytest" else []), *argv[3:]]
        if "new_pack.py" in command:
            argv += ["--packs-dir", str(packs_copy)]
        else:  # the pack's own test, in the copy of the packs folder
            argv = [a.replace("risk_assets/packs/defs", str(packs_copy)) for a in argv]
            argv += ["-p", "no:cacheprovider", "--rootdir", str(packs_copy)]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    assert "ok  merchant_velocity" in done.stdout


# ---- the five packs ---------------------------------------------------------------------------


def _payload(**extra) -> dict:
    return {
        "business_name": "b",
        "industry": "retail",
        "years_in_business": 3,
        "annual_revenue": 250000,
        "requested_amount": 20000,
        "country": "US",
        **extra,
    }


def test_device_ip_velocity_counts_repeat_devices_and_networks():
    module = importlib.import_module("risk_assets.packs.defs.device_ip_velocity.run")
    hour = 3_600_000
    t0 = 10 * 24 * hour
    apps = [
        {**_payload(device_id="d1", ip="10.0.0.1"), "signup_id": f"{t0}-0"},
        {**_payload(device_id="d1", ip="10.0.0.2"), "signup_id": f"{t0 - 2 * hour}-0"},
        {**_payload(device_id="d2", ip="10.0.0.3"), "signup_id": f"{t0 - 30 * hour}-0"},
        {**_payload(), "signup_id": f"{t0 - 10}-0"},
    ]
    out = module.run(apps)
    assert out["n"] == 4 and out["with_device"] == 3
    assert out["velocity"]["device_id"] == {"d1": {"1h": 1, "24h": 2}}
    assert out["velocity"]["ip_net"] == {"10.0.0.0/24": {"1h": 1, "24h": 2}}
    assert out["velocity"]["ip"] == {}


def test_industry_default_rates_follow_industry_risk():
    from risk_assets import science

    module = importlib.import_module("risk_assets.packs.defs.industry_default_rates.run")
    rows, labels = science.synthetic_history(1500, seed=3)
    history = [{**r, "defaulted": y} for r, y in zip(rows, labels, strict=True)]
    out = module.run(history, None)
    rates = out["by_industry"]
    assert out["model_version"] == "prior" and set(rates) >= set(science.INDUSTRY_RISK)
    assert (
        rates["restaurant"]["observed_default_rate"] > rates["healthcare"]["observed_default_rate"]
    )
    assert sum(r["n"] for k, r in rates.items() if k in ("construction", "software")) > 0


# ---- a migrated script under Pipes --------------------------------------------------------------


def _logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


def test_pipes_pack_runs_the_script_with_its_stdout_in_the_run_log(tmp_lake):
    for i, nsf in enumerate([0, 1, 4]):
        BANK_FEATURES.write(
            tmp_lake,
            f"p{i}",
            {
                "nsf_count": nsf,
                "inflow_volatility": 0.2 + i / 10,
                "cash_margin": 0.1,
                "negative_balance_months": i,
                "revenue_mismatch": 0.0,
            },
        )
    asset = next(
        a for a in build_defs().assets if a.key.to_user_string() == "bank_statement_baseline"
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], resources={"lake": tmp_lake}, instance=instance)
        assert result.success
        logs = "\n".join(_logs(instance, result.run_id))
    assert "[bank_baseline_cron.py] bank baseline: 3 applicants" in logs
    assert "[bank_baseline_cron.py] done" in logs
    baseline = pack_output("bank_statement_baseline").read(tmp_lake, LATEST)
    assert baseline["n"] == 3 and baseline["features"]["nsf_count"]["median"] == 1.0


def test_failing_script_fails_the_run(packs_copy: Path, tmp_lake):
    new_pack.scaffold("legacy_job", "team:risk", "0 * * * *", [], [], True, packs_copy)
    edit_pack(packs_copy, "legacy_job", retries=0)
    (packs_copy / "legacy_job" / "job.py").write_text(
        "import sys\nprint('connecting to replica orange')\nsys.exit(3)\n"
    )
    asset = next(
        a for a in build_defs(packs_copy.name).assets if a.key.to_user_string() == "legacy_job"
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [asset], resources={"lake": tmp_lake}, instance=instance, raise_on_error=False
        )
        assert not result.success
        logs = "\n".join(_logs(instance, result.run_id))
    assert "[job.py] connecting to replica orange" in logs
    assert "exited with code 3" in logs
    assert not pack_output("legacy_job").exists(tmp_lake, LATEST)
