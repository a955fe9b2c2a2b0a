"""Publish a table to a Redis hash with zero downtime: staging key, audit, atomic swap.

Redis side of write-audit-publish (see ``publishing/wap.py``):

1. **stage**: the new version is written to ``<key>:staging:<token>`` with pipelined ``HSET``
   batches (plus a 1-day expiry so an abandoned stage cleans itself up); the live hash is not
   touched, readers keep being served the old version.
2. **verify**: the staged hash must hold exactly the rows of the audited frame (``HLEN``) and
   sampled fields must match what was written.
3. **swap**: one Lua script (atomic: no other command runs in between) drops the previous
   backup with ``UNLINK`` (freed in the background), ``RENAME``s live -> ``<key>:backup`` and
   staging -> live, and rewrites ``<key>:meta`` (``date``, ``published_at``, ``rows``, ...).
   A reader therefore sees the complete old version or the complete new one; never an empty,
   missing or half-written hash. The previous meta is kept as ``<key>:backup:meta``.
4. **restore**: the same kind of script swaps live and backup (hash and meta), so running it
   twice undoes itself.

A stage for a date older than the live one is not published (a backfill must not replace
newer serving data); the swap script reports it as ``skipped``. A stage whose rows are those
live already (``:meta`` ``content``, the digest of the audited rows) is dropped instead of
swapped (``unchanged``): the backup keeps the version production held before, never a second
copy of the live one.

**At scale** (10 M fields): an encoder built by ``json_rows`` builds every field and JSON value
with Arrow compute kernels (no Python loop per row), and ``stage`` writes them as raw RESP
``HSET`` commands of ``pipeline_rows`` fields each, cut from one Arrow buffer and sent back to
back on one connection (the replies are read at the end of each window of
``pipeline_depth`` commands). Other encoders go through redis-py's pipeline as before.

**Converging after a crash or a lost reply** (with ``publishing.wap``'s journal): ``publish``
writes the stage's ``version`` (the publish's token) and ``content`` into ``:meta`` in the same
atomic script as the swap, so ``live_version`` tells whether a swap whose reply was lost ran;
``journal_entry`` / ``state_of`` / ``complete`` / ``undo`` let the next run finish or undo an
interrupted publish from the journal alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import redis

from publishing.wap import Audit

STAGING_TTL_S = 24 * 3600

_SWAP = """
local live, staging, backup, meta, backup_meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local expected_rows, date = tonumber(ARGV[1]), ARGV[2]
if redis.call('EXISTS', staging) == 0 then
  return redis.error_reply('WAP nothing staged at ' .. staging)
end
local staged = redis.call('HLEN', staging)
if staged ~= expected_rows then
  return redis.error_reply('WAP staged ' .. staged .. ' rows, expected ' .. expected_rows)
end
local live_date = redis.call('HGET', meta, 'date')
if date ~= '' and live_date and live_date > date then
  redis.call('UNLINK', staging)
  return {'skipped', live_date}
end
local content = ARGV[3]
if content ~= '' and redis.call('HGET', meta, 'content') == content
   and (live_date or '') == date and redis.call('EXISTS', live) == 1 then
  redis.call('UNLINK', staging)
  return {'unchanged', live_date or ''}
end
redis.call('UNLINK', backup)
if redis.call('EXISTS', live) == 1 then
  redis.call('RENAME', live, backup)
end
if redis.call('EXISTS', meta) == 1 then
  redis.call('RENAME', meta, backup_meta)
else
  redis.call('UNLINK', backup_meta)
end
redis.call('RENAME', staging, live)
redis.call('PERSIST', live)
for i = 4, #ARGV, 2 do
  redis.call('HSET', meta, ARGV[i], ARGV[i + 1])
end
return {'published', live_date or ''}
"""

_RESTORE = """
local live, backup, meta, backup_meta, tmp = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', backup) == 0 then
  return redis.error_reply('WAP no backup at ' .. backup)
end
if redis.call('EXISTS', live) == 1 then
  redis.call('RENAME', live, tmp)
  redis.call('RENAME', backup, live)
  redis.call('RENAME', tmp, backup)
else
  redis.call('RENAME', backup, live)
end
local has_meta, has_backup_meta = redis.call('EXISTS', meta), redis.call('EXISTS', backup_meta)
if has_meta == 1 and has_backup_meta == 1 then
  redis.call('RENAME', meta, tmp)
  redis.call('RENAME', backup_meta, meta)
  redis.call('RENAME', tmp, backup_meta)
elseif has_backup_meta == 1 then
  redis.call('RENAME', backup_meta, meta)
elseif has_meta == 1 then
  redis.call('RENAME', meta, backup_meta)
end
redis.call('HSET', meta, 'restored_at', ARGV[1])
return redis.call('HLEN', live)
"""

Encoder = Callable[[pd.DataFrame, str | None], Iterable[tuple[str, str]]]


def partition_day(partition: str | None) -> str | None:
    """``date=2024-01-05`` (a lake partition folder) or ``2024-01-05`` -> ``2024-01-05``."""
    return partition.split("=", 1)[-1] if partition else None


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class RedisHashTarget:
    """A write-audit-publish target that serves a table as one Redis hash (see module doc).

    ``encode(df, day)`` yields ``(field, value)`` pairs, one per row of the audited frame (an
    encoder from ``json_rows`` also builds them as Arrow arrays, the fast path).
    The partition (``date=YYYY-MM-DD`` or ``YYYY-MM-DD``) is recorded as the hash's ``date``.
    """

    client: redis.Redis
    key: str
    encode: Encoder
    batch_size: int = 10_000
    name: str = "redis"
    meta_extra: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    content: str = ""
    pipeline_rows: int = 20_000
    pipeline_depth: int = 16
    _staged_rows: int | None = field(default=None, init=False, repr=False)
    _sample: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)
    _partition: str | None = field(default=None, init=False, repr=False)

    @property
    def staging_key(self) -> str:
        """``<key>:staging:<day>:<token>`` (``<key>:staging:<token>`` before a day is staged):
        the day lets the next publisher of that day clear what a crashed one left."""
        day = f"{self._partition}:" if self._partition else ""
        return f"{self.key}:staging:{day}{self.token}"

    def clear_stale(self, partition: str | None) -> int:
        """Drop every stage of ``partition``'s day (call holding that partition's publish
        lock, before staging): what crashed publishers of that day left behind."""
        day = partition_day(partition)
        if not day:
            return 0
        stale = list(self.client.scan_iter(match=f"{self.key}:staging:{day}:*", count=1000))
        return int(self.client.unlink(*stale)) if stale else 0

    @property
    def backup_key(self) -> str:
        return f"{self.key}:backup"

    @property
    def meta_key(self) -> str:
        return f"{self.key}:meta"

    @property
    def backup_meta_key(self) -> str:
        return f"{self.key}:backup:meta"

    @property
    def check_name(self) -> str:
        return f"{self.name}_staged_complete"

    @property
    def description(self) -> str:
        return f"The staged Redis hash {self.key} holds exactly the audited rows."

    def prepare(self, version: str, content: str) -> None:
        """Name the next stage after the publish's ``version``; ``content``: the rows' digest."""
        self.token, self.content = version, content

    def stage(self, df: pd.DataFrame, partition: str | None) -> dict[str, Any]:
        """Write every row to the staging key (pipelined batches); live is untouched."""
        partition = partition_day(partition)
        self._partition = partition
        self.client.unlink(self.staging_key)
        arrow = getattr(self.encode, "arrow", None)
        if arrow is not None:
            fields, values = arrow(df, partition)
            rows = self._hset_arrow(fields, values)
            n = min(5, rows)
            self._sample = list(
                zip(fields.slice(0, n).to_pylist(), values.slice(0, n).to_pylist(), strict=True)
            )
        else:
            rows = self._hset_pairs(self.encode(df, partition))
        self._staged_rows = rows
        return {"redis_staging_key": self.staging_key, "redis_staged_rows": rows}

    def _hset_pairs(self, pairs: Iterable[tuple[str, str]]) -> int:
        rows = 0
        batch: dict[str, str] = {}
        self._sample = []
        pipe = self.client.pipeline(transaction=False)
        for f, v in pairs:
            batch[f] = v
            rows += 1
            if len(self._sample) < 5:
                self._sample.append((f, v))
            if len(batch) >= self.batch_size:
                pipe.hset(self.staging_key, mapping=batch)
                pipe.expire(self.staging_key, STAGING_TTL_S)
                pipe.execute()
                batch = {}
        if batch:
            pipe.hset(self.staging_key, mapping=batch)
            pipe.expire(self.staging_key, STAGING_TTL_S)
            pipe.execute()
        return rows

    def _hset_arrow(self, fields: Any, values: Any) -> int:
        """Raw RESP ``HSET`` commands built by Arrow kernels, pipelined on one connection."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(fields)
        if n == 0:
            return 0
        if fields.null_count or values.null_count:
            raise ValueError(f"{self.key}: null fields or values cannot be staged")

        def length(a: Any) -> Any:
            return pc.cast(pc.binary_length(a), pa.string())

        rows = pc.binary_join_element_wise(
            "$", length(fields), "\r\n", fields, "\r\n$", length(values), "\r\n", values, "\r\n", ""
        )
        rows = pc.cast(rows, pa.large_string())
        if isinstance(rows, pa.ChunkedArray):
            rows = rows.combine_chunks()
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[
            rows.offset : rows.offset + n + 1
        ]
        data = memoryview(rows.buffers()[2])
        key = self.staging_key.encode()
        expire_cmd = b"*3\r\n$6\r\nEXPIRE\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n" % (
            len(key),
            key,
            len(str(STAGING_TTL_S)),
            STAGING_TTL_S,
        )
        step = max(1, self.pipeline_rows)
        conn = self.client.connection_pool.get_connection()
        try:
            pending = 0
            for start in range(0, n, step):
                stop = min(start + step, n)
                header = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (
                    2 + 2 * (stop - start),
                    len(key),
                    key,
                )
                conn.send_packed_command(
                    [header, data[offsets[start] : offsets[stop]], expire_cmd], check_health=False
                )
                pending += 2
                if pending >= 2 * self.pipeline_depth:
                    self._drain(conn, pending)
                    pending = 0
            self._drain(conn, pending)
        except BaseException:
            conn.disconnect()  # replies may be left unread: never hand this connection back
            raise
        finally:
            self.client.connection_pool.release(conn)
        return n

    @staticmethod
    def _drain(conn: Any, pending: int) -> None:
        error = None
        for _ in range(pending):
            try:
                conn.read_response()
            except redis.ResponseError as exc:  # read every reply, then fail
                error = error or exc
        if error is not None:
            raise error

    def verify(self, df: pd.DataFrame) -> Audit:
        """Audit the staged copy itself: row count and sampled values."""
        staged = int(self.client.hlen(self.staging_key))
        expected = self._staged_rows if self._staged_rows is not None else len(df)
        mismatched = [
            f for f, v in self._sample if _text(self.client.hget(self.staging_key, f)) != v
        ]
        ok = staged == expected == len(df) and not mismatched and staged > 0
        if staged != len(df) or expected != len(df):
            detail = f"staged {staged} of {len(df)} rows"
        elif not staged:
            detail = "nothing to publish: an empty serving hash would be an outage"
        else:
            detail = "sampled values differ" if mismatched else f"all {staged} rows staged"
        return Audit(
            self.check_name,
            ok,
            detail,
            {
                "staged_rows": staged,
                "expected_rows": len(df),
                "mismatched_samples": len(mismatched),
            },
        )

    def publish(self, partition: str | None) -> dict[str, Any]:
        """Swap staging -> live and live -> backup atomically, and rewrite the meta hash."""
        return self._swap(
            self.staging_key,
            partition_day(partition),
            self._staged_rows or 0,
            self.token,
            self.content,
        )

    def _swap(
        self, staging_key: str, partition: str | None, rows: int, version: str, content: str
    ) -> dict[str, Any]:
        meta = {
            "date": partition or "",
            "published_at": utc_now_iso(),
            "rows": str(rows),
            "version": version,
            **({"content": content} if content else {}),
            **self.meta_extra,
        }
        args: list[Any] = [rows, partition or "", content]
        for k, v in meta.items():
            args += [k, v]
        keys = [self.key, staging_key, self.backup_key, self.meta_key, self.backup_meta_key]
        status, previous = self.client.register_script(_SWAP)(keys=keys, args=args)
        status, previous = _text(status), _text(previous)
        if status == "skipped":
            return {"redis": f"skipped: {self.key} already serves {previous}"}
        if status == "unchanged":
            return {"redis": f"unchanged: {self.key} already serves these rows ({previous})"}
        return {"redis": f"{self.key} <- {partition} ({rows} rows)", "redis_previous": previous}

    def discard(self) -> None:
        self.client.unlink(self.staging_key)

    def restore(self) -> int:
        """Swap live and backup (hash and meta) atomically; returns the restored row count."""
        return restore_hash(self.client, self.key)

    # ---- reading the state back; the journal -----------------------------------------------
    def live_version(self) -> dict[str, str]:
        """``version``, ``content``, ``date`` of what the live hash serves ({} when none)."""
        meta = self.client.hgetall(self.meta_key)
        return {_text(k): _text(v) for k, v in meta.items()}

    def journal_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "staging_key": self.staging_key,
            "version": self.token,
            "content": self.content,
            "rows": self._staged_rows or 0,
            "date": self._partition or "",
        }

    def state_of(self, entry: dict[str, Any]) -> str:
        """``published`` (live holds it, its rows, or a newer day), ``staged`` (complete stage
        still there) or ``missing``."""
        live = self.live_version()
        if live.get("version") == entry["version"]:
            return "published"
        same_day = live.get("date", "") == entry.get("date", "")
        if entry.get("content") and live.get("content") == entry["content"] and same_day:
            return "published"
        if entry.get("date") and live.get("date", "") > entry["date"]:
            return "published"  # superseded by a newer day: the swap would skip it anyway
        if int(self.client.hlen(entry["staging_key"])) == int(entry["rows"]) > 0:
            return "staged"
        return "missing"

    def complete(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Swap in the stage an interrupted publish left (``state_of(entry) == 'staged'``)."""
        return self._swap(
            entry["staging_key"],
            entry.get("date") or None,
            int(entry["rows"]),
            entry["version"],
            entry.get("content", ""),
        )

    def undo(self, entry: dict[str, Any]) -> str:
        """Put back what live held before ``entry`` was published (if it was), drop its stage."""
        self.client.unlink(entry["staging_key"])
        if self.live_version().get("version") == entry["version"]:
            if self.client.exists(self.backup_key):
                restore_hash(self.client, self.key)
                return f"{self.key} restored to its backup"
            return f"{self.key} holds {entry['version']} and has no backup to go back to"
        return f"{self.key} untouched"


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def restore_hash(client: redis.Redis, key: str) -> int:
    """Roll ``key`` back to ``<key>:backup`` atomically (a swap: running it twice undoes it)."""
    keys = [key, f"{key}:backup", f"{key}:meta", f"{key}:backup:meta", f"{key}:restore:tmp"]
    return int(client.register_script(_RESTORE)(keys=keys, args=[utc_now_iso()]))


def _strings(values: pd.Series) -> Any:
    """A column of Python/Arrow strings as an Arrow string array (converted in C), or None
    when it holds anything else (bytes, numbers, mixed objects)."""
    import pyarrow as pa

    try:
        return pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _json_array(values: pd.Series) -> Any:
    """JSON literals of a column as an Arrow string array, built by Arrow kernels.

    Integers and booleans become JSON integers (as before), floats numbers (non-finite:
    ``null``), strings quoted and escaped; other types fall back to ``json.dumps`` per value.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        arr = pa.array(values, from_pandas=True)
        if pa.types.is_boolean(arr.type):
            arr = pc.cast(arr, pa.int64())
        return pc.fill_null(pc.cast(arr, pa.string()), "null")
    if pd.api.types.is_float_dtype(values):
        arr = pa.array(values.to_numpy(dtype="float64", na_value=np.nan))
        text = pc.cast(arr, pa.string())
        return pc.if_else(pc.is_finite(arr), text, pa.scalar("null"))
    arr = _strings(values) if pd.api.types.is_string_dtype(values) else None
    if arr is not None:
        if pc.any(pc.match_substring_regex(arr, r"[\x00-\x1f]")).as_py():
            return pa.array([json.dumps(v) for v in values.tolist()], type=pa.string())
        escaped = pc.replace_substring(pc.replace_substring(arr, "\\", "\\\\"), '"', '\\"')
        return pc.binary_join_element_wise('"', escaped, '"', "")
    return pa.array(
        [json.dumps(v.item() if hasattr(v, "item") else v) for v in values.tolist()],
        type=pa.string(),
    )


@dataclass(frozen=True)
class JsonRows:
    """Encoder: field = ``key_column``, value = JSON ``{"date": partition, name: column, ...}``.

    Called, it yields ``(field, value)`` pairs; ``arrow`` returns both as Arrow string arrays
    built without a Python loop per row (the path ``RedisHashTarget.stage`` takes).
    """

    key_column: str
    value_columns: dict[str, str]
    with_date: bool = True

    def arrow(self, df: pd.DataFrame, partition: str | None) -> tuple[Any, Any]:
        import pyarrow as pa
        import pyarrow.compute as pc

        keys = df[self.key_column]
        fields = _strings(keys)
        if fields is None or fields.null_count:
            fields = pa.array(keys.astype(str).tolist(), type=pa.string())
        head = f'{{"date": "{partition}", ' if self.with_date and partition else "{"
        pieces: list[Any] = []
        for i, (name, col) in enumerate(self.value_columns.items()):
            pieces += [(head if i == 0 else ", ") + f"{json.dumps(name)}: ", _json_array(df[col])]
        if not pieces:
            values = pa.array([head.rstrip(", ") + "}"] * len(df), type=pa.string())
        else:
            values = pc.binary_join_element_wise(*pieces, "}", "")
        return fields, values

    def __call__(self, df: pd.DataFrame, partition: str | None) -> Iterator[tuple[str, str]]:
        fields, values = self.arrow(df, partition)
        return zip(fields.to_pylist(), values.to_pylist(), strict=True)


def json_rows(key_column: str, value_columns: dict[str, str], with_date: bool = True) -> JsonRows:
    """An encoder: field = ``key_column``, value = JSON of ``{"date": partition, name: column}``.

    ``value_columns`` maps JSON names to frame columns; integer columns stay JSON integers.
    """
    return JsonRows(key_column, dict(value_columns), with_date)
