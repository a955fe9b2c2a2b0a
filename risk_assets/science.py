"""Risk science: features, fraud distributions, the risk model and the decision policy.

Pure functions without Dagster. Amounts are USD, durations years or months as named. The
per-applicant path uses only the standard library (it runs inside every onboarding run, where
import time is latency); numpy and scikit-learn are imported inside the training functions.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

FEATURES = [
    "log_revenue",
    "years_in_business",
    "amount_to_revenue",
    "cash_margin",
    "inflow_volatility",
    "nsf_count",
    "revenue_mismatch",
    "industry_risk",
    "negative_balance_months",
]
INDUSTRY_RISK = {
    "construction": 0.8,
    "restaurant": 0.9,
    "hospitality": 0.8,
    "retail": 0.6,
    "transport": 0.6,
    "manufacturing": 0.4,
    "wholesale": 0.4,
    "healthcare": 0.2,
    "professional_services": 0.3,
    "software": 0.3,
}
DEFAULT_INDUSTRY_RISK = 0.5
APPROVE_BELOW = 0.25
DECLINE_FROM = 0.55
FRAUD_REVIEW_FROM = 0.8
TERM_MONTHS = 12
MONTHLY_RATE = 0.015
DIST_FIELDS = ("amount_to_revenue", "log_revenue", "years_in_business")
MIN_YEARS_IN_BUSINESS = 0.5
# extra fraud checks of the borderline path (``fraud_checks``)
VELOCITY_KEYS = ("device_id", "ip", "ip_net")
VELOCITY_FLOOR_24H = 3  # applications per device / IP / network in 24 h never flagged below this
ANOMALY_Z = 3.5  # robust z-score (median, 1.4826 x MAD) beyond which a statement feature is odd
ANOMALY_FEATURES = {  # bank-statement feature -> the direction that is bad (+1 high, -1 low)
    "nsf_count": 1,
    "inflow_volatility": 1,
    "cash_margin": -1,
    "negative_balance_months": 1,
    "revenue_mismatch": 1,
}
ANOMALIES_TO_REVIEW = 2  # statement anomalies that send a borderline applicant to review
RELATIVE_RISK_REVIEW = 2.0  # score / industry's model-implied default rate that sends to review

# A prior model used until ``risk_model`` has been trained once (same form as a trained one).
PRIOR_MODEL: dict[str, Any] = {
    "version": "prior",
    "features": FEATURES,
    "mean": [12.5, 6.0, 0.25, 0.06, 0.3, 1.0, 0.1, 0.5, 0.5],
    "scale": [1.0, 5.0, 0.3, 0.1, 0.15, 1.5, 0.2, 0.25, 1.0],
    "coef": [-0.6, -0.5, 0.7, -0.8, 0.5, 0.6, 0.7, 0.4, 0.4],
    "intercept": -1.2,
}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


def bank_features(bank: dict[str, Any], declared_annual_revenue: float) -> dict[str, float]:
    """Cash-flow features from a 12-month bank summary (see ``resources.bank``)."""
    inflows = [float(x) for x in bank["monthly_inflows"]]
    outflows = [float(x) for x in bank["monthly_outflows"]]
    mean_in = statistics.fmean(inflows) if inflows else 0.0
    total_in, total_out = sum(inflows), sum(outflows)
    observed_annual = mean_in * 12
    return {
        "observed_annual_revenue": round(observed_annual, 2),
        "cash_margin": (total_in - total_out) / total_in if total_in > 0 else -1.0,
        "inflow_volatility": statistics.pstdev(inflows) / mean_in if mean_in > 0 else 1.0,
        "nsf_count": float(bank.get("nsf_count", 0)),
        "negative_balance_months": float(sum(1 for b in bank["month_end_balances"] if b < 0)),
        "account_age_months": float(bank.get("account_age_months", 0)),
        "revenue_mismatch": (
            max(0.0, 1 - observed_annual / declared_annual_revenue)
            if declared_annual_revenue > 0
            else 1.0
        ),
    }


def industry_key(industry: str) -> str:
    """``"Professional Services "`` -> ``"professional_services"`` (keys of ``INDUSTRY_RISK``)."""
    return str(industry).strip().lower().replace(" ", "_")


def application_features(app: dict[str, Any]) -> dict[str, float]:
    """Declared-profile features of an application."""
    revenue = float(app["annual_revenue"])
    return {
        "log_revenue": math.log1p(max(revenue, 0.0)),
        "years_in_business": float(app["years_in_business"]),
        "amount_to_revenue": float(app["requested_amount"]) / revenue if revenue > 0 else 10.0,
        "industry_risk": INDUSTRY_RISK.get(industry_key(app["industry"]), DEFAULT_INDUSTRY_RISK),
    }


def fraud_distributions(applications: Sequence[dict[str, Any]], n_quantiles: int = 20) -> dict:
    """Empirical quantiles of declared-profile features and country shares of ``applications``."""
    rows = [application_features(a) for a in applications]
    quantiles: dict[str, list[float]] = {}
    for name in DIST_FIELDS:
        values = sorted(r[name] for r in rows)
        if len(values) < 2:
            quantiles[name] = []
            continue
        qs = statistics.quantiles(values, n=n_quantiles, method="inclusive")
        quantiles[name] = [round(v, 6) for v in qs]
    countries: dict[str, int] = {}
    for a in applications:
        countries[a["country"]] = countries.get(a["country"], 0) + 1
    n = max(len(applications), 1)
    return {
        "n": len(applications),
        "quantiles": quantiles,
        "country_share": {c: k / n for c, k in sorted(countries.items())},
    }


def _percentile(quantiles: list[float], value: float) -> float:
    if not quantiles:
        return 0.5
    return bisect.bisect_left(quantiles, value) / len(quantiles)


def fraud_features(
    app: dict[str, Any], bank: dict[str, float], distributions: dict[str, Any]
) -> dict[str, float]:
    """Anomaly of an applicant against recent applications; ``fraud_score`` in 0..1."""
    feats = application_features(app)
    pct = {
        f"{name}_pct": _percentile(distributions["quantiles"].get(name, []), feats[name])
        for name in DIST_FIELDS
    }
    tail = max(abs(p - 0.5) * 2 for p in pct.values())
    share = distributions["country_share"].get(app["country"], 0.0)
    rare_country = 1.0 if distributions["n"] >= 50 and share < 0.01 else 0.0
    young_account = 1.0 if bank["account_age_months"] < 6 else 0.0
    raw = (
        2.5 * bank["revenue_mismatch"]
        + 1.2 * max(0.0, tail - 0.8) * 5
        + 1.0 * rare_country
        + 1.0 * young_account
        - 2.5
    )
    return {**pct, "rare_country": rare_country, "fraud_score": round(_sigmoid(raw), 4)}


def model_inputs(app: dict[str, Any], bank: dict[str, float]) -> dict[str, float]:
    """The model's feature vector (``FEATURES``) for one applicant."""
    return {name: float({**application_features(app), **bank}[name]) for name in FEATURES}


def score(model: dict[str, Any], inputs: dict[str, float]) -> float:
    """Probability of default in 0..1 from a standardised logistic model stored as JSON."""
    z = model["intercept"]
    for name, mu, sd, w in zip(
        model["features"], model["mean"], model["scale"], model["coef"], strict=True
    ):
        z += w * (inputs[name] - mu) / (sd or 1.0)
    return _sigmoid(z)


def credit_features(app: dict[str, Any], bank: dict[str, float]) -> dict[str, float]:
    """Affordability: monthly payment of the requested amount and debt-service coverage."""
    amount = float(app["requested_amount"])
    r, n = MONTHLY_RATE, TERM_MONTHS
    payment = amount * r / (1 - (1 + r) ** -n)
    monthly_free_cash = bank["observed_annual_revenue"] / 12 * max(bank["cash_margin"], 0.0)
    return {
        "monthly_payment": round(payment, 2),
        "dscr": round(monthly_free_cash / payment, 4) if payment > 0 else 0.0,
        "max_affordable_amount": round(
            max(0.0, monthly_free_cash / 1.25) * (1 - (1 + r) ** -n) / r, 2
        ),
    }


# ---- branching by score band (the seed's ``bv_score`` 0/1/2 paths) ------------------------------

OnboardingPath = Literal["fast", "borderline", "decline"]


@dataclass(frozen=True)
class Route:
    """The path an applicant takes after the first score, and why (shown per applicant)."""

    path: OnboardingPath
    band: int
    reason: str


def score_band(risk_score: float) -> int:
    """0: clear approval (< ``APPROVE_BELOW``), 1: borderline, 2: clear decline (>= ``DECLINE_FROM``)."""
    return 0 if risk_score < APPROVE_BELOW else (1 if risk_score < DECLINE_FROM else 2)


def choose_path(app: dict[str, Any], risk_score: float) -> Route:
    """The stages after the first score, chosen per applicant.

    ``decline``: a business younger than 6 months, or band 2: nothing more is computed.
    ``fast``: band 0: fraud and affordability features only, no manual-review checks.
    ``borderline``: band 1: the fast path's features plus the extra fraud checks (device / IP
    velocity, bank-statement anomalies) and the industry benchmark.
    """
    band = score_band(risk_score)
    if float(app["years_in_business"]) < MIN_YEARS_IN_BUSINESS:
        return Route("decline", band, "business younger than 6 months")
    if band == 2:
        return Route(
            "decline", band, f"high risk score {risk_score:.2f} >= {DECLINE_FROM}: clear decline"
        )
    if band == 0:
        return Route(
            "fast",
            band,
            f"low risk score {risk_score:.2f} < {APPROVE_BELOW}: clear approval, "
            "no manual-review checks",
        )
    return Route(
        "borderline",
        band,
        f"borderline risk score {risk_score:.2f} in [{APPROVE_BELOW}, {DECLINE_FROM}): "
        "extra fraud checks",
    )


def velocity_key(app: dict[str, Any], kind: str) -> str | None:
    """The applicant's ``device_id``, ``ip`` or ``ip_net`` (the /24 of the IP): the keys the
    ``device_ip_velocity`` pack counts."""
    if kind == "ip_net":
        ip = app.get("ip")
        return ".".join(str(ip).split(".")[:3]) + ".0/24" if ip and "." in str(ip) else None
    value = app.get(kind)
    return str(value) if value else None


def fraud_checks(
    app: dict[str, Any],
    bank: dict[str, float],
    velocity: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
) -> dict[str, Any]:
    """Extra fraud checks of a borderline applicant.

    Velocity: applications of the applicant's device, IP and /24 network in the last 24 h
    (``device_ip_velocity``); flagged above that key type's 99th percentile and at least
    ``VELOCITY_FLOOR_24H``. Statement anomalies: robust z-score of each bank-statement feature
    against the recent applicants (``bank_statement_baseline``: median, MAD, p95), in the
    feature's bad direction; an anomaly beyond ``ANOMALY_Z`` (and beyond p95 for high-is-bad
    features). ``None`` for a pack that has never run: its check is reported as unavailable.
    """
    counts: dict[str, int] = {}
    flags: list[str] = []
    for kind in VELOCITY_KEYS:
        key = velocity_key(app, kind)
        if key is None or velocity is None:
            continue
        n = int(velocity.get("velocity", {}).get(kind, {}).get(key, {}).get("24h", 0))
        counts[kind] = n
        if n >= max(VELOCITY_FLOOR_24H, int(velocity.get("p99_24h", {}).get(kind, 0)) + 1):
            flags.append(f"{kind} {n} applications in 24h")
    z_scores: dict[str, float] = {}
    anomalies: list[str] = []
    for name, direction in ANOMALY_FEATURES.items():
        stats = (baseline or {}).get("features", {}).get(name)
        if stats is None or name not in bank:
            continue
        excess = direction * (float(bank[name]) - float(stats["median"]))
        spread = 1.4826 * float(stats["mad"])
        z = excess / spread if spread > 0 else (math.inf if excess > 0 else 0.0)
        z_scores[name] = round(z, 2) if math.isfinite(z) else 99.0
        beyond_p95 = direction < 0 or float(bank[name]) > float(stats["p95"])
        if z > ANOMALY_Z and beyond_p95:
            anomalies.append(name)
    passed = not flags and len(anomalies) < ANOMALIES_TO_REVIEW
    return {
        "velocity_24h": counts,
        "velocity_flags": flags,
        "statement_z": z_scores,
        "statement_anomalies": anomalies,
        "velocity_available": velocity is not None,
        "baseline_available": baseline is not None,
        "passed": passed,
    }


def industry_benchmark(
    app: dict[str, Any], risk_score: float, rates: dict[str, Any] | None
) -> dict[str, Any]:
    """The applicant's score against their industry (``industry_default_rates``): observed and
    model-implied default rates, and ``relative_risk`` = score / model-implied rate (the same
    model scores both, so 2.0 means twice as risky as the industry's average applicant)."""
    industry = industry_key(app["industry"])
    by_industry = (rates or {}).get("by_industry", {})
    row = by_industry.get(industry) or by_industry.get("other")
    if row is None:
        return {"industry": industry, "available": False, "relative_risk": None}
    model_rate = float(row["model_default_rate"])
    return {
        "industry": industry if industry in by_industry else "other",
        "available": True,
        "observed_default_rate": float(row["observed_default_rate"]),
        "model_default_rate": model_rate,
        "relative_risk": round(risk_score / model_rate, 3) if model_rate > 0 else None,
    }


def decide(
    app: dict[str, Any],
    risk_score: float,
    fraud: dict[str, float] | None = None,
    credit: dict[str, float] | None = None,
    checks: dict[str, Any] | None = None,
    benchmark: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Approve / decline / review from the stages the applicant's path ran (``choose_path``).

    The decline path computes no features (``fraud`` and ``credit`` are ``None``); the fast path
    gives fraud and affordability features; the borderline path adds ``checks`` (extra fraud
    checks) and ``benchmark`` (industry), which send it to review when they fail.
    """
    band = score_band(risk_score)
    if fraud is not None and fraud["fraud_score"] >= FRAUD_REVIEW_FROM:
        return {"decision": "review", "band": band, "reason": "fraud signals: manual check"}
    if float(app["years_in_business"]) < MIN_YEARS_IN_BUSINESS:
        return {"decision": "decline", "band": band, "reason": "business younger than 6 months"}
    if band == 2 or credit is None:
        return {"decision": "decline", "band": band, "reason": f"high risk score {risk_score:.2f}"}
    requested = float(app["requested_amount"])
    cap = min(requested, 0.2 * float(app["annual_revenue"]), credit["max_affordable_amount"])
    amount = math.floor(cap / 100) * 100
    if amount < 1000:
        return {"decision": "decline", "band": band, "reason": "cash flow cannot carry a loan"}
    if band == 0:
        return {"decision": "approve", "band": band, "amount": amount, "reason": "low risk"}
    if checks is not None and not checks["passed"]:
        found = [*checks["velocity_flags"], *checks["statement_anomalies"]]
        return {
            "decision": "review",
            "band": band,
            "reason": "borderline, extra fraud checks: " + ", ".join(found),
        }
    relative = (benchmark or {}).get("relative_risk")
    if relative is not None and relative >= RELATIVE_RISK_REVIEW:
        return {
            "decision": "review",
            "band": band,
            "reason": f"borderline, {relative:.1f}x the {benchmark['industry']} default rate",
        }
    if credit["dscr"] >= 1.5:
        return {
            "decision": "approve",
            "band": band,
            "amount": math.floor(amount * 0.5 / 100) * 100,
            "reason": "medium risk, strong cash flow: reduced amount",
        }
    return {"decision": "review", "band": band, "reason": f"medium risk score {risk_score:.2f}"}


# ---- training (numpy / scikit-learn imported lazily) ------------------------------------------


def synthetic_history(n: int, seed: int = 7) -> tuple[list[dict[str, float]], list[int]]:
    """Labelled history: simulated applicants and whether they defaulted (known logistic truth)."""
    import random

    from resources.bank import simulate_bank_summary

    rng = random.Random(seed)
    industries = [*INDUSTRY_RISK, "other"]
    rows, labels = [], []
    for i in range(n):
        revenue = rng.lognormvariate(12.5, 0.9)
        app = {
            "annual_revenue": revenue,
            "years_in_business": round(rng.expovariate(1 / 6), 1),
            "requested_amount": revenue * rng.uniform(0.02, 0.6),
            "industry": rng.choice(industries),
            "country": "US",
        }
        bank = bank_features(simulate_bank_summary(f"hist-{seed}-{i}", revenue), revenue)
        x = model_inputs(app, bank)
        z = (
            -1.8
            - 0.35 * min(x["years_in_business"], 20) / 5
            + 1.6 * min(x["amount_to_revenue"], 2)
            - 4.0 * x["cash_margin"]
            + 1.2 * x["inflow_volatility"]
            + 0.35 * x["nsf_count"]
            + 2.0 * x["revenue_mismatch"]
            + 1.0 * x["industry_risk"]
            + 0.2 * x["negative_balance_months"]
        )
        rows.append(x)
        labels.append(1 if rng.random() < _sigmoid(z) else 0)
    return rows, labels


def train_risk_model(
    rows: list[dict[str, float]], labels: list[int], seed: int = 7
) -> dict[str, Any]:
    """Standardised L2 logistic regression; returns it as JSON-able coefficients plus test AUC."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    x = np.array([[r[f] for f in FEATURES] for r in rows], dtype=float)
    y = np.array(labels)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=1.0, max_iter=500).fit((x_train - mean) / scale, y_train)
    auc = float(roc_auc_score(y_test, clf.predict_proba((x_test - mean) / scale)[:, 1]))
    return {
        "version": "trained",
        "features": FEATURES,
        "mean": mean.round(6).tolist(),
        "scale": scale.round(6).tolist(),
        "coef": clf.coef_[0].round(6).tolist(),
        "intercept": float(clf.intercept_[0]),
        "auc_test": round(auc, 4),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "default_rate": round(float(y.mean()), 4),
    }
