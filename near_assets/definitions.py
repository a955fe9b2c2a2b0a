"""Code location ``near_assets``: the location-intelligence asset graph."""

from resources.defs_builder import build_definitions

MODULES: list[str] = [
    "pings",
    "mobility",
    "campaigns",
    "insights",
    "audience",
    "monitors",
    "automation",
]

defs = build_definitions("near_assets", MODULES)
