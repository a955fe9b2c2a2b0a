"""The lake resource behaves the same on a local folder and on S3 (moto's server over HTTP)."""

from __future__ import annotations

import pandas as pd
import pytest

from resources.lake import LakeResource


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest) -> LakeResource:
    return request.getfixturevalue("tmp_lake" if request.param == "local" else "s3_lake")


def test_parquet_round_trip_and_listing(lake: LakeResource) -> None:
    df = pd.DataFrame({"device_id": ["a", "b"], "lat": [1.0, 2.0]})
    lake.write_parquet(df, "raw/pings/date=2024-01-01/f1.parquet")
    lake.write_parquet(df.iloc[:1], "raw/pings/date=2024-01-01/f2.parquet")
    lake.write_parquet(df, "raw/pings/date=2024-01-02")
    assert lake.list_dirs("raw/pings") == ["date=2024-01-01", "date=2024-01-02"]
    assert len(lake.read_parquet("raw/pings/date=2024-01-01")) == 3
    assert lake.exists("raw/pings/date=2024-01-02/part-0.parquet")
    assert not lake.exists("raw/pings/date=2024-01-03")
    assert lake.read_parquet("raw/pings/date=2024-01-03").empty


def test_json_copy_delete(lake: LakeResource) -> None:
    lake.write_json("reference/campaigns/c1.json", {"campaign_id": "c1"})
    assert lake.read_json("reference/campaigns/c1.json") == {"campaign_id": "c1"}
    assert lake.copy("reference/campaigns", "tmp/campaigns") == 1
    assert lake.list("tmp") == ["tmp/campaigns/c1.json"]
    assert lake.delete("tmp") == 1
    assert lake.list("tmp") == []


def test_publish_keeps_previous_version_as_backup_and_restore_rolls_back(
    lake: LakeResource,
) -> None:
    old = pd.DataFrame({"x": [1, 2]})
    new = pd.DataFrame({"x": [3, 4, 5]})
    for df in (old, new):
        lake.write_parquet(df, "staging/t/date=2024-01-01")
        lake.publish(
            "staging/t/date=2024-01-01", "curated/t/date=2024-01-01", "backup/t/date=2024-01-01"
        )
    assert lake.read_parquet("curated/t/date=2024-01-01")["x"].tolist() == [3, 4, 5]
    assert lake.read_parquet("backup/t/date=2024-01-01")["x"].tolist() == [1, 2]
    assert not lake.exists("staging/t/date=2024-01-01")
    lake.restore("curated/t/date=2024-01-01", "backup/t/date=2024-01-01")
    assert lake.read_parquet("curated/t/date=2024-01-01")["x"].tolist() == [1, 2]


def test_publish_without_staged_data_fails_and_leaves_production(lake: LakeResource) -> None:
    lake.write_parquet(pd.DataFrame({"x": [1]}), "curated/t/date=2024-01-01")
    with pytest.raises(FileNotFoundError):
        lake.publish(
            "staging/t/date=2024-01-01", "curated/t/date=2024-01-01", "backup/t/date=2024-01-01"
        )
    assert lake.read_parquet("curated/t/date=2024-01-01")["x"].tolist() == [1]


@pytest.mark.parametrize("key", ["../etc", "a/../../b", "/abs", "a/\nb"])
def test_keys_that_escape_the_root_are_rejected(lake: LakeResource, key: str) -> None:
    with pytest.raises(ValueError, match="invalid lake key"):
        lake.write_json(key, {})
