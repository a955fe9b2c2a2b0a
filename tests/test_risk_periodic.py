"""Periodic risk assets: fraud distributions from recent signups, the daily risk model.

Both are packs now (``risk_assets/packs/defs/``); their asset keys and lake objects are unchanged,
so onboarding keeps reading them (tests/test_packs.py covers the packs machinery).
"""

import json

import dagster as dg

from resources.lake import LakeResource
from resources.redis_store import RedisResource
from risk_assets import science
from risk_assets.periodic import fraud_distributions, risk_model

# the physical keys onboarding runs read (risk_assets.tables declares them)
FRAUD_DISTRIBUTIONS_KEY = "work/onboarding/fraud_distributions/latest.json"
RISK_MODEL_KEY = "work/onboarding/risk_model/latest.json"


def test_fraud_distributions_summarise_recent_valid_signups(redis_client, redis_url, tmp_lake):
    for i in range(30):
        payload = {
            "business_name": f"b{i}",
            "industry": "retail",
            "years_in_business": i % 7,
            "annual_revenue": 100000 + 5000 * i,
            "requested_amount": 10000,
            "country": "US" if i % 10 else "CA",
        }
        redis_client.xadd("signups", {"user_id": f"u{i}", "payload": json.dumps(payload)})
    redis_client.xadd("signups", {"user_id": "bad", "payload": "{"})
    result = dg.materialize(
        [fraud_distributions],
        resources={"redis": RedisResource(url=redis_url), "lake": tmp_lake},
    )
    assert result.success
    dist = tmp_lake.read_json(FRAUD_DISTRIBUTIONS_KEY)
    assert dist["n"] == 30
    assert dist["country_share"] == {"CA": 0.1, "US": 0.9}
    assert dist["quantiles"]["log_revenue"] == sorted(dist["quantiles"]["log_revenue"])


def test_risk_model_reports_held_out_auc_and_scores_like_sklearn(tmp_lake: LakeResource):
    result = dg.materialize([risk_model], resources={"lake": tmp_lake})
    meta = result.asset_materializations_for_node("risk_model")[0].metadata
    model = tmp_lake.read_json(RISK_MODEL_KEY)
    assert 0.65 < meta["auc_test"].value <= 1.0
    assert model["features"] == science.FEATURES
    rows, _ = science.synthetic_history(50, seed=99)
    scores = [science.score(model, r) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_automation_conditions_are_declared_on_cron():
    assert "*/5 * * * *" in str(fraud_distributions.automation_conditions_by_key)
    assert "0 3 * * *" in str(risk_model.automation_conditions_by_key)


def test_periodic_assets_are_packs_with_the_keys_and_objects_onboarding_reads():
    from risk_assets.tables import FRAUD_DISTRIBUTIONS, LATEST, RISK_MODEL

    assert fraud_distributions.key == dg.AssetKey("fraud_distributions")
    assert risk_model.key == dg.AssetKey("risk_model")
    assert FRAUD_DISTRIBUTIONS.key(LATEST) == FRAUD_DISTRIBUTIONS_KEY
    assert RISK_MODEL.key(LATEST) == RISK_MODEL_KEY
    for asset in (fraud_distributions, risk_model):
        spec = next(iter(asset.specs))
        assert spec.tags["pack"] == spec.key.to_user_string()
        assert spec.group_name == "onboarding_models"


def test_risk_assets_are_owned_by_risk_and_say_where_they_live():
    from risk_assets.onboarding import onboarding_assets

    for spec in [*onboarding_assets.specs, *fraud_distributions.specs, *risk_model.specs]:
        name = spec.key.to_user_string()
        assert spec.owners == ["team:risk"], name
        assert spec.tags["domain"] == "risk", name
        assert spec.description, name
        assert spec.metadata["lake_prefix"] == f"work/onboarding/{name}"
