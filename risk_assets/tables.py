"""Risk's lake objects: the one place ``risk_assets`` forms a lake key.

Every onboarding asset keeps one JSON object per applicant partition
(``work/onboarding/<asset>/<partition>.json``); the periodic assets keep their current version
as ``work/onboarding/<asset>/latest.json``. Risk publishes no curated table: decisions leave
through the ``decisions`` Redis stream (``risk_assets.streams``).

Import-light on purpose (no pandas, no Dagster at import): onboarding run workers load it.
"""

from __future__ import annotations

from typing import Any

from publishing.tables import JsonObjects

OWNERS = ["team:risk"]
TAGS = {"domain": "risk", "tier": "internal"}
LATEST = "latest"
"""Id of the current version of a periodic asset (``<prefix>/latest.json``)."""


def _onboarding(asset: str) -> JsonObjects:
    return JsonObjects(asset, f"work/onboarding/{asset}")


# ---- per applicant (one object per ``applicants`` partition) -------------------------------------
APPLICATION = _onboarding("application")
BANK_FEATURES = _onboarding("bank_features")
FRAUD_FEATURES = _onboarding("fraud_features")
CREDIT_FEATURES = _onboarding("credit_features")
RISK_SCORE = _onboarding("risk_score")
FRAUD_CHECKS = _onboarding("fraud_checks")
INDUSTRY_BENCHMARK = _onboarding("industry_benchmark")
DECISION = _onboarding("decision")
ONBOARDING = {
    t.name: t
    for t in (
        APPLICATION,
        BANK_FEATURES,
        RISK_SCORE,
        FRAUD_FEATURES,
        CREDIT_FEATURES,
        FRAUD_CHECKS,
        INDUSTRY_BENCHMARK,
        DECISION,
    )
}

# ---- periodic (the current version under ``LATEST``) --------------------------------------------
FRAUD_DISTRIBUTIONS = _onboarding("fraud_distributions")
RISK_MODEL = _onboarding("risk_model")


def asset_args(objects: JsonObjects, **extra: Any) -> dict[str, Any]:
    """Owners, tags and where the asset's objects live, for a risk asset's definition."""
    return {
        "owners": OWNERS,
        "tags": {**TAGS, **extra.pop("tags", {})},
        "metadata": {"lake_prefix": objects.prefix, **extra.pop("metadata", {})},
        **extra,
    }


# ---- K: packs (``risk_assets/packs``): each pack's current output under ``LATEST`` --------------
def pack_output(pack: str) -> JsonObjects:
    """Where pack ``pack`` keeps its output: ``work/onboarding/<pack>/latest.json`` (a new pack
    needs no declaration here; ``FRAUD_DISTRIBUTIONS`` and ``RISK_MODEL`` are packs too)."""
    return _onboarding(pack)


INDUSTRY_DEFAULT_RATES = pack_output("industry_default_rates")
DEVICE_IP_VELOCITY = pack_output("device_ip_velocity")
BANK_STATEMENT_BASELINE = pack_output("bank_statement_baseline")
