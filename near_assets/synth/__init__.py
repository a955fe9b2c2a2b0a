"""Synthetic lake generator: a city, a device panel, pings with dirt, and ground truth.

``generate(lake, ...)`` writes the CONTRACTS inputs (raw pings, POIs, areas, campaigns,
exposures) and ``truth/`` (homes, stays, POI visitors, dirt counts, planted campaign lift).
``dirty_day(lake, day, share=0.3)`` writes one day with a chosen share of malformed rows.
``profile=`` picks the panel: ``default`` (dense), ``sparse``, or a realistic ``real_*`` profile
(per-device ping rates, night damping, churn, outages, night shift, away nights, cities and time
zones; see ``near_assets.synth.panel`` and ``docs/HOME-MODEL.md``).
The console command is ``near-synth`` (see ``near_assets.synth.cli``).
"""

from near_assets.synth.dirt import REASONS
from near_assets.synth.generator import default_start, dirty_day, generate

__all__ = ["REASONS", "default_start", "dirty_day", "generate"]
