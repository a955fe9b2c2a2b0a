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
    """The tick added its partitions itself (one bulk call) and asks the daemon for none."""
    assert not result.dynamic_partitions_requests
    keys = {
        r.partition_key or r.tags["dagster/asset_partition_range_start"]
        for r in result.run_requests
    }
    assert keys <= set(instance.get_dynamic_partitions("applicants"))


def applicants(instance) -> list[str]:
    """The ``applicants`` partition keys, in the order they were added."""
    return list(instance.get_dynamic_partitions("applicants"))


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
        keys = applicants(instance)  # added by the tick itself, in one call
    [request] = result.run_requests
    assert not result.dynamic_partitions_requests
    assert [k.rsplit("_", 1)[1] for k in keys] == good
    assert all(" " not in k and "/" not in k for k in keys)
    assert request.run_key == f"onboarding:{good[0]}"
    assert request.tags["platform/lane"] == "onboarding"
    assert int(request.tags["dagster/priority"]) > 0
    assert request.tags["dagster/asset_partition_range_start"] == keys[0]
    assert request.tags["dagster/asset_partition_range_end"] == keys[-1]


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
        first_keys = applicants(lost)
    with dg.instance_for_test() as fresh:
        again = tick(fresh, redis_url)
        again_keys = applicants(fresh)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert again_keys == first_keys and len(first_keys) == 2


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
        keys = applicants(instance)
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


# ---- branching by score band ----------------------------------------------------------------

BAND_CASES = {  # user id -> payload; the simulated bank is deterministic per user id
    "fast-co": {
        **PAYLOAD,
        "industry": "software",
        "years_in_business": 12,
        "requested_amount": 20000,
    },
    "borderline-co": {
        **PAYLOAD,
        "annual_revenue": 300000,
        "requested_amount": 250000,
        "device_id": "dev-42",
        "ip": "10.1.2.3",
    },
    "decline-co": {
        **PAYLOAD,
        "industry": "restaurant",
        "years_in_business": 3,
        "annual_revenue": 300000,
        "requested_amount": 900000,
    },
}


def plant_packs(lake: LakeResource) -> None:
    """Outputs of the three packs the borderline path reads, as the packs write them."""
    from risk_assets.tables import (
        BANK_STATEMENT_BASELINE,
        DEVICE_IP_VELOCITY,
        INDUSTRY_DEFAULT_RATES,
        LATEST,
    )

    DEVICE_IP_VELOCITY.write(
        lake,
        LATEST,
        {
            "n": 500,
            "velocity": {"device_id": {"dev-42": {"1h": 4, "24h": 9}}, "ip": {}, "ip_net": {}},
            "p99_24h": {"device_id": 2, "ip": 3, "ip_net": 5},
        },
    )
    stats = {"median": 0.1, "mad": 0.05, "p95": 0.4}
    BANK_STATEMENT_BASELINE.write(
        lake, LATEST, {"n": 500, "features": {"inflow_volatility": stats, "nsf_count": stats}}
    )
    rate = {"n": 600, "observed_default_rate": 0.2, "model_default_rate": 0.25}
    INDUSTRY_DEFAULT_RATES.write(
        lake, LATEST, {"by_industry": {"construction": rate, "other": rate}}
    )


def test_choose_path_by_band_is_a_pure_rule() -> None:
    from risk_assets import science

    app = {"years_in_business": 3}
    assert science.choose_path(app, 0.1).path == "fast"
    assert science.choose_path(app, science.APPROVE_BELOW).path == "borderline"
    assert science.choose_path(app, science.DECLINE_FROM).path == "decline"
    young = science.choose_path({"years_in_business": 0.2}, 0.1)
    assert (young.path, young.band, young.reason) == (
        "decline",
        0,
        "business younger than 6 months",
    )
    # the decline path decides from the score alone; the borderline path reviews failed checks
    assert science.decide(app, 0.7)["decision"] == "decline"
    checks = {
        "passed": False,
        "velocity_flags": ["ip 7 applications in 24h"],
        "statement_anomalies": [],
    }
    app = {**PAYLOAD, "years_in_business": 3}
    credit = {"max_affordable_amount": 50000.0, "dscr": 2.0}
    fraud = {"fraud_score": 0.1}
    assert science.decide(app, 0.3, fraud, credit)["decision"] == "approve"
    verdict = science.decide(app, 0.3, fraud, credit, checks=checks)
    assert verdict["decision"] == "review" and "ip 7 applications" in verdict["reason"]


def test_each_applicant_runs_the_stages_of_its_band_and_is_decided_once(
    redis_client, redis_url, tmp_lake
) -> None:
    plant_packs(tmp_lake)
    ids = {
        user: redis_client.xadd("signups", {"user_id": user, "payload": json.dumps(payload)})
        for user, payload in BAND_CASES.items()
    }
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        apply_partitions(instance, result)
        [request] = result.run_requests  # one run covers the three applicants
        run = execute(instance, request, redis_url, tmp_lake)
        # the whole run again (a retry or a manual re-run): nothing new is published
        again = execute(instance, request, redis_url, tmp_lake)
        keys = {p.split("_")[0]: p for p in applicants(instance)}

        def materialized(asset: str) -> set[str]:
            parts = instance.get_materialized_partitions(dg.AssetKey(asset))
            return {user for user, p in keys.items() if p in parts}

        def metadata(asset: str, user: str) -> dict:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[keys[user]]),
                limit=1,
            ).records
            mat = records[0].event_log_entry.asset_materialization
            return {k: v.value for k, v in mat.metadata.items()}

        everyone = set(BAND_CASES)
        assert run.success and again.success
        for asset in ("application", "bank_features", "risk_score", "decision"):
            assert materialized(asset) == everyone, asset
        assert materialized("fraud_features") == {"fast-co", "borderline-co"}
        assert materialized("credit_features") == {"fast-co", "borderline-co"}
        assert materialized("fraud_checks") == {"borderline-co"}
        assert materialized("industry_benchmark") == {"borderline-co"}
        paths = {user: metadata("risk_score", user)["path"] for user in BAND_CASES}
        assert paths == {"fast-co": "fast", "borderline-co": "borderline", "decline-co": "decline"}
        fast = metadata("decision", "fast-co")
        assert fast["path"] == "fast" and "clear approval" in fast["why"]
        assert fast["skipped"] == "fraud_checks, industry_benchmark"
        assert fast["signup_to_decision_s"] >= 0
        assert metadata("fraud_checks", "borderline-co")["passed"] is False
        assert metadata("decision", "decline-co")["skipped"] == (
            "credit_features, fraud_checks, fraud_features, industry_benchmark"
        )
        assert metadata("decision", "fast-co")["already_published"] == 3  # from the re-run

    out = {d["signup_id"]: d for d in decisions(redis_client)}
    assert len(decisions(redis_client)) == 3 and set(out) == set(ids.values())
    assert out[ids["fast-co"]]["decision"] == "approve"
    assert out[ids["decline-co"]]["decision"] == "decline"
    review = out[ids["borderline-co"]]
    assert review["decision"] == "review" and "device_id 9 applications in 24h" in review["reason"]
    record = tmp_lake.read_json(f"work/onboarding/decision/{keys['borderline-co']}.json")
    assert record["path"] == "borderline" and record["stages"][-2:] == [
        "industry_benchmark",
        "decision",
    ]
    assert record["signup_to_decision_s"] >= 0 and record["published_by_this_run"] is False
    assert redis_client.xpending("signups", "onboarding")["pending"] == 0


def test_a_run_of_fast_applicants_skips_the_borderline_stages(
    redis_client, redis_url, tmp_lake
) -> None:
    redis_client.xadd(
        "signups", {"user_id": "fast-co", "payload": json.dumps(BAND_CASES["fast-co"])}
    )
    with dg.instance_for_test() as instance:
        result = tick(instance, redis_url)
        apply_partitions(instance, result)
        run = execute(instance, result.run_requests[0], redis_url, tmp_lake)
        planned = {k.to_user_string() for k in run.dagster_run.asset_selection or []}
        done = {
            e.asset_key.to_user_string()
            for e in run.get_asset_materialization_events()
            if e.asset_key is not None
        }
    assert run.success
    assert done == {
        "application",
        "bank_features",
        "risk_score",
        "fraud_features",
        "credit_features",
        "decision",
    }
    assert not planned or {"fraud_checks", "industry_benchmark"} <= planned
    [d] = decisions(redis_client)
    assert d["decision"] == "approve"
