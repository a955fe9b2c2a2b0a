"""Clean raw pings with Spark: the Spark engine of ``clean_pings`` (a dagster-pipes script).

    clean_pings.py --params '{"max_accuracy_m": 1000.0, "hdp_min_devices": 50, "hdp_decimals": null}' \
        --day '{"day": "2024-01-01", "raw": "s3a://.../raw/pings/date=2024-01-01",
                "files": [["part-0.parquet", "int"], ["part-1.parquet", "ns"]],
                "clean": "s3a://.../work/clean_pings/date=2024-01-01",
                "quarantine": "s3a://.../quarantine/pings/date=2024-01-01"}' [--day ...] \
        --hdps '{"day": "2024-01-01", "rows": [{"cell": 9604001969997, "lat": 40.1,
                 "lon": -3.0003, "exact_point": true}, ...]}' [--hdps ...]

(one ``--day`` argument per day, and the day's learnt high-density list in ``--hdps``
arguments of a few thousand characters each: each stays well under EMR's limit on one step
argument).

The same rules as ``near_assets.science.cleaning.clean_pings`` (one reason per dirty row, the
first in ``REASONS`` order), written in Spark SQL over every row of the day:

- row rules (``null_field`` ... ``low_accuracy``) are one ``CASE`` over normalised columns
  (``ts`` as int64 nanoseconds like ``cleaning.normalize_ts``; NaN coordinates and accuracies
  count as missing, as in pandas);
- ``duplicate``: among the rows no row rule dropped, every row after the first *delivery* of a
  (device, ts, lat, lon): ``row_number()`` over arrival order (file order, then row order);
- ``high_density``: among the rows still alive, coordinates (rounded like ``numpy.round`` when
  ``hdp_decimals`` is set) reported by at least ``hdp_min_devices`` distinct devices, and the
  rows on a point of the day's learnt list (``--hdps``: the day before's ``high_density_points``,
  tens to hundreds of rows, broadcast-joined on the cell code of ``hdp.cell_codes``): anywhere
  in the cell, or only on its exact coordinate for an ``exact_point`` entry (``hdp.on_hdp``).

The day's rows are shuffled once, into range partitions by device of about
``--rows-per-file`` rows: the duplicate window, the per-device counts and the clean output
need no other shuffle (only the high-density count, over coordinates, has its own). Each day's
clean rows replace its ``clean`` folder (one file per range partition, sorted by device, ts
and arrival inside each file: the files in name order are one sorted table) and its dirty
rows, with ``reason``, the ``quarantine`` folder (about one file per ``--rows-per-file``
rows, each sorted). Timestamps are written as microseconds
(a sub-microsecond part of a nanosecond raw file is floored; the rules use the full value).

The orchestrator checks each raw file's schema from its footer beforehand and names each file's
``ts`` encoding: ``ns`` (``TIMESTAMP(NANOS)``, read as int64 ns), ``timestamp`` (ms/us) or
``int`` (int64 epoch ms, also an all-null column). The per-reason counts, row and device
counts and small previews go back through Pipes (``report_custom_message``): the run process
never loads the day.

Job scripts import ``dagster_pipes`` only, never ``dagster``: this one ships to EMR.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from near_assets.science.cleaning import REASONS
from near_assets.science.hdp import LAT_SPAN, HdpParams
from near_assets.spark_jobs._pipes_main import pipes_main
from near_assets.spark_jobs.apply_by_device import (
    BASE_CONF,
    clean_local_output,
    is_local,
    sized_shuffle,
    spark_session,
)

MAX_ABS_NS = 9_200_000_000_000_000_000
"""``cleaning._MAX_ABS_NS``: timestamps beyond it are missing (pandas' nanosecond range)."""
ROWS_PER_FILE = 4_000_000
"""Clean rows per output file (range partitions by device)."""
PREVIEW_ROWS = 5
NS_PER_DAY = 86_400 * 10**9
PING_COLUMNS = ("device_id", "ts", "lat", "lon", "accuracy_m")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="{}", help="JSON cleaning parameters")
    parser.add_argument(
        "--day", action="append", required=True, help="JSON: day, raw folder, files, outputs"
    )
    parser.add_argument(
        "--hdps", action="append", default=[], help="JSON: day and rows of its learnt HDP list"
    )
    parser.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE)
    parser.add_argument("--master", default=None, help="Spark master (spark-submit sets it)")
    parser.add_argument("--spark-conf", default="{}", help="JSON Spark settings for the session")
    args, _ = parser.parse_known_args(argv)  # the --dagster-pipes-* arguments are read by pipes
    return args


def day_start_ns(day: str) -> int:
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    return int(start.timestamp()) * 10**9


def ts_ns_expr(kind: str) -> str:
    """SQL for the raw ``ts`` as int64 nanoseconds (NULL when unrepresentable, as NaT)."""
    if kind == "ns":  # TIMESTAMP(NANOS) read as a long (spark.sql.legacy.parquet.nanosAsLong)
        return f"CASE WHEN ts BETWEEN -{MAX_ABS_NS} AND {MAX_ABS_NS} THEN ts END"
    if kind == "timestamp":  # ms or us; a naive one (TIMESTAMP_NTZ) is taken as UTC
        us = "unix_micros(CAST(ts AS TIMESTAMP))"
        limit = MAX_ABS_NS // 1000
        return f"CASE WHEN {us} BETWEEN -{limit} AND {limit} THEN {us} * 1000 END"
    if kind == "int":  # epoch milliseconds (any integer width; an all-null column reads as int)
        limit = MAX_ABS_NS // 10**6
        return f"CASE WHEN ts BETWEEN -{limit} AND {limit} THEN CAST(ts AS BIGINT) * 1000000 END"
    raise ValueError(f"unknown ts encoding {kind!r}: expected ns, timestamp or int")


def _float(column: str, present: bool) -> str:
    """A float column with NaN as NULL (pandas writes a NaN float as a Parquet null)."""
    if not present:
        return f"CAST(NULL AS DOUBLE) AS {column}"
    value = f"CAST({column} AS DOUBLE)"
    return f"CASE WHEN isnan({value}) THEN NULL ELSE {value} END AS {column}"


def read_file(spark: Any, uri: str, kind: str, index: int) -> Any:
    """One raw file normalised, with its arrival order (file index, split start, row id)."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(uri)
    names = set(df.columns)
    df = df.select(
        "*",
        F.lit(index).alias("_file"),
        F.input_file_block_start().alias("_block"),
        F.monotonically_increasing_id().alias("_row"),
    )
    return df.selectExpr(
        "CAST(device_id AS STRING) AS device_id",
        f"{ts_ns_expr(kind)} AS ts_ns",
        _float("lat", "lat" in names),
        _float("lon", "lon" in names),
        _float("accuracy_m", "accuracy_m" in names),
        "_file",
        "_block",
        "_row",
    )


def rounded(column: str, decimals: int | None) -> str:
    """``numpy.round`` in SQL (x * 10^d, round half to even, / 10^d), ``-0.0`` as ``0.0``."""
    if decimals is None:
        return f"{column} + 0.0D"
    if decimals >= 0:
        factor = float(10**decimals)
        return f"rint({column} * {factor!r}D) / {factor!r}D + 0.0D"
    factor = float(10**-decimals)
    return f"rint({column} / {factor!r}D) * {factor!r}D + 0.0D"


def cell_code(lat: str = "lat", lon: str = "lon", cell_deg: float = HdpParams.cell_deg) -> Any:
    """``hdp.cell_codes`` in Spark: the same double arithmetic, the nearest cell centre."""
    from pyspark.sql import functions as F

    half = LAT_SPAN // 2

    def index(column: str) -> Any:
        return F.floor(F.col(column) / F.lit(float(cell_deg)) + F.lit(0.5)).cast("long")

    return (index(lat) + F.lit(half)) * F.lit(LAT_SPAN) + (index(lon) + F.lit(half))


def hdp_frame(spark: Any, hdps: Sequence[dict[str, Any]]) -> Any:
    """The learnt list as a small DataFrame: cell, _hdp_lat, _hdp_lon, _hdp_exact."""
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("_hdp_cell", T.LongType(), False),
            T.StructField("_hdp_lat", T.DoubleType(), True),
            T.StructField("_hdp_lon", T.DoubleType(), True),
            T.StructField("_hdp_exact", T.BooleanType(), True),
        ]
    )
    rows = [
        (
            int(h["cell"]),
            None if h.get("lat") is None else float(h["lat"]),
            None if h.get("lon") is None else float(h["lon"]),
            bool(h.get("exact_point") or False),
        )
        for h in hdps
    ]
    return spark.createDataFrame(rows, schema)


def label(
    raw: Any,
    day: str,
    max_accuracy_m: float,
    hdp_min_devices: int,
    hdp_decimals: int | None,
    hdps: Any = None,
) -> Any:
    """``raw`` with ``reason`` (NULL for a clean row), as ``cleaning.clean_pings`` assigns it.

    ``hdps``: the learnt list (``hdp_frame``), None for none. (``clean_day`` runs the same
    steps with the row rules' result cached and the dense points computed once.)
    """
    rows = label_rows(raw, day, max_accuracy_m)
    dense = dense_points(rows, hdp_min_devices, hdp_decimals)
    return label_density(rows, dense, hdps, hdp_decimals)


def label_rows(raw: Any, day: str, max_accuracy_m: float) -> Any:
    """The row rules (``null_field`` ... ``low_accuracy``, one ``CASE``) and ``duplicate``
    (every row no row rule dropped after the first delivery of its device, ts, lat, lon): the
    window needs the rows of a device together, so a device-partitioned ``raw`` is not
    shuffled again."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    start = day_start_ns(day)
    end = start + NS_PER_DAY
    rules = (
        (
            "null_field",
            "device_id IS NULL OR device_id = '' OR ts_ns IS NULL OR lat IS NULL OR lon IS NULL",
        ),
        ("out_of_range", "abs(lat) > 90 OR abs(lon) > 180 OR accuracy_m < 0"),
        ("zero_zero", "lat = 0 AND lon = 0"),
        ("outside_day", f"ts_ns < {start} OR ts_ns >= {end}"),
        ("low_accuracy", f"accuracy_m > {float(max_accuracy_m)!r}D"),
    )
    case = " ".join(f"WHEN {cond} THEN '{reason}'" for reason, cond in rules)
    df = raw.withColumn("reason", F.expr(f"CASE {case} END"))

    arrival = ["_file", "_block", "_row"]
    alive = F.col("reason").isNull()
    key = [alive, F.col("device_id"), F.col("ts_ns"), F.expr("lat + 0.0D"), F.expr("lon + 0.0D")]
    first = Window.partitionBy(*key).orderBy(*arrival)
    repeat = F.when(alive, F.row_number().over(first) > 1)
    return df.withColumn("reason", F.when(repeat, F.lit("duplicate")).otherwise(F.col("reason")))


def dense_points(rows: Any, hdp_min_devices: int, hdp_decimals: int | None) -> Any:
    """Coordinates (rounded like ``numpy.round`` when ``hdp_decimals`` is set) of the rows
    still alive reported by at least ``hdp_min_devices`` distinct devices: ``_y``, ``_x``,
    ``_dense``."""
    from pyspark.sql import functions as F

    spot = rows.where(F.col("reason").isNull()).select(
        F.expr(rounded("lat", hdp_decimals)).alias("_y"),
        F.expr(rounded("lon", hdp_decimals)).alias("_x"),
        "device_id",
    )
    return (
        spot.groupBy("_y", "_x")
        .agg(F.countDistinct("device_id").alias("_devices"))
        .where(F.col("_devices") >= hdp_min_devices)
        .select("_y", "_x", F.lit(True).alias("_dense"))
    )


def label_density(rows: Any, dense: Any, hdps: Any = None, hdp_decimals: int | None = None) -> Any:
    """``high_density``: among the rows still alive, those on a ``dense`` point (broadcast)
    and those on a point of the learnt list ``hdps`` (``hdp_frame``; None for none): anywhere
    in the cell, or only on its exact coordinate for an ``exact_point`` entry."""
    from pyspark.sql import functions as F

    alive = F.col("reason").isNull()
    df = rows.withColumn("_y", F.expr(rounded("lat", hdp_decimals))).withColumn(
        "_x", F.expr(rounded("lon", hdp_decimals))
    )
    df = df.join(F.broadcast(dense), ["_y", "_x"], "left")
    dense_row = alive & F.coalesce(F.col("_dense"), F.lit(False))
    df = df.withColumn(
        "reason", F.when(dense_row, F.lit("high_density")).otherwise(F.col("reason"))
    ).drop("_y", "_x", "_dense")
    if hdps is None:
        return df
    # the learnt list: rows alive so far on a listed point (only their cells are computed: a
    # dirty row's coordinate may be infinite or huge, and its cell would overflow a long)
    df = df.withColumn("_cell", F.when(F.col("reason").isNull(), cell_code())).join(
        F.broadcast(hdps), F.col("_cell") == F.col("_hdp_cell"), "left"
    )
    exact_match = (F.col("lat") == F.col("_hdp_lat")) & (F.col("lon") == F.col("_hdp_lon"))
    listed = F.col("_hdp_cell").isNotNull() & (
        ~F.coalesce(F.col("_hdp_exact"), F.lit(False)) | F.coalesce(exact_match, F.lit(False))
    )
    listed_row = F.col("reason").isNull() & listed
    return df.withColumn(
        "reason", F.when(listed_row, F.lit("high_density")).otherwise(F.col("reason"))
    ).drop("_cell", "_hdp_cell", "_hdp_lat", "_hdp_lon", "_hdp_exact")


def output_columns(with_reason: bool) -> list[Any]:
    from pyspark.sql import functions as F

    micros = F.expr("timestamp_micros((ts_ns - pmod(ts_ns, 1000)) div 1000)")  # exact floor
    cols = [F.col("device_id"), micros.alias("ts"), "lat", "lon", "accuracy_m"]
    return [*cols, "reason"] if with_reason else cols


def write_sorted(df: Any, uri: str, files: int | None, with_reason: bool) -> None:
    """Each partition sorted by device, ts and arrival, one file each: ``df`` is range-
    partitioned by device (``clean_day``), so the files in name order are one sorted table.
    ``files``: merge the partitions into that many files first (no shuffle; each file still
    sorted, the files no longer in device order), None: one file per partition."""
    order = ["device_id", "ts_ns", "_file", "_block", "_row"]
    parts = df if files is None else df.coalesce(max(files, 1))
    (
        parts.sortWithinPartitions(*order)
        .select(*output_columns(with_reason))
        .write.mode("overwrite")
        .option("compression", "zstd")
        .parquet(uri)
    )
    if is_local(uri):
        clean_local_output(uri)


def preview(df: Any, n: int) -> list[dict[str, Any]]:
    """A few rows as JSON-ready dicts (timestamps as ISO strings)."""
    rows = []
    for row in df.limit(n).collect():
        item = row.asDict()
        if item.get("ts") is not None:
            item["ts"] = item["ts"].replace(tzinfo=UTC).isoformat()
        rows.append(item)
    return rows


def hdp_lists(args: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``{day: rows of its learnt HDP list}`` from the ``--hdps`` arguments (chunks in order)."""
    lists: dict[str, list[dict[str, Any]]] = {}
    for item in map(json.loads, args):
        lists.setdefault(item["day"], []).extend(item["rows"])
    return lists


def clean_day(
    spark: Any,
    spec: dict[str, Any],
    params: dict[str, Any],
    rows_per_file: int,
    hdps: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Label, write and count one day (``hdps``: its learnt list); returns its figures."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    started = time.perf_counter()
    if spec.get("rows"):  # the raw footers' rows: shuffles sized to the day
        sized_shuffle(spark, int(spec["rows"]))
    base = spec["raw"].rstrip("/")
    frames = [
        read_file(spark, f"{base}/{name}", kind, i) for i, (name, kind) in enumerate(spec["files"])
    ]
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame)
    # ONE shuffle of the day: range partitions by device (a file's worth of rows each). Every
    # later step needs rows of a device together (the duplicate window, per-device counts) or
    # in device order (the clean output), so none shuffles again.
    day_rows = int(spec.get("rows") or raw.count())
    parts = max(1, -(-day_rows // rows_per_file))
    raw = raw.repartitionByRange(parts, "device_id") if parts > 1 else raw.repartition(1)
    # the row rules and the duplicate window once (cached); the dense points once (a few
    # hundred coordinates, collected and broadcast): each output below re-reads the cache
    decimals = params.get("hdp_decimals")
    rows = label_rows(raw, spec["day"], float(params.get("max_accuracy_m", 1000.0)))
    # a large day's cache goes to local disk only and is streamed back: a MEMORY_AND_DISK
    # block spilled to disk is read back whole into the heap (a 50 M-ping day with 4 shuffle
    # partitions and a 2 GB driver died of it: java.lang.OutOfMemoryError in
    # BlockManager.maybeCacheDiskBytesInMemory)
    level = StorageLevel.DISK_ONLY if parts > 1 else StorageLevel.MEMORY_AND_DISK
    rows = rows.persist(level)
    dense = dense_points(rows, int(params.get("hdp_min_devices", 50)), decimals)
    dense = spark.createDataFrame(dense.collect(), dense.schema)
    labelled = label_density(rows, dense, hdp_frame(spark, hdps) if hdps else None, decimals)
    try:
        # rows per reason and devices in/out: per device, then in total (no distinct count)
        is_clean = F.col("reason").isNull()
        per_device = labelled.groupBy("device_id").agg(
            F.count(F.when(is_clean, 1)).alias("clean"),
            *(F.count(F.when(F.col("reason") == r, 1)).alias(r) for r in REASONS),
        )
        stats = per_device.agg(
            F.count("device_id").alias("devices_in"),  # "" is a device, NULL is not (pandas)
            F.count(F.when(F.col("clean") > 0, F.col("device_id"))).alias("devices_out"),
            F.sum("clean").alias("clean"),
            *(F.sum(r).alias(r) for r in REASONS),
        ).first()
        counts = {reason: int(stats[reason] or 0) for reason in REASONS}
        rows_out = int(stats["clean"] or 0)
        devices_in, devices_out = int(stats["devices_in"]), int(stats["devices_out"])
        rows_in = rows_out + sum(counts.values())
        clean = labelled.where(F.col("reason").isNull())
        dirty = labelled.where(F.col("reason").isNotNull())
        write_sorted(clean, spec["clean"], None if rows_out else 1, False)
        write_sorted(dirty, spec["quarantine"], -(-(rows_in - rows_out) // rows_per_file), True)
        first_rows = Window.partitionBy("reason").orderBy("device_id", "ts")
        sample = preview(
            spark.read.parquet(spec["quarantine"])
            .withColumn("_n", F.row_number().over(first_rows))
            .where(F.col("_n") <= 2)
            .drop("_n")
            .orderBy("reason", "device_id", "ts"),
            2 * len(REASONS),
        )
        figures = {
            "day": spec["day"],
            "files": len(spec["files"]),
            "rows_in": rows_in,
            "rows_out": rows_out,
            "devices_in": devices_in,
            "devices_out": devices_out,
            "counts": counts,
            "preview_clean": preview(spark.read.parquet(spec["clean"]), PREVIEW_ROWS),
            "preview_quarantine": sample,
            "seconds": round(time.perf_counter() - started, 3),
        }
    finally:
        rows.unpersist()
    return figures


def run(args: argparse.Namespace, log: Callable[[str], None], spark: Any = None) -> dict[str, Any]:
    """Clean every ``--day``; uses (and leaves running) ``spark`` if given."""
    started = time.perf_counter()
    params = json.loads(args.params)
    own_session = spark is None
    if own_session:
        spark = spark_session(args.master, json.loads(args.spark_conf))
    else:
        for key, value in BASE_CONF.items():
            spark.conf.set(key, value)
    session_s = time.perf_counter() - started
    days = {}
    lists = hdp_lists(args.hdps)
    for spec in map(json.loads, args.day):
        hdps = lists.get(spec["day"], [])
        figures = clean_day(spark, spec, params, args.rows_per_file, hdps)
        days[spec["day"]] = figures
        log(
            f"clean_pings {spec['day']}: {figures['rows_in']} rows in, {figures['rows_out']} "
            f"clean, dropped {figures['counts']}, {figures['seconds']:.1f} s"
        )
    summary = {
        "days": days,
        "seconds": round(time.perf_counter() - started, 3),
        "session_start_s": round(session_s, 3),
        "spark_version": spark.version,
        "master": spark.sparkContext.master,
    }
    if own_session:
        spark.stop()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return pipes_main(
        parse_args, run, argv, brief=lambda s: {k: v for k, v in s.items() if k != "days"}
    )


if __name__ == "__main__":
    sys.exit(main())
