"""Code location ``risk_assets``: per-applicant risk onboarding."""

import warnings

import dagster as dg

# Beta/preview APIs we rely on (automation conditions): silenced before the modules below load.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)

from resources import shared_resources  # noqa: E402
from resources.bank import BankDataResource  # noqa: E402
from risk_assets import onboarding, periodic  # noqa: E402
from sensors import platform_sensors  # noqa: E402


def with_code_references(located: dg.Definitions) -> dg.Definitions:
    """``located`` with every asset linked to its source file and line (shown in the UI)."""
    return dg.Definitions(
        assets=dg.with_source_code_references(list(located.assets or [])),
        jobs=located.jobs,
        sensors=located.sensors,
    )


# the only Definitions object at module level: `dagster -m risk_assets.definitions` finds it
defs = dg.Definitions.merge(
    with_code_references(dg.Definitions.merge(periodic.defs, onboarding.defs)),
    platform_sensors("risk_assets", daemon_health=True),
    dg.Definitions(resources={**shared_resources(), "bank": BankDataResource.from_env()}),
)
