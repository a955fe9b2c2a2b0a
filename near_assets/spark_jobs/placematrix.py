"""The Spark engine of ``place_boundaries`` (PlaceMatrix): refined POI footprints per day.

    placematrix.py --spec '<JSON>'

The same science as the in-process engine (``near_assets.science.placematrix``), cut where it
parallelises without changing a number:

1. Spark reads, once, the stay points of every day some output day's window needs (D-27 .. D
   by default; a backfill's windows overlap) and keeps the visit-like ones (dwell
   ``min_dwell_s`` .. ``max_dwell_s``, with a position) in Spark SQL.
2. ``mapInPandas`` over the stays with the POIs broadcast (a small table): every batch gives
   each stay near a delivered polygon to ONE POI (``placematrix.assign_stays``, per stay: the
   batches do not matter); the others are dropped there. Each stay is assigned once.
3. The assigned stays join (broadcast) the (stay day, output day) pairs of the windows, are
   grouped by output day and bucket of whole POIs (``poi % buckets``) and ``applyInPandas``
   runs ``placematrix.cluster_stats`` per group (per POI: density, kept cluster, extent in the
   delivered polygon's frame; canonical row order inside).
4. The per-POI figures (one row per POI with evidence and day: small) come back to the
   driver, which runs ``placematrix.footprints`` over all POIs for each day (rectangles,
   plausible sizes, cuts between overlapping neighbours, thin evidence kept delivered).

Every worker builds the same ``PoiIndex`` from the whole POI list, so the published rows are
those of the in-process engine. The rows (one per POI) go back to the run process through
``report_custom_message`` (as ``models.py --task hdp`` returns its list), which audits and
publishes them as the in-process engine does. Job scripts import ``dagster_pipes`` only, never
``dagster``: this one ships to EMR in the ``--py-files`` zip with the package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from near_assets.science import placematrix
from near_assets.spark_jobs._pipes_main import pipes_main
from near_assets.spark_jobs.apply_by_device import (
    arrow_dataset,
    run_in_session,
)
from near_assets.spark_jobs.profiles import read

STAY_COLUMNS = ["device_id", "start_ts", "end_ts", "lat", "lon"]
ASSIGNED_DDL = "poi bigint, device_id string, x double, y double"
STATS_DDL = "poi bigint, stays bigint, devices bigint, cu double, cv double, wu double, wv double"
BUCKET = "__poi_bucket"
STAY_DAY = "__stay_day"
"""The day (partition) a stay was read from."""
OUT_DAY = "__out_day"
"""The output day whose window a stay is counted in (a stay is in up to ``window_days``)."""
BUCKETS_PER_CORE = 4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON: the days, their inputs, the params")
    parser.add_argument("--master", default=None, help="Spark master (spark-submit sets it)")
    parser.add_argument("--spark-conf", default="{}", help="JSON Spark settings for the session")
    args, _ = parser.parse_known_args(argv)  # the --dagster-pipes-* arguments are read by pipes
    return args


def window_days(day: str, days: int) -> list[str]:
    """The ``days`` dates ending with ``day``, oldest first (``publishing.tables.day_window``)."""
    end = date.fromisoformat(day)
    return [(end - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


def visit_like_sql(p: placematrix.PlaceMatrixParams) -> str:
    """Spark SQL of ``placematrix.visit_like`` (the science applies it again: a no-op)."""
    lo, hi = math.ceil(p.min_dwell_s * 1e6), math.floor(p.max_dwell_s * 1e6)
    dwell = "(unix_micros(end_ts) - unix_micros(start_ts))"
    return (
        f"{dwell} BETWEEN {lo} AND {hi} AND lat IS NOT NULL AND lon IS NOT NULL "
        "AND NOT isnan(lat) AND NOT isnan(lon)"
    )


def assign_batches(
    pois: Any, p: placematrix.PlaceMatrixParams
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """``mapInPandas`` body: each batch of stays given to POIs (``pois``: a broadcast), the
    stay's day carried."""

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        index = placematrix.PoiIndex.of(pois.value)
        for batch in batches:
            out = placematrix.assign_stays(batch, index, p, carry=[STAY_DAY])
            if len(out):
                yield out[[*placematrix.ASSIGNED_COLUMNS, STAY_DAY]]

    return fn


def bucket_stats(
    pois: Any, p: placematrix.PlaceMatrixParams
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """``applyInPandas`` body: the per-POI figures of one bucket of whole POIs of one day."""

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:
        index = placematrix.PoiIndex.of(pois.value)
        stats = placematrix.cluster_stats(pdf[placematrix.ASSIGNED_COLUMNS], index, p)
        return stats.assign(**{OUT_DAY: pdf[OUT_DAY].iloc[0]})

    return fn


def stats_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The collected per-POI figures, typed as ``cluster_stats`` returns them."""
    types = {"poi": np.int64, "stays": np.int64, "devices": np.int64}
    types.update({c: np.float64 for c in ("cu", "cv", "wu", "wv")})
    return rows[placematrix.STAT_COLUMNS].astype(types)


def records(df: pd.DataFrame) -> list[list[Any]]:
    """Rows as JSON-safe lists in ``BOUNDARY_COLUMNS`` order (floats round-trip exactly)."""
    return [
        [r[0], r[1], r[2], int(r[3]), int(r[4]), float(r[5]), float(r[6]), float(r[7]), float(r[8])]
        for r in df[placematrix.BOUNDARY_COLUMNS].itertuples(index=False, name=None)
    ]


def window_pairs(days: Sequence[str], present: set[str], window: int) -> list[tuple[str, str]]:
    """(stay day, output day) for every present stay day in an output day's window."""
    return [(d, day) for day in days for d in window_days(day, window) if d in present]


def run_days(spark: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Every day of the run in one pass (see the module doc); day -> its rows and figures."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    p = placematrix.PlaceMatrixParams(**spec["params"])
    pois = arrow_dataset(spec["pois"]).to_table().to_pandas()[["poi_id", "geometry_wkt"]]
    pois["poi_id"] = pois["poi_id"].astype(str)
    index = placematrix.PoiIndex.of(pois)
    shared = spark.sparkContext.broadcast(pois)
    cores = spark.sparkContext.defaultParallelism
    buckets = max(1, min(len(pois), int(spec.get("buckets") or BUCKETS_PER_CORE * cores)))
    days, present, partition = list(spec["days"]), sorted(spec["present"]), spec["partition"]
    uris = [f"{spec['stays_root']}/{partition}={d}" for d in present]
    # each stay is assigned once, whatever the number of windows it is in
    day_of_file = F.regexp_extract(F.input_file_name(), f"{partition}=([0-9]{{4}}-[0-9-]{{5}})", 1)
    stays = read(spark, uris, STAY_COLUMNS).withColumn(STAY_DAY, day_of_file)
    assigned = stays.where(visit_like_sql(p)).mapInPandas(
        assign_batches(shared, p), f"{ASSIGNED_DDL}, {STAY_DAY} string"
    )
    pairs = spark.createDataFrame(
        window_pairs(days, set(present), int(spec["window_days"])),
        f"{STAY_DAY} string, {OUT_DAY} string",
    )
    groups = (
        assigned.join(F.broadcast(pairs), STAY_DAY)  # each stay into every window it is in
        .withColumn(BUCKET, F.pmod(F.col("poi"), F.lit(buckets)))
        .repartition(max(1, min(len(days) * buckets, BUCKETS_PER_CORE * cores)), OUT_DAY, BUCKET)
    )
    stats = (
        groups.groupBy(OUT_DAY, BUCKET)
        .applyInPandas(bucket_stats(shared, p), f"{STATS_DDL}, {OUT_DAY} string")
        .toPandas()
    )
    shared.unpersist()
    out: dict[str, Any] = {}
    for day in days:
        found = placematrix.footprints(index, stats_frame(stats[stats[OUT_DAY] == day]), p)
        out[day] = {"rows": records(found)}
    seconds = round(time.perf_counter() - started, 3)
    return {"days": out, "buckets": buckets, "seconds_science": seconds}


def run(args: argparse.Namespace, log: Callable[[str], None], spark: Any = None) -> dict[str, Any]:
    """Run the job; uses (and leaves running) ``spark`` if given."""
    return run_in_session(
        args, log, spark, "placematrix", lambda spark: run_days(spark, json.loads(args.spec))
    )


def main(argv: Sequence[str] | None = None) -> int:
    return pipes_main(
        parse_args, run, argv, brief=lambda s: {"seconds": s["seconds"], "days": len(s["days"])}
    )


if __name__ == "__main__":
    sys.exit(main())
