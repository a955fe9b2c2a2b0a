#!/usr/bin/env bash
# Install the locked environment, create a sample lake if there is none, start `dagster dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# process would otherwise compile Dagster from source again (run worker start 5.7 s -> 1.5 s).
uv sync --frozen --compile-bytecode
uv run python -m compileall -q near_assets risk_assets resources sensors publishing instance_plugins >/dev/null

export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -e "$DAGSTER_HOME/dagster.yaml" ] || ln -s "$PWD/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"

if [ -z "${LAKE_BUCKET:-}" ]; then
  export LAKE_ROOT="${LAKE_ROOT:-$PWD/.lake}"
  if [ ! -d "$LAKE_ROOT/raw/pings" ]; then
    echo "No lake at $LAKE_ROOT: generating a sample (${SAMPLE_DEVICES:-300} devices x ${SAMPLE_DAYS:-21} days)..."
    uv run near-synth --devices "${SAMPLE_DEVICES:-300}" --days "${SAMPLE_DAYS:-21}"
  fi
  if [ -z "${LAKE_START_DATE:-}" ] && [ -f "$LAKE_ROOT/truth/panel.json" ]; then
    LAKE_START_DATE="$(uv run python -c "import json,sys; print(json.load(open(sys.argv[1]))['start'])" "$LAKE_ROOT/truth/panel.json")"
    export LAKE_START_DATE
  fi
fi

exec uv run dagster dev -w workspace.yaml -h "${DAGSTER_HOST:-127.0.0.1}" -p "${DAGSTER_PORT:-3000}"
