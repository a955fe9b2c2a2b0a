"""One lake interface, two back ends: a local folder (default) and S3 (``LAKE_BUCKET``).

Keys are always relative, slash-separated paths such as ``raw/pings/date=2024-01-01``.
A *published* partition is a single Parquet object (``part-0.parquet``) that is replaced
atomically: ``os.replace`` locally, a single PUT/CopyObject on S3. Readers therefore see the
old complete partition or the new complete one, never a mix.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:  # pandas/pyarrow load on first use: onboarding run workers never need them
    import pandas as pd

PART_FILE = "part-0.parquet"


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def validate_key(key: str) -> str:
    """Reject keys that could escape the lake root (``..``, absolute paths, control chars)."""
    if key.startswith("/") or "\\" in key or any(ord(c) < 32 for c in key):
        raise ValueError(
            f"invalid lake key {key!r}: must be a relative path without control characters"
        )
    if any(part in ("..", ".") for part in key.split("/")):
        raise ValueError(f"invalid lake key {key!r}: '.' and '..' segments are not allowed")
    return key.strip("/")


class LakeStore(ABC):
    """Byte-level operations every back end provides."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically (readers see the old or the new bytes)."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All object keys under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def copy_object(self, src: str, dst: str) -> None:
        """Copy one object; the destination is replaced atomically."""

    @abstractmethod
    def delete_object(self, key: str) -> None: ...


class LocalStore(LakeStore):
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key) if key else self.root

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [validate_key(prefix)]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def exists(self, key: str) -> bool:
        path = self._path(key)
        return path.is_file() or (path.is_dir() and any(path.iterdir()))

    def copy_object(self, src: str, dst: str) -> None:
        dst_path = self._path(dst)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst_path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(self._path(src), tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete_object(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


class S3Store(LakeStore):
    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client: Any = None
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            config=Config(retries={"max_attempts": 8, "mode": "adaptive"}),
        )

    def _key(self, key: str) -> str:
        return _join(self.prefix, validate_key(key)) if key else self.prefix

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if k == full or k.startswith(full.rstrip("/") + "/") or not full:
                    keys.append(k[strip:])
        return sorted(keys)

    def exists(self, key: str) -> bool:
        return bool(self.list(key))

    def copy_object(self, src: str, dst: str) -> None:
        self.client.copy_object(
            Bucket=self.bucket,
            Key=self._key(dst),
            CopySource={"Bucket": self.bucket, "Key": self._key(src)},
        )

    def delete_object(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


class LakeResource(dg.ConfigurableResource):
    """The lake: ``s3://$LAKE_BUCKET/$LAKE_PREFIX`` when ``bucket`` is set, else a local folder."""

    root: str = ".lake"
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None

    _store: LakeStore | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> LakeResource:
        return cls(
            root=os.environ.get("LAKE_ROOT", ".lake"),
            bucket=os.environ.get("LAKE_BUCKET") or None,
            prefix=os.environ.get("LAKE_PREFIX", ""),
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        )

    @property
    def store(self) -> LakeStore:
        if self._store is None:
            if self.bucket:
                self._store = S3Store(self.bucket, self.prefix, self.endpoint_url)
            else:
                self._store = LocalStore(self.root)
        return self._store

    @property
    def backend(self) -> str:
        return "s3" if self.bucket else "local"

    def uri(self, key: str = "") -> str:
        return self.store.uri(key)

    # ---- listing -------------------------------------------------------------------------
    def list(self, prefix: str) -> list[str]:
        return self.store.list(validate_key(prefix))

    def exists(self, key: str) -> bool:
        return self.store.exists(validate_key(key))

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate child folder names under ``prefix`` (e.g. ``date=2024-01-01``)."""
        prefix = validate_key(prefix).rstrip("/")
        n = len(prefix) + 1 if prefix else 0
        children = {k[n:].split("/", 1)[0] for k in self.list(prefix) if "/" in k[n:]}
        return sorted(children)

    # ---- bytes, JSON, Parquet --------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        return self.store.read_bytes(validate_key(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.store.write_bytes(validate_key(key), data)

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, default=str).encode())

    def parquet_files(self, key: str) -> list[str]:
        return [k for k in self.list(key) if k.endswith(".parquet")]

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Read one Parquet object or every ``*.parquet`` under a folder (empty frame if none)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = self.parquet_files(key)
        frames = [pq.read_table(io.BytesIO(self.read_bytes(f)), columns=columns) for f in files]
        if not frames:
            return pd.DataFrame(columns=columns) if columns else pd.DataFrame()
        table = (
            pa.concat_tables(frames, promote_options="permissive") if len(frames) > 1 else frames[0]
        )
        return table.to_pandas()

    def write_parquet(self, df: pd.DataFrame, key: str) -> str:
        """Write ``df`` to ``key`` (a ``.parquet`` object, or a folder that gets ``part-0.parquet``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = validate_key(key)
        if not key.endswith(".parquet"):
            key = _join(key, PART_FILE)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
        self.write_bytes(key, buf.getvalue())
        return key

    # ---- copy, delete, publish --------------------------------------------------------------
    def copy(self, src: str, dst: str) -> int:
        """Copy one object or a whole folder; returns the number of objects copied."""
        src, dst = validate_key(src), validate_key(dst)
        keys = self.store.list(src)
        for k in keys:
            rel = k[len(src) :].lstrip("/")
            self.store.copy_object(k, _join(dst, rel) if rel else dst)
        return len(keys)

    def delete(self, prefix: str) -> int:
        keys = self.store.list(validate_key(prefix))
        for k in keys:
            self.store.delete_object(k)
        return len(keys)

    def publish(self, staging: str, production: str, backup: str) -> dict[str, Any]:
        """Put the staged partition in production atomically, keeping the previous one as backup.

        Every key is a partition folder holding one ``part-0.parquet``. The production object is
        replaced with a single atomic write, so readers never see a partial partition.
        """
        staged, prod, bak = (
            _join(validate_key(k), PART_FILE) for k in (staging, production, backup)
        )
        if not self.store.exists(staged):
            raise FileNotFoundError(f"nothing staged at {self.uri(staged)}")
        had_previous = self.store.exists(prod)
        if had_previous:
            self.store.copy_object(prod, bak)
        self.store.copy_object(staged, prod)
        self.delete(staging)
        return {"published": self.uri(prod), "backup": self.uri(bak) if had_previous else None}

    def restore(self, production: str, backup: str) -> str:
        """Roll a published partition back to its backup (atomic, like publish)."""
        prod, bak = (_join(validate_key(k), PART_FILE) for k in (production, backup))
        if not self.store.exists(bak):
            raise FileNotFoundError(f"no backup at {self.uri(bak)}")
        self.store.copy_object(bak, prod)
        return self.uri(prod)
