"""Calendar-aware baseline audits: compare a day's metric with like days, bands from the series.

A daily metric (panel visitors, raw pings, rows) moves with the calendar: weekends and public
holidays differ from weekdays by a factor (1.6x is normal for shopping), and the panel grows a
little every week. A flat band around the median of the trailing days blocks every normal
Saturday. ``calendar_band`` instead picks, per day:

1. **same weekday** (``kind="same_weekday"``): the median of the same weekday over the last
   ``weeks`` weeks, when at least ``min_same_weekday`` of them were published. Public holidays
   (``holidays``) count as Sundays, on both sides. The band width comes from the series' own
   spread: the robust scale (1.4826 x MAD) of the log-ratios of every published day to the
   median of the other days of its weekday group (leave-one-out: what a new day is compared
   with), times ``warn_k`` / ``block_k``, never narrower than the floors. With fewer like days
   (one previous Saturday): the same centre with the wider all-days warn floor
   (``kind="same_weekday_short"``).
2. **all days** (``kind="all_days"``): with at least ``min_days`` published days but none of
   the same weekday, the median of all of them with a wider band (the weekday mix is unknown).
3. **not enforced** (``kind="none"``): fewer than ``min_days`` published days; the audit passes and
   lists the days that exist.

Two levels: outside the **warn** band the audit passes with ``figures["severity"] = "WARN"`` and
a description starting with ``WARN``; outside the **block** band it fails (blocks the publish).
Half-widths are in log space, so the band is symmetric in ratio (x0.5 and x2 are as far apart).
Default policy (``BandPolicy``): warn beyond max(4 sigma, x1.2), block beyond max(6 sigma, x1.75)
(all days: x1.25 / x1.8; one previous like day: warn x1.25), the block half-width capped at x1.8
so halving or doubling always blocks. Each audit's detail says what it compared against, e.g.
``5402 vs median 5120 of 3 previous Saturdays (2024-03-02, ...), warn band [..], block band [..]``.

``published_history`` reads the metric per published day (row counts from the Parquet footers,
else a small column read) over the last ``weeks`` weeks. A day whose production version was
published by operator override (its ``wap`` stamp in the Parquet footer carries ``override``,
``publishing.journal``) is **left out** of every baseline: a value an audit refused must not
become the norm later days are judged by. The audit says so (``left out: 2024-03-09
(overridden)``); re-publishing the day without override, or restoring it, brings it back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from publishing.journal import WAP_META
from publishing.tables import LakeTable, published_keys, trailing_days
from publishing.wap import Audit, AuditFn
from resources.lake import LakeResource

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SUNDAY = 6
HOLIDAYS_ENV = "PLATFORM_HOLIDAYS"
"""Comma-separated ISO dates of public holidays (compared with Sundays)."""


def holidays_from_env() -> frozenset[str]:
    """Public holidays from ``PLATFORM_HOLIDAYS`` (``2024-12-25,2025-01-01``); empty if unset."""
    raw = os.environ.get(HOLIDAYS_ENV, "")
    return frozenset(d.strip() for d in raw.split(",") if d.strip())


OVERRIDDEN = "overridden"
"""Why a published day is left out of baselines: published by operator override."""


@dataclass(frozen=True)
class DayValue:
    """A metric of one published day (``day`` None: a value without a date). ``left_out``: why
    the day is not part of any baseline (e.g. ``"overridden"``); None: it counts."""

    day: str | None
    value: float
    left_out: str | None = None


@dataclass(frozen=True)
class BandPolicy:
    """Baseline selection and band widths (half-widths in natural log of the ratio)."""

    weeks: int = 4
    min_days: int = 3
    min_same_weekday: int = 2
    warn_k: float = 4.0
    block_k: float = 6.0
    warn_floor: float = math.log(1.2)
    block_floor: float = math.log(1.75)
    all_days_warn_floor: float = math.log(1.25)
    all_days_block_floor: float = math.log(1.8)
    block_cap: float = math.log(1.8)
    min_spread: float = 0.01

    @property
    def history_days(self) -> int:
        return 7 * self.weeks

    def describe(self, days: str = "published days", overrides: bool = True) -> str:
        """The policy in one line (check descriptions in the UI). ``days``: what the history
        is made of; ``overrides``: say that overridden days are left out (published tables)."""

        def ratio(width: float) -> str:
            return f"x{math.exp(width):.3g}"

        short = (
            "not enforced without any of them"
            if self.min_days <= 1
            else f"not enforced below {self.min_days} of them"
        )
        left_out = "; days published by operator override left out" if overrides else ""
        return (
            f"Baseline: median of the same weekday over the last {self.weeks} weeks of {days} "
            f"(public holidays as Sundays, >= {self.min_same_weekday} like days), else of all "
            f"of them (wider band); {short}{left_out}. WARN beyond max({self.warn_k:g} sigma, "
            f"{ratio(self.warn_floor)}), blocks beyond max({self.block_k:g} sigma, "
            f"{ratio(self.block_floor)}), at most {ratio(self.block_cap)}."
        )


DEFAULT_POLICY = BandPolicy()


@dataclass(frozen=True)
class Baseline:
    """What a day is compared against."""

    kind: str  # "same_weekday" | "all_days" | "none"
    center: float | None
    spread: float | None
    warn_width: float | None
    block_width: float | None
    compared: str
    days: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    """Published days left out of the baseline, with the reason (``2024-03-09 (overridden)``)."""

    def band(self, width: float | None) -> tuple[float, float] | None:
        if self.center is None or width is None:
            return None
        return self.center * math.exp(-width), self.center * math.exp(width)


def weekday_group(day: str, holidays: Iterable[str] = ()) -> int:
    """0 = Monday .. 6 = Sunday; a public holiday counts as a Sunday."""
    return SUNDAY if day in set(holidays) else date.fromisoformat(day).weekday()


def _group_label(group: int, n: int) -> str:
    name = WEEKDAYS[group] + ("s" if n != 1 else "")
    return name + ("/holidays" if group == SUNDAY else "")


def _mad_scale(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def _days_text(days: Sequence[str], limit: int = 7) -> str:
    shown = ", ".join(days[-limit:])
    return shown if len(days) <= limit else f"..., {shown}"


def fit_baseline(
    day: str | None,
    history: Sequence[DayValue | float],
    policy: BandPolicy = DEFAULT_POLICY,
    holidays: Iterable[str] = (),
) -> Baseline:
    """The baseline of ``day`` from the published ``history`` (see the module docstring)."""
    baseline = _fit(day, history, policy, frozenset(holidays))
    left = sorted(
        (h for h in history if isinstance(h, DayValue) and h.left_out),
        key=lambda h: h.day or "",
    )
    if not left:
        return baseline
    out = tuple(f"{h.day or '?'} ({h.left_out})" for h in left)
    return replace(baseline, compared=f"{baseline.compared}; left out: {', '.join(out)}",
                   left_out=out)  # fmt: skip


def _fit(
    day: str | None, history: Sequence[DayValue | float], policy: BandPolicy, hol: frozenset[str]
) -> Baseline:
    points = [h if isinstance(h, DayValue) else DayValue(None, float(h)) for h in history]
    points = [
        p for p in points if not p.left_out and p.value is not None and math.isfinite(p.value)
    ]
    dated = sorted((p for p in points if p.day is not None), key=lambda p: p.day or "")
    listed = tuple(p.day for p in dated if p.day)
    if len(points) < policy.min_days:
        where = f" ({_days_text(listed)})" if listed else ""
        return Baseline(
            "none", None, None, None, None,
            f"not enforced: only {len(points)} published days{where}, need {policy.min_days}",
            listed,
        )  # fmt: skip
    # residual spread: log-ratio of each dated day to the median of its weekday group
    groups: dict[int, list[DayValue]] = {}
    for p in dated:
        groups.setdefault(weekday_group(p.day or "", hol), []).append(p)
    residuals = [
        math.log(p.value / med)
        for members in groups.values()
        if len(members) >= 2
        for i, p in enumerate(members)
        if p.value > 0
        and (med := float(np.median([m.value for j, m in enumerate(members) if j != i]))) > 0
    ]
    if day is not None:
        group = weekday_group(day, hol)
        same = groups.get(group, [])
        if same:
            # enough like days: tight floors; one or two: the wider floors of an unknown mix
            enough = len(same) >= policy.min_same_weekday and bool(residuals)
            center = float(np.median([p.value for p in same]))
            spread = max(_mad_scale(np.array(residuals)) if residuals else 0, policy.min_spread)
            warn_floor = policy.warn_floor if enough else policy.all_days_warn_floor
            block_floor = policy.block_floor
            warn = max(policy.warn_k * spread, warn_floor)
            block = min(max(policy.block_k * spread, block_floor), policy.block_cap)
            same_days = [p.day or "" for p in same]
            return Baseline(
                "same_weekday" if enough else "same_weekday_short", center, spread, warn,
                max(block, warn),
                f"median {center:g} of {len(same)} previous {_group_label(group, len(same))} "
                f"({_days_text(same_days)})",
                tuple(same_days),
            )  # fmt: skip
    values = np.array([p.value for p in points], dtype=float)
    center = float(np.median(values))
    positive = values[values > 0]
    spread = max(_mad_scale(np.log(positive)) if len(positive) else 0.0, policy.min_spread)
    warn = max(policy.warn_k * spread, policy.all_days_warn_floor)
    block = min(max(policy.block_k * spread, policy.all_days_block_floor), policy.block_cap)
    why = "" if day is None else f", too few previous {_group_label(weekday_group(day, hol), 2)}"
    where = f" ({_days_text(listed)})" if listed else ""
    return Baseline(
        "all_days", center, spread, warn, max(block, warn),
        f"median {center:g} of {len(points)} published days{where}{why}",
        listed,
    )  # fmt: skip


def judge(name: str, value: float, baseline: Baseline) -> Audit:
    """Pass, pass with WARN, or fail (block) ``value`` against ``baseline``."""
    figures: dict[str, Any] = {
        "value": value,
        "baseline": baseline.kind,
        "history_days": len(baseline.days),
        "severity": "OK",
    }
    if baseline.left_out:
        figures["left_out"] = ", ".join(baseline.left_out)
    if baseline.center is None:
        return Audit(name, True, f"{value:g}; band {baseline.compared}", figures)
    warn, block = baseline.band(baseline.warn_width), baseline.band(baseline.block_width)
    assert warn is not None and block is not None
    figures |= {
        "baseline_median": round(baseline.center, 4),
        "spread_log": round(baseline.spread or 0.0, 4),
        "warn_low": round(warn[0], 2),
        "warn_high": round(warn[1], 2),
        "band_low": round(block[0], 2),
        "band_high": round(block[1], 2),
    }
    if baseline.center <= 0:
        return Audit(name, True, f"{value:g}: baseline median is 0, band not enforced", figures)
    figures["ratio"] = round(value / baseline.center, 4)
    bands = f"warn band [{warn[0]:.6g}, {warn[1]:.6g}], block band [{block[0]:.6g}, {block[1]:.6g}]"
    text = f"{value:g} vs {baseline.compared}; ratio {figures['ratio']:g}; {bands}"
    if not block[0] <= value <= block[1]:
        figures["severity"] = "BLOCK"
        return Audit(name, False, f"{value:g} outside the block band: {text}", figures)
    if not warn[0] <= value <= warn[1]:
        figures["severity"] = "WARN"
        return Audit(name, True, f"WARN: {value:g} outside the warn band (published): {text}",
                     figures)  # fmt: skip
    return Audit(name, True, f"{value:g} within: {text}", figures)


def calendar_band(
    name: str,
    description: str,
    metric: Callable[[pd.DataFrame], float],
    history: Sequence[DayValue | float] = (),
    day: str | None = None,
    policy: BandPolicy = DEFAULT_POLICY,
    holidays: Iterable[str] | None = None,
) -> AuditFn:
    """An audit of ``metric(df)`` against the calendar-aware baseline of ``day`` (a factory
    whose check name, ``name``, does not depend on its arguments; declare it with no history).
    Its description (the check's in the UI) is ``description`` followed by the policy
    (``BandPolicy.describe``): say what is measured in ``description``."""
    hol = holidays_from_env() if holidays is None else frozenset(holidays)
    baseline = fit_baseline(day, history, policy, hol)

    def audit(df: pd.DataFrame) -> Audit:
        return judge(name, float(metric(df)), baseline)

    audit.__doc__ = f"{description.strip()} {policy.describe()}"
    audit.audit_name = name  # type: ignore[attr-defined]
    audit.baseline = baseline  # type: ignore[attr-defined]
    return audit


def published_footer(lake: LakeResource, table: LakeTable, day: str) -> tuple[int, dict] | None:
    """(rows, ``wap`` stamp) of the published partition of ``day`` from its Parquet footers
    alone, or None when it was never published. The stamp is ``{}`` for an object written
    before stamps existed."""
    import pyarrow.parquet as pq

    _, production, _ = published_keys(table.name, table.folder(day))
    for _ in range(3):
        files = lake.parquet_files(production)
        if not files:
            return None
        try:
            rows, stamp = 0, {}
            for f in files:
                with lake.open_input(f) as fh:
                    meta = pq.read_metadata(fh)
                rows += meta.num_rows
                raw = (meta.metadata or {}).get(WAP_META)
                stamp = json.loads(raw) if raw else stamp
            return rows, stamp
        except (FileNotFoundError, OSError):  # replaced while reading: read the new one
            continue
    return None


def left_out_reason(stamp: Mapping[str, Any] | None) -> str | None:
    """Why a published version is left out of baselines (``"overridden"``: published by
    operator override), or None."""
    return OVERRIDDEN if stamp and stamp.get("override") else None


def published_history(
    lake: LakeResource,
    table: LakeTable,
    partition_key: str,
    metric: Callable[[pd.DataFrame], float] | None = None,
    columns: Sequence[str] | None = None,
    policy: BandPolicy = DEFAULT_POLICY,
) -> list[DayValue]:
    """``metric`` (None: the row count, from the Parquet footers) of each published daily
    partition in the ``policy.weeks`` weeks before ``partition_key``; days never published are
    absent (an empty published partition counts, with its 0); days published by operator
    override are marked ``left_out`` (``fit_baseline`` skips them and says so)."""
    out = []
    for d in trailing_days(partition_key, policy.history_days):
        footer = published_footer(lake, table, d)
        if footer is None:
            continue
        rows, stamp = footer
        value = float(rows) if metric is None else _day_metric(lake, table, d, metric, columns)
        out.append(DayValue(d, value, left_out_reason(stamp)))
    return out


def _day_metric(
    lake: LakeResource,
    table: LakeTable,
    day: str,
    metric: Callable[[pd.DataFrame], float],
    columns: Sequence[str] | None,
) -> float:
    _, production, _ = published_keys(table.name, table.folder(day))
    return float(metric(lake.read_parquet(production, columns=list(columns) if columns else None)))


def published_histories(
    lake: LakeResource,
    table: LakeTable,
    partition_key: str,
    metrics: Mapping[str, Callable[[pd.DataFrame], float]],
    columns: Sequence[str],
    policy: BandPolicy = DEFAULT_POLICY,
) -> dict[str, list[DayValue]]:
    """Several metrics per published day from one small read (``columns``) of each day
    (overridden days marked ``left_out``, as in ``published_history``)."""
    out: dict[str, list[DayValue]] = {name: [] for name in metrics}
    for d in trailing_days(partition_key, policy.history_days):
        footer = published_footer(lake, table, d)
        if footer is None:
            continue
        why = left_out_reason(footer[1])
        _, production, _ = published_keys(table.name, table.folder(d))
        df = lake.read_parquet(production, columns=list(columns))
        for name, metric in metrics.items():
            out[name].append(DayValue(d, float(metric(df)), why))
    return out


def published_rows(
    lake: LakeResource, table: LakeTable, partition_key: str, days: int = 7
) -> list[int]:
    """Row counts (footers) of the published daily partitions in the ``days`` before
    ``partition_key``, newest first, without the days published by operator override: the
    history of a flat ``row_count_band`` (``publishing.wap.trailing_published_rows`` keeps
    them)."""
    out = []
    for d in trailing_days(partition_key, days):
        footer = published_footer(lake, table, d)
        if footer is not None and left_out_reason(footer[1]) is None:
            out.append(footer[0])
    return out


def lake_history(
    lake: LakeResource, table: LakeTable, partition_key: str, policy: BandPolicy = DEFAULT_POLICY
) -> list[DayValue]:
    """Rows (footers) of each day of an input table (e.g. raw pings) that holds Parquet files in
    the ``policy.weeks`` weeks before ``partition_key``."""
    return [
        DayValue(d, float(table.rows(lake, d)))
        for d in trailing_days(partition_key, policy.history_days)
        if table.exists(lake, d)
    ]
