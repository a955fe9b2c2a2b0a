"""The nightly run purge deletes finished runs older than the cutoff, never running ones."""

import sys
import time
from pathlib import Path

import dagster as dg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from purge_runs import purge_runs


@dg.asset
def tiny() -> None:
    return None


def test_purge_keeps_recent_and_unfinished_runs() -> None:
    with dg.instance_for_test() as instance:
        done = [dg.materialize([tiny], instance=instance).run_id for _ in range(3)]
        running = instance.create_run_for_job(
            dg.Definitions(assets=[tiny]).resolve_implicit_global_asset_job_def(),
            status=dg.DagsterRunStatus.STARTED,
        )
        assert purge_runs(instance, older_than_days=1) == 0  # all younger than a day
        later = time.time() + 2 * 86400
        assert purge_runs(instance, 1, dry_run=True, now=later) == 3
        assert len(instance.get_runs()) == 4
        assert purge_runs(instance, 1, now=later, batch=2) == 3
        remaining = [r.run_id for r in instance.get_runs()]
        assert remaining == [running.run_id]
        assert not any(instance.all_logs(run_id) for run_id in done)
        with pytest.raises(ValueError, match=">= 0"):
            purge_runs(instance, -1)


# --- the housekeeping job: one horizon, retiring decided applicants, alerting on failure ---------


def test_one_horizon_covers_every_window_an_asset_reads() -> None:
    from near_assets import audience, mobility, profiles
    from sensors.housekeeping import MARGIN_DAYS, retention_horizon_days

    windows = {
        "home": 1 - mobility.HOME_MAPPING.start_offset,
        "affinity": 1 - profiles.AFFINITY_MAPPING.start_offset,
        "audience history": audience.HISTORY_DAYS + 1,
    }
    assert retention_horizon_days() == max(windows.values()) + MARGIN_DAYS
    assert retention_horizon_days() == 35  # affinity's 28 days + 7 by default


def applicant(user: str, ms: int) -> str:
    from risk_assets.validation import partition_key

    return partition_key(user, f"{ms}-0")


def test_housekeeping_job_retires_old_decided_applicants_and_purges_old_runs(
    redis_client, redis_url
) -> None:
    from resources.redis_store import RedisResource
    from risk_assets import streams
    from risk_assets.definitions import RETIRE_APPLICANTS, defs
    from sensors.housekeeping import JOB_NAME, build_housekeeping

    assert defs.get_job_def(JOB_NAME) is not None  # in the risk_assets location, with its
    [schedule] = [s for s in defs.schedules or [] if s.name == f"{JOB_NAME}_schedule"]
    assert schedule.cron_schedule == "15 3 * * *"
    sensors = {s.name for s in defs.sensors or []}
    assert "risk_assets_run_failure_alert" in sensors  # failure alert of every run of the location

    now_ms = int(time.time() * 1000)
    old = [applicant(f"old user {i}", now_ms - (40 + i) * 86_400_000) for i in range(4)]
    young = [applicant("young user", now_ms - 86_400_000)]
    for key in old[:3]:  # the 4th old applicant was never decided: it keeps its partition
        redis_client.set(streams.DECIDED_PREFIX + key.rsplit("_", 1)[1], "1")
    [job] = [j for j in build_housekeeping([RETIRE_APPLICANTS]).jobs if j.name == JOB_NAME]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("applicants", sorted(old, key=lambda k: k[-15:]) + young)
        dg.materialize([tiny], instance=instance)
        result = job.execute_in_process(
            instance=instance,
            resources={"redis": RedisResource(url=redis_url)},
            run_config={"ops": {"housekeeping": {"config": {"dry_run": True}}}},
        )
        assert result.success
        assert len(instance.get_dynamic_partitions("applicants")) == 5  # dry run
        result = job.execute_in_process(
            instance=instance, resources={"redis": RedisResource(url=redis_url)}
        )
        assert result.success
        assert sorted(instance.get_dynamic_partitions("applicants")) == sorted([old[3], *young])
        logs = "\n".join(e.message or "" for e in instance.all_logs(result.run_id))
        assert "retired 3 partition(s) older than 35 days, kept 1 not done" in logs
        assert "purged 0 finished run(s)" in logs  # the runs are younger than the horizon
        later = time.time() + 36 * 86400
        assert purge_runs(instance, 35, now=later) == 3


def test_a_failed_housekeeping_run_alerts(caplog: pytest.LogCaptureFixture) -> None:
    from resources.redis_store import RedisResource
    from risk_assets.definitions import RETIRE_APPLICANTS
    from sensors.alerts import run_failure_alert_sensor
    from sensors.housekeeping import JOB_NAME, build_housekeeping
    from tests.conftest import free_port

    [job] = [j for j in build_housekeeping([RETIRE_APPLICANTS]).jobs if j.name == JOB_NAME]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("applicants", [applicant("u", 1_000_000_000_000)])
        dead_redis = RedisResource(url=f"redis://127.0.0.1:{free_port()}/0")
        result = job.execute_in_process(
            instance=instance, resources={"redis": dead_redis}, raise_on_error=False
        )
        assert not result.success
        sensor = run_failure_alert_sensor("risk_assets", token="")
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_event=result.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
        ).for_run_failure()
        sensor(context)
    assert "[risk_assets] run of `platform_housekeeping` failed" in caplog.text


def test_retire_sensor_keeps_the_live_applicant_list_to_the_last_minutes(
    redis_client, redis_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decided applicants leave the partition list minutes after their decision (not 35 days),
    a page at a time; undecided and recent ones stay; a negative setting turns it off."""
    from resources.redis_store import RedisResource
    from risk_assets import streams
    from risk_assets.definitions import RETIRE_APPLICANTS, defs
    from sensors import housekeeping

    assert "applicants_retire_sensor" in {s.name for s in defs.sensors or []}
    sensor = housekeeping.build_retire_sensor(RETIRE_APPLICANTS)
    now_ms = int(time.time() * 1000)
    decided = [applicant(f"done {i}", now_ms - (3600 - i) * 1000) for i in range(5)]
    undecided = applicant("waiting", now_ms - 1800 * 1000)
    recent = applicant("recent", now_ms - 60 * 1000)  # decided a minute ago
    for key in [*decided, recent]:
        redis_client.set(streams.DECIDED_PREFIX + key.rsplit("_", 1)[1], "1")
    resources = {"redis": RedisResource(url=redis_url)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("applicants", [*decided[:3], undecided, *decided[3:]])
        instance.add_dynamic_partitions("applicants", [recent])
        monkeypatch.setenv(housekeeping.RETIRE_AFTER_ENV, "-1")
        cursor: list[str | None] = [None]

        def tick():  # as the daemon evaluates it, carrying the cursor over
            data = sensor.evaluate_tick(
                dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor[0])
            )
            cursor[0] = data.cursor
            return data

        off = tick()
        assert "off" in off.skip_message and len(instance.get_dynamic_partitions("applicants")) == 7
        monkeypatch.setenv(housekeeping.RETIRE_AFTER_ENV, "600")
        monkeypatch.setattr(housekeeping, "RETIRE_MAX_KEYS_PER_TICK", 2)
        assert tick().skip_message.startswith("retired 2 ")  # one page of at most 2 keys
        assert tick().skip_message.startswith("retired 1 ")  # done 2; "waiting" is kept
        assert tick().skip_message.startswith("retired 2 ")  # resumed after it: done 3 and 4
        assert tick().skip_message.startswith("retired 0 ")  # reached "recent": starts over
        assert instance.get_dynamic_partitions("applicants") == [undecided, recent]


# --- the onboarding lane's short horizon ---------------------------------------------------------

ONBOARDING = {"platform/lane": "onboarding"}
BATCH = {"platform/lane": "batch"}


def backdate(instance: dg.DagsterInstance, run_ids: list[str], days: float) -> None:
    """Move runs' creation time ``days`` back, as if they had run then."""
    from datetime import timedelta

    import sqlalchemy as db
    from dagster._core.storage.runs.schema import RunsTable

    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            db.select(RunsTable.c.run_id, RunsTable.c.create_timestamp).where(
                RunsTable.c.run_id.in_(run_ids)
            )
        ).fetchall()
        for run_id, created in rows:
            conn.execute(
                RunsTable.update()
                .where(RunsTable.c.run_id == run_id)
                .values(create_timestamp=created - timedelta(days=days))
            )


def test_onboarding_runs_go_after_the_lane_horizon_batch_runs_of_the_same_age_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from risk_assets.signups import RUN_TAGS
    from sensors.housekeeping import (
        ONBOARDING_HORIZON_ENV,
        onboarding_run_horizon_days,
        purge_onboarding_runs,
    )

    assert RUN_TAGS["platform/lane"] == ONBOARDING["platform/lane"]  # what the sensor tags
    monkeypatch.delenv(ONBOARDING_HORIZON_ENV, raising=False)
    assert onboarding_run_horizon_days() == 2
    with dg.instance_for_test() as instance:
        onboarding = [
            dg.materialize([tiny], instance=instance, tags=RUN_TAGS).run_id for _ in range(3)
        ]
        batch = [dg.materialize([tiny], instance=instance, tags=BATCH).run_id for _ in range(2)]
        untagged = dg.materialize([tiny], instance=instance).run_id
        running = instance.create_run_for_job(
            dg.Definitions(assets=[tiny]).resolve_implicit_global_asset_job_def(),
            status=dg.DagsterRunStatus.STARTED,
            tags=ONBOARDING,
        )
        in_3_days = time.time() + 3 * 86400
        assert purge_onboarding_runs(instance) == 0  # younger than 2 days
        assert purge_onboarding_runs(instance, dry_run=True, now=in_3_days) == 3
        monkeypatch.setenv(ONBOARDING_HORIZON_ENV, "5")
        assert purge_onboarding_runs(instance, now=in_3_days) == 0  # a longer lane horizon
        monkeypatch.setenv(ONBOARDING_HORIZON_ENV, "2")
        assert purge_onboarding_runs(instance, now=in_3_days, batch=2) == 3  # two batches
        left = {r.run_id for r in instance.get_runs()}
        assert left == {*batch, untagged, running.run_id}  # batch, untagged, unfinished stay
        assert not any(instance.all_logs(run_id) for run_id in onboarding)
        assert instance.all_logs(batch[0])  # the batch runs keep their event logs
        assert purge_runs(instance, 35, now=in_3_days) == 0  # batch: the platform horizon
        assert purge_runs(instance, 35, now=time.time() + 36 * 86400) == 3
        assert [r.run_id for r in instance.get_runs()] == [running.run_id]
        monkeypatch.setenv(ONBOARDING_HORIZON_ENV, "-1")
        with pytest.raises(ValueError, match=">= 0"):
            purge_onboarding_runs(instance)


def test_hourly_onboarding_purge_job_and_the_nightly_job_apply_both_horizons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from risk_assets.definitions import defs
    from sensors.housekeeping import (
        JOB_NAME,
        ONBOARDING_HORIZON_ENV,
        ONBOARDING_PURGE_JOB_NAME,
        build_housekeeping,
    )

    monkeypatch.delenv(ONBOARDING_HORIZON_ENV, raising=False)
    assert defs.get_job_def(ONBOARDING_PURGE_JOB_NAME) is not None
    [hourly] = [
        s for s in defs.schedules or [] if s.name == f"{ONBOARDING_PURGE_JOB_NAME}_schedule"
    ]
    assert hourly.cron_schedule == "45 * * * *"
    assert hourly.default_status == dg.DefaultScheduleStatus.RUNNING
    jobs = {j.name: j for j in build_housekeeping().jobs}
    with dg.instance_for_test() as instance:
        ages = {"onboarding": [], "batch": []}  # 3 days old: past 2 days, within 35
        for lane, tags in (("onboarding", ONBOARDING), ("batch", BATCH)):
            ages[lane] = [
                dg.materialize([tiny], instance=instance, tags=tags).run_id for _ in range(2)
            ]
            backdate(instance, ages[lane], 3)
        fresh = dg.materialize([tiny], instance=instance, tags=ONBOARDING).run_id
        result = jobs[ONBOARDING_PURGE_JOB_NAME].execute_in_process(instance=instance)
        assert result.success
        logs = "\n".join(e.message or "" for e in instance.all_logs(result.run_id))
        assert "purged 2 finished onboarding run(s) older than 2.0 days" in logs
        left = {r.run_id for r in instance.get_runs()}
        assert left == {*ages["batch"], fresh, result.run_id}

        old = dg.materialize([tiny], instance=instance, tags=ONBOARDING).run_id
        backdate(instance, [old], 3)
        result = jobs[JOB_NAME].execute_in_process(instance=instance)  # the nightly job too
        assert result.success
        logs = "\n".join(e.message or "" for e in instance.all_logs(result.run_id))
        assert "purged 0 finished run(s) older than 35 days" in logs
        assert "purged 1 finished onboarding run(s) older than 2.0 days" in logs
        assert not instance.has_run(old) and all(instance.has_run(r) for r in ages["batch"])


def test_purge_runs_script_takes_the_onboarding_horizon(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import nullcontext

    import purge_runs as script

    with dg.instance_for_test() as instance:
        old = [
            dg.materialize([tiny], instance=instance, tags=tags).run_id
            for tags in (ONBOARDING, BATCH)
        ]
        backdate(instance, old, 1.5)

        def run(*argv: str) -> str:
            script.main(list(argv), instance_factory=lambda: nullcontext(instance))
            return capsys.readouterr().out

        out = run("--onboarding-only", "--dry-run")
        assert "would delete 0 finished onboarding run(s) older than 2.0 day(s)" in out
        out = run("--onboarding-only", "--onboarding-horizon-days", "1", "--dry-run")
        assert "would delete 1 finished onboarding run(s) older than 1.0 day(s)" in out
        out = run("--runs-only", "--onboarding-horizon-days", "1")
        assert "did delete 0 finished run(s) older than 35 day(s)" in out
        assert "did delete 1 finished onboarding run(s) older than 1.0 day(s)" in out
        assert [r.run_id for r in instance.get_runs()] == [old[1]]  # the batch run stays
