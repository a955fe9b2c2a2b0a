#!/usr/bin/env python
"""Hourly cron job (as it ran on the risk box): baseline of bank-statement features.

Reads a JSON file named by $PACK_INPUTS ({"recent_bank_features": [...]}) and writes its result to
$PACK_OUTPUT. Standard library only; prints a summary line per feature.
"""

import json
import os
import statistics
import sys

FEATURES = [
    "nsf_count",
    "inflow_volatility",
    "cash_margin",
    "negative_balance_months",
    "revenue_mismatch",
]


def summarise(values):
    values = sorted(values)
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return {"median": round(median, 6), "mad": round(mad, 6), "p95": round(p95, 6)}


def main():
    with open(os.environ["PACK_INPUTS"]) as f:
        rows = json.load(f)["recent_bank_features"]
    print(f"bank baseline: {len(rows)} applicants")
    out = {"n": len(rows), "features": {}}
    for name in FEATURES:
        values = [float(r[name]) for r in rows if name in r]
        if values:
            out["features"][name] = summarise(values)
            print(f"  {name}: {out['features'][name]}")
    with open(os.environ["PACK_OUTPUT"], "w") as f:
        json.dump(out, f)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
