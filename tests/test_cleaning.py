"""Specification of the pings cleaning science (``near_assets.science.cleaning``)."""

from __future__ import annotations

import io
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from near_assets.science.cleaning import (
    BAD_REASONS,
    REASONS,
    bad_share,
    clean_pings,
    normalize_pings,
    reason_counts,
    schema_problems,
)

DAY = date(2024, 3, 5)
DAY_MS = 1_709_596_800_000  # 2024-03-05T00:00:00Z
HOUR_MS = 3_600_000


def good_pings(n_devices: int = 4, per_device: int = 6) -> pd.DataFrame:
    """Clean pings of one day, deliberately not in (device, ts) order."""
    rng = np.random.default_rng(1)
    n = n_devices * per_device
    return pd.DataFrame(
        {
            "device_id": [f"d{i % n_devices}" for i in range(n)],
            "ts": DAY_MS + HOUR_MS * (np.arange(n) // n_devices) + 17,
            "lat": 40.4 + rng.normal(0, 0.01, n),
            "lon": -3.7 + rng.normal(0, 0.01, n),
            "accuracy_m": rng.uniform(5, 60, n),
        }
    )


def with_row(df: pd.DataFrame, **changes: object) -> pd.DataFrame:
    """``df`` plus a copy of its first row with ``changes`` applied."""
    row = df.iloc[[0]].copy()
    for column, value in changes.items():
        row[column] = pd.Series([value], index=row.index, dtype=object)
    return pd.concat([df.astype(object), row], ignore_index=True)


def test_clean_day_passes_untouched() -> None:
    raw = good_pings()
    clean, quarantine = clean_pings(raw, DAY)
    assert len(quarantine) == 0
    assert reason_counts(quarantine) == dict.fromkeys(REASONS, 0)
    expected = normalize_pings(raw).sort_values(["device_id", "ts"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(clean, expected)


def test_normalized_types() -> None:
    out = normalize_pings(good_pings().assign(extra=1))
    assert list(out.columns) == ["device_id", "ts", "lat", "lon", "accuracy_m"]
    assert str(out["ts"].dtype) == "datetime64[ns, UTC]"
    assert out["lat"].dtype == out["lon"].dtype == out["accuracy_m"].dtype == np.float64
    assert all(isinstance(v, str) for v in out["device_id"])


def test_device_ids_of_any_encoding_become_strings() -> None:
    raw = good_pings()
    as_text = normalize_pings(raw)["device_id"]
    for ids in (raw["device_id"].astype("category"), raw["device_id"].astype("string")):
        out = normalize_pings(raw.assign(device_id=ids))["device_id"]
        assert out.dtype == object
        assert out.tolist() == as_text.tolist()
    numeric = normalize_pings(raw.assign(device_id=pd.array([7, None] * 12, dtype="Int64")))
    assert numeric["device_id"].tolist()[:2] == ["7", None]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"device_id": None}, "null_field"),
        ({"device_id": ""}, "null_field"),
        ({"ts": None}, "null_field"),
        ({"lat": None}, "null_field"),
        ({"lon": np.nan}, "null_field"),
        ({"lat": 90.5}, "out_of_range"),
        ({"lat": -91.0}, "out_of_range"),
        ({"lon": 180.0001}, "out_of_range"),
        ({"lon": np.inf}, "out_of_range"),
        ({"accuracy_m": -3.0}, "out_of_range"),
        ({"lat": 0.0, "lon": 0.0}, "zero_zero"),
        ({"ts": DAY_MS - 1}, "outside_day"),
        ({"ts": DAY_MS + 24 * HOUR_MS}, "outside_day"),
        ({"ts": 0}, "outside_day"),
        ({"ts": 4_102_444_800_000}, "outside_day"),
        ({"ts": 10**17}, "null_field"),  # not representable as a timestamp at all
        ({"accuracy_m": 1000.5}, "low_accuracy"),
        ({"accuracy_m": np.inf}, "low_accuracy"),
        ({}, "duplicate"),
    ],
)
def test_each_dirt_kind_is_quarantined_with_its_reason(changes: dict, reason: str) -> None:
    raw = good_pings()
    clean, quarantine = clean_pings(with_row(raw, **changes), DAY)
    assert quarantine["reason"].tolist() == [reason]
    assert len(clean) == len(raw)
    assert reason_counts(quarantine)[reason] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"ts": DAY_MS},  # the first instant of the day belongs to it
        {"ts": DAY_MS + 24 * HOUR_MS - 1},
        {"accuracy_m": 1000.0, "ts": DAY_MS + 5},
        {"accuracy_m": None, "ts": DAY_MS + 5},  # accuracy is nullable
        {"lat": 90.0, "lon": -180.0},
        {"lat": 0.0, "lon": 12.0},
        {"lat": 41.0},  # same device and ts, another place: not a duplicate
    ],
)
def test_edge_values_that_are_not_dirt_are_kept(changes: dict) -> None:
    raw = with_row(good_pings(), **changes)
    clean, quarantine = clean_pings(raw, DAY)
    assert len(quarantine) == 0
    assert len(clean) == len(raw)


def test_duplicates_keep_exactly_one_copy() -> None:
    raw = good_pings()
    tripled = pd.concat([raw, raw.iloc[[3]], raw.iloc[[3]]], ignore_index=True)
    clean, quarantine = clean_pings(tripled, DAY)
    assert quarantine["reason"].tolist() == ["duplicate", "duplicate"]
    assert len(clean) == len(raw)
    assert not clean.duplicated(["device_id", "ts", "lat", "lon"]).any()


def tower_pings(n_devices: int, *, lat: float = 40.5, lon: float = -3.6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": [f"t{i:03d}" for i in range(n_devices)],
            "ts": DAY_MS + 1000 * np.arange(n_devices),
            "lat": lat,
            "lon": lon,
            "accuracy_m": 500.0,
        }
    )


def test_coordinate_shared_by_many_devices_is_high_density() -> None:
    raw = pd.concat([good_pings(), tower_pings(50)], ignore_index=True)
    clean, quarantine = clean_pings(raw, DAY, hdp_min_devices=50)
    assert reason_counts(quarantine) == {**dict.fromkeys(REASONS, 0), "high_density": 50}
    assert len(clean) == len(good_pings())


def test_high_density_counts_distinct_devices_not_rows() -> None:
    few_devices = pd.concat([tower_pings(49)] * 2, ignore_index=True)
    few_devices["ts"] = DAY_MS + np.arange(len(few_devices))
    _, quarantine = clean_pings(few_devices, DAY, hdp_min_devices=50)
    assert len(quarantine) == 0


def test_high_density_can_match_rounded_coordinates() -> None:
    raw = tower_pings(60)
    raw["lat"] += np.linspace(0, 4e-6, 60)
    assert len(clean_pings(raw, DAY, hdp_min_devices=50)[1]) == 0
    _, quarantine = clean_pings(raw, DAY, hdp_min_devices=50, hdp_decimals=4)
    assert quarantine["reason"].eq("high_density").sum() == 60


def test_first_applicable_reason_wins_and_each_row_counts_once() -> None:
    raw = good_pings()
    dirty = with_row(raw, lat=None, ts=DAY_MS - 1)  # null beats outside_day
    dirty = with_row(dirty, lat=0.0, lon=0.0, ts=DAY_MS - 1)  # zero_zero beats outside_day
    dirty = with_row(dirty, lat=95.0, accuracy_m=5000.0)  # out_of_range beats low_accuracy
    bad_twice = with_row(raw, accuracy_m=5000.0).iloc[[-1]]
    dirty = pd.concat([dirty, bad_twice, bad_twice], ignore_index=True)  # low_accuracy, not dup
    clean, quarantine = clean_pings(dirty, DAY)
    counts = reason_counts(quarantine)
    assert counts == {
        **dict.fromkeys(REASONS, 0),
        "null_field": 1,
        "zero_zero": 1,
        "out_of_range": 1,
        "low_accuracy": 2,
    }
    assert sum(counts.values()) == len(quarantine)
    assert len(clean) + len(quarantine) == len(dirty)


def test_every_timestamp_encoding_gives_the_same_result() -> None:
    raw = with_row(with_row(good_pings(), ts=DAY_MS - 5), lat=0.0, lon=0.0)
    ms = raw["ts"].astype("int64")
    utc = pd.to_datetime(ms, unit="ms", utc=True)
    variants = {
        "int64 ms": raw.assign(ts=ms),
        "nullable Int64 ms": raw.assign(ts=ms.astype("Int64")),
        "float ms": raw.assign(ts=ms.astype("float64")),
        "timestamp[ms, UTC]": raw.assign(ts=utc.astype("datetime64[ms, UTC]")),
        "timestamp[us] naive": raw.assign(ts=utc.dt.tz_localize(None).astype("datetime64[us]")),
        "timestamp[ns, Europe/Madrid]": raw.assign(ts=utc.dt.tz_convert("Europe/Madrid")),
    }
    results = {name: clean_pings(df, DAY) for name, df in variants.items()}
    base_clean, base_quarantine = results["int64 ms"]
    for name, (clean, quarantine) in results.items():
        pd.testing.assert_frame_equal(clean, base_clean, obj=name)
        pd.testing.assert_frame_equal(quarantine, base_quarantine, obj=name)
        assert str(clean["ts"].dtype) == "datetime64[ns, UTC]"


def test_outputs_are_sorted_by_device_then_time() -> None:
    raw = pd.concat([good_pings(6, 9), tower_pings(3)], ignore_index=True).sample(
        frac=1.0, random_state=3
    )
    dirty = with_row(with_row(raw, ts=DAY_MS - 1), lat=0.0, lon=0.0)
    for frame in clean_pings(dirty, DAY):
        ordered = frame.sort_values(["device_id", "ts"], kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(frame, ordered)


def test_missing_required_column_is_named() -> None:
    with pytest.raises(ValueError, match="lat"):
        normalize_pings(good_pings().drop(columns=["lat"]))


def test_missing_accuracy_column_is_all_null() -> None:
    clean, quarantine = clean_pings(good_pings().drop(columns=["accuracy_m"]), DAY)
    assert clean["accuracy_m"].isna().all()
    assert len(quarantine) == 0


def test_empty_input_gives_empty_frames_with_the_schema() -> None:
    clean, quarantine = clean_pings(good_pings().iloc[:0], DAY)
    assert len(clean) == len(quarantine) == 0
    assert list(quarantine.columns) == [*clean.columns, "reason"]
    assert reason_counts(quarantine) == dict.fromkeys(REASONS, 0)


def test_bad_share_ignores_duplicates() -> None:
    counts = {**dict.fromkeys(REASONS, 0), "duplicate": 30, "null_field": 5, "high_density": 5}
    assert bad_share(counts, 100) == pytest.approx(0.10)
    assert bad_share(counts, 0) == 0.0
    assert "duplicate" not in BAD_REASONS


def test_schema_problems_name_the_column() -> None:
    table = pa.Table.from_pandas(good_pings(), preserve_index=False)
    assert schema_problems(table.schema) == []
    assert schema_problems(table.drop(["lat"]).schema) == ["missing required column 'lat'"]
    as_text = table.set_column(1, "ts", pa.array(["2024-03-05"] * table.num_rows))
    assert "column 'ts' has type string" in schema_problems(as_text.schema)[0]


def test_generated_dirt_is_recovered_exactly(tmp_lake) -> None:
    from near_assets.synth import dirty_day

    planted = dirty_day(tmp_lake, DAY.isoformat(), share=0.3, devices=200)
    files = tmp_lake.parquet_files(f"raw/pings/date={DAY.isoformat()}")
    raw = pd.concat(
        [pq.read_table(io.BytesIO(tmp_lake.read_bytes(f))).to_pandas() for f in files],
        ignore_index=True,
    )
    clean, quarantine = clean_pings(raw, DAY)
    assert reason_counts(quarantine) == {r: planted[r] for r in REASONS}
    assert len(clean) + len(quarantine) == planted["rows"]
