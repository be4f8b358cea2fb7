#!/usr/bin/env bash
# `make demo`: a synthetic table scanned, trained and queried over ROS 2 on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec .venv/bin/f3rm-ros demo "$@"
