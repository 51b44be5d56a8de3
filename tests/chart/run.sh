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

# nginx validates docker/nginx.conf (test_docker.py). Missing, it is installed as scripts/services.sh does; if that is
# impossible the test fails and says why: a needed tool is never a reason to skip.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "chart: installing nginx-light (needed by test_docker.py)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; } >&2 \
        || echo "chart: could not install nginx-light; the nginx test will fail" >&2
fi

cd "$root"
# No __pycache__ folders in the work tree.
export PYTHONDONTWRITEBYTECODE=1
# -q keeps pytest's one-line summary ("N passed in Xs") as the last line.
exec "$venv/bin/python" -m pytest -c tests/chart/pytest.ini -q "$@" tests/chart
