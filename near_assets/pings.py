"""Raw and clean pings: the first two assets of the location graph, one partition per UTC day.

``raw_pings`` registers what upstream delivered under ``raw/pings/date=D/`` (``RAW_PINGS``; it
copies nothing: materialising it means "these files were observed"); ``clean_pings`` reads them,
quarantines the dirt (``near_assets.science.cleaning``) and writes ``CLEAN_PINGS`` plus
``QUARANTINED_PINGS`` for the day. ``raw_pings_sensor`` notices new or changed day folders and
runs both for those days, so new data flows without clicks.

``clean_pings`` runs on the engine of its config (``engine``, default ``$NEAR_ENGINE``):
``pandas`` reads the day into the run process; ``spark`` checks each raw file's schema from its
Parquet footer here, then one Spark job (``near_assets/spark_jobs/clean_pings.py``, locally or
on EMR) cleans every day of the run with the same rules and writes both outputs; the per-reason
counts come back through Pipes and the blocking check is computed from them. The run process
never loads the day's rows with Spark.

What counts as *bad* for the blocking check: every quarantined row except duplicates. A duplicate
is a delivery retry whose first copy is kept, so no information is lost; a share of bad rows
above ``PINGS_MAX_BAD_SHARE`` (default 0.2) means the feed itself is broken.
"""

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from near_assets.engine import EngineConfig, spark_places
from near_assets.partitions import daily_partitions, eager_any_day
from near_assets.science import cleaning
from near_assets.spark_jobs import CLEAN_PINGS as CLEAN_PINGS_JOB
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.tables import (
    CLEAN_PINGS,
    FRESHNESS_DAILY,
    HIGH_DENSITY_POINTS,
    QUARANTINED_PINGS,
    RAW_PINGS,
    internal_asset_args,
)
from publishing.tables import trailing_days
from resources.lake import LakeResource
from resources.spark import SparkResource

GROUP = "pings"
LANE_TAGS = {"platform/lane": "batch"}
DEFAULT_MAX_BAD_SHARE = 0.2
SENSOR_MAX_DAYS_PER_RUN = 14
RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
HDP_LIST_COLUMNS = ["cell", "lat", "lon", "exact_point"]
"""The columns of ``HIGH_DENSITY_POINTS`` the cleaning rule needs (``hdp.on_hdp``)."""
HDP_ARG_CHARS = 8_000
"""Most characters of one ``--hdps`` job argument (EMR caps one step argument at 10,280)."""
LEARNT_HDPS = dg.AssetDep(
    "high_density_points",
    partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
    ),
)
"""Day D reads the list published for D-1 (``high_density_points`` reads raw pings: no cycle)."""
clean_pings_automation = eager_any_day.ignore(dg.AssetSelection.assets("high_density_points"))
"""``eager_any_day``, not waiting for (nor re-running on) the day before's HDP list: the list
is optional (missing on the lake's first day or after a day without raw pings), and a later
update of it does not re-clean the day."""


def max_bad_share_from_env() -> float:
    """``$PINGS_MAX_BAD_SHARE`` as a share in [0, 1] (default 0.2), read at run time."""
    raw = os.environ.get("PINGS_MAX_BAD_SHARE", "").strip()
    if not raw:
        return DEFAULT_MAX_BAD_SHARE
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"PINGS_MAX_BAD_SHARE={raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"PINGS_MAX_BAD_SHARE={raw!r} must be a share between 0 and 1")
    return value


def fingerprint(entries: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(sorted(entries)).encode()).hexdigest()[:16]


# ---- reading a day folder ---------------------------------------------------------------------


def _open_parquet(lake: LakeResource, key: str, source: Any) -> pq.ParquetFile:
    """``pq.ParquetFile`` on ``source``; bytes that are not Parquet fail the run (no retry)."""
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise dg.Failure(
            description=f"{lake.uri(key)}: not a readable Parquet file ({exc})",
            metadata={"file": key},
            allow_retries=False,
        ) from exc


def _check_schema(lake: LakeResource, key: str, parquet: pq.ParquetFile) -> None:
    """A raw file whose schema breaks CONTRACTS fails the run with the file and its problems."""
    problems = cleaning.schema_problems(parquet.schema_arrow)
    if problems:
        raise dg.Failure(
            description=f"{lake.uri(key)}: {'; '.join(problems)}",
            metadata={
                "file": key,
                "problems": dg.MetadataValue.json(problems),
                "columns": dg.MetadataValue.json(parquet.schema_arrow.names),
            },
            allow_retries=False,
        )


@contextmanager
def _parquet_file(lake: LakeResource, key: str) -> Iterator[tuple[pq.ParquetFile, int]]:
    """Open one raw file for ranged reads of the columns asked for, not the whole object
    (transient lake errors propagate and are retried; bad bytes fail)."""
    with lake.open_input(key) as fh:
        parquet = _open_parquet(lake, key, fh)
        _check_schema(lake, key, parquet)
        yield parquet, fh.size()


def raw_file_footer(lake: LakeResource, key: str) -> dict[str, Any]:
    """One raw file's footer, checked like ``_parquet_file`` but without reading its rows:
    bytes, rows and the ``ts`` encoding the Spark job needs (``ns``, ``timestamp``, ``int``)."""
    with lake.open_input(key) as fh:
        parquet = _open_parquet(lake, key, fh)
        _check_schema(lake, key, parquet)
        ts_type = parquet.schema_arrow.field("ts").type
        rows, size = parquet.metadata.num_rows, fh.size()
    if pa.types.is_timestamp(ts_type):
        kind = "ns" if ts_type.unit == "ns" else "timestamp"
    else:
        kind = "int"  # int64 epoch ms (or an all-null column)
    return {"file": key, "bytes": size, "rows": rows, "ts_type": str(ts_type), "ts_kind": kind}


def _read_table(parquet: pq.ParquetFile, columns: Sequence[str] | None = None) -> pd.DataFrame:
    names = parquet.schema_arrow.names
    wanted = [c for c in (columns or names) if c in names]
    return parquet.read(columns=wanted).to_pandas()


def read_raw_day(lake: LakeResource, day: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every raw file of ``day`` normalised and concatenated, plus one summary per file."""
    frames, files = [], []
    for key in RAW_PINGS.files(lake, day):
        with _parquet_file(lake, key) as (parquet, size):
            frame = cleaning.normalize_pings(_read_table(parquet))
            ts_type = parquet.schema_arrow.field("ts").type
        frames.append(frame)
        files.append({"file": key, "bytes": size, "rows": len(frame), "ts_type": str(ts_type)})
    if not frames:
        return cleaning.empty_pings(), files
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0], files


# ---- metadata helpers -------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".")
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, max_rows: int = 10) -> str:
    """A small Markdown table of the first ``max_rows`` rows (tabulate is not installed)."""
    if df.empty:
        return "_no rows_"
    head = df.head(max_rows)
    lines = [
        "| " + " | ".join(map(str, head.columns)) + " |",
        "|" + " --- |" * len(head.columns),
        *("| " + " | ".join(_cell(v) for v in row) + " |" for row in head.itertuples(False)),
    ]
    if len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows:,} more rows_")
    return "\n".join(lines)


def _status(files: Sequence[Any], rows: int) -> str:
    if not files:
        return "missing"
    return "present" if rows else "empty"


# ---- raw_pings --------------------------------------------------------------------------------


RAW_SCAN_BATCH_ROWS = 250_000
"""``raw_pings`` reads a raw file's ``device_id`` and ``ts`` this many rows at a time."""


def _scan_raw_file(
    parquet: pq.ParquetFile,
) -> tuple[pd.Timestamp | None, pd.Timestamp | None, np.ndarray]:
    """First and last valid timestamp of one raw file and a 64-bit hash of each distinct
    non-empty device id, read in batches: memory holds one batch and the distinct devices
    (8 bytes each), whatever the file's size."""
    first = last = None
    hashes: list[np.ndarray] = []
    for batch in parquet.iter_batches(
        batch_size=RAW_SCAN_BATCH_ROWS, columns=["device_id", "ts"], use_threads=False
    ):
        ts = cleaning.normalize_ts(batch.column("ts").to_pandas()).dropna()
        if not ts.empty:
            lo, hi = ts.min(), ts.max()
            first = lo if first is None or lo < first else first
            last = hi if last is None or hi > last else last
        ids = pc.unique(batch.column("device_id").drop_null()).to_numpy(zero_copy_only=False)
        ids = ids.astype(object)
        ids = ids[ids != ""]
        hashes.append(np.unique(pd.util.hash_array(ids)))
    return first, last, (np.unique(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64))


def observe_raw_day(lake: LakeResource, day: str) -> dict[str, Any]:
    """What upstream delivered for ``day``: files, bytes, rows, devices and time range."""
    folder = RAW_PINGS.key(day)
    files, ts_min, ts_max, entries = [], [], [], []
    device_hashes: list[np.ndarray] = []
    for key in RAW_PINGS.files(lake, day):
        with _parquet_file(lake, key) as (parquet, size):
            first_ts, last_ts, hashes = _scan_raw_file(parquet)
            rows_in_file = parquet.metadata.num_rows
        device_hashes.append(hashes)
        first = first_ts.isoformat() if first_ts is not None else None
        ts_min.append(first)
        ts_max.append(last_ts.isoformat() if last_ts is not None else None)
        files.append(
            {"file": key.rsplit("/", 1)[-1], "bytes": size, "rows": rows_in_file, "ts_min": first}
        )
        entries.append(f"{key}:{size}")
    rows = sum(f["rows"] for f in files)
    devices = np.unique(np.concatenate(device_hashes)) if device_hashes else np.empty(0)
    return {
        "status": _status(files, rows),
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "rows": rows,
        "dagster/row_count": rows,
        "devices": len(devices),
        "ts_min": min((t for t in ts_min if t), default=None),
        "ts_max": max((t for t in ts_max if t), default=None),
        "location": dg.MetadataValue.path(lake.uri(folder)),
        "fingerprint": fingerprint(entries),
        "names_fingerprint": fingerprint([e.rsplit(":", 1)[0] for e in entries]),
        "file_list": dg.MetadataValue.md(markdown_table(pd.DataFrame(files), 50)),
    }


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    retry_policy=RETRY,
    check_specs=[
        dg.AssetCheckSpec(
            "day_delivered",
            asset=RAW_PINGS.name,
            description="Warns when a day folder is missing or holds no rows.",
        )
    ],
    kinds={"parquet"},
    op_tags=LANE_TAGS,
    **internal_asset_args(RAW_PINGS, tags={"tier": "input"}, freshness_policy=FRESHNESS_DAILY),
)
def raw_pings(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Raw mobile pings as upstream delivered them, one folder per UTC day (``raw/pings/date=D``).

    Nothing is copied: a materialisation registers the day's files as observed (files, bytes,
    rows, devices, time range, a fingerprint of the file list) after checking each file's
    schema against CONTRACTS. A file without a required column fails the run with the file's
    name; a missing or empty day is recorded with ``status`` ``missing``/``empty`` and 0 rows.
    """
    not_delivered = {}
    for day in context.partition_keys:
        meta = observe_raw_day(lake, day)
        context.add_asset_metadata(meta, partition_key=day)
        if meta["status"] != "present":
            not_delivered[day] = meta["status"]
            context.log.warning(f"raw pings for {day}: {meta['status']}")
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name="day_delivered",
                passed=not not_delivered,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"days": len(context.partition_keys), "not_delivered": not_delivered},
                description=(
                    "every day has pings"
                    if not not_delivered
                    else f"no pings for {', '.join(sorted(not_delivered))}"
                ),
            )
        ]
    )


# ---- clean_pings ------------------------------------------------------------------------------


class CleanPingsConfig(EngineConfig):
    max_accuracy_m: float = 1000.0
    """Pings with a larger accuracy radius (metres) are quarantined as ``low_accuracy``."""
    hdp_min_devices: int = 50
    """Distinct devices on one exact coordinate that make it a high-density point."""
    hdp_decimals: int | None = None
    """Round coordinates to this many decimals before the high-density count (None: exact)."""
    max_bad_share: float | None = None
    """Blocking-check threshold on the bad share; None reads ``$PINGS_MAX_BAD_SHARE`` (0.2)."""
    spark_rows_per_file: int = 4_000_000
    """Spark engine: clean rows per output file (the day's range partitions by device)."""
    use_learnt_hdps: bool = True
    """Also drop pings on the learnt high-density points of the day before
    (``curated/high_density_points/date=D-1``), when published."""

    def params(self) -> dict[str, Any]:
        """The cleaning parameters, as ``cleaning.clean_pings`` and the Spark job take them."""
        return {
            "max_accuracy_m": self.max_accuracy_m,
            "hdp_min_devices": self.hdp_min_devices,
            "hdp_decimals": self.hdp_decimals,
        }


def learnt_hdps(lake: LakeResource, day: str) -> pd.DataFrame | None:
    """The high-density points list published for the day before ``day`` (``HDP_LIST_COLUMNS``;
    None when not published)."""
    (yesterday,) = trailing_days(day, 1)
    return HIGH_DENSITY_POINTS.read(lake, yesterday, HDP_LIST_COLUMNS)


def day_hdps(lake: LakeResource, day: str, config: CleanPingsConfig) -> pd.DataFrame | None:
    """The learnt list ``clean_pings`` applies to ``day`` (None: switched off or not published)."""
    return learnt_hdps(lake, day) if config.use_learnt_hdps else None


def clean_day(
    lake: LakeResource,
    day: str,
    config: CleanPingsConfig,
    hdps: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Clean one day: read, split, write both outputs; returns figures for metadata and check.

    ``hdps``: the learnt high-density points list to apply (``day_hdps``), None for none.
    """
    started = time.perf_counter()
    raw, files = read_raw_day(lake, day)
    read_s = time.perf_counter() - started
    clean, quarantine = cleaning.clean_pings(
        raw, date.fromisoformat(day), **config.params(), hdps=hdps
    )
    clean_s = time.perf_counter() - started - read_s
    clean_key = CLEAN_PINGS.write(lake, clean, day)
    quarantine_key = QUARANTINED_PINGS.write(lake, quarantine, day)
    write_s = time.perf_counter() - started - read_s - clean_s
    counts = cleaning.reason_counts(quarantine)
    return {
        "engine": "pandas",
        "rows_in": len(raw),
        "rows_out": len(clean),
        "files": len(files),
        "status": _status(files, len(raw)),
        "devices_in": int(raw["device_id"].nunique()),
        "devices_out": int(clean["device_id"].nunique()),
        "counts": counts,
        "bad_share": cleaning.bad_share(counts, len(raw)),
        "duplicate_share": counts["duplicate"] / len(raw) if len(raw) else 0.0,
        "hdp_list_cells": 0 if hdps is None else len(hdps),
        "clean_key": clean_key,
        "quarantine_key": quarantine_key,
        "preview_clean": markdown_table(clean, 5),
        "preview_quarantine": markdown_table(quarantine.groupby("reason", sort=False).head(2), 14),
        "seconds": {"read": read_s, "clean": clean_s, "write": write_s},
    }


# ---- clean_pings on Spark ---------------------------------------------------------------------


def clean_days_spark(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    config: CleanPingsConfig,
) -> dict[str, dict[str, Any]]:
    """Clean every day of the run with one Spark job; ``clean_day``'s figures for each day.

    Each raw file's schema is checked from its footer first (same failure as pandas). Days
    without raw files are written empty in-process (``engine`` pandas: nothing to run).
    """
    footers = {
        day: [raw_file_footer(lake, key) for key in RAW_PINGS.files(lake, day)]
        for day in context.partition_keys
    }
    hdps = {day: day_hdps(lake, day, config) for day in footers}
    days = {
        day: clean_day(lake, day, config, hdps[day]) for day, files in footers.items() if not files
    }
    present = [day for day, files in footers.items() if files]
    if not present:
        return days
    with spark_places(lake, spark) as places:
        args = ["--params", json.dumps(config.params())]
        args += ["--rows-per-file", str(config.spark_rows_per_file)]
        for day in present:
            folder = RAW_PINGS.key(day)
            for f in footers[day]:
                places.input(f["file"])
            spec = json.dumps(
                {
                    "day": day,
                    "rows": sum(f["rows"] for f in footers[day]),
                    "raw": places.uri(folder),
                    "files": [[f["file"][len(folder) + 1 :], f["ts_kind"]] for f in footers[day]],
                    "clean": places.output(CLEAN_PINGS.key(day)),
                    "quarantine": places.output(QUARANTINED_PINGS.key(day)),
                }
            )
            args += ["--day", spec, *hdp_args(day, hdp_records(hdps[day]))]
        summary = spark.run_script(context, CLEAN_PINGS_JOB, args, job_conf=BASE_CONF)
    reported = summary.get("days") or {}
    for day in present:
        if day not in reported:
            raise dg.Failure(description=f"the Spark job reported no figures for {day}")
        days[day] = spark_figures(lake, day, reported[day], footers[day], summary)
        days[day]["hdp_list_cells"] = 0 if hdps[day] is None else len(hdps[day])
    return dict(sorted(days.items()))


def hdp_records(hdps: pd.DataFrame | None) -> list[dict[str, Any]]:
    """The learnt list as JSON rows for the Spark job (tens to hundreds of rows; floats as
    Python floats, whose JSON form round-trips, so the job compares exact coordinates bit for
    bit)."""
    if hdps is None or hdps.empty:
        return []
    return [
        {
            "cell": int(r["cell"]),
            "lat": float(r["lat"]),
            "lon": float(r["lon"]),
            "exact_point": bool(r["exact_point"]) if pd.notna(r["exact_point"]) else False,
        }
        for r in hdps[HDP_LIST_COLUMNS].to_dict("records")
    ]


def hdp_args(day: str, records: Sequence[dict[str, Any]]) -> list[str]:
    """``--hdps`` job arguments carrying ``day``'s list, each under ``HDP_ARG_CHARS``."""
    args: list[str] = []
    chunk: list[dict[str, Any]] = []
    size = 0
    for record in records:
        length = len(json.dumps(record)) + 2
        if chunk and size + length > HDP_ARG_CHARS:
            args += ["--hdps", json.dumps({"day": day, "rows": chunk})]
            chunk, size = [], 0
        chunk.append(record)
        size += length
    if chunk:
        args += ["--hdps", json.dumps({"day": day, "rows": chunk})]
    return args


def spark_figures(
    lake: LakeResource,
    day: str,
    job: dict[str, Any],
    footers: Sequence[dict[str, Any]],
    summary: dict[str, Any],
) -> dict[str, Any]:
    """``clean_day``'s figures from what the Spark job reported for ``day`` (no rows loaded).

    The job's input rows must match the raw files' footers.
    """
    rows_in = int(job["rows_in"])
    footer_rows = sum(f["rows"] for f in footers)
    if rows_in != footer_rows:
        raise dg.Failure(
            description=f"{day}: the Spark job read {rows_in:,} rows, the raw footers hold "
            f"{footer_rows:,}",
            metadata={"rows_in": rows_in, "footer_rows": footer_rows},
        )
    counts = {reason: int(job["counts"].get(reason, 0)) for reason in cleaning.REASONS}
    quarantine = pd.DataFrame(job.get("preview_quarantine") or [])
    return {
        "engine": "spark",
        "spark_backend": str(summary.get("engine", "")),
        "spark_version": str(summary.get("spark_version", "")),
        "rows_in": rows_in,
        "rows_out": int(job["rows_out"]),
        "files": len(footers),
        "status": _status(footers, rows_in),
        "devices_in": int(job["devices_in"]),
        "devices_out": int(job["devices_out"]),
        "counts": counts,
        "bad_share": cleaning.bad_share(counts, rows_in),
        "duplicate_share": counts["duplicate"] / rows_in if rows_in else 0.0,
        "clean_key": CLEAN_PINGS.key(day),
        "quarantine_key": QUARANTINED_PINGS.key(day),
        "preview_clean": markdown_table(pd.DataFrame(job.get("preview_clean") or []), 5),
        "preview_quarantine": markdown_table(quarantine, 14),
        "seconds": {"spark": float(job.get("seconds", 0.0))},
    }


def describe_clean_day(lake: LakeResource, figures: dict[str, Any], threshold: float) -> dict:
    """Materialization metadata of one cleaned day (``clean_day``'s figures)."""
    seconds = figures["seconds"]
    total_s = sum(seconds.values())
    spark_meta = {k: figures[k] for k in ("spark_backend", "spark_version") if k in figures}
    return {
        "engine": figures["engine"],
        **spark_meta,
        "status": figures["status"],
        "rows_in": figures["rows_in"],
        "rows_out": figures["rows_out"],
        "rows_quarantined": figures["rows_in"] - figures["rows_out"],
        "dagster/row_count": figures["rows_out"],
        "devices_in": figures["devices_in"],
        "devices_out": figures["devices_out"],
        **{f"dropped/{reason}": n for reason, n in figures["counts"].items()},
        "bad_share": round(figures["bad_share"], 6),
        "duplicate_share": round(figures["duplicate_share"], 6),
        "hdp_list_cells": figures.get("hdp_list_cells", 0),
        "max_bad_share": threshold,
        "bad_reasons": ", ".join(cleaning.BAD_REASONS),
        "clean_path": dg.MetadataValue.path(lake.uri(figures["clean_key"])),
        "quarantine_path": dg.MetadataValue.path(lake.uri(figures["quarantine_key"])),
        "preview": dg.MetadataValue.md(figures["preview_clean"]),
        "quarantine_preview": dg.MetadataValue.md(figures["preview_quarantine"]),
        **{f"seconds/{stage}": round(s, 3) for stage, s in seconds.items()},
        "rows_per_s": round(figures["rows_in"] / total_s) if total_s > 0 else 0,
    }


def bad_share_check(days: dict[str, dict[str, Any]], threshold: float) -> dg.AssetCheckResult:
    """Fails when any day of the run has a bad share above ``threshold``."""
    failing = {d: f for d, f in days.items() if f["bad_share"] > threshold}
    rows_in = sum(f["rows_in"] for f in days.values())
    totals = {r: sum(f["counts"][r] for f in days.values()) for r in cleaning.REASONS}
    worst_day = max(days, key=lambda d: days[d]["bad_share"])
    worst = days[worst_day]
    if failing:
        description = "; ".join(
            f"{d}: bad share {f['bad_share']:.1%} > {threshold:.1%}" for d, f in failing.items()
        )
    elif rows_in == 0:
        description = "no pings to judge (missing or empty day)"
    else:
        description = f"bad share at most {worst['bad_share']:.1%} (threshold {threshold:.1%})"
    return dg.AssetCheckResult(
        check_name="bad_share_below_threshold",
        passed=not failing,
        description=description,
        metadata={
            "max_bad_share": threshold,
            "bad_share": round(worst["bad_share"], 6),
            "worst_day": worst_day,
            "rows_in": rows_in,
            "bad_rows": sum(totals[r] for r in cleaning.BAD_REASONS),
            **{f"dropped/{reason}": n for reason, n in totals.items()},
            "failing_days": dg.MetadataValue.json(
                {d: round(f["bad_share"], 6) for d, f in failing.items()}
            ),
            "bad_reasons": ", ".join(cleaning.BAD_REASONS),
        },
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=daily_partitions,
    deps=[raw_pings, LEARNT_HDPS],
    backfill_policy=dg.BackfillPolicy.single_run(),
    retry_policy=RETRY,
    automation_condition=clean_pings_automation,
    check_specs=[
        dg.AssetCheckSpec(
            "bad_share_below_threshold",
            asset=CLEAN_PINGS.name,
            blocking=True,
            description=(
                "Fails when the share of bad rows (every quarantine reason except duplicate) "
                "passes PINGS_MAX_BAD_SHARE (default 0.2) or the run's max_bad_share."
            ),
        )
    ],
    kinds={"pandas", "spark", "parquet"},
    op_tags=LANE_TAGS,
    **internal_asset_args(CLEAN_PINGS),
)
def clean_pings(
    context: dg.AssetExecutionContext,
    config: CleanPingsConfig,
    lake: LakeResource,
    spark: SparkResource,
) -> dg.MaterializeResult:
    """Pings without dirt, per UTC day, sorted by device and time (``work/clean_pings/date=D``).

    Drops nulls, out-of-range and (0, 0) coordinates, timestamps outside the day, accuracy over
    ``max_accuracy_m``, duplicates and high-density points (one exact coordinate reported by
    ``hdp_min_devices`` devices, or a point of the learnt list ``high_density_points``
    published for the day before, when ``use_learnt_hdps`` and published; metadata
    ``hdp_list_cells`` is its size). Dropped rows go to ``quarantine/pings/date=D`` with their
    ``reason``; metadata counts them per reason (``dropped/<reason>``). The blocking check
    ``bad_share_below_threshold`` stops downstream steps when the feed is broken.

    ``engine`` (default ``$NEAR_ENGINE``) picks pandas in the run process or one Spark job for
    the run's days (same rows, same counts); metadata ``engine`` names the one that ran.
    """
    try:
        threshold = (
            config.max_bad_share if config.max_bad_share is not None else max_bad_share_from_env()
        )
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    if config.engine == "spark":
        days = clean_days_spark(context, lake, spark, config)
    else:
        days = {
            day: clean_day(lake, day, config, day_hdps(lake, day, config))
            for day in context.partition_keys
        }
    for day, figures in days.items():
        context.add_asset_metadata(describe_clean_day(lake, figures, threshold), partition_key=day)
        context.log.info(
            f"{day}: {figures['rows_in']:,} rows in, {figures['rows_out']:,} clean, "
            f"bad share {figures['bad_share']:.2%}, dropped {figures['counts']}"
        )
    return dg.MaterializeResult(check_results=[bad_share_check(days, threshold)])


pings_job = dg.define_asset_job(
    "pings_daily",
    selection=dg.AssetSelection.assets(raw_pings, clean_pings),
    partitions_def=daily_partitions,
    tags=LANE_TAGS,
    executor_def=dg.in_process_executor,
    description="Register a day's raw pings and clean them (one run may cover a day range).",
)


# ---- sensor -----------------------------------------------------------------------------------


def registered_fingerprints(instance: dg.DagsterInstance, days: Sequence[str]) -> dict[str, str]:
    """``{day: names_fingerprint}`` of the latest ``raw_pings`` materialization of each day."""
    out: dict[str, str] = {}
    for day in days:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=raw_pings.key, asset_partitions=[day]),
            limit=1,
        ).records
        if not records or records[0].asset_materialization is None:
            continue
        value = records[0].asset_materialization.metadata.get("names_fingerprint")
        if value is not None:
            out[day] = str(value.value)
    return out


def raw_day_fingerprints(lake: LakeResource) -> dict[str, str]:
    """``{day: fingerprint of its Parquet file names}`` for every day folder of ``RAW_PINGS``."""
    by_day: dict[str, list[str]] = {}
    for key in lake.list(RAW_PINGS.prefix):
        parts = key[len(RAW_PINGS.prefix) + 1 :].split("/")
        day = RAW_PINGS.value_of(parts[0]) if len(parts) > 1 else None
        if day and _DAY.fullmatch(day) and key.endswith(".parquet"):
            by_day.setdefault(day, []).append(key)
    return {day: fingerprint(keys) for day, keys in sorted(by_day.items())}


def day_ranges(days: Sequence[str], max_days: int) -> list[tuple[str, str]]:
    """Consecutive days grouped into ``(first, last)`` ranges of at most ``max_days``."""
    ranges: list[list[str]] = []
    for day in sorted(days):
        last = ranges[-1] if ranges else None
        follows = last and date.fromisoformat(day) - date.fromisoformat(last[-1]) == timedelta(1)
        if last and follows and len(last) < max_days:
            last.append(day)
        else:
            ranges.append([day])
    return [(r[0], r[-1]) for r in ranges]


@dg.sensor(
    job=pings_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs raw_pings + clean_pings for day folders that are new or whose files changed.",
)
def raw_pings_sensor(
    context: dg.SensorEvaluationContext, lake: LakeResource
) -> dg.SensorResult | dg.SkipReason:
    """Cursor: ``{day: fingerprint of the day's file names}``; one run per range of changed days.

    The lake lists names only, so a file rewritten in place under the same name is not noticed:
    upstream adds new files (or the day is re-run by hand / by a backfill).
    """
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    current = raw_day_fingerprints(lake)
    valid = {d: f for d, f in current.items() if daily_partitions.has_partition_key(d)}
    for day in sorted(set(current) - set(valid)):
        context.log.warning(f"{RAW_PINGS.key(day)} is outside the daily partitions; ignored")
    # Days the cursor does not know (first tick, or a reset DAGSTER_HOME with a kept database...):
    # a day whose raw_pings materialization already registered these very files is not re-run.
    seen.update(registered_fingerprints(context.instance, [d for d in valid if d not in seen]))
    changed = [d for d, f in valid.items() if seen.get(d) != f]
    if not changed:
        return dg.SkipReason(
            f"no new or changed day folders among {len(valid)} under {RAW_PINGS.prefix}"
        )
    requests = []
    for first, last in day_ranges(changed, SENSOR_MAX_DAYS_PER_RUN):
        span = [d for d in changed if first <= d <= last]
        run_key = f"pings:{first}:{last}:{fingerprint([valid[d] for d in span])}"
        if first == last:
            requests.append(dg.RunRequest(run_key=run_key, partition_key=first, tags=LANE_TAGS))
        else:
            tags = {
                **LANE_TAGS,
                "dagster/asset_partition_range_start": first,
                "dagster/asset_partition_range_end": last,
            }
            requests.append(dg.RunRequest(run_key=run_key, tags=tags))
    context.log.info(f"new or changed days: {', '.join(changed)}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(valid, sort_keys=True))


defs = dg.Definitions(
    assets=[raw_pings, clean_pings],
    jobs=[pings_job],
    sensors=[raw_pings_sensor],
)
