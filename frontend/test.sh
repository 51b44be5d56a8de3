#!/usr/bin/env bash
# One entry point for the TypeScript side: builds and tests clients/order-status-client, then runs
# the SPA's Vitest unit tests and a production `ng build` into dist/frontend/browser.
# `--build-only` skips every test (for `make run`) but still builds the client first: the SPA
# depends on it as a package (file:../clients/order-status-client) and imports its dist/.
# Installs from the lockfiles only when node_modules is missing or was installed from another lockfile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

build_only=false
case "${1:-}" in
  --build-only) build_only=true ;;
  "") ;;
  *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

export NG_CLI_ANALYTICS=false   # never prompt, even outside CI
export CI="${CI:-true}"         # non-interactive output from the Angular CLI and Vitest

if $build_only; then
  "$here/../clients/order-status-client/test.sh" --build-only
else
  "$here/../clients/order-status-client/test.sh"
fi

cd "$here"
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.contoso-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > "$stamp"
fi

if ! $build_only; then
  npx ng test --watch=false --progress=false
fi
# `make run` skips the build when nothing it is built from changed since the last one.
built=dist/frontend/browser/index.html
if $build_only && [[ -f "$built" ]] && [[ -z "$(find src angular.json tsconfig.json tsconfig.app.json package-lock.json \
      ../clients/order-status-client/dist -newer "$built" -print -quit)" ]]; then
  echo "frontend: production build is up to date"
  exit 0
fi
npx ng build --configuration production --progress=false
test -f dist/frontend/browser/index.html
echo "frontend: production build in frontend/dist/frontend/browser"
