#!/usr/bin/env bash
# The benchmark suite from the repository root: bench/run.sh [--quick] [--only ...] [--peers ...]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
exec .venv/bin/python -m bench "$@"
