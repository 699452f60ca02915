#!/usr/bin/env bash
# Creates (once) a virtual environment with the pinned stack of constraints.txt and installs
# diffrl into it (editable). The environment lives outside the clone, keyed on a hash of
# constraints.txt and pyproject.toml, so it is rebuilt whenever either changes.
# Prints the environment's path on its last line. Override the location with DIFFRL_VENV.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key="$(cat "$root/constraints.txt" "$root/pyproject.toml" | sha256sum | cut -c1-16)"
venv="${DIFFRL_VENV:-$HOME/.cache/diffrl/venv-$key}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -f "$venv/.complete" ]; then
  echo "setup: building $venv (about 2 minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -c "$root/constraints.txt" -e "$root[all]" >&2
  touch "$venv/.complete"
fi
# The clone may have moved since the environment was built: point the editable install here.
"$venv/bin/pip" install -q --no-deps -e "$root" >&2
echo "$venv"
