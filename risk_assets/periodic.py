"""Periodic risk assets: fraud distributions every 5 minutes, the risk model daily.

Both are declared with ``AutomationCondition.on_cron`` (or ``on_missing`` for the very first
materialisation) and evaluated by ``risk_automation``, an automation sensor that runs by default.
Per-applicant assets read the latest JSON from the lake and fall back to documented priors
while these have never been materialised.
"""

import dagster as dg

from resources.lake import LakeResource
from resources.redis_store import RedisResource
from risk_assets import science, streams
from risk_assets.tables import FRAUD_DISTRIBUTIONS, LATEST, RISK_MODEL, asset_args
from risk_assets.validation import validate_signup

RECENT_SIGNUPS = 5000
HISTORY_SIZE = 6000


@dg.asset(
    group_name="onboarding_models",
    kinds={"python", "redis"},
    automation_condition=dg.AutomationCondition.on_cron("*/5 * * * *")
    | dg.AutomationCondition.on_missing(),
    **asset_args(FRAUD_DISTRIBUTIONS),
)
def fraud_distributions(redis: RedisResource, lake: LakeResource) -> dg.MaterializeResult:
    """Quantiles of declared revenue, tenure and amount-to-revenue, and country shares, over the
    last 5,000 valid signups; fraud features place each applicant against them. Every 5 minutes.
    """
    entries = redis.get_client().xrevrange(streams.SIGNUPS, count=RECENT_SIGNUPS)
    apps = [v.application for sid, f in entries if (v := validate_signup(sid, f)).ok]
    dist = science.fraud_distributions(apps)
    dist["as_of"] = streams.now_iso()
    key = FRAUD_DISTRIBUTIONS.write(lake, LATEST, dist)
    return dg.MaterializeResult(
        metadata={
            "applications": dist["n"],
            "countries": len(dist["country_share"]),
            "path": dg.MetadataValue.path(lake.uri(key)),
        }
    )


@dg.asset(
    group_name="onboarding_models",
    kinds={"python", "scikitlearn"},
    automation_condition=dg.AutomationCondition.on_cron("0 3 * * *")
    | dg.AutomationCondition.on_missing(),
    **asset_args(RISK_MODEL),
)
def risk_model(lake: LakeResource) -> dg.MaterializeResult:
    """Probability-of-default model: standardised L2 logistic regression over nine cash-flow and
    profile features (``science.FEATURES``), trained daily on 6,000 synthetic labelled applicants
    whose default follows a known logistic law; AUC measured on a stratified 25% held-out split.
    Stored as JSON coefficients so scoring needs no scikit-learn import in onboarding runs.
    """
    rows, labels = science.synthetic_history(HISTORY_SIZE)
    model = science.train_risk_model(rows, labels)
    model["trained_at"] = streams.now_iso()
    RISK_MODEL.write(lake, LATEST, model)
    return dg.MaterializeResult(
        metadata={
            "auc_test": model["auc_test"],
            "n_train": model["n_train"],
            "n_test": model["n_test"],
            "default_rate": model["default_rate"],
            "coefficients": dg.MetadataValue.json(
                dict(zip(model["features"], model["coef"], strict=True))
            ),
        }
    )


risk_automation = dg.AutomationConditionSensorDefinition(
    "risk_automation",
    target=[fraud_distributions, risk_model],
    default_status=dg.DefaultSensorStatus.RUNNING,
    run_tags={"platform/lane": "onboarding"},
    minimum_interval_seconds=30,
)

defs = dg.Definitions(assets=[fraud_distributions, risk_model], sensors=[risk_automation])
