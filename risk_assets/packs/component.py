"""The ``Pack`` component type: one folder a data scientist writes becomes one Dagster asset.

A pack folder under ``risk_assets/packs/defs/<name>/`` holds ``defs.yaml``
(``type: risk_assets.packs.component.Pack`` and the attributes below) and either

- ``run.py`` with a typed pure function ``run(<one parameter per input>) -> dict``, or
- a script migrated unchanged from cron (``script: legacy.py``), run as a subprocess through
  Dagster Pipes (``pipes_shim``): its stdout lines go to the run log, a non-zero exit fails the run.
  It reads its inputs from the JSON file ``$PACK_INPUTS`` and writes its output (a JSON object) to
  ``$PACK_OUTPUT``.

The component builds the asset with its automation condition (``on_cron`` for a ``schedule``,
``eager`` for a ``trigger``), retry policy, run-time limit (``dagster/max_runtime``), owner, kinds,
tags and code references (the pack's own files). The output is written to the lake as
``work/onboarding/<name>/latest.json`` (``risk_assets.tables.pack_output``), where onboarding and
other packs read it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster._utils.schedules import is_valid_cron_string
from pydantic import model_validator

from risk_assets.tables import LATEST, TAGS, pack_output

PACK_FILE = "defs.yaml"
FUNCTION_FILE = "run.py"
SHIM = "risk_assets.packs.pipes_shim"
RECENT_SIGNUPS = 5000
HISTORY_SIZE = 6000
RECENT_BANK_FEATURES = 2000
_OWNER_RE = re.compile(r"^(team:[A-Za-z0-9_.\-]+|[^@\s]+@[^@\s]+\.[A-Za-z]+)$")
_DURATION_RE = re.compile(r"^(\d+)\s*([smh])$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


class PackError(ValueError):
    """A pack's YAML or code breaks a rule; the message says which pack, what and how to fix it."""


# ---- sources: inputs that are not packs (what the cron jobs used to query themselves) ----------


def _recent_signups(resources: Any) -> list[dict[str, Any]]:
    """The last 5,000 valid applications of the ``signups`` stream, newest first."""
    from risk_assets import streams
    from risk_assets.validation import validate_signup

    entries = resources.redis.get_client().xrevrange(streams.SIGNUPS, count=RECENT_SIGNUPS)
    return [v.application for sid, f in entries if (v := validate_signup(sid, f)).ok]


def _loan_history(resources: Any) -> list[dict[str, Any]]:
    """6,000 labelled past applicants: the model features and ``defaulted`` (0/1)."""
    from risk_assets import science

    rows, labels = science.synthetic_history(HISTORY_SIZE)
    return [{**r, "defaulted": y} for r, y in zip(rows, labels, strict=True)]


def _recent_bank_features(resources: Any) -> list[dict[str, Any]]:
    """Bank features of the last 2,000 applicants that reached ``bank_features``."""
    from risk_assets.tables import BANK_FEATURES

    ids = BANK_FEATURES.ids(resources.lake)[-RECENT_BANK_FEATURES:]
    return [BANK_FEATURES.read(resources.lake, i) for i in ids]


SOURCES: dict[str, tuple[Callable[[Any], Any], set[str]]] = {
    "recent_signups": (_recent_signups, {"redis"}),
    "loan_history": (_loan_history, set()),
    "recent_bank_features": (_recent_bank_features, set()),
}
"""Input name -> (loader, resource keys it needs besides ``lake``)."""


# ---- helpers -------------------------------------------------------------------------------------


def seconds(duration: str | int) -> int:
    """``"90m"`` -> 5400; ``"30s"``, ``"2h"``; a bare integer is seconds."""
    if isinstance(duration, int):
        return duration
    m = _DURATION_RE.match(str(duration).strip())
    if not m:
        raise ValueError(duration)
    return int(m.group(1)) * _UNITS[m.group(2)]


def pack_names(packs_dir: Path) -> list[str]:
    """The packs next to each other: every folder of ``packs_dir`` holding a ``defs.yaml``."""
    return sorted(p.parent.name for p in packs_dir.glob(f"*/{PACK_FILE}"))


def _line_of(fn: Callable[..., Any]) -> int:
    try:
        return inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return 1


class Pack(dg.Component, dg.Model, dg.Resolvable):
    """A data scientist's periodic model: a pure function or a migrated script, and its wiring."""

    name: str
    owner: str | None = None
    description: str
    schedule: str | None = None
    trigger: list[str] = []
    timeout: str = "30m"
    retries: int = 0
    inputs: list[str] = []
    outputs: list[str] = []
    script: str | None = None
    kinds: list[str] = []
    group: str = "onboarding_models"

    @model_validator(mode="after")
    def _rules(self) -> Pack:
        where = f"pack '{self.name}'"
        if not self.owner or not self.owner.strip():
            raise PackError(
                f"{where}: owner is missing; every pack names who is paged when it fails: "
                "an e-mail (jane.doe@bluevine.com) or a team (team:risk)"
            )
        if not _OWNER_RE.match(self.owner):
            raise PackError(f"{where}: owner '{self.owner}' is neither an e-mail nor 'team:<name>'")
        if self.schedule is None and not self.trigger:
            raise PackError(
                f"{where}: needs a schedule (cron, e.g. '*/5 * * * *') or a trigger "
                "(upstream packs, e.g. [risk_model])"
            )
        if self.schedule is not None and self.trigger:
            raise PackError(f"{where}: give a schedule or a trigger, not both")
        if self.schedule is not None and not is_valid_cron_string(self.schedule):
            raise PackError(
                f"{where}: schedule '{self.schedule}' is not a valid cron expression: five "
                "fields 'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *' "
                "(every 5 minutes) or '0 3 * * *' (daily at 03:00 UTC)"
            )
        try:
            limit = seconds(self.timeout)
        except ValueError:
            limit = 0
        if limit <= 0:
            raise PackError(
                f"{where}: timeout '{self.timeout}' is not a duration like '90m', '30s' or '2h'"
            )
        if not 0 <= self.retries <= 10:
            raise PackError(f"{where}: retries must be between 0 and 10, not {self.retries}")
        return self

    # ---- checks that need the folder ----------------------------------------------------------

    def check_wiring(self, folder: Path) -> None:
        """Folder name, inputs and triggers (other packs or sources), the code file."""
        where = f"pack '{self.name}'"
        if folder.name != self.name:
            raise PackError(f"{where}: lives in folder '{folder.name}'; name and folder must match")
        packs = set(pack_names(folder.parent)) - {self.name}
        for name in self.inputs:
            if name not in packs and name not in SOURCES:
                raise PackError(
                    f"{where}: unknown input '{name}'; an input is another pack or a source: "
                    + ", ".join(sorted(packs | set(SOURCES)))
                )
        for name in self.trigger:
            if name not in packs:
                raise PackError(
                    f"{where}: unknown trigger '{name}'; a trigger is another pack: "
                    + ", ".join(sorted(packs))
                )
        code = folder / (self.script or FUNCTION_FILE)
        if not code.is_file():
            raise PackError(f"{where}: {code.name} not found in {folder}")

    def load_function(self, context: dg.ComponentLoadContext) -> Callable[..., dict[str, Any]]:
        """``run`` of the pack's ``run.py``, checked against the declared inputs."""
        where = f"pack '{self.name}'"
        module = importlib.import_module(f"{context.defs_relative_module_name(context.path)}.run")
        fn = getattr(module, "run", None)
        if not callable(fn):
            raise PackError(f"{where}: run.py defines no function 'run'")
        sig = inspect.signature(fn)
        params = list(sig.parameters)
        if params != self.inputs:
            raise PackError(
                f"{where}: run({', '.join(params)}) must take exactly the declared inputs, in "
                f"order: run({', '.join(self.inputs)})"
            )
        untyped = [p for p, v in sig.parameters.items() if v.annotation is inspect.Parameter.empty]
        if untyped or sig.return_annotation is inspect.Signature.empty:
            raise PackError(
                f"{where}: run must be typed (parameters {untyped or '-'}, and its return value)"
            )
        return fn

    # ---- the asset ----------------------------------------------------------------------------

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        folder = Path(context.path)
        self.check_wiring(folder)
        fn = None if self.script else self.load_function(context)
        code_file = folder / (self.script or FUNCTION_FILE)
        references = [
            dg.LocalFileCodeReference(
                file_path=str(code_file), line_number=_line_of(fn) if fn else 1, label="code"
            ),
        ]
        objects = pack_output(self.name)
        resource_keys = {"lake"}.union(*(SOURCES[i][1] for i in self.inputs if i in SOURCES))
        deps = sorted(set(self.trigger) | {i for i in self.inputs if i not in SOURCES})
        if self.schedule is not None:
            condition = (
                dg.AutomationCondition.on_cron(self.schedule) | dg.AutomationCondition.on_missing()
            )
        else:
            condition = dg.AutomationCondition.eager()
        pack = self
        kind = "script" if self.script else "python"

        @dg.asset(
            name=self.name,
            description=self.description.strip(),
            group_name=self.group,
            deps=deps,
            owners=[self.owner],
            kinds={"python", *self.kinds},
            tags={**TAGS, "pack": self.name, "pack/kind": kind},
            metadata={
                "lake_prefix": objects.prefix,
                "schedule": self.schedule or f"after {', '.join(self.trigger)}",
                "timeout": self.timeout,
                "dagster/code_references": dg.CodeReferencesMetadataValue(
                    code_references=references
                ),
            },
            retry_policy=dg.RetryPolicy(
                max_retries=self.retries, delay=5, backoff=dg.Backoff.EXPONENTIAL
            )
            if self.retries
            else None,
            automation_condition=condition,
            required_resource_keys=resource_keys,
        )
        def _pack(context) -> dg.MaterializeResult:
            values = pack.read_inputs(context.resources)
            output = fn(**values) if fn is not None else pack.run_script(context, code_file, values)
            return pack.publish(context, output)

        return dg.Definitions(assets=[_pack])

    def read_inputs(self, resources: Any) -> dict[str, Any]:
        """Each input by name: a source's rows, or another pack's latest output (``None`` if the
        upstream pack never ran)."""
        return {
            name: SOURCES[name][0](resources)
            if name in SOURCES
            else pack_output(name).read_if_exists(resources.lake, LATEST)
            for name in self.inputs
        }

    def run_script(
        self, context: dg.AssetExecutionContext, script: Path, values: dict[str, Any]
    ) -> dict[str, Any]:
        """The migrated script through Pipes: stdout to the run log, exit code fails the run."""
        with tempfile.TemporaryDirectory(prefix=f"pack-{self.name}-") as tmp:
            inputs, output = Path(tmp, "inputs.json"), Path(tmp, "output.json")
            inputs.write_text(json.dumps(values, default=str))
            dg.PipesSubprocessClient().run(
                context=context,
                command=[sys.executable, "-m", SHIM, str(script)],
                env={"PACK_INPUTS": str(inputs), "PACK_OUTPUT": str(output)},
                cwd=str(script.parent),
            )
            if not output.exists():
                raise dg.Failure(f"pack '{self.name}': {script.name} wrote nothing to $PACK_OUTPUT")
            return json.loads(output.read_text())

    def publish(self, context: dg.AssetExecutionContext, output: Any) -> dg.MaterializeResult:
        """Check the output against ``outputs``, stamp ``as_of``, write ``latest.json``."""
        if not isinstance(output, dict):
            raise dg.Failure(f"pack '{self.name}': run returned {type(output).__name__}, not dict")
        missing = [k for k in self.outputs if k not in output]
        if missing:
            raise dg.Failure(f"pack '{self.name}': output lacks declared fields {missing}")
        from risk_assets import streams

        output = {**output, "as_of": streams.now_iso()}
        key = pack_output(self.name).write(context.resources.lake, LATEST, output)
        scalars = {k: v for k, v in output.items() if isinstance(v, bool | int | float | str)}
        return dg.MaterializeResult(
            metadata={**scalars, "path": dg.MetadataValue.path(context.resources.lake.uri(key))}
        )


def read_pack_yaml(folder: Path) -> dict[str, Any]:
    """The attributes of a pack folder's ``defs.yaml`` (for tools and tests)."""
    return yaml.safe_load((folder / PACK_FILE).read_text())["attributes"]
