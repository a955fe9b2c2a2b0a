"""Write-audit-publish: the one mechanism every published table goes through.

1. **write** the candidate version beside production (``staging/<table>/<partition>/``);
2. **audit** it: each audit is a plain function ``(df) -> Audit``, reported as a *blocking*
   asset check of the asset that publishes the table;
3. **publish** when every audit passes: the previous production partition is copied to
   ``backup/<table>/<partition>/`` and the candidate replaces production atomically
   (``LakeResource.publish``); when an audit fails, production is untouched, an alert names
   the table, partition and failed figures, and the step fails (the Airflow "exit 1").

Usage inside an asset declared with ``check_specs=audit_specs(key, AUDITS)``::

    yield from write_audit_publish(context, lake, alerts, "stay_points", partition, df, AUDITS)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd

from resources.alerts import AlertsResource, run_url
from resources.lake import LakeResource


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


def audit_specs(asset_key: dg.AssetKey | str, audits: Sequence[AuditFn]) -> list[dg.AssetCheckSpec]:
    """Blocking check specs for ``audits`` on ``asset_key`` (declare them on the asset)."""
    key = dg.AssetKey.from_coercible(asset_key)
    return [
        dg.AssetCheckSpec(
            name=audit_name(fn),
            asset=key,
            blocking=True,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else None,
        )
        for fn in audits
    ]


def table_keys(table: str, partition: str | None) -> tuple[str, str, str]:
    """(staging, production, backup) lake keys of a table partition."""
    suffix = f"/{partition}" if partition else ""
    return f"staging/{table}{suffix}", f"curated/{table}{suffix}", f"backup/{table}{suffix}"


def partition_folder(partition_key: str | None, name: str = "date") -> str | None:
    return f"{name}={partition_key}" if partition_key else None


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
        f":rotating_light: *{table}* `{partition or '-'}` failed its audit; production untouched."
    ]
    for a in failed:
        figures = ", ".join(f"{k}={v}" for k, v in a.figures.items())
        lines.append(f"• `{a.name}`: {a.detail}" + (f" ({figures})" if figures else ""))
    lines.append(f"Run: {run_url(run_id)}")
    return "\n".join(lines)


def write_audit_publish(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    alerts: AlertsResource,
    table: str,
    partition: str | None,
    df: pd.DataFrame,
    audits: Sequence[AuditFn],
    metadata: dict[str, Any] | None = None,
    asset_key: dg.AssetKey | None = None,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """Write ``df`` to staging, audit it, then publish it or alert and fail (see module doc)."""
    staging, production, backup = table_keys(table, partition)
    lake.delete(staging)
    lake.write_parquet(df, staging)
    results = run_audits(df, audits)
    key = asset_key or context.asset_key
    for a in results:
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=a.name,
            passed=a.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=a.detail or None,
            metadata={k: v for k, v in a.figures.items() if v is not None},
        )
    failed = [a for a in results if not a.passed]
    if failed:
        alerts.send(failure_message(table, partition, failed, context.run_id), context.log)
        lake.delete(staging)
        raise dg.Failure(
            description=f"{table} {partition or ''}: {len(failed)} audit(s) failed "
            f"({', '.join(a.name for a in failed)}); production left untouched",
            metadata={a.name: a.detail for a in failed},
        )
    published = lake.publish(staging, production, backup)
    yield dg.MaterializeResult(
        asset_key=key,
        metadata={
            "rows": len(df),
            "published": dg.MetadataValue.path(published["published"]),
            "backup": dg.MetadataValue.path(published["backup"] or "none"),
            **(metadata or {}),
        },
    )


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
