"""Spark: the platform's PySpark job scripts, run locally (default) or on EMR, the same script.

Back end, from the environment (``SparkResource.from_env``):

| variable | meaning |
|---|---|
| ``SPARK_MASTER`` | local master, default ``local[*]`` (local back end) |
| ``SPARK_DEVICE_BUCKETS`` | per-device functions: device buckets per job (``device_buckets``) |
| ``EMR_CLUSTER_ID`` | run as a step on this EMR cluster (``spark-submit --deploy-mode cluster``) |
| ``EMR_SERVERLESS_APP_ID`` / ``EMR_SERVERLESS_ROLE_ARN`` | or as an EMR Serverless job run |
| ``EMR_SCRIPTS_S3`` | where job scripts live, e.g. ``s3://bucket/platform/jobs/`` |
| ``EMR_PY_FILES`` | the ``--py-files`` zip (default ``$EMR_SCRIPTS_S3/platform.zip``) |
| ``EMR_PIPES_BUCKET`` / ``EMR_PIPES_PREFIX`` | Pipes context and messages (default: scripts bucket, ``dagster/pipes/``) |
| ``EMR_SPARK_CONF`` | JSON object of Spark settings overriding ``EMR_DEFAULT_CONF`` |
| ``EMR_STEP_TIMEOUT_S`` | give up (and cancel the step) after this many seconds, default 6 h |
| ``AWS_ENDPOINT_URL`` | S3/EMR endpoint override (tests: moto) |

Locally the script runs in a ``python`` subprocess under ``dg.PipesSubprocessClient``. With an S3
lake and no cluster, inputs are staged through a temporary folder. On EMR, the step runs
``apply_by_device.py`` from ``EMR_SCRIPTS_S3``; Pipes context and messages go through S3 and
the bootstrap parameters are passed as ``--dagster-pipes-*`` arguments (``deploy/emr/``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from near_assets.spark_jobs import JOB_SCRIPTS
from resources.lake import LakeResource

JOBS_DIR = Path(__file__).resolve().parent.parent / "near_assets" / "spark_jobs"
APPLY_BY_DEVICE = JOBS_DIR / "apply_by_device.py"
BOOTSTRAP = JOBS_DIR.parent.parent / "deploy" / "emr" / "bootstrap.sh"

LOCAL_CONF = {
    "spark.ui.enabled": "false",
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
}
STEP_DONE, STEP_FAILED = {"COMPLETED"}, {"FAILED", "CANCELLED", "INTERRUPTED", "CANCEL_PENDING"}


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


def s3_parts(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``)."""
    if "://" not in uri:
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def build_py_files(dest: str | os.PathLike[str]) -> Path:
    """Zip what the cluster imports: the ``near_assets`` package and ``dagster_pipes``."""
    import dagster_pipes

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    roots = [JOBS_DIR.parent, Path(dagster_pipes.__file__).parent]
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                if "__pycache__" not in path.parts:
                    zf.write(path, path.relative_to(root.parent).as_posix())
    return dest


def prefixed_s3_message_reader(*, prefix: str = "", **kwargs: Any) -> dg.PipesMessageReader:
    """A ``PipesS3MessageReader`` whose message chunks live under ``prefix/`` in the bucket.

    dagster_aws is imported here, not at module import, so code locations that never talk to
    EMR (every run worker of ``risk_assets``) do not pay for it.
    """
    from dagster_aws.pipes import PipesS3MessageReader

    class PrefixedS3MessageReader(PipesS3MessageReader):
        def __init__(self, *, prefix: str = "", **kw: Any):
            super().__init__(**kw)
            self.prefix = prefix.strip("/")

        @contextmanager
        def get_params(self) -> Iterator[dict[str, Any]]:
            with super().get_params() as params:
                key = params["key_prefix"]
                yield {**params, "key_prefix": f"{self.prefix}/{key}" if self.prefix else key}

    return PrefixedS3MessageReader(prefix=prefix, **kwargs)


class PipesEMRStepClient(dg.PipesClient):
    """Run one step on a running EMR cluster with Pipes (``PipesEMRClient`` starts a new cluster).

    The bootstrap parameters are appended to the step's arguments as
    ``--dagster-pipes-context``/``--dagster-pipes-messages``; the job script reads them with
    ``PipesCliArgsParamsLoader`` and talks to S3.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        client: Any,
        context_injector: dg.PipesContextInjector,
        message_reader: dg.PipesMessageReader,
        poll_interval_s: float = 30.0,
        timeout_s: float = 6 * 3600.0,
        forward_termination: bool = True,
    ):
        self.cluster_id = cluster_id
        self.client = client
        self.context_injector = context_injector
        self.message_reader = message_reader
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self.forward_termination = forward_termination

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        step: Mapping[str, Any],
        extras: dict[str, Any] | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        with dg.open_pipes_session(
            context=context,
            context_injector=self.context_injector,
            message_reader=self.message_reader,
            extras=extras,
        ) as session:
            submitted = with_pipes_arguments(step, session.get_bootstrap_cli_arguments())
            response = self.client.add_job_flow_steps(JobFlowId=self.cluster_id, Steps=[submitted])
            step_id = response["StepIds"][0]
            session.report_launched({"extras": {"cluster_id": self.cluster_id, "step_id": step_id}})
            context.log.info(f"[pipes] EMR step {step_id} added to cluster {self.cluster_id}")
            try:
                self._wait(context, step_id)
            except dg.DagsterExecutionInterruptedError:
                if self.forward_termination:
                    self._cancel(context, step_id)
                raise
        return dg.PipesClientCompletedInvocation(
            session, metadata={"emr_cluster_id": self.cluster_id, "emr_step_id": step_id}
        )

    def _wait(self, context: Any, step_id: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            step = self.client.describe_step(ClusterId=self.cluster_id, StepId=step_id)["Step"]
            state = step["Status"]["State"]
            if state in STEP_DONE:
                context.log.info(f"[pipes] EMR step {step_id} completed")
                return
            if state in STEP_FAILED:
                details = step["Status"].get("FailureDetails", {})
                raise dg.Failure(
                    f"EMR step {step_id} on {self.cluster_id} ended {state}",
                    metadata={k: str(v) for k, v in details.items()},
                )
            if time.monotonic() > deadline:
                self._cancel(context, step_id)
                raise TimeoutError(
                    f"EMR step {step_id} still {state} after {self.timeout_s:.0f} s; cancelled"
                )
            time.sleep(self.poll_interval_s)

    def _cancel(self, context: Any, step_id: str) -> None:
        try:
            self.client.cancel_steps(ClusterId=self.cluster_id, StepIds=[step_id])
            context.log.warning(f"[pipes] cancelled EMR step {step_id}")
        except Exception as exc:  # best effort: the step may already be over
            context.log.warning(f"[pipes] could not cancel EMR step {step_id}: {exc}")


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


def with_pipes_arguments(step: Mapping[str, Any], pipes_args: Mapping[str, str]) -> dict:
    """A copy of ``step`` whose spark-submit arguments end with the Pipes bootstrap arguments."""
    jar = dict(step["HadoopJarStep"])
    jar["Args"] = [*jar["Args"], *(x for kv in pipes_args.items() for x in kv)]
    return {**step, "HadoopJarStep": jar}


class SparkResource(dg.ConfigurableResource):
    """Runs PySpark job scripts: a local subprocess by default, EMR with ``EMR_CLUSTER_ID``."""

    master: str = "local[*]"
    shuffle_partitions: int = 4
    driver_memory: str = "2g"
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

    def script_uri(self, script: str | os.PathLike[str]) -> str:
        return self._scripts_s3() + Path(script).name

    def py_files_uri(self) -> str:
        return self.py_files or self._scripts_s3() + "platform.zip"

    def _pipes_bucket(self) -> str:
        return self.pipes_bucket or s3_parts(self._scripts_s3())[0]

    def cluster_conf(self) -> dict[str, str]:
        """Spark settings of a cluster run: session settings, seed-sized defaults, overrides."""
        region = (
            {
                f"spark.yarn.appMasterEnv.{v}": self.region
                for v in ("AWS_REGION", "AWS_DEFAULT_REGION")
            }
            if self.region
            else {}
        )
        from near_assets.spark_jobs.apply_by_device import BASE_CONF

        return {**BASE_CONF, **EMR_DEFAULT_CONF, **region, **self.spark_conf}

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
        """Arguments of ``apply_by_device.py`` for input/output URIs (``buckets``: None = auto)."""
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

    def spark_submit_args(self, script: str | os.PathLike[str], args: Sequence[str]) -> list[str]:
        """``spark-submit --deploy-mode cluster --py-files ... --conf ... s3://.../script args``."""
        confs = [x for k, v in sorted(self.cluster_conf().items()) for x in ("--conf", f"{k}={v}")]
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
        self, script: str | os.PathLike[str], args: Sequence[str], name: str | None = None
    ) -> dict[str, Any]:
        """The EMR step for any job script (before the Pipes arguments are appended)."""
        return {
            "Name": (name or f"{Path(script).stem} {' '.join(args)}")[:256],
            "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {
                "Jar": "command-runner.jar",
                "Args": self.spark_submit_args(script, args),
            },
        }

    def emr_step(
        self,
        *,
        function: Callable[..., Any] | str,
        inputs: list[str],
        output: str,
        lake: LakeResource,
        params: dict | None = None,
        group_by: list[str] | None = None,
    ) -> dict[str, Any]:
        """Exactly the step ``run_per_device`` adds to ``EMR_CLUSTER_ID`` for these lake keys.

        At submission, ``--dagster-pipes-context <b64>`` and ``--dagster-pipes-messages <b64>``
        are appended to ``HadoopJarStep.Args`` (S3 bucket/key of the context and messages).
        """
        args = self._remote_arguments(
            function, inputs, output, lake, params, group_by, self.device_buckets
        )
        return self.script_step(APPLY_BY_DEVICE, args, name=self._step_name(function, output))

    @staticmethod
    def _step_name(function: Callable[..., Any] | str, output: str) -> str:
        return f"apply_by_device {function_path(function)} -> {output}"

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

    def emr_serverless_job(self, script: str | os.PathLike[str], args: Sequence[str]) -> dict:
        """``start_job_run`` parameters for EMR Serverless (before Pipes adds its driver env)."""
        confs = " ".join(f"--conf {k}={v}" for k, v in sorted(self.cluster_conf().items()))
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
        function: Callable | str,
        inputs: list[str],
        output: str,
        params: dict | None = None,
        group_by: list[str] | None = None,
        lake: LakeResource,
        buckets: int | None = None,
    ) -> dict:
        """Run a per-device function over lake keys ``inputs``; write Parquet parts to ``output``.

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
                    context, fn, present, output, params, group_by, lake, buckets
                ),
            }
        args = self._remote_arguments(fn, present, output, lake, params, group_by, buckets)
        name = self._step_name(fn, output)
        return {**base, **self._run_remote(context, APPLY_BY_DEVICE, args, name)}

    def run_script(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        script_path: str | os.PathLike[str],
        args: Sequence[str],
    ) -> dict:
        """Run any dagster-pipes job script (locally by path; on EMR from ``EMR_SCRIPTS_S3``).

        Returns the last custom message the script reported (plus engine and timing).
        """
        if self.backend == "local":
            return self._run_local(context, script_path, list(args))
        return self._run_remote(context, script_path, list(args))

    def _local_command(self, script: str | os.PathLike[str], args: list[str]) -> list[str]:
        return [
            sys.executable,
            str(script),
            *args,
            "--master",
            self.master,
            "--spark-conf",
            json.dumps(self.local_conf(), sort_keys=True),
        ]

    def _run_local(self, context: Any, script: str | os.PathLike[str], args: list[str]) -> dict:
        root = str(JOBS_DIR.parent.parent)
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
            return self._run_local(context, APPLY_BY_DEVICE, args)
        with tempfile.TemporaryDirectory(prefix="spark-stage-") as tmp:
            staged = []
            for i, key in enumerate(inputs):
                folder = Path(tmp, "in", str(i), key)  # keeps trailing key=value folders
                for obj in lake.parquet_files(key):
                    path = folder / (obj[len(key) :].lstrip("/") or Path(obj).name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(lake.read_bytes(obj))
                staged.append(str(folder))
            out = Path(tmp, "out")
            args = self.job_arguments(fn, staged, str(out), params, group_by, buckets)
            summary = self._run_local(context, APPLY_BY_DEVICE, args)
            lake.delete(output)
            for part in sorted(out.rglob("*.parquet")):
                lake.write_bytes(f"{output}/{part.relative_to(out).as_posix()}", part.read_bytes())
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
        script: str | os.PathLike[str],
        args: list[str],
        name: str | None = None,
    ) -> dict:
        with summary_only_pipes(context):
            return self._run_remote_pipes(context, script, args, name)

    def _run_remote_pipes(
        self, context: Any, script: str | os.PathLike[str], args: list[str], name: str | None
    ) -> dict:
        injector, reader = self._s3_pipes()
        started = time.perf_counter()
        if self.backend == "emr":
            step = self.script_step(script, args, name)
            invocation = PipesEMRStepClient(
                cluster_id=str(self.emr_cluster_id),
                client=self._boto("emr"),
                context_injector=injector,
                message_reader=reader,
                poll_interval_s=self.poll_interval_s,
                timeout_s=self.step_timeout_s,
            ).run(context=context, step=step)
            command = step["HadoopJarStep"]["Args"]
        else:
            from dagster_aws.pipes import PipesEMRServerlessClient

            job = self.emr_serverless_job(script, args)
            invocation = PipesEMRServerlessClient(
                client=self._boto("emr-serverless"),
                context_injector=injector,
                message_reader=reader,
                poll_interval=self.poll_interval_s,
            ).run(context=context, start_job_run_params=job)  # type: ignore[arg-type]
            command = job["jobDriver"]["sparkSubmit"]
        messages = invocation.get_custom_messages()
        return {
            **(messages[-1] if messages else {}),
            "engine": self.backend,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "command": command,
        }

    # ---- deployment -------------------------------------------------------------------------
    def deploy_scripts(self, zip_path: str | os.PathLike[str] | None = None) -> list[str]:
        """Upload the job scripts, the bootstrap action and the ``--py-files`` zip to S3."""
        s3 = self._boto("s3")
        uploads = [(JOBS_DIR / name, self.script_uri(name)) for name in JOB_SCRIPTS]
        uploads.append((BOOTSTRAP, self.script_uri(BOOTSTRAP)))
        with tempfile.TemporaryDirectory() as tmp:
            archive = build_py_files(zip_path or Path(tmp, "platform.zip"))
            uploads.append((archive, self.py_files_uri()))
            for path, uri in uploads:
                bucket, key = s3_parts(uri)
                s3.upload_file(str(path), bucket, key)
        return [uri for _, uri in uploads]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resources.spark deploy`` | ``python -m resources.spark build-zip PATH``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m resources.spark", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("deploy", help="upload job scripts, bootstrap and zip to EMR_SCRIPTS_S3")
    build = sub.add_parser("build-zip", help="build the --py-files zip locally")
    build.add_argument("path", nargs="?", default="dist/platform.zip")
    args = parser.parse_args(argv)
    if args.command == "build-zip":
        print(build_py_files(args.path))
    else:
        for uri in SparkResource.from_env().deploy_scripts():
            print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
