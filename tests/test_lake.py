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


def test_parquet_reads_take_columns_filters_and_footers(lake: LakeResource) -> None:
    day = "curated/t/date=2024-01-01"
    lake.write_parquet(pd.DataFrame({"k": [1, 2, 3], "v": ["a", "b", "c"]}), f"{day}/f1.parquet")
    lake.write_parquet(pd.DataFrame({"k": [4], "v": ["d"], "extra": [1.5]}), f"{day}/f2.parquet")
    assert lake.parquet_rows(day) == 4
    assert lake.parquet_rows(f"{day}/f1.parquet") == 3
    assert lake.parquet_rows("curated/t/date=2024-01-02") == 0
    both = lake.read_parquet(day)  # schemas unified, as before
    assert both["k"].tolist() == [1, 2, 3, 4] and both["extra"].isna().tolist() == [True] * 3 + [
        False
    ]
    assert lake.read_parquet(day, columns=["v"], filters=[("k", ">=", 3)])["v"].tolist() == [
        "c",
        "d",
    ]
    assert [b.num_rows for b in lake.iter_batches(day, columns=["k"], batch_size=2)] == [2, 1, 1]
    assert lake.read_arrow("curated/t/date=2024-01-02") is None
    assert list(lake.read_parquet("curated/t/date=2024-01-02", columns=["k"]).columns) == ["k"]


def test_streamed_parquet_takes_frames_batches_and_a_schema(lake: LakeResource) -> None:
    import pyarrow as pa

    schema = pa.schema([("k", pa.int64()), ("v", pa.string())])
    frames = [pd.DataFrame({"k": [i, i + 1], "v": [None, "x"]}) for i in range(0, 10, 2)]
    batch = pa.RecordBatch.from_pydict({"k": [10], "v": ["y"]}, schema=schema)
    written = lake.write_parquet_batches("t/date=2024-01-01", [*frames, batch], schema=schema)
    assert (written.key, written.rows) == ("t/date=2024-01-01/part-0.parquet", 11)
    assert lake.read_parquet("t/date=2024-01-01")["k"].tolist() == list(range(11))
    empty = lake.write_parquet_batches("t/date=2024-01-02/empty.parquet", [], schema=schema)
    assert empty.rows == 0 and lake.read_parquet(empty.key).columns.tolist() == ["k", "v"]
    with pytest.raises(ValueError, match="no batches and no schema"):
        lake.write_parquet_batches("t/date=2024-01-03", [])
    assert not lake.exists("t/date=2024-01-03")


def test_open_output_is_all_or_nothing(lake: LakeResource) -> None:
    with lake.open_output("blobs/a.bin") as fh:
        fh.write(b"hello ")
        fh.write(b"world")
    assert lake.read_bytes("blobs/a.bin") == b"hello world"
    with pytest.raises(RuntimeError), lake.open_output("blobs/a.bin") as fh:
        fh.write(b"half")
        raise RuntimeError("writer died")
    assert lake.read_bytes("blobs/a.bin") == b"hello world"
    assert lake.list("blobs") == ["blobs/a.bin"]
    with pytest.raises(FileNotFoundError):
        lake.read_bytes("blobs/missing.bin")


def test_a_folder_holding_only_temporary_files_does_not_exist(tmp_lake: LakeResource) -> None:
    folder = tmp_lake.store.root / "staging" / "t"  # type: ignore[attr-defined]
    folder.mkdir(parents=True)
    (folder / ".tmp-abc.parquet").write_bytes(b"partial")  # e.g. a writer killed by SIGKILL
    assert not tmp_lake.exists("staging/t") and tmp_lake.list("staging") == []
