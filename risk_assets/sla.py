"""The onboarding SLA in production: signup-to-decision latency, rolling p50/p95 and an alert.

Latency is measured on Redis' own clock, like ``bench/signup_latency.py``: a decision's
``decisions`` entry id minus its signup's ``signups`` entry id (both are epoch milliseconds).
Every decision counts, whoever published it (an onboarding run, or the sensors' ``review`` for a
failed or stalled run); each ``decision`` materialisation also carries its own latency
(``signup_to_decision_s``).

``onboarding_sla_sensor`` (every minute, running by default) reads the decisions of the last
``ONBOARDING_SLA_WINDOW_SECONDS`` (900) from the stream, plus the signups still owed a decision
that have already waited longer than the threshold (they count with their age so far, so a
stalled pipeline breaches too), and computes p50 / p95 / max. It alerts through the ``alerts``
resource (Slack or the log) when p95 passes ``ONBOARDING_SLA_P95_SECONDS`` (60), once per
transition, and once more when p95 is back under it. It records the figures as observations of
the asset ``onboarding_sla`` (on every transition and at most every
``ONBOARDING_SLA_OBSERVE_SECONDS``, 300): the asset's page plots the rolling p50/p95.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import dagster as dg
import redis

from resources.alerts import AlertsResource
from resources.redis_store import RedisResource
from risk_assets import streams
from risk_assets.tables import OWNERS, TAGS

SLA_ASSET = "onboarding_sla"
P95_ENV, WINDOW_ENV, OBSERVE_ENV = (
    "ONBOARDING_SLA_P95_SECONDS",
    "ONBOARDING_SLA_WINDOW_SECONDS",
    "ONBOARDING_SLA_OBSERVE_SECONDS",
)
DEFAULT_P95_S, DEFAULT_WINDOW_S, DEFAULT_OBSERVE_S = 60.0, 900.0, 300.0
MAX_OVERDUE = 5000


# ---- figures (pure) ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) as the bench computes it; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class SlaWindow:
    """Signup-to-decision latency over the window (seconds) and whether p95 passes the
    threshold."""

    decided: int
    overdue: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    threshold_s: float
    window_s: float

    @property
    def breached(self) -> bool:
        return self.p95_s is not None and self.p95_s > self.threshold_s


def sla_window(
    decided: list[tuple[int, int]],
    waiting: list[int],
    now_ms: int,
    window_s: float,
    threshold_s: float,
) -> SlaWindow:
    """Latency figures of the decisions made in the last ``window_s`` seconds.

    ``decided``: (signup ms, decision ms) pairs; ``waiting``: signup ms of signups still owed a
    decision. A waiting signup older than ``threshold_s`` counts with its age so far (its latency
    is at least that); younger ones are left out (their latency is not known yet).
    """
    start = now_ms - window_s * 1000
    latencies = [(d - s) / 1000 for s, d in decided if d >= start]
    overdue = [(now_ms - s) / 1000 for s in waiting if now_ms - s > threshold_s * 1000]
    values = latencies + overdue

    def rounded(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return SlaWindow(
        decided=len(latencies),
        overdue=len(overdue),
        p50_s=rounded(percentile(values, 0.5)),
        p95_s=rounded(percentile(values, 0.95)),
        max_s=rounded(max(values, default=None)),
        threshold_s=threshold_s,
        window_s=window_s,
    )


def transition(window: SlaWindow, previous: str | None) -> str | None:
    """``"breach"`` / ``"ok"`` when the state changed since ``previous`` (None: never evaluated,
    counts as ok), else None: one alert per transition."""
    state = "breach" if window.breached else "ok"
    return state if state != (previous or "ok") else None


def alert_text(window: SlaWindow, state: str) -> str:
    minutes = f"{window.window_s / 60:g} min"
    figures = f"p50 {window.p50_s}s, max {window.max_s}s, {window.decided} decisions" + (
        f", {window.overdue} signups still waiting longer" if window.overdue else ""
    )
    if state == "breach":
        return (
            f":rotating_light: onboarding SLA: p95 signup-to-decision {window.p95_s}s over the "
            f"last {minutes} passes {window.threshold_s:g}s ({figures})."
        )
    return (
        f":white_check_mark: onboarding SLA back: p95 signup-to-decision {window.p95_s}s over "
        f"the last {minutes} is within {window.threshold_s:g}s ({figures})."
    )


# ---- Redis ---------------------------------------------------------------------------------------


def _ms(entry_id: str) -> int:
    return int(str(entry_id).split("-", 1)[0])


def read_latencies(
    client: redis.Redis, window_s: float, threshold_s: float
) -> tuple[int, list[tuple[int, int]], list[int]]:
    """(Redis time in ms, (signup ms, decision ms) of the window's decisions, signup ms of the
    signups owed a decision for longer than ``threshold_s``)."""
    sec, usec = client.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    entries = client.xrange(streams.DECISIONS, min=f"{now_ms - int(window_s * 1000)}-0")
    decided = [
        (_ms(f["signup_id"]), _ms(eid))
        for eid, f in entries
        if str(f.get("signup_id", "")).split("-", 1)[0].isdigit()
    ]
    overdue_before = f"{now_ms - int(threshold_s * 1000)}"
    waiting: list[int] = []
    try:
        groups = client.xinfo_groups(streams.SIGNUPS)
    except redis.exceptions.ResponseError:  # no stream yet
        return now_ms, decided, waiting
    group = next((g for g in groups if g["name"] == streams.GROUP), None)
    if group is None:
        return now_ms, decided, waiting
    pending = client.xpending_range(
        streams.SIGNUPS, streams.GROUP, min="-", max=overdue_before, count=MAX_OVERDUE
    )
    waiting += [_ms(p["message_id"]) for p in pending]
    last = group.get("last-delivered-id") or "0-0"
    undelivered = client.xrange(
        streams.SIGNUPS, min=f"({last}", max=overdue_before, count=MAX_OVERDUE
    )
    waiting += [_ms(eid) for eid, _ in undelivered]
    return now_ms, decided, waiting


# ---- Dagster -------------------------------------------------------------------------------------

onboarding_sla = dg.AssetSpec(
    SLA_ASSET,
    deps=["decision"],
    description=(
        "Signup-to-decision latency of onboarding over the last 15 minutes (p50, p95, max, "
        "decisions counted, signups still waiting past the threshold), observed by "
        "onboarding_sla_sensor from the decisions stream; p95 above the threshold (60 s, "
        f"{P95_ENV}) alerts."
    ),
    group_name="onboarding",
    owners=OWNERS,
    tags=TAGS,
    kinds={"redis"},
    metadata={"threshold_env": P95_ENV},
)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def build_sla_sensor(minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    """The SLA sensor (see module docstring); thresholds from the environment at each tick."""

    @dg.sensor(
        name="onboarding_sla_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Rolling p50/p95 signup-to-decision latency (observations of onboarding_sla); "
            "alerts once when p95 over 15 min passes the threshold, once when it is back."
        ),
    )
    def onboarding_sla_sensor(
        context: dg.SensorEvaluationContext, redis: RedisResource, alerts: AlertsResource
    ) -> dg.SensorResult:
        """Signup-to-decision p50/p95 over the window; alert on each threshold transition."""
        threshold = _env_float(P95_ENV, DEFAULT_P95_S)
        window_s = _env_float(WINDOW_ENV, DEFAULT_WINDOW_S)
        observe_every = _env_float(OBSERVE_ENV, DEFAULT_OBSERVE_S)
        now_ms, decided, waiting = read_latencies(redis.get_client(), window_s, threshold)
        window = sla_window(decided, waiting, now_ms, window_s, threshold)
        previous = json.loads(context.cursor) if context.cursor else {}
        changed = transition(window, previous.get("state"))
        if changed:
            alerts.send(alert_text(window, changed), context.log)
        state = "breach" if window.breached else "ok"
        events = []
        observed_ms = previous.get("observed_ms", 0)
        if changed or now_ms - observed_ms >= observe_every * 1000:
            figures = {k: ("-" if v is None else v) for k, v in asdict(window).items()}
            events.append(
                dg.AssetObservation(asset_key=SLA_ASSET, metadata={**figures, "state": state})
            )
            observed_ms = now_ms
        cursor = {"state": state, "observed_ms": observed_ms, "p95_s": window.p95_s}
        return dg.SensorResult(cursor=json.dumps(cursor), asset_events=events)

    return onboarding_sla_sensor


defs = dg.Definitions(assets=[onboarding_sla], sensors=[build_sla_sensor()])
