""" "Sensible numbers" monitors on the inputs, every 15 minutes, alerting Slack when they fail.

- ``raw_pings_volume`` (check on ``raw_pings``): today's pings so far, counted from the Parquet
  footers of today's (UTC) raw pings folder, against the median of the trailing 7 full days
  scaled by the share of the day elapsed; fails below ``MIN_RATIO`` x expected (pings stopped
  arriving) or above ``MAX_RATIO`` x a full day (a duplicated delivery).
- ``poi_reference_not_empty`` (check on ``reference_pois``, ``near_assets.reference``):
  at least one POI, every ``poi_id`` present and unique.

Both are non-blocking ERROR checks: ``sensors/alerts.py``'s check-failure sensor posts each
failure (Slack with ``SLACK_BOT_TOKEN``, else the log) with its figures and a run link.
Freshness is not a monitor here: ``raw_pings`` and every published table carry a
``FreshnessPolicy`` (``near_assets.tables.FRESHNESS_DAILY``).
"""

import statistics
from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from near_assets.reference import reference_pois
from near_assets.tables import RAW_PINGS, REFERENCE_POIS
from publishing.tables import trailing_days
from publishing.wap import Audit
from resources.lake import LakeResource

MIN_RATIO = 0.5
MAX_RATIO = 3.0
TRAILING_DAYS = 7
EVERY_15_MINUTES = "*/15 * * * *"


def ping_volume_audit(
    today_rows: int,
    trailing_rows: Sequence[int],
    elapsed_share: float,
    min_ratio: float = MIN_RATIO,
    max_ratio: float = MAX_RATIO,
) -> Audit:
    """Today's pings so far vs the trailing full days' median scaled to the elapsed share."""
    figures: dict = {"today_rows": today_rows, "trailing_days": len(trailing_rows)}
    if not trailing_rows:
        return Audit("raw_pings_volume", True, "no trailing days to compare with", figures)
    full_day = float(statistics.median(trailing_rows))
    expected = full_day * min(max(elapsed_share, 0.0), 1.0)
    figures |= {
        "trailing_median": full_day,
        "expected_so_far": round(expected),
        "elapsed_share": round(elapsed_share, 3),
        "ratio": round(today_rows / expected, 3) if expected else None,
    }
    if today_rows < min_ratio * expected:
        detail = f"{today_rows} pings so far, expected about {expected:.0f} (min {min_ratio:g}x)"
        return Audit("raw_pings_volume", False, detail, figures)
    if today_rows > max_ratio * full_day:
        detail = f"{today_rows} pings today, more than {max_ratio:g}x a full day ({full_day:.0f})"
        return Audit("raw_pings_volume", False, detail, figures)
    return Audit("raw_pings_volume", True, f"{today_rows} pings, expected ~{expected:.0f}", figures)


def _result(audit: Audit) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=audit.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=audit.detail,
        metadata={k: v for k, v in audit.figures.items() if v is not None},
    )


@dg.asset_check(
    asset=RAW_PINGS.name,
    description="Today's raw pings arrive at the expected volume vs the trailing 7 days.",
)
def raw_pings_volume(lake: LakeResource) -> dg.AssetCheckResult:
    now = datetime.now(UTC)
    today = now.date().isoformat()
    history = [RAW_PINGS.rows(lake, d) for d in trailing_days(today, TRAILING_DAYS)]
    elapsed = (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
    audit = ping_volume_audit(
        RAW_PINGS.rows(lake, today), [h for h in history if h], elapsed / 86400
    )
    return _result(audit)


@dg.asset_check(
    asset=reference_pois.key, description="The reference POIs exist, with unique, non-null ids."
)
def poi_reference_not_empty(lake: LakeResource) -> dg.AssetCheckResult:
    pois = REFERENCE_POIS.read_or_empty(lake)
    ids = pois.get("poi_id")
    rows = len(pois)
    nulls = int(ids.isna().sum()) if ids is not None else rows
    dupes = int(ids.dropna().duplicated().sum()) if ids is not None else 0
    ok = rows > 0 and nulls == 0 and dupes == 0
    detail = (
        f"{rows} POIs"
        if ok
        else f"{rows} POIs, {nulls} without poi_id, {dupes} duplicated ids (need > 0, 0, 0)"
    )
    return _result(
        Audit(
            "poi_reference_not_empty", ok, detail, {"rows": rows, "null_ids": nulls, "dupes": dupes}
        )
    )


sensible_numbers_job = dg.define_asset_job(
    "sensible_numbers",
    selection=dg.AssetSelection.checks(raw_pings_volume, poi_reference_not_empty),
    description="Input monitors (sensible numbers of pings and POIs), every 15 minutes.",
)

sensible_numbers_schedule = dg.ScheduleDefinition(
    name="sensible_numbers_every_15_minutes",
    cron_schedule=EVERY_15_MINUTES,
    job=sensible_numbers_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    execution_timezone="UTC",
)

defs = dg.Definitions(
    asset_checks=[raw_pings_volume, poi_reference_not_empty],
    jobs=[sensible_numbers_job],
    schedules=[sensible_numbers_schedule],
)
