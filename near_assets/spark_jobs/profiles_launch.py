"""Dagster side of ``profiles.py`` (the Spark engine of demographics, affinity, campaign and
aggregate insights): its scratch side tables, one run (where the job reads and writes lake
keys: ``near_assets.engine.SparkPlaces``, re-exported here).

Runs in the orchestrator only (it imports Dagster); the job script itself does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.engine import SparkPlaces as SparkPlaces  # importable from here, as before
from near_assets.engine import spark_places as spark_places
from near_assets.spark_jobs import PROFILES
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.tables import ENGINE_OUTPUT
from resources.lake import LakeResource
from resources.spark import SparkResource

PROFILES_JOB = PROFILES


def scratch_key(context: dg.AssetExecutionContext, name: str) -> str:
    """A scratch key of this run and asset under ``work/_engine`` (deleted after use)."""
    asset = context.asset_key.to_python_identifier()
    return ENGINE_OUTPUT.key(f"{context.run_id}-{asset}-{name}")


@contextmanager
def scratch(
    context: dg.AssetExecutionContext, lake: LakeResource, tables: Mapping[str, pd.DataFrame]
) -> Iterator[dict[str, str]]:
    """Small side tables written to scratch keys for the job (deleted afterwards), and any
    scratch outputs registered in the yielded mapping (``name -> key``), also deleted."""
    keys = {name: scratch_key(context, name) for name in tables}
    try:
        for name, df in tables.items():
            lake.write_parquet(df, keys[name])
        yield keys
    finally:
        for key in keys.values():
            lake.delete(key)


def run_profiles_job(
    context: dg.AssetExecutionContext, spark: SparkResource, task: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """One run of ``profiles.py --task <task>``; its summary (the job's figures)."""
    args = ["--task", task, "--spec", json.dumps(spec, sort_keys=True)]
    return spark.run_script(context, PROFILES_JOB, args, job_conf=BASE_CONF)


def engine_metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``engine: spark`` and the job's run figures for the materialization."""
    meta: dict[str, Any] = {
        "engine": "spark",
        "spark_backend": str(summary.get("engine", "")),
        "spark_version": str(summary.get("spark_version", "")),
        "spark_seconds": float(summary.get("seconds", 0.0)),
    }
    meta.update(summary.get("metadata", {}))  # EMR step/console links and log paths
    return meta
