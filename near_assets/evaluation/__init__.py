"""Scoring against the generator's ground truth: non-blocking asset checks, synthetic lakes only.

The production assets know nothing of ``truth/``. Each module here scores one owner's assets
(``mobility``, ``audience``, ``campaigns``) and exports its checks as ``checks``; ``defs`` holds
them only when the lake has ``truth/`` (a lake written by ``near_assets.synth``), decided when the
code location loads. Only a local lake is looked at then: loading a location never touches S3,
so a synthetic lake on S3 runs without these checks.
"""

from __future__ import annotations

import dagster as dg

from near_assets.evaluation import audience, campaigns, mobility, models, places
from near_assets.tables import TRUTH
from resources.lake import LakeResource

checks = [*mobility.checks, *audience.checks, *campaigns.checks, *models.checks, *places.checks]


def has_truth(lake: LakeResource) -> bool:
    """The lake is local and holds the generator's ``truth/``."""
    return lake.backend == "local" and lake.exists(TRUTH)


defs = (
    dg.Definitions(asset_checks=checks) if has_truth(LakeResource.from_env()) else dg.Definitions()
)
