"""Daily assets follow their upstream on every day (a backfill flows down the chain by itself)."""

import dagster as dg

from near_assets.definitions import defs as near_defs
from near_assets.partitions import eager_any_day

DAYS = ["2024-03-05", "2024-03-06", "2024-03-07"]
partitions = dg.DailyPartitionsDefinition(start_date="2024-03-01", end_offset=1)


@dg.asset(partitions_def=partitions)
def upstream() -> None:
    return None


@dg.asset(partitions_def=partitions, deps=[upstream], automation_condition=eager_any_day)
def downstream() -> None:
    return None


def test_past_days_of_the_upstream_are_followed_downstream() -> None:
    defs = dg.Definitions(assets=[upstream, downstream])
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0
        for day in DAYS:
            assert dg.materialize([upstream], partition_key=day, instance=instance).success
        second = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
    assert second.get_requested_partitions(downstream.key) == set(DAYS)


def test_the_daily_chain_uses_it() -> None:
    graph = near_defs.resolve_asset_graph()
    for name in ["clean_pings", "stay_points", "visits", "home_location", "brand_affinity"]:
        node = graph.get(dg.AssetKey(name))
        label = node.automation_condition.get_label() if node.automation_condition else None
        assert label == "eager (any day)", name
