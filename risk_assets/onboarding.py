"""Per-applicant onboarding: one dynamic partition per signup, from application to decision.

Six assets (``application`` -> ``bank_features`` -> ``fraud_features`` / ``credit_features`` ->
``risk_score`` -> ``decision``), each partitioned by applicant, computed by one subsettable
multi-asset step: a step costs event-log writes and bookkeeping, and one step instead of six
is what keeps signup-to-decision within seconds. Every asset still has its own partitions,
lineage, metadata and re-run (select any subset; the others are read back from the lake).

A run may cover several applicants (a contiguous range of ``applicants`` partitions,
``BackfillPolicy.single_run()``): each stage loops over ``context.partition_keys`` and writes one
JSON object per applicant to ``work/onboarding/<asset>/<partition>.json`` in the lake.
"""

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import dagster as dg

from resources.bank import BankDataResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from risk_assets import science, streams
from risk_assets.signups import (
    APPLICANTS,
    ONBOARDING_JOB,
    RUN_TAGS,
    build_onboarding_failure_sensor,
    build_signup_sensor,
)
from risk_assets.tables import FRAUD_DISTRIBUTIONS, LATEST, ONBOARDING, RISK_MODEL, asset_args
from risk_assets.validation import signup_id_of, validate_signup

applicants = dg.DynamicPartitionsDefinition(name=APPLICANTS)
RETRY = dg.RetryPolicy(
    max_retries=2, delay=0.5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
Values = dict[str, Any]


def write_each(lake: LakeResource, asset: str, values: Values) -> None:
    """One compact JSON object per applicant partition (``risk_assets.tables.ONBOARDING``)."""
    objects = ONBOARDING[asset]
    for p, value in values.items():
        data = json.dumps(value, separators=(",", ":"), default=str).encode()
        lake.write_bytes(objects.key(p), data)


class OnboardingRunState:
    """What the stages of one onboarding run share: the resources, the run's applicant
    partitions, each asset's values per partition (computed in this run, or read back from the
    lake on first use), and the metadata of the stage being computed.
    """

    def __init__(self, lake: LakeResource, redis: RedisResource, bank: BankDataResource, keys):
        self.lake, self.redis, self.bank, self.keys = lake, redis, bank, list(keys)
        self.values: dict[str, Values] = {}
        self.meta: dict[str, Any] = {}

    def __getitem__(self, asset: str) -> Values:
        if asset not in self.values:
            objects = ONBOARDING[asset]
            self.values[asset] = {p: objects.read(self.lake, p) for p in self.keys}
        return self.values[asset]


def application(state: OnboardingRunState) -> Values:
    """The validated signup payload of the applicant, read back from the ``signups`` stream."""
    ids = {p: signup_id_of(p) for p in state.keys}
    fields = streams.signup_fields(state.redis.get_client(), list(ids.values()))
    out = {}
    for p, sid in ids.items():
        verdict = validate_signup(sid, fields[sid])
        if not verdict.ok:
            raise dg.Failure(f"signup {sid} of partition {p} is unusable: {verdict.reason}")
        out[p] = verdict.application
    return out


def bank_features(state: OnboardingRunState) -> Values:
    """Cash-flow features from 12 months of bank history (the ``bank`` provider resource)."""
    state.meta["backend"] = state.bank.backend
    out = {}
    for p, app in state["application"].items():
        revenue = float(app["annual_revenue"])
        out[p] = science.bank_features(state.bank.summary(app["user_id"], revenue), revenue)
    return out


def fraud_features(state: OnboardingRunState) -> Values:
    """Anomaly of the applicant against recent applications (``fraud_distributions``)."""
    dist = FRAUD_DISTRIBUTIONS.read_if_exists(state.lake, LATEST)
    if dist is None:
        dist = science.fraud_distributions([])
    state.meta["distribution_n"] = dist["n"]
    apps, banks = state["application"], state["bank_features"]
    return {p: science.fraud_features(apps[p], banks[p], dist) for p in state.keys}


def credit_features(state: OnboardingRunState) -> Values:
    """Affordability of the requested amount: monthly payment, debt-service coverage, cap."""
    apps, banks = state["application"], state["bank_features"]
    return {p: science.credit_features(apps[p], banks[p]) for p in state.keys}


def risk_score(state: OnboardingRunState) -> Values:
    """Probability of default in 0..1 from ``risk_model`` (a prior model until it is trained)."""
    model = RISK_MODEL.read_if_exists(state.lake, LATEST)
    if model is None:
        model = science.PRIOR_MODEL
    state.meta["model_version"] = model["version"]
    apps, banks = state["application"], state["bank_features"]
    return {
        p: {"score": round(science.score(model, science.model_inputs(apps[p], banks[p])), 4)}
        for p in state.keys
    }


def decision(state: OnboardingRunState) -> Values:
    """Approve / decline / review by score band, published once per signup to ``decisions``."""
    client = state.redis.get_client()
    apps, scores = state["application"], state["risk_score"]
    frauds, credits = state["fraud_features"], state["credit_features"]
    out, counts, republished = {}, Counter(), 0
    for p in state.keys:
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
    state.meta.update(dict(counts), already_published=republished)
    return out


STAGES: list[tuple[Callable[[OnboardingRunState], Values], list[str]]] = [
    (application, []),
    (bank_features, ["application"]),
    (fraud_features, ["application", "bank_features", "fraud_distributions"]),
    (credit_features, ["application", "bank_features"]),
    (risk_score, ["application", "bank_features", "risk_model"]),
    (decision, ["application", "risk_score", "fraud_features", "credit_features"]),
]


@dg.multi_asset(
    name="onboarding_assets",
    specs=[
        dg.AssetSpec(
            fn.__name__,
            deps=deps,
            description=fn.__doc__,
            group_name="onboarding",
            kinds={"python"},
            skippable=True,
            **asset_args(ONBOARDING[fn.__name__]),
        )
        for fn, deps in STAGES
    ],
    partitions_def=applicants,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
)
def onboarding_assets(
    context: dg.AssetExecutionContext,
    redis: RedisResource,
    lake: LakeResource,
    bank: BankDataResource,
):
    """All onboarding stages of the selected applicants, in one step."""
    keys = context.partition_keys
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    state = OnboardingRunState(lake, redis, bank, keys)
    for fn, _ in STAGES:
        name = fn.__name__
        if name not in selected:
            continue
        state.meta = {}
        try:
            state.values[name] = fn(state)
        except dg.Failure:
            raise
        except Exception as exc:
            raise RuntimeError(f"{name}: {exc}") from exc
        write_each(lake, name, state.values[name])
        yield dg.MaterializeResult(
            asset_key=name,
            metadata={"applicants": len(keys), "first": keys[0], "last": keys[-1], **state.meta},
        )


ONBOARDING_ASSETS = [onboarding_assets]

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
