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

**Relational twins.** A function with a Spark SQL twin (``relational.TWINS``, e.g.
``home_ping_hours``' reduction: a group-by and two means) runs as that twin: the same rows
without a Python worker or an Arrow round trip (summary ``relational: true``).

**Shuffle partitions** are raised to one per ``ROWS_PER_SHUFFLE_PARTITION`` input rows
(``sized_shuffle``; never lowered), so a large day does not sort a quarter of itself per task.

**Side tables.** ``params["__sides__"]`` (``{name: Parquet URI}``, set by ``near_assets.engine``)
names small tables every call needs whole (POIs, areas): each Python worker reads each one once
(``side_table``, cached by URI) and the function gets it as the keyword argument ``name``, just as
the in-process engine passes the DataFrame itself.

**Staged days.** ``params["__stage__"]`` (set by ``near_assets.engine.run_per_device_days``)
writes the output as ONE Parquet object per day straight to its final place (a published
table's run staging folder, or an internal table's partition), instead of ``--output``:
rows are split by the SQL ``day`` expression, sorted by ``sort`` within each day and cast to
the Arrow ``schema`` the in-process engine writes (same dtypes, pandas metadata), then
streamed by one task per day (``write_days``: pyarrow, multipart on S3; locally a temporary file
renamed into place). While writing, the task computes the day's audit figures (rows, nulls,
rows violating each ``rules`` SQL predicate or repeating ``unique`` keys, distinct values,
medians, value counts) and the content digest of the rows, and puts the ``wap`` stamp
(version, content, run) in the footer. The summary's ``days`` maps each day to those figures,
the object's size and digest. ``input_windows`` counts distinct devices of the input per day
window (``input_day`` expression), in the pass that counts the input rows.

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

from near_assets.spark_jobs._pipes_main import open_pipes as open_pipes  # imported from here too
from near_assets.spark_jobs._pipes_main import pipes_io as pipes_io
from near_assets.spark_jobs._pipes_main import pipes_main
from near_assets.spark_jobs.relational import TWINS

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
ROWS_PER_SHUFFLE_PARTITION = 2_000_000
"""A job's shuffles get at least one partition per this many input rows (``sized_shuffle``)."""
SIDES_PARAM = "__sides__"
STAGE_PARAM = "__stage__"
DAY_COLUMN = "__day"
FLAG_PREFIX = "__bad_"


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


def spark_session(master: str | None, conf: dict[str, str]):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("apply_by_device")
    if master:
        builder = builder.master(master)
    for key, value in {**BASE_CONF, **conf}.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def run_in_session(
    args: argparse.Namespace,
    log: Callable[[str], None],
    spark: Any,
    label: str,
    body: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """``body(spark)`` in the given session (``BASE_CONF`` set; left running) or in a session of
    its own from ``--master``/``--spark-conf`` (stopped after); its result plus the job's
    timings, Spark version and master (the summary a job script reports)."""
    started = time.perf_counter()
    own_session = spark is None
    if own_session:
        spark = spark_session(args.master, json.loads(args.spark_conf))
    else:
        for key, value in BASE_CONF.items():
            spark.conf.set(key, value)
    session_s = time.perf_counter() - started
    summary = {
        **body(spark),
        "seconds": round(time.perf_counter() - started, 3),
        "session_start_s": round(session_s, 3),
        "spark_version": spark.version,
        "master": spark.sparkContext.master,
    }
    log(f"{label}: {summary['seconds']:.1f} s")
    if own_session:
        spark.stop()
    return summary


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


def sized_shuffle(spark: Any, rows: int) -> int:
    """Raise ``spark.sql.shuffle.partitions`` to one per ``ROWS_PER_SHUFFLE_PARTITION`` input
    rows (never lower it: a cluster's setting stays when larger); returns the setting."""
    current = int(spark.conf.get("spark.sql.shuffle.partitions", "200"))
    wanted = max(current, -(-int(rows) // ROWS_PER_SHUFFLE_PARTITION))
    if wanted != current:
        spark.conf.set("spark.sql.shuffle.partitions", str(wanted))
    return wanted


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


# ---- staged days: one object per day, audit figures computed while writing -------------------


class ContentDigest:
    """Copy of ``publishing.journal.ContentDigest`` (the cluster imports only ``near_assets``;
    ``tests/test_spark_chain.py`` checks both give the same digest)."""

    def __init__(self) -> None:
        import hashlib

        self._h = hashlib.sha256()
        self._rows = 0
        self._dtypes: str | None = None

    def update(self, df: pd.DataFrame) -> None:
        if self._dtypes is None:
            self._dtypes = json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()])
            self._h.update(self._dtypes.encode())
        self._rows += len(df)
        if len(df.columns) and len(df):
            self._h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(f"rows={self._rows}".encode())
        return h.hexdigest()[:24]


def arrow_schema(encoded: str) -> Any:
    """The Arrow schema ``near_assets.engine`` serialised (base64 IPC)."""
    import base64

    import pyarrow as pa

    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))


def _filesystem(uri: str, endpoint: str | None = None) -> tuple[Any, str]:
    """The filesystem of ``uri`` and the path in it (``endpoint``: an S3-compatible server,
    else ``AWS_ENDPOINT_URL``, else AWS)."""
    import pyarrow.fs as pafs

    if uri.startswith(S3_SCHEMES):
        path = uri.split("://", 1)[1]
        if endpoint := endpoint or os.environ.get("AWS_ENDPOINT_URL"):
            return pafs.S3FileSystem(endpoint_override=endpoint), path
        fs, path = pafs.FileSystem.from_uri(f"s3://{path}")
        return fs, path
    return pafs.LocalFileSystem(), uri.replace("file://", "", 1)


class DayWriter:
    """One day's Parquet object and its audit figures (see the module doc, *Staged days*)."""

    def __init__(self, day: str, spec: dict[str, Any], schema: Any) -> None:
        import pyarrow.parquet as pq

        self.day, self.spec, self.schema = day, spec, schema
        target = spec["targets"][day]
        self.stamp = target.get("stamp")
        import pyarrow.fs as pafs

        fs, path = _filesystem(target["uri"], spec.get("s3_endpoint"))
        self.final = path
        if isinstance(fs, pafs.LocalFileSystem):  # local: a temporary file renamed in place
            import uuid

            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            self.tmp: str | None = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-part.parquet")
            self.sink = fs.open_output_stream(self.tmp)
        else:  # S3: multipart upload, the object appears whole on close
            self.tmp = None
            self.sink = fs.open_output_stream(path)
        self.writer = pq.ParquetWriter(self.sink, schema, compression="zstd")
        self.digest = ContentDigest()
        self.digest.update(schema.empty_table().to_pandas())
        self.rows = 0
        self.nulls = dict.fromkeys(spec.get("nulls", []), 0)
        self.violations = dict.fromkeys(spec.get("rules", {}), 0)
        self.duplicates = dict.fromkeys(spec.get("duplicates", []), 0)
        self.distinct_sorted = [c for c in spec.get("distinct", []) if c == spec["sort"][0]]
        self.distinct_sets: dict[str, set] = {
            c: set() for c in spec.get("distinct", []) if c not in self.distinct_sorted
        }
        self.distinct_counts = dict.fromkeys(self.distinct_sorted, 0)
        self.medians: dict[str, list] = {c: [] for c in spec.get("medians", [])}
        self.value_counts: dict[str, dict[str, int]] = {c: {} for c in spec.get("value_counts", [])}
        self.last: dict[str, Any] = {}  # last row's keys of the previous batch

    def _repeats(self, pdf: pd.DataFrame, keys: Sequence[str]) -> Any:
        """Rows whose ``keys`` equal the previous row's (rows sorted by the keys: duplicates)."""
        import numpy as np

        cols = list(keys)
        carry = self.last.get(",".join(cols))
        prev = pdf[cols].shift(1)
        if carry is not None:
            prev.iloc[0] = carry
        same = np.ones(len(pdf), dtype=bool)
        for c in cols:
            same &= (pdf[c].to_numpy(object) == prev[c].to_numpy(object)) & prev[c].notna()
        if carry is None:
            same[0] = False
        self.last[",".join(cols)] = list(pdf[cols].iloc[-1])
        return same

    def add(self, table: Any) -> None:
        import numpy as np

        if table.num_rows == 0:
            return
        data = table.select(self.schema.names).cast(self.schema)
        pdf = data.to_pandas()
        self.digest.update(pdf)
        self.rows += len(pdf)
        for c in self.nulls:
            self.nulls[c] += int(pdf[c].isna().sum())
        repeats = {k: self._repeats(pdf, k.split(",")) for k in self.duplicates}
        for i, (name, rule) in enumerate(self.spec.get("rules", {}).items()):
            bad = table.column(f"{FLAG_PREFIX}{i}").to_numpy(zero_copy_only=False).astype(bool)
            if rule.get("unique"):  # its keys are among spec["duplicates"] (engine adds them)
                bad = bad | repeats[",".join(rule["unique"])]
            self.violations[name] += int(bad.sum())
        for k, rep in repeats.items():
            self.duplicates[k] += int(rep.sum())
        for c in self.distinct_sorted:
            values = pdf[c].to_numpy(object)
            changes = int((values[1:] != values[:-1]).sum()) + 1
            if self.last.get(f"distinct:{c}") == values[0]:
                changes -= 1
            self.distinct_counts[c] += changes
            self.last[f"distinct:{c}"] = values[-1]
        for c, seen in self.distinct_sets.items():
            seen.update(pdf[c].dropna().unique().tolist())
        for c, parts in self.medians.items():
            parts.append(pdf[c].to_numpy(dtype=np.float64))
        for c, counts in self.value_counts.items():
            for value, n in pdf[c].value_counts().items():
                counts[str(value)] = counts.get(str(value), 0) + int(n)
        self.writer.write_table(data)

    def close(self) -> dict[str, Any]:
        import numpy as np

        content = self.digest.hexdigest()
        if self.stamp is not None:
            self.writer.add_key_value_metadata(
                {"wap": json.dumps({**self.stamp, "content": content})}
            )
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.final)
        medians = {}
        for c, parts in self.medians.items():
            values = np.concatenate(parts) if parts else np.array([], dtype=np.float64)
            values = values[~np.isnan(values)]
            medians[c] = float(np.median(values)) if len(values) else None
        figures = {
            "rows": self.rows,
            "columns": list(self.schema.names),
            "nulls": self.nulls,
            "violations": self.violations,
            "duplicates": self.duplicates,
            "distinct": {
                **{c: n for c, n in self.distinct_counts.items()},
                **{c: len(v) for c, v in self.distinct_sets.items()},
            },
            "medians": medians,
            "value_counts": self.value_counts,
        }
        return {"figures": figures, "content": content, "size": size}


def write_days(spec: dict[str, Any], batches: Any) -> Any:
    """``mapInArrow`` body: the rows of whole days, sorted by day then ``spec["sort"]``; writes
    each day's object and yields one (day, result JSON) row per day."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = arrow_schema(spec["schema"])
    writer: DayWriter | None = None
    results = []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        days = table.column(DAY_COLUMN)
        for day in pc.unique(days).to_pylist():  # sorted by day: each day is one slice
            part = table.filter(pc.equal(days, day))
            if writer is None or writer.day != day:
                if writer is not None:
                    results.append((writer.day, writer.close()))
                writer = DayWriter(day, spec, schema)
            writer.add(part)
    if writer is not None:
        results.append((writer.day, writer.close()))
    if results:
        yield pa.RecordBatch.from_pydict(
            {"day": [d for d, _ in results], "result": [json.dumps(r) for _, r in results]}
        )


def stage_days(out: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Write ``out`` as one object per day (see the module doc); returns day -> result (the
    figures, size, content digest). A day without rows gets an empty object of the schema."""
    from functools import partial

    from pyspark.sql import functions as F

    days = sorted(spec["targets"])
    out = out.withColumn(DAY_COLUMN, F.expr(spec["day"])).where(F.col(DAY_COLUMN).isin(days))
    for i, rule in enumerate(spec.get("rules", {}).values()):
        out = out.withColumn(f"{FLAG_PREFIX}{i}", F.expr(f"NOT coalesce(({rule['sql']}), false)"))
    out = out.repartition(max(len(days), 1), DAY_COLUMN).sortWithinPartitions(
        DAY_COLUMN, *spec["sort"]
    )
    rows = out.mapInArrow(partial(write_days, spec), "day string, result string").collect()
    results = {r["day"]: json.loads(r["result"]) for r in rows}
    schema = arrow_schema(spec["schema"])
    for day in days:
        if day not in results:
            results[day] = DayWriter(day, spec, schema).close()
    return results


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

    stage = params.pop(STAGE_PARAM, None)
    input_distinct: dict[str, int] = {}
    windows = (stage or {}).get("input_windows") or {}
    if windows:
        from pyspark.sql import functions as F

        seen = F.expr(stage["input_day"])
        counts = df.agg(
            F.count(F.lit(1)).alias("__rows"),
            *[
                F.countDistinct(F.when(seen.isin(list(w)), F.col(DEVICE_KEY))).alias(f"w{i}")
                for i, w in enumerate(windows.values())
            ],
        ).first()
        input_rows = int(counts["__rows"])
        input_distinct = {d: int(counts[f"w{i}"]) for i, d in enumerate(windows)}
    else:
        input_rows = df.count()
    shuffle_partitions = sized_shuffle(spark, input_rows)
    parallelism = spark.sparkContext.defaultParallelism
    buckets = bucket_count(getattr(args, "buckets", "auto"), group_by, input_rows, parallelism)

    sides = dict(params.pop(SIDES_PARAM, None) or {})

    def apply(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = canonical_order(pdf.drop(columns=[BUCKET_COLUMN], errors="ignore"), group_by)
        tables = {name: side_table(uri) for name, uri in sides.items()}
        return fn(to_utc(pdf), **params, **tables)[names]

    twin = TWINS.get(args.function)
    if twin is not None:  # relational: the same rows in Spark SQL, no Python worker
        out = twin(df, **params).select(*names)
        buckets = 0
    elif buckets:
        from pyspark.sql import functions as F

        bucket = F.pmod(F.hash(F.col(DEVICE_KEY)), F.lit(buckets))
        grouped = df.withColumn(BUCKET_COLUMN, bucket).groupBy(BUCKET_COLUMN)
        out = grouped.applyInPandas(apply, schema=schema)
    else:
        out = df.groupBy(*group_by).applyInPandas(apply, schema=schema)
    staged: dict[str, Any] = {}
    if stage is not None:
        staged = stage_days(out, stage)
        rows = sum(int(v["figures"]["rows"]) for v in staged.values())
    else:
        out.write.mode("overwrite").parquet(args.output)
        if is_local(args.output):
            clean_local_output(args.output)
        rows = spark.read.parquet(args.output).count()
    seconds = time.perf_counter() - started
    summary = {
        "function": args.function,
        "group_by": group_by,
        "buckets": buckets,
        "relational": twin is not None,
        "shuffle_partitions": shuffle_partitions,
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
        **({"days": staged} if stage is not None else {}),
        **({"input_distinct": input_distinct} if windows else {}),
    }
    calls = f"{buckets} device buckets" if buckets else "one call per group"
    calls = "Spark SQL twin (no Python worker)" if twin is not None else calls
    log(
        f"apply_by_device {args.function}: {input_rows} rows in, {rows} out, {calls}, "
        f"{seconds:.1f} s"
    )
    if own_session:
        spark.stop()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return pipes_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
