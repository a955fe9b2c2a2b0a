"""Dagster side of ``near_assets/spark_jobs/models.py`` (the Spark engine of the models): one run
of a task, and the stage spec / ``Staged`` results of a table the job writes itself.

Runs in the orchestrator only (it imports Dagster); the job script itself does not.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from near_assets.engine import arrow_schema
from near_assets.models import KINDS
from near_assets.spark_jobs import MODELS
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.spark_jobs.models import DAY
from near_assets.spark_jobs.profiles_launch import SparkPlaces
from near_assets.tables import ENGINE_OUTPUT
from publishing import journal
from publishing.tables import PART_FILE, LakeTable, run_staging_key
from publishing.wap import AuditFn, Figures, Staged, audit_needs
from resources.lake import LakeResource
from resources.spark import SparkResource

MODELS_JOB = MODELS
"""The job script (to add to ``near_assets.spark_jobs.JOB_SCRIPTS`` for EMR uploads)."""
SPARK_KINDS = KINDS | {"spark"}


def run_models_job(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    places: SparkPlaces,
    task: str,
    spec: dict[str, Any],
) -> dict[str, Any]:
    """One run of ``models.py --task <task>``; its summary (the job's figures). The spec goes as
    a lake object (``--spec @<uri>``, deleted after): a backfill's lists every input of every
    day and would outgrow EMR's step-argument limit."""
    key = f"{ENGINE_OUTPUT.key(f'{context.run_id}-models-{task}-spec')}/spec.json"
    lake.write_bytes(key, json.dumps(spec, sort_keys=True).encode())
    try:
        args = ["--task", task, "--spec", f"@{places.input(key)}"]
        return spark.run_script(context, MODELS_JOB, args, job_conf=BASE_CONF)
    finally:
        lake.delete(key)


class StageSpec:
    """Where the job writes each day of a published table (the run's staging folders, stamped)
    and what it computes for the audits (``audit_needs``)."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        table: LakeTable,
        days: Sequence[str],
        ddl: str,
        columns: Sequence[str],
        sort: Sequence[str],
        audits: Sequence[AuditFn],
        duplicates: Sequence[str] = (),
    ) -> None:
        self.folders = {
            d: run_staging_key(table.name, table.folder(d), context.run_id) for d in days
        }
        self.versions = {d: journal.new_version() for d in days}
        self.run_id = context.run_id
        self.ddl, self.columns, self.sort = ddl, list(columns), list(sort)
        self.needs = audit_needs(audits)
        self.duplicates = list(duplicates)

    def spec(self, places: SparkPlaces) -> dict[str, Any]:
        schema = arrow_schema(self.ddl, self.columns)
        return {
            "day": DAY,
            "sort": self.sort,
            "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
            "targets": {
                d: {
                    "uri": f"{places.output(folder)}/{PART_FILE}",
                    "stamp": {"version": self.versions[d], "run_id": self.run_id},
                }
                for d, folder in self.folders.items()
            },
            "rules": self.needs["rules"],
            "nulls": self.needs["nulls"],
            "duplicates": self.duplicates,
            "distinct": [],
            "medians": [],
            "value_counts": [],
            "s3_endpoint": places.lake.endpoint_url if places.lake.backend == "s3" else None,
        }

    def staged(self, reported: Mapping[str, Any]) -> dict[str, Staged]:
        """Day -> the ``Staged`` object the job wrote (its figures, digest, size)."""
        out = {}
        for d, folder in self.folders.items():
            result = (reported.get(d) or {}).get("staged")
            if result is None:
                raise dg.Failure(description=f"the Spark job wrote no object for {d} ({folder})")
            out[d] = Staged(
                key=folder,
                version=self.versions[d],
                content=result["content"],
                size=int(result["size"]),
                figures=Figures.from_dict(result["figures"]),
            )
        return out
