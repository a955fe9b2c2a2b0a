"""One publisher per table partition, versions you can read back, and a publish journal.

Write-audit-publish (``publishing/wap.py``) uses three things from here:

- **the publish lock** (``publish_lock``): held from staging to the last swap of one table
  partition. It lives in the lake, so it works for every published table (most have no Redis)
  and on both back ends:

  - local lake: ``fcntl.flock`` on ``<root>/_locks/publish/<table>/<partition>``. The kernel
    drops it when the holder dies (a kill -9 never leaves a stale lock). The file is kept (a few
    bytes), which avoids the unlink-while-locked race.
  - S3: a lease object created with a conditional PUT (``If-None-Match: *``) holding an owner
    token and an expiry (``PUBLISH_LOCK_TTL_S``, default 1 h). An expired lease is taken over
    with ``If-Match: <etag>`` (compare-and-swap), released by a delete after checking the
    token; before its first swap a publisher checks it still holds the lease (a fence).

  A run that cannot get the lock within ``PUBLISH_LOCK_WAIT_S`` (default 120 s) fails with a
  retryable message naming the holder. The lock is the guarantee; the Dagster pool of
  ``publishing.tables.publish_pool`` only keeps runs from queueing on it.

- **versions**: every staged Parquet object carries, in its footer's key-value metadata,
  ``wap`` = ``{"version", "content", "run_id"}``: a token unique to the publish and a digest of
  the rows (``content_digest``). Which version production holds is a footer read; two
  candidates with the same rows have the same ``content``. The staged object is also
  fingerprinted (size + inode/mtime locally, size + ETag on S3) when the audits run and
  checked again right before the swap, so the swap moves exactly what was audited.

- **the journal** ``staging/<table>/<partition>/_journal.json`` (``publish_state_keys``):
  written before the first swap (state ``publishing``: version, content, run, the staged lake
  object and its fingerprint, what production held before, one entry per target with its
  staging key and version), advanced after the lake swap, deleted after the last swap. If it
  exists when the next publisher of that partition takes the lock, the publish was
  interrupted; ``publishing.wap.converge`` rolls it forward or back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from publishing.tables import PART_FILE, publish_state_keys

if TYPE_CHECKING:
    import pandas as pd

    from resources.lake import LakeResource

WAP_META = b"wap"
LOCK_WAIT_S = float(os.environ.get("PUBLISH_LOCK_WAIT_S", "120"))
LOCK_TTL_S = float(os.environ.get("PUBLISH_LOCK_TTL_S", "3600"))


class PublishLockTimeout(RuntimeError):
    """Another run held the publish lock of the partition for longer than the wait allows."""


class PublishLockLost(RuntimeError):
    """The S3 lease expired and another run took it over before this run's swap."""


def new_version() -> str:
    return uuid.uuid4().hex[:12]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def part_key(folder: str) -> str:
    return folder if folder.endswith(".parquet") else f"{folder}/{PART_FILE}"


# ---- the lock ---------------------------------------------------------------------------------


@dataclass
class Lease:
    """A held publish lock."""

    key: str
    owner: str
    token: str = field(default_factory=new_version)
    waited_s: float = 0.0
    _check: Any = None

    def check(self) -> None:
        """Raise ``PublishLockLost`` if the lock is no longer this run's (S3 leases only)."""
        if self._check is not None:
            self._check()


def _holder_text(raw: bytes | str | None) -> str:
    try:
        info = json.loads(raw or b"{}")
        return f"run {info.get('owner', '?')} since {info.get('since', '?')}"
    except (ValueError, TypeError):
        return "another run"


@contextlib.contextmanager
def publish_lock(
    lake: LakeResource,
    table: str,
    partition: str | None,
    owner: str,
    wait_s: float | None = None,
    ttl_s: float | None = None,
) -> Iterator[Lease]:
    """Hold the publish lock of one table partition (see the module doc)."""
    _, key = publish_state_keys(table, partition)
    wait = LOCK_WAIT_S if wait_s is None else wait_s
    ttl = LOCK_TTL_S if ttl_s is None else ttl_s
    what = f"{table} {partition or ''}".strip()
    if lake.backend == "s3":
        with _s3_lock(lake, key, owner, wait, ttl, what) as lease:
            yield lease
    else:
        with _local_lock(lake, key, owner, wait, what) as lease:
            yield lease


def _timeout(what: str, wait: float, holder: str) -> PublishLockTimeout:
    return PublishLockTimeout(
        f"{what}: another publish of this partition is in progress ({holder}); waited "
        f"{wait:g} s for its lock. Nothing was staged or published; retry when it finishes."
    )


@contextlib.contextmanager
def _local_lock(
    lake: LakeResource, key: str, owner: str, wait: float, what: str
) -> Iterator[Lease]:
    path = Path(lake.uri(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    delay = 0.01
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() - start >= wait:
                try:
                    holder = _holder_text(path.read_bytes())
                except OSError:
                    holder = "another run"
                raise _timeout(what, wait, holder)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        lease = Lease(key, owner, waited_s=time.monotonic() - start)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"owner": owner, "since": utc_now_iso()}).encode(), 0)
        try:
            yield lease
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _s3_lock(
    lake: LakeResource, key: str, owner: str, wait: float, ttl: float, what: str
) -> Iterator[Lease]:
    store: Any = lake.store
    client, bucket, full = store.client, store.bucket, store._key(key)
    lease = Lease(key, owner)

    def body() -> bytes:
        return json.dumps(
            {
                "owner": owner,
                "token": lease.token,
                "since": utc_now_iso(),
                "expires": time.time() + ttl,
            }
        ).encode()

    def code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    start, delay, holder = time.monotonic(), 0.02, "another run"
    while True:
        try:
            client.put_object(Bucket=bucket, Key=full, Body=body(), IfNoneMatch="*")
            break
        except client.exceptions.ClientError as exc:
            if code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise
        try:
            current = client.get_object(Bucket=bucket, Key=full)
            raw, etag = current["Body"].read(), current["ETag"]
            holder = _holder_text(raw)
            if json.loads(raw or b"{}").get("expires", 0) < time.time():  # take over, CAS
                try:
                    client.put_object(Bucket=bucket, Key=full, Body=body(), IfMatch=etag)
                    break
                except client.exceptions.ClientError as exc:
                    if code(exc) not in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                        raise
        except client.exceptions.NoSuchKey:
            continue  # released meanwhile: try again at once
        if time.monotonic() - start >= wait:
            raise _timeout(what, wait, holder)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    lease.waited_s = time.monotonic() - start

    def read_token() -> tuple[str | None, str | None]:
        try:
            current = client.get_object(Bucket=bucket, Key=full)
        except client.exceptions.NoSuchKey:
            return None, None
        info = json.loads(current["Body"].read() or b"{}")
        if info.get("expires", 0) < time.time():
            return None, current["ETag"]
        return info.get("token"), current["ETag"]

    def check() -> None:
        token, _ = read_token()
        if token != lease.token:
            raise PublishLockLost(
                f"{what}: the publish lease expired and was taken over; nothing was published "
                "by this run. Retry it."
            )

    lease._check = check
    try:
        yield lease
    finally:
        with contextlib.suppress(Exception):
            token, etag = read_token()
            if token == lease.token:
                client.delete_object(Bucket=bucket, Key=full)


# ---- versions -----------------------------------------------------------------------------------


class ContentDigest:
    """``content_digest`` fed a frame at a time: the same rows in the same order give the same
    digest however they are split (the Spark engine's writer feeds it one batch at a time).

    A copy of this class lives in ``near_assets/spark_jobs/apply_by_device.py`` (the cluster
    imports only ``near_assets``); ``tests/test_spark_chain.py`` checks both agree.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._rows = 0
        self._dtypes: str | None = None

    def update(self, df: pd.DataFrame) -> None:
        import pandas as pd

        if self._dtypes is None:
            self._dtypes = json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()])
            self._h.update(self._dtypes.encode())
        self._rows += len(df)
        if len(df.columns) and len(df):
            self._h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(f"rows={self._rows}".encode())
        return h.hexdigest()[:24]


def content_digest(df: pd.DataFrame) -> str:
    """A digest of the rows (column names, dtypes and values, not the index): same rows, same
    digest, whatever run (or engine) produced them."""
    digest = ContentDigest()
    digest.update(df)
    return digest.hexdigest()


def write_versioned(
    lake: LakeResource, df: pd.DataFrame, folder: str, stamp: dict[str, str]
) -> str:
    """Write ``df`` as ``folder/part-0.parquet`` with ``stamp`` in the footer; returns the key."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[WAP_META] = json.dumps(stamp).encode()
    return lake.write_parquet(table.replace_schema_metadata(meta), folder)


def restamp(lake: LakeResource, folder: str, stamp: dict[str, Any]) -> int:
    """Replace the ``wap`` stamp in the footer of ``folder``'s object (one a job staged, e.g.
    to record an operator override): the object is rewritten row group by row group (never
    whole in memory; locally a temporary file renamed onto it, on S3 a multipart upload that
    appears whole on close), with the same rows, schema, row groups and content digest.
    Returns the rows written."""
    import pyarrow.parquet as pq

    key = part_key(folder)
    with lake.open_input(key) as fh:
        source = pq.ParquetFile(fh)
        meta = dict(source.schema_arrow.metadata or {})
        meta[WAP_META] = json.dumps(stamp).encode()
        schema = source.schema_arrow.with_metadata(meta)
        rows = 0
        with lake.open_output(key) as sink:
            writer = pq.ParquetWriter(sink, schema, compression="zstd")
            try:
                for i in range(source.num_row_groups):
                    group = source.read_row_group(i).replace_schema_metadata(meta)
                    writer.write_table(group, row_group_size=max(group.num_rows, 1))
                    rows += group.num_rows
            finally:
                writer.close()
    if rows != source.metadata.num_rows:
        raise OSError(f"restamp of {key}: wrote {rows} rows of {source.metadata.num_rows}")
    return rows


def read_stamp(lake: LakeResource, folder: str) -> dict[str, Any] | None:
    """The ``wap`` stamp of a partition's object (footer only); ``{}`` for an object written
    before stamps existed, None when there is no object."""
    import pyarrow.parquet as pq

    key = part_key(folder)
    for _ in range(3):
        try:
            with lake.open_input(key) as fh:
                meta = pq.read_metadata(fh).metadata or {}
            raw = meta.get(WAP_META)
            return json.loads(raw) if raw else {}
        except FileNotFoundError:
            return None
        except OSError:  # replaced while reading: read the new one
            continue
    return None


def fingerprint(lake: LakeResource, folder: str) -> dict[str, Any] | None:
    """What identifies one stored object version cheaply: size + ETag (S3), size + inode +
    mtime (local). None when missing."""
    key = part_key(folder)
    store: Any = lake.store
    if lake.backend == "s3":
        try:
            head = store.client.head_object(Bucket=store.bucket, Key=store._key(key))
        except store.client.exceptions.ClientError:
            return None
        return {"size": int(head["ContentLength"]), "etag": head["ETag"]}
    try:
        st = os.stat(lake.uri(key))
    except FileNotFoundError:
        return None
    return {"size": st.st_size, "inode": st.st_ino, "mtime_ns": st.st_mtime_ns}


# ---- the journal ----------------------------------------------------------------------------------


def read_journal(lake: LakeResource, table: str, partition: str | None) -> dict[str, Any] | None:
    key, _ = publish_state_keys(table, partition)
    try:
        return lake.read_json(key)
    except FileNotFoundError:
        return None
    except ValueError:  # a torn journal cannot exist (atomic writes); be safe anyway
        return {"state": "unreadable"}


def write_journal(lake: LakeResource, table: str, partition: str | None, entry: dict) -> None:
    key, _ = publish_state_keys(table, partition)
    lake.write_json(key, {**entry, "updated_at": utc_now_iso()})


def delete_journal(lake: LakeResource, table: str, partition: str | None) -> None:
    key, _ = publish_state_keys(table, partition)
    lake.delete(key)


def clear_partials(lake: LakeResource, folders: list[str]) -> int:
    """Remove what a killed writer leaves in ``folders``: ``.tmp-*`` files (local) or
    unfinished multipart uploads (S3). Call it holding the partition's publish lock."""
    removed = 0
    if lake.backend == "s3":
        store: Any = lake.store
        for folder in folders:
            pages = store.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=store.bucket, Prefix=store._key(folder) + "/"
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    store.client.abort_multipart_upload(
                        Bucket=store.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    removed += 1
        return removed
    for folder in folders:
        base = Path(lake.uri(folder))
        if base.is_dir():
            for tmp in base.rglob(".tmp-*"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed += 1
    return removed
