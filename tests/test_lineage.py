"""The location graph tells the truth: declared inputs, reference data, and each published table's
column schema, owners, freshness policy, code reference and row count."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.definitions.declarative_automation.operators.dep_operators import (
    DepsAutomationCondition,
)

from near_assets import evaluation, mobility, tables
from near_assets.definitions import defs as near_defs
from near_assets.partitions import daily_partitions
from publishing.tables import LakeTable
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

REFERENCE = ["reference_pois", "reference_areas", "reference_campaigns", "raw_exposures"]
PUBLISHED = [t for t in vars(tables).values() if isinstance(t, LakeTable) and t.published]


@pytest.fixture(scope="module")
def graph():
    return near_defs.resolve_asset_graph()


def parents(graph, name: str) -> set[str]:
    return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}


def test_audience_estimates_declares_every_input_it_reads(graph) -> None:
    expected = {"clean_pings", "stay_points", "visits", "demographics", "reference_pois"}
    assert expected <= parents(graph, "audience_estimates")


def test_reference_data_are_external_assets(graph) -> None:
    for name in REFERENCE:
        node = graph.get(dg.AssetKey(name))
        assert not node.is_materializable, name
        assert node.group_name == "reference", name
        assert node.owners and node.description, name
    assert "dagster/column_schema" in graph.get(dg.AssetKey("reference_pois")).metadata


@pytest.mark.parametrize("table", PUBLISHED, ids=lambda t: t.name)
def test_published_table_shows_schema_owner_freshness_and_code(graph, table: LakeTable) -> None:
    node = graph.get(dg.AssetKey(table.name))
    assert node.metadata["dagster/column_schema"] == table.column_schema()
    assert node.owners
    assert node.freshness_policy is not None
    assert node.metadata["dagster/code_references"].code_references


def test_reference_data_never_hold_back_automation(graph) -> None:
    """Reference data are never observed (Dagster counts them missing): once a new day's
    upstream lands, the daily assets that read reference data still follow it."""
    day = daily_partitions.get_last_partition_key()
    daily = {
        k
        for k in graph.materializable_asset_keys
        if graph.get(k).partitions_def == daily_partitions
    }
    readers = {
        key
        for key in daily
        if graph.get(key).automation_condition is not None
        and any(not graph.get(p).is_materializable for p in graph.get(key).parent_keys)
    }
    assert {"visits", "demographics", "audience_estimates"} <= {k.to_user_string() for k in readers}
    inputs = {
        parent
        for key in readers
        for parent in graph.get_parents_partitions(key, day).parent_partitions
        if parent.asset_key in daily
    }
    past = [p for p in inputs if p.partition_key != day]
    today = [p for p in inputs if p.partition_key == day and p.asset_key not in readers]
    with dg.instance_for_test() as instance:
        for p in past:  # the trailing days the readers' inputs map to have run
            instance.report_runless_asset_event(
                dg.AssetMaterialization(p.asset_key, partition=p.partition_key)
            )
        first = dg.evaluate_automation_conditions(defs=near_defs, instance=instance)
        for p in today:  # then today's upstream lands
            instance.report_runless_asset_event(dg.AssetMaterialization(p.asset_key, partition=day))
        second = dg.evaluate_automation_conditions(
            defs=near_defs, instance=instance, cursor=first.cursor
        )
    for key in readers:
        assert day in second.get_requested_partitions(key), key.to_user_string()


def dependency_conditions(condition: dg.AutomationCondition):
    """The conditions on an asset's dependencies (``any_deps_missing``, ``all_deps_updated...``)
    inside ``condition``."""
    if isinstance(condition, DepsAutomationCondition):
        yield condition
    for child in condition.children:
        yield from dependency_conditions(child)


def test_every_automation_condition_ignores_the_reference_data_it_reads(graph) -> None:
    """The same, for every condition (``campaign_insights``' ``on_cron`` included)."""
    external = {k for k in graph.get_all_asset_keys() if not graph.get(k).is_materializable}
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        read = set(node.parent_keys) & external
        if node.automation_condition is None or not read:
            continue
        for dep in dependency_conditions(node.automation_condition):
            ignored = dep.ignore_selection.resolve(graph) if dep.ignore_selection else set()
            assert read <= ignored, f"{key.to_user_string()}: {dep.get_label() or dep.name}"


def test_evaluation_checks_load_only_where_a_local_lake_has_truth(tmp_lake: LakeResource) -> None:
    assert not evaluation.has_truth(tmp_lake)
    tmp_lake.write_json("truth/panel.json", {})
    assert evaluation.has_truth(tmp_lake)
    assert not evaluation.has_truth(LakeResource(bucket="prod-lake"))  # S3: not listed at load


def test_a_published_materialization_carries_its_row_count(tmp_lake: LakeResource) -> None:
    day = "2024-03-05"
    start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=9)
    minutes = np.arange(60)
    pings = pd.DataFrame(
        {
            "device_id": np.repeat(["a", "b"], 60),
            "ts": np.tile(start + pd.to_timedelta(minutes, unit="min"), 2),
            "lat": np.repeat([40.40, 40.45], 60),
            "lon": np.repeat([-3.70, -3.65], 60),
            "accuracy_m": 10.0,
        }
    ).astype({"ts": "datetime64[ns, UTC]"})
    tables.CLEAN_PINGS.write(tmp_lake, pings, day)
    result = dg.materialize(
        [mobility.stay_points],
        partition_key=day,
        resources={"lake": tmp_lake, "alerts": AlertsResource(), "spark": SparkResource()},
    )
    (event,) = result.asset_materializations_for_node("stay_points")
    assert event.metadata["dagster/row_count"].value == tables.STAY_POINTS.rows(tmp_lake, day) == 2
