"""The Spark engine of demographics, brand affinity, campaign and aggregate insights (dagster-pipes).

    profiles.py --task demographics|affinity|campaign|insights --spec '<JSON>'

One script, four tasks, each the same science as the in-process engine:

- ``demographics`` (per day): each home's area by point-in-polygon, per bucket of homes with the
  same pandas function (``device_demographics``, areas as a side table read once per worker);
  the output's columns follow the areas' attributes (the schema is built from the side table).
  Coverage per area is ``coverage_from_counts`` of the per-area device counts (one row per area).
- ``affinity`` (per output day): Spark SQL over the trailing window of visits: per (device,
  brand) visits, dwell sum and median, the population's brand shares and brand median dwell
  (the population-wide pass), then the score of ``near_assets.science.affinity``. With
  ``"dwell": "mean"`` the mean-dwell variant over per (device, POI) pairs, which a day with a
  ``history`` (its ``visit_history`` partition) reads from there instead of the window; with
  ``"count": "people"`` per (person, POI) only the device with the most visits counts and the
  person's id (the day's ``graph``) replaces the device's. With a
  ``stage`` spec each day is one stamped object in the run's staging folder, written with its
  audit figures by ``apply_by_device.stage_days`` (the run process publishes it unread); the
  (device, brand) repeats and non-finite scores are counted here.
- ``campaign``: the matched-control panel in Spark SQL (exposed devices up to ``as_of``, home
  areas by point-in-polygon, pre-period and window visit counts, from the daily visits or, with
  ``history``, as differences of two ``visit_history`` snapshots each, pre-visit bins), written
  compressed (``compress_panel``: one row per stratum x exposure x counts with ``devices``) for
  ``matched_lift`` in the run process.
- ``insights``: visitors per device (written by Spark), and the small aggregates (dwell bins and
  quantiles, home-area mix, visitors' brand affinity) reported through Pipes.

Every output folder is replaced; the figures go back through ``report_custom_message``. Job
scripts import ``dagster_pipes`` only, never ``dagster``: this one ships to EMR.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd

from near_assets.science.campaigns import PRE_BINS, PRE_LABELS
from near_assets.science.demographics import (
    coverage_from_counts,
    device_demographics,
    home_areas,
)
from near_assets.science.insights import DWELL_EDGES_S, DWELL_QUANTILES, people_factors
from near_assets.spark_jobs._pipes_main import pipes_main
from near_assets.spark_jobs.apply_by_device import (
    clean_local_output,
    is_local,
    nanosecond_columns,
    run_in_session,
    side_table,
)

TASKS = ("demographics", "affinity", "campaign", "insights")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--spec", required=True, help="JSON: the task's inputs, outputs, params")
    parser.add_argument("--master", default=None, help="Spark master (spark-submit sets it)")
    parser.add_argument("--spark-conf", default="{}", help="JSON Spark settings for the session")
    args, _ = parser.parse_known_args(argv)  # the --dagster-pipes-* arguments are read by pipes
    return args


def write(df: Any, uri: str, files: int = 0) -> None:
    """Replace the folder ``uri`` with ``df`` (``files`` > 0: that many files)."""
    out = df.coalesce(files) if files else df
    out.write.mode("overwrite").option("compression", "zstd").parquet(uri)
    if is_local(uri):
        clean_local_output(uri)


def spark_type(dtype: Any) -> str:
    """Spark DDL type of a pandas dtype (side tables' attribute columns)."""
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double"
    return "string"


def demographics_ddl(areas: pd.DataFrame) -> str:
    """The schema of ``device_demographics``' output for these areas."""
    cols = ["device_id string", "confidence double"]
    cols += [f"`{c}` {spark_type(areas[c].dtype)}" for c in areas.columns if c != "geometry_wkt"]
    return ", ".join(cols)


def read(spark: Any, uris: Sequence[str], columns: Sequence[str]) -> Any:
    """The union of the Parquet inputs, only ``columns``, ``TIMESTAMP(NANOS)`` columns as
    timestamps (as ``apply_by_device.read_inputs``). Inputs whose timestamp encodings agree are
    read in one scan (one task per file split, not per day folder)."""
    from pyspark.sql import functions as F

    groups: dict[frozenset[str], list[str]] = {}
    for uri in uris:
        groups.setdefault(frozenset(nanosecond_columns(uri) & set(columns)), []).append(uri)
    frames = []
    for nanos, group in groups.items():
        df = spark.read.parquet(*group)
        df = df.select(*(F.col(c) if c in df.columns else F.lit(None).alias(c) for c in columns))
        for col in sorted(nanos):
            micros = F.expr(f"(`{col}` - pmod(`{col}`, 1000)) div 1000")  # exact floor
            df = df.withColumn(col, F.timestamp_micros(micros))
        frames.append(df)
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df)
    return out


# ---- demographics -------------------------------------------------------------------------------


def demographics(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from pyspark.sql import functions as F

    areas_uri = spec["areas"]
    areas = side_table(areas_uri)
    ddl = demographics_ddl(areas)
    days = {}
    for item in spec["days"]:
        started = time.perf_counter()
        homes = read(spark, [item["homes"]], ["device_id", "lat", "lon", "confidence"])

        def locate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            table = side_table(areas_uri)
            for batch in batches:
                out = device_demographics(batch, table)
                yield out.astype({c: "float64" for c in out.columns if c == "confidence"})

        devices = homes.mapInPandas(locate, schema=ddl)
        write(devices.orderBy("device_id"), item["demographics"])
        written = spark.read.parquet(item["demographics"])
        counts = written.groupBy("area_id").agg(F.count("*").alias("n")).toPandas()
        cover = coverage_from_counts(
            counts.set_index("area_id")["n"], areas[["area_id", "population"]]
        )
        write(spark.createDataFrame(cover), item["coverage"], files=1)
        n_homes, n_devices = homes.count(), int(counts["n"].sum())
        days[item["day"]] = {
            "homes": int(n_homes),
            "devices": n_devices,
            "areas": len(cover),
            "areas_without_panel": int((cover["panel_devices"] == 0).sum()),
            "median_area_coverage": float(cover["coverage"].median()) if len(cover) else None,
            "seconds": round(time.perf_counter() - started, 3),
        }
    return {"days": days}


# ---- brand affinity -----------------------------------------------------------------------------


AFFINITY_SQL = """
WITH pair AS (
  SELECT device_id, brand, count(*) AS visits, coalesce(sum(dwell_s), 0D) AS dwell_s,
         percentile(dwell_s, 0.5) AS med
  FROM {branded} GROUP BY device_id, brand
), brand_share AS (
  SELECT b.brand, b.bv / t.total AS p
  FROM (SELECT brand, sum(visits) AS bv FROM pair GROUP BY brand) b
  CROSS JOIN (SELECT sum(visits) AS total FROM pair) t
), brand_dwell AS (
  SELECT brand, percentile(dwell_s, 0.5) AS bmed FROM {branded} GROUP BY brand
), device AS (
  SELECT device_id, CAST(sum(visits) AS DOUBLE) AS n FROM pair GROUP BY device_id
), scored AS (
  SELECT pair.device_id, pair.brand, pair.visits, pair.dwell_s,
         (pair.visits + {alpha}D * s.p) / (d.n + {alpha}D) / s.p AS lift,
         greatest(pair.med, 1D) / greatest(b.bmed, 1D) AS ratio
  FROM pair JOIN brand_share s USING (brand) JOIN brand_dwell b USING (brand)
  JOIN device d USING (device_id)
)
SELECT device_id, brand,
       least(greatest(ln(lift) + {beta}D * ln(ratio), -{clip}D), {clip}D) AS affinity,
       CAST(visits AS INT) AS visits, dwell_s, lift
FROM scored
"""


MEAN_SQL = """
WITH pair AS (
  SELECT device_id, brand, sum(visits) AS visits, sum(dwell_s) AS dwell_s
  FROM {pairs} GROUP BY device_id, brand
), brand_tot AS (
  SELECT brand, sum(visits) AS bv, sum(dwell_s) AS bd FROM pair GROUP BY brand
), total AS (
  SELECT sum(visits) AS total FROM pair
), device AS (
  SELECT device_id, CAST(sum(visits) AS DOUBLE) AS n FROM pair GROUP BY device_id
), scored AS (
  SELECT pair.device_id, pair.brand, pair.visits, pair.dwell_s,
         (pair.visits + {alpha}D * (b.bv / t.total)) / (d.n + {alpha}D) / (b.bv / t.total) AS lift,
         greatest(pair.dwell_s / pair.visits, 1D) / greatest(b.bd / b.bv, 1D) AS ratio
  FROM pair JOIN brand_tot b USING (brand) CROSS JOIN total t JOIN device d USING (device_id)
)
SELECT device_id, brand,
       least(greatest(ln(lift) + {beta}D * ln(ratio), -{clip}D), {clip}D) AS affinity,
       CAST(visits AS INT) AS visits, dwell_s, lift
FROM scored
"""
"""``science.affinity.brand_affinity_from_pairs`` (mean dwells) over per (device, POI) pairs."""


def kept_devices(counts: Any, graph: Any) -> Any:
    """``science.affinity.kept_devices``: per (person, POI) the device with the most visits
    (ties: the smallest id), as ``device_id, poi_id, person``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if graph is not None:
        counts = counts.join(F.broadcast(graph), "device_id", "left")
        person = F.coalesce(F.col("person_id"), F.col("device_id"))
    else:
        person = F.col("device_id")
    ranked = counts.select("device_id", "poi_id", "visits", person.alias("person"))
    order = Window.partitionBy("person", "poi_id").orderBy(
        F.col("visits").desc(), F.col("device_id").asc()
    )
    return (
        ranked.withColumn("__rank", F.row_number().over(order))
        .where("__rank = 1")
        .select("device_id", "poi_id", "person")
    )


def as_people(rows: Any, kept: Any) -> Any:
    """``rows`` of the kept (device, POI) pairs, the person's id as ``device_id``."""
    from pyspark.sql import functions as F

    rest = [c for c in rows.columns if c != "device_id"]
    joined = rows.join(kept, ["device_id", "poi_id"])
    return joined.select(F.col("person").alias("device_id"), *rest)


NOT_NULL = ("device_id", "brand", "affinity")
"""Columns ``brand_affinity``'s audits require non-null (``profiles.affinity_audits``)."""
FINITE_SQL = "affinity IS NOT NULL AND NOT isnan(affinity) AND abs(affinity) < double('inf')"
"""A finite affinity, in SQL (``profiles.affinity_audits``' rule ``affinity_finite``)."""
DAY = "__out_day"
"""The output day of a scored row when the days are staged together."""
NEG_AFFINITY = "__neg_affinity"
"""``-affinity``: staged days are sorted ascending by brand, this, device_id (the in-process
order: brand, descending affinity, device)."""


def affinity(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Each output day's scores over its window. With ``spec["stage"]`` (the stage spec of
    ``apply_by_device.stage_days``: one stamped object per day in the run's staging folder, with
    its audit figures), else one folder per day (``item["output"]``)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    params = {k: float(spec["params"][k]) for k in ("alpha", "beta", "clip")}
    mean, people = spec.get("dwell") == "mean", spec.get("count") == "people"
    str_id = F.col("device_id").cast("string").alias("device_id")
    visits = None
    if spec["visits"]:
        visits = (
            read(spark, spec["visits"], ["device_id", "poi_id", "brand", "dwell_s", "start_ts"])
            .select(
                str_id,
                F.col("poi_id").cast("string").alias("poi_id"),
                "brand",
                "dwell_s",
                F.date_format(F.col("start_ts"), "yyyy-MM-dd").alias("day"),
            )
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
    stage = spec.get("stage")
    days, scored_days, cached = {}, [], []
    for i, item in enumerate(spec["days"]):
        started = time.perf_counter()
        graph = None
        if people and item.get("graph"):
            graph = (
                read(spark, [item["graph"]], ["device_id", "person_id"])
                .select(str_id, F.col("person_id").cast("string").alias("person_id"))
                .dropDuplicates(["device_id"])
            )
        pairs = branded = None
        if item.get("history"):  # the day's visit_history: per (device, POI) window sums
            w = int(spec["window_days"])
            history = read(
                spark,
                [item["history"]],
                ["device_id", "poi_id", "brand", f"visits_{w}d", f"dwell_{w}d_s"],
            )
            in_window = int(history.agg(F.sum(f"visits_{w}d")).first()[0] or 0)
            pairs = history.where((F.col(f"visits_{w}d") > 0) & F.col("brand").isNotNull()).select(
                str_id,
                F.col("poi_id").cast("string").alias("poi_id"),
                "brand",
                F.col(f"visits_{w}d").cast("long").alias("visits"),
                F.col(f"dwell_{w}d_s").cast("double").alias("dwell_s"),
            )
        else:
            if visits is None:
                schema = "device_id string, poi_id string, brand string, dwell_s double"
                window = spark.createDataFrame([], f"{schema}, day string")
            else:
                window = visits.where(F.col("day").isin(item["window"]))
            in_window = window.count()
            branded = window.where(F.col("brand").isNotNull())
            if mean:
                pairs = branded.groupBy("device_id", "poi_id").agg(
                    F.min("brand").alias("brand"),
                    F.count(F.lit(1)).alias("visits"),
                    F.coalesce(F.sum("dwell_s"), F.lit(0.0)).alias("dwell_s"),
                )
        devices_scored = None
        if people:
            rows = pairs if pairs is not None else branded
            devices_scored = rows.select("device_id").distinct().count()
            if pairs is not None:
                pairs = as_people(pairs, kept_devices(pairs, graph))
            else:
                counts = branded.groupBy("device_id", "poi_id").agg(
                    F.count(F.lit(1)).alias("visits")
                )
                branded = as_people(branded, kept_devices(counts, graph))
        fmt = {k: repr(v) for k, v in params.items()}
        if pairs is not None:
            pairs.createOrReplaceTempView(f"pairs_{i}")
            sql = MEAN_SQL.format(pairs=f"pairs_{i}", **fmt)
        else:
            branded.createOrReplaceTempView(f"branded_{i}")
            sql = AFFINITY_SQL.format(branded=f"branded_{i}", **fmt)
        scored = spark.sql(sql).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(scored)
        stats = scored.agg(
            F.count("*").alias("rows"),
            F.countDistinct("device_id").alias("devices"),
            F.countDistinct("brand").alias("brands"),
            F.avg(F.when(F.col("affinity") > 0, 1.0).otherwise(0.0)).alias("share"),
            *(F.count(F.when(F.col(c).isNull(), 1)).alias(f"null_{c}") for c in NOT_NULL),
            F.count(F.when(~F.expr(FINITE_SQL), 1)).alias("non_finite"),
        ).first()
        repeats = (
            scored.groupBy("device_id", "brand")
            .count()
            .agg(F.sum(F.col("count") - 1).alias("n"))
            .first()
        )
        if stage is None:
            order = [F.col("brand"), F.col("affinity").desc(), F.col("device_id")]
            write(scored.orderBy(*order), item["output"])
        else:
            scored_days.append(scored.withColumn(DAY, F.lit(item["day"])))
        days[item["day"]] = {
            "visits_in_window": int(in_window),
            "rows": int(stats["rows"]),
            "devices": int(stats["devices"]),
            "brands": int(stats["brands"]),
            "share_positive": None if stats["share"] is None else float(stats["share"]),
            "devices_scored": devices_scored,
            "audit": {
                "nulls": {c: int(stats[f"null_{c}"]) for c in NOT_NULL},
                "non_finite": int(stats["non_finite"]),
                "repeated_keys": int(repeats["n"] or 0),
            },
            "seconds": round(time.perf_counter() - started, 3),
        }
    if stage is not None:
        from near_assets.spark_jobs.apply_by_device import stage_days

        out = scored_days[0]
        for df in scored_days[1:]:
            out = out.unionByName(df)
        out = out.withColumn(NEG_AFFINITY, -F.col("affinity"))  # the sort is ascending only
        for day, result in stage_days(out, stage).items():
            days[day]["staged"] = result
    for df in cached:
        df.unpersist()
    if visits is not None:
        visits.unpersist()
    return {"days": days}


# ---- campaign panel -----------------------------------------------------------------------------


def located_homes(spark: Any, homes_uri: str, areas_uri: str) -> Any:
    """``device_id, home_area_id`` of the homes at ``homes_uri`` (``home_areas`` per batch)."""
    homes = read(spark, [homes_uri], ["device_id", "lat", "lon"])

    def locate(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        table = side_table(areas_uri)
        for batch in batches:
            yield home_areas(batch, table)

    schema = "device_id string, home_area_id string"
    return homes.mapInPandas(locate, schema=schema).dropDuplicates(["device_id"])


def pre_bin_sql(column: str) -> str:
    """``pd.cut(column, PRE_BINS, right=False, labels=PRE_LABELS)`` as a CASE."""
    cases = [
        f"WHEN {column} < {int(high)} THEN '{label}'"
        for high, label in zip(PRE_BINS[1:-1], PRE_LABELS[:-1], strict=True)
    ]
    return f"CASE {' '.join(cases)} ELSE '{PRE_LABELS[-1]}' END"


def campaign(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    started = time.perf_counter()
    exposures = read(spark, [spec["exposures"]], ["device_id", "ts"]).where(
        F.col("device_id").isNotNull() & F.col("ts").isNotNull()
    )
    cutoff_ms = int(spec["cutoff_ms"])
    if isinstance(exposures.schema["ts"].dataType, NumericType):  # epoch milliseconds
        before = F.col("ts") < F.lit(cutoff_ms)
    else:
        before = F.unix_millis(F.col("ts").cast("timestamp")) < F.lit(cutoff_ms)
    exposed = (
        exposures.where(before)
        .select(F.col("device_id").cast("string").alias("device_id"))
        .distinct()
    )
    exposed.createOrReplaceTempView("exposed")
    brand_pois = spark.createDataFrame(side_table(spec["brand_pois"])[["poi_id"]])
    F.broadcast(brand_pois).createOrReplaceTempView("brand_pois")

    def counts(uris: Sequence[str], view: str) -> None:
        if not uris:
            spark.sql(
                "SELECT CAST(NULL AS STRING) AS device_id, 0L AS brand_visits, 0L AS poi_visits "
                "WHERE false"
            ).createOrReplaceTempView(view)
            return
        read(spark, uris, ["device_id", "poi_id"]).createOrReplaceTempView(f"{view}_visits")
        spark.sql(
            f"SELECT CAST(v.device_id AS STRING) AS device_id, "
            f"count(b.poi_id) AS brand_visits, count(*) AS poi_visits "
            f"FROM {view}_visits v LEFT JOIN brand_pois b ON CAST(v.poi_id AS STRING) = b.poi_id "
            f"GROUP BY CAST(v.device_id AS STRING)"
        ).createOrReplaceTempView(view)

    def history_counts(span: Sequence[str] | None, view: str) -> None:
        """``science.campaigns.visits_between`` of two ``visit_history`` snapshots, per device."""
        if not span:
            counts([], view)
            return
        columns = ["device_id", "poi_id", "first_seen", "visits_total"]
        for uri, side in zip(span, ("end", "start"), strict=True):
            read(spark, [uri], columns).createOrReplaceTempView(f"{view}_{side}")
        spark.sql(
            f"""
            SELECT d.device_id, sum(CASE WHEN b.poi_id IS NOT NULL THEN d.n ELSE 0 END)
                   AS brand_visits, sum(d.n) AS poi_visits
            FROM (SELECT CAST(e.device_id AS STRING) AS device_id,
                         CAST(e.poi_id AS STRING) AS poi_id,
                         CAST(e.visits_total AS BIGINT) - CASE WHEN s.first_seen = e.first_seen
                             THEN CAST(s.visits_total AS BIGINT) ELSE 0 END AS n
                  FROM {view}_end e LEFT JOIN {view}_start s
                    ON e.device_id = s.device_id AND e.poi_id = s.poi_id) d
            LEFT JOIN brand_pois b ON d.poi_id = b.poi_id
            WHERE d.n > 0
            GROUP BY d.device_id
            """
        ).createOrReplaceTempView(view)

    history = spec.get("history")
    if history:  # the visits as differences of the history's snapshots (end, day before)
        history_counts(history.get("window"), "win")
        history_counts(history.get("pre"), "pre")
    else:
        counts(spec["window"], "win")
        counts(spec["pre"], "pre")
    located_homes(spark, spec["homes"], spec["areas"]).createOrReplaceTempView("devices")
    panel = spark.sql(
        f"""
        SELECT d.home_area_id,
               {pre_bin_sql("coalesce(pre.brand_visits, 0)")} AS pre_brand_bin,
               e.device_id IS NOT NULL AS exposed,
               coalesce(win.brand_visits, 0L) AS brand_visits,
               coalesce(win.poi_visits, 0L) AS poi_visits
        FROM devices d
        LEFT JOIN exposed e ON d.device_id = e.device_id
        LEFT JOIN pre ON d.device_id = pre.device_id
        LEFT JOIN win ON d.device_id = win.device_id
        """
    )
    keys = ["home_area_id", "pre_brand_bin", "exposed", "brand_visits", "poi_visits"]
    compressed = panel.groupBy(*keys).agg(F.count("*").alias("devices")).orderBy(*keys)
    write(compressed, spec["panel"], files=1)
    written = spark.read.parquet(spec["panel"])
    sizes = written.agg(F.count("*").alias("rows"), F.sum("devices").alias("devices")).first()
    return {
        "exposed_in_exposures": int(exposed.count()),
        "panel_devices": int(sizes["devices"] or 0),
        "panel_rows": int(sizes["rows"]),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---- aggregate insights -------------------------------------------------------------------------


def dwell_bin_sql(column: str) -> list[str]:
    """``np.histogram(column, DWELL_EDGES_S)`` counts as SQL aggregates (last bin closed)."""
    edges = [float(x) for x in DWELL_EDGES_S]
    out = []
    for i, (low, high) in enumerate(itertools.pairwise(edges)):
        upper = f"{column} < {high!r}D" if high != float("inf") else "true"
        out.append(f"count(CASE WHEN {column} >= {low!r}D AND {upper} THEN 1 END) AS b{i}")
    return out


def insights(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from pyspark.sql import functions as F

    started = time.perf_counter()
    pois = spark.createDataFrame(side_table(spec["pois"])[["poi_id"]])
    F.broadcast(pois).createOrReplaceTempView("pois")
    read(spark, spec["visits"], ["device_id", "poi_id", "dwell_s"]).createOrReplaceTempView("raw")
    spark.sql(
        "SELECT CAST(device_id AS STRING) AS device_id, CAST(poi_id AS STRING) AS poi_id, "
        "CASE WHEN isnan(dwell_s) THEN NULL ELSE CAST(dwell_s AS DOUBLE) END AS dwell_s "
        "FROM raw LEFT SEMI JOIN pois ON CAST(raw.poi_id AS STRING) = pois.poi_id"
    ).createOrReplaceTempView("visits_all")

    devices = spec["devices"]
    if "demographics" in devices:
        read(spark, [devices["demographics"]], ["device_id", "area_id"]).selectExpr(
            "CAST(device_id AS STRING) AS device_id", "CAST(area_id AS STRING) AS area_id"
        ).dropDuplicates(["device_id"]).createOrReplaceTempView("home")
    elif devices.get("homes"):
        located_homes(spark, devices["homes"], devices["areas"]).withColumnRenamed(
            "home_area_id", "area_id"
        ).createOrReplaceTempView("home")
    else:
        spark.sql(
            "SELECT CAST(NULL AS STRING) AS device_id, CAST(NULL AS STRING) AS area_id WHERE false"
        ).createOrReplaceTempView("home")
    if "factors" in spec:
        factors, region = side_table(spec["factors"])[["area_id", "people"]], spec.get("region")
    else:  # coverage from the located homes and the areas' population (no demographics)
        areas = side_table(devices["areas"])
        counts = spark.sql("SELECT area_id, count(*) AS n FROM home GROUP BY area_id").toPandas()
        cover = areas[["area_id", "population"]].assign(area_id=areas["area_id"].astype(str))
        cover["panel_devices"] = (
            cover["area_id"].map(counts.set_index("area_id")["n"]).fillna(0).astype("int64")
        )
        per_area, region_factor = people_factors(cover)
        factors = per_area.rename("people").rename_axis("area_id").reset_index()
        region = None if math.isnan(region_factor) else region_factor
    if spec.get("affinity"):
        read(spark, [spec["affinity"]], ["device_id", "brand", "affinity"]).selectExpr(
            "CAST(device_id AS STRING) AS device_id", "brand", "affinity"
        ).createOrReplaceTempView("aff")
    else:
        spark.sql(
            "SELECT CAST(NULL AS STRING) AS device_id, CAST(NULL AS STRING) AS brand, "
            "CAST(NULL AS DOUBLE) AS affinity WHERE false"
        ).createOrReplaceTempView("aff")

    segment = spec.get("segment") or {}
    keep = []
    if segment.get("home_areas"):
        areas = ", ".join("'" + a.replace("'", "''") + "'" for a in segment["home_areas"])
        keep.append(f"SELECT device_id FROM home WHERE area_id IN ({areas})")
    if segment.get("min_affinity") is not None and segment.get("affinity_brand") is not None:
        brand = segment["affinity_brand"].replace("'", "''")
        keep.append(
            f"SELECT device_id FROM aff WHERE brand = '{brand}' "
            f"AND affinity >= {float(segment['min_affinity'])!r}D"
        )
    if keep:
        spark.sql(" INTERSECT ".join(f"({q})" for q in keep)).createOrReplaceTempView("keep")
        spark.sql(
            "SELECT * FROM visits_all LEFT SEMI JOIN keep USING (device_id)"
        ).createOrReplaceTempView("visits")
    else:
        spark.table("visits_all").createOrReplaceTempView("visits")

    schema = "area_id string, people double"
    spark.createDataFrame(
        factors.astype({"area_id": str, "people": float}), schema
    ).createOrReplaceTempView("factors")
    region_sql = "CAST(NULL AS DOUBLE)" if region is None else f"{float(region)!r}D"
    per_dev = spark.sql(
        f"""
        SELECT v.device_id, v.visits, v.dwell_s, h.area_id,
               coalesce(f.people, {region_sql}) AS people
        FROM (SELECT device_id, count(*) AS visits, coalesce(sum(dwell_s), 0D) AS dwell_s
              FROM visits GROUP BY device_id) v
        LEFT JOIN home h ON v.device_id = h.device_id
        LEFT JOIN factors f ON h.area_id = f.area_id
        """
    )
    write(per_dev.orderBy("device_id"), spec["visitors"])
    spark.read.parquet(spec["visitors"]).createOrReplaceTempView("per_dev")

    head = spark.sql(
        "SELECT count(*) AS visitors, sum(people) AS people, count(area_id) AS with_home, "
        "count(DISTINCT area_id) AS home_areas FROM per_dev"
    ).first()
    quantiles = ", ".join(repr(q) for q in DWELL_QUANTILES)
    dwell = spark.sql(
        f"SELECT count(*) AS visits, count(dwell_s) AS n, avg(dwell_s) AS mean, "
        f"percentile(dwell_s, array({quantiles})) AS q, {', '.join(dwell_bin_sql('dwell_s'))} "
        f"FROM visits"
    ).first()
    mix = spark.sql(
        "SELECT coalesce(area_id, 'unknown') AS area_id, count(*) AS visitors, "
        "sum(people) AS estimated_people FROM per_dev GROUP BY coalesce(area_id, 'unknown')"
    ).toPandas()
    brands = spark.sql(
        """
        SELECT a.brand, count(DISTINCT a.device_id) AS visitors, avg(a.affinity) AS mean_affinity,
               avg(CASE WHEN a.affinity > 0 THEN 1.0D ELSE 0.0D END) AS share_positive,
               first(p.panel_mean) AS panel_mean_affinity
        FROM aff a LEFT SEMI JOIN per_dev d ON a.device_id = d.device_id
        JOIN (SELECT brand, avg(affinity) AS panel_mean FROM aff GROUP BY brand) p
          ON a.brand = p.brand
        GROUP BY a.brand
        """
    )
    brands = brands.toPandas()
    visitors = int(head["visitors"])
    n_dwell = int(dwell["n"])
    return {
        "figures": {
            "visitors": visitors,
            "visits": int(dwell["visits"]),
            "people": float(head["people"] or 0.0),
            "visitors_with_home_area": int(head["with_home"]),
            "home_areas": int(head["home_areas"]),
            "dwell_counts": [int(dwell[f"b{i}"]) for i in range(len(DWELL_EDGES_S) - 1)],
            "dwell_n": n_dwell,
            "dwell_quantiles": dict(zip(DWELL_QUANTILES, map(float, dwell["q"]), strict=True))
            if n_dwell
            else {},
            "dwell_mean": float(dwell["mean"]) if n_dwell else None,
        },
        "mix": mix.to_dict(orient="list"),
        "brands": brands.to_dict(orient="list"),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ---- entry point --------------------------------------------------------------------------------


RUNNERS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "demographics": demographics,
    "affinity": affinity,
    "campaign": campaign,
    "insights": insights,
}


def run(args: argparse.Namespace, log: Callable[[str], None], spark: Any = None) -> dict[str, Any]:
    """Run ``--task``; uses (and leaves running) ``spark`` if given."""
    return run_in_session(
        args,
        log,
        spark,
        f"profiles {args.task}",
        lambda spark: {**RUNNERS[args.task](spark, json.loads(args.spec)), "task": args.task},
    )


def main(argv: Sequence[str] | None = None) -> int:
    return pipes_main(parse_args, run, argv, brief=lambda s: {k: s[k] for k in ("task", "seconds")})


if __name__ == "__main__":
    sys.exit(main())
