"""Scoring of Near's models (high-density points, cross identity) against the generator's truth."""

from __future__ import annotations

import dagster as dg

checks: list[dg.AssetChecksDefinition] = []
