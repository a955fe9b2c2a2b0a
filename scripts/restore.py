"""Roll a published table back to its backup: the lake partition and its serving copies.

    uv run python scripts/restore.py audience_estimates --date 2024-03-05
    uv run python scripts/restore.py audience_estimates --redis-only
    uv run python scripts/restore.py stay_points --date 2024-03-05

Each copy is swapped with its backup atomically (lake: ``backup/<table>/date=D`` <->
``curated/<table>/date=D``; Redis: the table's serving hash (``near_assets.tables.REDIS_HASHES``)
<-> ``<hash>:backup``, with their ``:meta``), so running the same command again undoes the
restore. A copy without a backup (e.g. the first publish of that day in the lake) is reported and
left as is; the others are restored (exit 1 only when nothing was restored). The lake and Redis
are found like the platform finds them (``LAKE_ROOT`` / ``LAKE_BUCKET``, ``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from near_assets.tables import REDIS_HASHES
from publishing.redis_hash import restore_hash
from publishing.tables import LakeTable
from publishing.wap import restore_table
from resources.lake import LakeResource
from resources.redis_store import RedisResource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="restore", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="published table, e.g. audience_estimates")
    parser.add_argument("--date", help="the lake partition day (YYYY-MM-DD)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--lake-only", action="store_true")
    where.add_argument("--redis-only", action="store_true")
    args = parser.parse_args(argv)
    lake_too = not args.redis_only
    redis_key = None if args.lake_only else REDIS_HASHES.get(args.table)
    if lake_too and not args.date:
        parser.error("--date is required to restore a lake partition (or use --redis-only)")
    out: dict[str, object] = {"table": args.table}
    errors = []
    if lake_too:
        try:
            table = LakeTable.curated(args.table)
            out |= restore_table(LakeResource.from_env(), table, table.folder(args.date))
        except FileNotFoundError as exc:  # first publish of that day: nothing to go back to
            errors.append(f"lake: {exc}")
        except RuntimeError as exc:  # an interrupted publish must be converged first
            errors.append(f"lake: {exc}")
    if redis_key:
        try:
            client = RedisResource.from_env().get_client()
            out["redis_rows"] = restore_hash(client, redis_key)
            out["redis_date"] = client.hget(f"{redis_key}:meta", "date")
        except redis.ResponseError as exc:
            errors.append(f"redis: {exc}")
    for e in errors:
        print(f"restore: {e}", file=sys.stderr)
    print(json.dumps(out, indent=2, default=str))
    restored = len(out) > 1
    return 0 if restored else 1


if __name__ == "__main__":
    raise SystemExit(main())
