"""One lake interface, two back ends: a local folder (default) and S3 (``LAKE_BUCKET``).

Keys are always relative, slash-separated paths such as ``raw/pings/date=2024-01-01``.

Parquet is read through random-access pyarrow files (``open_input``): a reader asks for byte
ranges, so a row count reads only the footer and a column read only those column chunks (and
only the row groups a filter can match). Each read opens an object once and takes footer and
pages from that one open file, so it sees one version even while a publish replaces the object.
Locally the file comes from ``pyarrow.fs.LocalFileSystem`` (an open file keeps its inode). On S3
it is a ``_PinnedObject`` over boto3, not pyarrow's ``S3FileSystem``: that one cannot name the
version it reads, so a publish between two of its range requests hands the reader a footer of
one version and pages of the other. A pinned object takes the ETag of its first request and sends
``If-Match`` with every range after it; the lake reads again when the object changed. Writes and
copies use boto3 too: pyarrow's S3 output stream cannot be aborted (a failed writer would
complete a partial object) and it has no server-side multipart copy.

Objects of any size:

- a write streams through ``open_output``: locally a hidden temporary file renamed into place;
  on S3 one PUT up to ``multipart_threshold``, else a multipart upload whose parts
  (``multipart_part_size``) leave while the writer is still producing. Nothing is visible
  until the writer finishes; a failure removes the temporary file / aborts the upload.
- a copy is ``os.replace`` of a temporary copy locally; on S3 one ``CopyObject`` up to
  ``copy_threshold``, else a multipart copy (``UploadPartCopy`` of ``copy_part_size`` ranges,
  server side), so objects above CopyObject's 5 GB limit can be copied and published.

A *published* partition is a single Parquet object (``part-0.parquet``) that is replaced
atomically: ``os.replace`` locally; on S3 a PUT, CopyObject or CompleteMultipartUpload, each of
which makes the new object visible at once. Readers therefore see the old complete partition
or the new complete one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import dagster as dg
from pydantic import PrivateAttr

if TYPE_CHECKING:  # pandas/pyarrow load on first use: onboarding run workers never need them
    import pandas as pd
    import pyarrow as pa

T = TypeVar("T")
PART_FILE = "part-0.parquet"
MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MAX_PARTS = 10_000
FOOTER_READ = 64 * 1024  # what opening an S3 object fetches first: a Parquet footer, usually whole
READ_ATTEMPTS = 3  # a read whose object was replaced meanwhile starts again on the new one


class ObjectChangedError(OSError):
    """An object was replaced (or deleted) while it was being read."""


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


def parse_size(value: str | int) -> int:
    """Bytes from ``123``, ``64MiB``, ``5 GB``, ``256k`` (binary multiples)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", value, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {value!r} (e.g. 67108864, 64MiB, 5GB)")
    return int(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_")


@dataclass(frozen=True)
class Multipart:
    """When and how S3 objects are sent in parts (the local back end ignores it).

    S3 requires every part but the last to be at least 5 MiB and allows 10,000 parts: part
    sizes grow when an object (a copy, or a ``write_bytes``) would need more. A streamed
    write cannot know its size in advance, so it tops out at ``part_size * 10,000``
    (320 GiB at the default). A streamed write holds at most ``threshold`` bytes, then
    ``concurrency + 1`` parts, in memory.
    """

    threshold: int = 64 * MiB  # objects above this are uploaded in parts
    part_size: int = 32 * MiB
    copy_threshold: int = 1 * GiB  # copies above this use UploadPartCopy (CopyObject: <= 5 GiB)
    copy_part_size: int = 512 * MiB
    concurrency: int = 4  # parts in flight at once

    def sized(self, size: int, part_size: int) -> int:
        """The part size for an object of ``size`` bytes (at most 10,000 parts)."""
        return max(part_size, -(-size // S3_MAX_PARTS))


class ParquetWritten(NamedTuple):
    key: str  # the object written (folder keys get ``part-0.parquet``)
    rows: int
    row_groups: int
    bytes: int


class LakeStore(ABC):
    """Byte-level operations every back end provides."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def open_input(self, key: str) -> pa.NativeFile:
        """A random-access file on one version of the object.

        Reads fetch only the ranges asked for and never mix versions: an object replaced after
        the open stays the old one, or the read fails with ``ObjectChangedError``.
        """

    def read_bytes(self, key: str) -> bytes:
        with self.open_input(key) as fh:  # read() with no size: one read of the whole file
            return fh.read()

    @abstractmethod
    def open_output(self, key: str) -> contextlib.AbstractContextManager[Any]:
        """A writable binary stream; the object appears, whole, when the block exits cleanly.

        On an exception nothing is left behind and a previous object is untouched.
        """

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically (readers see the old or the new bytes)."""
        with self.open_output(key) as fh:
            fh.write(data)

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All object keys under ``prefix`` (recursive), sorted."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def copy_object(self, src: str, dst: str) -> None:
        """Copy one object; the destination is replaced atomically."""

    def move_object(self, src: str, dst: str) -> None:
        """Move one object; the destination is replaced atomically."""
        self.copy_object(src, dst)
        self.delete_object(src)

    @abstractmethod
    def delete_object(self, key: str) -> None: ...


class LocalStore(LakeStore):
    def __init__(self, root: str | os.PathLike[str]):
        import pyarrow.fs as pafs

        self.root = Path(root).resolve()
        self.filesystem = pafs.LocalFileSystem()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key) if key else self.root

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def open_input(self, key: str) -> pa.NativeFile:
        # an open file keeps its inode: a publish (os.replace) cannot change what it reads
        return self.filesystem.open_input_file(self._path(key).as_posix())

    @contextlib.contextmanager
    def _temporary(self, key: str) -> Iterator[str]:
        """A hidden temporary file beside ``key``, renamed onto it on success, else removed."""
        path = self._path(key)
        for attempt in range(5):  # a concurrent prune may remove the folder between the two calls
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
        os.close(fd)
        try:
            yield tmp
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def open_output(self, key: str) -> Iterator[pa.NativeFile]:
        with self._temporary(key) as tmp, self.filesystem.open_output_stream(tmp) as fh:
            yield fh

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
        if path.is_file():
            return True
        return path.is_dir() and any(
            p.is_file() and not p.name.startswith(".tmp-") for p in path.rglob("*")
        )

    def copy_object(self, src: str, dst: str) -> None:
        source = self._path(src)
        with self._temporary(dst) as tmp:
            shutil.copyfile(source, tmp)

    def move_object(self, src: str, dst: str) -> None:
        """A rename: atomic and O(1) whatever the size (the lake is one folder tree)."""
        dst_path = self._path(dst)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self._path(src), dst_path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # a mount point inside the lake: copy, then delete
                raise
            self.copy_object(src, dst)
            self._path(src).unlink()
        self._prune(self._path(src).parent)

    def delete_object(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, parent: Path) -> None:
        """Remove empty folders up to the root (another writer may fill or remove one meanwhile)."""
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            try:
                parent.rmdir()
            except OSError:  # not empty any more (ENOTEMPTY) or already gone (ENOENT)
                return
            parent = parent.parent


class S3Upload:
    """A writable stream to one S3 object (see ``Multipart``).

    Up to ``threshold`` bytes stay in memory and leave as one PUT on ``commit``; past it a
    multipart upload starts and each ``part_size`` bytes leave as soon as they are written
    (``concurrency`` parts in flight). ``commit`` completes the upload, which makes the whole
    object visible at once; ``abort`` drops it. ``close`` (pyarrow's writers call it) only
    ends writing: it neither commits nor aborts.
    """

    def __init__(self, client: Any, bucket: str, key: str, multipart: Multipart):
        self.client, self.bucket, self.key, self.cfg = client, bucket, key, multipart
        self.closed = False
        self._buf = bytearray()
        self._pos = 0
        self._upload_id: str | None = None
        self._extra: dict[str, str] = {}
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None

    # ---- the file-like surface pyarrow and callers use ---------------------------------
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"write to a closed upload of {self.key}")
        view = memoryview(data).cast("B")
        self._buf += view
        self._pos += view.nbytes
        if self._upload_id is None and len(self._buf) > self.cfg.threshold:
            self._start()
        if self._upload_id is not None:
            while len(self._buf) >= self.cfg.part_size:
                with memoryview(self._buf) as view_of_buf:  # one copy, then the buffer shrinks
                    part = bytes(view_of_buf[: self.cfg.part_size])
                del self._buf[: self.cfg.part_size]
                self._send(part)
        return view.nbytes

    # ---- multipart ---------------------------------------------------------------------
    def _start(self) -> None:
        if self.client.meta.config.request_checksum_calculation == "when_supported":
            self._extra = {"ChecksumAlgorithm": "CRC32"}  # as boto3's own transfer manager
        self._upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key, **self._extra
        )["UploadId"]
        self._pool = ThreadPoolExecutor(max(1, self.cfg.concurrency), "lake-upload")

    def _send(self, part: bytes) -> None:
        assert self._pool is not None
        in_flight = [f for f in self._parts if not f.done()]
        if len(in_flight) >= max(1, self.cfg.concurrency):
            wait(in_flight, return_when=FIRST_COMPLETED)
        for f in self._parts:
            if f.done():
                f.result()  # a failed part fails the writer now, not at commit
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise ValueError(
                f"{self.key}: more than {S3_MAX_PARTS} parts of {self.cfg.part_size} bytes;"
                " raise multipart_part_size"
            )
        self._parts.append(self._pool.submit(self._upload_part, number, part))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        resp = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
            **self._extra,
        )
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if "ChecksumCRC32" in resp:
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part

    def commit(self) -> None:
        self.closed = True
        if self._upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buf))
            self._buf = bytearray()
            return
        if self._buf or not self._parts:
            self._send(bytes(self._buf))
            self._buf = bytearray()
        parts = [f.result() for f in self._parts]
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._shutdown()

    def abort(self) -> None:
        self.closed = True
        self._buf = bytearray()
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        self._shutdown()
        self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
        )

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _PinnedObject:
    """Random access to one version of one S3 object (a file object for ``pa.PythonFile``).

    Ranges inside the tail fetched on open are served from memory; every other range is a GET
    with ``If-Match: <etag>``, which fails (``ObjectChangedError``) once the object changed.
    """

    def __init__(self, client: Any, bucket: str, key: str, version: tuple[str, int, bytes]):
        self.client, self.bucket, self.key = client, bucket, key
        self.etag, self.length, self.tail = version
        self.tail_start = self.length - len(self.tail)
        self.pos = 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = (0, self.pos, self.length)[whence] + offset
        return self.pos

    def close(self) -> None:
        self.closed = True

    def read(self, n: int = -1) -> bytes:
        end = self.length if n is None or n < 0 else min(self.pos + n, self.length)
        start, self.pos = self.pos, max(end, self.pos)
        if start >= end:
            return b""
        if start >= self.tail_start:
            return self.tail[start - self.tail_start : end - self.tail_start]
        head_end = min(end, self.tail_start)
        try:
            body = self.client.get_object(
                Bucket=self.bucket,
                Key=self.key,
                Range=f"bytes={start}-{head_end - 1}",
                IfMatch=self.etag,
            )["Body"].read()
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "NoSuchKey"):
                raise ObjectChangedError(f"s3://{self.bucket}/{self.key} changed") from exc
            raise
        return body + self.tail[: end - head_end] if end > head_end else body


class S3Store(LakeStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any = None,
        multipart: Multipart | None = None,
    ):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.multipart = multipart or Multipart()
        self.client = client or boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                retries={"max_attempts": 8, "mode": "adaptive"},
                max_pool_connections=max(10, 2 * self.multipart.concurrency),
            ),
        )

    def open_input(self, key: str) -> pa.NativeFile:
        """Fetch the object's tail (a Parquet footer, usually whole) and, from the same
        response, its size and ETag; every other range then names that ETag."""
        import pyarrow as pa

        full = self._key(key)
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes=-{FOOTER_READ}"
            )
            body = resp["Body"].read()
            # a 206 names the size; a server may answer a range with the whole object (200)
            size = int(resp.get("ContentRange", f"/{len(body)}").rsplit("/", 1)[1])
            version = (resp["ETag"], size, body)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"no object at {self.uri(key)}") from exc
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            head = self.client.head_object(Bucket=self.bucket, Key=full)  # an empty object
            version = (head["ETag"], head["ContentLength"], b"")
        return pa.PythonFile(_PinnedObject(self.client, self.bucket, full, version), mode="r")

    def read_bytes(self, key: str) -> bytes:
        """One GET: always one whole version of the object."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(f"no object at {self.uri(key)}") from exc
        return resp["Body"].read()

    def _key(self, key: str) -> str:
        return _join(self.prefix, validate_key(key)) if key else self.prefix

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @contextlib.contextmanager
    def _upload(self, key: str, multipart: Multipart) -> Iterator[S3Upload]:
        upload = S3Upload(self.client, self.bucket, self._key(key), multipart)
        try:
            yield upload
        except BaseException:
            upload.abort()
            raise
        try:
            upload.commit()
        except BaseException:
            upload.abort()
            raise

    def open_output(self, key: str) -> contextlib.AbstractContextManager[S3Upload]:
        return self._upload(key, self.multipart)

    def write_bytes(self, key: str, data: bytes) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes <= self.multipart.threshold:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
            return
        part_size = self.multipart.sized(view.nbytes, self.multipart.part_size)
        cfg = Multipart(**{**self.multipart.__dict__, "threshold": 0, "part_size": part_size})
        with self._upload(key, cfg) as fh:
            for start in range(0, view.nbytes, part_size):
                fh.write(view[start : start + part_size])

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
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(src))
        size = head["ContentLength"]
        source = {"Bucket": self.bucket, "Key": self._key(src)}
        if size <= self.multipart.copy_threshold:
            self.client.copy_object(Bucket=self.bucket, Key=self._key(dst), CopySource=source)
            return
        self._multipart_copy(source, head["ETag"], size, self._key(dst))

    def _multipart_copy(self, source: dict[str, str], etag: str, size: int, dst: str) -> None:
        """Server-side copy in ranges; the destination appears when the upload completes.

        Every part names the source's ETag, so a source replaced meanwhile fails the copy
        instead of mixing two versions.
        """
        part_size = self.multipart.sized(size, self.multipart.copy_part_size)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=dst)["UploadId"]

        def copy_part(number: int) -> dict[str, Any]:
            first = (number - 1) * part_size
            last = min(first + part_size, size) - 1
            resp = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=dst,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
                CopySourceIfMatch=etag,
                CopySourceRange=f"bytes={first}-{last}",
            )
            return {"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]}

        n_parts = -(-size // part_size)
        try:
            with ThreadPoolExecutor(max(1, self.multipart.concurrency), "lake-copy") as pool:
                parts = list(pool.map(copy_part, range(1, n_parts + 1)))
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=dst, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=dst, UploadId=upload_id)
            raise

    def delete_object(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def _filter_expression(filters: Any) -> Any:
    """A pyarrow expression from one, or from DNF tuples (``[("col", "=", v), ...]``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if filters is None or isinstance(filters, pc.Expression):
        return filters
    return pq.filters_to_expression(filters)


class LakeResource(dg.ConfigurableResource):
    """The lake: ``s3://$LAKE_BUCKET/$LAKE_PREFIX`` when ``bucket`` is set, else a local folder.

    Size fields (bytes; env ``LAKE_MULTIPART_THRESHOLD`` etc. accept ``64MiB``) only matter on
    S3; see ``Multipart``.
    """

    root: str = ".lake"
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    multipart_threshold: int = Multipart.threshold
    multipart_part_size: int = Multipart.part_size
    copy_threshold: int = Multipart.copy_threshold
    copy_part_size: int = Multipart.copy_part_size
    multipart_concurrency: int = Multipart.concurrency

    _store: LakeStore | None = PrivateAttr(default=None)

    @classmethod
    def from_env(cls) -> LakeResource:
        sizes = {
            field: parse_size(os.environ[var])
            for field, var in (
                ("multipart_threshold", "LAKE_MULTIPART_THRESHOLD"),
                ("multipart_part_size", "LAKE_MULTIPART_PART_SIZE"),
                ("copy_threshold", "LAKE_COPY_THRESHOLD"),
                ("copy_part_size", "LAKE_COPY_PART_SIZE"),
                ("multipart_concurrency", "LAKE_MULTIPART_CONCURRENCY"),
            )
            if os.environ.get(var)
        }
        return cls(
            root=os.environ.get("LAKE_ROOT", ".lake"),
            bucket=os.environ.get("LAKE_BUCKET") or None,
            prefix=os.environ.get("LAKE_PREFIX", ""),
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            **sizes,
        )

    @property
    def multipart(self) -> Multipart:
        return Multipart(
            threshold=self.multipart_threshold,
            part_size=self.multipart_part_size,
            copy_threshold=self.copy_threshold,
            copy_part_size=self.copy_part_size,
            concurrency=self.multipart_concurrency,
        )

    @property
    def store(self) -> LakeStore:
        if self._store is None:
            if self.bucket:
                self._store = S3Store(
                    self.bucket, self.prefix, self.endpoint_url, multipart=self.multipart
                )
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

    # ---- bytes and JSON --------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        """A whole object (``FileNotFoundError`` when missing, on both back ends)."""
        return self.store.read_bytes(validate_key(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.store.write_bytes(validate_key(key), data)

    def open_input(self, key: str) -> pa.NativeFile:
        """A random-access pyarrow file on one object: reads fetch only the ranges asked for."""
        return self.store.open_input(validate_key(key))

    def open_output(self, key: str) -> contextlib.AbstractContextManager[Any]:
        """A writable binary stream to one object, for writes larger than memory.

        ``with lake.open_output(key) as fh: fh.write(...)``: the object appears whole when the
        block exits; on an exception nothing is written (temporary file removed, multipart
        upload aborted) and the previous object, if any, is untouched.
        """
        return self.store.open_output(validate_key(key))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=2, default=str).encode())

    # ---- Parquet -----------------------------------------------------------------------------
    def parquet_files(self, key: str) -> list[str]:
        return [k for k in self.list(key) if k.endswith(".parquet")]

    @staticmethod
    def _consistently(read: Callable[[], T]) -> T:
        """Run ``read``; again (on the new version) if its object changed meanwhile."""
        attempt = 1
        while True:
            try:
                return read()
            except ObjectChangedError:
                if attempt == READ_ATTEMPTS:
                    raise
                attempt += 1

    def parquet_rows(self, key: str) -> int:
        """Rows of one Parquet object or of every ``*.parquet`` under a folder (0 if none).

        Reads only the footers: one ranged read of each file's tail.
        """
        import pyarrow.parquet as pq

        def rows(f: str) -> int:
            with self.store.open_input(f) as fh:
                return pq.ParquetFile(fh).metadata.num_rows

        return sum(self._consistently(functools.partial(rows, f)) for f in self.parquet_files(key))

    @staticmethod
    def _fragment(fh: pa.NativeFile, dictionary: Sequence[str] = ()) -> Any:
        """A dataset fragment on one open file: the footer is read once, and the pages come
        from the same open file, hence from the same version."""
        import pyarrow.dataset as ds

        fmt = ds.ParquetFileFormat(
            read_options=ds.ParquetReadOptions(dictionary_columns=list(dictionary)),
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=True),
        )
        return fmt.make_fragment(fh)

    def read_arrow(
        self,
        key: str,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        dictionary: Sequence[str] = (),
    ) -> pa.Table | None:
        """One Parquet object or every ``*.parquet`` under a folder as one Arrow table.

        Only the ``columns`` asked for are fetched, and only the row groups whose statistics
        can match ``filters`` (DNF tuples ``[("col", ">=", v), ...]`` or a pyarrow
        expression), which are then applied row by row. ``dictionary`` columns are read
        dictionary-encoded. Files whose schemas differ are unified permissively. ``None``
        when there is no Parquet file under ``key``.
        """
        import pyarrow as pa

        expression = _filter_expression(filters)
        cols = list(columns) if columns is not None else None

        def read(f: str) -> pa.Table:
            with self.store.open_input(f) as fh:
                return self._fragment(fh, dictionary).to_table(columns=cols, filter=expression)

        tables = [self._consistently(functools.partial(read, f)) for f in self.parquet_files(key)]
        if not tables:
            return None
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables, promote_options="permissive")

    def read_parquet(
        self,
        key: str,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        dictionary: Sequence[str] = (),
    ) -> pd.DataFrame:
        """``read_arrow`` as a DataFrame (empty, with ``columns``, when there is no file)."""
        import pandas as pd

        table = self.read_arrow(key, columns, filters, dictionary)
        if table is None:
            return pd.DataFrame(columns=list(columns)) if columns else pd.DataFrame()
        return table.to_pandas()

    def iter_batches(
        self,
        key: str,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        batch_size: int = 131_072,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of one Parquet object or folder, file by file (bounded memory).

        Each file is read from one version; an object replaced mid-iteration raises
        ``ObjectChangedError`` (batches already yielded cannot be taken back).
        """
        expression = _filter_expression(filters)
        cols = list(columns) if columns is not None else None
        for f in self.parquet_files(key):
            with self.store.open_input(f) as fh:
                fragment = self._fragment(fh)
                yield from fragment.to_batches(
                    columns=cols, filter=expression, batch_size=batch_size
                )

    @staticmethod
    def _parquet_key(key: str) -> str:
        key = validate_key(key)
        return key if key.endswith(".parquet") else _join(key, PART_FILE)

    def write_parquet(self, df: pd.DataFrame | pa.Table, key: str) -> str:
        """Write ``df`` to ``key`` (a ``.parquet`` object, or a folder that gets ``part-0.parquet``).

        Streams the encoded file to the lake (multipart above the threshold on S3).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = self._parquet_key(key)
        table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
        with self.open_output(key) as sink:
            pq.write_table(table, sink, compression="zstd")
        return key

    def write_parquet_batches(
        self,
        key: str,
        batches: Iterable[pa.RecordBatch | pa.Table | pd.DataFrame],
        schema: pa.Schema | None = None,
        row_group_rows: int = 1_048_576,
    ) -> ParquetWritten:
        """Stream record batches, tables or DataFrames into one Parquet object.

        Memory holds one row group (``row_group_rows``, gathered from the batches) plus the
        upload buffer, whatever the total. ``schema`` defaults to the first batch's; later
        batches are cast to it. Atomic like every write: on an exception from the iterator or
        the writer, nothing is written.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = self._parquet_key(key)

        def as_table(item: Any, target: pa.Schema | None) -> pa.Table:
            if isinstance(item, pa.RecordBatch):
                table = pa.Table.from_batches([item])
            elif isinstance(item, pa.Table):
                table = item
            else:
                table = pa.Table.from_pandas(item, schema=target, preserve_index=False)
            if target is not None and not table.schema.equals(target, check_metadata=False):
                table = table.select(target.names).cast(target)
            return table

        rows = groups = 0
        pending: list[pa.Table] = []
        with self.open_output(key) as sink:
            writer: pq.ParquetWriter | None = None

            def write(table: pa.Table) -> None:
                nonlocal rows, groups
                assert writer is not None
                writer.write_table(table, row_group_size=row_group_rows)
                rows += table.num_rows
                groups += -(-table.num_rows // row_group_rows)

            try:
                buffered = 0
                for item in batches:
                    table = as_table(item, schema)
                    if writer is None:
                        schema = table.schema if schema is None else schema
                        writer = pq.ParquetWriter(sink, schema, compression="zstd")
                    if table.num_rows == 0:
                        continue
                    pending.append(table)
                    buffered += table.num_rows
                    if buffered >= row_group_rows:  # write whole row groups, keep the rest
                        table = pa.concat_tables(pending)
                        full = buffered - buffered % row_group_rows
                        write(table.slice(0, full))
                        pending[:] = [table.slice(full)] if buffered > full else []
                        buffered -= full
                if writer is None:
                    if schema is None:
                        raise ValueError(f"no batches and no schema for {key}")
                    writer = pq.ParquetWriter(sink, schema, compression="zstd")
                if pending:
                    write(pa.concat_tables(pending))
            finally:
                if writer is not None:
                    writer.close()
            size = sink.tell()
        return ParquetWritten(key, rows, groups, size)

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
        replaced in one atomic step (a rename locally; on S3 a CopyObject, or a multipart copy
        whose completion swaps the object), so readers never see a partial partition.
        """
        staged, prod, bak = (
            _join(validate_key(k), PART_FILE) for k in (staging, production, backup)
        )
        if not self.store.exists(staged):
            raise FileNotFoundError(f"nothing staged at {self.uri(staged)}")
        had_previous = self.store.exists(prod)
        if had_previous:
            self.store.copy_object(prod, bak)
        self.store.move_object(staged, prod)
        self.delete(staging)
        return {"published": self.uri(prod), "backup": self.uri(bak) if had_previous else None}

    def restore(self, production: str, backup: str) -> str:
        """Roll a published partition back to its backup (atomic, like publish)."""
        prod, bak = (_join(validate_key(k), PART_FILE) for k in (production, backup))
        if not self.store.exists(bak):
            raise FileNotFoundError(f"no backup at {self.uri(bak)}")
        self.store.copy_object(bak, prod)
        return self.uri(prod)
