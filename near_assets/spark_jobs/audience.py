"""Audience inputs with Spark: the Spark engine of ``audience_estimates`` (a dagster-pipes script).

    audience.py --spec '{"params": {...DetectionParams...}, "correction": true,
        "areas": ".../areas.parquet", "pois": ".../pois.parquet", "output": ".../out",
        "detect": [{"day": D, "pings": uri, "stays": uri, "visits": uri, "out": uri}],
        "days": [{"day": D, "visits": uri|null, "homes": uri|null, "pings": uri|null,
                  "detection": uri|null, "graph": uri|null}],
        "blend": {D: [D, D-1, ...]}, "count": "devices"|"people"}'

Everything that reads pings, stays or visits runs here; only per-POI and per-day figures go back.

1. **Visit detection** (``detect``, one entry per day whose rates are computed): the per-device
   steps of ``near_assets.science.audience.detection_rates`` run on device buckets
   (``pmod(hash(device_id), n)``, pings and stays cogrouped, ``applyInPandas``):
   ``device_motion`` (ping counts, moving speeds, arrival templates), then Spark SQL for the
   day's figures (median speed, ping groups by rank, template hours, visits per hour and dwell
   bin), ``arrival_windows`` on the templates, ``kernel_sums`` per bucket summed per group; the
   driver fits ``group_rates`` (a few thousand numbers) and writes the per-device rates to
   ``out`` (the ``visit_detection`` table).
2. **Horvitz-Thompson sums** (``days``): per day, in Spark SQL, ``science.audience.daily_ht``:
   distinct (device, POI) visits (quarantined POIs left out), home areas, active devices (any
   ping that day), area weights ``max(population, n) / n``, detection-adjusted weights, and per
   POI ``visitors``, ``e``, ``var``, ``model_var``; written to ``output/date=D``. The typical
   weight, the pooled figures and, for every pair of days blended together (``blend``), the
   summed covariance through the shared panel (``day_covariance``: split into reference POIs
   and, per POI, the few others) go back through Pipes.

3. **People** (``"count": "people"``, each day's ``graph``: its ``identity_graph`` partition or
   null): before the sums, every device becomes its person (``person_id``; a device missing
   from the graph is its own person), as ``science.audience.as_people``: a person's home area
   is the smallest of its devices', it is active when a device is, its detection rate is its
   devices' highest; the figures add ``visitor_devices`` and ``active_people``.

The spec may come as ``--spec @<uri>``: a JSON object in the lake (the run's scratch area).

Job scripts import ``dagster_pipes`` only, never ``dagster``: this one ships to EMR.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from near_assets.science.audience import (
    DetectionParams,
    _hour_weights,
    arrival_windows,
    detection_summary,
    device_motion,
    group_rates,
    kernel_sums,
)
from near_assets.spark_jobs._pipes_main import load_spec, pipes_main
from near_assets.spark_jobs.apply_by_device import (
    BASE_CONF,
    bucket_count,
    clean_local_output,
    is_local,
    read_inputs,
    spark_session,
)

BUCKET = "__bucket"
MOTION_SCHEMA = (
    "device_id string, kind int, n_pings long, speed double, a_first_us long, prev_us long, "
    "dist_m double, was_moving boolean"
)
ANCHOR_SCHEMA = (
    "device_id string, a_first_us long, prev_us long, dist_m double, was_moving boolean, "
    "earliest_s double, hour long"
)
KERNEL_SCHEMA = "ping_group long, dwell_bin long, span_bin long, weight double"
HT_SCHEMA = "poi_id string, visitors long, e double, var double, model_var double"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec", required=True, help="JSON job spec (module doc), or @<uri> of a JSON object"
    )
    parser.add_argument("--master", default=None, help="Spark master (spark-submit sets it)")
    parser.add_argument("--spark-conf", default="{}", help="JSON Spark settings for the session")
    args, _ = parser.parse_known_args(argv)  # the --dagster-pipes-* arguments are read by pipes
    return args


def _bucketed(df: Any, buckets: int) -> Any:
    from pyspark.sql import functions as F

    return df.withColumn(BUCKET, F.pmod(F.hash(F.col("device_id")), F.lit(buckets)))


def _pings(spark: Any, uri: str) -> Any:
    from pyspark.sql import functions as F

    return read_inputs(spark, [uri]).select(
        F.col("device_id").cast("string").alias("device_id"),
        F.unix_micros(F.col("ts")).alias("t_us"),
        F.col("lat").cast("double").alias("lat"),
        F.col("lon").cast("double").alias("lon"),
    )


def _sorted(pdf: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return pdf.drop(columns=[BUCKET], errors="ignore").sort_values(keys, ignore_index=True)


def detect_day(
    spark: Any, spec: dict[str, Any], params: DetectionParams
) -> tuple[Any, dict[str, Any]]:
    """Visit-detection rates of one day (module doc, 1); writes them to ``spec["out"]``.

    Returns the summary and the day's devices with pings (persisted: the active devices of
    the day's HT sums, so its pings are read once)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    started = time.perf_counter()
    pings = _pings(spark, spec["pings"]).where(F.col("device_id").isNotNull())
    stays = read_inputs(spark, [spec["stays"]]).select(
        F.col("device_id").cast("string").alias("device_id"),
        F.unix_micros("start_ts").alias("start_us"),
        F.unix_micros("end_ts").alias("end_us"),
        F.col("lat").cast("double").alias("lat"),
        F.col("lon").cast("double").alias("lon"),
    )
    rows = int(spec["rows"]) if spec.get("rows") is not None else pings.count()
    buckets = bucket_count("auto", ["device_id"], rows, spark.sparkContext.defaultParallelism)
    pings_b = _bucketed(pings, buckets)

    def motion(p: pd.DataFrame, s: pd.DataFrame) -> pd.DataFrame:
        # device_motion orders the rows itself: its output does not depend on their order
        devices, speeds, anchors = device_motion(
            p.drop(columns=[BUCKET]), s.drop(columns=[BUCKET]), params
        )
        parts = [
            devices.assign(kind=0),
            pd.DataFrame({"device_id": None, "kind": 1, "speed": speeds}),
            anchors.assign(kind=2),
        ]
        out = pd.concat([x for x in parts if len(x)], ignore_index=True)
        names = [c.split()[0] for c in MOTION_SCHEMA.split(", ")]
        return out.reindex(columns=names)

    motion_df = (
        pings_b.groupBy(BUCKET)
        .cogroup(_bucketed(stays, buckets).groupBy(BUCKET))
        .applyInPandas(motion, schema=MOTION_SCHEMA)
        .persist()
    )
    try:
        figures = motion_df.agg(
            F.count("speed").alias("n"),
            F.expr("percentile(speed, 0.5)").alias("median"),
            F.count(F.when(F.col("kind") == 0, 1)).alias("devices"),
        ).collect()[0]
        speed = figures["median"] if figures["n"] >= 20 else params.default_speed_mps
        speed, n_dev = float(speed), int(figures["devices"])
        devices = motion_df.where("kind = 0").select("device_id", "n_pings")
        pinged = devices.select("device_id").persist()
        n_groups = max(1, min(params.groups, n_dev))
        rank = F.row_number().over(Window.orderBy("n_pings", "device_id")) - 1
        group = F.expr(f"least((__rank * {n_groups}) div {max(n_dev, 1)}, {n_groups - 1})")
        groups = (
            devices.select("device_id", rank.alias("__rank"))
            .select("device_id", group.cast("long").alias("ping_group"))
            .persist()
        )
        ranks = np.arange(n_dev, dtype=np.int64)  # the groups' sizes, as ``ping_groups``
        sizes = np.bincount(
            np.minimum(ranks * n_groups // max(n_dev, 1), n_groups - 1), minlength=n_groups
        )

        def windows(batches: Any) -> Any:
            for pdf in batches:
                yield arrival_windows(pdf.drop(columns=["kind"]), speed)[
                    [c.split()[0] for c in ANCHOR_SCHEMA.split(", ")]
                ]

        anchors = (
            motion_df.where("kind = 2")
            .select("device_id", "a_first_us", "prev_us", "dist_m", "was_moving", "kind")
            .mapInPandas(windows, schema=ANCHOR_SCHEMA)
            .persist()
        )
        a_hours = np.zeros(24)
        for r in anchors.groupBy("hour").count().collect():
            a_hours[int(r["hour"])] = r["count"]
        visits = read_inputs(spark, [spec["visits"]]) if spec.get("visits") else None
        v_hours = np.zeros(24)
        visit_counts = pd.DataFrame({"ping_group": [], "dwell_bin": [], "n": []})
        if visits is not None:  # one pass: visits per UTC start hour and per (group, dwell)
            hour = F.expr("pmod(unix_micros(start_ts) div 3600000000, 24)")
            n_b = int(params.max_dwell_s // params.dwell_step_s)
            v_bin = F.least(
                F.greatest(
                    F.floor(F.col("dwell_s").cast("double") / F.lit(params.dwell_step_s)) - 1,
                    F.lit(0),
                ),
                F.lit(n_b - 1),
            ).cast("long")
            counted = (
                visits.select(
                    F.col("device_id").cast("string").alias("device_id"),
                    hour.alias("h"),
                    v_bin.alias("dwell_bin"),
                )
                .join(groups, "device_id", "left")
                .groupBy("h", "ping_group", "dwell_bin")
                .agg(F.count(F.lit(1)).alias("n"))
                .toPandas()
            )
            by_hour = counted.dropna(subset=["h"]).groupby("h")["n"].sum()
            v_hours[by_hour.index.to_numpy(np.int64)] = by_hour.to_numpy(float)
            grouped = counted.dropna(subset=["ping_group"])
            visit_counts = grouped.groupby(["ping_group", "dwell_bin"], as_index=False)["n"].sum()
        hour_w = _hour_weights(a_hours, v_hours, params.max_hour_weight)
        weights = spark.createDataFrame(
            pd.DataFrame({"hour": np.arange(24, dtype=np.int64), "hour_w": hour_w})
        )
        templates = anchors.join(F.broadcast(weights), "hour").join(groups, "device_id")
        a_cols = [
            "device_id",
            "a_first_us",
            "earliest_s",
            "was_moving",
            "hour_w",
            "ping_group",
        ]

        def kernel(p: pd.DataFrame, a: pd.DataFrame) -> pd.DataFrame:
            a = _sorted(a, ["device_id", "a_first_us", "earliest_s"])[a_cols]
            return kernel_sums(p.drop(columns=[BUCKET]), a, params)

        kernel_df = (
            pings_b.groupBy(BUCKET)
            .cogroup(_bucketed(templates.select(*a_cols), buckets).groupBy(BUCKET))
            .applyInPandas(kernel, schema=KERNEL_SCHEMA)
            .groupBy("ping_group", "dwell_bin", "span_bin")
            .agg(F.sum("weight").alias("weight"))
            .toPandas()
        )
        p_group, f = group_rates(kernel_df, visit_counts, sizes, params)
        rates = spark.createDataFrame(
            pd.DataFrame({"ping_group": np.arange(n_groups, dtype=np.int64), "p_detect": p_group})
        )
        (
            groups.join(F.broadcast(rates), "ping_group")
            .select("device_id", "p_detect", "ping_group")
            .repartition(max(1, -(-n_dev // 2_000_000)))
            .sortWithinPartitions("device_id")
            .write.mode("overwrite")
            .parquet(spec["out"])
        )
        if is_local(spec["out"]):
            clean_local_output(spec["out"])
        summary = detection_summary(p_group, f, sizes, speed, int(a_hours.sum()), params)
        known = {"devices": n_dev, "median_p": median_of_counts(p_group, sizes)}
        pinged.count()  # cached before the motion rows it comes from are dropped
        anchors.unpersist()
        groups.unpersist()
    finally:
        motion_df.unpersist()
    return (pinged, known), {
        **summary,
        "pings": rows,
        "devices": n_dev,
        "buckets": buckets,
        "seconds": round(time.perf_counter() - started, 3),
    }


def median_of_counts(values: np.ndarray, counts: np.ndarray) -> float | None:
    """``numpy.median`` of ``values`` each repeated ``counts`` times (without repeating)."""
    order = np.argsort(values, kind="stable")
    v, c = np.asarray(values, float)[order], np.asarray(counts, np.int64)[order]
    n = int(c.sum())
    if n == 0:
        return None
    ends = np.cumsum(c)
    lo = v[np.searchsorted(ends, (n - 1) // 2, side="right")]
    hi = v[np.searchsorted(ends, n // 2, side="right")]
    return float((lo + hi) / 2)


def ht_day(
    spark: Any,
    spec: dict[str, Any],
    areas: Any,
    quarantined: Any,
    model_rel_error: float,
    pinged: Any = None,
    people: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """One day's weighted panel visitors (``daily_ht``'s pairs, with ``poi_id``, ``device_id``,
    ``w``, ``area_weight``, ``known``) and its figures (module doc, 2). ``pinged``: the day's
    devices with pings when already known (``detect_day``), else read from ``spec["pings"]``.
    ``people``: count persons (module doc, 3): ``device_id`` holds the ``person_id``."""
    from pyspark.sql import functions as F

    str_col = F.col("device_id").cast("string").alias("device_id")
    graph = None
    if people and spec.get("graph"):
        graph = (
            read_inputs(spark, [spec["graph"]])
            .select(str_col, F.col("person_id").cast("string").alias("person_id"))
            .where("device_id IS NOT NULL")
            .dropDuplicates(["device_id"])
        )

    def as_people(df: Any) -> Any:
        """``science.audience.as_people``: the device's person (itself when not in the graph)."""
        if graph is None:
            return df
        person = F.coalesce(F.col("person_id"), F.col("device_id")).alias("device_id")
        rest = [c for c in df.columns if c != "device_id"]
        return df.join(F.broadcast(graph), "device_id", "left").select(person, *rest)

    if spec.get("visits"):
        visits = read_inputs(spark, [spec["visits"]]).select(
            str_col, F.col("poi_id").cast("string").alias("poi_id")
        )
    else:
        visits = spark.createDataFrame([], "device_id string, poi_id string")
    visits = visits.dropna().join(F.broadcast(quarantined), "poi_id", "left_anti")
    visitor_devices = None
    if people:  # distinct (device, POI) visitors before they become people
        visitor_devices = visits.dropDuplicates(["device_id", "poi_id"]).count()
    pairs = as_people(visits).dropDuplicates(["device_id", "poi_id"]).persist()
    if spec.get("homes"):
        raw_homes = read_inputs(spark, [spec["homes"]]).select(
            str_col, F.col("area_id").cast("string").alias("area_id")
        )
    else:
        raw_homes = spark.createDataFrame([], "device_id string, area_id string")
    if people:  # a person's home area: the smallest of its devices' (nulls left out)
        raw_homes = as_people(raw_homes.where("area_id IS NOT NULL"))
    # one home per device (the first in pandas; homes are one row per device in practice)
    homes = raw_homes.groupBy("device_id").agg(F.min("area_id").alias("area_id"))
    active_n = None
    given: dict[str, Any] = {}
    if pinged is not None:
        pinged, given = pinged
    active_people = None
    if spec.get("pings"):
        if pinged is None:
            pinged = read_inputs(spark, [spec["pings"]]).select(str_col)
            pinged = pinged.where("device_id IS NOT NULL").distinct().persist()
        active_n = given["devices"] if "devices" in given else pinged.count()
        active_units = pinged
        if people:
            active_units = as_people(pinged).distinct()
            active_people = active_units.count()
        active = active_units.unionByName(pairs.select("device_id")).distinct()
        counted = homes.join(active, "device_id", "left_semi")
    else:
        pinged, counted = None, homes
    per_area = counted.groupBy("area_id").agg(F.count(F.lit(1)).alias("n"))
    weights = (
        areas.join(per_area, "area_id", "left")
        .select(
            "area_id",
            F.when(
                F.col("n") > 0,
                F.greatest(F.col("population").cast("double"), F.col("n").cast("double"))
                / F.col("n").cast("double"),
            ).alias("weight"),
        )
        .toPandas()
    )
    finite = weights["weight"].dropna().to_numpy(float)
    typical = float(np.median(finite)) if len(finite) else 1.0
    weights_df = spark.createDataFrame(
        weights.astype({"weight": float}), "area_id string, weight double"
    )
    dev = pairs.join(homes, "device_id", "left").join(F.broadcast(weights_df), "area_id", "left")
    rel = 0.0
    p_col = F.lit(1.0)
    if spec.get("detection"):
        det = read_inputs(spark, [spec["detection"]]).select(
            str_col, F.col("p_detect").cast("double").alias("p_detect")
        )
        det = det.dropDuplicates(["device_id"])
        if people:  # a person's rate: the highest of its devices'
            det = as_people(det).groupBy("device_id").agg(F.max("p_detect").alias("p_detect"))
        if "median_p" in given and not people:  # the rates this job just wrote
            median = given["median_p"]
        else:
            median = det.agg(F.expr("percentile(p_detect, 0.5)").alias("m")).collect()[0]["m"]
        if median is not None:
            rel = model_rel_error
            dev = dev.join(det, "device_id", "left")
            p_col = F.coalesce(F.col("p_detect"), F.lit(float(median)))
            p_col = F.least(F.greatest(p_col, F.lit(1e-6)), F.lit(1.0))
    known = F.col("weight").isNotNull() & ~F.isnan(F.col("weight"))
    w = F.col("weight") / p_col if rel else F.col("weight")
    weighted = dev.select(
        "poi_id",
        "device_id",
        known.alias("known"),
        F.when(known, w).otherwise(F.lit(0.0)).alias("w"),
        F.col("weight").alias("area_weight"),
    ).persist()
    per_poi = weighted.groupBy("poi_id").agg(
        F.count(F.lit(1)).alias("visitors"),
        F.sum("w").alias("e"),
        F.sum(F.col("w") * F.greatest(F.col("w") - 1.0, F.lit(0.0))).alias("var"),
    )
    model = (F.lit(rel) * F.col("e")) * (F.lit(rel) * F.col("e"))
    per_poi = per_poi.select(
        "poi_id",
        F.col("visitors").cast("long").alias("visitors"),
        "e",
        (F.col("var") + model).alias("var"),
        model.alias("model_var"),
    )
    figures = {
        "typical": typical,
        "active_devices": active_n,
        "model_rel_error": rel,
    }
    if people:
        figures |= {"visitor_devices": visitor_devices, "active_people": active_people}
    pairs.unpersist()
    if pinged is not None:
        pinged.unpersist()
    return weighted.where("known"), {"per_poi": per_poi, **figures}


def covariance(day_a: Any, day_b: Any, reference: Any) -> dict[str, Any]:
    """``day_covariance`` summed: over the reference POIs, and per POI for the others."""
    from pyspark.sql import functions as F

    a = day_a.select(
        "poi_id", "device_id", F.col("w").alias("w_a"), F.col("area_weight").alias("aw")
    )
    b = day_b.select("poi_id", "device_id", F.col("w").alias("w_b"))
    c = (
        F.col("w_a")
        * F.col("w_b")
        * F.greatest(F.col("aw") - 1.0, F.lit(0.0))
        / F.greatest(F.col("aw"), F.lit(1.0))
    )
    both = a.join(b, ["poi_id", "device_id"]).select("poi_id", c.alias("c"))
    per = (
        both.join(
            F.broadcast(reference.select("poi_id", F.lit(True).alias("ref"))), "poi_id", "left"
        )
        .groupBy(
            F.coalesce(F.col("ref"), F.lit(False)).alias("ref"),
            F.when(F.col("ref").isNull(), F.col("poi_id")).alias("poi_id"),
        )
        .agg(F.sum("c").alias("c"))
        .collect()
    )
    out: dict[str, Any] = {"ref": 0.0, "other": {}}
    for r in per:
        if r["ref"]:
            out["ref"] = float(r["c"] or 0.0)
        else:
            out["other"][r["poi_id"]] = float(r["c"] or 0.0)
    return out


def run(args: argparse.Namespace, log: Callable[[str], None], spark: Any = None) -> dict[str, Any]:
    """Run the job spec; uses (and leaves running) ``spark`` if given."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    own_session = spark is None
    if own_session:
        spark = spark_session(args.master, json.loads(args.spark_conf))
    else:
        for key, value in BASE_CONF.items():
            spark.conf.set(key, value)
    session_s = time.perf_counter() - started
    spec = load_spec(spark, args.spec)
    params = DetectionParams(**spec.get("params", {}))
    detection, pinged = {}, {}
    for item in spec.get("detect", []):
        pinged[item["pings"]], detection[item["day"]] = detect_day(spark, item, params)
        log(f"audience detection {item['day']}: {detection[item['day']]}")
    areas = read_inputs(spark, [spec["areas"]]).select(
        F.col("area_id").cast("string").alias("area_id"), "population"
    )
    pois = read_inputs(spark, [spec["pois"]]).select(
        F.col("poi_id").cast("string").alias("poi_id"), "quarantined"
    )
    quarantined = pois.where("quarantined").select("poi_id")
    reference = pois.where("NOT quarantined").select("poi_id").persist()
    days: dict[str, Any] = {}
    weighted: dict[str, Any] = {}
    for item in spec.get("days", []):
        day = item["day"]
        t = time.perf_counter()
        weighted[day], figures = ht_day(
            spark,
            item,
            areas,
            quarantined,
            params.model_rel_error if spec.get("correction", True) else 0.0,
            pinged.pop(item.get("pings") or "", None),
            people=spec.get("count") == "people",
        )
        weighted[day] = weighted[day].persist()
        per_poi = figures.pop("per_poi")
        out = f"{spec['output'].rstrip('/')}/date={day}"
        per_poi.coalesce(1).write.mode("overwrite").parquet(out)
        if is_local(out):
            clean_local_output(out)
        days[day] = {**figures, "seconds": round(time.perf_counter() - t, 3)}
    for df, _ in pinged.values():
        df.unpersist()
    cov: dict[str, Any] = {}
    for a, b in dict.fromkeys(tuple(p) for p in spec.get("pairs", [])):  # (newer, older)
        cov[f"{a}|{b}"] = covariance(weighted[a], weighted[b], reference)
    for df in weighted.values():
        df.unpersist()
    summary = {
        "detection": detection,
        "days": days,
        "covariance": cov,
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
        parse_args, run, argv, brief=lambda s: {k: v for k, v in s.items() if k != "covariance"}
    )


if __name__ == "__main__":
    sys.exit(main())
