"""Code location ``risk_assets``: per-applicant risk onboarding."""

from resources.defs_builder import build_definitions

MODULES: list[str] = ["periodic", "onboarding"]

defs = build_definitions("risk_assets", MODULES)
