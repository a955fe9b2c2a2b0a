"""Engines that run per-device science functions: in-process (pandas) or Spark.

A per-device function takes the rows of one or more whole devices and returns a DataFrame;
``per_device(schema)`` records its output schema (Spark DDL) so Spark's ``applyInPandas`` can
run the very same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pandas as pd

Engine = Literal["pandas", "spark"]
PerDeviceFn = Callable[..., pd.DataFrame]


def per_device(schema: str) -> Callable[[PerDeviceFn], PerDeviceFn]:
    """Mark ``fn`` as a per-device function whose output matches the Spark DDL ``schema``."""

    def mark(fn: PerDeviceFn) -> PerDeviceFn:
        fn.spark_schema = schema  # type: ignore[attr-defined]
        return fn

    return mark


def function_path(fn: PerDeviceFn) -> str:
    """``module:qualname`` so a Spark job can import the same function."""
    return f"{fn.__module__}:{fn.__qualname__}"


def run_in_process(fn: PerDeviceFn, df: pd.DataFrame, **params: Any) -> pd.DataFrame:
    return fn(df, **params)
