""" "Sensible numbers" monitors on the inputs, every 15 minutes, alerting Slack when they fail.

- ``raw_pings_volume`` (check on ``raw_pings``): today's pings so far, counted from the Parquet
  footers of today's (UTC) raw pings folder, against a calendar-aware full day
  (``publishing.baselines``: the median of the same weekday over the last 4 weeks, public
  holidays as Sundays; else of every day with pings) scaled by the share of the day elapsed.
  Fails below ``MIN_RATIO`` x expected (pings stopped arriving) or above the block band of a
  full day, or of the expected share once a quarter of the day has passed (a duplicated
  delivery); outside the warn band it passes with a WARN in its description and metadata. The
  description says what it compared against and whether today's folder is missing or empty.
- ``poi_reference_not_empty`` (check on ``reference_pois``, ``near_assets.reference``):
  at least one POI, every ``poi_id`` present and unique, no row rejected by the validation
  (``near_assets.science.reference``: valid polygons, required columns).

Both are non-blocking ERROR checks: ``sensors/alerts.py``'s check-failure sensor posts each
failure (Slack with ``SLACK_BOT_TOKEN``, else the log) with its figures and a run link.
Freshness is not a monitor here: ``raw_pings`` and every published table carry a
``FreshnessPolicy`` (``near_assets.tables.FRESHNESS_DAILY``).
"""

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from near_assets.reference import reference_pois
from near_assets.science.reference import validate_pois
from near_assets.tables import RAW_PINGS, REFERENCE_POIS
from publishing.baselines import (
    BandPolicy,
    Baseline,
    fit_baseline,
    holidays_from_env,
    lake_history,
)
from publishing.wap import Audit
from resources.lake import LakeResource

MIN_RATIO = 0.5
MAX_RATIO = 3.0
TRAILING_DAYS = 7
VOLUME_POLICY = BandPolicy(min_days=1)
"""Raw days are an input, not a published table: one earlier day with pings is a baseline."""
HIGH_CHECK_FROM = 0.25
"""Share of the day after which pings far above the expected share are a duplicated delivery."""
EVERY_15_MINUTES = "*/15 * * * *"


def ping_volume_audit(
    today_rows: int,
    trailing_rows: Sequence[int],
    elapsed_share: float,
    min_ratio: float = MIN_RATIO,
    max_ratio: float = MAX_RATIO,
    baseline: Baseline | None = None,
) -> Audit:
    """Today's pings so far vs a full day's baseline scaled to the elapsed share.

    ``baseline`` (``publishing.baselines.fit_baseline`` of the day) gives the full day and its
    bands; without it, the median of ``trailing_rows`` with the all-days bands. Fails below
    ``min_ratio`` x expected or above the block band (never looser than ``max_ratio``) of a full
    day, or of the expected share after ``HIGH_CHECK_FROM`` of the day; WARN outside the warn band.
    """
    base = baseline or fit_baseline(None, [float(r) for r in trailing_rows], BandPolicy(min_days=1))
    figures: dict = {
        "today_rows": today_rows,
        "trailing_days": len(base.days) or len(trailing_rows),
        "baseline": base.kind,
    }
    if base.center is None:
        return Audit("raw_pings_volume", True, f"no trailing days to compare with ({base.compared})",
                     figures)  # fmt: skip
    full_day = base.center
    share = min(max(elapsed_share, 0.0), 1.0)
    expected = full_day * share
    block_high = min(math.exp(base.block_width or 0.0), max_ratio)
    warn = math.exp(base.warn_width or 0.0)
    figures |= {
        "trailing_median": full_day,
        "expected_so_far": round(expected),
        "elapsed_share": round(elapsed_share, 3),
        "ratio": round(today_rows / expected, 3) if expected else None,
        "severity": "OK",
    }
    against = f"full day: {base.compared}"
    if today_rows < min_ratio * expected:
        detail = (
            f"{today_rows} pings so far, expected about {expected:.0f} (min {min_ratio:g}x); "
            f"{against}"
        )
        return Audit("raw_pings_volume", False, detail, figures | {"severity": "BLOCK"})
    if today_rows > block_high * full_day or (
        share >= HIGH_CHECK_FROM and today_rows > block_high * expected
    ):
        detail = (
            f"{today_rows} pings today, more than {block_high:.3g}x the expected "
            f"{expected:.0f} so far (a duplicated delivery?); {against}"
        )
        return Audit("raw_pings_volume", False, detail, figures | {"severity": "BLOCK"})
    if share >= HIGH_CHECK_FROM and expected and not 1 / warn <= today_rows / expected <= warn:
        detail = (
            f"WARN: {today_rows} pings, expected ~{expected:.0f}, outside the warn band "
            f"x{1 / warn:.2f}..x{warn:.2f}; {against}"
        )
        return Audit("raw_pings_volume", True, detail, figures | {"severity": "WARN"})
    return Audit("raw_pings_volume", True, f"{today_rows} pings, expected ~{expected:.0f}; {against}",
                 figures)  # fmt: skip


def today_folder(lake: LakeResource, day: str, rows: int) -> str:
    """What the day's raw pings folder holds: ``N files`` with rows, ``empty`` (Parquet files
    without rows, or objects but no Parquet file) or ``missing`` (no object: an object store has
    no empty folders, so a folder emptied of its files reads as missing)."""
    files = RAW_PINGS.files(lake, day)
    if files and rows:
        return f"{len(files)} files"
    if files:
        return f"empty ({len(files)} files, 0 rows)"
    return "empty (no Parquet file)" if lake.list(RAW_PINGS.key(day)) else "missing"


def _result(audit: Audit) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=audit.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=audit.detail,
        metadata={k: v for k, v in audit.figures.items() if v is not None},
    )


def day_volume_audit(lake: LakeResource, day: str, elapsed_share: float) -> Audit:
    """``raw_pings_volume`` of ``day`` once ``elapsed_share`` of it has passed (1.0: the whole
    day, as ``bench/gates_cli.py`` judges past days): the day's raw pings (footers) against the
    calendar-aware baseline of the raw days before it, and what the day's folder holds."""
    history = [h for h in lake_history(lake, RAW_PINGS, day) if h.value > 0]
    baseline = fit_baseline(day, history, VOLUME_POLICY, holidays_from_env())
    rows = RAW_PINGS.rows(lake, day)
    audit = ping_volume_audit(rows, [], elapsed_share, baseline=baseline)
    folder = today_folder(lake, day, rows)
    return Audit(
        audit.name,
        audit.passed,
        f"{audit.detail} (the day's folder: {folder})",
        audit.figures | {"today_folder": folder},
    )


@dg.asset_check(
    asset=RAW_PINGS.name,
    description="Today's raw pings so far vs a full day's baseline scaled to the elapsed share "
    f"of the day: fails below {MIN_RATIO:g}x the expected share or above the block band (at most "
    f"x{MAX_RATIO:g}), WARN outside the warn band. "
    + VOLUME_POLICY.describe("days with raw pings", overrides=False),
)
def raw_pings_volume(lake: LakeResource) -> dg.AssetCheckResult:
    now = datetime.now(UTC)
    elapsed = (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
    return _result(day_volume_audit(lake, now.date().isoformat(), elapsed / 86400))


@dg.asset_check(
    asset=reference_pois.key,
    description="The reference POIs exist, with unique non-null ids and valid polygons.",
)
def poi_reference_not_empty(lake: LakeResource) -> dg.AssetCheckResult:
    pois = REFERENCE_POIS.read_or_empty(lake)
    ids = pois.get("poi_id")
    rows = len(pois)
    nulls = int(ids.isna().sum()) if ids is not None else rows
    dupes = int(ids.dropna().duplicated().sum()) if ids is not None else 0
    rejected = len(validate_pois(pois)[1]) if rows else 0
    ok = rows > 0 and nulls == 0 and dupes == 0 and rejected == 0
    detail = (
        f"{rows} POIs"
        if ok
        else f"{rows} POIs, {nulls} without poi_id, {dupes} duplicated ids, {rejected} rows "
        f"rejected by validation (need > 0, 0, 0, 0; quarantined on read by the assets)"
    )
    figures = {"rows": rows, "null_ids": nulls, "dupes": dupes, "rejected_rows": rejected}
    return _result(Audit("poi_reference_not_empty", ok, detail, figures))


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
