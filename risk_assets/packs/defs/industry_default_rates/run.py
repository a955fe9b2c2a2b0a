"""industry_default_rates pack: observed vs model-implied default rate per industry."""

from collections import defaultdict
from typing import Any

from risk_assets import science

PSEUDO_COUNT = 20.0


def run(loan_history: list[dict[str, Any]], risk_model: dict[str, Any] | None) -> dict[str, Any]:
    """Industries share a risk tier (``science.INDUSTRY_RISK``); rates are computed per tier and
    reported per industry. ``risk_model`` is None until the model has been trained once."""
    model = risk_model or science.PRIOR_MODEL
    n = len(loan_history)
    overall = sum(int(r["defaulted"]) for r in loan_history) / n if n else 0.0
    tiers: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in loan_history:
        tiers[round(float(r["industry_risk"]), 3)].append(r)

    def rates(tier: float) -> dict[str, float]:
        rows = tiers.get(round(tier, 3), [])
        defaults = sum(int(r["defaulted"]) for r in rows)
        pd_mean = sum(science.score(model, r) for r in rows) / len(rows) if rows else overall
        return {
            "n": len(rows),
            "observed_default_rate": round(
                (defaults + PSEUDO_COUNT * overall) / (len(rows) + PSEUDO_COUNT), 4
            ),
            "model_default_rate": round(pd_mean, 4),
        }

    by_industry = {i: rates(t) for i, t in science.INDUSTRY_RISK.items()}
    by_industry["other"] = rates(science.DEFAULT_INDUSTRY_RISK)
    return {
        "n": n,
        "overall_default_rate": round(overall, 4),
        "model_version": model["version"],
        "by_industry": by_industry,
    }
