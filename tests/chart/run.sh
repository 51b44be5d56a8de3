#!/usr/bin/env bash
# Runs the deployment-artefact tests (Helm chart, Dockerfile, compose, OPERATIONS.md): creates or reuses the
# venv target/chart-venv with the pinned tools of requirements.txt, then pytest. Exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/target/chart-venv"
requirements="$root/tests/chart/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
# Install only when requirements.txt changed since the last install (the stamp holds its hash), so later runs
# start at once and work without the network.
stamp="$venv/.chart-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv -r "$requirements"
    "$venv/bin/python" -m pip check
    echo "$want" > "$stamp"
fi

cd "$root"
# No __pycache__ folders in the work tree.
export PYTHONDONTWRITEBYTECODE=1
# -q keeps pytest's one-line summary ("N passed in Xs") as the last line.
exec "$venv/bin/python" -m pytest -c tests/chart/pytest.ini -q "$@" tests/chart
