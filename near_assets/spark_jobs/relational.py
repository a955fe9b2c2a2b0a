"""Spark SQL twins of per-device functions whose logic is relational (a job script module).

``apply_by_device`` runs a per-device function through ``applyInPandas``: every input row
crosses to a Python worker as Arrow and back. When the function is a plain aggregation, its
twin here computes the same rows in Spark SQL (no Python worker, no Arrow round trip):
``TWINS`` maps the function's ``module:qualname`` to a ``twin(df, **params) -> DataFrame`` over
the job's input (the union ``read_inputs`` builds, partition columns included) with the
function's output columns. ``apply_by_device`` uses a twin when there is one (summary
``relational: true``), and the in-process engine keeps the pandas function: the same rows,
bit for bit (means summed as pandas sums them, ``kahan_mean``; the same content digests
downstream), tested by ``tests/test_spark_chain.py``.

Imports ``pyspark`` and the science's constants only (no ``dagster``): it ships to EMR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HOUR_US = 3_600 * 10**6
CELL_M = 100.0
"""``home.HomeParams.cell_m`` (``tests/test_spark_chain.py`` checks it; the science is not
imported here, so that a job without a twin does not load it)."""


def cells(lat: Any, lon: Any, cell_m: float) -> tuple[Any, Any]:
    """``home._cells`` in Spark: the same double arithmetic in the same order."""
    from pyspark.sql import functions as F

    from near_assets.science.stays import EARTH_M_PER_DEG

    e, c = F.lit(float(EARTH_M_PER_DEG)), F.lit(float(cell_m))
    cy = F.floor(lat * e / c).cast("long")
    row_lat = (cy + F.lit(0.5)) * c / e
    cx = F.floor(lon * F.cos(F.radians(row_lat)) * e / c).cast("long")
    return cy, cx


def kahan_mean(values: str, field: str) -> str:
    """SQL: the mean of ``field`` over the array of structs ``values`` exactly as pandas'
    ``groupby().mean()`` computes it (``group_mean``: Kahan-compensated sum in row order, a
    NaN compensation reset to 0, then divided by the count), so that both engines give the
    same bits."""
    y = f"(x.{field} - acc.c)"
    t = f"(acc.s + {y})"
    c = f"(({t} - acc.s) - {y})"
    step = f"named_struct('s', {t}, 'c', CASE WHEN isnan({c}) THEN 0D ELSE {c} END)"
    return (
        f"aggregate({values}, named_struct('s', 0D, 'c', 0D), (acc, x) -> {step}, "
        f"acc -> acc.s / size({values}))"
    )


def ping_hours_by_day(df: Any, cell_m: float = CELL_M) -> Any:
    """``near_assets.science.ping_hours.ping_hours_by_day``: one row per date, device, UTC hour
    and ~100 m cell; ``ts`` the hour's start, lat/lon the mean of its pings (summed in the
    order the per-device engine sees them, by ts, lat, lon: the same bits as pandas)."""
    from pyspark.sql import functions as F

    cy, cx = cells(F.col("lat"), F.col("lon"), cell_m)
    micros = F.unix_micros(F.col("ts"))
    hour = (micros - F.pmod(micros, F.lit(HOUR_US))).alias("_hour_us")  # exact floor
    pings = F.sort_array(F.collect_list(F.struct(micros.alias("t"), "lat", "lon")))
    return (
        df.select(
            "date", "device_id", "ts", hour, cy.alias("cell_y"), cx.alias("cell_x"), "lat", "lon"
        )
        .groupBy("date", "device_id", "_hour_us", "cell_y", "cell_x")
        .agg(pings.alias("_pings"))
        .select(
            "date",
            "device_id",
            F.timestamp_micros(F.col("_hour_us")).alias("ts"),
            F.expr(kahan_mean("_pings", "lat")).alias("lat"),
            F.expr(kahan_mean("_pings", "lon")).alias("lon"),
            "cell_y",
            "cell_x",
        )
    )


TWINS: dict[str, Callable[..., Any]] = {
    "near_assets.science.ping_hours:ping_hours_by_day": ping_hours_by_day,
}
"""``module:qualname`` of a per-device function -> its Spark SQL twin."""
