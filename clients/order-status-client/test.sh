#!/usr/bin/env bash
# Builds and tests @contoso/order-status-client: installs from the lockfile when node_modules is
# missing or was installed from another lockfile, then type-checks, builds dist/ and runs Vitest.
# `--build-only` stops after the build (the Node conformance tests import dist/).
set -euo pipefail
cd "$(dirname "$0")"

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.contoso-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > "$stamp"
fi

npm run --silent typecheck
npm run --silent build
[[ "${1:-}" == "--build-only" ]] && exit 0
npm test
