"""Counting people instead of devices: which ``identity_graph`` partition a day reads.

``audience_estimates`` and ``brand_affinity`` may count people (``count: people`` in their
config): each device becomes its ``person_id`` in the latest published ``identity_graph`` of
D-6 .. D (a device absent from it, or every device when no graph exists, is its own person).
The dependency is declared for lineage with this window and ignored by automation (``IGNORE``):
counting devices must not wait for the graph, and a new graph does not re-run published days.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from near_assets.tables import IDENTITY_GRAPH
from publishing.tables import day_window
from resources.lake import LakeResource

LOOKBACK_DAYS = 7
"""Day D maps devices with the latest ``identity_graph`` of D-6 .. D."""
IDENTITY_DEP = dg.AssetDep(
    "identity_graph",
    partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=-(LOOKBACK_DAYS - 1), allow_nonexistent_upstream_partitions=True
    ),
)
IGNORE = dg.AssetSelection.assets(IDENTITY_DEP.asset_key)
"""Automation conditions of the readers ``.ignore(IGNORE)`` (read only when configured)."""


def graph_day(lake: LakeResource, day: str) -> str | None:
    """The ``identity_graph`` partition counting people on ``day`` uses (latest of D-6 .. D)."""
    return IDENTITY_GRAPH.latest(lake, day_window(day, LOOKBACK_DAYS))


class Graphs:
    """Each day's graph (``device_id``, ``person_id``), every partition read once."""

    def __init__(self, lake: LakeResource):
        self.lake = lake
        self.read: dict[str, pd.DataFrame | None] = {}

    def of(self, day: str) -> tuple[pd.DataFrame | None, str | None]:
        """The graph ``day`` uses and its partition (None, None without one)."""
        found = graph_day(self.lake, day)
        if found is None:
            return None, None
        if found not in self.read:
            self.read[found] = IDENTITY_GRAPH.read(
                self.lake, found, columns=["device_id", "person_id"]
            )
        return self.read[found], found
