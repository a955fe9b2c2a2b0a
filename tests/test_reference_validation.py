"""Reference data is validated where it enters: bad rows quarantined with file, row id and
reason; duplicates never merged; deterministic errors named and not retried."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from near_assets.reference import load_reference_areas, load_reference_pois
from near_assets.science.reference import (
    geometry_problems,
    validate_areas,
    validate_campaign_rows,
    validate_pois,
)
from resources.lake import LakeResource

QUARANTINE_POIS = "quarantine/reference/kind=pois"


def square(x: float, size: float = 0.001) -> str:
    return f"POLYGON (({x} 0, {x + size} 0, {x + size} {size}, {x} {size}, {x} 0))"


BOWTIE = "POLYGON ((0 0, 1 1, 1 0, 0 1, 0 0))"


def pois(ids: list[str], wkts: list[str] | None = None, brand: str = "Acme") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "poi_id": ids,
            "name": ids,
            "brand": brand,
            "category": "shop",
            "geometry_wkt": wkts or [square(i * 0.01) for i in range(len(ids))],
        }
    )


def test_a_duplicate_poi_id_is_quarantined_never_merged() -> None:
    df = pois(["p1", "p2", "p2", "p3"], [square(0), square(1), square(2), square(3)])
    good, bad = validate_pois(df)
    assert list(good["poi_id"]) == ["p1", "p3"]
    assert list(bad["row_id"]) == ["p2", "p2"] and list(bad["source_row"]) == [1, 2]
    assert set(bad["reason"]) == {"duplicate poi_id: 2 rows disagree, none kept"}


def test_an_exact_copy_keeps_the_first_row() -> None:
    df = pd.concat([pois(["p1", "p2"]), pois(["p2"], [square(0.01)])], ignore_index=True)
    df["source_file"], df["source_row"] = ["a.parquet", "a.parquet", "b.parquet"], [0, 1, 0]
    good, bad = validate_pois(df)
    assert list(good["poi_id"]) == ["p1", "p2"]
    (reason,) = bad["reason"]
    assert reason == "exact duplicate of poi_id p2 (a.parquet row 1); first kept"
    assert bad.iloc[0]["source_file"] == "b.parquet"


def test_invalid_wkt_is_quarantined_with_its_poi_id_and_reason_not_raised() -> None:
    df = pois(["p1", "p2", "p3", "p4", "p5"], [square(0), "oops", BOWTIE, "POINT (1 2)", None])
    good, bad = validate_pois(df)
    assert list(good["poi_id"]) == ["p1"]
    reasons = dict(zip(bad["row_id"], bad["reason"], strict=True))
    assert reasons["p2"].startswith("invalid WKT") and "oops" in reasons["p2"].lower()
    assert reasons["p3"].startswith("invalid polygon: Self-intersection")
    assert reasons["p4"] == "geometry is a Point, not a Polygon"
    assert reasons["p5"] == "geometry_wkt is null"


def test_geometry_problems_accepts_multipolygons() -> None:
    multi = "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((2 2, 3 2, 3 3, 2 2)))"
    assert geometry_problems(pd.Series([multi, square(0)])).isna().all()


def test_areas_need_a_population_of_zero_or_more() -> None:
    df = pd.DataFrame(
        {
            "area_id": ["a1", "a2", "a3", "a4"],
            "geometry_wkt": [square(0), square(1), square(2), square(3)],
            "population": [100, -5, None, 0],
        }
    )
    good, bad = validate_areas(df)
    assert list(good["area_id"]) == ["a1", "a4"] and good["population"].dtype == "int64"
    assert list(bad["row_id"]) == ["a2", "a3"]
    assert all(r.startswith("population missing or negative") for r in bad["reason"])


def test_campaign_rows_are_validated() -> None:
    df = pd.DataFrame(
        {
            "campaign_id": ["c1", "c2", "c3", "c3", "c4"],
            "brand": ["Acme", None, "Acme", "Beta", "Acme"],
            "start_date": ["2024-03-01", "2024-03-01", "2024-03-01", "2024-03-01", "2024-03-09"],
            "end_date": ["2024-03-10", "2024-03-10", "2024-03-10", "2024-03-10", "2024-03-01"],
        }
    )
    good, bad = validate_campaign_rows(df)
    assert list(good["campaign_id"]) == ["c1"]
    assert dict(zip(bad["campaign_id"], bad["reason"], strict=False)) == {
        "c2": "no brand",
        "c3": "duplicate campaign_id with different contents, none kept",
        "c4": "start_date after end_date",
    }


def test_the_loader_quarantines_bad_rows_with_file_row_and_reason(tmp_lake: LakeResource) -> None:
    tmp_lake.write_parquet(pois(["p1", "p2"]), "reference/pois/a.parquet")
    tmp_lake.write_parquet(
        pois(["p2", "p3", "p4"], [square(0.5), "POLYGON ((oops))", square(0.7)]),
        "reference/pois/b.parquet",
    )
    good = load_reference_pois(tmp_lake)
    assert sorted(good["poi_id"]) == ["p1", "p4"]
    q = tmp_lake.read_parquet(QUARANTINE_POIS).sort_values(["source_file", "source_row"])
    assert list(q.columns[:5]) == ["kind", "source_file", "source_row", "row_id", "reason"]
    assert list(zip(q["source_file"], q["source_row"], q["row_id"], strict=True)) == [
        ("reference/pois/a.parquet", 1, "p2"),
        ("reference/pois/b.parquet", 0, "p2"),
        ("reference/pois/b.parquet", 1, "p3"),
    ]
    assert q.iloc[2]["reason"].startswith("invalid WKT")
    assert "geometry_wkt" in q.columns  # the row itself, to fix upstream

    tmp_lake.write_parquet(pois(["p1", "p2", "p3"]), "reference/pois/b.parquet")
    tmp_lake.delete("reference/pois/a.parquet")
    assert sorted(load_reference_pois(tmp_lake, columns=["poi_id"])["poi_id"]) == [
        "p1",
        "p2",
        "p3",
    ]
    assert not tmp_lake.parquet_files(QUARANTINE_POIS)  # a clean delivery clears it


def test_areas_without_population_fail_by_name_and_are_not_retried(tmp_lake: LakeResource) -> None:
    tmp_lake.write_parquet(
        pd.DataFrame({"area_id": ["a1"], "geometry_wkt": [square(0)]}), "reference/areas"
    )
    with pytest.raises(dg.Failure) as failure:
        load_reference_areas(tmp_lake)
    assert "file lacks required column(s) ['population']" in failure.value.description
    assert "reference/areas/part-0.parquet" in failure.value.description
    assert failure.value.allow_retries is False


def test_missing_reference_fails_by_name(tmp_lake: LakeResource) -> None:
    with pytest.raises(dg.Failure, match="reference_pois: no rows under reference/pois"):
        load_reference_pois(tmp_lake)
