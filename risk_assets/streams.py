"""Redis side of onboarding (no Dagster): the consumer group, batches, dead letters, decisions.

State kept in Redis, so it survives a lost or reset ``DAGSTER_HOME``:

- consumer group ``onboarding`` on ``signups``: an entry stays pending (unacknowledged) until its
  decision or dead letter is written, so a crash at any point leaves it to be picked up again;
- ``onboarding:assigned`` (hash signup id -> batch id) and ``onboarding:batch:<id>`` (hash with
  ``partitions``, ``signups``, ``run_key``, ``attempt``): which run covers which applicants, so a
  re-evaluated tick asks for the *same* run (same run key) instead of a new one;
- ``onboarding:decided:<signup id>`` / ``onboarding:dead:<signup id>``: guards written in the
  same Lua script as the ``decisions`` / ``signups:dead`` entry and the ``XACK``, so each
  signup gets exactly one decision or dead letter even when a run or a tick is repeated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

SIGNUPS = "signups"
DECISIONS = "decisions"
DEAD = "signups:dead"
GROUP = "onboarding"
CONSUMER = "dagster"
ASSIGNED = "onboarding:assigned"
BATCH_PREFIX = "onboarding:batch:"
DECIDED_PREFIX = "onboarding:decided:"
DEAD_PREFIX = "onboarding:dead:"

_PUBLISH_ONCE = """
local existing = redis.call('GET', KEYS[1])
if existing then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  return {0, existing}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], id)
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
return {1, id}
"""


@dataclass
class Batch:
    """Applicants handed to one onboarding run (partitions contiguous in the order added)."""

    batch_id: str
    signups: list[str]
    partitions: list[str]
    run_key: str
    attempt: int = 0
    created_at: float = 0.0

    def to_redis(self) -> dict[str, str]:
        return {
            "signups": json.dumps(self.signups),
            "partitions": json.dumps(self.partitions),
            "run_key": self.run_key,
            "attempt": str(self.attempt),
            "created_at": str(self.created_at),
        }

    @classmethod
    def from_redis(cls, batch_id: str, data: dict[str, str]) -> Batch:
        return cls(
            batch_id=batch_id,
            signups=json.loads(data["signups"]),
            partitions=json.loads(data["partitions"]),
            run_key=data["run_key"],
            attempt=int(data.get("attempt", 0)),
            created_at=float(data.get("created_at", 0)),
        )


@dataclass
class ReadResult:
    """Entries of ``signups`` still owed a decision: pending first, then new ones."""

    entries: list[tuple[str, dict[str, str] | None]] = field(default_factory=list)
    n_pending: int = 0
    n_new: int = 0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ensure_group(client: redis.Redis) -> None:
    """Create the consumer group at the start of the stream (first deployment decides history)."""
    try:
        client.xgroup_create(SIGNUPS, GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def read_owed(
    client: redis.Redis,
    max_new: int = 500,
    max_pending: int = 5000,
    listen_s: float = 0.0,
    gather_s: float = 0.2,
) -> ReadResult:
    """This consumer's pending entries (delivered earlier, not yet decided), then new ones.

    With no new entry yet, waits up to ``listen_s`` for one (a blocking read), then ``gather_s``
    more for followers, so a signup arriving between sensor ticks does not wait for the next.
    """
    ensure_group(client)
    out = ReadResult()
    pending = client.xreadgroup(GROUP, CONSUMER, {SIGNUPS: "0"}, count=max_pending)
    for _, items in pending or []:
        out.entries.extend((sid, fields or None) for sid, fields in items)
    out.n_pending = len(out.entries)
    block = int(listen_s * 1000) if listen_s > 0 else None
    for attempt in range(2):
        new = client.xreadgroup(GROUP, CONSUMER, {SIGNUPS: ">"}, count=max_new, block=block)
        for _, items in new or []:
            out.entries.extend((sid, fields or None) for sid, fields in items)
        if attempt or block is None or len(out.entries) == out.n_pending:
            break
        time.sleep(gather_s)
        block = None
    out.n_new = len(out.entries) - out.n_pending
    return out


def guards(client: redis.Redis, signup_ids: list[str]) -> list[tuple[bool, bool, str | None]]:
    """For each signup: (decided, dead-lettered, assigned batch id)."""
    pipe = client.pipeline(transaction=False)
    for sid in signup_ids:
        pipe.exists(DECIDED_PREFIX + sid)
        pipe.exists(DEAD_PREFIX + sid)
        pipe.hget(ASSIGNED, sid)
    res = pipe.execute()
    return [(bool(res[i]), bool(res[i + 1]), res[i + 2]) for i in range(0, len(res), 3)]


def dead_letter(
    client: redis.Redis, signup_id: str, reason: str, fields: dict[str, str] | None
) -> bool:
    """Copy a malformed entry to ``signups:dead`` once (atomic with its acknowledgement)."""
    body = {**(fields or {}), "signup_id": signup_id, "reason": reason}
    flat = [x for kv in body.items() for x in kv]
    created, _ = client.eval(
        _PUBLISH_ONCE, 3, DEAD_PREFIX + signup_id, DEAD, SIGNUPS, GROUP, signup_id, *flat
    )
    return bool(created)


def publish_decision(client: redis.Redis, decision: dict[str, Any]) -> tuple[bool, str]:
    """Append one ``decisions`` entry per signup, ever; returns (published now, entry id)."""
    sid = decision["signup_id"]
    body = {
        "user_id": decision["user_id"],
        "signup_id": sid,
        "decision": decision["decision"],
        "score": f"{float(decision['score']):.4f}",
        "reason": decision["reason"][:200],
        "decided_at": decision.get("decided_at") or now_iso(),
    }
    if decision.get("amount") is not None:
        body["amount"] = str(decision["amount"])
    flat = [x for kv in body.items() for x in kv]
    created, entry_id = client.eval(
        _PUBLISH_ONCE, 3, DECIDED_PREFIX + sid, DECISIONS, SIGNUPS, GROUP, sid, *flat
    )
    return bool(created), entry_id


def is_decided(client: redis.Redis, signup_id: str) -> bool:
    return bool(client.exists(DECIDED_PREFIX + signup_id))


def save_batches(client: redis.Redis, batches: list[Batch]) -> None:
    """Record batches and their signups' assignment in one transaction."""
    if not batches:
        return
    pipe = client.pipeline(transaction=True)
    for b in batches:
        pipe.hset(BATCH_PREFIX + b.batch_id, mapping=b.to_redis())
        pipe.hset(ASSIGNED, mapping=dict.fromkeys(b.signups, b.batch_id))
    pipe.execute()


def load_batch(client: redis.Redis, batch_id: str) -> Batch | None:
    data = client.hgetall(BATCH_PREFIX + batch_id)
    return Batch.from_redis(batch_id, data) if data else None


def signup_fields(client: redis.Redis, signup_ids: list[str]) -> dict[str, dict[str, str] | None]:
    """The original ``signups`` fields of each id (``None`` when trimmed away)."""
    pipe = client.pipeline(transaction=False)
    for sid in signup_ids:
        pipe.xrange(SIGNUPS, sid, sid, count=1)
    return {
        sid: (items[0][1] if items else None)
        for sid, items in zip(signup_ids, pipe.execute(), strict=True)
    }
