"""Code location ``near_assets``: the location-intelligence asset graph."""

import os
import warnings
from pathlib import Path

import dagster as dg

# Beta/preview APIs we rely on (automation conditions, partition mappings): silenced before the
# modules below define their assets.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)

from near_assets import (  # noqa: E402
    audience,
    automation,
    campaigns,
    evaluation,
    insights,
    mobility,
    monitors,
    pings,
    profiles,
    reference,
)
from near_assets.models import (  # noqa: E402
    high_density_points,
    identity_graph,
    place_boundaries,
    visit_history,
)
from resources import shared_resources  # noqa: E402
from resources.spark import SparkResource  # noqa: E402
from sensors import platform_sensors  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def with_code_references(location: dg.Definitions) -> dg.Definitions:
    """``location`` with a link from each asset to the function that computes it.

    Links are local file paths; with ``$CODE_REFERENCES_GIT_URL`` (e.g. the GitHub repository)
    they point to the files in that repository at ``$CODE_REFERENCES_GIT_BRANCH`` (``main``).
    """
    assets = dg.with_source_code_references(location.assets or [])
    git_url = os.environ.get("CODE_REFERENCES_GIT_URL")
    if git_url:
        assets = dg.link_code_references_to_git(
            assets,
            git_url=git_url,
            git_branch=os.environ.get("CODE_REFERENCES_GIT_BRANCH") or "main",
            file_path_mapping=dg.AnchorBasedFilePathMapping(
                local_file_anchor=REPO_ROOT, file_anchor_path_in_repository=""
            ),
        )
    return dg.Definitions(
        assets=assets,
        asset_checks=location.asset_checks,
        jobs=location.jobs,
        schedules=location.schedules,
        sensors=location.sensors,
        resources=location.resources,
        executor=location.executor,
        loggers=location.loggers,
        metadata=location.metadata,
    )


defs = with_code_references(
    dg.Definitions.merge(
        reference.defs,
        pings.defs,
        mobility.defs,
        profiles.defs,
        visit_history.defs,
        high_density_points.defs,
        identity_graph.defs,
        place_boundaries.defs,
        campaigns.defs,
        insights.defs,
        audience.defs,
        monitors.defs,
        evaluation.defs,
        automation.defs,
        platform_sensors("near_assets"),
        dg.Definitions(resources={**shared_resources(), "spark": SparkResource.from_env()}),
    )
)
