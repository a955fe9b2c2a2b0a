"""Per-applicant onboarding: one dynamic partition per signup, from application to decision.

Every applicant runs ``application`` -> ``bank_features`` -> ``risk_score`` (the first score);
the score's band then chooses the applicant's path (``science.choose_path``), i.e. which stages
run before ``decision``:

- ``fast`` (band 0, clear approval): ``fraud_features`` and ``credit_features``, no manual-review
  checks;
- ``borderline`` (band 1): the same plus ``fraud_checks`` (device / IP velocity, bank-statement
  anomalies) and ``industry_benchmark`` (score against the industry's default rates);
- ``decline`` (band 2, or a business younger than 6 months): straight to ``decision``.

A stage an applicant's path skips is not materialised for that applicant's partition, so the
asset graph and each asset's partitions show which path ran; ``risk_score`` and ``decision`` say
which path and why in their metadata, per applicant. ``decision`` also records the
signup-to-decision latency (Redis clock: decisions entry id minus signups entry id), which
``risk_assets.sla`` summarises.

All stages are one subsettable multi-asset step: a step costs event-log writes and bookkeeping,
and one step instead of eight is what keeps signup-to-decision within seconds. Every asset still
has its own partitions, lineage, metadata and re-run (select any subset; the others are read back
from the lake). A run may cover several applicants (a contiguous range of ``applicants``
partitions, ``BackfillPolicy.single_run()``): each stage computes the run's applicants on its
path and writes one JSON object per applicant to ``work/onboarding/<asset>/<partition>.json``.
"""

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import dagster as dg

from resources.bank import BankDataResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource
from risk_assets import science, streams, tables
from risk_assets.signups import (
    APPLICANTS,
    ONBOARDING_JOB,
    RUN_TAGS,
    build_onboarding_failure_sensor,
    build_signup_sensor,
)
from risk_assets.tables import (
    BANK_STATEMENT_BASELINE,
    DEVICE_IP_VELOCITY,
    FRAUD_DISTRIBUTIONS,
    INDUSTRY_DEFAULT_RATES,
    LATEST,
    RISK_MODEL,
    asset_args,
)
from risk_assets.validation import signup_id_of, validate_signup

applicants = dg.DynamicPartitionsDefinition(name=APPLICANTS)
RETRY = dg.RetryPolicy(
    max_retries=2, delay=0.5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
Values = dict[str, Any]

OBJECTS = tables.ONBOARDING

# the stages each path runs between ``risk_score`` and ``decision``
PATH_STAGES: dict[science.OnboardingPath, tuple[str, ...]] = {
    "fast": ("fraud_features", "credit_features"),
    "borderline": ("fraud_features", "credit_features", "fraud_checks", "industry_benchmark"),
    "decline": (),
}
BRANCHED = frozenset(s for stages in PATH_STAGES.values() for s in stages)


def write_each(lake: LakeResource, asset: str, values: Values) -> None:
    """One compact JSON object per applicant partition (``OBJECTS``)."""
    objects = OBJECTS[asset]
    for p, value in values.items():
        data = json.dumps(value, separators=(",", ":"), default=str).encode()
        lake.write_bytes(objects.key(p), data)


class OnboardingRunState:
    """What the stages of one onboarding run share: the resources, the run's applicant
    partitions, each asset's values per partition (computed in this run, or read back from the
    lake on first use; a branched stage only for the applicants whose path runs it), each
    applicant's route, and the per-applicant and run metadata of the stage being computed.
    """

    def __init__(self, lake: LakeResource, redis: RedisResource, bank: BankDataResource, keys):
        self.lake, self.redis, self.bank, self.keys = lake, redis, bank, list(keys)
        self.values: dict[str, Values] = {}
        self.routes: dict[str, science.Route] = {}
        self.meta: dict[str, Any] = {}
        self.per_applicant: dict[str, dict[str, Any]] = {}

    def __getitem__(self, asset: str) -> Values:
        if asset not in self.values:
            objects = OBJECTS[asset]
            keys = self.on_path(asset) if asset in BRANCHED else self.keys
            self.values[asset] = {p: objects.read(self.lake, p) for p in keys}
        return self.values[asset]

    def route(self, p: str) -> science.Route:
        """The applicant's path after the first score (``science.choose_path``)."""
        if p not in self.routes:
            self.routes[p] = science.choose_path(
                self["application"][p], float(self["risk_score"][p]["score"])
            )
        return self.routes[p]

    def on_path(self, stage: str) -> list[str]:
        """The run's applicants whose path runs ``stage``."""
        return [p for p in self.keys if stage in PATH_STAGES[self.route(p).path]]


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


def risk_score(state: OnboardingRunState) -> Values:
    """First score: probability of default in 0..1 from ``risk_model`` (a prior model until it is
    trained), its band and the path it chooses for the applicant (fast / borderline / decline)."""
    model = RISK_MODEL.read_if_exists(state.lake, LATEST)
    if model is None:
        model = science.PRIOR_MODEL
    state.meta["model_version"] = model["version"]
    apps, banks = state["application"], state["bank_features"]
    out = {}
    for p in state.keys:
        score = round(science.score(model, science.model_inputs(apps[p], banks[p])), 4)
        route = state.routes[p] = science.choose_path(apps[p], score)
        out[p] = {
            "score": score,
            "band": route.band,
            "path": route.path,
            "path_reason": route.reason,
        }
        state.per_applicant[p] = {
            "score": score,
            "band": route.band,
            "path": route.path,
            "why": route.reason,
            "next_stages": ", ".join(PATH_STAGES[route.path]) or "decision",
        }
    state.meta.update(Counter(f"path_{r['path']}" for r in out.values()))
    return out


def fraud_features(state: OnboardingRunState) -> Values:
    """Anomaly of the applicant against recent applications (``fraud_distributions``); fast and
    borderline paths."""
    dist = FRAUD_DISTRIBUTIONS.read_if_exists(state.lake, LATEST)
    if dist is None:
        dist = science.fraud_distributions([])
    state.meta["distribution_n"] = dist["n"]
    apps, banks = state["application"], state["bank_features"]
    out = {
        p: science.fraud_features(apps[p], banks[p], dist) for p in state.on_path("fraud_features")
    }
    state.per_applicant = {p: {"fraud_score": v["fraud_score"]} for p, v in out.items()}
    return out


def credit_features(state: OnboardingRunState) -> Values:
    """Affordability of the requested amount: monthly payment, debt-service coverage, cap; fast
    and borderline paths."""
    apps, banks = state["application"], state["bank_features"]
    out = {p: science.credit_features(apps[p], banks[p]) for p in state.on_path("credit_features")}
    state.per_applicant = {p: {"dscr": v["dscr"]} for p, v in out.items()}
    return out


def fraud_checks(state: OnboardingRunState) -> Values:
    """Extra fraud checks of borderline applicants: device / IP / network velocity
    (``device_ip_velocity``) and bank-statement anomalies against recent applicants
    (``bank_statement_baseline``)."""
    keys = state.on_path("fraud_checks")
    if not keys:
        return {}
    velocity = DEVICE_IP_VELOCITY.read_if_exists(state.lake, LATEST)
    baseline = BANK_STATEMENT_BASELINE.read_if_exists(state.lake, LATEST)
    state.meta.update(
        velocity_n=(velocity or {}).get("n", 0), baseline_n=(baseline or {}).get("n", 0)
    )
    apps, banks = state["application"], state["bank_features"]
    out = {p: science.fraud_checks(apps[p], banks[p], velocity, baseline) for p in keys}
    state.per_applicant = {
        p: {
            "passed": v["passed"],
            "flags": ", ".join([*v["velocity_flags"], *v["statement_anomalies"]]) or "none",
        }
        for p, v in out.items()
    }
    return out


def industry_benchmark(state: OnboardingRunState) -> Values:
    """Score of borderline applicants against their industry's observed and model-implied
    default rates (``industry_default_rates``)."""
    keys = state.on_path("industry_benchmark")
    if not keys:
        return {}
    rates = INDUSTRY_DEFAULT_RATES.read_if_exists(state.lake, LATEST)
    apps, scores = state["application"], state["risk_score"]
    out = {p: science.industry_benchmark(apps[p], float(scores[p]["score"]), rates) for p in keys}
    state.per_applicant = {
        p: {"industry": v["industry"], "relative_risk": v["relative_risk"]} for p, v in out.items()
    }
    return out


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def decision(state: OnboardingRunState) -> Values:
    """Approve / decline / review from the stages of the applicant's path, published once per
    signup to ``decisions``; records the path taken and the signup-to-decision latency."""
    client = state.redis.get_client()
    apps, scores = state["application"], state["risk_score"]
    stage_values = {s: state[s] for s in sorted(BRANCHED)}
    out, counts, republished = {}, Counter(), 0
    for p in state.keys:
        app, route = apps[p], state.route(p)
        ran = PATH_STAGES[route.path]
        got = {s: stage_values[s].get(p) for s in ran}
        verdict = science.decide(
            app,
            scores[p]["score"],
            fraud=got.get("fraud_features"),
            credit=got.get("credit_features"),
            checks=got.get("fraud_checks"),
            benchmark=got.get("industry_benchmark"),
        )
        record = {
            **verdict,
            "user_id": app["user_id"],
            "signup_id": app["signup_id"],
            "score": scores[p]["score"],
        }
        created, entry_id = streams.publish_decision(client, record)
        republished += not created
        latency_s = round((_entry_ms(entry_id) - _entry_ms(app["signup_id"])) / 1000, 3)
        out[p] = {
            **record,
            "decisions_entry": entry_id,
            "published_by_this_run": created,
            "path": route.path,
            "path_reason": route.reason,
            "stages": ["application", "bank_features", "risk_score", *ran, "decision"],
            "skipped": sorted(BRANCHED - set(ran)),
            "signup_to_decision_s": latency_s,
        }
        state.per_applicant[p] = {
            "decision": verdict["decision"],
            "reason": verdict["reason"],
            "score": scores[p]["score"],
            "path": route.path,
            "why": route.reason,
            "skipped": ", ".join(out[p]["skipped"]) or "none",
            "signup_to_decision_s": latency_s,
            "published_by_this_run": created,
        }
        counts[verdict["decision"]] += 1
    state.meta.update(dict(counts), already_published=republished)
    return out


STAGES: list[tuple[Callable[[OnboardingRunState], Values], list[str]]] = [
    (application, []),
    (bank_features, ["application"]),
    (risk_score, ["application", "bank_features", "risk_model"]),
    (fraud_features, ["application", "bank_features", "risk_score", "fraud_distributions"]),
    (credit_features, ["application", "bank_features", "risk_score"]),
    (
        fraud_checks,
        [
            "application",
            "bank_features",
            "risk_score",
            "device_ip_velocity",
            "bank_statement_baseline",
        ],
    ),
    (industry_benchmark, ["application", "risk_score", "industry_default_rates"]),
    (
        decision,
        [
            "application",
            "risk_score",
            "fraud_features",
            "credit_features",
            "fraud_checks",
            "industry_benchmark",
        ],
    ),
]


def paths_of(stage: str) -> str:
    """The paths that run ``stage`` (shown on the asset's page)."""
    if stage not in BRANCHED:
        return "all"
    return ", ".join(path for path, stages in PATH_STAGES.items() if stage in stages)


def _metadata_value(value: Any) -> Any:
    return value if value is not None else "-"


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
            **asset_args(OBJECTS[fn.__name__], metadata={"paths": paths_of(fn.__name__)}),
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
    """All onboarding stages of the selected applicants, in one step; each applicant's path
    (chosen from its first score) decides which branched stages it gets.

    Materialisations are logged per applicant partition (the stage's figures and, for
    ``risk_score`` and ``decision``, the path and why); a stage no applicant of the run needs is
    skipped (an optional output that is not produced).
    """
    keys = context.partition_keys
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    state = OnboardingRunState(lake, redis, bank, keys)
    for fn, _ in STAGES:
        name = fn.__name__
        if name not in selected:
            continue
        state.meta, state.per_applicant = {}, {}
        try:
            state.values[name] = fn(state)
        except dg.Failure:
            raise
        except Exception as exc:
            raise RuntimeError(f"{name}: {exc}") from exc
        values = state.values[name]
        write_each(lake, name, values)
        run_meta = {"run_applicants": len(keys), **state.meta}
        for p in values:
            mine = {k: _metadata_value(v) for k, v in state.per_applicant.get(p, {}).items()}
            yield dg.AssetMaterialization(
                asset_key=name, partition=p, metadata={**mine, **run_meta}
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
