"""Signup sensor and onboarding assets against a real Redis and a real (temporary) instance."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import redis as redis_lib

from resources.alerts import AlertsResource
from resources.bank import BankDataResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from risk_assets import streams
from risk_assets.onboarding import ONBOARDING_ASSETS, onboarding_job
from risk_assets.signups import (
    RUN_KEY_TAG,
    build_onboarding_failure_sensor,
    build_signup_sensor,
    plan_tick,
)

signup_sensor = build_signup_sensor(listen_s=0)
failure_sensor = build_onboarding_failure_sensor(onboarding_job)
PAYLOAD = {
    "business_name": "Acme Tiles",
    "industry": "construction",
    "years_in_business": 4,
    "annual_revenue": 850000,
    "requested_amount": 60000,
    "country": "US",
}


def push(client: redis_lib.Redis, n: int, bad: int = 0) -> tuple[list[str], list[str]]:
    good_ids = [
        client.xadd("signups", {"user_id": f"user {i}/x", "payload": json.dumps(PAYLOAD)})
        for i in range(n)
    ]
    bad_ids = [client.xadd("signups", {"user_id": "b", "payload": "{oops"}) for _ in range(bad)]
    return good_ids, bad_ids


def tick(instance: dg.DagsterInstance, redis_url: str):
    context = dg.build_sensor_context(
        instance=instance, resources={"redis": RedisResource(url=redis_url)}
    )
    return signup_sensor(context)


def resources(redis_url: str, lake: LakeResource, bank: BankDataResource | None = None) -> dict:
    return {
        "redis": RedisResource(url=redis_url),
        "lake": lake,
        "bank": bank or BankDataResource(),
        "alerts": AlertsResource(),
    }


def execute(instance, request: dg.RunRequest, redis_url, lake, bank=None, raise_on_error=True):
    """Run what the daemon would launch for ``request`` (same tags, same run key)."""
    tags = {**request.tags, RUN_KEY_TAG: request.run_key}
    return dg.materialize(
        ONBOARDING_ASSETS,
        instance=instance,
        resources=resources(redis_url, lake, bank),
        partition_key=request.partition_key,
        tags=tags,
        raise_on_error=raise_on_error,
    )


def apply_partitions(instance, result) -> None:
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def decisions(client) -> list[dict]:
    return [fields for _, fields in client.xrange("decisions")]


def test_malformed_signups_are_dead_lettered_once_with_reason_and_original_fields(
    redis_client, redis_url
) -> None:
    _, bad = push(redis_client, 0, bad=2)
    redis_client.xadd("signups", {"user_id": "u9"})
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        tick(instance, redis_url)
    assert isinstance(result, dg.SkipReason)
    dead = [f for _, f in redis_client.xrange("signups:dead")]
    assert [d["signup_id"] for d in dead[:2]] == bad
    assert dead[0]["reason"].startswith("payload is not valid JSON")
    assert dead[0]["payload"] == "{oops"
    assert dead[2]["reason"] == "missing payload" and dead[2]["user_id"] == "u9"
    assert redis_client.xpending("signups", "onboarding")["pending"] == 0


def test_sensor_requests_one_run_per_batch_with_run_key_partitions_and_lane_tags(
    redis_client, redis_url
) -> None:
    good, _ = push(redis_client, 3, bad=1)
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
    [request] = result.run_requests
    [partitions] = result.dynamic_partitions_requests
    assert partitions.partitions_def_name == "applicants"
    assert [k.rsplit("_", 1)[1] for k in partitions.partition_keys] == good
    assert all(" " not in k and "/" not in k for k in partitions.partition_keys)
    assert request.run_key == f"onboarding:{good[0]}"
    assert request.tags["platform/lane"] == "onboarding"
    assert int(request.tags["dagster/priority"]) > 0
    assert request.tags["dagster/asset_partition_range_start"] == partitions.partition_keys[0]
    assert request.tags["dagster/asset_partition_range_end"] == partitions.partition_keys[-1]


def test_batches_are_capped_and_each_run_covers_a_contiguous_slice(redis_client) -> None:
    push(redis_client, 5)
    with dg.instance_for_test() as instance:
        plan = plan_tick(redis_client, instance, max_per_run=2)
    assert [len(b.partitions) for b in plan.batches] == [2, 2, 1]


def test_same_instance_never_rerequests_a_submitted_batch(redis_client, redis_url, tmp_lake):
    push(redis_client, 2)
    with dg.instance_for_test() as instance:
        first = tick(instance, redis_url)
        apply_partitions(instance, first)
        # the daemon creates and runs it; the next tick asks for nothing new
        execute(instance, first.run_requests[0], redis_url, tmp_lake)
        again = tick(instance, redis_url)
    assert isinstance(again, dg.SkipReason)
    assert len(decisions(redis_client)) == 2


def test_new_instance_same_redis_does_not_replay_decided_signups(
    redis_client, redis_url, tmp_lake
) -> None:
    push(redis_client, 3)
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        apply_partitions(instance, result)
        execute(instance, result.run_requests[0], redis_url, tmp_lake)
    with dg.instance_for_test() as fresh:
        again = tick(fresh, redis_url)
    assert isinstance(again, dg.SkipReason)
    assert len(decisions(redis_client)) == 3


def test_new_instance_rerequests_an_undecided_batch_under_the_same_run_key(
    redis_client, redis_url
) -> None:
    push(redis_client, 2)
    with dg.instance_for_test() as lost:
        first = tick(lost, redis_url)
    with dg.instance_for_test() as fresh:
        again = tick(fresh, redis_url)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert again.dynamic_partitions_requests[0].partition_keys == (
        first.dynamic_partitions_requests[0].partition_keys
    )


def test_onboarding_run_decides_each_applicant_and_publishes_once(
    redis_client, redis_url, tmp_lake
) -> None:
    good, _ = push(redis_client, 3)
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        apply_partitions(instance, result)
        run = execute(instance, result.run_requests[0], redis_url, tmp_lake)
        mats = instance.fetch_materializations(dg.AssetKey("decision"), limit=10).records
        # the decision asset runs again (a retry or a manual re-run): nothing new is published
        keys = result.dynamic_partitions_requests[0].partition_keys
        dg.materialize(
            ONBOARDING_ASSETS,
            instance=instance,
            resources=resources(redis_url, tmp_lake),
            partition_key=keys[1],
        )
    assert run.success
    assert len(mats) == 3
    out = decisions(redis_client)
    assert [d["signup_id"] for d in out] == good
    assert all(d["decision"] in {"approve", "decline", "review"} for d in out)
    assert all(0 <= float(d["score"]) <= 1 and d["reason"] and d["decided_at"] for d in out)
    assert tmp_lake.read_json(f"work/onboarding/decision/{keys[1]}.json")["signup_id"] == good[1]
    assert redis_client.xpending("signups", "onboarding")["pending"] == 0


def test_publish_decision_is_idempotent_per_signup(redis_client) -> None:
    streams.ensure_group(redis_client)
    d = {"user_id": "u", "signup_id": "1-1", "decision": "approve", "score": 0.1, "reason": "ok"}
    first = streams.publish_decision(redis_client, d)
    second = streams.publish_decision(redis_client, {**d, "decision": "decline"})
    assert first[0] and not second[0] and first[1] == second[1]
    assert redis_client.xlen("decisions") == 1


@pytest.fixture
def broken_bank():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield BankDataResource(api_url=f"http://127.0.0.1:{server.server_address[1]}", attempts=1)
    server.shutdown()


def test_failed_run_still_yields_review_with_reason_and_tells_slack(
    redis_client, redis_url, tmp_lake, broken_bank, slack_server
) -> None:
    good, _ = push(redis_client, 2)
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        apply_partitions(instance, result)
        run = execute(instance, result.run_requests[0], redis_url, tmp_lake, broken_bank, False)
        failure = run.get_run_failure_event()
        context = dg.build_run_status_sensor_context(
            sensor_name="onboarding_failure_sensor",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run.dagster_run,
            resources={
                "redis": RedisResource(url=redis_url),
                "alerts": AlertsResource(token="xoxb-test", api_url=slack_server.url),
            },
        ).for_run_failure()
        failure_sensor(context)
        failure_sensor(context)
    assert not run.success
    out = decisions(redis_client)
    assert [d["signup_id"] for d in out] == good
    assert {d["decision"] for d in out} == {"review"}
    assert "bank_features" in out[0]["reason"]
    assert out[0]["user_id"] == "user 0/x"
    assert any("onboarding run failed" in m for m in slack_server.messages())


def test_stalled_run_is_retried_under_a_new_key_then_sent_to_review(
    redis_client, redis_url, tmp_lake
) -> None:
    push(redis_client, 1)
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        apply_partitions(instance, result)
        request = result.run_requests[0]
        # a run that ended without deciding (as if its process had been killed)
        dg.materialize(
            ONBOARDING_ASSETS,
            selection=["application"],
            instance=instance,
            resources=resources(redis_url, tmp_lake),
            partition_key=request.partition_key,
            tags={RUN_KEY_TAG: request.run_key},
        )
        retry = plan_tick(redis_client, instance, stall_s=0, max_attempts=2)
        assert [b.run_key for b in retry.batches] == [f"{request.run_key}~1"]
        dg.materialize(
            ONBOARDING_ASSETS,
            selection=["application"],
            instance=instance,
            resources=resources(redis_url, tmp_lake),
            partition_key=request.partition_key,
            tags={RUN_KEY_TAG: f"{request.run_key}~1"},
        )
        final = plan_tick(redis_client, instance, stall_s=0, max_attempts=2)
    assert final.reviewed == 1 and not final.batches
    [d] = decisions(redis_client)
    assert d["decision"] == "review" and "after 2 attempts" in d["reason"]
