"""Benchmark: false blocks and catches of every gated table, on the generator, through the CLI.

    nice -n 10 uv run python bench/gates_cli.py [--devices 1000] [--weeks 4] [--work DIR]

``bench/gates.py`` measures the baseline on synthetic series; this one measures the whole chain
the way production runs it:

1. **a held-out panel**: the generator's command line (``python -m near_assets.synth.cli``,
   profile ``real_holdout``: never used to fit anything; Sydney clock, weekday routines (no work
   at weekends), panel churn in 7-day blocks, feed outages on 30 % of days, dirt) writes
   ``--weeks`` + 1 weeks from a Monday (of the last week only its Monday is run: a lone last
   day would be the first of a new churn block, not an ordinary day). Its ``truth/`` is removed
   (the evaluation checks are not gates and would only add time).
2. **normal days**: each day, in order, is run through the CLI as an operator would::

       dagster asset materialize -m near_assets.definitions --partition D \\
           --select raw_pings,clean_pings,stay_points,visits,home_ping_hours,home_location,\\
   demographics,brand_affinity,audience_estimates

   (one process per run: ``execution.config.in_process``; ``LAKE_TIMEZONE`` is the panel's).
   Every check evaluation of the run is read back from the instance; per table and day the
   outcome is ``pass``, ``warn`` (published with a WARN-severity check), ``block`` (an
   ERROR-severity check failed: nothing published) or ``not run`` (the step failed without a
   failed check, or an upstream step did not publish). A blocked day stays unpublished, as in
   production, and the next day goes on.
3. **planted breakage** on the day after the normal weeks (a Monday), each on its own copy of
   the lake as the normal weeks left it: the same day unbroken (control), a duplicated upload
   (every raw file of the day delivered twice), a unit change (``accuracy_m`` in centimetres),
   an emptied day (the day's raw files replaced by one with no rows), half the devices (the
   other half's pings dropped). Prints what each table did and the failed checks' messages.

The monitor ``raw_pings_volume`` (a wall-clock check of *today's* raw folder) runs with
``raw_pings`` but is left out of the table counts (the bench's days are not today); instead each
day is judged as the monitor would judge it at the end of that day
(``near_assets.monitors.day_volume_audit``), reported as ``raw_pings_volume (end of day)``.
``--report-only`` prints the summary of an earlier bench again from its instances.

Prints a summary (per table pass / warn / block on normal days, the shift checks' baselines and
ratios, what was flagged and why, what each breakage did) and one JSON object (``--json`` file
too) with the load average. About 16 s a day at 1,000 devices on a quiet machine (mostly
process start-up; 30-75 s at load 20-35): 33 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MONDAY = date(2024, 3, 4)
CHAIN = (
    "raw_pings",
    "clean_pings",
    "stay_points",
    "visits",
    "home_ping_hours",
    "home_location",
    "demographics",
    "brand_affinity",
    "audience_estimates",
)
GATED = ("raw_pings", "clean_pings", "stay_points", "visits", "home_location", "brand_affinity",
         "audience_estimates")  # fmt: skip
NOT_GATES = {("raw_pings", "raw_pings_volume")}
FIGURES = ("value", "baseline", "ratio", "history_days", "severity", "bad_share")
"""Check metadata kept per day (the calendar checks' figures)."""
BREAKAGES = ("control", "duplicated_upload", "unit_change", "emptied_day", "half_devices")
IN_PROCESS = "execution:\n  config:\n    in_process: {}\n"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def generate(src: Path, devices: int, days: int, seed: int, profile: str) -> dict[str, Any]:
    """The held-out panel through the generator's command line (reused if already there)."""
    info = src / "generated.json"
    if info.exists():
        return json.loads(info.read_text())
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    cmd = [sys.executable, "-m", "near_assets.synth.cli", "--devices", str(devices), "--days",
           str(days), "--start", MONDAY.isoformat(), "--seed", str(seed), "--profile", profile,
           "--campaigns", "0", "--no-progress"]  # fmt: skip
    env = {**os.environ, "LAKE_ROOT": str(src / "lake")}
    env.pop("LAKE_BUCKET", None)
    t0 = time.time()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    shutil.rmtree(src / "lake" / "truth", ignore_errors=True)
    out = {
        "devices": devices,
        "days": days,
        "profile": profile,
        "seed": seed,
        "pings": summary["pings"],
        "per_day": summary["per_day"],
        "timezone": panel_timezone(profile),
        "generate_s": round(time.time() - t0, 1),
    }
    info.write_text(json.dumps(out))
    return out


def panel_timezone(profile: str) -> str:
    from near_assets.synth.generator import profile_timezone

    return profile_timezone(profile, None) or "UTC"


class Chain:
    """Runs the chain for one day through the CLI on one lake with its own instance."""

    def __init__(self, folder: Path, timezone: str, redis_port: int) -> None:
        self.folder = folder
        self.home = folder / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        (folder / "in_process.yaml").write_text(IN_PROCESS)
        self.redis_port = redis_port
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "LAKE_ROOT": str(folder / "lake"),
            "LAKE_START_DATE": MONDAY.isoformat(),
            "LAKE_TIMEZONE": timezone,
            "NEAR_ENGINE": "pandas",
            "EMBEDDED_REDIS_PORT": str(redis_port),
            "EMBEDDED_REDIS_DIR": str(folder / "redis"),
            "PYTHONWARNINGS": "ignore",
        }
        for var in ("LAKE_BUCKET", "LAKE_PREFIX", "REDIS_URL", "EMR_CLUSTER_ID", "SLACK_BOT_TOKEN",
                    "PLATFORM_HOLIDAYS"):  # fmt: skip
            self.env.pop(var, None)

    def run(self, day: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m",
               "near_assets.definitions", "--select", ",".join(CHAIN), "--partition", day,
               "-c", str(self.folder / "in_process.yaml")]  # fmt: skip
        t0 = time.time()
        log_path = self.folder / f"run-{day}.log"
        with log_path.open("w") as log:
            code = subprocess.run(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                                  ).returncode  # fmt: skip
        wall = round(time.time() - t0, 1)
        out = self.outcome(day)
        if out is None:  # no run started (e.g. the code location failed to load)
            tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])[-400:]
            tables = {t: {"status": "no run", "failed": [], "step_failure": tail} for t in GATED}
            out = {"run_status": "NO RUN", "tables": tables}
        return {"day": day, "exit": code, "wall_s": wall, **out}

    def outcome(self, day: str) -> dict[str, Any] | None:
        """Per gated table: pass / warn / block / not run, the failed checks and the figures of
        every check (None when no run of ``day`` is in the instance). A check evaluated more
        than once (the step was retried) counts once; ``evaluations`` says how often."""
        import dagster as dg

        instance = dg.DagsterInstance.from_config(str(self.home))
        try:
            runs = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/partition": day}), limit=1
            )
            if not runs:
                return None
            run = runs[0]
            checks: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
            kinds = (
                dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                dg.DagsterEventType.ASSET_MATERIALIZATION,
                dg.DagsterEventType.STEP_FAILURE,
            )
            materialized, failures = set(), {}
            for kind in kinds:
                for rec in instance.get_records_for_run(run.run_id, of_type=kind, limit=10_000
                                                        ).records:  # fmt: skip
                    event = rec.event_log_entry.dagster_event
                    if kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                        ev = event.event_specific_data
                        asset = ev.asset_key.to_user_string()
                        if (asset, ev.check_name) in NOT_GATES:
                            continue
                        seen = checks[asset].get(ev.check_name, {}).get("evaluations", 0)
                        checks[asset][ev.check_name] = {
                            "check": ev.check_name, "passed": ev.passed,
                            "severity": ev.severity.value, "description": ev.description or "",
                            "figures": {k: getattr(v, "value", v) for k, v in ev.metadata.items()
                                        if k in FIGURES},
                            "evaluations": seen + 1,
                        }  # fmt: skip
                    elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
                        materialized.add(event.asset_key.to_user_string())
                    else:
                        err = event.event_specific_data.error
                        failures[event.step_key] = (err.message if err else "").strip()
        finally:
            instance.dispose()
        tables = {}
        for asset in GATED:
            evaluated = list(checks.get(asset, {}).values())
            failed = [c for c in evaluated if not c["passed"]]
            if any(c["severity"] == "ERROR" for c in failed):
                status = "block"
            elif failed:
                status = "warn"
            elif asset in materialized:
                status = "pass"
            else:
                status = "not run"
            step = next((m for s, m in failures.items() if s.startswith(asset)), "")
            tables[asset] = {
                "status": status,
                "failed": failed,
                "step_failure": step[:400],
                "figures": {c["check"]: c["figures"] for c in evaluated if c["figures"]},
                "retried": max((c["evaluations"] for c in evaluated), default=1) - 1,
            }
        return {"run_status": run.status.value, "tables": tables}

    def stop_redis(self) -> None:
        import redis

        with contextlib.suppress(redis.RedisError):  # the embedded Redis the runs started
            redis.Redis(port=self.redis_port, socket_timeout=2).shutdown(nosave=True)


# ---- breakage ----------------------------------------------------------------------------------


def plant(lake: Path, day: str, breakage: str) -> str:
    """Plant ``breakage`` into the day's raw pings; returns what was done."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = lake / "raw" / "pings" / f"date={day}"
    files = sorted(folder.glob("*.parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    if breakage == "control":
        return f"unchanged ({rows} raw pings in {len(files)} files)"
    if breakage == "duplicated_upload":
        for f in files:
            shutil.copy(f, folder / f"{f.stem}-again.parquet")
        return f"every raw file delivered twice ({rows} -> {2 * rows} pings)"
    if breakage == "emptied_day":
        schema = pq.read_schema(files[0])
        for f in files:
            f.unlink()
        pq.write_table(schema.empty_table(), folder / "part-0.parquet")
        return f"the day's {len(files)} raw files replaced by one with 0 rows (was {rows})"
    if breakage == "unit_change":
        for f in files:
            t = pq.read_table(f)
            i = t.schema.get_field_index("accuracy_m")
            t = t.set_column(i, "accuracy_m", pc.multiply(t["accuracy_m"], 100.0))
            pq.write_table(t, f)
        return "accuracy_m delivered in centimetres (x100)"
    if breakage == "half_devices":
        kept = 0
        for f in files:
            t = pq.read_table(f)
            ids = t["device_id"].to_pandas()
            keep = ids.map(lambda s: hash_half(str(s))).to_numpy()
            t = t.filter(pa.array(keep))
            kept += t.num_rows
            pq.write_table(t, f)
        return f"half the devices dropped ({rows} -> {kept} pings)"
    raise ValueError(breakage)


def volume_monitor(lake: Path, day: str) -> dict[str, Any]:
    """``raw_pings_volume`` as it stands at the end of ``day`` (the monitor's own function)."""
    from near_assets.monitors import day_volume_audit
    from resources.lake import LakeResource

    audit = day_volume_audit(LakeResource(root=str(lake)), day, 1.0)
    severity = audit.figures.get("severity", "OK")
    status = "block" if not audit.passed else "warn" if severity == "WARN" else "pass"
    return {"status": status, "detail": audit.detail}


def hash_half(device_id: str) -> bool:
    import zlib

    return zlib.crc32(device_id.encode()) % 2 == 0


# ---- report ------------------------------------------------------------------------------------


def short(check: dict[str, Any], width: int = 230) -> str:
    text = " ".join(check["description"].split())
    return f"{check['check']} [{check['severity']}]: {text[:width]}"


MONITOR = "raw_pings_volume (end of day)"
WEEKEND = (5, 6)


def summarise(normal: list[dict[str, Any]], broken: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per_table: dict[str, Counter] = {t: Counter() for t in (*GATED, MONITOR)}
    flagged: dict[str, list[str]] = defaultdict(list)
    baselines: dict[str, Counter] = defaultdict(Counter)
    ratios: dict[str, list[float]] = defaultdict(list)
    values: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    for r in normal:
        d = date.fromisoformat(r["day"])
        when = f"{r['day']} ({d.strftime('%a')})"
        for table, out in r["tables"].items():
            per_table[table][out["status"]] += 1
            if out["status"] in ("warn", "block"):
                flagged[table] += [f"{when} {short(c)}" for c in out["failed"]]
            elif out["status"] in ("not run", "no run") and out["step_failure"]:
                flagged[table].append(f"{when} {out['status']}: {out['step_failure'][:200]}")
            for check, fig in out.get("figures", {}).items():
                name = f"{table}.{check}"
                if "baseline" in fig:
                    baselines[name][fig["baseline"]] += 1
                if fig.get("ratio") is not None:
                    ratios[name].append(float(fig["ratio"]))
                if fig.get("value") is not None:
                    values[name][d.weekday() in WEEKEND].append(float(fig["value"]))
        if "monitor" in r:
            per_table[MONITOR][r["monitor"]["status"]] += 1
            if r["monitor"]["status"] != "pass":
                flagged[MONITOR].append(f"{when} {r['monitor']['detail'][:230]}")
    figures = {
        name: {
            "baselines": dict(baselines.get(name, {})),
            **(
                {"ratio_min": min(ratios[name]), "ratio_max": max(ratios[name])}
                if ratios.get(name)
                else {}
            ),
            **(
                {"weekend_vs_weekday": round(float(np.mean(v[True])) / float(np.mean(v[False])), 3)}
                if (v := values.get(name)) and v[True] and v[False] and np.mean(v[False])
                else {}
            ),
        }
        for name in sorted(set(baselines) | set(ratios) | set(values))
    }
    return {
        "normal_days": len(normal),
        "per_table": {t: dict(c) for t, c in per_table.items()},
        "flagged": dict(flagged),
        "figures": figures,
        "breakage": {
            name: {
                "planted": r["planted"],
                "run_status": r["run_status"],
                "tables": {
                    t: {
                        "status": o["status"],
                        "failed": [short(c, 300) for c in o["failed"]],
                        **({"step_failure": o["step_failure"][:300]} if o["step_failure"] else {}),
                        **({"retried": o["retried"]} if o.get("retried") else {}),
                    }
                    for t, o in r["tables"].items()
                },
                **({"monitor": r["monitor"]} if "monitor" in r else {}),
            }
            for name, r in broken.items()
        },
    }


def print_summary(summary: dict[str, Any], meta: dict[str, Any]) -> None:
    print(f"\n== held-out panel: {meta['panel']}")
    print(f"normal days: {summary['normal_days']} ({meta['first_day']} .. {meta['last_day']}); "
          f"wall {meta['normal_wall_s']:.0f} s; load {meta['load_before']} -> "
          f"{meta['load_after_normal']}")  # fmt: skip
    print(f"{'table':<32}{'pass':>6}{'warn':>6}{'block':>7}{'not run':>9}")
    for t, c in summary["per_table"].items():
        not_run = c.get("not run", 0) + c.get("no run", 0)
        print(f"{t:<32}{c.get('pass', 0):>6}{c.get('warn', 0):>6}{c.get('block', 0):>7}"
              f"{not_run:>9}")  # fmt: skip
    print("\nshift checks on normal days (baselines used, ratio to the baseline, weekend/weekday "
          "mean of the value):")  # fmt: skip
    for name, f in summary["figures"].items():
        rng = f"ratio {f['ratio_min']:.2f}..{f['ratio_max']:.2f}" if "ratio_min" in f else ""
        wk = f"weekend/weekday x{f['weekend_vs_weekday']}" if "weekend_vs_weekday" in f else ""
        print(f"  {name:<52}{rng:<20}{wk:<26}{f['baselines']}")
    for t, lines in summary["flagged"].items():
        print(f"\n{t}: flagged on normal days")
        for line in lines:
            print(f"  {line}")
    print(f"\n== planted breakage on {meta['breakage_day']}; load after {meta['load_after']}")
    for name, r in summary["breakage"].items():
        print(f"\n{name}: {r['planted']} -> run {r['run_status']}")
        for t, o in r["tables"].items():
            extra = "; ".join(o["failed"]) or o.get("step_failure", "")
            retried = f" (evaluated {o['retried'] + 1}x: step retried)" if o.get("retried") else ""
            print(f"  {t:<20}{o['status']:<9}{extra}{retried}")
        if "monitor" in r:
            print(f"  {MONITOR}: {r['monitor']['status']}: {r['monitor']['detail'][:300]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--weeks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--profile", default="real_holdout")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gates_cli"))
    ap.add_argument("--redis-port", type=int, default=16391)
    ap.add_argument("--breakage", nargs="*", default=list(BREAKAGES), choices=BREAKAGES)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: read the runs of an earlier bench in --work again and print",
    )
    args = ap.parse_args()
    if args.report_only:
        return report_only(args)

    # one more whole week is generated so that the breakage day (the next Monday) is an ordinary
    # day of the panel (the generator's churn runs in 7-day blocks: a lone last day is not)
    days = 7 * args.weeks + 1
    load_before = load()
    gen = generate(args.work / "src", args.devices, days + 6, args.seed, args.profile)
    print(f"generated {gen['pings']} pings, {args.devices} devices x {days} days "
          f"({args.profile}, {gen['timezone']}) in {gen['generate_s']} s", flush=True)  # fmt: skip
    (args.work / "args.json").write_text(json.dumps(
        {"devices": args.devices, "weeks": args.weeks, "seed": args.seed, "profile": args.profile}
    ))  # fmt: skip
    normal_dir = args.work / "normal"
    if normal_dir.exists():
        shutil.rmtree(normal_dir)
    normal_dir.mkdir(parents=True)
    shutil.copytree(args.work / "src" / "lake", normal_dir / "lake")
    chain = Chain(normal_dir, gen["timezone"], args.redis_port)
    all_days = [(MONDAY + timedelta(days=i)).isoformat() for i in range(days)]
    normal: list[dict[str, Any]] = []
    t0 = time.time()
    try:
        for day in all_days[:-1]:
            r = chain.run(day)
            r["monitor"] = volume_monitor(normal_dir / "lake", day)
            normal.append(r)
            statuses = " ".join(f"{t}={o['status']}" for t, o in r["tables"].items())
            print(f"{day} {r['wall_s']:>5.1f} s load {load()}  {statuses}", flush=True)
    finally:
        chain.stop_redis()
    normal_wall = time.time() - t0
    load_after_normal = load()

    breakage_day = all_days[-1]
    broken: dict[str, dict[str, Any]] = {}
    for name in args.breakage:
        folder = args.work / f"broken-{name}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copytree(normal_dir / "lake", folder / "lake")
        planted = plant(folder / "lake", breakage_day, name)
        (folder / "planted.txt").write_text(planted)
        c = Chain(folder, gen["timezone"], args.redis_port)
        try:
            r = c.run(breakage_day)
        finally:
            c.stop_redis()
        broken[name] = {
            "planted": planted,
            **r,
            "monitor": volume_monitor(folder / "lake", breakage_day),
        }
        statuses = " ".join(f"{t}={o['status']}" for t, o in r["tables"].items())
        print(f"{name}: {r['wall_s']:.1f} s load {load()}  {statuses}", flush=True)

    summary = summarise(normal, broken)
    meta = {
        "panel": f"{args.devices} devices x {days} days run, profile {args.profile} "
        f"({gen['timezone']}), seed {args.seed}, {gen['pings']} raw pings",
        "first_day": all_days[0],
        "last_day": all_days[-2],
        "breakage_day": breakage_day,
        "normal_wall_s": normal_wall,
        "load_before": load_before,
        "load_after_normal": load_after_normal,
        "load_after": load(),
    }
    print_summary(summary, meta)
    out = {**meta, **summary}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print("\n" + json.dumps({k: out[k] for k in ("panel", "per_table", "load_before",
                                                  "load_after")}))  # fmt: skip


def report_only(args: argparse.Namespace) -> None:
    """The summary of the runs already in ``args.work`` (its instances), nothing run."""
    saved = json.loads((args.work / "args.json").read_text()) if (
        args.work / "args.json").exists() else {}  # fmt: skip
    for k, v in saved.items():
        setattr(args, k, v)
    days = 7 * args.weeks + 1  # normal days + the breakage day
    gen = json.loads((args.work / "src" / "generated.json").read_text())
    all_days = [(MONDAY + timedelta(days=i)).isoformat() for i in range(days)]
    normal_dir = args.work / "normal"
    chain = Chain(normal_dir, gen["timezone"], args.redis_port)
    normal = []
    for day in all_days[:-1]:
        out = chain.outcome(day)
        if out is not None:
            normal.append({"day": day, **out, "monitor": volume_monitor(normal_dir / "lake", day)})
    broken = {}
    for name in BREAKAGES:
        folder = args.work / f"broken-{name}"
        if not folder.exists():
            continue
        out = Chain(folder, gen["timezone"], args.redis_port).outcome(all_days[-1])
        if out is None:
            continue
        planted = (
            (folder / "planted.txt").read_text() if (folder / "planted.txt").exists() else name
        )
        broken[name] = {"planted": planted, **out,
                        "monitor": volume_monitor(folder / "lake", all_days[-1])}  # fmt: skip
    meta = {
        "panel": f"{args.devices} devices x {days} days run, profile {args.profile} "
        f"({gen['timezone']}), seed {args.seed}, {gen['pings']} raw pings",
        "first_day": all_days[0],
        "last_day": all_days[-2],
        "breakage_day": all_days[-1],
        "normal_wall_s": float("nan"),
        "load_before": "-",
        "load_after_normal": "-",
        "load_after": load(),
    }
    summary = summarise(normal, broken)
    print_summary(summary, meta)
    if args.json:
        args.json.write_text(json.dumps({**meta, **summary}, indent=2))


if __name__ == "__main__":
    main()
