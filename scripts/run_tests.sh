#!/usr/bin/env bash
# The whole suite (unit, integration over localhost-only DDS, lint). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec .venv/bin/python -m pytest -p no:dash test "$@"
