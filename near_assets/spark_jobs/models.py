"""The Spark engine of Near's models: visit history, high-density points, cross identity.

    models.py --task history|hdp|identity --spec '<JSON>'

One script, three tasks, each the same science as the in-process engine
(``near_assets.science.history`` / ``hdp`` / ``identity``):

- ``history`` (Spark SQL): each day of the run in order, ``history(D) = history(D-1) + visits(D)
  - visits(D-7, D-30, D-90)`` as one full outer join of the previous snapshot with the day's
  signed per-pair totals (today's visits in every window, the leaving days' negated in theirs);
  a day without a previous snapshot is rebuilt from its trailing 90 days of visits. The
  snapshot of a day feeds the next one inside the job (checkpointed). Every day is written as
  one stamped object into the run's staging folder with its audit figures
  (``apply_by_device.stage_days``): the run process publishes it unread.
- ``hdp`` (Spark SQL): the day's raw pings cleaned of every other dirt by the rules of
  ``clean_pings.py`` (``label`` without the fixed high-density rule), snapped to cells; devices
  per cell, the local density over the ``(2 ring + 1)^2 - 1`` cells around, the modal accuracy
  and the dominant exact point per dense cell, the flags. Spark writes the day's cells
  (``work/hdp_cells/date=D``); the list of the window (``hdp.maintain_list``, tens of rows) is
  computed on the driver and returned with the share of the day's pings it removes.
- ``identity``: stays projected and cut into hour slots per batch (``identity.prepare_stays``),
  the (cell x hour) candidate join and the crowd filter in Spark SQL, the co-location of each
  candidate stay pair per batch (``identity.pair_colocations``), the per-device-pair evidence
  (evenings, median distance, days elsewhere) in Spark SQL; the edge list (small) is scored,
  split and cut into components on the driver (``finish_edges``, ``split_large``,
  ``identity_graph``) and joined back to every device of the window in Spark, which writes
  each day's stamped object with its audit figures.

Figures go back through ``report_custom_message``. Job scripts import ``dagster_pipes`` only,
never ``dagster``: this one ships to EMR in the ``--py-files`` zip with the package.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from typing import Any

import pandas as pd

from near_assets.science import hdp, history, identity
from near_assets.spark_jobs._pipes_main import load_spec, pipes_main
from near_assets.spark_jobs.apply_by_device import (
    arrow_dataset,
    run_in_session,
    stage_days,
    to_utc,
)
from near_assets.spark_jobs.clean_pings import cell_code, label, read_file
from near_assets.spark_jobs.profiles import read, write

TASKS = ("history", "hdp", "identity")
DAY = "__out_day"
"""The output day of a row when the days are staged together."""
NO_HDP_RULE = 10**9
"""No fixed 50-device rule: the evidence of the learnt list (``models.high_density_points``)."""
VISIT_COLUMNS = ["device_id", "poi_id", "start_ts", "end_ts", "dwell_s", "brand"]
STAY_COLUMNS = ["device_id", "start_ts", "end_ts", "lat", "lon"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--spec", required=True, help="JSON: the task's inputs, outputs, params")
    parser.add_argument("--master", default=None, help="Spark master (spark-submit sets it)")
    parser.add_argument("--spark-conf", default="{}", help="JSON Spark settings for the session")
    args, _ = parser.parse_known_args(argv)  # the --dagster-pipes-* arguments are read by pipes
    return args


def ts_literal(day: str, days: int = 0) -> str:
    """``TIMESTAMP '<day + days> 00:00:00'`` (the session time zone is UTC)."""
    return f"TIMESTAMP '{(date.fromisoformat(day) + timedelta(days=days)).isoformat()} 00:00:00'"


def union_all(frames: Sequence[Any]) -> Any:
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


# ---- visit history ------------------------------------------------------------------------------

VISITS_DDL = (
    "device_id string, poi_id string, start_ts timestamp, end_ts timestamp, dwell_s double, "
    "brand string"
)
HISTORY_DDL = (
    "device_id string, poi_id string, brand string, first_seen timestamp, last_seen timestamp, "
    "visits_total bigint, dwell_total_s double, visits_7d bigint, dwell_7d_s double, "
    "visits_30d bigint, dwell_30d_s double, visits_90d bigint, dwell_90d_s double"
)
"""``visit_history``'s columns (``history.HISTORY_COLUMNS``) as Spark types."""
MEASURES = ["total", *(f"{w}d" for w in history.WINDOWS)]


def visits_frame(spark: Any, uris: Sequence[str]) -> Any:
    """The visits of ``uris`` typed (NaN dwell as NULL: pandas sums skip it), or none."""
    if not uris:
        return spark.createDataFrame([], VISITS_DDL)
    return read(spark, uris, VISIT_COLUMNS).selectExpr(
        "CAST(device_id AS STRING) AS device_id",
        "CAST(poi_id AS STRING) AS poi_id",
        "start_ts",
        "end_ts",
        "CASE WHEN isnan(CAST(dwell_s AS DOUBLE)) THEN NULL ELSE CAST(dwell_s AS DOUBLE) END "
        "AS dwell_s",
        "CAST(brand AS STRING) AS brand",
    )


def measure_columns() -> list[str]:
    """Visits and dwell columns of every measure (total, 7d, 30d, 90d)."""
    return [c for m in MEASURES for c in (f"visits_{m}", f"dwell_{m}_s")]


def signed_totals(visits: Any, signs: dict[str, int], carry_seen: bool) -> Any:
    """One day's visits summed per pair as signed delta columns (``history._signed``), with the
    day's first/last seen and brand when ``carry_seen`` (today's visits)."""
    from pyspark.sql import functions as F

    totals = visits.groupBy("device_id", "poi_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.coalesce(F.sum("dwell_s"), F.lit(0.0)).alias("d"),
        F.min("start_ts").alias("t_first"),
        F.max("end_ts").alias("t_last"),
        F.first("brand", ignorenulls=True).alias("t_brand"),
    )
    cols = [F.col("device_id"), F.col("poi_id")]
    for m in MEASURES:
        s = signs.get(m, 0)
        cols.append((F.col("n") * F.lit(s)).cast("bigint").alias(f"visits_{m}"))
        cols.append((F.col("d") * F.lit(float(s))).alias(f"dwell_{m}_s"))
    if carry_seen:
        cols += [F.col("t_first"), F.col("t_last"), F.col("t_brand")]
    else:
        cols += [
            F.lit(None).cast("timestamp").alias("t_first"),
            F.lit(None).cast("timestamp").alias("t_last"),
            F.lit(None).cast("string").alias("t_brand"),
        ]
    return totals.select(*cols)


def history_columns(frame: str, cutoff: str) -> str:
    """The final SELECT over ``frame`` (visits and dwell measures as is): dwell >= 0 rounded to
    milliseconds, the retention cut."""
    measures = []
    for m in MEASURES:
        dwell = f"dwell_{m}_s"
        measures += [
            f"CAST(visits_{m} AS BIGINT) AS visits_{m}",
            f"round(greatest({dwell}, 0D), 3) AS {dwell}",
        ]
    return (
        f"SELECT {', '.join(history.HISTORY_COLUMNS)} FROM (SELECT device_id, poi_id, brand, first_seen, "
        f"last_seen, {', '.join(measures)} FROM {frame}) WHERE last_seen >= {cutoff}"
    )


def update_sql(day: str, retention_days: int) -> str:
    """``history.update_history`` over the views ``prev`` and ``delta`` (signed totals)."""
    sums = []
    for m in MEASURES:
        sums.append(f"coalesce(p.visits_{m}, 0L) + coalesce(d.visits_{m}, 0L) AS visits_{m}")
        sums.append(f"coalesce(p.dwell_{m}_s, 0D) + coalesce(d.dwell_{m}_s, 0D) AS dwell_{m}_s")
    cutoff = ts_literal(day, -(retention_days - 1))
    merged = f"""
        SELECT coalesce(p.device_id, d.device_id) AS device_id,
               coalesce(p.poi_id, d.poi_id) AS poi_id,
               CASE WHEN p.device_id IS NULL THEN d.t_brand
                    ELSE coalesce(d.t_brand, p.brand) END AS brand,
               CASE WHEN p.device_id IS NULL THEN d.t_first
                    WHEN d.t_first IS NULL THEN p.first_seen
                    ELSE least(p.first_seen, d.t_first) END AS first_seen,
               CASE WHEN p.device_id IS NULL THEN d.t_last
                    WHEN d.t_last IS NULL THEN p.last_seen
                    ELSE greatest(p.last_seen, d.t_last) END AS last_seen,
               {", ".join(sums)}
        FROM prev p FULL OUTER JOIN delta d
          ON p.device_id = d.device_id AND p.poi_id = d.poi_id
        WHERE p.device_id IS NOT NULL OR d.t_first IS NOT NULL
    """
    return history_columns(f"({merged})", cutoff)


def rebuild_sql(day: str, retention_days: int) -> str:
    """``history.history_from_visits`` over the view ``window_visits``."""
    end = ts_literal(day, 1)
    measures = ["count(*) AS visits_total", "coalesce(sum(dwell_s), 0D) AS dwell_total_s"]
    for w in history.WINDOWS:
        inside = f"start_ts >= {ts_literal(day, 1 - w)}"
        measures += [
            f"count(CASE WHEN {inside} THEN 1 END) AS visits_{w}d",
            f"coalesce(sum(CASE WHEN {inside} THEN dwell_s END), 0D) AS dwell_{w}d_s",
        ]
    grouped = f"""
        SELECT device_id, poi_id, first(brand, true) AS brand, min(start_ts) AS first_seen,
               max(end_ts) AS last_seen, {", ".join(measures)}
        FROM window_visits WHERE start_ts < {end} GROUP BY device_id, poi_id
    """
    return history_columns(f"({grouped})", ts_literal(day, -(retention_days - 1)))


def run_history(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Every day of ``spec["days"]`` in order (see the module doc); stages them all."""
    from pyspark.sql import functions as F

    retention = int(spec["params"]["retention_days"])
    previous = None
    days, snapshots = {}, []
    for item in spec["days"]:
        started = time.perf_counter()
        day = item["day"]
        today = visits_frame(spark, [item["today"]])
        figures: dict[str, Any] = {"mode": item["mode"]}
        if item["mode"] == "incremental":
            if item.get("previous"):
                previous = read(spark, [item["previous"]], history.HISTORY_COLUMNS)
            if previous is None:
                raise ValueError(f"{day}: incremental without a previous snapshot")
            previous.createOrReplaceTempView("prev")
            parts = [signed_totals(today, dict.fromkeys(MEASURES, 1), True)]
            leaving_rows = 0
            for w, uri in item.get("leaving", {}).items():
                leaving = visits_frame(spark, [uri])
                leaving_rows += leaving.count()
                parts.append(signed_totals(leaving, {f"{w}d": -1}, False))
            delta = (
                union_all(parts)
                .groupBy("device_id", "poi_id")
                .agg(
                    *(F.sum(c).alias(c) for c in measure_columns()),
                    F.min("t_first").alias("t_first"),
                    F.max("t_last").alias("t_last"),
                    F.first("t_brand", ignorenulls=True).alias("t_brand"),
                )
            )
            delta.createOrReplaceTempView("delta")
            figures["previous_pairs"] = int(previous.count())
            figures["visits_leaving"] = int(leaving_rows)
            snapshot = spark.sql(update_sql(day, retention))
        else:
            visits_frame(spark, item["visits"]).createOrReplaceTempView("window_visits")
            figures["rebuild_days_found"] = len(item["visits"])
            snapshot = spark.sql(rebuild_sql(day, retention))
        snapshot = snapshot.localCheckpoint(eager=True)  # the next day's input: cut the lineage
        stats = snapshot.agg(
            F.count(F.lit(1)).alias("pairs"),
            F.countDistinct("device_id").alias("devices"),
            F.countDistinct("poi_id").alias("pois"),
            F.count(F.when(F.col("visits_7d") > 0, 1)).alias("pairs_active_7d"),
            F.count(F.when(F.col("visits_30d") > 0, 1)).alias("pairs_active_30d"),
        ).first()
        figures |= {k: int(stats[k]) for k in stats.asDict()}
        figures["visits_today"] = int(today.count())
        figures["update_s"] = round(time.perf_counter() - started, 4)
        days[day] = figures
        snapshots.append(snapshot.withColumn(DAY, F.lit(day)))
        previous = snapshot
    for day, result in stage_days(union_all(snapshots), spec["stage"]).items():
        days[day]["staged"] = result
    return {"days": days}


# ---- high-density points ------------------------------------------------------------------------


def clean_day_pings(spark: Any, item: dict[str, Any], max_accuracy_m: float) -> Any:
    """The day's raw pings without every other kind of dirt (``clean_pings.label``): device_id,
    lat, lon, accuracy_m (NULL for a missing one)."""
    from pyspark.sql import functions as F

    base = item["raw"].rstrip("/")
    raw = union_all(
        [
            read_file(spark, f"{base}/{name}", kind, i)
            for i, (name, kind) in enumerate(item["files"])
        ]
    )
    labelled = label(raw, item["day"], max_accuracy_m, NO_HDP_RULE, None)
    return labelled.where(F.col("reason").isNull()).select("device_id", "lat", "lon", "accuracy_m")


def day_cells(spark: Any, pings: Any, params: hdp.HdpParams) -> Any:
    """``hdp.day_cells`` in Spark SQL over the clean pings (``CELL_COLUMNS``, one row per dense
    cell)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = pings.withColumn("cell", cell_code(cell_deg=params.cell_deg)).withColumn(
        "acc", F.coalesce(F.col("accuracy_m"), F.lit(-1.0))
    )
    per_cell = rows.groupBy("cell").agg(F.countDistinct("device_id").alias("devices"))
    dense = per_cell.where(F.col("devices") >= params.min_devices)
    r = params.ring
    offsets = spark.createDataFrame(
        [
            (dy * hdp.LAT_SPAN + dx,)
            for dy in range(-r, r + 1)
            for dx in range(-r, r + 1)
            if dy or dx
        ],
        "offset long",
    )
    neighbours = per_cell.select(F.col("cell").alias("nb"), F.col("devices").alias("nd"))
    around = (
        dense.select("cell")
        .crossJoin(F.broadcast(offsets))
        .withColumn("nb", F.col("cell") + F.col("offset"))
        .join(neighbours, "nb", "left")
        .groupBy("cell")
        .agg(F.sum(F.coalesce(F.col("nd"), F.lit(0))).cast("double").alias("around"))
    )
    inside = rows.join(dense.select("cell"), "cell", "left_semi")
    by_acc = inside.groupBy("cell", "acc").agg(F.countDistinct("device_id").alias("acc_devices"))
    first = Window.partitionBy("cell").orderBy(F.col("acc_devices").desc(), F.col("acc"))
    mode = by_acc.withColumn("_n", F.row_number().over(first)).where("_n = 1").drop("_n")
    patterned = inside.join(mode.select("cell", F.col("acc").alias("mode_acc")), "cell").where(
        F.col("acc") == F.col("mode_acc")
    )
    by_point = patterned.groupBy("cell", "lat", "lon").agg(
        F.countDistinct("device_id").alias("point_devices")
    )
    first_point = Window.partitionBy("cell").orderBy(
        F.col("point_devices").desc(), F.col("lat"), F.col("lon")
    )
    point = by_point.withColumn("_n", F.row_number().over(first_point)).where("_n = 1").drop("_n")
    pings_per_cell = inside.groupBy("cell").agg(F.count(F.lit(1)).alias("pings"))
    cells = (
        dense.join(around, "cell")
        .join(mode.select("cell", "acc_devices"), "cell")
        .join(point, "cell")
        .join(pings_per_cell, "cell")
    )
    n_around = float((2 * r + 1) ** 2 - 1)
    local = F.col("around") / F.lit(n_around)
    devices = F.col("devices").cast("double")
    concentration = devices / (local + F.lit(1.0))
    acc_devices = F.col("acc_devices")
    flagged = (
        (acc_devices >= F.lit(params.min_devices))
        & (acc_devices.cast("double") >= F.lit(params.min_acc_ratio) * (local + F.lit(1.0)))
    ) | ((F.col("devices") >= F.lit(params.strong_devices)) & (concentration >= params.min_ratio))
    return cells.select(
        F.col("cell").cast("long").alias("cell"),
        F.col("lat").cast("double").alias("lat"),
        F.col("lon").cast("double").alias("lon"),
        F.col("devices").cast("long").alias("devices"),
        F.col("pings").cast("long").alias("pings"),
        F.col("point_devices").cast("long").alias("point_devices"),
        local.alias("local_density"),
        concentration.alias("concentration"),
        (acc_devices.cast("double") / devices).alias("accuracy_share"),
        acc_devices.cast("long").alias("accuracy_devices"),
        flagged.alias("flagged"),
    ).orderBy("cell")


def removed_share(pings: Any, listed: pd.DataFrame, n_pings: int) -> float:
    """Share of ``pings`` a list removes (``hdp.on_hdp``: exact point or whole cell)."""
    from pyspark.sql import functions as F

    if n_pings == 0:
        return float("nan")
    if listed.empty:
        return 0.0
    spark = pings.sparkSession
    entries = spark.createDataFrame(
        [
            (int(c), float(la), float(lo), bool(x))
            for c, la, lo, x in listed[["cell", "lat", "lon", "exact_point"]].itertuples(
                index=False
            )
        ],
        "_cell long, _lat double, _lon double, _exact boolean",
    )
    on = (
        pings.withColumn("_c", cell_code())
        .join(F.broadcast(entries), F.col("_c") == F.col("_cell"))
        .where(
            ~F.col("_exact") | ((F.col("lat") == F.col("_lat")) & (F.col("lon") == F.col("_lon")))
        )
        .count()
    )
    return on / n_pings


def list_records(listed: pd.DataFrame) -> list[dict[str, Any]]:
    """The list as JSON rows (Python floats round-trip exactly)."""
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in listed.to_dict(orient="records")
    ]


def run_hdp(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Each day: cells (written by Spark), the window's list (driver), the share it removes."""
    from pyspark import StorageLevel

    params = hdp.HdpParams(**spec["params"])
    max_accuracy_m = float(spec.get("max_accuracy_m", 1000.0))
    computed: dict[str, pd.DataFrame] = {}
    days = {}
    for item in spec["days"]:
        started = time.perf_counter()
        day = item["day"]
        pings = clean_day_pings(spark, item, max_accuracy_m).persist(StorageLevel.MEMORY_AND_DISK)
        n_pings = pings.count()
        cells_df = day_cells(spark, pings, params)
        write(cells_df, item["cells"], files=1)
        cells = spark.read.parquet(item["cells"]).toPandas()
        if cells.empty:
            cells = hdp.empty_cells()
        computed[day] = cells
        earlier = {}
        for d in item["window"][:-1]:
            if d in computed:
                earlier[d] = computed[d]
            elif d in item.get("earlier", {}):
                earlier[d] = arrow_dataset(item["earlier"][d]).to_table().to_pandas()
        all_cells = pd.concat(
            [*(c.assign(date=d) for d, c in earlier.items()), cells.assign(date=day)],
            ignore_index=True,
        )
        listed = hdp.maintain_list(all_cells, day, params)
        share = removed_share(pings, listed, n_pings)
        pings.unpersist()
        days[day] = {
            "window_days_found": len(earlier) + 1,
            "pings": int(n_pings),
            "removed_share": share,
            "dense_cells_today": len(cells),
            "flagged_today": int(cells["flagged"].sum()) if len(cells) else 0,
            "listed": list_records(listed),
            "seconds_science": round(time.perf_counter() - started, 3),
        }
    return {"days": days}


# ---- cross identity -----------------------------------------------------------------------------

PREPARED_DDL = (
    "stay long, dev string, x double, y double, start long, end long, start_h long, n_h long, "
    "night_s long"
)
HOMES_XY_DDL = "device_id string, hx double, hy double"
COLOCATION_DDL = (
    "device_a string, device_b string, dist_m double, overlap_s long, night long, "
    "home_evening long, at_home boolean, day_elsewhere long"
)
GRAPH_DDL = (
    "device_id string, person_id string, household_id string, confidence double, "
    "devices_in_person bigint"
)


def identity_params(values: dict[str, Any]) -> identity.IdentityParams:
    tuples = {"night_hours", "day_hours", "split_scores"}
    return identity.IdentityParams(**{k: tuple(v) if k in tuples else v for k, v in values.items()})


def prepared_stays(stays: Any, lat0: float, lon0: float, tz: str, p: identity.IdentityParams):
    """``identity.prepare_stays`` per batch, keyed by ``stay``."""

    def prepare(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            batch = to_utc(batch)
            out = identity.prepare_stays(batch, lat0, lon0, tz, p)
            out.insert(0, "stay", batch["stay"].to_numpy())
            yield out

    return stays.mapInPandas(prepare, schema=PREPARED_DDL)


def homes_xy(homes: Any, lat0: float, lon0: float) -> Any:
    def project(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield identity.home_xy(batch, lat0, lon0)

    return homes.mapInPandas(project, schema=HOMES_XY_DDL)


def candidate_pairs(prep: Any, p: identity.IdentityParams) -> Any:
    """``identity.stay_pairs`` in Spark SQL: distinct (stay_a, stay_b), dev_a < dev_b."""
    from pyspark.sql import functions as F

    slots = (
        prep.select("stay", "dev", "x", "y", "start_h", "n_h")
        .withColumn("k", F.explode(F.sequence(F.lit(0).cast("long"), F.col("n_h") - 1)))
        .withColumn("hour", F.col("start_h") + F.col("k"))
        .withColumn("gx", F.col("x") / F.lit(float(p.cell_m)))
        .withColumn("gy", F.col("y") / F.lit(float(p.cell_m)))
        .withColumn("cx", F.floor("gx").cast("long"))
        .withColumn("cy", F.floor("gy").cast("long"))
    )
    crowd = (
        slots.groupBy("hour", "cx", "cy")
        .agg(F.countDistinct("dev").alias("n"))
        .where(F.col("n") <= p.max_group)
        .select("hour", "cx", "cy")
    )
    own = slots.join(crowd, ["hour", "cx", "cy"], "left_semi").select(
        F.col("stay").alias("stay_a"), F.col("dev").alias("dev_a"), "hour", "cx", "cy"
    )
    sx = F.when(F.col("gx") - F.col("cx").cast("double") >= 0.5, 1).otherwise(-1)
    sy = F.when(F.col("gy") - F.col("cy").cast("double") >= 0.5, 1).otherwise(-1)
    probes = union_all(
        [
            slots.select(
                F.col("stay").alias("stay_b"),
                F.col("dev").alias("dev_b"),
                "hour",
                (F.col("cx") + F.lit(ox) * sx).cast("long").alias("cx"),
                (F.col("cy") + F.lit(oy) * sy).cast("long").alias("cy"),
            )
            for ox in (0, 1)
            for oy in (0, 1)
        ]
    )
    return (
        own.join(probes, ["hour", "cx", "cy"])
        .where(F.col("dev_a") < F.col("dev_b"))
        .select("stay_a", "stay_b")
        .distinct()
    )


def colocations(pairs: Any, prep: Any, hxy: Any, p: identity.IdentityParams) -> Any:
    """``identity.pair_colocations`` per batch of candidate pairs with both stays and homes."""
    from pyspark.sql import functions as F

    def side(s: str) -> Any:
        return prep.select(
            F.col("stay").alias(f"stay_{s}"),
            F.col("dev").alias(f"dev_{s}"),
            F.col("x").alias(f"x{s}"),
            F.col("y").alias(f"y{s}"),
            F.col("start").alias(f"start_{s}"),
            F.col("end").alias(f"end_{s}"),
        )

    def home(s: str) -> Any:
        return hxy.select(
            F.col("device_id").alias(f"dev_{s}"),
            F.col("hx").alias(f"hx{s}"),
            F.col("hy").alias(f"hy{s}"),
        )

    full = (
        pairs.join(side("a"), "stay_a")
        .join(side("b"), "stay_b")
        .join(home("a"), "dev_a", "left")
        .join(home("b"), "dev_b", "left")
        .select(*identity.PAIR_COLUMNS)
    )

    def colocate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield identity.pair_colocations(batch, p)[identity.COLOCATION_COLUMNS]

    return full.mapInPandas(colocate, schema=COLOCATION_DDL)


def evidence(co: Any, homes: Any) -> pd.DataFrame:
    """``identity.pair_evidence`` in Spark SQL, with both devices' homes (for ``finish_edges``),
    collected: one row per device pair with an evening together."""
    from pyspark.sql import functions as F

    evening = F.col("home_evening") >= 0
    e = (
        co.groupBy("device_a", "device_b")
        .agg(
            F.countDistinct(F.when(evening, F.col("home_evening"))).alias("nights"),
            F.percentile(F.when(evening, F.col("dist_m")), F.lit(0.5)).alias("night_dist_m"),
            F.max(F.when(evening, F.col("at_home"))).alias("at_home"),
            F.countDistinct(F.when(F.col("day_elsewhere") >= 0, F.col("day_elsewhere"))).alias(
                "days_elsewhere"
            ),
        )
        .where(F.col("nights") > 0)
    )
    for s in ("a", "b"):
        h = homes.select(
            F.col("device_id").alias(f"device_{s}"),
            F.col("lat").alias(f"h{s}_lat"),
            F.col("lon").alias(f"h{s}_lon"),
        )
        e = e.join(h, f"device_{s}", "left")
    return e.toPandas()


def truth_accuracy(graph: Any, truth: Any) -> dict[str, Any]:
    """``identity.pairwise_accuracy`` of households and people: the graph joined to the truth is
    collected (one row per device) and scored by the same function."""
    from pyspark.sql import functions as F

    joined = graph.select("device_id", "person_id", "household_id").join(
        truth.select(
            "device_id",
            F.col("person_id").alias("t_person_id"),
            F.col("household_id").alias("t_household_id"),
        ),
        "device_id",
        "left",
    )
    g = joined.toPandas()
    t = g[["device_id"]].assign(person_id=g["t_person_id"], household_id=g["t_household_id"])
    t = t.dropna()
    out: dict[str, Any] = {}
    for level in ("household_id", "person_id"):
        acc = identity.pairwise_accuracy(g[["device_id", "person_id", "household_id"]], t, level)
        name = level.removesuffix("_id")
        out[f"truth_{name}_precision"] = acc["precision"]
        out[f"truth_{name}_recall"] = acc["recall"]
    return out


def run_identity(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Each day: the graph of its window's stays (see the module doc); stages every day."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = identity_params(spec["params"])
    tz = spec["timezone"]
    truth = None
    if spec.get("truth"):
        truth = read(spark, [spec["truth"]], ["device_id", "person_id", "household_id"]).selectExpr(
            *(f"CAST({c} AS STRING) AS {c}" for c in ("device_id", "person_id", "household_id"))
        )
    days, graphs, cached = {}, [], []
    for item in spec["days"]:
        started = time.perf_counter()
        day = item["day"]
        stays = (
            read(spark, item["stays"], STAY_COLUMNS)
            .withColumn("device_id", F.col("device_id").cast("string"))
            .withColumn("stay", F.monotonically_increasing_id())
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        cached.append(stays)
        n_stays = stays.count()
        lat0, lon0 = stays.agg(
            F.percentile("lat", F.lit(0.5)), F.percentile("lon", F.lit(0.5))
        ).first()
        prep = prepared_stays(stays, float(lat0), float(lon0), tz, p).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        cached.append(prep)
        night = (
            prep.where(F.col("night_s") >= identity.HOUR_S)
            .select("stay")
            .join(stays, "stay")
            .groupBy("device_id")
            .agg(
                F.percentile("lat", F.lit(0.5)).alias("lat"),
                F.percentile("lon", F.lit(0.5)).alias("lon"),
            )
        )
        if item.get("homes"):
            given = read(spark, [item["homes"]], ["device_id", "lat", "lon"]).selectExpr(
                "CAST(device_id AS STRING) AS device_id", "lat", "lon"
            )
            homes = given.unionByName(night.join(given, "device_id", "left_anti"))
        else:
            homes = night
        homes = homes.persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(homes)
        co = colocations(candidate_pairs(prep, p), prep, homes_xy(homes, lat0, lon0), p)
        e = evidence(co, homes)
        for c in ("ha_lat", "ha_lon", "hb_lat", "hb_lon", "night_dist_m"):
            e[c] = e[c].astype(float)
        edges = (
            identity.finish_edges(e, p) if len(e) else pd.DataFrame(columns=identity.EDGE_COLUMNS)
        )
        linked_devices = pd.unique(edges[["device_a", "device_b"]].to_numpy().ravel())
        edges = identity.split_large(linked_devices, edges, p)
        linked = identity.identity_graph(linked_devices, edges)
        linked_df = (
            spark.createDataFrame(
                linked.astype({c: object for c in ("device_id", "person_id", "household_id")}),
                GRAPH_DDL,
            )
            if len(linked)
            else spark.createDataFrame([], GRAPH_DDL)
        )
        link = linked_df.select(
            "device_id",
            F.col("person_id").alias("_p"),
            F.col("household_id").alias("_h"),
            F.col("confidence").alias("_c"),
            F.col("devices_in_person").alias("_n"),
        )
        graph = (
            stays.select("device_id")
            .distinct()
            .join(F.broadcast(link), "device_id", "left")
            .select(
                "device_id",
                F.coalesce("_p", "device_id").alias("person_id"),
                F.coalesce("_h", "device_id").alias("household_id"),
                F.coalesce("_c", F.lit(0.0)).alias("confidence"),
                F.coalesce("_n", F.lit(1)).cast("bigint").alias("devices_in_person"),
            )
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        cached.append(graph)
        stats = graph.agg(
            F.count(F.lit(1)).alias("devices"),
            F.count(F.when(F.col("confidence") > 0, 1)).alias("devices_linked"),
            F.countDistinct("person_id").alias("people"),
            F.countDistinct("household_id").alias("households"),
        ).first()
        largest = graph.groupBy("household_id").count().agg(F.max("count")).first()[0]
        figures: dict[str, Any] = {
            "window_days_found": len(item["stays"]),
            "stays": int(n_stays),
            "seconds_science": round(time.perf_counter() - started, 3),
            **{k: int(stats[k]) for k in stats.asDict()},
            "edges_person": int((edges["kind"] == "person").sum()),
            "edges_household": int((edges["kind"] == "household").sum()),
            "largest_household": int(largest or 0),
        }
        if truth is not None:
            figures.update(truth_accuracy(graph, truth))
        days[day] = figures
        # cross-row facts the audits' SQL reads (not written: the stage keeps the schema's)
        persons = Window.partitionBy("person_id")
        households = Window.partitionBy("household_id")
        graphs.append(
            graph.withColumn(
                "__person_households", F.size(F.collect_set("household_id").over(persons))
            )
            .withColumn("__household_size", F.count(F.lit(1)).over(households))
            .withColumn(DAY, F.lit(day))
        )
    for day, result in stage_days(union_all(graphs), spec["stage"]).items():
        days[day]["staged"] = result
    for df in cached:
        df.unpersist()
    return {"days": days}


# ---- entry point --------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "history": run_history,
    "hdp": run_hdp,
    "identity": run_identity,
}


def run(args: argparse.Namespace, log: Callable[[str], None], spark: Any = None) -> dict[str, Any]:
    """Run ``--task``; uses (and leaves running) ``spark`` if given."""
    return run_in_session(
        args,
        log,
        spark,
        f"models {args.task}",
        lambda spark: {**RUNNERS[args.task](spark, load_spec(spark, args.spec)), "task": args.task},
    )


def main(argv: Sequence[str] | None = None) -> int:
    return pipes_main(parse_args, run, argv, brief=lambda s: {k: s[k] for k in ("task", "seconds")})


if __name__ == "__main__":
    sys.exit(main())
