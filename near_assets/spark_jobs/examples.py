"""Small per-device functions for tests, smoke runs and throughput measurements."""

from __future__ import annotations

import pandas as pd

from near_assets.science.engine import per_device


@per_device(
    "device_id string, n_pings long, first_ts timestamp, last_ts timestamp, "
    "mean_lat double, mean_lon double"
)
def count_pings(df: pd.DataFrame, *, max_accuracy_m: float | None = None) -> pd.DataFrame:
    """Pings per device with their first/last time (UTC) and mean position (degrees).

    Rows whose ``accuracy_m`` (metres) is above ``max_accuracy_m`` are ignored; devices left
    without rows are dropped.
    """
    if max_accuracy_m is not None and "accuracy_m" in df:
        df = df[~(df["accuracy_m"] > max_accuracy_m)]
    out = (
        df.groupby("device_id", sort=True)
        .agg(
            n_pings=("ts", "size"),
            first_ts=("ts", "min"),
            last_ts=("ts", "max"),
            mean_lat=("lat", "mean"),
            mean_lon=("lon", "mean"),
        )
        .reset_index()
    )
    return out.astype({"n_pings": "int64"})
