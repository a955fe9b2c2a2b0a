"""EMR steps report back to Dagster: log tails from the cluster's LogUri, links as metadata.

moto's EMR never runs a step, so the step logs EMR would push are put on moto S3 where EMR puts
them (``<LogUri>/<cluster-id>/steps/<step-id>/std{out,err}.gz``) and the report is run for the
step as Dagster runs it when a step ends.
"""

import gzip
import json
import threading
import time
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest

from resources.emr import (
    PipesEMRStepClient,
    console_url,
    fetch_log_tails,
    read_log_tail,
    serverless_job_report,
    serverless_log_uris,
    step_log_uris,
    step_report,
)
from resources.spark import SparkResource, remote_ids

CLUSTER_JSON = Path(__file__).resolve().parent.parent / "deploy" / "emr" / "cluster.json"
REGION = "us-east-1"


@pytest.fixture
def s3(moto_endpoint: str):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def emr(moto_endpoint: str):
    return boto3.client("emr", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def logs_bucket(s3) -> str:
    bucket = f"emr-logs-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def cluster_id(emr, logs_bucket: str) -> str:
    request = json.loads(CLUSTER_JSON.read_text())
    request["LogUri"] = f"s3://{logs_bucket}/emr/logs/"
    return emr.run_job_flow(**request)["JobFlowId"]


def add_step(emr, cluster_id: str) -> str:
    step = {
        "Name": "apply_by_device",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "job.py"]},
    }
    return emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])["StepIds"][0]


def put_gz(s3, uri: str, text: str) -> None:
    bucket, key = uri[5:].split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))


STDOUT = "".join(f"stdout line {i:05d}\n" for i in range(5_000)) + "job summary: rows=42\n"
STDERR = "WARN early noise\n" * 2_000 + "Traceback (most recent call last):\nValueError: boom\n"


def test_step_log_location_and_console_link() -> None:
    uris = step_log_uris("s3n://logs/emr/logs/", "j-ABC", "s-XYZ")
    assert uris == {
        "stdout": "s3://logs/emr/logs/j-ABC/steps/s-XYZ/stdout.gz",
        "stderr": "s3://logs/emr/logs/j-ABC/steps/s-XYZ/stderr.gz",
    }
    assert console_url("eu-west-1", "j-ABC") == (
        "https://eu-west-1.console.aws.amazon.com/emr/home?region=eu-west-1#/clusterDetails/j-ABC"
    )


def test_read_log_tail_keeps_the_end_from_a_whole_line(s3, logs_bucket: str) -> None:
    uri = f"s3://{logs_bucket}/x/stdout.gz"
    put_gz(s3, uri, STDOUT)
    tail = read_log_tail(s3, uri, tail_bytes=200)
    assert tail is not None and tail.endswith("job summary: rows=42\n")
    assert len(tail) <= 200 and tail.startswith("stdout line ")
    assert read_log_tail(s3, f"s3://{logs_bucket}/x/missing.gz") is None


def test_step_report_puts_tails_in_the_run_log_and_links_in_metadata(
    s3, emr, logs_bucket: str, cluster_id: str
) -> None:
    step_id = add_step(emr, cluster_id)
    uris = step_log_uris(f"s3://{logs_bucket}/emr/logs/", cluster_id, step_id)
    put_gz(s3, uris["stdout"], STDOUT)
    put_gz(s3, uris["stderr"], STDERR)

    @dg.asset
    def emr_step_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Reports an (already finished) EMR step."""
        client = PipesEMRStepClient(
            cluster_id=cluster_id,
            client=emr,
            context_injector=None,  # type: ignore[arg-type]  # report() needs neither
            message_reader=None,  # type: ignore[arg-type]
            s3_client=s3,
            log_wait_s=5,
            log_poll_s=0.1,
        )
        return dg.MaterializeResult(metadata=client.report(context, step_id))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([emr_step_asset], instance=instance)

    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    out = next(m for m in logs if "----- begin stdout -----" in m)
    err = next(m for m in logs if "----- begin stderr -----" in m)
    assert "job summary: rows=42\n----- end stdout -----" in out and uris["stdout"] in out
    assert "ValueError: boom\n----- end stderr -----" in err and uris["stderr"] in err
    assert len(out) < 10_000  # a tail, not the whole log
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["emr_cluster_id"].value == cluster_id
    assert meta["emr_step_id"].value == step_id
    assert meta["emr_console_url"] == dg.MetadataValue.url(console_url(REGION, cluster_id))
    assert meta["emr_step_stdout"] == dg.MetadataValue.path(uris["stdout"])
    assert meta["emr_step_stderr"] == dg.MetadataValue.path(uris["stderr"])


def test_logs_pushed_late_are_waited_for_within_the_bound(s3, logs_bucket: str) -> None:
    uris = {s: f"s3://{logs_bucket}/late/{s}.gz" for s in ("stdout", "stderr")}
    pusher = threading.Timer(0.5, lambda: [put_gz(s3, u, f"{s} ok\n") for s, u in uris.items()])
    pusher.start()
    tails = fetch_log_tails(s3, uris, wait_s=20, poll_s=0.1)
    pusher.join()
    assert tails == {"stdout": "stdout ok\n", "stderr": "stderr ok\n"}


def test_missing_logs_end_the_wait_and_say_so(s3, emr, logs_bucket: str, cluster_id: str) -> None:
    step_id = add_step(emr, cluster_id)
    context = dg.build_asset_context()
    started = time.monotonic()
    meta = step_report(context, emr=emr, s3=s3, cluster_id=cluster_id, step_id=step_id,
                       wait_s=0.3, poll_s=0.1)  # fmt: skip
    assert time.monotonic() - started < 30
    assert meta["emr_step_id"].value == step_id
    assert meta["emr_step_stderr"].value.endswith(f"/{step_id}/stderr.gz")
    # what SparkResource's summary carries as plain strings beside ``metadata``
    ids = remote_ids(meta)
    assert ids["emr_step_id"] == step_id and ids["emr_console_url"].startswith("https://")
    assert ids["emr_step_stdout"] == meta["emr_step_stdout"].value


def test_emr_serverless_report_names_dashboard_and_s3_logs(
    moto_endpoint: str, s3, logs_bucket: str
) -> None:
    client = boto3.client("emr-serverless", endpoint_url=moto_endpoint, region_name=REGION)
    # moto's release list stops before emr-spark-8.0.0 (what cluster.json deploys)
    app = client.create_application(name="near", releaseLabel="emr-7.5.0", type="SPARK")
    app_id = app["applicationId"]
    log_uri = f"s3://{logs_bucket}/serverless/"
    run = client.start_job_run(
        applicationId=app_id,
        executionRoleArn="arn:aws:iam::123456789012:role/emr-serverless-job",
        jobDriver={"sparkSubmit": {"entryPoint": "s3://b/jobs/apply_by_device.py"}},
        configurationOverrides={
            "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": log_uri}}
        },
    )
    uris = serverless_log_uris(log_uri, app_id, run["jobRunId"])
    assert uris["stderr"] == f"{log_uri}applications/{app_id}/jobs/{run['jobRunId']}" + (
        "/SPARK_DRIVER/stderr.gz"
    )
    put_gz(s3, uris["stdout"], STDOUT)
    put_gz(s3, uris["stderr"], STDERR)

    @dg.asset
    def serverless_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Reports an (already finished) EMR Serverless job run."""
        meta = serverless_job_report(
            context, client=client, s3=s3, application_id=app_id,
            job_run_id=run["jobRunId"], wait_s=2, poll_s=0.1,
        )  # fmt: skip
        return dg.MaterializeResult(metadata=meta)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([serverless_asset], instance=instance)

    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("ValueError: boom\n----- end stderr -----" in m for m in logs)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["emr_serverless_job_run_id"].value == run["jobRunId"]
    assert meta["emr_serverless_driver_stdout"] == dg.MetadataValue.path(uris["stdout"])
    # moto serves no dashboard (GetDashboardForJobRun): the report says so and goes on; on AWS
    # the link is ``emr_serverless_dashboard_url``.
    if "emr_serverless_dashboard_url" not in meta:
        assert any("no dashboard" in m for m in logs)


def test_a_failed_step_fails_the_asset_with_its_logs_and_links(
    moto_endpoint: str, s3, emr, logs_bucket: str, cluster_id: str
) -> None:
    class StepThatFails(PipesEMRStepClient):
        """moto's steps never end: this one ends as EMR ends a FAILED step (logs pushed, then
        ``_wait`` raises what it raises for FAILED)."""

        def _wait(self, context, step_id: str) -> None:
            uris = step_log_uris(f"s3://{logs_bucket}/emr/logs/", cluster_id, step_id)
            put_gz(s3, uris["stdout"], STDOUT)
            put_gz(s3, uris["stderr"], STDERR)
            raise dg.Failure(
                f"EMR step {step_id} on {cluster_id} ended FAILED",
                metadata={"Reason": "Unknown Error."},
            )

    injector, reader = SparkResource(
        scripts_s3=f"s3://{logs_bucket}/jobs/",
        endpoint_url=moto_endpoint,
        region=REGION,
        poll_interval_s=0.5,
    )._s3_pipes()
    step = {
        "Name": "apply_by_device",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "job.py"]},
    }

    @dg.asset
    def failing_step(context: dg.AssetExecutionContext) -> None:
        """An EMR step that fails."""
        StepThatFails(
            cluster_id=cluster_id,
            client=emr,
            context_injector=injector,
            message_reader=reader,
            s3_client=s3,
            log_wait_s=5,
            log_poll_s=0.1,
        ).run(context=context, step=step)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([failing_step], instance=instance, raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    meta = failure.step_failure_data.user_failure_data.metadata
    step_id = meta["emr_step_id"].value
    assert meta["Reason"].value == "Unknown Error."
    assert meta["emr_console_url"] == dg.MetadataValue.url(console_url(REGION, cluster_id))
    assert meta["emr_step_stderr"].value.endswith(f"{cluster_id}/steps/{step_id}/stderr.gz")
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("ValueError: boom\n----- end stderr -----" in m for m in logs)


def test_spark_resource_on_emr_serverless_reports_the_job_run(
    moto_endpoint: str, logs_bucket: str
) -> None:
    """The whole Serverless path of ``SparkResource`` (moto's job runs succeed at once)."""
    client = boto3.client("emr-serverless", endpoint_url=moto_endpoint, region_name=REGION)
    app_id = client.create_application(name="near", releaseLabel="emr-7.5.0", type="SPARK")[
        "applicationId"
    ]
    spark = SparkResource(
        emr_serverless_app_id=app_id,
        emr_serverless_role_arn="arn:aws:iam::123456789012:role/emr-serverless-job",
        scripts_s3=f"s3://{logs_bucket}/jobs/",
        endpoint_url=moto_endpoint,
        region=REGION,
        poll_interval_s=0.5,
        log_wait_s=1,
    )
    summaries = []

    @dg.asset
    def on_serverless(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """A job script run on EMR Serverless."""
        summary = spark.run_script(context, "job.py", ["--day", "2024-01-01"])
        summaries.append(summary)
        return dg.MaterializeResult(metadata=summary["metadata"])

    result = dg.materialize([on_serverless])

    summary = summaries[0]
    assert summary["engine"] == "emr-serverless"
    run_id = summary["emr_serverless_job_run_id"]
    assert client.get_job_run(applicationId=app_id, jobRunId=run_id)["jobRun"]["jobRunId"] == run_id
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["emr_serverless_application_id"].value == app_id
    assert meta["emr_serverless_job_run_id"].value == run_id
