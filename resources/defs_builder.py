"""Assemble a code location's ``Definitions`` from its concern modules and the shared resources."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence

import dagster as dg

from resources import platform_resources


def build_definitions(package: str, modules: Sequence[str]) -> dg.Definitions:
    """Merge ``<package>.<module>.defs`` for every module and bind the platform resources."""
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    parts = [importlib.import_module(f"{package}.{name}").defs for name in modules]
    merged = dg.Definitions.merge(*parts) if parts else dg.Definitions()
    return dg.Definitions.merge(merged, dg.Definitions(resources=platform_resources()))
