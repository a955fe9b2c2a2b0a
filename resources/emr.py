"""EMR with Dagster Pipes: run one step on a running cluster, context and messages on S3.

Generic: knows nothing of the platform's job scripts (``resources.spark`` builds the steps).
dagster_aws is imported on first use, so code locations that never talk to EMR do not pay for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg

STEP_DONE, STEP_FAILED = {"COMPLETED"}, {"FAILED", "CANCELLED", "INTERRUPTED", "CANCEL_PENDING"}


def s3_parts(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``)."""
    if "://" not in uri:
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


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
