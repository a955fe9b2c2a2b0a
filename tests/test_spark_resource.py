"""The Spark resource: real local Spark end to end, and what would be submitted to EMR (moto)."""

import base64
import gzip
import json
import threading
import time
import uuid
import zipfile
import zlib
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets.spark_jobs import APPLY_BY_DEVICE, apply_by_device
from near_assets.spark_jobs.apply_by_device import BASE_CONF
from near_assets.spark_jobs.deploy import build_py_files, deploy_scripts
from near_assets.spark_jobs.examples import count_pings
from resources.lake import LakeResource
from resources.spark import EMR_RELEASE, LOCAL_CONF, SPARK_LINE, SparkResource, function_path

CLUSTER_JSON = Path(__file__).resolve().parent.parent / "deploy" / "emr" / "cluster.json"
DAY = "2024-01-01"


def pings(n: int = 600, devices: int = 12, day: str = DAY, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "device_id": rng.choice([f"dev-{i:03d}" for i in range(devices)], n),
            "ts": pd.Timestamp(day, tz="UTC")
            + pd.to_timedelta(rng.integers(0, 86_400_000, n), unit="ms"),  # stored as ns
            "lat": rng.normal(40.4, 0.05, n),
            "lon": rng.normal(-3.7, 0.05, n),
            "accuracy_m": rng.uniform(3, 300, n),
        }
    )


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    out = df.sort_values(["device_id", "first_ts"]).reset_index(drop=True)
    for col in ("first_ts", "last_ts"):
        out[col] = out[col].astype("datetime64[ns, UTC]")
    return out


def decode(value: str) -> dict:
    return json.loads(zlib.decompress(base64.b64decode(value)))


def test_from_env_defaults_to_local_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPARK_MASTER", "EMR_CLUSTER_ID", "EMR_SERVERLESS_APP_ID", "LAKE_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    spark = SparkResource.from_env()
    assert (spark.backend, spark.master) == ("local", "local[*]")
    assert (spark.driver_memory, spark.shuffle_partitions) == ("2g", 4)


def test_from_env_sizes_the_local_driver_and_shuffles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARK_DRIVER_MEMORY", "6g")
    monkeypatch.setenv("SPARK_SHUFFLE_PARTITIONS", "16")
    conf = SparkResource.from_env().local_conf()
    assert (conf["spark.driver.memory"], conf["spark.sql.shuffle.partitions"]) == ("6g", "16")


def test_jobs_raise_shuffle_partitions_with_the_input_never_lower_them() -> None:
    from near_assets.spark_jobs.apply_by_device import ROWS_PER_SHUFFLE_PARTITION, sized_shuffle

    class Conf:  # the two calls sized_shuffle makes of ``spark.conf``
        def __init__(self, value: str) -> None:
            self.values = {"spark.sql.shuffle.partitions": value}

        def get(self, key: str, default: str) -> str:
            return self.values.get(key, default)

        def set(self, key: str, value: str) -> None:
            self.values[key] = value

    class Session:
        def __init__(self, value: str) -> None:
            self.conf = Conf(value)

    assert sized_shuffle(Session("4"), 1_000) == 4
    assert sized_shuffle(Session("4"), 50 * ROWS_PER_SHUFFLE_PARTITION + 1) == 51
    assert sized_shuffle(Session("96"), 50 * ROWS_PER_SHUFFLE_PARTITION) == 96


def test_from_env_switches_to_emr_with_cluster_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMR_CLUSTER_ID", "j-ABC")
    monkeypatch.setenv("EMR_SCRIPTS_S3", "s3://art/platform/jobs")
    monkeypatch.setenv("EMR_PIPES_BUCKET", "pipes")
    monkeypatch.setenv("EMR_SPARK_CONF", '{"spark.executor.instances": "40"}')
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    spark = SparkResource.from_env()
    assert spark.backend == "emr"
    assert spark.script_uri(APPLY_BY_DEVICE) == "s3://art/platform/jobs/apply_by_device.py"
    assert spark.py_files_uri() == "s3://art/platform/jobs/platform.zip"
    conf = spark.cluster_conf(BASE_CONF)
    assert conf["spark.executor.instances"] == "40"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.yarn.appMasterEnv.AWS_REGION"] == "eu-west-1"


def test_function_path_refuses_functions_a_spark_job_cannot_import() -> None:
    assert function_path(count_pings) == "near_assets.spark_jobs.examples:count_pings"
    with pytest.raises(ValueError, match="spark_schema"):
        function_path(lambda df: df)
    with pytest.raises(ValueError, match="module-level"):
        function_path("tests.something:outer.<locals>.inner")


def test_run_per_device_without_input_clears_output_and_reports_zero(
    tmp_lake: LakeResource,
) -> None:
    tmp_lake.write_parquet(pings(10), "work/pings_per_device/date=2024-01-01")
    summary = SparkResource().run_per_device(
        dg.build_asset_context(),
        script=APPLY_BY_DEVICE,
        function=count_pings,
        inputs=["work/clean_pings/date=2023-12-31"],
        output="work/pings_per_device/date=2024-01-01",
        lake=tmp_lake,
    )
    assert summary["rows"] == 0 and summary["skipped"] == "no input"
    assert not tmp_lake.exists("work/pings_per_device/date=2024-01-01")


@pytest.mark.spark
def test_local_run_per_device_in_materialize_matches_in_process(tmp_lake: LakeResource) -> None:
    days = ["2024-01-01", "2024-01-02"]
    frames = [pings(300, devices=6, day=d, seed=i) for i, d in enumerate(days)]
    for day, frame in zip(days, frames, strict=True):
        tmp_lake.write_parquet(frame, f"work/clean_pings/date={day}")

    @dg.asset
    def pings_per_device_day(
        context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource
    ) -> None:
        """Pings per device and day, computed by Spark."""
        summary = spark.run_per_device(
            context,
            script=APPLY_BY_DEVICE,
            function=count_pings,
            inputs=[f"work/clean_pings/date={d}" for d in days],
            output="work/pings_per_device_day",
            params={"max_accuracy_m": 150},
            group_by=["device_id", "date"],
            lake=lake,
        )
        context.add_output_metadata({k: summary[k] for k in ("rows", "input_rows")})

    resources = {"spark": SparkResource(master="local[2]", shuffle_partitions=2), "lake": tmp_lake}
    result = dg.materialize([pings_per_device_day], resources=resources)

    assert result.success
    expected = pd.concat([count_pings(f, max_accuracy_m=150) for f in frames])
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert (meta["rows"].value, meta["input_rows"].value) == (len(expected), 600)
    got = tmp_lake.read_parquet("work/pings_per_device_day")
    assert str(got["first_ts"].dtype).endswith("UTC]")
    pd.testing.assert_frame_equal(canonical(got), canonical(expected), check_exact=False)
    folder = Path(tmp_lake.uri("work/pings_per_device_day"))
    assert all(p.suffix == ".parquet" for p in folder.iterdir())


def test_partition_folders_given_directly_keep_their_values() -> None:
    values = apply_by_device.partition_values("s3a://b/lake/work/x/region=eu/date=2024-01-01/")
    assert values == {"date": "2024-01-01", "region": "eu"}
    assert apply_by_device.partition_values("/lake/work/x") == {}


# ---- EMR: what would be submitted (moto's EMR is an API stub: steps never run) -------------


@pytest.fixture
def artifacts(moto_endpoint: str) -> str:
    bucket = f"artifacts-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def emr_cluster(moto_endpoint: str, artifacts: str) -> str:
    request = json.loads(CLUSTER_JSON.read_text())
    assert (request["ReleaseLabel"], request["Applications"]) == (
        EMR_RELEASE,  # Spark 4.0.2: the line of the local pyspark pin (deploy/emr/README.md)
        [{"Name": "Spark"}],  # the release has no Hadoop application (YARN/HDFS come with Spark)
    )
    request["LogUri"] = f"s3://{artifacts}/emr/logs/"
    return boto3.client("emr", endpoint_url=moto_endpoint).run_job_flow(**request)["JobFlowId"]


def emr_resource(moto_endpoint: str, bucket: str, cluster_id: str | None = None, **kw):
    return SparkResource(
        emr_cluster_id=cluster_id,
        scripts_s3=f"s3://{bucket}/platform/jobs/",
        pipes_bucket=bucket,
        pipes_prefix="dagster/pipes/",
        endpoint_url=moto_endpoint,
        **kw,
    )


def test_deploy_scripts_uploads_job_script_bootstrap_and_zip(
    moto_endpoint: str, artifacts: str, tmp_path: Path
) -> None:
    spark = emr_resource(moto_endpoint, artifacts)
    uris = deploy_scripts(spark, zip_path=tmp_path / "platform.zip")

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    key = "platform/jobs/apply_by_device.py"
    body = s3.get_object(Bucket=artifacts, Key=key)["Body"].read()
    assert body == APPLY_BY_DEVICE.read_bytes()
    assert f"s3://{artifacts}/platform/jobs/bootstrap.sh" in uris
    assert f"s3://{artifacts}/platform/jobs/platform.zip" in uris
    names = zipfile.ZipFile(tmp_path / "platform.zip").namelist()
    assert {"near_assets/spark_jobs/apply_by_device.py", "dagster_pipes/__init__.py"} <= set(names)
    assert "near_assets/spark_jobs/examples.py" in names


def test_emr_step_needs_an_s3_lake(tmp_lake: LakeResource) -> None:
    with pytest.raises(ValueError, match="LAKE_BUCKET"):
        SparkResource(emr_cluster_id="j-1", scripts_s3="s3://b/jobs/").emr_step(
            script=APPLY_BY_DEVICE, function=count_pings, inputs=["a"], output="b", lake=tmp_lake
        )


def play_the_remote_driver(step_args: list[str]) -> None:
    """Open Pipes from the step's arguments like the job script does, log, and close."""
    from dagster_pipes import PipesContext, PipesMappingParamsLoader

    loader = PipesMappingParamsLoader(
        {
            "DAGSTER_PIPES_CONTEXT": step_args[step_args.index("--dagster-pipes-context") + 1],
            "DAGSTER_PIPES_MESSAGES": step_args[step_args.index("--dagster-pipes-messages") + 1],
        }
    )
    remote = PipesContext(loader, *apply_by_device.pipes_io(loader))
    remote.log.info("hello from the remote driver")
    remote.close()


def test_emr_submission_adds_the_documented_step_with_pipes_on_s3(
    moto_endpoint: str,
    artifacts: str,
    emr_cluster: str,
    s3_lake: LakeResource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # for the remote side's boto3
    s3_lake.write_parquet(pings(50), f"work/clean_pings/date={DAY}")
    spark = emr_resource(
        moto_endpoint, artifacts, emr_cluster, poll_interval_s=0.2, step_timeout_s=3, log_wait_s=5
    )
    call = {
        "script": APPLY_BY_DEVICE,
        "job_conf": BASE_CONF,
        "function": count_pings,
        "inputs": [f"work/clean_pings/date={DAY}"],
        "output": f"work/pings_per_device/date={DAY}",
        "params": {"max_accuracy_m": 150},
        "group_by": ["device_id"],
    }

    @dg.asset
    def pings_per_device(context: dg.AssetExecutionContext, lake: LakeResource) -> None:
        """Pings per device, computed on EMR."""
        spark.run_per_device(context, lake=lake, **call)

    outcome: dict = {}
    instance = dg.DagsterInstance.ephemeral()
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=dg.materialize(
                [pings_per_device],
                resources={"lake": s3_lake},
                instance=instance,
                raise_on_error=False,
            )
        )
    )
    emr = boto3.client("emr", endpoint_url=moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    runner.start()
    steps: list = []
    deadline = time.monotonic() + 30
    while not steps and time.monotonic() < deadline:
        steps = emr.list_steps(ClusterId=emr_cluster)["Steps"]
        time.sleep(0.1)
    assert steps, "no step was added to the cluster"
    args = steps[0]["Config"]["Args"]
    context_ref = decode(args[args.index("--dagster-pipes-context") + 1])
    pipes_context = json.loads(
        s3.get_object(Bucket=context_ref["bucket"], Key=context_ref["key"])["Body"].read()
    )
    play_the_remote_driver(args)  # what apply_by_device does on the cluster, minus Spark
    step_logs = f"emr/logs/{emr_cluster}/steps/{steps[0]['Id']}"  # what EMR pushes to LogUri
    for stream in ("stdout", "stderr"):
        body = gzip.compress(f"spark-submit said this on {stream}\n".encode())
        s3.put_object(Bucket=artifacts, Key=f"{step_logs}/{stream}.gz", Body=body)
    runner.join(60)

    assert not runner.is_alive()
    result = outcome["result"]
    assert not result.success  # moto never finishes a step: the timeout fired and cancelled it
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "TimeoutError" in failure.event_specific_data.error.to_string()
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("hello from the remote driver" in m for m in logs), "S3 messages not read"
    for stream in ("stdout", "stderr"):  # the step's log tails, even for a step that timed out
        assert any(
            f"----- begin {stream} -----\nspark-submit said this on {stream}" in m for m in logs
        ), f"no {stream} tail in the run log"
    expected = spark.emr_step(lake=s3_lake, **call)
    step = emr.describe_step(ClusterId=emr_cluster, StepId=steps[0]["Id"])["Step"]
    assert step["Name"] == expected["Name"]
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert args[: len(expected["HadoopJarStep"]["Args"])] == expected["HadoopJarStep"]["Args"]
    assert args[:5] == [
        "spark-submit",
        "--deploy-mode",
        "cluster",
        "--py-files",
        f"s3://{artifacts}/platform/jobs/platform.zip",
    ]
    script = args.index(f"s3://{artifacts}/platform/jobs/apply_by_device.py")
    confs = dict(a.split("=", 1) for a in args[6:script:2])
    assert confs["spark.executor.instances"] == "12"
    assert confs["spark.executor.cores"] == "2"
    assert confs["spark.sql.session.timeZone"] == "UTC"
    assert confs["spark.sql.ansi.enabled"] == "true"  # as locally (LOCAL_CONF)
    job = apply_by_device.parse_args(args[script + 1 :])
    lake_root = f"s3a://{s3_lake.bucket}/platform"
    assert job.function == "near_assets.spark_jobs.examples:count_pings"
    assert job.input == [f"{lake_root}/work/clean_pings/date={DAY}"]
    assert job.output == f"{lake_root}/work/pings_per_device/date={DAY}"
    assert json.loads(job.params) == {"max_accuracy_m": 150}
    assert job.group_by == "device_id"
    assert context_ref["bucket"] == artifacts
    assert context_ref["key"].startswith("dagster/pipes/context/")
    assert pipes_context["asset_keys"] == ["pings_per_device"]
    messages = decode(args[args.index("--dagster-pipes-messages") + 1])
    assert messages["bucket"] == artifacts
    assert messages["key_prefix"].startswith("dagster/pipes/messages/")


def test_emr_serverless_job_runs_the_same_script_with_the_same_settings() -> None:
    artifacts = "artifacts"
    spark = SparkResource(
        emr_serverless_app_id="00abc",
        emr_serverless_role_arn="arn:aws:iam::123456789012:role/emr-serverless-job",
        scripts_s3=f"s3://{artifacts}/platform/jobs/",
    )
    args = SparkResource.job_arguments(count_pings, ["s3a://lake/in"], "s3a://lake/out")
    job = spark.emr_serverless_job(APPLY_BY_DEVICE, args, BASE_CONF)

    assert spark.backend == "emr-serverless"
    driver = job["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == f"s3://{artifacts}/platform/jobs/apply_by_device.py"
    assert driver["entryPointArguments"] == args
    assert (
        f"--py-files s3://{artifacts}/platform/jobs/platform.zip" in driver["sparkSubmitParameters"]
    )
    assert "--conf spark.sql.session.timeZone=UTC" in driver["sparkSubmitParameters"]


def test_build_py_files_contains_the_science_package(tmp_path: Path) -> None:
    names = zipfile.ZipFile(build_py_files(tmp_path / "p.zip")).namelist()
    assert "near_assets/science/engine.py" in names
    # what every job script imports besides itself
    assert "near_assets/spark_jobs/_pipes_main.py" in names
    assert "near_assets/spark_jobs/relational.py" in names
    assert not any("__pycache__" in n for n in names)


def test_the_run_process_never_hosts_spark() -> None:
    """Pipes replaces ``dagster_pyspark.PySparkResource``: loading the code location (what a run
    process does) imports no pyspark/py4j, and the ``spark`` resource is the Pipes launcher."""
    import subprocess
    import sys

    probe = (
        "import sys, near_assets.definitions as d, resources.spark as s\n"
        "assert isinstance(d.defs.resources['spark'], s.SparkResource), d.defs.resources['spark']\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " {'pyspark', 'py4j', 'dagster_pyspark'}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_local_pyspark_is_on_the_spark_line_of_the_emr_release() -> None:
    """Tests run the engine production runs: pyspark 4.0.x locally, emr-spark-8.0.0 (4.0.2)."""
    from importlib.metadata import version

    assert json.loads(CLUSTER_JSON.read_text())["ReleaseLabel"] == EMR_RELEASE
    assert version("pyspark").startswith(f"{SPARK_LINE}."), version("pyspark")
    assert LOCAL_CONF["spark.sql.ansi.enabled"] == "true"


def test_emr_cost_model_prices_every_instance_of_cluster_json() -> None:
    """``deploy/emr/cost.py`` gives the README's figures (25 CPU-µs/ping: $1.56 of work)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("emr_cost", CLUSTER_JSON.with_name("cost.py"))
    assert spec and spec.loader
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    cluster = json.loads(CLUSTER_JSON.read_text())
    kinds = {g["InstanceType"] for g in cluster["Instances"]["InstanceGroups"]}
    assert kinds <= set(cost.PRICES), "price the new instance types in deploy/emr/cost.py"
    day = cost.day_cost(25)
    assert (day["effective_vcpus"], day["cluster_minutes_working"]) == (24, 28.3)
    assert (day["usd_working"], day["usd_day_cluster_started_daily"]) == (1.56, 5.52)
    assert cost.day_cost(10)["usd_working"] == 0.98
