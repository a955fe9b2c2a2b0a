"""Calendar-aware baselines (``publishing.baselines``): a normal Saturday passes, planted
breakages block, moderate shifts warn, short history says what exists."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from publishing.baselines import (
    BandPolicy,
    DayValue,
    calendar_band,
    fit_baseline,
    judge,
    published_histories,
    published_history,
    published_rows,
)
from publishing.journal import write_versioned
from publishing.tables import LakeTable
from publishing.wap import audit_name, audit_specs, run_audits
from resources.lake import LakeResource

MONDAY = date(2024, 3, 4)
WEEKEND = 1.6


def series(days: int, level: float = 3340.0, growth: float = 0.02, start: date = MONDAY):
    """``days`` daily values from ``start`` (a Monday): weekends x1.6, ``growth`` per week."""
    out = []
    for i in range(days):
        d = start + timedelta(days=i)
        factor = WEEKEND if d.weekday() >= 5 else 1.0
        out.append(DayValue(d.isoformat(), level * factor * (1 + growth) ** (i / 7)))
    return out


def frame_of(total: float) -> pd.DataFrame:
    return pd.DataFrame({"visitors": [total]})


def band(history, day: str, **kw):
    return calendar_band("total_visitors_band", "x", lambda df: df["visitors"].sum(), history,
                         day, **kw)  # fmt: skip


def test_a_normal_saturday_passes_against_the_previous_saturdays() -> None:
    history = series(21)  # three full weeks, Monday .. Sunday
    saturday = (MONDAY + timedelta(days=26)).isoformat()
    value = 3340.0 * WEEKEND * 1.02 ** (26 / 7)
    audit = band(history, saturday)(frame_of(value))
    assert audit.passed and audit.figures["severity"] == "OK", audit.detail
    assert audit.figures["baseline"] == "same_weekday"
    assert "of 3 previous Saturdays" in audit.detail
    assert "2024-03-09, 2024-03-16, 2024-03-23" in audit.detail
    assert "block band [" in audit.detail and "warn band [" in audit.detail


def test_the_issue_saturday_after_five_weekdays_publishes_with_a_warn_not_a_block() -> None:
    """Issue 14 measured: 5402 on the first Saturday vs five weekdays (ratio 1.62)."""
    weekdays = [DayValue((MONDAY + timedelta(days=i)).isoformat(), 3340.0) for i in range(5)]
    audit = band(weekdays, "2024-03-09")(frame_of(5402))
    assert audit.passed, audit.detail
    assert audit.figures["severity"] == "WARN" and audit.detail.startswith("WARN")
    assert audit.figures["baseline"] == "all_days"
    assert "median 3340 of 5 published days" in audit.detail
    assert "too few previous Saturdays" in audit.detail


@pytest.mark.parametrize("factor, what", [(0.5, "half the devices"), (2.0, "a duplicated upload")])
@pytest.mark.parametrize("weeks", [1, 3])
def test_planted_breakages_block(factor: float, what: str, weeks: int) -> None:
    history = series(7 * weeks)
    for offset in (7 * weeks + 1, 7 * weeks + 5):  # a Tuesday and a Saturday
        d = MONDAY + timedelta(days=offset)
        normal = 3340.0 * (WEEKEND if d.weekday() >= 5 else 1) * 1.02 ** (offset / 7)
        normal_audit = band(history, d.isoformat())(frame_of(normal))
        assert normal_audit.passed, normal_audit.detail
        broken = band(history, d.isoformat())(frame_of(normal * factor))
        assert not broken.passed, f"{what} on {d}: {broken.detail}"
        assert broken.figures["severity"] == "BLOCK"
        assert "outside the block band" in broken.detail


def test_a_moderate_shift_publishes_with_a_warn() -> None:
    history = series(21)
    monday = (MONDAY + timedelta(days=21)).isoformat()
    expected = 3340.0 * 1.02**3
    for factor in (0.78, 1.3):
        audit = band(history, monday)(frame_of(expected * factor))
        assert audit.passed, audit.detail
        assert audit.figures["severity"] == "WARN", audit.detail
        assert "outside the warn band (published)" in audit.detail


def test_short_history_is_not_enforced_and_lists_the_days_that_exist() -> None:
    history = series(2)
    audit = band(history, "2024-03-06")(frame_of(1.0))
    assert audit.passed and audit.figures["baseline"] == "none"
    assert "not enforced: only 2 published days (2024-03-04, 2024-03-05)" in audit.detail
    assert "need 3" in audit.detail
    assert band([], "2024-03-06")(frame_of(1.0)).detail.endswith("only 0 published days, need 3")


def test_a_public_holiday_is_compared_with_sundays() -> None:
    history = series(21)
    holiday = MONDAY + timedelta(days=24)  # a Thursday at Sunday level
    value = 3340.0 * WEEKEND * 1.02 ** (24 / 7)
    known = band(history, holiday.isoformat(), holidays={holiday.isoformat()})(frame_of(value))
    assert known.passed and known.figures["severity"] == "OK", known.detail
    assert "Sundays/holidays" in known.detail
    unknown = band(history, holiday.isoformat(), holidays=())(frame_of(value))
    assert unknown.passed and unknown.figures["severity"] == "WARN", unknown.detail


def test_the_band_width_comes_from_the_series_spread() -> None:
    rng = np.random.default_rng(1)
    quiet = series(21)
    noisy = [DayValue(p.day, p.value * float(np.exp(rng.normal(0, 0.15)))) for p in quiet]
    day = (MONDAY + timedelta(days=22)).isoformat()
    q, n = fit_baseline(day, quiet), fit_baseline(day, noisy)
    assert n.spread > 2 * q.spread
    assert n.warn_width > q.warn_width
    assert n.block_width <= BandPolicy().block_cap  # halving still blocks


def test_the_factory_keeps_its_check_name_and_never_raises_on_plain_numbers() -> None:
    audit = calendar_band("visited_pois_band", "x", len)
    assert audit_name(audit) == "visited_pois_band"
    plain = band([100.0, 110.0, 90.0], None)
    (result,) = run_audits(frame_of(200.0), [plain])
    assert not result.passed and result.figures["baseline"] == "all_days"
    assert judge("x", 5.0, fit_baseline(None, [0.0, 0.0, 0.0])).passed  # median 0: not enforced


def test_history_is_read_from_the_published_partitions_that_exist(tmp_lake: LakeResource) -> None:
    table = LakeTable.curated("gated")
    for i, d in enumerate(["2024-03-01", "2024-03-02", "2024-03-04"]):
        tmp_lake.write_parquet(pd.DataFrame({"visitors": [1] * (i + 3)}), f"curated/gated/date={d}")
    rows = published_history(tmp_lake, table, "2024-03-05")
    assert [(p.day, p.value) for p in rows] == [
        ("2024-03-04", 5.0),
        ("2024-03-02", 4.0),
        ("2024-03-01", 3.0),
    ]
    sums = published_histories(
        tmp_lake, table, "2024-03-05", {"total": lambda df: df["visitors"].sum()}, ["visitors"]
    )
    assert [p.value for p in sums["total"]] == [5.0, 4.0, 3.0]
    audit = band(rows, "2024-03-05")(frame_of(4))
    assert "3 published days (2024-03-01, 2024-03-02, 2024-03-04)" in audit.detail


def _publish(lake: LakeResource, day: str, rows: int, override: str | None = None) -> None:
    """A published partition as write-audit-publish leaves it: ``part-0.parquet`` with the
    ``wap`` stamp in its footer (``override``: the operator's reason, as an overridden publish
    records it)."""
    stamp = {"version": f"v{day}", "content": "c", "run_id": "r"}
    if override is not None:
        stamp |= {"override": override, "overridden_audits": ["total_visitors_band"]}
    write_versioned(
        lake, pd.DataFrame({"visitors": [1] * rows}), f"curated/gated/date={day}", stamp
    )


def test_a_day_published_by_override_is_left_out_of_later_baselines(
    tmp_lake: LakeResource,
) -> None:
    """An operator published a doubled Saturday over a failed band: the next Saturday is
    compared with the other Saturdays, not with it, and the audit says it was left out."""
    table = LakeTable.curated("gated")
    for p in series(21):  # three normal weeks from Monday 2024-03-04
        _publish(tmp_lake, p.day, round(p.value / 100))
    _publish(tmp_lake, "2024-03-16", 2 * 53, override="client campaign: checked with ops")
    saturday = "2024-03-30"
    rows = published_history(tmp_lake, table, saturday)
    assert {p.day: p.left_out for p in rows if p.left_out} == {"2024-03-16": "overridden"}
    assert len(rows) == 21  # still listed, with the reason
    audit = band(rows, saturday)(frame_of(55))
    assert audit.passed and audit.figures["severity"] == "OK", audit.detail
    assert "of 2 previous Saturdays (2024-03-09, 2024-03-23)" in audit.detail
    assert "left out: 2024-03-16 (overridden)" in audit.detail
    assert audit.figures["left_out"] == "2024-03-16 (overridden)"
    assert audit.figures["history_days"] == 2

    sums = published_histories(
        tmp_lake, table, saturday, {"total": lambda df: df["visitors"].sum()}, ["visitors"]
    )
    assert [p.day for p in sums["total"] if p.left_out] == ["2024-03-16"]
    assert "left out: 2024-03-16 (overridden)" in band(sums["total"], saturday)(frame_of(55)).detail
    # a flat row-count band's history leaves it out too
    week = published_rows(tmp_lake, table, "2024-03-20")  # 2024-03-13 .. 2024-03-19
    assert len(week) == 6 and 106 not in week

    # re-published without override (or restored to a normal version): it counts again
    _publish(tmp_lake, "2024-03-16", 53)
    again = band(published_history(tmp_lake, table, saturday), saturday)(frame_of(55))
    assert "of 3 previous Saturdays" in again.detail and "left out" not in again.detail


def test_left_out_days_never_count_towards_min_days_and_are_named() -> None:
    history = [
        DayValue("2024-03-04", 100.0),
        DayValue("2024-03-05", 100.0),
        DayValue("2024-03-06", 400.0, left_out="overridden"),
    ]
    audit = band(history, "2024-03-07")(frame_of(1.0))
    assert audit.passed and audit.figures["baseline"] == "none"
    assert "only 2 published days (2024-03-04, 2024-03-05), need 3" in audit.detail
    assert audit.detail.endswith("left out: 2024-03-06 (overridden)")


def test_every_calendar_band_describes_its_baseline_policy() -> None:
    """The check's description in the UI states the baseline and the warn/block levels."""
    (spec,) = audit_specs("gated", [band([], None)])
    text = spec.description or ""
    assert text.startswith("x Baseline: median of the same weekday over the last 4 weeks of")
    assert "public holidays as Sundays" in text and "not enforced below 3" in text
    assert "days published by operator override left out" in text
    assert "WARN beyond max(4 sigma, x1.2), blocks beyond max(6 sigma, x1.75), at most x1.8" in text
