"""``near-synth``: generate a synthetic sample lake where ``LakeResource.from_env()`` points."""

from __future__ import annotations

import argparse
import json

from near_assets.synth.generator import DEFAULT_DEVICES, default_start, generate
from near_assets.synth.panel import PROFILES
from resources.lake import LakeResource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="near-synth",
        description="Write synthetic pings, POIs, areas, campaigns and ground truth to the lake "
        "($LAKE_BUCKET/$LAKE_PREFIX on S3, else $LAKE_ROOT or ./.lake).",
    )
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: ends today)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="default",
        help="panel profile: default (dense), sparse, or a realistic real_* profile "
        "(see near_assets.synth.panel)",
    )
    parser.add_argument("--campaigns", type=int, default=4)
    parser.add_argument("--no-dirt", action="store_true", help="write clean pings only")
    parser.add_argument(
        "--timezone",
        help="clock of the daily routines (default: the profile's, else $LAKE_TIMEZONE, else UTC)",
    )
    parser.add_argument(
        "--hdp",
        action="store_true",
        help="plant high-density points (cell towers, IP centroids, SDK defaults) and round "
        "genuine coordinates per device SDK (near_assets.synth.hdp)",
    )
    parser.add_argument(
        "--people",
        action="store_true",
        help="group devices into people of 1-3 devices and households sharing a home "
        "(near_assets.synth.people; truth under truth/identity)",
    )
    parser.add_argument(
        "--footprints",
        action="store_true",
        help="give POIs true footprints that differ from the delivered polygons (offsets, "
        "oversized boxes, neighbours sharing a building; near_assets.synth.footprints; truth "
        "under truth/poi_footprints)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    lake = LakeResource.from_env()
    summary = generate(
        lake,
        seed=args.seed,
        devices=args.devices,
        start=args.start or default_start(args.days),
        days=args.days,
        profile=args.profile,
        campaigns=args.campaigns,
        dirt=not args.no_dirt,
        timezone=args.timezone,
        progress=not args.no_progress,
        hdp=args.hdp,
        people=args.people,
        footprints=args.footprints,
    )
    rate = summary["pings"] / max(summary["seconds"], 1e-9)
    print(json.dumps({**summary, "pings_per_s": round(rate)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
