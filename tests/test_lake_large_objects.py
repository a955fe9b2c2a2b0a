"""Objects larger than the lake's multipart thresholds, on both back ends.

The thresholds are set small (256 KiB, parts of 128 KiB) so that megabyte objects take the
paths a many-gigabyte partition takes in production: multipart upload, multipart copy
(UploadPartCopy) on publish, range reads of footers, columns and row groups. S3 is moto's
server over HTTP, started here with a 64 KiB minimum part size (S3's is 5 MiB), behind a
recording proxy: the tests assert on the requests and bytes that actually crossed the wire.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from resources.lake import GiB, LakeResource, MiB, ObjectChangedError, parse_size
from tests.conftest import free_port, wait_for_port

KiB = 1024
SIZES = {
    "multipart_threshold": 256 * KiB,
    "multipart_part_size": 128 * KiB,
    "copy_threshold": 256 * KiB,
    "copy_part_size": 128 * KiB,
}
DAY = "date=2024-01-01"


# ---- moto with small parts, behind a proxy that records every request -------------------------
@dataclass
class Call:
    method: str
    key: str  # bucket/key
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased
    status: int
    sent: int  # request body bytes
    received: int  # response body bytes


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.url = ""

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()

    def find(self, method: str, key: str = "", *query: str) -> list[Call]:
        """Calls of ``method`` on objects whose key contains ``key``, with ``query`` params."""
        with self.lock:
            return [
                c
                for c in self.calls
                if c.method == method and key in c.key and all(q in c.query for q in query)
            ]

    def bytes_received(self, key: str) -> int:
        return sum(c.received for c in self.find("GET", key))


@pytest.fixture(scope="module")
def small_part_moto() -> Iterator[str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(64 * KiB)}
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def recording_proxy(small_part_moto: str) -> Iterator[Recorder]:
    recorder = Recorder()
    upstream = urlsplit(small_part_moto)
    local = threading.local()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered here

        def forward(self) -> None:
            assert "chunked" not in self.headers.get("Transfer-Encoding", "")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
            if not hasattr(local, "conn"):
                local.conn = http.client.HTTPConnection(upstream.hostname, upstream.port)
            local.conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = local.conn.getresponse()
            data = resp.read()
            url = urlsplit(self.path)
            with recorder.lock:
                recorder.calls.append(
                    Call(
                        self.command,
                        unquote(url.path).lstrip("/"),
                        parse_qs(url.query, keep_blank_values=True),
                        {k.lower(): v for k, v in self.headers.items()},
                        resp.status,
                        len(body),
                        len(data),
                    )
                )
            self.send_response_only(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def recorder(lake: LakeResource, request: pytest.FixtureRequest) -> Recorder | None:
    """The S3 request log (None on the local back end)."""
    return request.getfixturevalue("recording_proxy") if lake.backend == "s3" else None


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeResource:
    if request.param == "local":
        return LakeResource(root=str(tmp_path / "lake"), **SIZES)
    proxy: Recorder = request.getfixturevalue("recording_proxy")
    bucket = f"big-{uuid.uuid4().hex[:12]}"
    s3(request).create_bucket(Bucket=bucket)
    proxy.clear()
    return LakeResource(bucket=bucket, prefix="platform", endpoint_url=proxy.url, **SIZES)


def s3(request: pytest.FixtureRequest) -> Any:
    """A boto3 client straight to moto (its calls are not recorded)."""
    return boto3.client("s3", endpoint_url=request.getfixturevalue("small_part_moto"))


# ---- helpers ------------------------------------------------------------------------------
class CountingFiles:
    """Stands in for the local store's ``LocalFileSystem``: counts the bytes readers pull."""

    def __init__(self, base: pafs.FileSystem) -> None:
        self.base = base
        self.read = 0
        self.lock = threading.Lock()

    def open_input_file(self, path: str) -> pa.NativeFile:
        files, inner = self, self.base.open_input_file(path)

        class Counting:
            closed = False

            def read(self, n: int = -1) -> bytes:
                data = inner.read(n)
                with files.lock:
                    files.read += len(data)
                return data

            def seek(self, pos: int, whence: int = 0) -> int:
                return inner.seek(pos, whence)

            def tell(self) -> int:
                return inner.tell()

            def readable(self) -> bool:
                return True

            def seekable(self) -> bool:
                return True

            def close(self) -> None:
                self.closed = True
                inner.close()

        return pa.PythonFile(Counting(), mode="r")


class BytesRead:
    """Bytes a lake's readers fetched for one key: the wire on S3, a counting file locally."""

    def __init__(self, lake: LakeResource, recorder: Recorder | None) -> None:
        self.lake, self.recorder = lake, recorder
        if recorder is None:
            self.files = CountingFiles(lake.store.filesystem)  # type: ignore[attr-defined]
            lake.store.filesystem = self.files  # type: ignore[attr-defined]

    def reset(self) -> None:
        if self.recorder is None:
            self.files.read = 0
        else:
            self.recorder.clear()

    def of(self, key: str) -> int:
        if self.recorder is None:
            return self.files.read
        return self.recorder.bytes_received(key)


def size_of(lake: LakeResource, key: str) -> int:
    if lake.backend == "local":
        return Path(lake.uri(key)).stat().st_size
    return lake.store.client.head_object(Bucket=lake.bucket, Key=f"platform/{key}")["ContentLength"]


def etag(lake: LakeResource, key: str) -> str:
    return lake.store.client.head_object(Bucket=lake.bucket, Key=f"platform/{key}")["ETag"]


def leftovers(lake: LakeResource, request: pytest.FixtureRequest) -> list[str]:
    """Temporary files (local) or unfinished multipart uploads (S3) left in the lake."""
    if lake.backend == "local":
        root = Path(lake.root)
        return [p.name for p in root.rglob("*") if p.name.startswith(".tmp-")]
    uploads = s3(request).list_multipart_uploads(Bucket=lake.bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


def random_frame(rows: int, seed: int = 0, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "row": np.arange(start, start + rows, dtype=np.int64),
            "device_id": rng.integers(0, 1_000, rows).astype(str),
            "lat": rng.uniform(-90, 90, rows),
            "lon": rng.uniform(-180, 180, rows),
        }
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- tests -------------------------------------------------------------------------------
def test_write_above_the_threshold_goes_up_in_parts(
    lake: LakeResource, recorder: Recorder | None, request: pytest.FixtureRequest
) -> None:
    data = os.urandom(MiB + 3)
    lake.write_bytes("blobs/big.bin", data)
    lake.write_bytes("blobs/small.bin", b"x" * 1000)
    assert lake.read_bytes("blobs/big.bin") == data
    with lake.open_input("blobs/big.bin") as fh:  # random access: only the ranges asked for
        assert fh.size() == len(data)
        assert fh.read_at(100, 500_000) == data[500_000:500_100]
    assert leftovers(lake, request) == []
    if recorder is not None:
        parts = recorder.find("PUT", "blobs/big.bin", "partNumber")
        sizes = sorted((int(c.query["partNumber"][0]), c.sent) for c in parts)  # sent in parallel
        assert sizes == [(n, 128 * KiB) for n in range(1, 9)] + [(9, 3)]
        assert etag(lake, "blobs/big.bin").endswith('-9"')
        assert len(recorder.find("PUT", "blobs/small.bin")) == 1  # below the threshold: one PUT
        gets = recorder.find("GET", "blobs/big.bin")
        # read_bytes: one GET; open_input: the tail (a Parquet footer) then the range asked for
        assert [c.received for c in gets] == [len(data), 64 * KiB, 100]


def test_streaming_write_of_many_batches_never_holds_the_object(
    lake: LakeResource, recorder: Recorder | None
) -> None:
    key = f"staging/pings/{DAY}"
    part_key = f"{key}/part-0.parquet"
    n_batches, rows = 40, 4_000
    seen_before_end: dict[str, Any] = {}

    def batches() -> Iterator[pa.RecordBatch | pd.DataFrame]:
        for i in range(n_batches):
            df = random_frame(rows, seed=i, start=i * rows)
            yield df if i % 2 else pa.RecordBatch.from_pandas(df, preserve_index=False)
            if i == 35:  # most of the object is written: is anything visible, did parts leave?
                seen_before_end["visible"] = lake.exists(key)
                if recorder is None:
                    tmp = list(Path(lake.uri(key)).glob(".tmp-*"))
                    seen_before_end["on_disk"] = tmp[0].stat().st_size if tmp else 0
                else:
                    seen_before_end["on_disk"] = sum(
                        c.sent for c in recorder.find("PUT", part_key, "partNumber")
                    )

    written = lake.write_parquet_batches(key, batches(), row_group_rows=32_000)
    total = n_batches * rows
    assert written == (part_key, total, 5, size_of(lake, part_key))
    assert seen_before_end["visible"] is False
    assert seen_before_end["on_disk"] > written.bytes * 0.4  # streamed out while writing
    meta = pq.ParquetFile(lake.open_input(part_key)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [32_000] * 4 + [
        total - 4 * 32_000
    ]
    back = lake.read_parquet(key)
    assert back["row"].tolist() == list(range(total))
    pd.testing.assert_frame_equal(
        back.iloc[-rows:].reset_index(drop=True),
        random_frame(rows, n_batches - 1, start=total - rows),
    )
    if recorder is not None:
        assert etag(lake, part_key).endswith(f'-{-(-written.bytes // (128 * KiB))}"')


@pytest.mark.parametrize("failure", ["iterator", "interrupt", "bad-batch", "raw-stream"])
def test_failed_write_leaves_nothing_behind_and_keeps_the_old_object(
    lake: LakeResource, failure: str, request: pytest.FixtureRequest
) -> None:
    key = f"curated/pings/{DAY}/part-0.parquet"
    old = random_frame(10)
    lake.write_parquet(old, key)

    def batches() -> Iterator[pd.DataFrame]:
        for i in range(20):  # about 1.4 MB: on S3 the multipart upload has started
            yield random_frame(3_000, seed=i)
        if failure == "iterator":
            raise RuntimeError("upstream broke")
        if failure == "interrupt":
            raise KeyboardInterrupt
        yield pd.DataFrame({"row": ["not a number"], "lat": [0.0]})

    expected = {"iterator": RuntimeError, "interrupt": KeyboardInterrupt}.get(failure, Exception)
    with pytest.raises(expected):
        if failure == "raw-stream":
            with lake.open_output(key) as fh:
                fh.write(os.urandom(600 * KiB))
                raise OSError("disk full")
        else:
            lake.write_parquet_batches(key, batches())
    pd.testing.assert_frame_equal(lake.read_parquet(key), old)
    assert lake.list("curated") == [key]
    assert leftovers(lake, request) == []


def test_row_count_reads_only_the_footers(lake: LakeResource, recorder: Recorder | None) -> None:
    folder = f"raw/pings/{DAY}"
    for i, rows in enumerate((80_000, 20_000)):
        table = pa.Table.from_pandas(random_frame(rows, seed=i), preserve_index=False)
        with lake.open_output(f"{folder}/f{i}.parquet") as fh:
            pq.write_table(table, fh, row_group_size=10_000)
    size = sum(size_of(lake, f) for f in lake.parquet_files(folder))
    assert size > 2 * MiB
    read = BytesRead(lake, recorder)
    read.reset()
    assert lake.parquet_rows(f"{folder}/f0.parquet") == 80_000
    assert lake.parquet_rows(folder) == 100_000
    assert lake.parquet_rows("raw/pings/date=2024-01-02") == 0
    footer_bytes = read.of(folder)
    assert 0 < footer_bytes < 3 * 64 * KiB + 3 * 8 * KiB  # one footer-sized tail per file read
    read.reset()
    assert len(lake.read_bytes(f"{folder}/f0.parquet")) == read.of(folder) > MiB


def test_column_and_row_group_reads_fetch_only_what_they_need(
    lake: LakeResource, recorder: Recorder | None
) -> None:
    key = f"curated/visits/{DAY}/part-0.parquet"
    rows_per_day, days = 12_000, 8
    rng = np.random.default_rng(1)
    table = pa.table(
        {
            "day": np.repeat(np.arange(days), rows_per_day),
            "small": np.ones(days * rows_per_day, dtype=np.int8),
            "payload": rng.random(days * rows_per_day),
        }
    )
    with lake.open_output(key) as fh:
        pq.write_table(table, fh, row_group_size=rows_per_day)
    size = size_of(lake, key)
    read = BytesRead(lake, recorder)

    read.reset()
    small = lake.read_parquet(key, columns=["small"])
    assert list(small.columns) == ["small"] and len(small) == days * rows_per_day
    assert read.of(key) < size * 0.1

    read.reset()
    day3 = lake.read_parquet(key, filters=[("day", "=", 3)])
    assert len(day3) == rows_per_day and set(day3["day"]) == {3}
    assert read.of(key) < size * 2 / days  # one row group (of eight) and the footer

    read.reset()
    batches = list(lake.iter_batches(key, columns=["payload"], filters=[("day", ">=", 6)]))
    assert sum(b.num_rows for b in batches) == 2 * rows_per_day
    assert read.of(key) < size * 3 / days


def test_publish_of_a_large_partition_is_a_multipart_copy(
    lake: LakeResource, recorder: Recorder | None, request: pytest.FixtureRequest
) -> None:
    staging, production, backup = (f"{root}/visits/{DAY}" for root in ("staging", "curated", "bak"))
    part = f"{production}/part-0.parquet"
    old, new = random_frame(12_000, seed=1), random_frame(15_000, seed=2)
    for df in (old, new):
        lake.write_parquet(df, staging)
        assert size_of(lake, f"{staging}/part-0.parquet") > SIZES["copy_threshold"]
        if recorder is not None:
            recorder.clear()
        out = lake.publish(staging, production, backup)
    assert out == {"published": lake.uri(part), "backup": lake.uri(f"{backup}/part-0.parquet")}
    pd.testing.assert_frame_equal(lake.read_parquet(production), new)
    pd.testing.assert_frame_equal(lake.read_parquet(backup), old)
    assert not lake.exists(staging)
    assert leftovers(lake, request) == []
    if recorder is not None:
        copies = recorder.find("PUT", part, "partNumber")
        assert len(copies) > 1 and all("x-amz-copy-source-range" in c.headers for c in copies)
        assert not [c for c in recorder.find("PUT", part) if "partNumber" not in c.query]
        assert etag(lake, part).endswith(f'-{len(copies)}"')
    lake.restore(production, backup)
    pd.testing.assert_frame_equal(lake.read_parquet(production), old)


def test_readers_see_the_old_or_the_new_partition_during_large_publishes(
    lake: LakeResource,
) -> None:
    """Whole-object reads and multi-request Parquet reads race three large publishes."""
    staging, production, backup = (f"{root}/t/{DAY}" for root in ("staging", "curated", "bak"))
    versions = [random_frame(12_000, seed=s) for s in (1, 2)]
    lake.write_parquet(versions[0], production)
    expected = set()
    for df in versions:
        lake.write_parquet(df, staging)
        expected.add(digest(lake.read_bytes(f"{staging}/part-0.parquet")))
    lake.delete("staging")
    seen: list[str] = []
    frames: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def whole_objects() -> None:
        while not stop.wait(0.002):
            try:
                seen.append(digest(lake.read_bytes(f"{production}/part-0.parquet")))
            except BaseException as exc:  # any failed read fails the test
                errors.append(exc)

    def parquet_reads() -> None:  # footer, then column ranges: several requests per read
        while not stop.wait(0.002):
            try:
                df = lake.read_parquet(production, columns=["row", "lat", "lon"])
                assert lake.parquet_rows(production) == 12_000
                frames.append(next(i for i, v in enumerate(versions) if df.equals(v[df.columns])))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=t) for t in (whole_objects, parquet_reads)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 4):
            lake.write_parquet(versions[i % 2], staging)
            lake.publish(staging, production, backup)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert seen and set(seen) <= expected
    assert frames and set(frames) <= {0, 1}


def test_a_range_read_never_mixes_two_versions(
    lake: LakeResource, request: pytest.FixtureRequest
) -> None:
    """An open object stays the version it was opened on, or the read fails; never a mix."""
    key = "blobs/b.bin"
    first, second = os.urandom(512 * KiB), os.urandom(512 * KiB)
    lake.write_bytes(key, first)
    with lake.open_input(key) as fh:
        tail = fh.read_at(100, len(first) - 100)  # on S3: served from the tail fetched on open
        lake.write_bytes(key, second)
        assert tail == first[-100:]
        if lake.backend == "local":  # the open file keeps the replaced inode
            assert fh.read_at(100, 0) == first[:100]
        else:
            with pytest.raises(ObjectChangedError):
                fh.read_at(100, 0)
    assert lake.read_bytes(key) == second


@pytest.mark.parametrize("failing_step", ["backup", "production"])
def test_a_failed_publish_leaves_production_and_no_debris(
    lake: LakeResource,
    failing_step: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging, production, backup = (f"{root}/t/{DAY}" for root in ("staging", "curated", "bak"))
    failing = f"{production if failing_step == 'production' else backup}/part-0.parquet"
    old, new = random_frame(12_000, seed=1), random_frame(12_000, seed=2)
    lake.write_parquet(old, production)
    lake.write_parquet(new, staging)
    if lake.backend == "local":
        real_replace = os.replace

        def replace(src: str, dst: str) -> None:  # the copy is written, its rename fails
            if str(dst).endswith(failing):
                raise OSError("input/output error")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    else:
        client = lake.store.client
        real_copy = client.upload_part_copy

        def copy_part(**kw: Any) -> Any:  # the third range of the copy fails
            if kw["Key"].endswith(failing) and kw["PartNumber"] == 3:
                raise ConnectionError("connection reset by peer")
            return real_copy(**kw)

        monkeypatch.setattr(client, "upload_part_copy", copy_part)
    with pytest.raises(OSError):
        lake.publish(staging, production, backup)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(lake.read_parquet(production), old)
    pd.testing.assert_frame_equal(lake.read_parquet(staging), new)
    assert leftovers(lake, request) == []


def test_sizes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_MULTIPART_THRESHOLD", "256KiB")
    monkeypatch.setenv("LAKE_MULTIPART_PART_SIZE", "128k")
    monkeypatch.setenv("LAKE_COPY_THRESHOLD", "5GB")
    monkeypatch.setenv("LAKE_COPY_PART_SIZE", str(64 * MiB))
    lake = LakeResource.from_env()
    assert lake.multipart.threshold == 256 * KiB
    assert lake.multipart.part_size == 128 * KiB
    assert lake.multipart.copy_threshold == 5 * GiB
    assert lake.multipart.copy_part_size == 64 * MiB
    assert lake.multipart.concurrency == 4
    assert lake.multipart.sized(100 * GiB, 5 * MiB) == -(-100 * GiB // 10_000)
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_whole_object_reads_are_one_request_and_missing_objects_raise(
    lake: LakeResource, recorder: Recorder | None
) -> None:
    lake.write_bytes("a.bin", b"abc")
    with pytest.raises(FileNotFoundError):
        lake.read_bytes("missing.bin")
    with pytest.raises(FileNotFoundError):
        lake.open_input("missing.bin")
    lake.write_bytes("empty.bin", b"")
    with lake.open_input("empty.bin") as fh:
        assert fh.size() == 0 and fh.read() == b""
    if recorder is not None:
        recorder.clear()
        assert lake.read_bytes("a.bin") == b"abc"
        assert [c.method for c in recorder.calls] == ["GET"]  # one request: one version
