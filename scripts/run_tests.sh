#!/usr/bin/env bash
# The whole suite (unit, integration over localhost-only DDS, lint). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# --durations: the slowest tests at the end, to keep the suite within its time (the README gives it)
exec .venv/bin/python -m pytest -p no:dash --durations=12 test "$@"
