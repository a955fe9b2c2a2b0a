"""The engine that runs per-device science: in-process pandas, or one Spark job.

A per-device function (``near_assets.science.engine.per_device``) takes the rows of whole devices
and returns a DataFrame. ``run_per_device`` calls it in-process on the loaded rows, or hands the
input lake keys to ``SparkResource.run_per_device``, which runs the same function through
``near_assets/spark_jobs/apply_by_device.py`` (locally or on EMR) and writes its output under
``work/_engine``; the engine reads it back and deletes it.

``run_per_device_days`` (Spark only) goes further: the job writes each output day as ONE Parquet
object straight to where it belongs (a published table's run staging folder, or an internal
table's partition), sorted and typed as the in-process path writes it, with the version stamp
in its footer, and reports each day's audit figures (``publishing.wap.Figures``) through Pipes:
the run process audits and publishes objects it never loads (``publishing.wap.Staged``).

Side tables (``sides``: small tables every call needs whole, such as the POIs or the areas) are
passed to the function as keyword arguments: as they are in-process; under Spark they are written
to a scratch object under ``work/_engine`` that each Python worker reads once (see
``apply_by_device.side_table``) and deleted after the job.

Jobs with their own script (``clean_pings``, audience, profiles, models) find lake keys through
``SparkPlaces`` (``spark_places``): directly (a local folder, or ``s3a://`` on EMR), or, for an
S3 lake with local Spark, inputs streamed to a temporary folder and the output folders streamed
back (``download``/``upload``: never a whole object in memory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import dagster as dg
import pandas as pd

from near_assets.science.engine import PerDeviceFn
from near_assets.spark_jobs import APPLY_BY_DEVICE
from near_assets.spark_jobs.apply_by_device import BASE_CONF, SIDES_PARAM, STAGE_PARAM
from near_assets.tables import ENGINE_OUTPUT
from publishing import journal
from publishing.tables import PART_FILE
from publishing.wap import Figures, Staged
from resources.lake import LakeResource
from resources.spark import SparkResource

ARROW_TYPES = {
    "string": "string",
    "timestamp": "timestamp[ns, tz=UTC]",
    "double": "double",
    "int": "int32",
    "bigint": "int64",
    "boolean": "bool",
}
"""Spark DDL type -> the Arrow type the in-process path writes (pandas ``object`` strings,
``datetime64[ns, UTC]``, ``int32`` counts)."""

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


STREAM_CHUNK = 8 << 20
"""Bytes per read when staging objects to, or uploading them from, a local folder."""


def download(lake: LakeResource, key: str, path: str | os.PathLike[str]) -> int:
    """Stream one lake object to a local file (``STREAM_CHUNK`` at a time; ranged reads of one
    object version on S3): never the whole object in memory. Returns the bytes copied."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    with lake.open_input(key) as src, path.open("wb") as dst:
        while chunk := src.read(STREAM_CHUNK):
            dst.write(chunk)
            copied += len(chunk)
    return copied


def upload(lake: LakeResource, path: str | os.PathLike[str], key: str) -> None:
    """Stream one local file to a lake object (multipart on S3 above the lake's threshold)."""
    with lake.open_output(key) as sink, Path(path).open("rb") as src:
        shutil.copyfileobj(src, sink, STREAM_CHUNK)


class SparkPlaces:
    """Where a Spark job reads and writes lake keys.

    Spark reads the lake directly (a local folder, or ``s3a://`` on EMR: ``tmp`` is None),
    except for an S3 lake with local Spark: there inputs are staged (streamed) to the temporary
    folder ``tmp`` first and the output folders uploaded (streamed, replacing the lake's) after
    the job (``upload``). ``spark_places`` makes one for a block.
    """

    def __init__(self, lake: LakeResource, spark: SparkResource, tmp: str | None):
        self.lake, self.spark, self.tmp = lake, spark, tmp
        self.outputs: list[str] = []

    @property
    def staged(self) -> bool:
        """True when the job reads and writes a local copy (S3 lake, local Spark)."""
        return self.tmp is not None

    def uri(self, key: str) -> str:
        """Where the job finds ``key`` (nothing staged)."""
        if self.tmp is None:
            return self.spark.spark_uri(self.lake, key)
        return str(Path(self.tmp, key))

    def input(self, key: str) -> str:
        """The URI of an input key (a file or a folder), staged first when needed."""
        if self.tmp is not None:
            for obj in self.lake.list(key):
                download(self.lake, obj, Path(self.tmp, obj))
        return self.uri(key)

    def output(self, key: str) -> str:
        """The URI of an output folder (uploaded to ``key`` after the job when staged)."""
        self.outputs.append(key)
        return self.uri(key)

    def upload(self) -> None:
        """Replace each output folder in the lake by the Parquet parts the job wrote."""
        if self.tmp is None:
            return
        for key in self.outputs:
            self.lake.delete(key)
            root = Path(self.tmp, key)
            for part in sorted(root.rglob("*.parquet")):
                upload(self.lake, part, f"{key}/{part.relative_to(root).as_posix()}")


@contextmanager
def spark_places(lake: LakeResource, spark: SparkResource) -> Iterator[SparkPlaces]:
    """``SparkPlaces`` for one job: staged through a temporary folder for an S3 lake with local
    Spark (outputs uploaded when the block exits cleanly), else direct."""
    if lake.backend == "local" or spark.backend != "local":
        yield SparkPlaces(lake, spark, None)
        return
    with tempfile.TemporaryDirectory(prefix="spark-stage-") as tmp:
        places = SparkPlaces(lake, spark, tmp)
        yield places
        places.upload()


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
    if engine == "pandas" or not inputs:
        return fn(load(), **params, **dict(sides or {})), {"engine": "pandas"}
    _, meta = _spark_job(context, lake, spark, fn, inputs, params, sides)
    output = ENGINE_OUTPUT.key(f"{context.run_id}-{context.asset_key.to_python_identifier()}")
    out = lake.read_parquet(output)
    lake.delete(output)
    return nanosecond_timestamps(out), meta


def nanosecond_timestamps(df: pd.DataFrame) -> pd.DataFrame:
    """Spark writes microseconds: every timestamp column as ``datetime64[ns, UTC]``."""
    for col in df.columns:
        if isinstance(df[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
            df[col]
        ):
            df[col] = pd.to_datetime(df[col], utc=True).dt.as_unit("ns")
    return df


def arrow_schema(ddl: str, columns: Sequence[str]) -> Any:
    """The Arrow schema of ``columns`` of a per-device function's Spark DDL, typed as the
    in-process engine writes them (``ARROW_TYPES``)."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "timestamp[ns, tz=UTC]": pa.timestamp("ns", tz="UTC"),
        "double": pa.float64(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
    }
    fields = {}
    for part in ddl.split(","):
        name, kind = part.split()
        fields[name] = types[ARROW_TYPES[kind.lower()]]
    return pa.schema([(c, fields[c]) for c in columns])


def run_per_device_days(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    fn: PerDeviceFn,
    inputs: Sequence[str],
    params: Mapping[str, Any],
    *,
    targets: Mapping[str, str],
    columns: Sequence[str],
    day: str,
    sort: Sequence[str],
    needs: Mapping[str, Any] | None = None,
    stamped: bool = True,
    sides: Mapping[str, pd.DataFrame] | None = None,
    input_windows: Mapping[str, Sequence[str]] | None = None,
    input_day: str | None = None,
) -> tuple[dict[str, Staged], dict[str, Any]]:
    """``fn`` over the lake keys ``inputs`` as one Spark job that writes one object per day.

    ``targets``: day -> the lake folder the day's ``part-0.parquet`` goes to (a run staging
    folder, ``publishing.tables.run_staging_key``, or an internal table's partition); ``day``:
    the SQL expression of an output row's day; ``sort``: the row order within a day (the
    in-process path's); ``columns``: the written columns (typed by ``arrow_schema``). ``needs``:
    what to compute per day, ``publishing.wap.audit_needs(audits)`` plus ``distinct``,
    ``medians``, ``value_counts`` (column lists) for the metadata. ``stamped``: put a version
    stamp in each footer (published tables). ``input_windows``: day -> days whose input rows
    (by the SQL ``input_day``) count their distinct devices (returned as
    ``meta["input_distinct"]``).

    Returns day -> ``Staged`` (folder, version, content digest, size, ``Figures``) and the
    metadata naming the engine (``spark_*``: the job's figures). The run process reads nothing
    the job wrote.
    """
    import base64

    need = dict(needs or {})
    rules = dict(need.get("rules", {}))
    duplicates = list(need.get("duplicates", []))
    for rule in rules.values():
        key = ",".join(rule.get("unique", []))
        if key and key not in duplicates:
            duplicates.append(key)
    for key in duplicates:  # found as adjacent repeats: the keys must lead the sort
        if list(sort[: len(key.split(","))]) != key.split(","):
            raise ValueError(f"duplicate keys {key} must be a prefix of the sort {list(sort)}")
    schema = arrow_schema(fn.spark_schema, columns)  # type: ignore[attr-defined]
    run_id = context.run_id
    versions = {d: journal.new_version() for d in targets}
    spec = {
        "day": day,
        "sort": list(sort),
        "schema": base64.b64encode(schema.serialize().to_pybytes()).decode(),
        "targets": {
            d: {
                "uri": spark.spark_uri(lake, f"{folder}/{PART_FILE}"),
                "stamp": {"version": versions[d], "run_id": run_id} if stamped else None,
            }
            for d, folder in targets.items()
        },
        "rules": rules,
        "nulls": list(need.get("nulls", [])),
        "duplicates": duplicates,
        "distinct": list(need.get("distinct", [])),
        "medians": list(need.get("medians", [])),
        "value_counts": list(need.get("value_counts", [])),
        "input_windows": {d: list(w) for d, w in (input_windows or {}).items()},
        "input_day": input_day,
        "s3_endpoint": lake.endpoint_url if lake.backend == "s3" else None,
    }
    summary, meta = _spark_job(context, lake, spark, fn, inputs, params, sides, spec)
    staged = {}
    for d, folder in targets.items():
        out = summary.get("days", {}).get(d)
        if out is None:  # no input at all: the job did not run
            raise dg.Failure(f"the Spark job wrote no object for {d} ({folder})")
        staged[d] = Staged(
            key=folder,
            version=versions[d],
            content=out["content"],
            size=int(out["size"]),
            figures=Figures.from_dict(out["figures"]),
        )
    if input_windows:
        meta["input_distinct"] = summary.get("input_distinct", {})
    return staged, meta


def _spark_job(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    spark: SparkResource,
    fn: PerDeviceFn,
    inputs: Sequence[str],
    params: Mapping[str, Any],
    sides: Mapping[str, pd.DataFrame] | None,
    stage: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``apply_by_device`` job (side tables written to scratch and deleted after); returns
    its summary and the metadata naming the engine. Without ``stage`` the output is the scratch
    folder ``ENGINE_OUTPUT.key(<run>-<asset>)``, left for the caller to read and delete."""
    sides = dict(sides or {})
    asset = context.asset_key.to_python_identifier()
    output = ENGINE_OUTPUT.key(f"{context.run_id}-{asset}")
    side_keys = {n: ENGINE_OUTPUT.key(f"{context.run_id}-side-{asset}-{n}") for n in sides}
    lake.delete(output)
    job_params = dict(params)
    if sides:
        job_params[SIDES_PARAM] = {
            n: lake.uri(lake.write_parquet(sides[n], k)) for n, k in side_keys.items()
        }
    if stage is not None:
        job_params[STAGE_PARAM] = stage
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
    meta: dict[str, Any] = {"engine": "spark"}
    meta.update(
        {
            f"spark_{k}": v
            for k, v in summary.items()
            if isinstance(v, int | float | str) and not k.startswith("emr_")
        }
    )
    meta.update(summary.get("metadata", {}))  # EMR step/console links and log paths
    return summary, meta
