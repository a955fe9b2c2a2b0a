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
newer serving data); the swap script reports it as ``skipped``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
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
for i = 3, #ARGV, 2 do
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

    ``encode(df, day)`` yields ``(field, value)`` pairs, one per row of the audited frame.
    The partition (``date=YYYY-MM-DD`` or ``YYYY-MM-DD``) is recorded as the hash's ``date``.
    """

    client: redis.Redis
    key: str
    encode: Encoder
    batch_size: int = 10_000
    name: str = "redis"
    meta_extra: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _staged_rows: int | None = field(default=None, init=False, repr=False)
    _sample: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)

    @property
    def staging_key(self) -> str:
        return f"{self.key}:staging:{self.token}"

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

    def stage(self, df: pd.DataFrame, partition: str | None) -> dict[str, Any]:
        """Write every row to the staging key (pipelined batches); live is untouched."""
        partition = partition_day(partition)
        self.client.unlink(self.staging_key)
        rows = 0
        batch: dict[str, str] = {}
        self._sample = []
        pipe = self.client.pipeline(transaction=False)
        for f, v in self.encode(df, partition):
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
        self._staged_rows = rows
        return {"redis_staging_key": self.staging_key, "redis_staged_rows": rows}

    def verify(self, df: pd.DataFrame) -> Audit:
        """Audit the staged copy itself: row count and sampled values."""
        staged = int(self.client.hlen(self.staging_key))
        expected = self._staged_rows if self._staged_rows is not None else len(df)
        mismatched = [f for f, v in self._sample if self.client.hget(self.staging_key, f) != v]
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
        partition = partition_day(partition)
        rows = self._staged_rows or 0
        meta = {
            "date": partition or "",
            "published_at": utc_now_iso(),
            "rows": str(rows),
            "version": self.token,
            **self.meta_extra,
        }
        args: list[Any] = [rows, partition or ""]
        for k, v in meta.items():
            args += [k, v]
        keys = [self.key, self.staging_key, self.backup_key, self.meta_key, self.backup_meta_key]
        status, previous = self.client.register_script(_SWAP)(keys=keys, args=args)
        status = status.decode() if isinstance(status, bytes) else status
        previous = previous.decode() if isinstance(previous, bytes) else previous
        if status == "skipped":
            return {"redis": f"skipped: {self.key} already serves {previous}"}
        return {"redis": f"{self.key} <- {partition} ({rows} rows)", "redis_previous": previous}

    def discard(self) -> None:
        self.client.unlink(self.staging_key)

    def restore(self) -> int:
        """Swap live and backup (hash and meta) atomically; returns the restored row count."""
        return restore_hash(self.client, self.key)


def restore_hash(client: redis.Redis, key: str) -> int:
    """Roll ``key`` back to ``<key>:backup`` atomically (a swap: running it twice undoes it)."""
    keys = [key, f"{key}:backup", f"{key}:meta", f"{key}:backup:meta", f"{key}:restore:tmp"]
    return int(client.register_script(_RESTORE)(keys=keys, args=[utc_now_iso()]))


def _json_literals(values: pd.Series) -> list[str]:
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.astype("int64").astype(str).tolist()
    return [json.dumps(v.item() if hasattr(v, "item") else v) for v in values.tolist()]


def json_rows(
    key_column: str, value_columns: dict[str, str], with_date: bool = True
) -> Callable[[pd.DataFrame, str | None], Iterable[tuple[str, str]]]:
    """An encoder: field = ``key_column``, value = JSON of ``{"date": partition, name: column}``.

    ``value_columns`` maps JSON names to frame columns; integer columns stay JSON integers.
    """

    def encode(df: pd.DataFrame, partition: str | None) -> Iterable[tuple[str, str]]:
        keys = df[key_column].astype(str).tolist()
        head = f'{{"date": "{partition}", ' if with_date and partition else "{"
        parts = [
            [f'"{name}": {lit}' for lit in _json_literals(df[col])]
            for name, col in value_columns.items()
        ]
        return zip(
            keys, (head + ", ".join(cells) + "}" for cells in zip(*parts, strict=True)), strict=True
        )

    return encode
