"""Per-applicant onboarding: one dynamic partition per signup, from application to decision.

A run may cover several applicants (a contiguous range of ``applicants`` partitions, every asset
has ``BackfillPolicy.single_run()``): each asset loops over ``context.partition_keys`` and writes
one JSON object per applicant to ``work/onboarding/<asset>/<partition>.json`` in the lake, so
every applicant keeps its own partition, lineage and re-run.
"""

from collections import Counter
from typing import Any

import dagster as dg

from resources.bank import BankDataResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from risk_assets import science, streams
from risk_assets.periodic import FRAUD_DISTRIBUTIONS_KEY, RISK_MODEL_KEY, fraud_distributions
from risk_assets.periodic import risk_model as risk_model_asset
from risk_assets.validation import signup_id_of, validate_signup
from sensors.signups import (
    APPLICANTS,
    ONBOARDING_JOB,
    RUN_TAGS,
    build_onboarding_failure_sensor,
    build_signup_sensor,
)

applicants = dg.DynamicPartitionsDefinition(name=APPLICANTS)
RETRY = dg.RetryPolicy(
    max_retries=2, delay=0.5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
PER_APPLICANT: dict[str, Any] = {
    "partitions_def": applicants,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "group_name": "onboarding",
    "kinds": {"python", "redis"},
}


def lake_key(asset: str, partition: str) -> str:
    return f"work/onboarding/{asset}/{partition}.json"


def load_each(lake: LakeResource, asset: str, partitions: list[str]) -> dict[str, Any]:
    return {p: lake.read_json(lake_key(asset, p)) for p in partitions}


def write_each(lake: LakeResource, asset: str, values: dict[str, Any]) -> None:
    for p, value in values.items():
        lake.write_bytes(lake_key(asset, p), _dumps(value))


def _dumps(value: Any) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _summary(context: dg.AssetExecutionContext, **extra: Any) -> dict[str, Any]:
    keys = context.partition_keys
    return {"applicants": len(keys), "first": keys[0], "last": keys[-1], **extra}


@dg.asset(**PER_APPLICANT)
def application(
    context: dg.AssetExecutionContext, redis: RedisResource, lake: LakeResource
) -> dg.MaterializeResult:
    """The validated signup payload of the applicant, read back from the ``signups`` stream."""
    partitions = context.partition_keys
    ids = {p: signup_id_of(p) for p in partitions}
    fields = streams.signup_fields(redis.get_client(), list(ids.values()))
    out = {}
    for p, sid in ids.items():
        verdict = validate_signup(sid, fields[sid])
        if not verdict.ok:
            raise dg.Failure(f"signup {sid} of partition {p} is unusable: {verdict.reason}")
        out[p] = verdict.application
    write_each(lake, "application", out)
    return dg.MaterializeResult(metadata=_summary(context))


@dg.asset(**PER_APPLICANT, deps=[application])
def bank_features(
    context: dg.AssetExecutionContext, bank: BankDataResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Cash-flow features from 12 months of bank history (bank-data provider resource)."""
    apps = load_each(lake, "application", context.partition_keys)
    out = {
        p: science.bank_features(
            bank.summary(app["user_id"], float(app["annual_revenue"])),
            float(app["annual_revenue"]),
        )
        for p, app in apps.items()
    }
    write_each(lake, "bank_features", out)
    return dg.MaterializeResult(metadata=_summary(context, backend=bank.backend))


@dg.asset(**PER_APPLICANT, deps=[application, bank_features, fraud_distributions])
def fraud_features(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Anomaly of the applicant against recent applications (``fraud_distributions``)."""
    keys = context.partition_keys
    apps, banks = load_each(lake, "application", keys), load_each(lake, "bank_features", keys)
    dist = (
        lake.read_json(FRAUD_DISTRIBUTIONS_KEY)
        if lake.exists(FRAUD_DISTRIBUTIONS_KEY)
        else science.fraud_distributions([])
    )
    out = {p: science.fraud_features(apps[p], banks[p], dist) for p in keys}
    write_each(lake, "fraud_features", out)
    top = max(v["fraud_score"] for v in out.values())
    return dg.MaterializeResult(
        metadata=_summary(context, max_fraud_score=top, distribution_n=dist["n"])
    )


@dg.asset(**PER_APPLICANT, deps=[application, bank_features])
def credit_features(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Affordability of the requested amount: monthly payment, debt-service coverage, cap."""
    keys = context.partition_keys
    apps, banks = load_each(lake, "application", keys), load_each(lake, "bank_features", keys)
    out = {p: science.credit_features(apps[p], banks[p]) for p in keys}
    write_each(lake, "credit_features", out)
    return dg.MaterializeResult(metadata=_summary(context))


@dg.asset(**PER_APPLICANT, deps=[application, bank_features, risk_model_asset])
def risk_score(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Probability of default in 0..1 from ``risk_model`` (the prior model until it is trained)."""
    keys = context.partition_keys
    apps, banks = load_each(lake, "application", keys), load_each(lake, "bank_features", keys)
    model = lake.read_json(RISK_MODEL_KEY) if lake.exists(RISK_MODEL_KEY) else science.PRIOR_MODEL
    out = {
        p: {"score": round(science.score(model, science.model_inputs(apps[p], banks[p])), 4)}
        for p in keys
    }
    write_each(lake, "risk_score", out)
    return dg.MaterializeResult(metadata=_summary(context, model_version=model["version"]))


@dg.asset(**PER_APPLICANT, deps=[application, risk_score, fraud_features, credit_features])
def decision(
    context: dg.AssetExecutionContext, redis: RedisResource, lake: LakeResource
) -> dg.MaterializeResult:
    """Approve / decline / review by score band, published once per signup to ``decisions``."""
    keys = context.partition_keys
    apps = load_each(lake, "application", keys)
    scores = load_each(lake, "risk_score", keys)
    frauds = load_each(lake, "fraud_features", keys)
    credits = load_each(lake, "credit_features", keys)
    client = redis.get_client()
    out, counts, republished = {}, Counter(), 0
    for p in keys:
        app = apps[p]
        verdict = science.decide(app, scores[p]["score"], frauds[p], credits[p])
        record = {
            **verdict,
            "user_id": app["user_id"],
            "signup_id": app["signup_id"],
            "score": scores[p]["score"],
        }
        created, entry_id = streams.publish_decision(client, record)
        republished += not created
        out[p] = {**record, "decisions_entry": entry_id, "published_by_this_run": created}
        counts[verdict["decision"]] += 1
    write_each(lake, "decision", out)
    return dg.MaterializeResult(
        metadata=_summary(context, **dict(counts), already_published=republished)
    )


ONBOARDING_ASSETS = [
    application,
    bank_features,
    fraud_features,
    credit_features,
    risk_score,
    decision,
]

onboarding_job = dg.define_asset_job(
    ONBOARDING_JOB,
    selection=ONBOARDING_ASSETS,
    partitions_def=applicants,
    executor_def=dg.in_process_executor,
    op_retry_policy=RETRY,
    tags=RUN_TAGS,
    description="Decide signups: one applicants partition (or a contiguous range) per run.",
)

defs = dg.Definitions(
    assets=ONBOARDING_ASSETS,
    jobs=[onboarding_job],
    sensors=[build_signup_sensor(), build_onboarding_failure_sensor(onboarding_job)],
)
