#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup.sh" | tail -n 1)"
cd "$root"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
