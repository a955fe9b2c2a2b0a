"""Scaffold a new pack, or check every pack: the data scientist's command (docs/PACKS.md).

    uv run python scripts/new_pack.py NAME --owner jane.doe@bluevine.com --schedule "0 * * * *" \\
        [--inputs recent_signups,risk_model] [--script]      # a folder under risk_assets/packs/defs
    uv run python scripts/new_pack.py --check                # load and validate every pack

A pack folder holds ``defs.yaml`` (the wiring), ``run.py`` (a typed pure function) or, with
``--script``, ``job.py`` (a script run unchanged through Dagster Pipes), and ``test_<NAME>.py``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DIR = ROOT / "risk_assets" / "packs" / "defs"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{2,62}$")

YAML = """\
type: risk_assets.packs.component.Pack
attributes:
  name: {name}
  owner: {owner}
  description: >
    TODO: what this pack computes, from what, and who reads it.
  {when}
  timeout: 30m
  retries: 1
  inputs: [{inputs}]
  outputs: [n]
{script}"""

RUN = '''\
"""{name} pack."""

from typing import Any


def run({params}) -> dict[str, Any]:
    """TODO: replace with the pack's logic; return a JSON-able dict with the declared outputs."""
    n = {count}
    return {{"n": n}}
'''

JOB = '''\
"""{name}: a cron job migrated unchanged (reads $PACK_INPUTS, writes $PACK_OUTPUT)."""

import json
import os
import sys


def main():
    with open(os.environ["PACK_INPUTS"]) as f:
        inputs = json.load(f)
    n = sum(len(v) for v in inputs.values() if isinstance(v, list))
    print(f"{name}: {{n}} input rows")
    with open(os.environ["PACK_OUTPUT"], "w") as f:
        json.dump({{"n": n}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

TEST_RUN = '''\
"""Test of the {name} pack's function on a tiny example."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("{name}_run", Path(__file__).with_name("run.py"))
pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack)


def test_{name}_returns_the_declared_outputs():
    out = pack.run({example})
    assert "n" in out
'''

TEST_JOB = '''\
"""Test of the {name} script exactly as cron (or Pipes) runs it."""

import json
import subprocess
import sys
from pathlib import Path


def test_{name}_writes_its_output(tmp_path):
    inputs, output = tmp_path / "inputs.json", tmp_path / "output.json"
    inputs.write_text(json.dumps({{{example_json}}}))
    env = {{"PACK_INPUTS": str(inputs), "PACK_OUTPUT": str(output)}}
    script = Path(__file__).with_name("job.py")
    subprocess.run([sys.executable, str(script)], env=env, check=True)
    assert "n" in json.loads(output.read_text())
'''


def scaffold(
    name: str,
    owner: str,
    schedule: str | None,
    trigger: list[str],
    inputs: list[str],
    script: bool,
    packs_dir: Path = DEFAULT_DIR,
) -> Path:
    """Create ``packs_dir/<name>/`` with its YAML, code and test; return the folder."""
    if not NAME_RE.match(name):
        raise SystemExit(f"pack name '{name}': lower_snake_case, 3 to 63 characters")
    folder = packs_dir / name
    if folder.exists():
        raise SystemExit(f"{folder} exists already")
    folder.mkdir(parents=True)
    when = f'schedule: "{schedule}"' if schedule else f"trigger: [{', '.join(trigger)}]"
    (folder / "defs.yaml").write_text(
        YAML.format(
            name=name,
            owner=owner,
            when=when,
            inputs=", ".join(inputs),
            script="  script: job.py\n  kinds: [pipes]\n" if script else "",
        )
    )
    example = ", ".join(f"{i}=[]" for i in inputs)
    if script:
        (folder / "job.py").write_text(JOB.format(name=name))
        example_json = ", ".join(f'"{i}": []' for i in inputs)
        (folder / f"test_{name}.py").write_text(
            TEST_JOB.format(name=name, example_json=example_json)
        )
    else:
        params = ", ".join(f"{i}: Any" for i in inputs)
        count = " + ".join(f"len({i} or [])" for i in inputs) if inputs else "0"
        (folder / "run.py").write_text(RUN.format(name=name, params=params, count=count))
        (folder / f"test_{name}.py").write_text(TEST_RUN.format(name=name, example=example))
    return folder


def check(packs_dir: Path = DEFAULT_DIR) -> int:
    """Load every pack as Dagster will; print each or the first error. 0 when all load."""
    import importlib
    import warnings

    warnings.filterwarnings("ignore")
    from risk_assets.packs import load_packs

    module = _module_for(packs_dir)
    importlib.invalidate_caches()
    try:
        defs = load_packs(module)
    except Exception as exc:
        print(f"FAILED: {pack_error(exc)}")
        return 1
    for asset in defs.assets or []:
        spec = next(iter(asset.specs))
        print(f"ok  {spec.key.to_user_string():28} {spec.owners[0]:28} {spec.metadata['schedule']}")
    return 0


def pack_error(exc: BaseException) -> str:
    """The innermost message of a load error (Dagster wraps it in its component tree)."""
    from risk_assets.packs.component import PackError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PackError):
            return str(seen)
        errors = getattr(seen, "errors", None)
        if callable(errors):
            for e in errors():
                if "Value error, " in str(e.get("msg", "")):
                    return str(e["msg"]).split("Value error, ", 1)[1]
        seen = seen.__cause__ or seen.__context__
    return str(exc)


def _module_for(packs_dir: Path) -> str:
    """The importable module name of ``packs_dir`` (its parent must be on ``sys.path``)."""
    packs_dir = packs_dir.resolve()
    if packs_dir == DEFAULT_DIR.resolve():
        return "risk_assets.packs.defs"
    if str(packs_dir.parent) not in sys.path:
        sys.path.insert(0, str(packs_dir.parent))
    return packs_dir.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--owner", help="e-mail or team:<name> (paged when it fails)")
    parser.add_argument("--schedule", help='cron, e.g. "0 * * * *"')
    parser.add_argument("--trigger", default="", help="upstream packs, comma separated")
    parser.add_argument("--inputs", default="", help="packs or sources, comma separated")
    parser.add_argument("--script", action="store_true", help="a script run through Pipes")
    parser.add_argument("--packs-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="load and validate every pack")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.packs_dir)
    if not args.name or not args.owner or not (args.schedule or args.trigger):
        parser.error("NAME, --owner and --schedule or --trigger are required")
    split = [s.strip() for s in args.inputs.split(",") if s.strip()]
    trigger = [s.strip() for s in args.trigger.split(",") if s.strip()]
    folder = scaffold(
        args.name, args.owner, args.schedule, trigger, split, args.script, args.packs_dir
    )
    print(f"created {folder}: edit {'job.py' if args.script else 'run.py'} and defs.yaml, then")
    print("  uv run pytest", folder, "&& uv run python scripts/new_pack.py --check")
    return check(args.packs_dir)


if __name__ == "__main__":
    sys.exit(main())
