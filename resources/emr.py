"""EMR with Dagster Pipes: run one step on a running cluster, context and messages on S3.

Generic: knows nothing of the platform's job scripts (``resources.spark`` builds the steps).
dagster_aws is imported on first use, so code locations that never talk to EMR do not pay for it.

After a step ends (completed, failed or timed out), the tails of its stdout/stderr are fetched
from the cluster's ``LogUri`` (``<LogUri>/<cluster-id>/steps/<step-id>/std{out,err}.gz``; EMR
pushes them a few minutes late, so the fetch polls, bounded by ``log_wait_s``), written to the
run log between ``----- begin/end -----`` lines, and the step id, cluster id, console link and
log URIs become metadata (``step_report``). EMR Serverless: ``serverless_job_report``.
"""

from __future__ import annotations

import gzip
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg

STEP_DONE, STEP_FAILED = {"COMPLETED"}, {"FAILED", "CANCELLED", "INTERRUPTED", "CANCEL_PENDING"}
LOG_STREAMS = ("stdout", "stderr")
TAIL_BYTES = 8_000
"""How much of the end of each step log reaches the run log."""


def s3_parts(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``)."""
    if "://" not in uri:
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def s3_uri(uri: str) -> str:
    """EMR reports ``LogUri`` as ``s3n://...``: the same object as ``s3://...``."""
    scheme, sep, rest = uri.partition("://")
    return f"s3://{rest}" if sep and scheme in {"s3", "s3n", "s3a"} else uri


def console_url(region: str, cluster_id: str) -> str:
    """The cluster's page in the EMR console (its Steps tab lists the step)."""
    return (
        f"https://{region}.console.aws.amazon.com/emr/home?region={region}"
        f"#/clusterDetails/{cluster_id}"
    )


def step_log_uris(log_uri: str, cluster_id: str, step_id: str) -> dict[str, str]:
    """Where EMR puts a step's logs: ``<LogUri>/<cluster-id>/steps/<step-id>/std*.gz``."""
    base = f"{s3_uri(log_uri).rstrip('/')}/{cluster_id}/steps/{step_id}"
    return {stream: f"{base}/{stream}.gz" for stream in LOG_STREAMS}


def read_log_tail(s3: Any, uri: str, tail_bytes: int = TAIL_BYTES) -> str | None:
    """The last ``tail_bytes`` of a gzipped log on S3 (streamed), or None while it is absent."""
    bucket, key = s3_parts(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    except Exception as exc:  # 404 without the modelled error, or access denied
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    chunks: deque[bytes] = deque()
    kept = 0
    with gzip.GzipFile(fileobj=body) as stream:
        while chunk := stream.read(1 << 16):
            chunks.append(chunk)
            kept += len(chunk)
            while kept - len(chunks[0]) >= tail_bytes:
                kept -= len(chunks.popleft())
    tail = b"".join(chunks)[-tail_bytes:]
    if kept > tail_bytes and b"\n" in tail:  # start at a whole line
        tail = tail.split(b"\n", 1)[1]
    return tail.decode("utf-8", errors="replace")


def fetch_log_tails(
    s3: Any,
    uris: Mapping[str, str],
    *,
    wait_s: float = 120.0,
    poll_s: float = 10.0,
    tail_bytes: int = TAIL_BYTES,
) -> dict[str, str | None]:
    """Tails of the logs at ``uris``; polls until all exist or ``wait_s`` has passed."""
    deadline = time.monotonic() + wait_s
    tails: dict[str, str | None] = dict.fromkeys(uris)
    while True:
        for stream, uri in uris.items():
            if tails[stream] is None:
                tails[stream] = read_log_tail(s3, uri, tail_bytes)
        if all(t is not None for t in tails.values()) or time.monotonic() >= deadline:
            return tails
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def log_tails(context: Any, what: str, uris: Mapping[str, str], tails: Mapping) -> None:
    """Each tail in the run log, clearly delimited (a missing one is said to be missing)."""
    for stream, uri in uris.items():
        tail = tails.get(stream)
        if tail is None:
            context.log.warning(f"[emr] {what} {stream}: no log at {uri} yet (EMR pushes late)")
            continue
        context.log.info(
            f"[emr] {what} {stream} (tail of {uri}):\n"
            f"----- begin {stream} -----\n{tail.rstrip()}\n----- end {stream} -----"
        )


def step_report(
    context: Any,
    *,
    emr: Any,
    s3: Any,
    cluster_id: str,
    step_id: str,
    wait_s: float = 120.0,
    poll_s: float = 10.0,
    tail_bytes: int = TAIL_BYTES,
) -> dict[str, dg.MetadataValue]:
    """Log the tails of a finished step's stdout/stderr; metadata linking to the step and logs.

    Never raises for a missing log or LogUri (the step's outcome is what the asset reports).
    """
    region = emr.meta.region_name
    meta: dict[str, dg.MetadataValue] = {
        "emr_cluster_id": dg.MetadataValue.text(cluster_id),
        "emr_step_id": dg.MetadataValue.text(step_id),
        "emr_console_url": dg.MetadataValue.url(console_url(region, cluster_id)),
    }
    try:
        log_uri = emr.describe_cluster(ClusterId=cluster_id)["Cluster"].get("LogUri")
    except Exception as exc:
        context.log.warning(f"[emr] could not describe cluster {cluster_id}: {exc}")
        return meta
    if not log_uri:
        context.log.warning(f"[emr] cluster {cluster_id} has no LogUri: no step logs to show")
        return meta
    uris = step_log_uris(log_uri, cluster_id, step_id)
    meta.update({f"emr_step_{s}": dg.MetadataValue.path(u) for s, u in uris.items()})
    try:
        tails = fetch_log_tails(s3, uris, wait_s=wait_s, poll_s=poll_s, tail_bytes=tail_bytes)
    except Exception as exc:
        context.log.warning(f"[emr] could not read step logs under {log_uri}: {exc}")
        return meta
    log_tails(context, f"step {step_id}", uris, tails)
    return meta


def serverless_log_uris(
    log_uri: str, application_id: str, job_run_id: str, attempt: int | None = None
) -> dict[str, str]:
    """EMR Serverless S3 logs of a job run's Spark driver (attempt > 1 has its own folder)."""
    base = f"{s3_uri(log_uri).rstrip('/')}/applications/{application_id}/jobs/{job_run_id}"
    if attempt and attempt > 1:
        base += f"/attempts/{attempt}"
    return {s: f"{base}/SPARK_DRIVER/{s}.gz" for s in LOG_STREAMS}


def serverless_job_report(
    context: Any,
    *,
    client: Any,
    s3: Any,
    application_id: str,
    job_run_id: str,
    wait_s: float = 120.0,
    poll_s: float = 10.0,
    tail_bytes: int = TAIL_BYTES,
) -> dict[str, dg.MetadataValue]:
    """An EMR Serverless job run: dashboard link, S3 log location (if configured), log tails."""
    meta: dict[str, dg.MetadataValue] = {
        "emr_serverless_application_id": dg.MetadataValue.text(application_id),
        "emr_serverless_job_run_id": dg.MetadataValue.text(job_run_id),
    }
    try:
        url = client.get_dashboard_for_job_run(applicationId=application_id, jobRunId=job_run_id)
        meta["emr_serverless_dashboard_url"] = dg.MetadataValue.url(url["url"])
    except Exception as exc:  # not every endpoint (or a job run too old) serves a dashboard
        context.log.warning(f"[emr] no dashboard for job run {job_run_id}: {exc}")
    try:
        run = client.get_job_run(applicationId=application_id, jobRunId=job_run_id)["jobRun"]
        app = client.get_application(applicationId=application_id)["application"]
    except Exception as exc:
        context.log.warning(f"[emr] could not describe job run {job_run_id}: {exc}")
        return meta
    key = ("monitoringConfiguration", "s3MonitoringConfiguration")
    job_s3 = run.get("configurationOverrides", {}).get(key[0], {}).get(key[1], {})
    app_s3 = app.get(key[0], {}).get(key[1], {})
    log_uri = job_s3.get("logUri") or app_s3.get("logUri")
    if not log_uri:
        context.log.info(f"[emr] job run {job_run_id}: no S3 monitoring logUri configured")
        return meta
    uris = serverless_log_uris(log_uri, application_id, job_run_id, run.get("attempt"))
    meta.update({f"emr_serverless_driver_{s}": dg.MetadataValue.path(u) for s, u in uris.items()})
    try:
        tails = fetch_log_tails(s3, uris, wait_s=wait_s, poll_s=poll_s, tail_bytes=tail_bytes)
    except Exception as exc:
        context.log.warning(f"[emr] could not read job run logs under {log_uri}: {exc}")
        return meta
    log_tails(context, f"job run {job_run_id} driver", uris, tails)
    return meta


def prefixed_s3_message_reader(*, prefix: str = "", **kwargs: Any) -> dg.PipesMessageReader:
    """A ``PipesS3MessageReader`` whose message chunks live under ``prefix/`` in the bucket."""
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


def with_pipes_arguments(step: Mapping[str, Any], pipes_args: Mapping[str, str]) -> dict:
    """A copy of ``step`` whose spark-submit arguments end with the Pipes bootstrap arguments."""
    jar = dict(step["HadoopJarStep"])
    jar["Args"] = [*jar["Args"], *(x for kv in pipes_args.items() for x in kv)]
    return {**step, "HadoopJarStep": jar}


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
        s3_client: Any = None,
        log_wait_s: float = 120.0,
        log_poll_s: float = 10.0,
    ):
        self.cluster_id = cluster_id
        self.s3_client = s3_client
        self.log_wait_s = log_wait_s
        self.log_poll_s = log_poll_s
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
            except dg.Failure as failure:
                report = self.report(context, step_id)
                raise dg.Failure(
                    failure.description, metadata={**failure.metadata, **report}
                ) from None
            except TimeoutError:
                self.report(context, step_id)
                raise
            report = self.report(context, step_id)
        return dg.PipesClientCompletedInvocation(session, metadata=report)

    def report(self, context: Any, step_id: str) -> dict[str, dg.MetadataValue]:
        """Step logs to the run log, links as metadata (``step_report``); needs ``s3_client``."""
        if self.s3_client is None:
            return {
                "emr_cluster_id": dg.MetadataValue.text(self.cluster_id),
                "emr_step_id": dg.MetadataValue.text(step_id),
            }
        return step_report(
            context,
            emr=self.client,
            s3=self.s3_client,
            cluster_id=self.cluster_id,
            step_id=step_id,
            wait_s=self.log_wait_s,
            poll_s=self.log_poll_s,
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
