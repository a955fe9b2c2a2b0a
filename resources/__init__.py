"""Shared resources. Each one picks its back end from its own environment variables.

| resource | default (no environment)        | production switch                               |
|----------|---------------------------------|-------------------------------------------------|
| lake     | local folder ``$LAKE_ROOT``/.lake | ``LAKE_BUCKET``, ``LAKE_PREFIX``, ``AWS_ENDPOINT_URL`` |
| redis    | embedded redis-server           | ``REDIS_URL``                                   |
| alerts   | the run log                     | ``SLACK_BOT_TOKEN``, ``SLACK_CHANNEL``          |
| spark    | local PySpark subprocess        | ``EMR_CLUSTER_ID`` (+ ``EMR_*`` variables)      |
"""

from __future__ import annotations

from typing import Any

from resources.alerts import AlertsResource
from resources.bank import BankDataResource
from resources.lake import LakeResource
from resources.redis_store import RedisResource


def platform_resources() -> dict[str, Any]:
    """The resources every code location shares, configured from the environment."""
    out: dict[str, Any] = {
        "lake": LakeResource.from_env(),
        "redis": RedisResource.from_env(),
        "alerts": AlertsResource.from_env(),
        "bank": BankDataResource.from_env(),
    }
    try:
        from resources.spark import SparkResource
    except ImportError:  # spark resource lands with the foundation work
        return out
    out["spark"] = SparkResource.from_env()
    return out
