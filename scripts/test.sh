#!/usr/bin/env bash
# Install the locked environment and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# process would otherwise compile Dagster from source again (run worker start 5.7 s -> 1.5 s).
uv sync --frozen --compile-bytecode
uv run python -m compileall -q near_assets risk_assets resources sensors publishing instance_plugins >/dev/null
uv run ruff check .
uv run pytest "$@"
