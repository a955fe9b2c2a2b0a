"""Declarative automation of the batch graph, running by default and tagged as batch work."""

import dagster as dg

batch_automation = dg.AutomationConditionSensorDefinition(
    "batch_automation",
    target=dg.AssetSelection.all() - dg.AssetSelection.assets("campaign_insights"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    run_tags={"platform/lane": "batch"},
    description=(
        "Evaluates the automation conditions of the location-intelligence assets (clean_pings "
        "follows raw_pings, the mobility chain and audience estimates follow their inputs); its "
        "runs carry platform/lane=batch so the run queue keeps slots for onboarding."
    ),
)

defs = dg.Definitions(sensors=[batch_automation])
