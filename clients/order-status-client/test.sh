#!/usr/bin/env bash
# Builds and tests @contoso/order-status-client: installs from the lockfile when node_modules is
# missing or was installed from another lockfile, then type-checks, builds dist/ and runs Vitest
# (the suite includes `npm pack`, checking what a shop's app installs).
# `--build-only` stops after the build, and skips it when dist/ is newer than everything it is
# built from: the SPA (as a file: dependency), the Node conformance tests and the chaos soak
# import dist/.
set -euo pipefail
cd "$(dirname "$0")"

build_only=false
case "${1:-}" in
  --build-only) build_only=true ;;
  "") ;;
  *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.contoso-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > "$stamp"
fi

built=dist/index.js
if $build_only && [[ -f "$built" ]] && [[ -z "$(find src package.json package-lock.json tsconfig.json \
      tsconfig.build.json -newer "$built" -print -quit)" ]]; then
  echo "order-status-client: dist/ is up to date"
  exit 0
fi
npm run --silent typecheck
npm run --silent clean
npm run --silent build
$build_only && exit 0
npm test
