"""Scoring of ``place_boundaries`` (PlaceMatrix) against the generator's true footprints."""

from __future__ import annotations

import dagster as dg

checks: list[dg.AssetChecksDefinition] = []
