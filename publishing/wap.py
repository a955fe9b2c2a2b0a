"""Write-audit-publish: the one mechanism every published table goes through.

1. **write** the candidate version beside production, in a staging folder of its own run
   (``staging/<table>/<partition>/run=<run_id>/``), stamped with a version token and a digest
   of its rows (``publishing.journal``);
2. **audit** it: each audit is a plain function ``(df) -> Audit``, reported as a *blocking*
   asset check of the asset that publishes the table;
3. **publish** when every audit passes: the staged object is checked to be the one that was
   audited (its fingerprint), a journal records the intent, the previous production partition
   is copied to ``backup/<table>/<partition>/`` and the candidate replaces production
   atomically (a rename locally, a server-side copy on S3); when an audit fails, production is
   untouched, an alert names the table, partition, failed figures and what production holds,
   and the step fails (the Airflow "exit 1").

**Candidates the run process never loads** (``Staged``): a job (the Spark engine,
``near_assets.engine.run_per_device_days``) may write the candidate itself, as one object in
this run's staging folder with the ``wap`` stamp (version, content digest, run) in its footer,
and report its ``Figures`` (rows, columns, nulls, rows violating each row rule, duplicated keys,
distinct values, medians) computed over exactly the rows it wrote. Every audit takes the rows
or their ``Figures`` and decides the same (``rows_satisfy(..., sql=...)`` states its rule in
SQL for the job; ``audit_needs`` says what to compute). Before auditing, the staged object is
checked to be the one the job described (stamp and size); from there the path is the same:
fingerprint, lock, journal, backup, atomic copy (multipart above the threshold on S3).

**One publisher per table partition**: the whole write-audit-publish holds the partition's
publish lock (``publishing.journal.publish_lock``: ``flock`` locally, a conditional-PUT lease
on S3). A run that cannot get it within ``lock_wait_s`` (``PUBLISH_LOCK_WAIT_S``) fails with a
retryable message and changes nothing. ``publish_pool(table)`` names a Dagster concurrency pool
per table (``pool="publish/<table>"``) so such runs queue in Dagster instead.

**Converging after a crash**: the publish journal (``staging/<table>/<partition>/_journal.json``)
is written before the first swap and deleted after the last. The next publisher of the
partition finds it (``converge``, first thing under the lock) and rolls the interrupted
publish forward (every copy published or still completely staged) or back (production to the
version it held before), removes the stages crashed runs left, and says so in the log and in
its materialization (``recovered``). After a target's publish call fails, its state is read
back (``live_version``): a swap whose reply was lost is recorded as published. The backup is
always the version production held before: a candidate whose rows production already holds
replaces nothing (``production_holds: unchanged``), and the backup a publish replaces is kept
until the publish completes, so a rolled back publish puts it back.

A table can have extra **targets** (e.g. ``publishing.redis_hash.RedisHashTarget``, the
serving hash of ``audience_estimates``): each is staged beside its production copy together with
the lake, audited (its ``verify`` is one more blocking check), and published only after every
audit passed, right after the lake partition. On a failed audit every stage is discarded and
no production copy (lake or target) is touched. If a target cannot publish after the lake did
(and reading it back shows its swap did not run), the lake partition is rolled back to what it
was and the step fails.

**Operator override**: a run tagged ``platform/publish_override=<reason>`` (``OVERRIDE_TAG``;
launchpad or ``dagster job execute --tags``) still runs and reports every audit, but publishes a
partition whose failed audits are all overridable: those checks are reported failed with
severity WARN, the materialization records ``override_reason``, ``overridden_audits`` and
``override_run_id``, and an alert says "published by operator override". Contract breaks
(``is_contract``: ``has_columns``, ``no_nulls``, ``unique_keys``, ``rows_satisfy``,
``Audit(contract=True)``, an audit that raised), a target stage that failed its verify and an
empty table still block (``override_blockers``). The published object's ``wap`` stamp
records ``override`` (so later baselines leave the day out, ``publishing.baselines``): a
pandas candidate is written with it, a ``Staged`` one (stamped by its job before the audits)
is restamped in place before the publish (``journal.restamp``: row group by row group, same
rows and digest). Roll back with ``scripts/restore.py``.

Usage inside an asset declared with ``check_specs=audit_specs(key, AUDITS, targets)``::

    yield from write_audit_publish(
        context, lake, alerts, STAY_POINTS, STAY_POINTS.folder(day), df, AUDITS
    )

``table`` is a ``publishing.tables.LakeTable`` declaration or a published table's name; the lake
keys come from ``publishing.tables`` (``published_keys``, ``run_staging_key``). Every publish
reports ``dagster/row_count`` (the rows published), ``version`` and ``production_holds``.
``fault`` is a test hook called after each step (``STEPS``): raising there is a crash there.

Audits that need history (row counts of the trailing published days) or reference data are
built at run time by factories whose check name does not depend on their arguments
(``row_count_band(history)``, ``covers_known(column, known)``): declare them with empty
arguments, run them with real ones. Restore is ``restore_table`` (``scripts/restore.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import dagster as dg
import numpy as np
import pandas as pd

from publishing import journal
from publishing.journal import part_key
from publishing.tables import (
    RUN_FOLDER,
    LakeTable,
    previous_backup_key,
    published_keys,
    run_staging_key,
    trailing_days,
)
from publishing.tables import publish_pool as publish_pool  # re-export for asset modules
from resources.alerts import AlertsResource, run_url
from resources.lake import LakeResource

ROW_COUNT = "dagster/row_count"


@dataclass(frozen=True)
class Audit:
    """The outcome of one audit on a candidate table version."""

    name: str
    passed: bool
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    contract: bool = False
    """A contract audit (columns, nulls, keys, row invariants): an operator override never
    publishes over its failure (``is_contract``)."""


@dataclass(frozen=True)
class Figures:
    """What an audit needs of a table version, computed where the rows are (e.g. by the Spark
    job that wrote them) instead of loading them: audits take a ``Figures`` wherever they take a
    DataFrame (``len(figures)`` is the row count) and decide exactly as they would on the rows.

    ``columns``: the written schema; ``nulls``: per column; ``violations``: violating rows per
    ``rows_satisfy`` name; ``duplicates``: duplicated rows per key tuple (``",".join(keys)``);
    ``distinct``, ``medians``, ``value_counts``: per column, for the metrics and the metadata.
    ``audit_needs(audits)`` says what to compute.
    """

    rows: int
    columns: tuple[str, ...] = ()
    nulls: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int] = field(default_factory=dict)
    medians: dict[str, float | None] = field(default_factory=dict)
    value_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.rows

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figures:
        return cls(
            rows=int(d.get("rows", 0)),
            columns=tuple(d.get("columns", ())),
            nulls={k: int(v) for k, v in d.get("nulls", {}).items()},
            violations={k: int(v) for k, v in d.get("violations", {}).items()},
            duplicates={k: int(v) for k, v in d.get("duplicates", {}).items()},
            distinct={k: int(v) for k, v in d.get("distinct", {}).items()},
            medians=dict(d.get("medians", {})),
            value_counts={k: dict(v) for k, v in d.get("value_counts", {}).items()},
        )

    def figure(self, kind: str, column: str) -> Any:
        values = getattr(self, kind)
        if column not in values:
            raise KeyError(f"{kind} of {column!r} was not computed (see audit_needs)")
        return values[column]


@dataclass(frozen=True)
class Staged:
    """A candidate written to its run's staging folder by someone else (the Spark job): its
    stamp (``version``, ``content`` digest, in the footer), size, and the audit ``figures``
    computed over exactly those rows while writing them. ``write_audit_publish`` audits the
    figures and publishes the object without loading it; ``len()`` is its row count."""

    key: str
    version: str
    content: str
    size: int
    figures: Figures

    def __len__(self) -> int:
        return self.figures.rows


Rows = pd.DataFrame | Figures
AuditFn = Callable[[Rows], Audit]


def audit_needs(audits: Sequence[AuditFn]) -> dict[str, Any]:
    """What a job must compute (``Figures``) so that ``audits`` can be judged without the rows:
    ``rules`` (name -> {sql, unique}), ``nulls`` (columns), ``duplicates`` (key tuples)."""
    out: dict[str, Any] = {"rules": {}, "nulls": [], "duplicates": []}
    for fn in audits:
        need = getattr(fn, "needs", None) or {}
        out["rules"].update(need.get("rules", {}))
        out["nulls"] += [c for c in need.get("nulls", []) if c not in out["nulls"]]
        out["duplicates"] += [k for k in need.get("duplicates", []) if k not in out["duplicates"]]
    return out


def audit_name(fn: AuditFn) -> str:
    return getattr(fn, "audit_name", None) or fn.__name__


@runtime_checkable
class PublishTarget(Protocol):
    """A production copy of a table outside the lake, published only after the audits pass."""

    name: str

    @property
    def check_name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def stage(self, df: pd.DataFrame, partition: str | None) -> dict[str, Any]:
        """Write ``df`` beside production; return metadata. Production stays untouched."""

    def verify(self, df: pd.DataFrame) -> Audit:
        """Audit the staged copy (e.g. it holds exactly the rows of ``df``)."""

    def publish(self, partition: str | None) -> dict[str, Any]:
        """Atomically replace production with the stage, keeping the previous as backup."""

    def discard(self) -> None:
        """Drop the stage."""

    def restore(self) -> int:
        """Roll production back to the backup."""


def _first_line(doc: str | None) -> str | None:
    return doc.strip().splitlines()[0] if doc and doc.strip() else None


def audit_specs(
    asset_key: dg.AssetKey | str,
    audits: Sequence[AuditFn],
    targets: Sequence[PublishTarget | tuple[str, str]] = (),
) -> list[dg.AssetCheckSpec]:
    """Blocking check specs for ``audits`` (and each target's ``verify``) on ``asset_key``.

    ``targets`` may be target objects or ``(check_name, description)`` pairs, so a target that
    needs a live connection does not have to exist when the definitions load.
    """
    key = dg.AssetKey.from_coercible(asset_key)
    specs = [
        dg.AssetCheckSpec(
            name=audit_name(fn), asset=key, blocking=True, description=_first_line(fn.__doc__)
        )
        for fn in audits
    ]
    for t in targets:
        name, description = t if isinstance(t, tuple) else (t.check_name, t.description)
        specs.append(
            dg.AssetCheckSpec(name=name, asset=key, blocking=True, description=description)
        )
    return specs


def _declared(table: str | LakeTable) -> LakeTable:
    """The declaration of a published table (a bare name: a daily ``curated/<name>`` table)."""
    return table if isinstance(table, LakeTable) else LakeTable.curated(table)


def run_audits(df: Rows, audits: Sequence[AuditFn]) -> list[Audit]:
    results = []
    for fn in audits:
        try:
            result = fn(df)
        except Exception as exc:  # a crashing audit is a failed audit, with the reason
            result = Audit(
                audit_name(fn), False, f"audit raised {type(exc).__name__}: {exc}", contract=True
            )
        results.append(result)
    return results


def failure_message(table: str, partition: str | None, failed: Sequence[Audit], run_id: str) -> str:
    lines = [
        f":rotating_light: *{table}* `{partition or '-'}` failed its audit "
        f"({', '.join(a.name for a in failed)}); production untouched."
    ]
    for a in failed:
        figures = ", ".join(f"{k}={v}" for k, v in a.figures.items())
        lines.append(f"• `{a.name}`: {a.detail}" + (f" ({figures})" if figures else ""))
    lines.append(f"Run: {run_url(run_id)}")
    return "\n".join(lines)


def is_warning(a: Audit) -> bool:
    """An audit that passed the gate but flags a moderate shift (``figures["severity"]``)."""
    return a.passed and a.figures.get("severity") == "WARN"


def _check_result(key: dg.AssetKey, a: Audit, override: str | None = None) -> dg.AssetCheckResult:
    # A warning publishes (the step goes on) but shows as a WARN-severity failed check; so does
    # a failed audit an operator overrode (``override``: the reason).
    warn = is_warning(a) or override is not None
    detail = a.detail or None
    if override is not None:
        detail = f"overridden by operator ({override}): {a.detail or 'failed'}"
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=a.name,
        passed=a.passed and not warn,
        severity=dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR,
        description=detail,
        metadata={
            **{k: v for k, v in a.figures.items() if v is not None},
            **({"override_reason": override} if override is not None else {}),
        },
    )


# ---- operator override -----------------------------------------------------------------------

OVERRIDE_TAG = "platform/publish_override"
"""Run tag whose value (the reason) publishes a partition its audits blocked; see
``override_blockers`` for what an override never publishes over (docs/OPERATIONS.md)."""
OVERRIDE_MAX_CHARS = 300


def publish_override(context: Any) -> str | None:
    """The operator's reason from the run tag ``platform/publish_override`` (whitespace
    collapsed, at most ``OVERRIDE_MAX_CHARS``), None without the tag or with an empty one."""
    try:
        tags = context.run.tags or {}
    except Exception:  # a context without a run (direct invocation): no override
        return None
    raw = tags.get(OVERRIDE_TAG)
    if raw is None:
        return None
    reason = " ".join(str(raw).split())[:OVERRIDE_MAX_CHARS]
    if not reason:
        context.log.warning(f"run tag {OVERRIDE_TAG} is empty: no override (a reason is required)")
    return reason or None


def is_contract(a: Audit) -> bool:
    """A contract break: never published over, even with an operator override. Contract audits
    are those built by ``has_columns``, ``no_nulls``, ``unique_keys`` and ``rows_satisfy`` (row
    invariants, e.g. estimate >= visitors), any ``Audit(contract=True)`` or with
    ``figures["contract"]``, and an audit that raised (it could not judge the rows)."""
    return a.contract or bool(a.figures.get("contract"))


def override_blockers(
    df: Rows, failed: Sequence[Audit], targets: Sequence[PublishTarget]
) -> list[str]:
    """Why an override cannot publish these failed audits: the contract breaks, a target stage
    that failed its verify (the copy is not the audited rows) and an empty table."""
    target_checks = {t.check_name for t in targets}
    out = [a.name for a in failed if is_contract(a) or a.name in target_checks]
    if len(df) == 0:
        out.append("empty table (0 rows)")
    return out


def _discard(targets: Sequence[PublishTarget], log: Any) -> None:
    for t in targets:
        try:
            t.discard()
        except Exception as exc:  # a stage left behind expires by itself; never mask the cause
            log.warning(f"could not discard the {t.name} stage: {exc}")


Fault = Callable[[str], None]
"""Test hook: called with the name of each publish step once it is done (``staged``,
``audited``, ``journal``, ``lake_backup``, ``lake_swap``, ``target:<name>``, ``done``); raising
(or exiting) there is a crash at that step."""

STEPS = ("staged", "audited", "journal", "lake_backup", "lake_swap", "target:{}", "done")


def _no_fault(step: str) -> None:
    pass


def _run_id(context: Any) -> str:
    run = getattr(context, "run", None)
    return str(getattr(run, "run_id", None) or context.run_id)


def _version_text(stamp: dict[str, Any] | None) -> str:
    if stamp is None:
        return "nothing"
    if not stamp:
        return "an unversioned object (published before versions)"
    return f"version {stamp.get('version')} of run {stamp.get('run_id')}"


def _stale_runs(lake: LakeResource, table: str, partition: str | None, keep: str) -> list[str]:
    root = published_keys(table, partition)[0]
    return [
        f"{root}/{d}"
        for d in lake.list_dirs(root)
        if d.startswith(RUN_FOLDER) and d != f"{RUN_FOLDER}{keep}"
    ]


def _lake_swap(
    lake: LakeResource,
    staged: str,
    production: str,
    backup: str,
    content: str,
    fault: Fault,
    previous: str,
) -> dict[str, Any]:
    """Move the staged object to production; production's previous version goes to backup
    unless production already holds these rows (then only the staged object is dropped). The
    backup it replaces is kept at ``previous`` until the publish completes."""
    before = journal.read_stamp(lake, production)
    if before is not None and before.get("content") == content:
        lake.delete(staged)
        return {"published": lake.uri(part_key(production)), "backup": None, "unchanged": True}
    if before is not None:
        if lake.exists(part_key(backup)):
            lake.store.move_object(part_key(backup), part_key(previous))
        lake.copy(part_key(production), part_key(backup))
    fault("lake_backup")
    lake.store.move_object(part_key(staged), part_key(production))
    lake.delete(staged)
    fault("lake_swap")
    return {
        "published": lake.uri(part_key(production)),
        "backup": lake.uri(part_key(backup)) if before is not None else None,
        "unchanged": False,
    }


def _staged_problem(
    lake: LakeResource, staged: Staged, staging: str, fp: dict[str, Any] | None
) -> str | None:
    """Why a pre-staged candidate is not the object its figures describe (None: it is)."""
    if staged.key.rstrip("/") != staging:
        return f"the candidate was staged at {staged.key}, not in this run's folder {staging}"
    if fp is None:
        return (
            f"the staged candidate {staging} is gone (removed by another publisher's cleanup?); "
            "retry the run"
        )
    stamp = journal.read_stamp(lake, staging) or {}
    if (stamp.get("version"), stamp.get("content")) != (staged.version, staged.content):
        return f"the staged object is not the one the job wrote and audited (stamp {stamp})"
    if fp.get("size") != staged.size:
        return f"the staged object changed size since the job wrote it ({staged.size} -> {fp})"
    return None


def _read_back(t: PublishTarget, version: str) -> str:
    """After a publish call failed: did the swap run? ``published`` / ``not_published`` /
    ``unknown`` (the target cannot be asked, or does not answer)."""
    live_version = getattr(t, "live_version", None)
    if live_version is None:
        return "not_published"
    try:
        return "published" if live_version().get("version") == version else "not_published"
    except Exception:
        return "unknown"


def converge(
    lake: LakeResource,
    table: str | LakeTable,
    partition: str | None,
    targets: Sequence[PublishTarget] = (),
    log: Any = None,
    keep_run: str = "",
) -> str | None:
    """Bring an interrupted publish of one partition to a consistent state; clear leftovers.

    Call it holding the partition's publish lock (``write_audit_publish`` does, first thing).
    With no journal it only removes the staging of crashed runs. With one, the publish it
    records passed its audits: it is **rolled forward** when every copy is either published or
    still completely staged (the lake object matching its audit fingerprint, each target's
    stage), else **rolled back** (lake production back to the version it held before, each
    target back to its backup if it holds the interrupted version). Returns what it did.
    """
    name = _declared(table).name
    staging, production, backup = published_keys(name, partition)
    previous = previous_backup_key(name, partition)
    entry = journal.read_journal(lake, name, partition)
    stale = _stale_runs(lake, name, partition, keep_run)
    note = None
    unknown = [
        e["name"]
        for e in (entry or {}).get("targets", [])
        if not hasattr({t.name: t for t in targets}.get(e["name"]), "state_of")
    ]
    if entry is not None and unknown:
        # e.g. a restore without the serving copies: only a run that has them can converge
        stale = [f for f in stale if f != entry.get("staged")]
        note = (
            f"{name} {partition or ''}: an interrupted publish (run {entry.get('run_id')}, version "
            f"{entry.get('version')}) is left as is: converging it needs the target(s) {unknown};"
            " the next run of the asset does it."
        )
        entry = {"state": "pending"}
    if entry is not None and entry.get("state") not in ("unreadable", "pending"):
        by_name = {t.name: t for t in targets}
        prod = journal.read_stamp(lake, production)
        lake_done = prod is not None and prod.get("content") == entry["content"]
        staged_ok = journal.fingerprint(lake, entry["staged"]) == entry["fingerprint"]
        states = {}
        for e in entry.get("targets", []):
            t = by_name.get(e["name"])
            states[e["name"]] = t.state_of(e) if t is not None and hasattr(t, "state_of") else "?"
        forward = (lake_done or staged_ok) and all(
            s in ("published", "staged") for s in states.values()
        )
        done: list[str] = []
        if forward:
            if not lake_done:
                _lake_swap(
                    lake, entry["staged"], production, backup, entry["content"], _no_fault, previous
                )
                done.append("lake swapped in")
            for e in entry.get("targets", []):
                if states[e["name"]] == "staged":
                    by_name[e["name"]].complete(e)  # type: ignore[attr-defined]
                    done.append(f"{e['name']} swapped in")
            how = "rolled forward"
        else:
            before = entry.get("lake_before")
            if lake_done:
                bak = journal.read_stamp(lake, backup)
                if before is None:
                    lake.delete(part_key(production))
                    done.append("lake partition removed (it did not exist before)")
                elif bak is not None and bak.get("content") == before.get("content"):
                    lake.copy(part_key(backup), part_key(production))
                    done.append("lake back to its backup")
                else:
                    done.append("lake kept (its previous version is not in backup)")
            if lake.exists(part_key(previous)):  # the backup the interrupted publish replaced
                lake.store.move_object(part_key(previous), part_key(backup))
            for e in entry.get("targets", []):
                t = by_name.get(e["name"])
                if t is not None and hasattr(t, "undo"):
                    done.append(t.undo(e))  # type: ignore[attr-defined]
            how = "rolled back"
        lake.delete(entry["staged"])
        lake.delete(previous)
        journal.delete_journal(lake, name, partition)
        holds = _version_text(journal.read_stamp(lake, production))
        note = (
            f"{name} {partition or ''}: the publish of run {entry.get('run_id')} (version "
            f"{entry.get('version')}, interrupted at '{entry.get('state')}') was {how}: "
            f"{'; '.join(done) or 'nothing to change'}. Lake production now holds {holds}."
        )
    if entry is None and lake.exists(previous):  # no journal: its publish completed
        stale.append(previous)
    partials = journal.clear_partials(lake, [staging, production, backup])
    if partials:
        stale += ["partial object"] * partials
    for folder in stale:
        if "/" in folder:
            lake.delete(folder)
    for t in targets:
        if hasattr(t, "clear_stale"):
            stale += [f"{t.name} stage"] * t.clear_stale(partition)  # type: ignore[attr-defined]
    if stale:
        cleared = f"cleared {len(stale)} stage(s) left by crashed runs"
        note = f"{note} {cleared}" if note else f"{name} {partition or ''}: {cleared}"
    if note and log is not None:
        log.warning(note)
    return note


def write_audit_publish(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    alerts: AlertsResource,
    table: str | LakeTable,
    partition: str | None,
    df: pd.DataFrame | Staged,
    audits: Sequence[AuditFn],
    metadata: dict[str, Any] | None = None,
    asset_key: dg.AssetKey | None = None,
    targets: Sequence[PublishTarget] = (),
    lock_wait_s: float | None = None,
    fault: Fault | None = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write ``df`` (and every target) to staging, audit, then publish all or alert and fail.

    ``df`` may be a ``Staged`` candidate: an object a job already wrote to this run's staging
    folder (``run_staging_key``) with its stamp in the footer and the audit ``Figures`` of its
    rows. It is checked to be that object (stamp and size) and audited from its figures; the
    rest (lock, journal, backup, swap) is the same, and the run process never loads it.

    ``partition`` is the partition folder (``STAY_POINTS.folder(day)``), None when unpartitioned.
    The whole publish holds the partition's publish lock (``publishing.journal``; a run that
    waits longer than ``lock_wait_s`` fails, retryable). It first converges an interrupted
    publish of the partition (``converge``), stages under ``run=<run_id>``, and journals the
    swaps. ``fault`` is the crash-test hook (see ``Fault``).
    """
    name = _declared(table).name
    key = asset_key or context.asset_key
    run_id = _run_id(context)
    fault = fault or _no_fault
    try:
        lock = journal.publish_lock(lake, name, partition, run_id, wait_s=lock_wait_s)
        lease = lock.__enter__()
    except journal.PublishLockTimeout as exc:
        raise dg.Failure(description=str(exc), allow_retries=True) from exc
    try:
        yield from _locked_publish(
            context,
            lake,
            alerts,
            name,
            partition,
            df,
            audits,
            metadata,
            key,
            targets,
            lease,
            fault,
        )
    except BaseException as exc:
        if not lock.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        lock.__exit__(None, None, None)


def _locked_publish(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    alerts: AlertsResource,
    table: str,
    partition: str | None,
    df: pd.DataFrame | Staged,
    audits: Sequence[AuditFn],
    metadata: dict[str, Any] | None,
    key: dg.AssetKey,
    targets: Sequence[PublishTarget],
    lease: journal.Lease,
    fault: Fault,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    run_id = _run_id(context)
    _, production, backup = published_keys(table, partition)
    recovered = converge(lake, table, partition, targets, context.log, keep_run=run_id)
    staging = run_staging_key(table, partition, run_id)
    rows: Rows
    if isinstance(df, Staged):  # written by the job that computed it: audit its figures
        if targets:
            raise ValueError("a pre-staged candidate cannot feed publish targets")
        version, content, rows = df.version, df.content, df.figures
        staged_fp = journal.fingerprint(lake, staging)
        if problem := _staged_problem(lake, df, staging, staged_fp):
            raise dg.Failure(
                description=f"{table} {partition or ''}: {problem}; nothing published, "
                f"production holds {_version_text(journal.read_stamp(lake, production))}",
                allow_retries=True,
            )
    else:
        version, content, rows = journal.new_version(), journal.content_digest(df), df
        lake.delete(staging)
        journal.write_versioned(
            lake, df, staging, {"version": version, "content": content, "run_id": run_id}
        )
        staged_fp = journal.fingerprint(lake, staging)
    staged_meta: dict[str, Any] = {}
    results: list[Audit] = []
    try:
        for t in targets:
            if hasattr(t, "prepare"):
                t.prepare(version, content)  # type: ignore[attr-defined]
            staged_meta.update(t.stage(df, partition))
    except Exception as exc:
        results.append(Audit(t.check_name, False, f"staging failed: {exc}"))
    fault("staged")
    results = run_audits(rows, audits) + results
    for t in targets:
        if not any(a.name == t.check_name for a in results):
            try:
                results.append(t.verify(df))
            except Exception as exc:
                results.append(Audit(t.check_name, False, f"verify raised {exc}"))
    failed = [a for a in results if not a.passed]
    override = publish_override(context) if failed else None
    blockers = override_blockers(rows, failed, targets) if override else []
    overridden = [a for a in failed if override and not blockers]
    for a in results:
        yield _check_result(key, a, override if a in overridden else None)
    holds = _version_text(journal.read_stamp(lake, production))
    if failed and not overridden:
        refused = (
            f"\nOperator override ({override}) refused: {', '.join(blockers)} never published "
            "over (docs/OPERATIONS.md)."
            if override
            else ""
        )
        alerts.send(
            failure_message(table, partition, failed, run_id)
            + f"\nLake production holds {holds}."
            + refused,
            context.log,
        )
        lake.delete(staging)
        _discard(targets, context.log)
        raise dg.Failure(
            description=f"{table} {partition or ''}: {len(failed)} audit(s) failed "
            f"({', '.join(a.name for a in failed)}); production left untouched"
            + (f"; override refused: {', '.join(blockers)}" if override else ""),
            metadata={a.name: a.detail for a in failed},
            allow_retries=False,  # the same rows fail the same audits on a retry
        )
    if overridden:
        context.log.warning(
            f"{table} {partition or ''}: publishing by operator override ({override}) over "
            f"{', '.join(a.name for a in overridden)}"
        )
        # the published object records the override: later baselines leave the day out
        # (publishing.baselines). Same rows, same content digest. An object a job staged (its
        # stamp written before the audits) is restamped in place, row group by row group.
        stamp = {
            "version": version,
            "content": content,
            "run_id": run_id,
            "override": override,
            "overridden_audits": [a.name for a in overridden],
        }
        if isinstance(df, Staged):
            if journal.fingerprint(lake, staging) != staged_fp:  # changed since its audit
                _discard(targets, context.log)
                raise dg.Failure(
                    description=f"{table} {partition or ''}: the staged object changed after "
                    f"its audit; nothing published, production holds {holds}",
                    allow_retries=True,
                )
            journal.restamp(lake, staging, {**(journal.read_stamp(lake, staging) or {}), **stamp})
        else:
            journal.write_versioned(lake, df, staging, stamp)
        staged_fp = journal.fingerprint(lake, staging)
    fault("audited")
    now_fp = journal.fingerprint(lake, staging)
    try:
        lease.check()
    except journal.PublishLockLost as exc:
        lake.delete(staging)
        _discard(targets, context.log)
        raise dg.Failure(description=str(exc), allow_retries=True) from exc
    if now_fp != staged_fp:
        _discard(targets, context.log)
        raise dg.Failure(
            description=f"{table} {partition or ''}: the staged object changed after its audit "
            f"({staged_fp} -> {now_fp}); nothing published, production holds {holds}",
            allow_retries=True,
        )
    before = journal.read_stamp(lake, production)
    entry = {
        "state": "publishing",
        "table": table,
        "partition": partition,
        "run_id": run_id,
        "version": version,
        "content": content,
        "staged": staging,
        "fingerprint": staged_fp,
        "lake_before": before,
        "targets": [t.journal_entry() for t in targets if hasattr(t, "journal_entry")],
    }
    journal.write_journal(lake, table, partition, entry)
    fault("journal")
    previous = previous_backup_key(table, partition)
    published = _lake_swap(lake, staging, production, backup, content, fault, previous)
    journal.write_journal(lake, table, partition, {**entry, "state": "lake_published"})
    target_meta: dict[str, Any] = {}
    for i, t in enumerate(targets):
        try:
            target_meta.update(t.publish(partition))
            fault(f"target:{t.name}")
        except Exception as exc:
            state = _read_back(t, version)
            if state == "published":  # the swap ran, its reply was lost: it is published
                context.log.warning(f"{t.name}: publish reply lost ({exc}); read back: published")
                target_meta[t.name] = f"published (reply lost: {exc}; read back from {t.name})"
                continue
            if state == "unknown":
                msg = (
                    f"{table} {partition or ''}: the {t.name} publish failed ({exc}) and its state"
                    f" cannot be read back; lake production holds version {version}. The next "
                    "run of this partition converges lake and targets (journal kept)."
                )
                alerts.send(f":rotating_light: {msg}\nRun: {run_url(run_id)}", context.log)
                raise dg.Failure(description=msg, allow_retries=True) from exc
            _discard(targets[i:], context.log)
            for done in targets[:i]:
                if hasattr(done, "undo"):
                    done.undo(done.journal_entry())  # type: ignore[attr-defined]
                else:
                    done.restore()
            if not published["unchanged"]:
                _undo_lake_publish(lake, production, backup, had_previous=before is not None)
                if lake.exists(part_key(previous)):
                    lake.store.move_object(part_key(previous), part_key(backup))
            journal.delete_journal(lake, table, partition)
            holds = _version_text(journal.read_stamp(lake, production))
            alerts.send(
                f":rotating_light: *{table}* `{partition or '-'}` passed its audits but the "
                f"{t.name} publish failed ({exc}); lake and earlier targets rolled back. "
                f"Lake production holds {holds}.\nRun: {run_url(run_id)}",
                context.log,
            )
            raise dg.Failure(
                description=f"{table} {partition or ''}: {t.name} publish failed: {exc}"
            ) from exc
    lake.delete(previous)
    journal.delete_journal(lake, table, partition)
    fault("done")
    held = version if not published["unchanged"] else (before or {}).get("version", version)
    if overridden:
        alerts.send(
            f":warning: *{table}* `{partition or '-'}` published by operator override: "
            f"{override}; overridden: {', '.join(a.name for a in overridden)}\n"
            + "\n".join(f"• `{a.name}`: {a.detail}" for a in overridden)
            + f"\nRoll back: `uv run python scripts/restore.py {table}"
            + (f" --date {partition.split('=', 1)[-1]}`" if partition else "`")
            + f"\nRun: {run_url(run_id)}",
            context.log,
        )
    if warned := [a for a in results if is_warning(a)]:
        alerts.send(
            f":warning: *{table}* `{partition or '-'}` published with a warning "
            f"({', '.join(a.name for a in warned)}):\n"
            + "\n".join(f"• `{a.name}`: {a.detail}" for a in warned)
            + f"\nRun: {run_url(context.run_id)}",
            context.log,
        )
    yield dg.MaterializeResult(
        asset_key=key,
        metadata={
            "rows": len(df),
            ROW_COUNT: len(df),
            "published": dg.MetadataValue.path(published["published"]),
            "backup": dg.MetadataValue.path(published["backup"] or "none"),
            "version": held,
            "content_digest": content,
            "production_holds": (
                f"rows of version {version}"
                if not published["unchanged"]
                else f"unchanged: production already held these rows (version {held}; this "
                f"run's candidate {version} was dropped, backup kept)"
            ),
            **({"lock_waited_s": round(lease.waited_s, 3)} if lease.waited_s > 0.05 else {}),
            **({"recovered": recovered} if recovered else {}),
            **(
                {
                    "override_reason": override,
                    "overridden_audits": ", ".join(a.name for a in overridden),
                    "override_run_id": run_id,
                }
                if overridden
                else {}
            ),
            **{k: v for k, v in {**staged_meta, **target_meta}.items() if v is not None},
            **(metadata or {}),
        },
    )


# ---- many daily partitions in one run (single-run backfills) ---------------------------------


def publish_days(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    alerts: AlertsResource,
    table: str | LakeTable,
    frames: Mapping[str, pd.DataFrame | Staged],
    audits: Callable[[str], list[AuditFn]],
    metadata: dict[str, dict[str, Any]],
    run_meta: dict[str, Any],
    targets: Sequence[PublishTarget] = (),
    lock_wait_s: float | None = None,
    fault: Fault | None = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write-audit-publish each day (``frames``: day -> rows, or the ``Staged`` candidate a job
    wrote); one check result per audit and one
    materialization for the run, whose per-partition metadata (rows, ``dagster/row_count``, the
    day's figures) is that day's own.

    A run over several partitions (a backfill) publishes day by day; each check reports the
    worst day, and the step fails on the first day whose audits fail (earlier days stay
    published, that day and later ones are untouched). The operator override (run tag
    ``platform/publish_override``) applies to each day on its own.
    """
    declared = _declared(table)
    checks: dict[str, list[dg.AssetCheckResult]] = {}
    published: dict[str, dict[str, Any]] = {}
    failure: dg.Failure | None = None
    for day, df in frames.items():
        events = write_audit_publish(
            context,
            lake,
            alerts,
            declared,
            declared.folder(day),
            df,
            audits(day),
            metadata.get(day),
            targets=targets,
            lock_wait_s=lock_wait_s,
            fault=fault,
        )
        try:
            for ev in events:
                if isinstance(ev, dg.AssetCheckResult):
                    checks.setdefault(ev.check_name, []).append(ev)
                else:
                    published[day] = dict(ev.metadata or {})
        except dg.Failure as exc:
            failure = exc
            break
    if failure is not None:  # later days a job staged are not published: drop their stages
        for day in list(frames)[len(published) + 1 :]:
            if isinstance(later := frames[day], Staged):
                lake.delete(later.key)
    for name, results in checks.items():
        errors = [r for r in results if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
        warnings = [r for r in results if not r.passed and r not in errors]
        worst = errors[0] if errors else (warnings or results)[-1]
        yield dg.AssetCheckResult(
            asset_key=context.asset_key,
            check_name=name,
            passed=all(r.passed for r in results),
            severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
            description=worst.description,
            metadata={**dict(worst.metadata or {}), "days_checked": len(results)},
        )
    if failure is not None:
        raise dg.Failure(
            description=failure.description,
            metadata=failure.metadata,
            allow_retries=failure.allow_retries is True,  # lock contention / unknown state
        )
    partitioned = context.assets_def.partitions_def is not None
    run_keys = set(context.partition_keys) if partitioned else set()
    if len(published) == 1 and (not partitioned or set(published) == run_keys):
        (meta,) = published.values()
    else:
        rows = int(sum(len(frames[d]) for d in published))
        if partitioned:
            # one materialization per partition: each day shows its own rows and figures (days
            # the caller skipped carry the metadata it added itself)
            for day, day_meta in published.items():
                context.add_asset_metadata(day_meta, partition_key=day)
            totals: dict[str, Any] = {"run_rows": rows}
        else:
            totals = {"rows": rows, ROW_COUNT: rows}
        meta = {
            "days": len(published),
            **totals,
            "per_day": dg.MetadataValue.json(
                {d: {k: _plain(v) for k, v in m.items()} for d, m in published.items()}
            ),
        }
    if overridden := sorted(d for d, m in published.items() if "override_reason" in m):
        meta = {**meta, "override_reason": publish_override(context), "overridden_days": overridden}
    yield dg.MaterializeResult(metadata={**meta, **run_meta})


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, dg.MetadataValue) else v


def clean_meta(figures: dict[str, Any]) -> dict[str, Any]:
    """Drop missing figures; numpy scalars become plain Python numbers."""
    return {
        k: v.item() if isinstance(v, np.generic) else v for k, v in figures.items() if v is not None
    }


def _undo_lake_publish(
    lake: LakeResource, production: str, backup: str, had_previous: bool
) -> None:
    if had_previous:
        lake.restore(production, backup)
    else:
        lake.delete(production)


def restore_table(
    lake: LakeResource,
    table: str | LakeTable,
    partition: str | None,
    targets: Sequence[PublishTarget] = (),
    lake_too: bool = True,
) -> dict[str, Any]:
    """Roll a published table back to its backup: the lake partition and every target.

    Each copy is *swapped* with its backup (lake: backup -> production and the replaced
    production -> backup, each an atomic object replace), so a second restore undoes the first.
    Holds the partition's publish lock (a restore never interleaves with a publish) and first
    converges an interrupted publish of the partition.
    """
    table = _declared(table).name
    with journal.publish_lock(lake, table, partition, owner="restore"):
        note = converge(lake, table, partition, targets)
        if journal.read_journal(lake, table, partition) is not None:
            raise RuntimeError(f"not restored: {note}")
        out = _restore_locked(lake, table, partition, targets, lake_too)
    return {**out, **({"converged_first": note} if note else {})}


def _restore_locked(
    lake: LakeResource,
    table: str,
    partition: str | None,
    targets: Sequence[PublishTarget],
    lake_too: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if lake_too:
        staging, production, backup = published_keys(table, partition)
        if not lake.exists(backup):
            raise FileNotFoundError(f"no lake backup for {table} {partition or ''}")
        swap = f"{staging}/restore"
        lake.delete(swap)
        had_production = lake.copy(production, swap) > 0
        out["lake"] = lake.restore(production, backup)
        if had_production:
            lake.copy(swap, backup)
            lake.delete(swap)
    for t in targets:
        out[t.name] = t.restore()
    return out


# ---- history of published partitions --------------------------------------------------------


def published_row_count(lake: LakeResource, table: str, partition: str | None) -> int | None:
    """Rows of a published partition (``partition``: its folder) from its Parquet footers, or
    None when it was never published."""
    _, production, _ = published_keys(table, partition)
    if not lake.parquet_files(production):
        return None
    return lake.parquet_rows(production)


def trailing_published_rows(
    lake: LakeResource, table: str | LakeTable, partition_key: str, days: int = 7
) -> list[int]:
    """Row counts of the published daily partitions in the ``days`` before ``partition_key``."""
    declared = _declared(table)
    counts = [
        published_row_count(lake, declared.name, declared.folder(d))
        for d in trailing_days(partition_key, days)
    ]
    return [c for c in counts if c is not None]


def trailing_published(
    lake: LakeResource,
    table: str | LakeTable,
    partition_key: str,
    metric: Callable[[pd.DataFrame], float],
    days: int = 7,
    columns: list[str] | None = None,
) -> list[float]:
    """``metric`` of each published daily partition in the ``days`` before ``partition_key``."""
    declared = _declared(table)
    out = []
    for d in trailing_days(partition_key, days):
        _, production, _ = published_keys(declared.name, declared.folder(d))
        if lake.exists(production):
            out.append(float(metric(lake.read_parquet(production, columns=columns))))
    return out


# ---- reusable audits -------------------------------------------------------------------------


def no_nulls(*columns: str) -> AuditFn:
    def audit(df: Rows) -> Audit:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            return Audit("no_null_keys", False, f"missing columns {missing}", contract=True)
        if isinstance(df, Figures):
            nulls = {c: int(df.figure("nulls", c)) for c in columns}
        else:
            nulls = {c: int(df[c].isna().sum()) for c in columns}
        bad = {c: n for c, n in nulls.items() if n}
        detail = f"nulls in {bad}" if bad else "no nulls in keys"
        return Audit("no_null_keys", not bad, detail, nulls, contract=True)

    audit.__doc__ = f"Key columns {', '.join(columns)} have no nulls."
    audit.audit_name = "no_null_keys"  # type: ignore[attr-defined]
    audit.needs = {"nulls": list(columns)}  # type: ignore[attr-defined]
    return audit


def has_columns(*columns: str) -> AuditFn:
    def audit(df: Rows) -> Audit:
        missing = [c for c in columns if c not in df.columns]
        return Audit(
            "contract_columns",
            not missing,
            f"missing {missing}" if missing else "all contract columns present",
            contract=True,
        )

    audit.__doc__ = f"Contract columns present: {', '.join(columns)}."
    audit.audit_name = "contract_columns"  # type: ignore[attr-defined]
    return audit


def unique_keys(*columns: str) -> AuditFn:
    def audit(df: Rows) -> Audit:
        if isinstance(df, Figures):
            dupes = int(df.figure("duplicates", ",".join(columns))) if len(df) else 0
        else:
            dupes = int(df.duplicated(list(columns)).sum()) if len(df) else 0
        return Audit(
            "unique_keys",
            dupes == 0,
            f"{dupes} duplicated keys",
            {"duplicated_keys": dupes},
            contract=True,
        )

    audit.__doc__ = f"Keys ({', '.join(columns)}) are unique."
    audit.audit_name = "unique_keys"  # type: ignore[attr-defined]
    audit.needs = {"duplicates": [",".join(columns)]}  # type: ignore[attr-defined]
    return audit


def rows_satisfy(
    name: str,
    description: str,
    predicate: Callable[[pd.DataFrame], pd.Series],
    contract: bool = True,
    sql: str | None = None,
    unique: Sequence[str] = (),
) -> AuditFn:
    """Every row satisfies ``predicate`` (a boolean Series over the frame); a row invariant is
    a contract audit (never overridden) unless ``contract=False``.

    ``sql``, ``unique``: the same rule for a job that judges the rows where they are (Spark):
    a row violates it when the SQL boolean expression is not true (false or null, as the
    predicate's ``fillna(False)``) or, with ``unique`` keys, when it repeats the keys of an
    earlier row (``duplicated(unique)``); the job reports the count as ``Figures.violations``.
    Without ``sql`` the audit can only be judged on the rows."""

    def audit(df: Rows) -> Audit:
        if isinstance(df, Figures):
            bad = int(df.figure("violations", name)) if len(df) else 0
        else:
            ok = predicate(df).fillna(False).astype(bool) if len(df) else pd.Series(dtype=bool)
            bad = int((~ok).sum())
        return Audit(
            name,
            bad == 0,
            f"{bad} of {len(df)} rows violate: {description}",
            {"violating_rows": bad, "rows": len(df)},
            contract=contract,
        )

    audit.__doc__ = description
    audit.audit_name = name  # type: ignore[attr-defined]
    if sql is not None:
        audit.needs = {"rules": {name: {"sql": sql, "unique": list(unique)}}}  # type: ignore[attr-defined]
    return audit


def value_band(
    name: str,
    description: str,
    metric: Callable[[Rows], float],
    history: Sequence[float] = (),
    low: float = 0.5,
    high: float = 2.0,
    min_history: int = 3,
) -> AuditFn:
    """``metric(df)`` lies within ``[low, high]`` x the median of ``history`` (trailing days).

    With fewer than ``min_history`` trailing values the audit passes and says so. ``metric``
    takes the rows or their ``Figures`` (``len`` works on both).
    """

    def audit(df: Rows) -> Audit:
        value = float(metric(df))
        figures: dict[str, Any] = {"value": value, "history_days": len(history)}
        if len(history) < min_history:
            return Audit(
                name, True, f"only {len(history)} trailing days: band not enforced", figures
            )
        median = float(statistics.median(history))
        lo, hi = low * median, high * median
        figures |= {"trailing_median": median, "band_low": lo, "band_high": hi}
        if median > 0:
            figures["ratio"] = round(value / median, 4)
        ok = lo <= value <= hi
        detail = f"{value:g} {'within' if ok else 'outside'} [{lo:g}, {hi:g}]"
        return Audit(name, ok, detail + f" (median of {len(history)} trailing days)", figures)

    audit.__doc__ = description
    audit.audit_name = name  # type: ignore[attr-defined]
    return audit


def row_count_band(
    history: Sequence[int] = (), low: float = 0.5, high: float = 2.0, min_history: int = 3
) -> AuditFn:
    """Row count within ``[low, high]`` x the median published count of the trailing days."""
    return value_band(
        "row_count_band",
        f"Row count within {low:g}-{high:g}x the median of the trailing published days.",
        len,
        history,
        low,
        high,
        min_history,
    )


def covers_known(
    column: str, known: Sequence[str] | None = None, min_share: float = 0.99
) -> AuditFn:
    """At least ``min_share`` of the ``known`` ids (e.g. reference POIs) are in the table."""

    def audit(df: pd.DataFrame) -> Audit:
        if known is None or column not in df.columns:
            return Audit("known_coverage", known is None, "no reference ids given")
        ref = pd.Index(pd.unique(pd.Series(list(known), dtype=object)))
        present = ref.isin(df[column])
        share = float(present.mean()) if len(ref) else 1.0
        unknown = int((~df[column].isin(ref)).sum())
        figures = {
            "known": len(ref),
            "covered": int(present.sum()),
            "coverage": round(share, 4),
            "unknown_ids": unknown,
        }
        ok = share >= min_share and unknown == 0
        return Audit(
            "known_coverage",
            ok,
            f"{share:.1%} of {len(ref)} known ids present (min {min_share:.0%}), {unknown} unknown",
            figures,
        )

    audit.__doc__ = f"At least {min_share:.0%} of the known {column}s are present, none unknown."
    audit.audit_name = "known_coverage"  # type: ignore[attr-defined]
    return audit
