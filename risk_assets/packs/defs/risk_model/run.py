"""risk_model pack: the daily probability-of-default model."""

from typing import Any

from risk_assets import science


def run(loan_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Train on the labelled history; JSON coefficients plus held-out AUC."""
    rows = [{f: r[f] for f in science.FEATURES} for r in loan_history]
    labels = [int(r["defaulted"]) for r in loan_history]
    return science.train_risk_model(rows, labels)
