"""On-demand aggregate insights: request validation, the science, and the job on a generated lake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
from pydantic import ValidationError

from near_assets.insights import AggregateInsightsConfig, aggregate_insights, aggregate_insights_job
from near_assets.science.insights import compute_insights, request_hash, segment_devices
from resources.spark import SparkResource
from tests.test_campaigns import lake_with_upstream_tables

TODAY = datetime.now(UTC).date()


def request(**kw) -> dict:
    return {"start_date": "2024-01-01", "end_date": "2024-01-30", **kw}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (request(), "exactly one of brand, category or poi_ids"),
        (request(brand="A", category="grocery"), "exactly one"),
        (request(brand="A", start_date="2024-13-01"), "YYYY-MM-DD"),
        (request(brand="A", start_date="2024-02-01"), "before start_date"),
        (request(brand="A", start_date="2022-01-01"), "longer than 366"),
        (
            request(brand="A", start_date=str(TODAY), end_date=str(TODAY + timedelta(days=2))),
            "in the future",
        ),
        (request(category="grocery", min_affinity=0.5), "min_affinity needs affinity_brand"),
        (request(brand="A", min_affinity=9.0), "less than or equal to 5"),
        (request(brand="A", home_areas=[]), "at least one area"),
    ],
)
def test_invalid_requests_are_rejected_with_a_clear_message(cfg, message):
    with pytest.raises(ValidationError, match=message):
        AggregateInsightsConfig(**cfg)


def test_valid_request_and_its_stable_hash():
    a = AggregateInsightsConfig(**request(poi_ids=["p2", "p1"], min_affinity=None))
    b = AggregateInsightsConfig(**request(poi_ids=["p1", "p2"]))
    assert request_hash(a.request()) == request_hash(b.request())
    c = AggregateInsightsConfig(**request(brand="A", min_affinity=0.5))
    assert c.request()["affinity_brand"] == "A"


def test_invalid_config_fails_before_any_work(tmp_lake):
    defs = dg.Definitions(
        assets=[aggregate_insights],
        jobs=[aggregate_insights_job],
        resources={"lake": tmp_lake, "spark": SparkResource()},
    )
    job = defs.resolve_job_def("aggregate_insights_job")
    bad = {"ops": {"aggregate_insights": {"config": request(brand="A", category="B")}}}
    result = job.execute_in_process(run_config=bad, raise_on_error=False)
    assert not result.success
    assert "exactly one of brand, category or poi_ids" in str(result.all_events)
    assert tmp_lake.list("insights") == []


def test_aggregate_insights_science_counts_people_by_area_coverage():
    visits = pd.DataFrame(
        {
            "device_id": ["a", "a", "b", "c", "z"],
            "poi_id": ["p1", "p1", "p2", "p1", "p1"],
            "dwell_s": [600.0, 1200.0, 3000.0, 400.0, 100.0],
        }
    )
    devices = pd.DataFrame({"device_id": ["a", "b", "c"], "area_id": ["X", "X", "Y"]})
    coverage = pd.DataFrame(
        {"area_id": ["X", "Y"], "population": [1000, 300], "panel_devices": [10, 3]}
    )
    affinity = pd.DataFrame(
        {"device_id": ["a", "b", "q"], "brand": ["B1", "B1", "B1"], "affinity": [1.0, 0.0, -1.0]}
    )
    ins = compute_insights(visits, devices, coverage, affinity)
    assert ins.summary["visitors"] == 4 and ins.summary["visits"] == 5
    # a, b: 100 people each (area X); c: 100 (area Y); z: unknown home -> region 1300/13 = 100
    assert ins.summary["estimated_people"] == 400
    assert ins.dwell["visits"].sum() == 5
    mix = ins.home_mix.set_index("area_id")["visitors"].to_dict()
    assert mix == {"X": 2, "Y": 1, "unknown": 1}
    b1 = ins.affinity.set_index("brand").loc["B1"]
    assert b1["mean_affinity"] == pytest.approx(0.5) and b1["index"] == pytest.approx(0.5)
    seg = segment_devices(devices, affinity, ["X"], "B1", 0.5)
    assert list(seg) == ["a"]
    assert compute_insights(visits, devices, coverage, affinity, seg).summary["visitors"] == 1


def test_aggregate_insights_job_writes_tables_summary_and_chart(tmp_lake, monkeypatch):
    summary = lake_with_upstream_tables(tmp_lake, devices=150, days=16)
    monkeypatch.setenv("LAKE_START_DATE", summary["start"])
    brand = tmp_lake.read_json(f"reference/campaigns/{summary['campaigns'][0]}.json")["brand"]
    defs = dg.Definitions(
        assets=[aggregate_insights],
        jobs=[aggregate_insights_job],
        resources={"lake": tmp_lake, "spark": SparkResource()},
    )
    cfg = {"brand": brand, "start_date": summary["start"], "end_date": str(TODAY)}
    result = defs.resolve_job_def("aggregate_insights_job").execute_in_process(
        run_config={"ops": {"aggregate_insights": {"config": cfg}}}
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("aggregate_insights")
    key = f"insights/{mat.metadata['request_hash'].value}"
    files = {k.rsplit("/", 1)[-1] for k in tmp_lake.list(key)}
    assert {"summary.md", "chart.png", "summary.json", "home_area_mix.parquet"} <= files
    assert tmp_lake.read_bytes(f"{key}/chart.png")[:4] == b"\x89PNG"
    assert mat.metadata["visitors"].value > 0
    assert mat.metadata["estimated_people"].value >= mat.metadata["visitors"].value
    assert "data:image/png;base64," in mat.metadata["summary"].value
    assert mat.metadata["dagster/row_count"].value == mat.metadata["visitors"].value
