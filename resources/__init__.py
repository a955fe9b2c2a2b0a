"""Resources: connections to the systems the platform talks to, each from its own environment.

| resource | default (no environment)          | production switch                                      |
|----------|-----------------------------------|--------------------------------------------------------|
| lake     | local folder ``$LAKE_ROOT``/.lake | ``LAKE_BUCKET``, ``LAKE_PREFIX``, ``AWS_ENDPOINT_URL`` |
| redis    | embedded redis-server             | ``REDIS_URL``                                          |
| alerts   | the run log                       | ``SLACK_BOT_TOKEN``, ``SLACK_CHANNEL``                 |
| spark    | local PySpark subprocess          | ``EMR_CLUSTER_ID`` (+ ``EMR_*`` variables)             |
| bank     | deterministic simulator           | ``BANK_API_URL``                                       |

Nothing in this package imports a code location (``near_assets``, ``risk_assets``) or
``deploy/``: each location binds ``shared_resources()`` plus its own (``spark`` for near,
``bank`` for risk) in its ``definitions.py``.
"""

from __future__ import annotations

from typing import Any


def shared_resources() -> dict[str, Any]:
    """The resources both code locations use, configured from the environment."""
    # imported here, so that ``import resources.bank`` (or any one resource) loads only that one
    from resources.alerts import AlertsResource
    from resources.lake import LakeResource
    from resources.redis_store import RedisResource

    return {
        "lake": LakeResource.from_env(),
        "redis": RedisResource.from_env(),
        "alerts": AlertsResource.from_env(),
    }
