"""Periodic risk assets: the packs of ``risk_assets/packs/defs/`` (one folder each).

``fraud_distributions`` (every 5 minutes) and ``risk_model`` (daily) were hand-written assets;
they are now packs like the others (``industry_default_rates``, ``device_ip_velocity``,
``bank_statement_baseline``), built by the ``Pack`` component type (``risk_assets.packs``) with
their automation conditions, retries, run-time limits and owners, and evaluated by the
``packs_automation_<timeout>`` sensors. Per-applicant assets read the latest JSON from the lake
(``risk_assets.tables``) and fall back to documented priors while these have never been
materialised. docs/PACKS.md: how to add one.
"""

import dagster as dg

from risk_assets.packs import build_defs

defs = build_defs()
PACKS: dict[str, dg.AssetsDefinition] = {a.key.to_user_string(): a for a in defs.assets or []}
fraud_distributions = PACKS["fraud_distributions"]
risk_model = PACKS["risk_model"]
