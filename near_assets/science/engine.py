"""The per-device marker: one science function, run in-process or by Spark's ``applyInPandas``.

A per-device function takes the rows of one or more whole devices and returns a DataFrame;
``per_device(schema)`` records its output schema (Spark DDL) so the Spark job
(``near_assets/spark_jobs/apply_by_device.py``) can run the very same function. Which engine runs
it is decided in ``near_assets.engine``.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

PerDeviceFn = Callable[..., pd.DataFrame]


def per_device(schema: str) -> Callable[[PerDeviceFn], PerDeviceFn]:
    """Mark ``fn`` as a per-device function whose output matches the Spark DDL ``schema``."""

    def mark(fn: PerDeviceFn) -> PerDeviceFn:
        fn.spark_schema = schema  # type: ignore[attr-defined]
        return fn

    return mark
