"""Packs: periodic models a data scientist adds as one folder under ``risk_assets/packs/defs/``.

``component.py`` is the ``Pack`` component type; ``defs/<pack>/defs.yaml`` instantiates it (see
docs/PACKS.md). This module loads every pack folder with Dagster's component tree, and adds the
automation sensor that evaluates the packs' schedules and triggers.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import dagster as dg
from dagster.components.core.component_tree import ComponentTree

PACKS_MODULE = "risk_assets.packs.defs"
PACKS_DIR = Path(__file__).parent / "defs"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def load_packs(packs_module: str = PACKS_MODULE) -> dg.Definitions:
    """Every pack's asset, built from the folders as they are now on disk (a reload picks up a new
    or edited pack: modules of pack folders are imported afresh)."""
    for name in [m for m in sys.modules if m == packs_module or m.startswith(packs_module + ".")]:
        if name != PACKS_MODULE:
            del sys.modules[name]
    importlib.invalidate_caches()
    module = importlib.import_module(packs_module)
    return ComponentTree.from_module(defs_module=module, project_root=PROJECT_ROOT).build_defs()


def timeout_of(asset: dg.AssetsDefinition) -> str:
    return str(next(iter(asset.specs)).metadata["timeout"])


def build_defs(packs_module: str = PACKS_MODULE) -> dg.Definitions:
    """The packs and their automation sensors: one per distinct pack timeout, so that every run
    it requests carries the run-time limit ``dagster/max_runtime`` of its packs (run monitoring
    fails a run that passes it)."""
    from risk_assets.packs.component import seconds

    packs = load_packs(packs_module)
    by_timeout: dict[str, list[dg.AssetsDefinition]] = {}
    for asset in packs.assets or []:
        by_timeout.setdefault(timeout_of(asset), []).append(asset)
    sensors = [
        dg.AutomationConditionSensorDefinition(
            f"packs_automation_{timeout}",
            target=dg.AssetSelection.assets(*[k for a in assets for k in a.keys]),
            default_status=dg.DefaultSensorStatus.RUNNING,
            run_tags={"platform/lane": "onboarding", "dagster/max_runtime": str(seconds(timeout))},
            minimum_interval_seconds=30,
        )
        for timeout, assets in sorted(by_timeout.items())
    ]
    return dg.Definitions.merge(packs, dg.Definitions(sensors=sensors))
