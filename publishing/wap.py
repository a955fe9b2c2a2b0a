"""Write-audit-publish: the one mechanism every published table goes through.

1. **write** the candidate version beside production (``staging/<table>/<partition>/``);
2. **audit** it: each audit is a plain function ``(df) -> Audit``, reported as a *blocking*
   asset check of the asset that publishes the table;
3. **publish** when every audit passes: the previous production partition is copied to
   ``backup/<table>/<partition>/`` and the candidate replaces production atomically
   (``LakeResource.publish``); when an audit fails, production is untouched, an alert names
   the table, partition and failed figures, and the step fails (the Airflow "exit 1").

A table can have extra **targets** (e.g. ``publishing.redis_hash.RedisHashTarget``, the
serving hash of ``audience_estimates``): each is staged beside its production copy together with
the lake, audited (its ``verify`` is one more blocking check), and published only after every
audit passed, right after the lake partition. On a failed audit every stage is discarded and
no production copy (lake or target) is touched. If a target cannot publish after the lake did,
the lake partition is rolled back to what it was and the step fails.

Usage inside an asset declared with ``check_specs=audit_specs(key, AUDITS, targets)``::

    yield from write_audit_publish(
        context, lake, alerts, STAY_POINTS, STAY_POINTS.folder(day), df, AUDITS
    )

``table`` is a ``publishing.tables.LakeTable`` declaration or a published table's name; the lake
keys come from ``publishing.tables.published_keys``. Every publish reports ``dagster/row_count``
(the rows published).

Audits that need history (row counts of the trailing published days) or reference data are
built at run time by factories whose check name does not depend on their arguments
(``row_count_band(history)``, ``covers_known(column, known)``): declare them with empty
arguments, run them with real ones. Restore is ``restore_table`` (``scripts/restore.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import dagster as dg
import numpy as np
import pandas as pd

from publishing.tables import LakeTable, published_keys, trailing_days
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


AuditFn = Callable[[pd.DataFrame], Audit]


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


def run_audits(df: pd.DataFrame, audits: Sequence[AuditFn]) -> list[Audit]:
    results = []
    for fn in audits:
        try:
            result = fn(df)
        except Exception as exc:  # a crashing audit is a failed audit, with the reason
            result = Audit(audit_name(fn), False, f"audit raised {type(exc).__name__}: {exc}")
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


def _check_result(key: dg.AssetKey, a: Audit) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=a.name,
        passed=a.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=a.detail or None,
        metadata={k: v for k, v in a.figures.items() if v is not None},
    )


def _discard(targets: Sequence[PublishTarget], log: Any) -> None:
    for t in targets:
        try:
            t.discard()
        except Exception as exc:  # a stage left behind expires by itself; never mask the cause
            log.warning(f"could not discard the {t.name} stage: {exc}")


def write_audit_publish(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    alerts: AlertsResource,
    table: str | LakeTable,
    partition: str | None,
    df: pd.DataFrame,
    audits: Sequence[AuditFn],
    metadata: dict[str, Any] | None = None,
    asset_key: dg.AssetKey | None = None,
    targets: Sequence[PublishTarget] = (),
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write ``df`` (and every target) to staging, audit, then publish all or alert and fail.

    ``partition`` is the partition folder (``STAY_POINTS.folder(day)``), None when unpartitioned.
    """
    table = _declared(table).name
    staging, production, backup = published_keys(table, partition)
    key = asset_key or context.asset_key
    lake.delete(staging)
    lake.write_parquet(df, staging)
    staged_meta: dict[str, Any] = {}
    results: list[Audit] = []
    try:
        for t in targets:
            staged_meta.update(t.stage(df, partition))
    except Exception as exc:
        results.append(Audit(t.check_name, False, f"staging failed: {exc}"))
    results = run_audits(df, audits) + results
    for t in targets:
        if not any(a.name == t.check_name for a in results):
            try:
                results.append(t.verify(df))
            except Exception as exc:
                results.append(Audit(t.check_name, False, f"verify raised {exc}"))
    for a in results:
        yield _check_result(key, a)
    failed = [a for a in results if not a.passed]
    if failed:
        alerts.send(failure_message(table, partition, failed, context.run_id), context.log)
        lake.delete(staging)
        _discard(targets, context.log)
        raise dg.Failure(
            description=f"{table} {partition or ''}: {len(failed)} audit(s) failed "
            f"({', '.join(a.name for a in failed)}); production left untouched",
            metadata={a.name: a.detail for a in failed},
        )
    published = lake.publish(staging, production, backup)
    target_meta: dict[str, Any] = {}
    for i, t in enumerate(targets):
        try:
            target_meta.update(t.publish(partition))
        except Exception as exc:
            _discard(targets[i:], context.log)
            for done in targets[:i]:
                done.restore()
            _undo_lake_publish(lake, production, backup, had_previous=bool(published["backup"]))
            alerts.send(
                f":rotating_light: *{table}* `{partition or '-'}` passed its audits but the "
                f"{t.name} publish failed ({exc}); lake and earlier targets rolled back.\n"
                f"Run: {run_url(context.run_id)}",
                context.log,
            )
            raise dg.Failure(
                description=f"{table} {partition or ''}: {t.name} publish failed: {exc}"
            ) from exc
    yield dg.MaterializeResult(
        asset_key=key,
        metadata={
            "rows": len(df),
            ROW_COUNT: len(df),
            "published": dg.MetadataValue.path(published["published"]),
            "backup": dg.MetadataValue.path(published["backup"] or "none"),
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
    frames: dict[str, pd.DataFrame],
    audits: Callable[[str], list[AuditFn]],
    metadata: dict[str, dict[str, Any]],
    run_meta: dict[str, Any],
    targets: Sequence[PublishTarget] = (),
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write-audit-publish each day (``frames``: day -> rows); one check result per audit and one
    materialization for the run, whose per-partition metadata (rows, ``dagster/row_count``, the
    day's figures) is that day's own.

    A run over several partitions (a backfill) publishes day by day; each check reports the
    worst day, and the step fails on the first day whose audits fail (earlier days stay
    published, that day and later ones are untouched).
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
    for name, results in checks.items():
        worst = next((r for r in results if not r.passed), results[-1])
        yield dg.AssetCheckResult(
            asset_key=context.asset_key,
            check_name=name,
            passed=all(r.passed for r in results),
            severity=dg.AssetCheckSeverity.ERROR,
            description=worst.description,
            metadata={**dict(worst.metadata or {}), "days_checked": len(results)},
        )
    if failure is not None:
        raise dg.Failure(
            description=failure.description,
            metadata=failure.metadata,
            allow_retries=False,
        )
    if len(published) == 1:
        (meta,) = published.values()
    else:
        rows = int(sum(len(frames[d]) for d in published))
        if context.assets_def.partitions_def is not None:
            # one materialization per partition: each day shows its own rows and figures
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
    """
    table = _declared(table).name
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
    def audit(df: pd.DataFrame) -> Audit:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            return Audit("no_null_keys", False, f"missing columns {missing}")
        nulls = {c: int(df[c].isna().sum()) for c in columns}
        bad = {c: n for c, n in nulls.items() if n}
        return Audit(
            "no_null_keys", not bad, f"nulls in {bad}" if bad else "no nulls in keys", nulls
        )

    audit.__doc__ = f"Key columns {', '.join(columns)} have no nulls."
    audit.audit_name = "no_null_keys"  # type: ignore[attr-defined]
    return audit


def has_columns(*columns: str) -> AuditFn:
    def audit(df: pd.DataFrame) -> Audit:
        missing = [c for c in columns if c not in df.columns]
        return Audit(
            "contract_columns",
            not missing,
            f"missing {missing}" if missing else "all contract columns present",
        )

    audit.__doc__ = f"Contract columns present: {', '.join(columns)}."
    audit.audit_name = "contract_columns"  # type: ignore[attr-defined]
    return audit


def unique_keys(*columns: str) -> AuditFn:
    def audit(df: pd.DataFrame) -> Audit:
        dupes = int(df.duplicated(list(columns)).sum()) if len(df) else 0
        return Audit(
            "unique_keys", dupes == 0, f"{dupes} duplicated keys", {"duplicated_keys": dupes}
        )

    audit.__doc__ = f"Keys ({', '.join(columns)}) are unique."
    audit.audit_name = "unique_keys"  # type: ignore[attr-defined]
    return audit


def rows_satisfy(
    name: str, description: str, predicate: Callable[[pd.DataFrame], pd.Series]
) -> AuditFn:
    """Every row satisfies ``predicate`` (a boolean Series over the frame)."""

    def audit(df: pd.DataFrame) -> Audit:
        ok = predicate(df).fillna(False).astype(bool) if len(df) else pd.Series(dtype=bool)
        bad = int((~ok).sum())
        return Audit(
            name,
            bad == 0,
            f"{bad} of {len(df)} rows violate: {description}",
            {"violating_rows": bad, "rows": len(df)},
        )

    audit.__doc__ = description
    audit.audit_name = name  # type: ignore[attr-defined]
    return audit


def value_band(
    name: str,
    description: str,
    metric: Callable[[pd.DataFrame], float],
    history: Sequence[float] = (),
    low: float = 0.5,
    high: float = 2.0,
    min_history: int = 3,
) -> AuditFn:
    """``metric(df)`` lies within ``[low, high]`` x the median of ``history`` (trailing days).

    With fewer than ``min_history`` trailing values the audit passes and says so.
    """

    def audit(df: pd.DataFrame) -> Audit:
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
