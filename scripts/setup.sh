#!/usr/bin/env bash
# Set up (or update) everything on a fresh machine: a Python venv with the package, OpenSeadragon from npm, and —
# with `test` — the test extras and Debian's Chromium for the browser test; with `postgres` — a local PostgreSQL
# cluster for the Dagster instance. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-main}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "isonyc-dagster needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip uv
extras=""
if [ "$mode" = "test" ]; then
  # torch first, with pip: it takes the CPU wheel from this machine's disk (uv would download a multi-GB
  # CUDA build); uv then sees torch==2.13.0 installed and adds only diffusers/transformers/peft (~1 GB in all).
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  extras="[test,ml]"
fi
# --compile-bytecode: uv does not write .pyc by default, and with PYTHONDONTWRITEBYTECODE set (containers, CI)
# every process would compile Dagster again: ~6 of the ~11 CPU-s a spawned run worker spent (bench_launch.py).
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e ".${extras}"
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "setup: npm not found: install Node.js (apt-get install nodejs npm) for the map viewer" >&2
fi
if [ "$mode" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: chromium not found (sudo apt-get install chromium); the browser test will be skipped" >&2
  fi
fi
if [ "$mode" = "postgres" ]; then
  # A local PostgreSQL cluster in .pg/ (Debian's binaries; as root it runs as the postgres user) and a
  # dagster.yaml on it in $DAGSTER_HOME (default data/dagster_home, where `isonyc demo` looks). See docs/DEPLOY.md.
  .venv/bin/python deploy/local_postgres.py start --dir .pg --dagster-home "${DAGSTER_HOME:-data/dagster_home}"
fi
echo "setup ($mode): ok"
