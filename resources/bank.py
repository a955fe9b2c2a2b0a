"""Bank-data provider: an HTTP API (``BANK_API_URL``) in production, else a deterministic simulator.

The simulator is keyed by user id: the same applicant always gets the same 12 months of
account history. The HTTP back end calls ``GET {BANK_API_URL}/accounts/{user_id}/summary`` and
expects the same JSON shape as :func:`simulate_bank_summary` returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import dagster as dg

MONTHS = 12


class BankApiError(RuntimeError):
    """The bank-data API did not answer usefully (transient: the step retries)."""


def simulate_bank_summary(user_id: str, declared_annual_revenue: float | None = None) -> dict:
    """A deterministic bank-account summary for ``user_id`` (amounts in USD, monthly series).

    ``declared_annual_revenue`` only scales the simulated inflows (a real bank does not know it);
    the mismatch factor between declared and observed revenue is itself keyed by ``user_id``.
    """
    seed = int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    base_revenue = declared_annual_revenue or rng.lognormvariate(12.5, 0.8)
    honesty = rng.choice([1.0] * 6 + [0.9, 0.8, 0.6, 0.35])
    monthly_mean = max(base_revenue, 1.0) * honesty / MONTHS
    margin = rng.uniform(-0.08, 0.2)
    inflows, outflows, balances = [], [], []
    balance = monthly_mean * rng.uniform(0.1, 1.5)
    for _ in range(MONTHS):
        inflow = max(0.0, rng.gauss(monthly_mean, monthly_mean * 0.25))
        outflow = max(0.0, inflow * (1 - margin) + rng.gauss(0, monthly_mean * 0.05))
        balance = balance + inflow - outflow
        inflows.append(round(inflow, 2))
        outflows.append(round(outflow, 2))
        balances.append(round(balance, 2))
    nsf = sum(1 for b in balances if b < 0) + rng.choice([0, 0, 0, 0, 1, 2])
    return {
        "user_id": user_id,
        "source": "simulator",
        "account_age_months": rng.randint(3, 180),
        "monthly_inflows": inflows,
        "monthly_outflows": outflows,
        "month_end_balances": balances,
        "nsf_count": nsf,
    }


class BankDataResource(dg.ConfigurableResource):
    """Bank history per applicant: ``api_url`` (``BANK_API_URL``) when set, else the simulator."""

    api_url: str | None = None
    timeout_s: float = 5.0
    attempts: int = 2

    @classmethod
    def from_env(cls) -> BankDataResource:
        # the URL may carry a key (https://key@host or ?key=...): the UI shows the name only
        return cls(api_url=dg.EnvVar("BANK_API_URL") if os.environ.get("BANK_API_URL") else None)

    @property
    def backend(self) -> str:
        return "http" if self.api_url else "simulator"

    def summary(self, user_id: str, declared_annual_revenue: float | None = None) -> dict:
        """The 12-month account summary of ``user_id``; raises :class:`BankApiError` on failure."""
        api_url = self.api_url.get_value() if isinstance(self.api_url, dg.EnvVar) else self.api_url
        if not api_url:
            return simulate_bank_summary(user_id, declared_annual_revenue)
        url = f"{api_url.rstrip('/')}/accounts/{urllib.parse.quote(user_id, safe='')}/summary"
        error: Exception | None = None
        for attempt in range(max(1, self.attempts)):
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                    data: dict[str, Any] = json.loads(resp.read())
                data.setdefault("source", "http")
                return data
            except (urllib.error.URLError, TimeoutError, ValueError, OSError) as exc:
                error = exc
                time.sleep(0.1 * (attempt + 1))
        raise BankApiError(f"bank API failed for {user_id}: {error}")
