"""Dagster side of ``profiles.py`` (the Spark engine of demographics, affinity, campaign and
aggregate insights): where the job reads and writes lake keys, its scratch side tables, one run.

Runs in the orchestrator only (it imports Dagster); the job script itself does not.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from near_assets.spark_jobs import PROFILES
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.tables import ENGINE_OUTPUT
from resources.lake import LakeResource
from resources.spark import SparkResource

PROFILES_JOB = PROFILES


class SparkPlaces:
    """Where a Spark job finds lake keys (``uri``); inputs to ``stage`` and outputs to upload
    when the lake is on S3 but Spark runs locally (see ``spark_places``)."""

    def __init__(self, lake: LakeResource, spark: SparkResource, tmp: str | None):
        self.lake, self.spark, self.tmp = lake, spark, tmp
        self.outputs: list[str] = []

    def uri(self, key: str) -> str:
        if self.tmp is None:
            return self.spark.spark_uri(self.lake, key)
        return str(Path(self.tmp, key))

    def input(self, key: str) -> str:
        """The URI of an input key (a file or a folder), staged first when needed."""
        if self.tmp is not None:
            for obj in self.lake.list(key):
                path = Path(self.tmp, obj)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.lake.read_bytes(obj))
        return self.uri(key)

    def output(self, key: str) -> str:
        """The URI of an output folder (uploaded to ``key`` after the job when staged)."""
        self.outputs.append(key)
        return self.uri(key)

    def upload(self) -> None:
        if self.tmp is None:
            return
        for key in self.outputs:
            self.lake.delete(key)
            root = Path(self.tmp, key)
            for part in sorted(root.rglob("*.parquet")):
                rel = part.relative_to(root).as_posix()
                with self.lake.open_output(f"{key}/{rel}") as sink, part.open("rb") as src:
                    while chunk := src.read(8 << 20):
                        sink.write(chunk)


@contextmanager
def spark_places(lake: LakeResource, spark: SparkResource) -> Iterator[SparkPlaces]:
    """Spark reads the lake directly (a local folder, or ``s3a://`` on EMR), except for an S3
    lake with local Spark: inputs are copied to a temporary folder and outputs uploaded (replacing
    the lake's) when the block exits cleanly."""
    if lake.backend == "local" or spark.backend != "local":
        places = SparkPlaces(lake, spark, None)
        yield places
        return
    with tempfile.TemporaryDirectory(prefix="spark-stage-") as tmp:
        places = SparkPlaces(lake, spark, tmp)
        yield places
        places.upload()


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
