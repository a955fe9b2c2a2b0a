"""The engine that runs per-device science: in-process pandas, or one Spark job.

A per-device function (``near_assets.science.engine.per_device``) takes the rows of whole devices
and returns a DataFrame. ``run_per_device`` calls it in-process on the loaded rows, or hands the
input lake keys to ``SparkResource.run_per_device``, which runs the same function through
``near_assets/spark_jobs/apply_by_device.py`` (locally or on EMR) and writes its output under
``work/_engine``; the engine reads it back and deletes it.

Side tables (``sides``: small tables every call needs whole, such as the POIs or the areas) are
passed to the function as keyword arguments: as they are in-process; under Spark they are written
to a scratch object under ``work/_engine`` that each Python worker reads once (see
``apply_by_device.side_table``) and deleted after the job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import dagster as dg
import pandas as pd

from near_assets.science.engine import PerDeviceFn
from near_assets.spark_jobs import APPLY_BY_DEVICE
from near_assets.spark_jobs.apply_by_device import BASE_CONF, SIDES_PARAM
from near_assets.tables import ENGINE_OUTPUT
from resources.lake import LakeResource
from resources.spark import SparkResource

Engine = Literal["pandas", "spark"]
ENGINES: tuple[str, ...] = get_args(Engine)


def default_engine() -> Engine:
    """``$NEAR_ENGINE`` (``pandas`` when unset); any other value than an engine is an error."""
    engine = os.environ.get("NEAR_ENGINE") or "pandas"
    if engine not in ENGINES:
        raise ValueError(f"NEAR_ENGINE must be one of {', '.join(ENGINES)}; got {engine!r}")
    return engine  # type: ignore[return-value]


class EngineConfig(dg.Config):
    engine: Engine = default_engine()
    """``pandas`` (in-process) or ``spark`` (one job through the ``spark`` resource)."""


def run_per_device(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    engine: Engine,
    fn: PerDeviceFn,
    inputs: Sequence[str],
    params: Mapping[str, Any],
    load: Callable[[], pd.DataFrame],
    sides: Mapping[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``fn`` over the lake keys ``inputs``: in-process on ``load()``, or as one Spark job.

    ``sides``: small tables passed whole to every call as keyword arguments (see module doc).
    Returns the output (timestamps as ``datetime64[ns, UTC]`` under both engines) and metadata
    naming the engine that ran (``spark_*``: the job's summary figures).
    """
    sides = dict(sides or {})
    if engine == "pandas" or not inputs:
        return fn(load(), **params, **sides), {"engine": "pandas"}
    asset = context.asset_key.to_python_identifier()
    output = ENGINE_OUTPUT.key(f"{context.run_id}-{asset}")
    side_keys = {n: ENGINE_OUTPUT.key(f"{context.run_id}-side-{asset}-{n}") for n in sides}
    lake.delete(output)
    job_params = dict(params)
    if sides:
        job_params[SIDES_PARAM] = {
            n: lake.uri(lake.write_parquet(sides[n], k)) for n, k in side_keys.items()
        }
    try:
        summary = spark.run_per_device(
            context,
            script=APPLY_BY_DEVICE,
            job_conf=BASE_CONF,
            function=fn,
            inputs=list(inputs),
            output=output,
            params=job_params,
            group_by=["device_id"],
            lake=lake,
        )
    finally:
        for key in side_keys.values():
            lake.delete(key)
    out = lake.read_parquet(output)
    lake.delete(output)
    meta: dict[str, Any] = {"engine": "spark"}
    meta.update(
        {
            f"spark_{k}": v
            for k, v in summary.items()
            if isinstance(v, int | float | str) and not k.startswith("emr_")
        }
    )
    meta.update(summary.get("metadata", {}))  # EMR step/console links and log paths
    return nanosecond_timestamps(out), meta


def nanosecond_timestamps(df: pd.DataFrame) -> pd.DataFrame:
    """Spark writes microseconds: every timestamp column as ``datetime64[ns, UTC]``."""
    for col in df.columns:
        if isinstance(df[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
            df[col]
        ):
            df[col] = pd.to_datetime(df[col], utc=True).dt.as_unit("ns")
    return df
