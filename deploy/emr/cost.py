"""EMR cost of a day of pings, from measured CPU-microseconds per ping and ``cluster.json``.

    uv run python deploy/emr/cost.py --cpu-us-per-ping 25 [--pings 1e9] [--effective-vcpus 24]

Prints JSON (the model of ``deploy/emr/README.md``, "Cost of a billion-ping day"). A benchmark
can call ``day_cost(cpu_us_per_ping)`` with its measured figure (load this file by path:
``deploy/`` is not a package). Prices are assumptions (``PRICES``): check them before budgeting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CLUSTER_JSON = Path(__file__).resolve().parent / "cluster.json"

PRICES: dict[str, tuple[float, float]] = {
    "r6g.2xlarge": (0.4032, 0.1008),
    "m6g.xlarge": (0.154, 0.0385),
}
"""Instance type -> (EC2 on-demand $/h, EMR fee $/h), us-east-1. ASSUMPTION: from AWS's public
price lists as we know them, not re-checked on 2026-12-01 (aws.amazon.com/emr/pricing/)."""
GP3_PER_GB_MONTH = 0.08
"""gp3 $/GB-month (assumption, us-east-1); a month is 730 h."""
VCPUS = {"r6g.2xlarge": 8, "m6g.xlarge": 4}

JOBS_PER_DAY = 9
"""Spark jobs of the chain: clean, stays, visits, home, demographics, affinity, audience,
campaign insights, aggregate insights."""
STARTUP_MIN_PER_JOB = 1.0
"""spark-submit, YARN application master, executors: wall minutes per job (assumption)."""
HOME_WINDOW_ROWS_PER_PING = 0.28
"""Home reads 14 days of stays (~2% of a day's pings each): extra rows per ping of the day."""
HOME_WINDOW_CPU_US_PER_ROW = 10.0
"""The stays job's measured cost per row, applied to the home window (README, Sizing)."""


def cluster_price_per_hour(cluster: dict[str, Any]) -> dict[str, float]:
    """$/h of the cluster's instance groups (EC2 + EMR fee + gp3 volumes)."""
    ec2 = emr = ebs_gb = 0.0
    vcpus = 0
    for group in cluster["Instances"]["InstanceGroups"]:
        kind, count = group["InstanceType"], group["InstanceCount"]
        ec2 += PRICES[kind][0] * count
        emr += PRICES[kind][1] * count
        if group["InstanceRole"] == "CORE":
            vcpus += VCPUS[kind] * count
        for dev in group.get("EbsConfiguration", {}).get("EbsBlockDeviceConfigs", []):
            ebs_gb += dev["VolumeSpecification"]["SizeInGB"] * dev["VolumesPerInstance"] * count
    ebs = ebs_gb * GP3_PER_GB_MONTH / 730
    return {"ec2": ec2, "emr": emr, "ebs": ebs, "total": ec2 + emr + ebs, "core_vcpus": vcpus}


def task_slots(cluster: dict[str, Any]) -> int:
    """Executors x cores from the cluster's ``spark-defaults``: the planning figure of usable
    vCPUs (one busy vCPU per task slot; the Python workers use spare ones)."""
    props = next(
        c["Properties"]
        for c in cluster["Configurations"]
        if c["Classification"] == "spark-defaults"
    )
    return int(props["spark.executor.instances"]) * int(props["spark.executor.cores"])


def day_cost(
    cpu_us_per_ping: float,
    *,
    pings: float = 1e9,
    effective_vcpus: float | None = None,
    cluster: dict[str, Any] | None = None,
    idle_min: float = 60.0,
    provisioning_min: float = 12.0,
) -> dict[str, float]:
    """Cluster minutes and dollars for one day of ``pings`` at ``cpu_us_per_ping`` (whole chain).

    ``effective_vcpus``: default the task slots of ``spark-defaults`` (24); up to the core
    nodes' vCPUs (48). ``idle_min``/``provisioning_min``: what a cluster started for the day
    costs around the work (``AutoTerminationPolicy.IdleTimeout``, boot and bootstrap).
    """
    cluster = cluster or json.loads(CLUSTER_JSON.read_text())
    price = cluster_price_per_hour(cluster)
    e = effective_vcpus or task_slots(cluster)
    cpu_s = cpu_us_per_ping * pings / 1e6
    home_cpu_s = HOME_WINDOW_ROWS_PER_PING * pings * HOME_WINDOW_CPU_US_PER_ROW / 1e6
    compute_min = (cpu_s + home_cpu_s) / (60 * e)
    work_min = compute_min + JOBS_PER_DAY * STARTUP_MIN_PER_JOB
    per_min = price["total"] / 60
    return {
        "pings": pings,
        "cpu_us_per_ping": cpu_us_per_ping,
        "effective_vcpus": e,
        "cpu_seconds": round(cpu_s + home_cpu_s),
        "cluster_per_hour_usd": round(price["total"], 3),
        "compute_minutes": round(compute_min, 1),
        "cluster_minutes_working": round(work_min, 1),
        "usd_working": round(work_min * per_min, 2),
        "usd_day_cluster_started_daily": round(
            (work_min + idle_min + provisioning_min) * per_min, 2
        ),
        "usd_day_always_on": round(24 * price["total"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-us-per-ping", type=float, required=True)
    parser.add_argument("--pings", type=float, default=1e9)
    parser.add_argument("--effective-vcpus", type=float, default=None)
    parser.add_argument("--idle-min", type=float, default=60.0)
    args = parser.parse_args()
    print(
        json.dumps(
            day_cost(
                args.cpu_us_per_ping,
                pings=args.pings,
                effective_vcpus=args.effective_vcpus,
                idle_min=args.idle_min,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
