"""Lake tables: the one place a lake key is formed.

Each code location declares its tables once (``near_assets/tables.py``, ``risk_assets/tables.py``)
as ``LakeTable`` (Parquet, one folder per partition) or ``JsonObjects`` (one JSON object per id)
values; asset code reads and writes through those declarations and never formats a key.

A *published* table (``published=True``) lives under ``curated/<name>/`` and goes through
write-audit-publish (``publishing.wap``), which stages it under ``staging/<name>/`` and keeps the
previous version under ``backup/<name>/`` (``published_keys``).

Day helpers (``trailing_days``, ``day_window``, ``utc_days``) live here too: daily partitions are
the lake's unit of time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas/pyarrow/dagster load on first use (onboarding workers stay lean)
    import dagster as dg
    import numpy as np
    import pandas as pd

    from resources.lake import LakeResource

PART_FILE = "part-0.parquet"
STAGING, CURATED, BACKUP = "staging", "curated", "backup"


LOCKS = "_locks/publish"
JOURNAL_FILE = "_journal.json"
RUN_FOLDER = "run="


def published_keys(name: str, partition: str | None) -> tuple[str, str, str]:
    """(staging, production, backup) keys of a published table's partition folder.

    ``staging`` is the partition's staging *root*: each run stages under its own
    ``run_staging_key`` below it, beside the partition's publish journal (``publish_state_keys``).
    """
    suffix = f"/{partition}" if partition else ""
    return f"{STAGING}/{name}{suffix}", f"{CURATED}/{name}{suffix}", f"{BACKUP}/{name}{suffix}"


def run_staging_key(name: str, partition: str | None, run_id: str) -> str:
    """``staging/<table>/<partition>/run=<run_id>``: the candidate of one run, nobody else's."""
    return f"{published_keys(name, partition)[0]}/{RUN_FOLDER}{run_id}"


def publish_state_keys(name: str, partition: str | None) -> tuple[str, str]:
    """(journal, lock) keys of a published partition.

    The journal (``staging/<table>/<partition>/_journal.json``) exists only while a publish is
    in flight or was interrupted; the lock (``_locks/publish/<table>/<partition>``) is a lock
    file locally (kept, a few bytes) and a lease object on S3 (deleted on release).
    """
    suffix = f"/{partition}" if partition else "/_all"
    return f"{published_keys(name, partition)[0]}/{JOURNAL_FILE}", f"{LOCKS}/{name}{suffix}"


def previous_backup_key(name: str, partition: str | None) -> str:
    """Where a publish keeps the backup it replaces until the publish completes, so a rolled
    back publish puts back the real previous backup (``staging/<table>/<partition>/previous``)."""
    return f"{published_keys(name, partition)[0]}/previous"


def publish_pool(table: str | LakeTable) -> str:
    """The Dagster concurrency pool of a published table (``publish/<table>``).

    Put it on the asset that publishes the table (``@dg.asset(pool=publish_pool(TABLE))``) and
    give the pool a limit (``dagster instance concurrency set publish/<table> 1``) so runs of
    one table queue in Dagster instead of waiting on the lake lock of ``publishing.journal``.
    """
    return f"publish/{table if isinstance(table, str) else table.name}"


# ---- days ---------------------------------------------------------------------------------------


def trailing_days(day: str, days: int) -> list[str]:
    """The ``days`` UTC dates before ``day`` (``YYYY-MM-DD``), newest first."""
    d = date.fromisoformat(day)
    return [(d - timedelta(days=i)).isoformat() for i in range(1, days + 1)]


def day_window(day: str, days: int) -> list[str]:
    """The ``days`` UTC dates ending with ``day``, oldest first."""
    return [*reversed(trailing_days(day, days - 1)), day]


def day_range(first: date, last: date) -> list[str]:
    """Every date from ``first`` to ``last`` inclusive, as ``YYYY-MM-DD``."""
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def utc_days(ts: pd.Series) -> np.ndarray:
    """The UTC date (``YYYY-MM-DD``) of each timestamp."""
    import pandas as pd

    return pd.to_datetime(ts, utc=True).dt.strftime("%Y-%m-%d").to_numpy()


# ---- declarations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LakeTable:
    """A Parquet table in the lake: ``<prefix>/<partition>=<value>/*.parquet``.

    ``columns`` maps the contract columns to their types (shown in the UI as the asset's column
    schema); ``partition`` is the partition folder's name (``date``, ``campaign_id``) or None for
    an unpartitioned table.
    """

    name: str
    prefix: str
    partition: str | None = "date"
    columns: Mapping[str, str] = field(default_factory=dict)
    descriptions: Mapping[str, str] = field(default_factory=dict)
    published: bool = False

    @classmethod
    def curated(cls, name: str, **kwargs: Any) -> LakeTable:
        """A published table: ``curated/<name>``, written through write-audit-publish."""
        return cls(name=name, prefix=f"{CURATED}/{name}", published=True, **kwargs)

    # ---- keys ------------------------------------------------------------------------------
    def folder(self, value: str | None) -> str | None:
        """The partition folder (``date=2024-01-05``) of a partition value."""
        if self.partition is None or value is None:
            return None
        return f"{self.partition}={value}"

    def value_of(self, folder: str) -> str | None:
        """The partition value of a folder name (``date=2024-01-05`` -> ``2024-01-05``)."""
        head = f"{self.partition}="
        return folder[len(head) :] if self.partition and folder.startswith(head) else None

    def key(self, value: str | None = None) -> str:
        """The folder of one partition (or the table's root for ``None``)."""
        folder = self.folder(value)
        return f"{self.prefix}/{folder}" if folder else self.prefix

    def keys(self) -> tuple[str, str, str]:
        """(staging, production, backup) roots of a published table."""
        return published_keys(self.name, None)

    # ---- reading ---------------------------------------------------------------------------
    def files(self, lake: LakeResource, value: str | None = None) -> list[str]:
        return lake.parquet_files(self.key(value))

    def exists(self, lake: LakeResource, value: str | None = None) -> bool:
        """At least one Parquet file holds the partition."""
        return bool(self.files(lake, value))

    def read(
        self,
        lake: LakeResource,
        value: str | None = None,
        columns: Sequence[str] | None = None,
        dictionary: Sequence[str] = (),
    ) -> pd.DataFrame | None:
        """Every Parquet file of the partition (None when its folder is missing or empty).

        Only ``columns`` are fetched; ``dictionary`` columns come back as categoricals.
        """
        table = lake.read_arrow(self.key(value), columns, dictionary=dictionary)
        return None if table is None else table.to_pandas()

    def read_or_empty(
        self, lake: LakeResource, value: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Like ``read`` but an empty frame (with ``columns``) when the partition is missing."""
        import pandas as pd

        df = self.read(lake, value, columns)
        if df is not None:
            return df
        return pd.DataFrame(columns=list(columns)) if columns else pd.DataFrame()

    def read_many(
        self, lake: LakeResource, values: Sequence[str], columns: Sequence[str] | None = None
    ) -> tuple[pd.DataFrame, list[str]]:
        """The partitions of ``values`` that exist and hold rows, concatenated, and their values."""
        import pandas as pd

        frames, found = [], []
        for v in values:
            df = self.read(lake, v, columns)
            if df is not None and len(df):
                frames.append(df)
                found.append(v)
        if frames:
            return pd.concat(frames, ignore_index=True), found
        return (pd.DataFrame(columns=list(columns)) if columns else pd.DataFrame()), found

    def rows(self, lake: LakeResource, value: str | None = None) -> int:
        """Rows of the partition from the Parquet footers (0 when missing)."""
        return lake.parquet_rows(self.key(value))

    def values(self, lake: LakeResource) -> list[str]:
        """Partition values present in the lake (folders, sorted)."""
        return [v for name in lake.list_dirs(self.prefix) if (v := self.value_of(name))]

    def present(self, lake: LakeResource, values: Sequence[str]) -> list[str]:
        """The partitions of ``values`` that hold a Parquet file, in order."""
        return [v for v in values if self.exists(lake, v)]

    def latest(self, lake: LakeResource, values: Sequence[str]) -> str | None:
        """The last of ``values`` whose partition holds a Parquet file."""
        return next((v for v in reversed(list(values)) if self.exists(lake, v)), None)

    # ---- writing ---------------------------------------------------------------------------
    def write(self, lake: LakeResource, df: pd.DataFrame, value: str | None = None) -> str:
        """Write ``df`` as the partition's single ``part-0.parquet`` (unpublished tables only)."""
        if self.published:
            raise ValueError(f"{self.name} is published: write it through publishing.wap")
        return lake.write_parquet(df, self.key(value))

    # ---- Dagster metadata ------------------------------------------------------------------
    def column_schema(self) -> dg.TableSchema:
        import dagster as dg

        return dg.TableSchema(
            columns=[
                dg.TableColumn(name, type, description=self.descriptions.get(name))
                for name, type in self.columns.items()
            ]
        )

    def metadata(self) -> dict[str, Any]:
        """Definition metadata: column schema and where the table lives."""
        out: dict[str, Any] = {"lake_prefix": self.prefix}
        if self.columns:
            out["dagster/column_schema"] = self.column_schema()
        return out


@dataclass(frozen=True)
class JsonObjects:
    """JSON objects in the lake: ``<prefix>/<id>.json`` (e.g. one campaign per file)."""

    name: str
    prefix: str

    def key(self, ident: str) -> str:
        return f"{self.prefix}/{ident}.json"

    def ids(self, lake: LakeResource) -> list[str]:
        """Ids of every object directly under the prefix, sorted."""
        head = self.prefix + "/"
        return sorted(
            k[len(head) : -len(".json")]
            for k in lake.list(self.prefix)
            if k.endswith(".json") and "/" not in k[len(head) :]
        )

    def files(self, lake: LakeResource) -> list[str]:
        return [self.key(i) for i in self.ids(lake)]

    def exists(self, lake: LakeResource, ident: str) -> bool:
        return lake.exists(self.key(ident))

    def read(self, lake: LakeResource, ident: str) -> Any:
        return lake.read_json(self.key(ident))

    def read_if_exists(self, lake: LakeResource, ident: str) -> Any | None:
        return self.read(lake, ident) if self.exists(lake, ident) else None

    def write(self, lake: LakeResource, ident: str, obj: Any) -> str:
        key = self.key(ident)
        lake.write_json(key, obj)
        return key
