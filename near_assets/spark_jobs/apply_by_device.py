"""Run one per-device science function over Parquet inputs with Spark (a dagster-pipes script).

    apply_by_device.py --function near_assets.spark_jobs.examples:count_pings \
        --input s3a://bucket/lake/work/clean_pings/date=2024-01-01 [more inputs ...] \
        --output s3a://bucket/lake/work/pings_per_device/date=2024-01-01 \
        --params '{"max_accuracy_m": 100}' --group-by device_id [--buckets auto]

The function (``fn(df, **params) -> DataFrame`` marked with ``per_device(schema)``) runs through
``applyInPandas`` and sees whole groups, with timestamps as ``datetime64[ns, UTC]`` just like the
in-process engine. The output folder is replaced.

**Device buckets.** Per-device functions take the rows of one *or more* whole devices (the
in-process engine passes the whole day), so with ``--group-by device_id`` the rows are grouped by
a bucket, ``pmod(hash(device_id), n)``, and the function is called once per bucket with every
row of many devices: a few large, vectorised pandas calls instead of one small call (and one
Arrow round trip) per device. ``--buckets``:

- ``auto`` (default): ``max(4 x spark.default.parallelism, ceil(input rows / 1,000,000))``,
  so every task slot gets several buckets and no bucket holds much more than a million rows;
- ``N`` > 0: exactly N buckets;
- ``0``: one call per group (``groupBy(group_by)``), for functions that need it.

Other ``--group-by`` keys (e.g. ``device_id,date``) always run one call per group: the function
may not split its input by them. Within a call rows are sorted by the group keys and then the
other columns, so the result does not depend on the order of Spark's shuffle. The bucket column
never reaches the function or the output.

**Side tables.** ``params["__sides__"]`` (``{name: Parquet URI}``, set by ``near_assets.engine``)
names small tables every call needs whole (POIs, areas): each Python worker reads each one once
(``side_table``, cached by URI) and the function gets it as the keyword argument ``name``, just as
the in-process engine passes the DataFrame itself.

Pipes parameters come from environment variables (local subprocess, EMR Serverless) or from
``--dagster-pipes-context/--dagster-pipes-messages`` arguments (EMR steps); S3 locations are
read and written with boto3. Run without Dagster, the script just prints its summary.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
}
S3_SCHEMES = ("s3://", "s3a://", "s3n://")
DEVICE_KEY = "device_id"
BUCKET_COLUMN = "__device_bucket"
BUCKETS_PER_SLOT = 4
MAX_ROWS_PER_BUCKET = 1_000_000
SIDES_PARAM = "__sides__"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--function", required=True, help="module:qualname of the function")
    parser.add_argument("--input", nargs="+", required=True, help="Parquet files or folders")
    parser.add_argument("--output", required=True, help="output folder (replaced)")
    parser.add_argument("--params", default="{}", help="JSON keyword arguments for the function")
    parser.add_argument("--group-by", default="device_id", help="comma-separated group columns")
    parser.add_argument(
        "--buckets",
        default="auto",
        help="device buckets: 'auto', N > 0, or 0 for one call per group (see module doc)",
    )
    parser.add_argument("--master", default=None, help="Spark master (spark-submit sets it)")
    parser.add_argument("--spark-conf", default="{}", help="JSON Spark settings for the session")
    args, _ = parser.parse_known_args(argv)  # the --dagster-pipes-* arguments are read by pipes
    return args


def load_function(path: str) -> Callable[..., pd.DataFrame]:
    """Import ``module:qualname``; it must carry ``spark_schema`` (see ``per_device``)."""
    module, _, qualname = path.partition(":")
    if not module or not qualname:
        raise ValueError(f"--function must look like 'package.module:function', got {path!r}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not getattr(obj, "spark_schema", None):
        raise ValueError(f"{path} has no spark_schema: decorate it with @per_device(schema)")
    return obj


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def arrow_dataset(uri: str) -> Any:
    """A pyarrow dataset over the Parquet file or folder ``uri`` (local, s3://, s3a://)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if uri.startswith(S3_SCHEMES):
        path = uri.split("://", 1)[1]
        if endpoint := os.environ.get("AWS_ENDPOINT_URL"):
            fs: pafs.FileSystem = pafs.S3FileSystem(endpoint_override=endpoint)
        else:  # resolves the bucket's region
            fs, path = pafs.FileSystem.from_uri(f"s3://{path}")
    else:
        fs, path = pafs.LocalFileSystem(), uri.replace("file://", "", 1)
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")


def nanosecond_columns(uri: str) -> set[str]:
    """Columns stored as ``TIMESTAMP(NANOS)``, which Spark reads as longs (``nanosAsLong``)."""
    import pyarrow as pa

    schema = arrow_dataset(uri).schema
    return {f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"}


_SIDE_TABLES: dict[str, pd.DataFrame] = {}


def side_table(uri: str) -> pd.DataFrame:
    """The side table at ``uri``, read once per Python worker (the same object on every call)."""
    if uri not in _SIDE_TABLES:
        _SIDE_TABLES[uri] = arrow_dataset(uri).to_table().to_pandas()
    return _SIDE_TABLES[uri]


def pipes_io(loader: Any) -> tuple[Any, Any]:
    """Context loader and message writer for the params ``loader`` found (None: the defaults)."""
    from dagster_pipes import PipesS3ContextLoader, PipesS3MessageWriter

    on_s3_ctx = "bucket" in loader.load_context_params()
    on_s3_msg = "bucket" in loader.load_messages_params()
    if not (on_s3_ctx or on_s3_msg):
        return None, None
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    return (
        PipesS3ContextLoader(client) if on_s3_ctx else None,
        PipesS3MessageWriter(client, interval=5) if on_s3_msg else None,
    )


def open_pipes():
    """Open dagster-pipes from CLI arguments (EMR steps) or environment variables (elsewhere)."""
    from dagster_pipes import PipesCliArgsParamsLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    cli = PipesCliArgsParamsLoader()
    loader = cli if cli.is_dagster_pipes_process() else PipesEnvVarParamsLoader()
    if not loader.is_dagster_pipes_process():
        return open_dagster_pipes()
    context_loader, message_writer = pipes_io(loader)
    return open_dagster_pipes(
        params_loader=loader, context_loader=context_loader, message_writer=message_writer
    )


def spark_session(master: str | None, conf: dict[str, str]):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("apply_by_device")
    if master:
        builder = builder.master(master)
    for key, value in {**BASE_CONF, **conf}.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def to_utc(pdf: pd.DataFrame) -> pd.DataFrame:
    """Spark hands timestamps over as naive session-time (UTC) values: make them UTC-aware."""
    for col in pdf.columns:
        if pd.api.types.is_datetime64_dtype(pdf[col]):  # naive only; tz-aware is a different dtype
            pdf[col] = pdf[col].dt.tz_localize("UTC")
    return pdf


def clean_local_output(output: str) -> None:
    """Drop Hadoop's ``_SUCCESS`` and ``.crc`` files so the folder holds only Parquet parts."""
    root = Path(output.replace("file://", "", 1))
    for path in root.rglob("*"):
        if path.is_file() and (path.name.startswith(("_", ".")) or path.suffix == ".crc"):
            path.unlink()


def partition_values(uri: str) -> dict[str, str]:
    """Hive partition values in the trailing ``key=value`` folders of ``uri``."""
    values: dict[str, str] = {}
    for part in reversed(uri.rstrip("/").split("/")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            break
        values.setdefault(key, value)
    return values


def read_inputs(spark: Any, uris: Sequence[str]) -> Any:
    """Union of the inputs; ``TIMESTAMP(NANOS)`` columns become timestamps (floored to µs) and
    the partition values of a partition folder given directly (``.../date=D``) become columns."""
    from pyspark.sql import functions as F

    frames = []
    for uri in uris:
        df = spark.read.parquet(uri)
        for col in sorted(nanosecond_columns(uri) & set(df.columns)):
            micros = F.expr(f"(`{col}` - pmod(`{col}`, 1000)) div 1000")  # exact floor
            df = df.withColumn(col, F.timestamp_micros(micros))
        for key, value in partition_values(uri).items():
            if key not in df.columns:
                df = df.withColumn(key, F.lit(value))
        frames.append(df)
    out = frames[0]
    for df in frames[1:]:
        out = out.unionByName(df, allowMissingColumns=True)
    return out


def bucket_count(buckets: str | int, group_by: Sequence[str], rows: int, parallelism: int) -> int:
    """Number of device buckets (0: one call per group) for ``--buckets`` (see module doc)."""
    if list(group_by) != [DEVICE_KEY]:
        return 0
    text = str(buckets).strip().lower()
    if text == "auto":
        by_rows = -(-rows // MAX_ROWS_PER_BUCKET)
        return max(BUCKETS_PER_SLOT * max(parallelism, 1), by_rows, 1)
    n = int(text)
    if n < 0:
        raise ValueError(f"--buckets must be 'auto' or >= 0, got {buckets!r}")
    return n


def canonical_order(pdf: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Rows sorted by the group keys, then the other columns (Spark's row order is arbitrary)."""
    keys = [*group_by, *(c for c in pdf.columns if c not in group_by)]
    try:
        return pdf.sort_values(keys, kind="stable", ignore_index=True)
    except TypeError:  # a column of values that do not compare (lists, mixed types)
        return pdf.sort_values(list(group_by), kind="stable", ignore_index=True)


def run(args: argparse.Namespace, log: Callable[[str], None], spark: Any = None) -> dict[str, Any]:
    """Apply the function and write the output; uses (and leaves running) ``spark`` if given."""
    started = time.perf_counter()
    fn = load_function(args.function)
    params = json.loads(args.params)
    group_by = [c.strip() for c in args.group_by.split(",") if c.strip()]
    own_session = spark is None
    if own_session:
        spark = spark_session(args.master, json.loads(args.spark_conf))
    else:
        for key, value in BASE_CONF.items():
            spark.conf.set(key, value)
    session_s = time.perf_counter() - started

    df = read_inputs(spark, args.input)
    schema = spark.createDataFrame([], fn.spark_schema).schema  # DDL -> StructType, Spark 3.5+
    names = schema.fieldNames()

    input_rows = df.count()
    parallelism = spark.sparkContext.defaultParallelism
    buckets = bucket_count(getattr(args, "buckets", "auto"), group_by, input_rows, parallelism)

    sides = dict(params.pop(SIDES_PARAM, None) or {})

    def apply(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = canonical_order(pdf.drop(columns=[BUCKET_COLUMN], errors="ignore"), group_by)
        tables = {name: side_table(uri) for name, uri in sides.items()}
        return fn(to_utc(pdf), **params, **tables)[names]

    if buckets:
        from pyspark.sql import functions as F

        bucket = F.pmod(F.hash(F.col(DEVICE_KEY)), F.lit(buckets))
        grouped = df.withColumn(BUCKET_COLUMN, bucket).groupBy(BUCKET_COLUMN)
    else:
        grouped = df.groupBy(*group_by)
    grouped.applyInPandas(apply, schema=schema).write.mode("overwrite").parquet(args.output)
    if is_local(args.output):
        clean_local_output(args.output)
    rows = spark.read.parquet(args.output).count()
    seconds = time.perf_counter() - started
    summary = {
        "function": args.function,
        "group_by": group_by,
        "buckets": buckets,
        "input_uris": list(args.input),
        "output_uri": args.output,
        "input_rows": input_rows,
        "side_tables": sorted(sides),
        "rows": rows,
        "seconds": round(seconds, 3),
        "session_start_s": round(session_s, 3),
        "rows_per_s": round(input_rows / max(seconds - session_s, 1e-9)),
        "spark_version": spark.version,
        "master": spark.sparkContext.master,
    }
    calls = f"{buckets} device buckets" if buckets else "one call per group"
    log(
        f"apply_by_device {args.function}: {input_rows} rows in, {rows} out, {calls}, "
        f"{seconds:.1f} s"
    )
    if own_session:
        spark.stop()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with open_pipes() as pipes:
        summary = run(args, pipes.log.info)
        pipes.report_custom_message(summary)
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
