#!/usr/bin/env bash
# Install the locked environment, create a sample lake if there is none, start `dagster dev`.
#
# Stops cleanly: Ctrl-C, or SIGTERM/SIGINT to this script or to its process group, sends ONE
# SIGTERM to `dagster dev` (which runs in its own process group, so the terminal's signal does
# not reach the webserver, daemon and code servers behind its back), waits up to
# DAGSTER_STOP_TIMEOUT_S (default 30) seconds for it to stop them, then kills whatever is left of
# its process group, and stops the embedded redis-server if this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# process would otherwise compile Dagster from source again (run worker start 5.7 s -> 1.5 s).
if [ -z "${PLATFORM_NO_SYNC:-}" ]; then  # PLATFORM_NO_SYNC=1: the environment is synced already
  uv sync --frozen --compile-bytecode
fi
uv run --no-sync python -m compileall -q near_assets risk_assets resources sensors publishing instance_plugins >/dev/null

export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -e "$DAGSTER_HOME/dagster.yaml" ] || ln -s "$PWD/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"

if [ -z "${LAKE_BUCKET:-}" ]; then
  export LAKE_ROOT="${LAKE_ROOT:-$PWD/.lake}"
  if [ ! -d "$LAKE_ROOT/raw/pings" ]; then
    echo "No lake at $LAKE_ROOT: generating a sample (${SAMPLE_DEVICES:-300} devices x ${SAMPLE_DAYS:-21} days)..."
    uv run --no-sync near-synth --devices "${SAMPLE_DEVICES:-300}" --days "${SAMPLE_DAYS:-21}"
  fi
  if [ -z "${LAKE_START_DATE:-}" ] && [ -f "$LAKE_ROOT/truth/panel.json" ]; then
    LAKE_START_DATE="$(uv run --no-sync python -c "import json,sys; print(json.load(open(sys.argv[1]))['start'])" "$LAKE_ROOT/truth/panel.json")"
    export LAKE_START_DATE
  fi
fi

# the environment's interpreter and dagster (run directly: no `uv run` layer between the signals)
PY="$(uv run --no-sync python -c 'import sys; print(sys.executable)')"
BIN="$(dirname "$PY")"

# Redis: REDIS_URL when set, else the embedded redis-server (EMBEDDED_REDIS_PORT, default 6390,
# data in EMBEDDED_REDIS_DIR, default .platform/redis). Say which, and whether this script
# started it (then it stops it on exit) or reuses one that was already running (left running).
export EMBEDDED_REDIS_DIR="${EMBEDDED_REDIS_DIR:-$PWD/.platform/redis}"
REDIS_STATE="$(uv run --no-sync python - <<'PY'
import os
from pathlib import Path

from resources.redis_store import RedisResource, _ping

r = RedisResource.from_env()
if os.environ.get("REDIS_URL"):
    print(f"url Redis: {r.describe()}")
else:
    running = _ping("127.0.0.1", r.embedded_port)
    r.get_client().ping()  # starts the embedded server unless one answers
    pidfile = Path(r.embedded_dir) / "redis.pid"
    pid = pidfile.read_text().strip() if pidfile.exists() else "unknown"
    if running:
        print(
            f"reused Redis: REUSING a redis-server already answering on 127.0.0.1:{r.embedded_port}"
            f" (pid in {pidfile}: {pid}); it is left running on exit. Stop it first"
            " (kill that pid) or set EMBEDDED_REDIS_PORT for a fresh one."
        )
    else:
        print(f"started Redis: {r.describe()}, pid {pid}; stopped when dagster dev stops")
PY
)"
echo "${REDIS_STATE#* }"
STARTED_REDIS=""
[ "${REDIS_STATE%% *}" = "started" ] && STARTED_REDIS="$EMBEDDED_REDIS_DIR"

DEV_PID=""
STOPPING=""
stop_all() {
  [ -n "$STOPPING" ] && return
  STOPPING=1
  if [ -n "$DEV_PID" ] && kill -0 "$DEV_PID" 2>/dev/null; then
    echo "Stopping dagster dev (pid $DEV_PID)..."
    kill -TERM "$DEV_PID" 2>/dev/null || true
    local deadline=$((SECONDS + ${DAGSTER_STOP_TIMEOUT_S:-30}))
    while kill -0 "$DEV_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$DEV_PID" 2>/dev/null; then
      echo "dagster dev did not stop within ${DAGSTER_STOP_TIMEOUT_S:-30} s: killing its process group"
    fi
  fi
  # whatever is left of dagster dev's process group (webserver, daemon, code servers)
  [ -n "$DEV_PID" ] && kill -KILL -- "-$DEV_PID" 2>/dev/null || true
  if [ -n "$STARTED_REDIS" ]; then
    echo "Stopping the embedded redis-server this script started ($STARTED_REDIS)"
    "$PY" -c "import sys; from resources.redis_store import stop_redis_server; stop_redis_server(sys.argv[1])" "$STARTED_REDIS" || true
  fi
}
on_signal() {
  stop_all
  exit 130
}
trap on_signal INT TERM HUP
trap stop_all EXIT

# Job control: the background job gets its own process group (the terminal's Ctrl-C reaches this
# script only, which stops dagster dev in order). SIGINT/SIGTERM are reset to their defaults
# before exec: a script started in the background inherits SIGINT *ignored*, and `dagster dev`
# maps SIGTERM to SIGINT's handler, so it would then ignore SIGTERM too (the hang seen before).
set -m
"$PY" -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' \
  "$BIN/dagster" dev -w workspace.yaml -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}" &
DEV_PID=$!
set +m
# `wait` returns early when a trapped signal arrives; the trap then stops everything
wait "$DEV_PID"
