"""fraud_distributions pack (was ``fraud_distributions_pack/run.py`` under cron, every 5 min)."""

from typing import Any

from risk_assets import science


def run(recent_signups: list[dict[str, Any]]) -> dict[str, Any]:
    """Empirical quantiles and country shares of the recent valid applications."""
    return science.fraud_distributions(recent_signups)
