"""Code location ``risk_assets``: per-applicant risk onboarding."""

import dagster as dg

from resources.defs_builder import build_definitions
from sensors import health
from sensors.alerts import alert_definitions

MODULES: list[str] = ["periodic", "onboarding"]

defs = dg.Definitions.merge(
    build_definitions("risk_assets", MODULES), alert_definitions("risk_assets"), health.defs
)
