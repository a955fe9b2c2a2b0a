"""Code location ``risk_assets``: per-applicant risk onboarding."""

import warnings

import dagster as dg

# Beta/preview APIs we rely on (automation conditions): silenced before the modules below load.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)

from resources import shared_resources  # noqa: E402
from resources.bank import BankDataResource  # noqa: E402
from risk_assets import onboarding, periodic, sla, streams  # noqa: E402
from risk_assets.signups import APPLICANTS  # noqa: E402
from risk_assets.validation import signup_id_of  # noqa: E402
from sensors import platform_sensors  # noqa: E402
from sensors.housekeeping import RetireSpec, build_housekeeping  # noqa: E402


def signup_time(partition: str) -> float | None:
    """When an ``applicants`` partition's signup arrived (its stream id is epoch ms)."""
    try:
        return int(signup_id_of(partition).split("-", 1)[0]) / 1000
    except ValueError:
        return None


def decided(resources, partitions) -> list[bool]:
    """One flag per ``applicants`` partition: True when its signup has its decision."""
    client = resources.redis.get_client()
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.exists(streams.DECIDED_PREFIX + signup_id_of(p))
    return [bool(n) for n in pipe.execute()]


# retire decided applicants' partitions with the run purge (sensors/housekeeping.py)
RETIRE_APPLICANTS = RetireSpec(APPLICANTS, signup_time, decided, frozenset({"redis"}))


def with_code_references(located: dg.Definitions) -> dg.Definitions:
    """``located`` with every asset linked to its source file and line (shown in the UI)."""
    return dg.Definitions(
        assets=dg.with_source_code_references(list(located.assets or [])),
        jobs=located.jobs,
        sensors=located.sensors,
    )


# the only Definitions object at module level: `dagster -m risk_assets.definitions` finds it
defs = dg.Definitions.merge(
    with_code_references(dg.Definitions.merge(periodic.defs, onboarding.defs, sla.defs)),
    platform_sensors("risk_assets", daemon_health=True),
    build_housekeeping([RETIRE_APPLICANTS]),
    dg.Definitions(resources={**shared_resources(), "bank": BankDataResource.from_env()}),
)
