"""Spark: run PySpark job scripts locally (default) or on EMR, the same script.

Back end, from the environment (``SparkResource.from_env``):

| variable | meaning |
|---|---|
| ``SPARK_MASTER`` | local master, default ``local[*]`` (local back end) |
| ``SPARK_DEVICE_BUCKETS`` | per-device functions: device buckets per job (``device_buckets``) |
| ``SPARK_DRIVER_MEMORY`` | local driver (= executor) heap, default ``2g`` (``driver_memory``) |
| ``SPARK_SHUFFLE_PARTITIONS`` | local shuffle partitions, default 4; jobs raise it to one per 2 M input rows |
| ``EMR_CLUSTER_ID`` | run as a step on this EMR cluster (``spark-submit --deploy-mode cluster``) |
| ``EMR_SERVERLESS_APP_ID`` / ``EMR_SERVERLESS_ROLE_ARN`` | or as an EMR Serverless job run |
| ``EMR_SCRIPTS_S3`` | where job scripts live, e.g. ``s3://bucket/platform/jobs/`` |
| ``EMR_PY_FILES`` | the ``--py-files`` zip (default ``$EMR_SCRIPTS_S3/platform.zip``) |
| ``EMR_PIPES_BUCKET`` / ``EMR_PIPES_PREFIX`` | Pipes context and messages (default: scripts bucket, ``dagster/pipes/``) |
| ``EMR_SPARK_CONF`` | JSON object of Spark settings overriding ``EMR_DEFAULT_CONF`` |
| ``EMR_STEP_TIMEOUT_S`` | give up (and cancel the step) after this many seconds, default 6 h |
| ``EMR_LOG_WAIT_S`` | after a step ends, wait up to this long for its logs on S3, default 120 |
| ``AWS_ENDPOINT_URL`` | S3/EMR endpoint override (tests: moto) |

The caller names the job script (a local path; on EMR its file name under ``EMR_SCRIPTS_S3``)
and the Spark settings the job needs in every session (``job_conf``). Locally the script runs in
a ``python`` subprocess under ``dg.PipesSubprocessClient``; with an S3 lake and no cluster, inputs
are staged through a temporary folder. On EMR, Pipes context and messages go through S3 and the
bootstrap parameters are passed as ``--dagster-pipes-*`` arguments (``resources.emr``).
When a remote run ends, the tails of its stdout/stderr reach the run log and the summary holds
``metadata``: ``dg.MetadataValue`` links to the step (or job run) and its logs, for the asset's
materialization (plus the same ids and console URL as plain strings, ``emr_*``).

The run process never hosts a Spark driver or JVM: locally the job is a subprocess, on EMR a
step (``spark-submit --deploy-mode cluster``). That is why ``dagster_pyspark.PySparkResource``
(an in-process ``SparkSession``) is not used: ``deploy/emr/README.md``, "dagster-pyspark".
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from resources.emr import (
    PipesEMRStepClient,
    prefixed_s3_message_reader,
    s3_parts,
    serverless_job_report,
)
from resources.lake import LakeResource

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""Local job scripts run from here, with it on ``PYTHONPATH`` (they import the project's code)."""

EMR_RELEASE, SPARK_LINE = "emr-spark-8.0.0", "4.0"
"""The EMR release ``deploy/emr/cluster.json`` deploys (Spark 4.0.2-amzn-0) and the Spark line
local pyspark is pinned to (pyproject.toml): tests run the engine production runs."""

LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.ansi.enabled": "true",  # Spark 4.0's default, said explicitly (as on EMR)
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}
EMR_DEFAULT_CONF = {
    "spark.pyspark.python": "/usr/bin/python3.11",
    "spark.pyspark.driver.python": "/usr/bin/python3.11",
    "spark.executor.instances": "12",
    "spark.executor.cores": "2",
    "spark.executor.memory": "16g",
    "spark.executor.memoryOverhead": "4g",
    "spark.driver.memory": "8g",
    "spark.dynamicAllocation.enabled": "false",
    "spark.sql.shuffle.partitions": "96",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.ansi.enabled": "true",  # Spark 4.0's default, said explicitly (as locally)
}
Script = str | os.PathLike[str]
STREAM_CHUNK = 8 << 20
"""Bytes per read when staging lake objects for local Spark (never a whole object in memory)."""


def function_path(function: Callable[..., Any] | str) -> str:
    """``module:qualname`` of a per-device function the job script can import."""
    if isinstance(function, str):
        path = function
    else:
        if not getattr(function, "spark_schema", None):
            raise ValueError(f"{function!r} has no spark_schema: decorate it with @per_device")
        path = f"{function.__module__}:{function.__qualname__}"
    module, _, qualname = path.partition(":")
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        raise ValueError(f"{path!r} is not importable by a Spark job: use a module-level function")
    return path


@contextmanager
def summary_only_pipes(context: Any) -> Iterator[None]:
    """Let the asset return what it likes after a Pipes run whose results are a summary dict.

    Opening a Pipes session switches the step to "typed event stream" mode (the asset would have
    to return the session's results); our scripts report custom messages only, so the previous
    mode is restored. Private Dagster state (1.13): skipped when the context lacks it.
    """
    try:
        step = context.get_step_execution_context()
        saved = (step._requires_typed_event_stream, step._typed_event_stream_error_message)
    except Exception:
        yield
        return
    try:
        yield
    finally:
        step._requires_typed_event_stream, step._typed_event_stream_error_message = saved


def remote_ids(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The ``emr_*`` ids and links of a remote run's metadata as plain strings."""
    out = {}
    for key, value in metadata.items():
        if key.startswith("emr_"):
            raw = getattr(value, "value", value)
            if isinstance(raw, str):
                out[key] = raw
            elif hasattr(raw, "url"):
                out[key] = raw.url
            elif hasattr(raw, "path"):
                out[key] = raw.path
    return out


def _serverless_client(**kwargs: Any) -> dg.PipesClient:
    """``PipesEMRServerlessClient`` that remembers the job run it started (for its logs)."""
    from dagster_aws.pipes import PipesEMRServerlessClient

    class RememberingClient(PipesEMRServerlessClient):
        started: dict | None = None

        def _start(self, context: Any, params: Any) -> Any:
            response = super()._start(context, params)
            self.started = dict(response)
            return response

    return RememberingClient(**kwargs)


class SparkResource(dg.ConfigurableResource):
    """Runs PySpark job scripts: a local subprocess by default, EMR with ``EMR_CLUSTER_ID``."""

    master: str = "local[*]"
    shuffle_partitions: int = 4
    """Local runs: the least shuffle partitions; each job raises it to one per
    ``ROWS_PER_SHUFFLE_PARTITION`` input rows (``apply_by_device.sized_shuffle``). Env
    ``SPARK_SHUFFLE_PARTITIONS``."""
    driver_memory: str = "2g"
    """Local runs: the driver's heap (the executor's too, in local mode). Env
    ``SPARK_DRIVER_MEMORY``."""
    emr_cluster_id: str | None = None
    emr_serverless_app_id: str | None = None
    emr_serverless_role_arn: str | None = None
    scripts_s3: str | None = None
    py_files: str | None = None
    pipes_bucket: str | None = None
    pipes_prefix: str = "dagster/pipes/"
    spark_conf: dict[str, str] = {}
    endpoint_url: str | None = None
    s3_scheme: str = "s3a"
    poll_interval_s: float = 30.0
    step_timeout_s: float = 6 * 3600.0
    log_wait_s: float = 120.0
    """After a remote run ends, poll S3 this long for its stdout/stderr (EMR pushes them late)."""
    region: str | None = None
    device_buckets: int | None = None
    """Per-device functions run once per bucket of many devices (``pmod(hash(device_id), n)``),
    not once per device: ``None`` (default) lets the job choose (4 x the Spark default
    parallelism, more for inputs over 1 M rows a bucket), ``n`` > 0 fixes it, ``0`` calls the
    function once per device. Env ``SPARK_DEVICE_BUCKETS``; see ``apply_by_device.py``."""

    @classmethod
    def from_env(cls) -> SparkResource:
        scripts = os.environ.get("EMR_SCRIPTS_S3") or None
        if scripts is None and os.environ.get("LAKE_BUCKET"):
            prefix = os.environ.get("LAKE_PREFIX", "").strip("/")
            scripts = f"s3://{os.environ['LAKE_BUCKET']}/{prefix + '/' if prefix else ''}jobs/"
        return cls(
            master=os.environ.get("SPARK_MASTER", "local[*]"),
            shuffle_partitions=int(os.environ.get("SPARK_SHUFFLE_PARTITIONS") or 4),
            driver_memory=os.environ.get("SPARK_DRIVER_MEMORY") or "2g",
            emr_cluster_id=os.environ.get("EMR_CLUSTER_ID") or None,
            emr_serverless_app_id=os.environ.get("EMR_SERVERLESS_APP_ID") or None,
            emr_serverless_role_arn=os.environ.get("EMR_SERVERLESS_ROLE_ARN") or None,
            scripts_s3=scripts,
            py_files=os.environ.get("EMR_PY_FILES") or None,
            pipes_bucket=os.environ.get("EMR_PIPES_BUCKET") or None,
            pipes_prefix=os.environ.get("EMR_PIPES_PREFIX", "dagster/pipes/"),
            spark_conf=json.loads(os.environ.get("EMR_SPARK_CONF") or "{}"),
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            step_timeout_s=float(os.environ.get("EMR_STEP_TIMEOUT_S", 6 * 3600)),
            log_wait_s=float(os.environ.get("EMR_LOG_WAIT_S", 120)),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
            device_buckets=int(b) if (b := os.environ.get("SPARK_DEVICE_BUCKETS", "")) else None,
        )

    # ---- configuration ----------------------------------------------------------------------
    @property
    def backend(self) -> str:
        if self.emr_cluster_id:
            return "emr"
        return "emr-serverless" if self.emr_serverless_app_id else "local"

    def _scripts_s3(self) -> str:
        if not self.scripts_s3:
            raise ValueError("EMR_SCRIPTS_S3 (e.g. s3://bucket/platform/jobs/) is not set")
        return self.scripts_s3.rstrip("/") + "/"

    def script_uri(self, script: Script) -> str:
        return self._scripts_s3() + Path(script).name

    def py_files_uri(self) -> str:
        return self.py_files or self._scripts_s3() + "platform.zip"

    def _pipes_bucket(self) -> str:
        return self.pipes_bucket or s3_parts(self._scripts_s3())[0]

    def cluster_conf(self, job_conf: Mapping[str, str] | None = None) -> dict[str, str]:
        """Spark settings of a cluster run: the job's settings, seed-sized defaults, overrides."""
        region = (
            {
                f"spark.yarn.appMasterEnv.{v}": self.region
                for v in ("AWS_REGION", "AWS_DEFAULT_REGION")
            }
            if self.region
            else {}
        )
        return {**(job_conf or {}), **EMR_DEFAULT_CONF, **region, **self.spark_conf}

    def local_conf(self) -> dict[str, str]:
        return {
            **LOCAL_CONF,
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            "spark.driver.memory": self.driver_memory,
        }

    def _boto(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region)

    def spark_uri(self, lake: LakeResource, key: str) -> str:
        """Where Spark finds a lake key: a local path, or ``s3a://`` for an S3 lake."""
        uri = lake.uri(key)
        return f"{self.s3_scheme}://{uri[5:]}" if uri.startswith("s3://") else uri

    # ---- what would be submitted ------------------------------------------------------------
    @staticmethod
    def job_arguments(
        function: Callable[..., Any] | str,
        inputs: Sequence[str],
        output: str,
        params: Mapping[str, Any] | None = None,
        group_by: Sequence[str] | None = None,
        buckets: int | None = None,
    ) -> list[str]:
        """Arguments of a per-device job script for input/output URIs (``buckets``: None = auto)."""
        extra = [] if buckets is None else ["--buckets", str(int(buckets))]
        return [
            "--function",
            function_path(function),
            "--input",
            *inputs,
            "--output",
            output,
            "--params",
            json.dumps(dict(params or {}), sort_keys=True),
            "--group-by",
            ",".join(group_by or ["device_id"]),
            *extra,
        ]

    def spark_submit_args(
        self, script: Script, args: Sequence[str], job_conf: Mapping[str, str] | None = None
    ) -> list[str]:
        """``spark-submit --deploy-mode cluster --py-files ... --conf ... s3://.../script args``."""
        conf = self.cluster_conf(job_conf)
        confs = [x for k, v in sorted(conf.items()) for x in ("--conf", f"{k}={v}")]
        return [
            "spark-submit",
            "--deploy-mode",
            "cluster",
            "--py-files",
            self.py_files_uri(),
            *confs,
            self.script_uri(script),
            *args,
        ]

    def script_step(
        self,
        script: Script,
        args: Sequence[str],
        name: str | None = None,
        job_conf: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The EMR step for any job script (before the Pipes arguments are appended)."""
        return {
            "Name": (name or f"{Path(script).stem} {' '.join(args)}")[:256],
            "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {
                "Jar": "command-runner.jar",
                "Args": self.spark_submit_args(script, args, job_conf),
            },
        }

    def emr_step(
        self,
        *,
        script: Script,
        function: Callable[..., Any] | str,
        inputs: list[str],
        output: str,
        lake: LakeResource,
        params: dict | None = None,
        group_by: list[str] | None = None,
        job_conf: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Exactly the step ``run_per_device`` adds to ``EMR_CLUSTER_ID`` for these lake keys.

        At submission, ``--dagster-pipes-context <b64>`` and ``--dagster-pipes-messages <b64>``
        are appended to ``HadoopJarStep.Args`` (S3 bucket/key of the context and messages).
        """
        args = self._remote_arguments(
            function, inputs, output, lake, params, group_by, self.device_buckets
        )
        name = self._step_name(script, function, output)
        return self.script_step(script, args, name=name, job_conf=job_conf)

    @staticmethod
    def _step_name(script: Script, function: Callable[..., Any] | str, output: str) -> str:
        return f"{Path(script).stem} {function_path(function)} -> {output}"

    def _remote_arguments(
        self,
        function: Callable[..., Any] | str,
        inputs: list[str],
        output: str,
        lake: LakeResource,
        params: dict | None,
        group_by: list[str] | None,
        buckets: int | None = None,
    ) -> list[str]:
        if lake.backend != "s3":
            raise ValueError("EMR reads and writes the lake on S3: set LAKE_BUCKET")
        uris = [self.spark_uri(lake, k) for k in inputs]
        out = self.spark_uri(lake, output)
        return self.job_arguments(function, uris, out, params, group_by, buckets)

    def emr_serverless_job(
        self, script: Script, args: Sequence[str], job_conf: Mapping[str, str] | None = None
    ) -> dict:
        """``start_job_run`` parameters for EMR Serverless (before Pipes adds its driver env)."""
        conf = self.cluster_conf(job_conf)
        confs = " ".join(f"--conf {k}={v}" for k, v in sorted(conf.items()))
        return {
            "applicationId": self.emr_serverless_app_id,
            "executionRoleArn": self.emr_serverless_role_arn,
            "name": f"{Path(script).stem}"[:256],
            "jobDriver": {
                "sparkSubmit": {
                    "entryPoint": self.script_uri(script),
                    "entryPointArguments": list(args),
                    "sparkSubmitParameters": f"--py-files {self.py_files_uri()} {confs}",
                }
            },
        }

    # ---- running ----------------------------------------------------------------------------
    def run_per_device(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        *,
        script: Script,
        function: Callable | str,
        inputs: list[str],
        output: str,
        params: dict | None = None,
        group_by: list[str] | None = None,
        lake: LakeResource,
        buckets: int | None = None,
        job_conf: Mapping[str, str] | None = None,
    ) -> dict:
        """Run a per-device function over lake keys ``inputs``; write Parquet parts to ``output``.

        ``script`` is the per-device job script (it takes ``job_arguments``), ``job_conf`` the
        Spark settings it needs in every session (passed explicitly to cluster runs).
        ``buckets`` overrides ``device_buckets`` for this call (None: the resource's setting).

        Read the result back with ``lake.read_parquet(output)``. Inputs holding no Parquet file
        are skipped (logged); with none left, ``output`` is cleared and ``rows`` is 0.
        Returns a summary: rows, input_rows, seconds, engine, command. The calling asset may
        return anything afterwards (MaterializeResult, None, ...), as without Spark.
        """
        fn = function_path(function)
        present = [k for k in inputs if lake.parquet_files(k)]
        if missing := sorted(set(inputs) - set(present)):
            context.log.warning(f"spark: no Parquet under {missing}; skipped")
        base = {"function": fn, "inputs": present, "output": output, "engine": self.backend}
        if not present:
            lake.delete(output)
            return {**base, "rows": 0, "input_rows": 0, "seconds": 0.0, "skipped": "no input"}
        buckets = self.device_buckets if buckets is None else buckets
        if self.backend == "local":
            return {
                **base,
                **self._run_local_per_device(
                    context, script, fn, present, output, params, group_by, lake, buckets
                ),
            }
        args = self._remote_arguments(fn, present, output, lake, params, group_by, buckets)
        name = self._step_name(script, fn, output)
        return {**base, **self._run_remote(context, script, args, name, job_conf)}

    def run_script(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script_path: Script,
        args: Sequence[str],
        job_conf: Mapping[str, str] | None = None,
    ) -> dict:
        """Run any dagster-pipes job script (locally by path; on EMR from ``EMR_SCRIPTS_S3``).

        Returns the last custom message the script reported (plus engine and timing).
        """
        if self.backend == "local":
            return self._run_local(context, script_path, list(args))
        return self._run_remote(context, script_path, list(args), job_conf=job_conf)

    def _local_command(self, script: Script, args: list[str]) -> list[str]:
        return [
            sys.executable,
            str(script),
            *args,
            "--master",
            self.master,
            "--spark-conf",
            json.dumps(self.local_conf(), sort_keys=True),
        ]

    def _run_local(self, context: Any, script: Script, args: list[str]) -> dict:
        root = str(PROJECT_ROOT)
        env = {
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        command = self._local_command(script, args)
        started = time.perf_counter()
        with summary_only_pipes(context):
            invocation = dg.PipesSubprocessClient(env=env, cwd=root).run(
                context=context, command=command
            )
        messages = invocation.get_custom_messages()
        return {
            **(messages[-1] if messages else {}),
            "engine": "spark-local",
            "wall_seconds": round(time.perf_counter() - started, 3),
            "command": command,
        }

    def _run_local_per_device(
        self,
        context: Any,
        script: Script,
        fn: str,
        inputs: list[str],
        output: str,
        params: dict | None,
        group_by: list[str] | None,
        lake: LakeResource,
        buckets: int | None = None,
    ) -> dict:
        if lake.backend == "local":
            args = self.job_arguments(
                fn, [lake.uri(k) for k in inputs], lake.uri(output), params, group_by, buckets
            )
            return self._run_local(context, script, args)
        with tempfile.TemporaryDirectory(prefix="spark-stage-") as tmp:
            staged = []
            for i, key in enumerate(inputs):
                folder = Path(tmp, "in", str(i), key)  # keeps trailing key=value folders
                for obj in lake.parquet_files(key):
                    path = folder / (obj[len(key) :].lstrip("/") or Path(obj).name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with lake.open_input(obj) as src, path.open("wb") as dst:  # streamed
                        while chunk := src.read(STREAM_CHUNK):
                            dst.write(chunk)
                staged.append(str(folder))
            out = Path(tmp, "out")
            args = self.job_arguments(fn, staged, str(out), params, group_by, buckets)
            summary = self._run_local(context, script, args)
            lake.delete(output)
            for part in sorted(out.rglob("*.parquet")):
                key = f"{output}/{part.relative_to(out).as_posix()}"
                with lake.open_output(key) as sink, part.open("rb") as src:
                    shutil.copyfileobj(src, sink, STREAM_CHUNK)
            return {**summary, "staged_from": "s3"}

    def _s3_pipes(self) -> tuple[dg.PipesContextInjector, dg.PipesMessageReader]:
        from dagster_aws.pipes import PipesS3ContextInjector

        s3 = self._boto("s3")
        bucket, prefix = self._pipes_bucket(), self.pipes_prefix.strip("/")
        injector = PipesS3ContextInjector(
            bucket=bucket, client=s3, key_prefix=f"{prefix}/context/" if prefix else "context/"
        )
        reader = prefixed_s3_message_reader(
            bucket=bucket,
            client=s3,
            prefix=f"{prefix}/messages" if prefix else "messages",
            interval=min(self.poll_interval_s, 10.0),
        )
        return injector, reader

    def _run_remote(
        self,
        context: Any,
        script: Script,
        args: list[str],
        name: str | None = None,
        job_conf: Mapping[str, str] | None = None,
    ) -> dict:
        with summary_only_pipes(context):
            return self._run_remote_pipes(context, script, args, name, job_conf)

    def _run_remote_pipes(
        self,
        context: Any,
        script: Script,
        args: list[str],
        name: str | None,
        job_conf: Mapping[str, str] | None,
    ) -> dict:
        injector, reader = self._s3_pipes()
        started = time.perf_counter()
        log_poll_s = min(self.poll_interval_s, 10.0)
        if self.backend == "emr":
            step = self.script_step(script, args, name, job_conf)
            invocation = PipesEMRStepClient(
                cluster_id=str(self.emr_cluster_id),
                client=self._boto("emr"),
                context_injector=injector,
                message_reader=reader,
                poll_interval_s=self.poll_interval_s,
                timeout_s=self.step_timeout_s,
                s3_client=self._boto("s3"),
                log_wait_s=self.log_wait_s,
                log_poll_s=log_poll_s,
            ).run(context=context, step=step)
            command = step["HadoopJarStep"]["Args"]
            metadata = dict(invocation.metadata)
        else:
            job = self.emr_serverless_job(script, args, job_conf)
            invocation, report = self._run_serverless(context, job, injector, reader, log_poll_s)
            command = job["jobDriver"]["sparkSubmit"]
            metadata = {**invocation.metadata, **report}
        messages = invocation.get_custom_messages()
        return {
            **(messages[-1] if messages else {}),
            **remote_ids(metadata),
            "engine": self.backend,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "command": command,
            "metadata": metadata,
        }

    def _run_serverless(
        self,
        context: Any,
        job: dict,
        injector: dg.PipesContextInjector,
        reader: dg.PipesMessageReader,
        log_poll_s: float,
    ) -> tuple[dg.PipesClientCompletedInvocation, dict[str, dg.MetadataValue]]:
        """One EMR Serverless job run; afterwards (also when it failed) its dashboard and logs."""
        client = self._boto("emr-serverless")
        pipes = _serverless_client(
            client=client,
            context_injector=injector,
            message_reader=reader,
            poll_interval=self.poll_interval_s,
        )

        def report() -> dict[str, dg.MetadataValue]:
            run = getattr(pipes, "started", None)
            if not run:
                return {}
            return serverless_job_report(
                context,
                client=client,
                s3=self._boto("s3"),
                application_id=run["applicationId"],
                job_run_id=run["jobRunId"],
                wait_s=self.log_wait_s,
                poll_s=log_poll_s,
            )

        try:
            invocation = pipes.run(context=context, start_job_run_params=job)  # type: ignore[arg-type]
        except dg.DagsterExecutionInterruptedError:
            raise
        except Exception as exc:
            raise dg.Failure(f"EMR Serverless job run failed: {exc}", metadata=report()) from exc
        return invocation, report()

    # ---- deployment -------------------------------------------------------------------------
    def upload(self, scripts: Sequence[Script], py_files: Script) -> list[str]:
        """Upload job scripts (and side files, e.g. a bootstrap action) to ``EMR_SCRIPTS_S3`` and
        the ``--py-files`` archive to its URI; returns the URIs written."""
        s3 = self._boto("s3")
        uploads = [(Path(p), self.script_uri(p)) for p in scripts]
        uploads.append((Path(py_files), self.py_files_uri()))
        for path, uri in uploads:
            bucket, key = s3_parts(uri)
            s3.upload_file(str(path), bucket, key)
        return [uri for _, uri in uploads]
