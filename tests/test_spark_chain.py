"""The chain's per-device steps on both engines: the same rows and figures, the engine that ran."""

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from near_assets import mobility
from near_assets.science.stays import to_utc
from near_assets.synth import generate
from resources.alerts import AlertsResource
from resources.lake import LakeResource
from resources.spark import SparkResource

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("java") is None, reason="local Spark needs a JVM"),
]

START, DAYS = "2024-03-04", 2
DATES = [str(d.date()) for d in pd.date_range(START, periods=DAYS)]
RANGE = {
    "dagster/asset_partition_range_start": DATES[0],
    "dagster/asset_partition_range_end": DATES[-1],
}
# figures that describe the run, not the rows
RUN_FIGURES = {"seconds", "engine", "pings_per_s", "version", "production_holds"}


def row_figures(value: object) -> object:
    """``value`` without the run figures, at any depth."""
    if isinstance(value, dict):
        return {
            k: row_figures(v)
            for k, v in value.items()
            if k not in RUN_FIGURES and not k.startswith("spark_")
        }
    return value


def resources(lake: LakeResource) -> dict:
    return {"lake": lake, "alerts": AlertsResource(), "spark": SparkResource(master="local[2]")}


@pytest.fixture(scope="module")
def stays_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated lake with clean pings and published stay points (pandas)."""
    lake = LakeResource(root=str(tmp_path_factory.mktemp("chain") / "lake"))
    generate(lake, seed=5, devices=120, start=START, days=DAYS, dirt=False, progress=False)
    for day in DATES:
        raw = lake.read_parquet(f"raw/pings/date={day}")
        raw["ts"] = to_utc(raw["ts"])
        lake.write_parquet(raw.sort_values(["device_id", "ts"]), f"work/clean_pings/date={day}")
    assert dg.materialize([mobility.stay_points], resources=resources(lake), tags=RANGE).success
    return Path(lake.root)


def figures(result: dg.ExecuteInProcessResult, key: str, root: str) -> tuple[str, dict]:
    """(engine that ran, row figures of each day) of an asset's materializations (the lake's
    root in paths replaced by ``<lake>``)."""
    events = result.asset_materializations_for_node(key)
    engines = {m.metadata["engine"].value for m in events}
    assert len(engines) == 1
    by_day = row_figures({m.partition: {k: v.value for k, v in m.metadata.items()} for m in events})
    text = json.dumps(by_day, sort_keys=True, default=str).replace(root, "<lake>")
    return engines.pop(), json.loads(text)


def canonical(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = df.sort_values(keys).reset_index(drop=True)
    for col in out.columns:
        if isinstance(out[col].dtype, pd.DatetimeTZDtype):
            out[col] = out[col].dt.as_unit("us")
    return out


def test_visits_give_the_same_rows_and_figures_on_both_engines(stays_lake: Path, tmp_path: Path):
    published, meta = {}, {}
    for engine in ("pandas", "spark"):
        lake = LakeResource(root=str(tmp_path / engine))
        shutil.copytree(stays_lake, lake.root)
        result = dg.materialize(
            [mobility.visits],
            resources=resources(lake),
            tags=RANGE,
            run_config={"ops": {"visits": {"config": {"engine": engine}}}},
        )
        assert result.success
        ran, meta[engine] = figures(result, "visits", lake.root)
        seconds = result.asset_materializations_for_node("visits")[0].metadata["seconds"].value
        print(f"visits on {engine}: {seconds} s")  # shown with -s
        assert ran == engine
        published[engine] = {d: lake.read_parquet(f"curated/visits/date={d}") for d in DATES}
    assert meta["pandas"] == meta["spark"]
    keys = ["device_id", "start_ts", "poi_id"]
    for day in DATES:
        a = canonical(published["pandas"][day], keys)
        b = canonical(published["spark"][day], keys)
        assert len(a) > 0
        exact = [c for c in a.columns if c not in ("dwell_s", "distance_m")]
        pd.testing.assert_frame_equal(a[exact], b[exact], check_dtype=False)
        for col in ("dwell_s", "distance_m"):
            np.testing.assert_allclose(a[col], b[col], rtol=0, atol=1e-9)
